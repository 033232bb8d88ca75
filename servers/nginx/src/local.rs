//! Responses the module makes: a local response (a plugin's, or the chain's
//! 503 / 413 / 500 / 504) from a request phase, the replacement of the
//! upstream's response by one from the response headers, and the buffers
//! that carry them.

use ngx::ffi::*;

use super::context::ReqCtx;
use super::headers as hdr;
use super::stream::header_sent;
use proxy_wasm_host::host::LocalResponse;

/// Sends `response` from a request phase (the phase handler returns what
/// this returns). Its header goes through the header filter, so through the
/// response callbacks of the plugins that saw the request (as Envoy runs its
/// encoder filters on a local reply).
pub fn answer_locally(ctx: &ReqCtx, r: *mut ngx_http_request_t, mut response: LocalResponse) -> ngx_int_t {
    ctx.answered.set(true);
    *ctx.local_details.borrow_mut() = Some(std::mem::take(&mut response.details));
    if header_sent(r) {
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: live request, header not sent yet.
    unsafe {
        if (*r).request_body.is_null() {
            ngx_http_discard_request_body(r);
        }
        (*r).headers_out.status = response.status as ngx_uint_t;
        hdr::clear_content_length(r);
        for (k, v) in &response.headers {
            if !k.starts_with(b":") && !k.eq_ignore_ascii_case(b"content-length") {
                let _ = hdr::add_response(r, k, v);
            }
        }
        (*r).headers_out.content_length_n = response.body.len() as off_t;
        send_response(r, &response.body)
    }
}

/// A local response from the response headers (or the chain's 500 for a
/// body queued past its limit while they waited) replaces status, headers
/// and body of the response; the body filter sends the new body once and
/// drops the upstream's.
pub fn replace_response(ctx: &ReqCtx, r: *mut ngx_http_request_t, mut response: LocalResponse) {
    *ctx.local_details.borrow_mut() = Some(std::mem::take(&mut response.details));
    // SAFETY: live request, header not sent.
    unsafe {
        hdr::clear_response(r);
        let _ = hdr::remove_response_header(r, b"content-type");
        (*r).headers_out.status = response.status as ngx_uint_t;
        (*r).headers_out.status_line = ngx_str_t { len: 0, data: std::ptr::null_mut() };
        for (k, v) in &response.headers {
            if !k.starts_with(b":") && !k.eq_ignore_ascii_case(b"content-length") {
                let _ = hdr::add_response(r, k, v);
            }
        }
        hdr::clear_content_length(r);
        (*r).headers_out.content_length_n = response.body.len() as off_t;
    }
    *ctx.replace_body.borrow_mut() = Some(response.body);
}

/// Sends the header and then `body` as the whole body.
///
/// # Safety
/// `r` is a live request whose header was not sent.
pub unsafe fn send_response(r: *mut ngx_http_request_t, body: &[u8]) -> ngx_int_t {
    // SAFETY: live request (caller); the buffer lives in its pool.
    unsafe {
        if body.is_empty() {
            (*r).set_header_only(1);
        }
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        match chain_of(r, body, true) {
            Some(cl) => ngx_http_output_filter(r, cl),
            None => NGX_ERROR as ngx_int_t,
        }
    }
}

/// A one-buffer chain with a copy of `data`.
///
/// # Safety
/// `r` is a live request.
pub unsafe fn chain_of(r: *mut ngx_http_request_t, data: &[u8], last: bool) -> Option<*mut ngx_chain_t> {
    // SAFETY: live request; memory from its pool.
    unsafe {
        let b = if data.is_empty() {
            ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t
        } else {
            ngx_create_temp_buf((*r).pool, data.len())
        };
        let cl = ngx_alloc_chain_link((*r).pool);
        if b.is_null() || cl.is_null() {
            return None;
        }
        if !data.is_empty() {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (*b).last, data.len());
            (*b).last = (*b).last.add(data.len());
        }
        if last {
            (*b).set_last_buf(if r == (*r).main { 1 } else { 0 });
            (*b).set_last_in_chain(1);
        } else if data.is_empty() {
            (*b).set_flush(1);
        }
        (*cl).buf = b;
        (*cl).next = std::ptr::null_mut();
        Some(cl)
    }
}
