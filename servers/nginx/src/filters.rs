//! What both of the module's output filters need: the next filters (which
//! `mod.rs` saves when it puts the filters at the top of nginx's chains), holding a response back (`r->buffered`)
//! while the plugins' chain waits, and waking nginx's writer after a resume.

use ngx::ffi::*;

use super::base::post_event;

/// `r->buffered` bit while a plugin holds the response back.
const BUFFERED: u32 = 0x08;

pub(super) static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
pub(super) static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

pub fn next_header(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: the saved next filter is set before any request.
    unsafe { NEXT_HEADER_FILTER.map_or(NGX_ERROR as ngx_int_t, |f| f(r)) }
}

pub fn next_body(r: *mut ngx_http_request_t, cl: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: as above.
    unsafe { NEXT_BODY_FILTER.map_or(NGX_ERROR as ngx_int_t, |f| f(r, cl)) }
}

/// Holds the response back (`held`) or lets nginx finish it.
pub fn set_buffered(r: *mut ngx_http_request_t, held: bool) {
    // SAFETY: live request.
    unsafe {
        if held {
            (*r).set_buffered((*r).buffered() | BUFFERED);
        } else {
            (*r).set_buffered((*r).buffered() & !BUFFERED);
        }
    }
}

/// Wakes nginx's writer so that a request held back by us can finish.
pub fn kick_writer(r: *mut ngx_http_request_t) {
    // SAFETY: live request and connection.
    unsafe {
        let c = (*r).connection;
        post_event((*c).write);
    }
}

/// Ends the request as failed (the connection is closed): after a resume
/// whose response cannot go on.
pub fn fail(r: *mut ngx_http_request_t) {
    set_buffered(r, false);
    // SAFETY: live request.
    unsafe { ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t) };
}
