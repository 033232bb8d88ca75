-- W3 for Traffic Server's tslua (remap plugin: @plugin=tslua.so @pparam=ts_w3.lua).
-- Same work as examples/bench-filter with configuration "w3": read one request
-- header, add one request header (sent on to the origin) and one response header.
local function add_response_header()
    ts.client_response.header['x-bench-resp'] = '1'
    return 0
end

function do_remap()
    local ua = ts.client_request.header['User-Agent']
    local value = 'none'
    if ua then
        if ua == '' then value = '-' else value = 'ua' end
    end
    ts.client_request.header['x-bench-req'] = value
    ts.hook(TS_LUA_HOOK_SEND_RESPONSE_HDR, add_response_header)
    return 0
end
