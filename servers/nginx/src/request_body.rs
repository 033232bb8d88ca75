//! The request body on its way through the chain: nginx reads it (only when
//! a plugin of the chain takes `on_request_body` and the request has one),
//! the module hands it to the chain in 64 KiB pieces (a body nginx kept in
//! its temporary file is never read whole), the last with `end_of_stream`,
//! and what the chain lets through becomes the request body, whole, with a
//! corrected `Content-Length` (nginx takes a new request body whole).

use ngx::ffi::*;

use super::base::log;
use super::body_state::BodyCursor;
use super::context::{get_ctx, NgxChainOf, ReqCtx};
use super::headers as hdr;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::{flow::body_too_large_response, Flow, Phase};

/// What the body step of the phase handler came to.
pub enum BodyStep {
    /// Nothing (more) to do for the body: the request goes on.
    Next,
    /// The phase handler returns this (nginx reads the body, or failed to).
    Return(ngx_int_t),
    /// A plugin paused at the end of the body: the phase handler suspends.
    Wait,
    /// The chain answered, reset or aborted.
    Stop(Flow),
}

/// The smallest `max_body_size` of the links that take the request body,
/// and the name of that plugin.
fn body_limit(chain: &NgxChainOf) -> Option<(u64, String)> {
    let (limit, plugin) = chain.request_body_limit()?;
    Some((limit, proxy_wasm_host::chain::ChainVms::plugins(chain.vms()).name(plugin).to_string()))
}

/// Whether nginx reads the body for the chain.
pub fn wants_body(ctx: &ReqCtx) -> bool {
    ctx.has_body() && ctx.with_chain(|c| c.filters(Phase::RequestBody)).unwrap_or(false)
}

/// The declared length (Content-Length), the limit it passes and whose.
fn declared_over_limit(ctx: &ReqCtx) -> Option<(i64, u64, String)> {
    let (length, _) = ctx.framing;
    let (limit, name) = ctx.with_chain(|c| body_limit(c)).flatten()?;
    (length >= 0 && (length as u64) > limit).then_some((length, limit, name))
}

/// Whether the declared length passes the limit (see [`declared_too_large`]).
pub fn declared_too_large_quiet(ctx: &ReqCtx) -> bool {
    declared_over_limit(ctx).is_some()
}

/// A request whose Content-Length passes the limit gets 413 before nginx
/// reads its body (nginx would have to hold it whole).
pub fn declared_too_large(ctx: &ReqCtx) -> Option<Flow> {
    let (length, limit, name) = declared_over_limit(ctx)?;
    log(LogLevel::Warn, &format!("[proxy_wasm] {name}: the request body ({length} bytes, Content-Length) would pass max_body_size ({limit} bytes) held for the plugins: the request gets 413 and is not sent on"));
    Some(Flow::Respond(body_too_large_response()))
}

/// Starts nginx reading the body; `request_body_ready` runs when it is read.
pub fn start_reading(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    ctx.body.borrow_mut().read_started = true;
    // SAFETY: live request; nginx takes a request reference while it reads,
    // released at once as the mirror module does (the handler that runs when
    // the body is read continues the phases).
    unsafe {
        let rc = ngx_http_read_client_request_body(r, Some(request_body_ready));
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
        ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
    }
    NGX_DONE as ngx_int_t
}

/// The body step of the rewrite-phase handler, once the request headers
/// went through the chain.
pub fn run(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> BodyStep {
    {
        let body = ctx.body.borrow();
        if body.installed {
            return BodyStep::Next;
        }
        if body.complete {
            drop(body);
            install(ctx, r);
            return BodyStep::Next;
        }
        if !body.read_started {
            drop(body);
            if !wants_body(ctx) {
                return BodyStep::Next;
            }
            if let Some(flow) = declared_too_large(ctx) {
                return BodyStep::Stop(flow);
            }
            return BodyStep::Return(start_reading(ctx, r));
        }
        if !body.ready {
            // nginx goes on reading; `request_body_ready` continues.
            return BodyStep::Return(NGX_DONE as ngx_int_t);
        }
    }
    loop {
        let Some((piece, eos)) = next_piece(ctx) else {
            // Every piece went in and the end has not come out: the chain
            // waits (its resume continues) or stopped.
            return if ctx.body.borrow().complete {
                install(ctx, r);
                BodyStep::Next
            } else {
                BodyStep::Wait
            };
        };
        let Some(flow) = ctx.with_chain(|c| c.on_request_body(&piece, eos)) else {
            log(
                LogLevel::Critical,
                "[proxy_wasm] internal error: the request's chain is in use or gone while its body is read",
            );
            return BodyStep::Stop(Flow::Abort);
        };
        match flow {
            Flow::Forward { data, end_of_stream } => {
                if let Some(flow) = hold(ctx, data, end_of_stream) {
                    return BodyStep::Stop(flow);
                }
                if ctx.body.borrow().complete {
                    install(ctx, r);
                    return BodyStep::Next;
                }
            }
            Flow::Buffered | Flow::Continue => {}
            Flow::Wait => return BodyStep::Wait,
            flow => return BodyStep::Stop(flow),
        }
    }
}

/// Keeps what the chain let through until the end of the body: nginx takes
/// a new request body whole. Bounded by the smallest `max_body_size` of the
/// plugins that read the body; past it the request gets 413 and is not sent
/// on (the `Flow` returned).
pub fn hold(ctx: &ReqCtx, data: Vec<u8>, end_of_stream: bool) -> Option<Flow> {
    let size = {
        let mut body = ctx.body.borrow_mut();
        body.out.extend_from_slice(&data);
        body.complete |= end_of_stream;
        body.out.len() as u64
    };
    let (limit, name) = ctx.with_chain(|c| body_limit(c)).flatten()?;
    if size <= limit {
        return None;
    }
    ctx.body.borrow_mut().out = Vec::new();
    log(LogLevel::Warn, &format!("[proxy_wasm] {name}: the request body held for the plugins would reach {size} bytes, over its max_body_size ({limit} bytes): the request gets 413 and is not sent on"));
    Some(Flow::Respond(body_too_large_response()))
}

/// nginx read the whole body: the phases go on (unless a pause holds them:
/// its resume runs them).
pub unsafe extern "C" fn request_body_ready(r: *mut ngx_http_request_t) {
    let _ = std::panic::catch_unwind(|| {
        let Some(ctx) = get_ctx(r) else { return };
        {
            let mut body = ctx.body.borrow_mut();
            body.ready = true;
            // SAFETY: live request with its body read.
            body.cursor = Some(BodyCursor { cl: unsafe { request_body_bufs(r) }, offset: 0 });
        }
        if ctx.suspended.get() {
            return;
        }
        // SAFETY: live request; continue the phases where they stopped (as the mirror module does).
        unsafe {
            (*r).write_event_handler = Some(ngx_http_core_run_phases);
            ngx_http_core_run_phases(r);
        }
    });
}

/// The buffers of the request body nginx read (null when it has none).
unsafe fn request_body_bufs(r: *mut ngx_http_request_t) -> *mut ngx_chain_t {
    // SAFETY: live request whose body was read.
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            std::ptr::null_mut()
        } else {
            (*rb).bufs
        }
    }
}

/// The next piece of the request body for the chain, with `end_of_stream`
/// on the last one (an empty body is one empty piece); `None` once that one
/// was taken.
fn next_piece(ctx: &ReqCtx) -> Option<(Vec<u8>, bool)> {
    let mut body = ctx.body.borrow_mut();
    if body.eos_fed {
        return None;
    }
    let (piece, eos) = match body.cursor.as_mut() {
        // SAFETY: the cursor walks the body nginx read for this live request;
        // it is replaced (install) only after the last piece.
        Some(cursor) => unsafe {
            let piece = cursor.next().unwrap_or_default();
            (piece, !cursor.has_more())
        },
        None => (Vec::new(), true),
    };
    body.eos_fed = eos;
    Some((piece, eos))
}

/// The body the plugins let through becomes the request body.
fn install(ctx: &ReqCtx, r: *mut ngx_http_request_t) {
    let body = {
        let mut b = ctx.body.borrow_mut();
        b.installed = true;
        b.cursor = None;
        std::mem::take(&mut b.out)
    };
    // SAFETY: live request whose body was read; the new buffer lives in its pool.
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            return;
        }
        if body.is_empty() {
            (*rb).bufs = std::ptr::null_mut();
        } else {
            let b = ngx_create_temp_buf((*r).pool, body.len());
            let cl = ngx_alloc_chain_link((*r).pool);
            if b.is_null() || cl.is_null() {
                return;
            }
            std::ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
            (*b).last = (*b).last.add(body.len());
            (*b).set_last_buf(1);
            (*cl).buf = b;
            (*cl).next = std::ptr::null_mut();
            (*rb).bufs = cl;
        }
        let _ = hdr::remove_request_header(r, b"transfer-encoding");
        let _ = hdr::replace_request(r, b"content-length", body.len().to_string().as_bytes());
        (*r).headers_in.content_length_n = body.len() as off_t;
        (*r).headers_in.set_chunked(0);
    }
}

/// Puts the client's framing back after the request headers callbacks.
pub fn restore_framing(ctx: &ReqCtx, r: *mut ngx_http_request_t) {
    let (length, chunked) = ctx.framing;
    // SAFETY: live request.
    unsafe {
        (*r).headers_in.content_length_n = length;
        (*r).headers_in.set_chunked(chunked as u32);
    }
}
