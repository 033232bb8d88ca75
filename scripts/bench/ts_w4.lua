-- W4 for Traffic Server's tslua (remap plugin: @plugin=tslua.so @pparam=ts_w4.lua).
-- Same work as examples/bench-filter with configuration "w4": 20 request header
-- adds, 20 gets, 20 removes (x-bench-0 .. x-bench-19).
local names = {}
for i = 0, 19 do names[#names + 1] = 'x-bench-' .. i end

function do_remap()
    local hdr = ts.client_request.header
    for i = 1, 20 do hdr[names[i]] = 'bench-value' end
    local found = 0
    for i = 1, 20 do
        if hdr[names[i]] ~= nil then found = found + 1 end
    end
    for i = 1, 20 do hdr[names[i]] = nil end
    if found ~= 20 then
        ts.http.set_resp(500, 'w4: a header added was not found\n')
        return TS_LUA_REMAP_DID_REMAP_STOP
    end
    return 0
end
