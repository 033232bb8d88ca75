//! The chain's two events: the posted resume event
//! (`ChainServer::schedule_resume`: a plugin continued, answered or closed
//! the stream from a tick, a queue or an `http_call` answer) and the pause
//! timer (`pause_timeout`). Each asks the chain what to do and hands the
//! phase it names to the code of that phase.

use std::ffi::c_void;

use ngx::ffi::*;

use super::context::{ctx_of_event, NgxChainOf};
use super::server::log;
use crate::abi::LogLevel;
use crate::chain::{Flow, Phase};

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
            Phase::RequestHeaders | Phase::RequestBody => super::phase::resumed(&ctx, r, phase, flow),
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
