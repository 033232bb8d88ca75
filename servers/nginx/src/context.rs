//! The request context: one nginx request's state for the module, its
//! filter chain (`proxy_wasm_host::chain::Chain`) and the chain's server handle
//! (`NgxChain`: the pause timer, the posted resume event, the log).
//!
//! The context is an `Arc` shared by the request (its `r->ctx` slot, released
//! by the pool cleanup), the chain's server handle and the plugins' streams.
//! The chain lives in the context and holds handles to it: the pool cleanup
//! takes the chain out (ending the plugins' stream contexts), which breaks
//! that cycle.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ngx::ffi::*;

use super::base::{log, post_event, WorkerVms};
use super::body_state::RequestBody;
use super::worker::watch_awaiting_done;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::{Chain, ChainServer, Flow, Signals};

/// The chain of one request.
pub type NgxChainOf = Chain<NgxChain, Arc<WorkerVms>>;

/// The request context, shared by the module (request ctx slot, pool
/// cleanup), the chain and the plugins' stream contexts.
pub struct ReqCtx {
    pub(super) r: AtomicPtr<ngx_http_request_t>,
    /// What the plugins asked of the chain (resumes, local response, close).
    pub(super) signals: Signals,
    /// Posted to run `Chain::resume` (`ChainServer::schedule_resume`).
    pub(super) ev: UnsafeCell<ngx_event_t>,
    /// The chain's pause timer (`Chain::on_pause_timeout`).
    pub(super) pause_timer: UnsafeCell<ngx_event_t>,
    pub(super) chain: RefCell<Option<NgxChainOf>>,
    /// The client's framing as received: plugins may remove Content-Length
    /// or Transfer-Encoding, but nginx must still read the body it was sent.
    pub(super) framing: (off_t, bool),
    /// A pause of a request phase holds a request reference and stopped the
    /// phase engine (`phase::suspend`); the resume releases it.
    pub(super) suspended: Cell<bool>,
    /// What the request phase handler does when it runs again: a local
    /// response, a reset or an abort the chain returned from a resume.
    pub(super) pending: RefCell<Option<Flow>>,
    /// The module answered the request (a local response from a request phase).
    pub(super) answered: Cell<bool>,
    /// The request body as the module reads it for the chain.
    pub(super) body: RefCell<RequestBody>,
    /// The header filter ran (response headers are readable).
    pub(super) response_started: Cell<bool>,
    /// The response headers are held (`r->buffered`) while the chain waits.
    pub(super) headers_held: Cell<bool>,
    /// The end of the response body is held while the chain waits.
    pub(super) body_held: Cell<bool>,
    /// The body that replaces the response's (a local response from the
    /// response headers), sent once.
    pub(super) replace_body: RefCell<Option<Vec<u8>>>,
    pub(super) replaced_sent: Cell<bool>,
    /// The end of the response body went to the next filter.
    pub(super) response_eos_sent: Cell<bool>,
    /// The response body length the upstream declared (Content-Length) when
    /// the header arrived, and the bytes of it seen so far: the chunk that
    /// completes it is delivered with `end_of_stream`, as Envoy's HTTP/1
    /// codec does, instead of waiting for nginx's separate empty last buffer.
    pub(super) response_length: Cell<Option<u64>>,
    pub(super) response_seen: Cell<u64>,
    /// The details of the local response the module sent, if any
    /// (`response.code_details`, as Envoy reports its local replies).
    pub(super) local_details: RefCell<Option<String>>,
    /// Response body bytes the body filter passed on (`response.size`:
    /// `$body_bytes_sent` counts the chunked framing too).
    pub(super) response_sent: Cell<u64>,
}

// SAFETY: nginx workers are single-threaded: the context (its request
// pointer, events, cells) is only used on the worker's thread.
unsafe impl Send for ReqCtx {}
// SAFETY: as above.
unsafe impl Sync for ReqCtx {}

impl ReqCtx {
    /// The request, while it lives (null once its pool is destroyed).
    pub fn r(&self) -> Option<*mut ngx_http_request_t> {
        let r = self.r.load(Ordering::Acquire);
        (!r.is_null()).then_some(r)
    }

    /// Runs `f` on the chain. `None` when there is none (finished) or it is
    /// in use further up the stack (a re-entry: the caller treats it as an
    /// internal error).
    pub fn with_chain<R>(&self, f: impl FnOnce(&mut NgxChainOf) -> R) -> Option<R> {
        let mut guard = self.chain.try_borrow_mut().ok()?;
        guard.as_mut().map(f)
    }

    /// `on_done`, `on_log`, `on_delete` of every stream context, once.
    pub fn finish(&self) {
        if self.with_chain(|c| c.finish()).unwrap_or(false) {
            // A plugin's on_done returned false: its proxy_done is awaited,
            // within its pause_timeout.
            watch_awaiting_done();
        }
    }

    /// Has a request body (by the client's framing).
    pub fn has_body(&self) -> bool {
        let (length, chunked) = self.framing;
        length > 0 || chunked
    }
}

/// The chain's server handle: the request context.
#[derive(Clone)]
pub struct NgxChain(pub Arc<ReqCtx>);

impl ChainServer for NgxChain {
    fn signals(&self) -> &Signals {
        &self.0.signals
    }

    fn arm_pause_timer(&mut self, timeout: Duration) {
        // SAFETY: the event lives in the context, whose pool cleanup deletes
        // the timer before the context can go away; worker thread only.
        // ngx_add_timer replaces a timer still armed.
        unsafe { ngx_add_timer(self.0.pause_timer.get(), timeout.as_millis().max(1) as ngx_msec_t) };
    }

    fn cancel_pause_timer(&mut self) {
        let timer = self.0.pause_timer.get();
        // SAFETY: as above.
        unsafe {
            if (*timer).timer_set() != 0 {
                ngx_del_timer(timer);
            }
        }
    }

    fn schedule_resume(&self) {
        let ev = self.0.ev.get();
        // SAFETY: the event lives in the context (see above); posting only.
        if self.0.r().is_some() && unsafe { (*ev).posted() } == 0 {
            post_event(ev);
        }
    }

    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        if !super::base::log_enabled(level) {
            return;
        }
        if plugin.is_empty() {
            log(level, &format!("[proxy_wasm] {message}"));
        } else {
            log(level, &format!("[proxy_wasm] {plugin}: {message}"));
        }
    }

    /// On nginx's thread pool (`thread_task`); back on the event loop, the link resumes if the
    /// request still lives (else the result is dropped with the task).
    fn run_off_loop(&self, job: proxy_wasm_host::chain::OffLoop) -> Result<(), String> {
        let proxy_wasm_host::chain::OffLoop { work, link, direction, .. } = job;
        let ctx = self.0.clone();
        let done = move || {
            if ctx.r().is_some() {
                proxy_wasm_host::chain::offload_done(&NgxChain(ctx.clone()), link, direction);
            }
        };
        super::thread_task::post(work, Box::new(done))
    }
}

thread_local! {
    /// The context of the worker's last finished request, when nothing else
    /// held it any more, kept for the next request: a worker runs one request
    /// after another, so the context is not allocated and freed per request.
    static SPARE_CTX: Cell<Option<Arc<ReqCtx>>> = const { Cell::new(None) };
}

/// The context of request `r` (client framing `framing`) with the events `ev` and
/// `pause_timer`, in the spare context's memory when there is one. The spare is reset field by
/// field: building a whole `ReqCtx` and moving it in costs two copies of it per request.
pub(super) fn new_ctx(
    r: *mut ngx_http_request_t,
    framing: (off_t, bool),
    ev: ngx_event_t,
    pause_timer: ngx_event_t,
) -> Arc<ReqCtx> {
    if let Some(mut ctx) = SPARE_CTX.with(|s| s.take()) {
        if let Some(c) = Arc::get_mut(&mut ctx) {
            c.reuse(r, framing, ev, pause_timer);
            return ctx;
        }
    }
    Arc::new(ReqCtx {
        r: AtomicPtr::new(r),
        signals: Signals::new(),
        ev: UnsafeCell::new(ev),
        pause_timer: UnsafeCell::new(pause_timer),
        chain: RefCell::new(None),
        framing,
        suspended: Cell::new(false),
        pending: RefCell::new(None),
        answered: Cell::new(false),
        body: RefCell::new(Default::default()),
        response_started: Cell::new(false),
        headers_held: Cell::new(false),
        body_held: Cell::new(false),
        replace_body: RefCell::new(None),
        replaced_sent: Cell::new(false),
        response_eos_sent: Cell::new(false),
        response_length: Cell::new(None),
        response_seen: Cell::new(0),
        local_details: RefCell::new(None),
        response_sent: Cell::new(0),
    })
}

impl ReqCtx {
    /// Makes a spare context (see `keep_spare`: its chain, body, pending answer and replacement
    /// body are gone, its events off nginx's queues) the context of `r`, as `new_ctx` builds one.
    fn reuse(&mut self, r: *mut ngx_http_request_t, framing: (off_t, bool), ev: ngx_event_t, pause_timer: ngx_event_t) {
        *self.r.get_mut() = r;
        self.signals = Signals::new();
        *self.ev.get_mut() = ev;
        *self.pause_timer.get_mut() = pause_timer;
        *self.chain.get_mut() = None;
        self.framing = framing;
        *self.suspended.get_mut() = false;
        *self.pending.get_mut() = None;
        *self.answered.get_mut() = false;
        *self.body.get_mut() = RequestBody::default();
        *self.response_started.get_mut() = false;
        *self.headers_held.get_mut() = false;
        *self.body_held.get_mut() = false;
        *self.replace_body.get_mut() = None;
        *self.replaced_sent.get_mut() = false;
        *self.response_eos_sent.get_mut() = false;
        *self.response_length.get_mut() = None;
        *self.response_seen.get_mut() = 0;
        *self.local_details.get_mut() = None;
        *self.response_sent.get_mut() = 0;
    }
}

/// Keeps a finished request's context as the spare if nothing else holds it
/// (a plugin's stream context waiting for `proxy_done` does); what the
/// request held (body bytes, a pending answer) is freed now.
fn keep_spare(mut ctx: Arc<ReqCtx>) {
    let Some(c) = Arc::get_mut(&mut ctx) else { return };
    *c.body.get_mut() = RequestBody::default();
    *c.replace_body.get_mut() = None;
    *c.pending.get_mut() = None;
    SPARE_CTX.with(|s| s.set(Some(ctx)));
}

pub fn get_ctx(r: *mut ngx_http_request_t) -> Option<&'static ReqCtx> {
    use ngx::http::HttpModule;
    // SAFETY: nginx's live request; r->ctx has a slot per HTTP module, ours null or a pointer
    // from Arc::into_raw (phase.rs), alive until the pool cleanup releases it.
    unsafe { ngx::http::Request::from_ngx_http_request(r) }
        .get_module_ctx::<ReqCtx>(super::base::ProxyWasmModule::module())
}

/// A strong reference to the context behind an event's data (so that it
/// outlives what the event handler does, the request's end included).
///
/// # Safety
/// `data` is a live context's address (as set in `create_ctx`).
pub unsafe fn ctx_of_event(data: *mut c_void) -> Arc<ReqCtx> {
    let p = data as *const ReqCtx;
    // SAFETY: the pointer came from an Arc that is alive (see above).
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

pub(super) unsafe extern "C" fn cleanup(data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `data` is the Arc::into_raw pointer set in `create_ctx`; the pool runs this once.
        let ctx = unsafe { Arc::from_raw(data as *const ReqCtx) };
        ctx.finish();
        ctx.r.store(std::ptr::null_mut(), Ordering::Release);
        // Breaks the cycle context -> chain -> server handle -> context. Dropped in place, not
        // moved out first (two copies of a large value per request); a re-entry meanwhile finds
        // the chain in use, as it would find it gone.
        if let Ok(mut chain) = ctx.chain.try_borrow_mut() {
            *chain = None;
        }
        // SAFETY: the events live in ctx; taking them off nginx's queues
        // before the context may go away.
        unsafe {
            let ev = ctx.ev.get();
            if (*ev).posted() != 0 {
                ngx_delete_posted_event(ev);
            }
            let timer = ctx.pause_timer.get();
            if (*timer).timer_set() != 0 {
                ngx_del_timer(timer);
            }
        }
        keep_spare(ctx);
    });
}
