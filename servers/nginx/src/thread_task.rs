//! Plugin calls off the event loop: the calls of an Otoroshi entity that can make outgoing HTTP
//! calls (`http_request`, `proxy_http_call` block until the answer) run as tasks of nginx's
//! thread pool `default` (`thread_pool default threads=32 max_queue=65536;` unless the
//! configuration declares it otherwise). The request's phase handler (or filter) waits meanwhile
//! as for any paused link; the task's completion handler, on the worker's event loop, runs what
//! the request context gave (`context.rs`: the link resumes through `proxy_wasm_host::chain::offload_done`,
//! unless the request is gone: then the result is dropped with the task).
//!
//! The pool is registered while nginx reads the configuration (`register`, from
//! `proxy_wasm_config` when an entity is granted HTTP access) and found in the worker
//! (`attach`, from `init_process`).

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};

use ngx::ffi::*;

use super::base::{cycle_log, log};
use proxy_wasm_host::abi::LogLevel;

/// This worker's thread pool (null: none registered, or not found).
static POOL: AtomicPtr<ngx_thread_pool_t> = AtomicPtr::new(std::ptr::null_mut());

/// Registers a use of nginx's `default` thread pool: nginx then starts its threads in every
/// worker. Returns the pool (the same object the workers inherit).
///
/// # Safety
/// `cf` is the live configuration being read (a directive handler's).
pub unsafe fn register(cf: *mut ngx_conf_t) -> Result<*mut ngx_thread_pool_t, String> {
    // SAFETY: see above; a null name is nginx's `default` pool.
    let tp = unsafe { ngx_thread_pool_add(cf, std::ptr::null_mut()) };
    if tp.is_null() {
        return Err("cannot add the thread pool \"default\" (needed by entities granted HTTP access)".into());
    }
    Ok(tp)
}

/// In the worker: the pool registered for this configuration (null: none).
pub fn attach(tp: *mut ngx_thread_pool_t) {
    POOL.store(tp, Ordering::Release);
}

/// A task of the pool: nginx's task first (its `ctx` and `event.data` point to this struct).
#[repr(C)]
struct Task {
    task: ngx_thread_task_t,
    /// Run on a thread of the pool.
    work: Option<Box<dyn FnOnce() + Send + 'static>>,
    /// Run on the event loop once `work` returned: only touched there (post and completion).
    done: Option<Box<dyn FnOnce() + 'static>>,
}

/// Posts `work` to the pool; `done` runs on the worker's event loop once it returned
/// (`ChainServer::run_off_loop`).
pub fn post(work: Box<dyn FnOnce() + Send + 'static>, done: Box<dyn FnOnce() + 'static>) -> Result<(), String> {
    let tp = POOL.load(Ordering::Acquire);
    if tp.is_null() {
        return Err("this worker has no thread pool (no entity of proxy_wasm_config is granted HTTP access)".into());
    }
    let task = Box::new(Task {
        // SAFETY: ngx_thread_task_t is a C struct of pointers, integers and an event, for which
        // all zeroes is the state ngx_thread_task_alloc gives.
        task: unsafe { std::mem::zeroed() },
        work: Some(work),
        done: Some(done),
    });
    let raw = Box::into_raw(task);
    // SAFETY: `raw` is the live task just leaked; nginx keeps it in the pool's queues until its
    // completion handler (`task_done`) runs on this worker's event loop and takes it back.
    unsafe {
        (*raw).task.ctx = raw as *mut c_void;
        (*raw).task.handler = Some(run_task);
        (*raw).task.event.data = raw as *mut c_void;
        (*raw).task.event.handler = Some(task_done);
        (*raw).task.event.log = cycle_log();
        if ngx_thread_task_post(tp, &mut (*raw).task) != NGX_OK as ngx_int_t {
            drop(Box::from_raw(raw));
            return Err(
                "the thread pool \"default\" refused the task (its queue is full: thread_pool max_queue)".into()
            );
        }
    }
    Ok(())
}

/// On a thread of the pool: the work (the plugin's call), which keeps its result itself.
unsafe extern "C" fn run_task(data: *mut c_void, _log: *mut ngx_log_t) {
    // SAFETY: `data` is the task posted by `post`; until its completion nothing else touches
    // its `work` (the event loop only uses the task again in `task_done`).
    let work = unsafe { (*(data as *mut Task)).work.take() };
    if let Some(work) = work {
        // The work catches a panic of the plugin's call itself (its result then says so); this
        // only keeps an unwind from crossing into nginx.
        let _ = catch_unwind(AssertUnwindSafe(work));
    }
}

/// On the worker's event loop once the task ran: its `done`.
unsafe extern "C" fn task_done(ev: *mut ngx_event_t) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the event's data is the task leaked by `post`, completed once; taken back here.
        let mut task = unsafe { Box::from_raw((*ev).data as *mut Task) };
        if let Some(done) = task.done.take() {
            done();
        }
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) completing a plugin call run off the event loop");
    }
}
