//! The request phases: the rewrite-phase handler runs the request headers
//! through the chain, then the request body (`request_body`), and acts on
//! what the chain returns. A pause suspends the handler (holding a request
//! reference: nginx's phase engine stops); the chain's resume (or its pause
//! timeout) runs the phases again, and the handler goes on where it stopped.
//!
//! The request's context is created here (its events lead back here), and the
//! chain's two events re-enter the phase they name: the request phases here,
//! the response filters in `header_filter`/`body_filter`, which never call back.

use ngx::ffi::*;

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::base::{log, new_event, ProxyWasmModule};
use super::context::{cleanup, ctx_of_event, get_ctx, new_ctx, NgxChain, NgxChainOf, ReqCtx};
use super::headers as hdr;
use super::local::answer_locally;
use super::request_body::{self as body, BodyStep};
use super::stream::NgxStream;
use super::worker::{start_request, Start};
use ngx::http::{HttpModule, HttpModuleLocationConf};
use proxy_wasm_host::abi::{LogLevel, StreamType};
use proxy_wasm_host::chain::{flow::failure_response, Chain, ChainError, Flow, Phase};

/// The chain configured for the request's location (`None`: none, or no configuration).
fn location_chain(r: *mut ngx_http_request_t) -> Option<&'static [usize]> {
    // SAFETY: nginx's live request: its loc_conf has a slot per HTTP module, ours a LocConf.
    let lc = ProxyWasmModule::location_conf(unsafe { &*r })?;
    (!lc.chain.is_empty()).then_some(lc.chain.as_slice())
}

/// The rewrite-phase handler (also re-entered by `ngx_http_core_run_phases`
/// after a resume, and after nginx read the request body).
pub unsafe extern "C" fn rewrite_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let out = std::panic::catch_unwind(|| {
        // SAFETY: live request.
        if unsafe { (*r).main } != r {
            return NGX_DECLINED as ngx_int_t;
        }
        let ctx = match get_ctx(r) {
            Some(c) => c,
            None => {
                let Some(chain) = location_chain(r) else {
                    return NGX_DECLINED as ngx_int_t;
                };
                // SAFETY: live main request without our context.
                match unsafe { create_ctx(r, chain) } {
                    Created::Ctx(c) => c,
                    Created::Skip => return NGX_DECLINED as ngx_int_t,
                    Created::Refuse => return NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t,
                }
            }
        };
        run_request(ctx, r)
    });
    out.unwrap_or_else(|_| {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the rewrite phase");
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
    })
}

/// Runs the request side as far as it goes; the phase handler's answer.
fn run_request(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    if ctx.suspended.get() {
        // Run by nginx while a plugin holds the request: it goes on waiting.
        return NGX_DONE as ngx_int_t;
    }
    let pending = ctx.pending.borrow_mut().take();
    if let Some(flow) = pending {
        return act(ctx, r, flow);
    }
    if ctx.answered.get() {
        return NGX_DECLINED as ngx_int_t;
    }
    let Some(headers_done) = ctx.with_chain(|c| c.headers_done(StreamType::HttpRequest)) else {
        log(
            LogLevel::Critical,
            "[proxy_wasm] internal error: the request's chain is in use or gone in the rewrite phase",
        );
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    if !headers_done {
        // SAFETY: live request.
        let count = unsafe { hdr::request_pair_count(r) };
        let eos = !ctx.has_body();
        let flow =
            ctx.with_chain(|c| c.on_request_headers(count, eos)).unwrap_or_else(|| Flow::Respond(failure_response()));
        match flow {
            Flow::Continue => body::restore_framing(ctx, r),
            Flow::Wait => return suspend_reading_body(ctx, r),
            flow => return act(ctx, r, flow),
        }
    }
    match body::run(ctx, r) {
        BodyStep::Next => NGX_DECLINED as ngx_int_t,
        BodyStep::Return(rc) => rc,
        BodyStep::Wait => suspend(ctx, r),
        BodyStep::Stop(flow) => act(ctx, r, flow),
    }
}

/// What the handler does for a flow that stops the request: answer, close
/// the connection (`proxy_close_stream`), or end it as an error.
fn act(ctx: &ReqCtx, r: *mut ngx_http_request_t, flow: Flow) -> ngx_int_t {
    match flow {
        Flow::Respond(response) => answer_locally(ctx, r, response),
        Flow::Reset => {
            ctx.answered.set(true);
            NGX_HTTP_CLOSE as ngx_int_t
        }
        Flow::Abort => {
            ctx.answered.set(true);
            NGX_ERROR as ngx_int_t
        }
        Flow::Wait => suspend(ctx, r),
        Flow::Continue | Flow::Forward { .. } | Flow::Buffered => NGX_DECLINED as ngx_int_t,
    }
}

/// `on_request_headers` paused: the phase engine stops. When a plugin of
/// the chain reads the body, nginx goes on reading (buffering) it meanwhile,
/// but no `on_request_body` runs before the whole chain has continued its
/// headers: Envoy (proxy-wasm-cpp-host) turns a Pause from the headers into
/// StopAllIterationAndWatermark, which holds the body callbacks too.
fn suspend_reading_body(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    let rc = suspend(ctx, r);
    if ctx.body.borrow().read_started || !body::wants_body(ctx) {
        return rc;
    }
    // A declared length past the plugins' limit is answered (413) after
    // the headers resume, without reading the body.
    if body::declared_too_large_quiet(ctx) {
        return rc;
    }
    body::restore_framing(ctx, r);
    let read = body::start_reading(ctx, r);
    if read >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        // nginx answers the error; the pause's reference is given back (its
        // resume or timeout finds the request no longer suspended).
        ctx.suspended.set(false);
        // SAFETY: live request; undoes `suspend`'s reference.
        unsafe {
            let main = (*r).main;
            (*main).set_count((*main).count() - 1);
        }
        return read;
    }
    rc
}

/// A request callback paused: hold a reference and stop the phase engine.
pub fn suspend(ctx: &ReqCtx, r: *mut ngx_http_request_t) -> ngx_int_t {
    ctx.suspended.set(true);
    // SAFETY: live request; the reference is released in `resumed`.
    unsafe {
        let main = (*r).main;
        (*main).set_count((*main).count() + 1);
    }
    NGX_DONE as ngx_int_t
}

/// The chain's resume or pause timeout for a request phase: keeps what it
/// says for the handler, then runs the phases again (if a pause holds the
/// request) and releases the pause's reference.
pub fn resumed(ctx: &ReqCtx, r: *mut ngx_http_request_t, phase: Phase, flow: Flow) {
    match flow {
        Flow::Wait | Flow::Buffered => return,
        Flow::Continue => {
            if phase == Phase::RequestHeaders {
                body::restore_framing(ctx, r);
            }
        }
        Flow::Forward { data, end_of_stream } => {
            if let Some(flow) = body::hold(ctx, data, end_of_stream) {
                *ctx.pending.borrow_mut() = Some(flow);
            }
        }
        flow => *ctx.pending.borrow_mut() = Some(flow),
    }
    if !ctx.suspended.replace(false) {
        return;
    }
    // SAFETY: live request; run the phases again (our handler goes on where
    // it stopped), then release the pause's reference.
    unsafe {
        (*r).write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
        ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
    }
}

// ---------------------------------------------------------------- the context

pub enum Created {
    Ctx(&'static ReqCtx),
    Refuse,
    Skip,
}

/// The context and chain of a request through the plugins `chain` (indexes
/// into the plugin set, in order).
///
/// # Safety
/// `r` is a live main request without a context of ours.
pub unsafe fn create_ctx(r: *mut ngx_http_request_t, chain: &[usize]) -> Created {
    let generation = match start_request(chain) {
        Start::On(g) => g,
        Start::Skip => return Created::Skip,
        Start::Refuse => return Created::Refuse,
    };
    let ctx = new_ctx(
        r,
        // SAFETY: live request.
        unsafe { ((*r).headers_in.content_length_n, (*r).headers_in.chunked() != 0) },
        new_event(on_resume_event, std::ptr::null_mut()),
        new_event(on_pause_timeout, std::ptr::null_mut()),
    );
    // SAFETY: the events' data is the context itself (it lives as long as the events can fire).
    unsafe {
        (*ctx.ev.get()).data = Arc::as_ptr(&ctx) as *mut c_void;
        (*ctx.pause_timer.get()).data = Arc::as_ptr(&ctx) as *mut c_void;
    }
    // Built in the context's cell (see `Chain::new_in`); a re-entry meanwhile (a plugin's
    // `proxy_on_context_create` reaching the module) finds the chain in use, as it found none.
    let created =
        Chain::new_in(&mut ctx.chain.borrow_mut(), generation, chain.iter().copied(), NgxChain(ctx.clone()), |_| {
            NgxStream::new(ctx.clone())
        })
        .map(|_| ());
    match created {
        Ok(()) => {}
        Err(e) => {
            // A stream context kept for its proxy_done must not reach this request.
            ctx.r.store(std::ptr::null_mut(), Ordering::Release);
            let level = if matches!(e, ChainError::Refused { .. }) { LogLevel::Debug } else { LogLevel::Error };
            log(level, &format!("[proxy_wasm] {e}"));
            return Created::Refuse;
        }
    }
    // SAFETY: live request; the cleanup releases the reference taken here.
    unsafe {
        let cln = ngx_pool_cleanup_add((*r).pool, 0);
        if cln.is_null() {
            ctx.finish();
            ctx.r.store(std::ptr::null_mut(), Ordering::Release);
            drop(ctx.chain.borrow_mut().take());
            return Created::Refuse;
        }
        let raw = Arc::into_raw(ctx);
        (*cln).handler = Some(cleanup);
        (*cln).data = raw as *mut c_void;
        ngx::http::Request::from_ngx_http_request(r).set_module_ctx(raw as *mut c_void, ProxyWasmModule::module());
        Created::Ctx(&*raw)
    }
}

/// The log phase: the plugins' `on_done`, `on_log`, `on_delete`.
pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let _ = std::panic::catch_unwind(|| {
        if let Some(ctx) = get_ctx(r) {
            ctx.finish();
        }
    });
    NGX_OK as ngx_int_t
}

// ------------------------------------------------------------- re-entry points

/// The posted resume event (`ChainServer::schedule_resume`: a plugin
/// continued, answered or closed the stream from a tick, a queue or an
/// `http_call` answer).
pub unsafe extern "C" fn on_resume_event(ev: *mut ngx_event_t) {
    // SAFETY: the event's data is its context, alive while the event is
    // posted (the pool cleanup takes it off the queue).
    unsafe { run(ev, "resuming a request", |c| c.resume()) }
}

/// A pause outlasted its plugin's `pause_timeout` (the chain re-arms the
/// timer at every pause and cancels it when the wait ends).
pub unsafe extern "C" fn on_pause_timeout(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its context, alive while the timer is set
    // (the pool cleanup deletes it).
    unsafe { run(ev, "ending a paused request", |c| c.on_pause_timeout()) }
}

/// # Safety
/// `ev` is one of a live context's events.
unsafe fn run(ev: *mut ngx_event_t, what: &str, step: impl FnOnce(&mut NgxChainOf) -> Option<(Phase, Flow)>) {
    // SAFETY: see above.
    let data: *mut c_void = unsafe { (*ev).data };
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: see above; the reference keeps the context while the
        // request may end below.
        let ctx = unsafe { ctx_of_event(data) };
        let Some(r) = ctx.r() else { return };
        let Some((phase, flow)) = ctx.with_chain(step).flatten() else { return };
        // SAFETY: live request on this worker.
        let c = unsafe { (*r).connection };
        match phase {
            Phase::RequestHeaders | Phase::RequestBody => resumed(&ctx, r, phase, flow),
            Phase::ResponseHeaders => super::header_filter::resumed(&ctx, r, flow),
            Phase::ResponseBody => super::body_filter::resumed(&ctx, r, flow),
        }
        // SAFETY: the connection of the request (nginx checks whether it was destroyed).
        unsafe { ngx_http_run_posted_requests(c) };
    }));
    if out.is_err() {
        log(LogLevel::Critical, &format!("[proxy_wasm] internal error (panic) {what}"));
    }
}
