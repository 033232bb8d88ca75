//! The header filter: `on_response_headers` (last plugin of the chain
//! first, over the plugins that saw the request), for upstream responses and
//! the module's own local responses alike. A pause holds the header back
//! (`r->buffered`); the chain queues the body that comes meanwhile.

use ngx::ffi::*;

use super::base::log;
use super::body_filter;
use super::context::{get_ctx, ReqCtx};
use super::filters::{fail, kick_writer, next_header, set_buffered};
use super::headers as hdr;
use super::local::replace_response;
use proxy_wasm_host::abi::{LogLevel, StreamType};
use proxy_wasm_host::chain::{Flow, Phase};

pub unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: live request.
        if unsafe { (*r).main } != r {
            return next_header(r);
        }
        let Some(ctx) = get_ctx(r) else { return next_header(r) };
        if ctx.response_started.replace(true) {
            return next_header(r);
        }
        // The pairs are counted only for a chain that takes the response headers.
        let takes = ctx.with_chain(|c| c.filters(Phase::ResponseHeaders)).unwrap_or(false);
        // SAFETY: live request.
        let (count, eos, length) = unsafe {
            let s = (*r).headers_out.status;
            let header_only = (*r).header_only() != 0;
            let length =
                (!header_only).then_some((*r).headers_out.content_length_n).and_then(|n| u64::try_from(n).ok());
            (
                if takes { hdr::response_pair_count(r) } else { 0 },
                header_only
                    || (*r).headers_out.content_length_n == 0
                    || s == 204
                    || s == 304
                    || (100..200).contains(&s),
                length,
            )
        };
        ctx.response_length.set(length);
        match ctx.with_chain(|c| c.on_response_headers(count, eos)) {
            Some(flow) => headers_flow(ctx, r, flow),
            // The chain is gone (the request ended for the plugins).
            None => next_header(r),
        }
    });
    out.unwrap_or_else(|_| {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the header filter");
        NGX_ERROR as ngx_int_t
    })
}

/// Acts on what the chain said of the response headers.
fn headers_flow(ctx: &ReqCtx, r: *mut ngx_http_request_t, flow: Flow) -> ngx_int_t {
    match flow {
        Flow::Wait => {
            ctx.headers_held.set(true);
            set_buffered(r, true);
            NGX_OK as ngx_int_t
        }
        Flow::Respond(response) => {
            replace_response(ctx, r, response);
            next_header(r)
        }
        Flow::Abort | Flow::Reset => NGX_ERROR as ngx_int_t,
        Flow::Continue | Flow::Forward { .. } | Flow::Buffered => {
            // SAFETY: live request.
            let header_only = unsafe { (*r).header_only() != 0 };
            if !header_only && ctx.with_chain(|c| c.filters(Phase::ResponseBody)).unwrap_or(false) {
                // SAFETY: live request: plugins may change the body's length
                // (a response without a body, a local one included, keeps its
                // length: it is sent without chunked framing).
                unsafe {
                    hdr::clear_content_length(r);
                    if !(*r).headers_out.accept_ranges.is_null() {
                        (*(*r).headers_out.accept_ranges).hash = 0;
                        (*r).headers_out.accept_ranges = std::ptr::null_mut();
                    }
                    (*r).set_allow_ranges(0);
                }
            }
            next_header(r)
        }
    }
}

/// The chain's resume or pause timeout for the response headers: the header
/// goes on (or is replaced), then the body the chain queued meanwhile.
pub fn resumed(ctx: &ReqCtx, r: *mut ngx_http_request_t, flow: Flow) {
    match flow {
        Flow::Wait | Flow::Buffered => return,
        Flow::Abort | Flow::Reset => {
            ctx.headers_held.set(false);
            fail(r);
            return;
        }
        _ => {}
    }
    ctx.headers_held.set(false);
    set_buffered(r, false);
    if headers_flow(ctx, r, flow) == NGX_ERROR as ngx_int_t {
        fail(r);
        return;
    }
    let rc = if ctx.replace_body.borrow().is_some() {
        body_filter::send_replacement(ctx, r)
    } else if ctx.with_chain(|c| c.has_queued_body(StreamType::HttpResponse)).unwrap_or(false) {
        body_filter::filter_pieces::<&[u8]>(ctx, r, &[], false)
    } else {
        NGX_OK as ngx_int_t
    };
    if rc == NGX_ERROR as ngx_int_t {
        fail(r);
        return;
    }
    kick_writer(r);
}
