//! Plugin calls off the event loop on Traffic Server: the calls of an Otoroshi entity that can
//! make outgoing HTTP calls (`http_request`, `proxy_http_call` block until the answer) run on a
//! task thread (`TSContScheduleOnPool(.., TS_THREAD_POOL_TASK)`, `proxy.config.task_threads`,
//! 2 by default), never on the transaction's exec thread. The transaction waits meanwhile as for
//! any paused link; once the call returned, the link's resume is recorded and the transaction's
//! continuation is scheduled back on its own thread (a wake-up counted in `TxnShared::wakes`
//! when the task was posted, so the continuation outlives TXN_CLOSE until it arrives), where
//! the chain picks up the result and the transaction is reenabled. A transaction closed
//! meanwhile finds nothing waiting: the result is dropped with the chain.
//!
//! Traffic Server 9.2 may accept transactions before it started its task threads (it then
//! cannot schedule on them); until `TS_LIFECYCLE_TASK_THREADS_READY_HOOK` fired, a call runs on
//! a thread of its own (`TSThreadCreate`, as `http_call` does) and comes back with
//! `TSContScheduleOnThread` to the transaction's thread.

use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use super::server::log;
use super::shared::TxnShared;
use super::sys::*;
use proxy_wasm_host::abi::{LogLevel, StreamType};
use proxy_wasm_host::chain::OffLoop;

struct Task {
    work: Option<Box<dyn FnOnce() + Send + 'static>>,
    shared: Arc<TxnShared>,
    link: u32,
    direction: StreamType,
    /// The transaction's thread, for a task run on a thread of its own.
    thread: TSEventThread,
}

/// Traffic Server's task threads run (its lifecycle hook said so).
static TASK_THREADS_READY: AtomicBool = AtomicBool::new(false);

/// Registers the lifecycle hook that tells when the task threads run (from the plugin's init
/// functions, once per process).
pub fn watch_task_threads() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a continuation for a lifecycle hook, from a plugin init function.
        unsafe {
            TSLifecycleHookAdd(
                TS_LIFECYCLE_TASK_THREADS_READY_HOOK,
                TSContCreate(Some(on_task_threads_ready), std::ptr::null_mut()),
            )
        };
    });
}

extern "C" fn on_task_threads_ready(_contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    TASK_THREADS_READY.store(true, Ordering::Release);
    0
}

/// Schedules `job` on a task thread for the transaction of `shared` (`ChainServer::run_off_loop`).
/// Called under the transaction's mutex, from a chain call.
pub fn post(shared: &Arc<TxnShared>, job: OffLoop) -> Result<(), String> {
    if shared.contp.load(Ordering::Acquire).is_null() {
        return Err("the transaction has no continuation".into());
    }
    let OffLoop { work, link, direction } = job;
    // SAFETY: called on the transaction's event thread (a hook or one of its events).
    let thread = unsafe { TSEventThreadSelf() };
    let task = Box::new(Task { work: Some(work), shared: shared.clone(), link, direction, thread });
    if !TASK_THREADS_READY.load(Ordering::Acquire) {
        if thread.is_null() {
            return Err("Traffic Server's task threads are not started yet".into());
        }
        let raw = Box::into_raw(task);
        // The wake-up that brings the result back is counted now, while the transaction lives.
        shared.expect_wake();
        // SAFETY: the thread takes the task; if it cannot start the task is still ours.
        let t = unsafe { TSThreadCreate(Some(task_thread), raw as *mut c_void) };
        if t.is_null() {
            // SAFETY: as above; the wake-up counted above will not come.
            drop(unsafe { Box::from_raw(raw) });
            shared.unexpect_wake();
            return Err("cannot start a thread for the call".into());
        }
        return Ok(());
    }
    // The wake-up that brings the result back is counted now, while the transaction lives.
    shared.expect_wake();
    // SAFETY: a new continuation with its own mutex, its data the task leaked here and taken
    // back by its only event (`on_task`); scheduling from an exec thread.
    unsafe {
        let contp = TSContCreate(Some(on_task), TSMutexCreate());
        TSContDataSet(contp, Box::into_raw(task) as *mut c_void);
        TSContScheduleOnPool(contp, 0, TS_THREAD_POOL_TASK);
    }
    Ok(())
}

/// Runs the task's work, then records the link's resume (thread-safe: atomics and mutexes; a
/// no-op if the chain no longer waits). Returns the transaction's continuation.
fn run(task: &mut Task) -> TSCont {
    if let Some(work) = task.work.take() {
        // The work catches a panic of the plugin's call itself; this keeps an unwind from
        // crossing into Traffic Server.
        let _ = catch_unwind(AssertUnwindSafe(work));
    }
    let _ = task.shared.signals.request_resume(task.link, task.direction);
    task.shared.contp.load(Ordering::Acquire) as TSCont
}

/// A thread of its own (before the task threads run): the work, then back to the
/// transaction's thread.
extern "C" fn task_thread(data: *mut c_void) -> *mut c_void {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `data` is the Box<Task> leaked by `post`, used once.
        let mut task = unsafe { Box::from_raw(data as *mut Task) };
        let txn_contp = run(&mut task);
        // SAFETY: this thread was made by TSThreadCreate, so it may use the API; the
        // transaction's continuation lives until the wake-up counted in `post` arrives.
        unsafe { TSContScheduleOnThread(txn_contp, 0, task.thread) };
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a plugin call run on its own thread");
    }
    std::ptr::null_mut()
}

/// On a task thread: the work (the plugin's call, which keeps its result itself), then the way
/// back to the transaction's thread.
extern "C" fn on_task(contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the data is the Box<Task> leaked by `post`, used once.
        let mut task = unsafe { Box::from_raw(TSContDataGet(contp) as *mut Task) };
        let txn_contp = run(&mut task);
        // SAFETY: the transaction's continuation lives until the wake-up counted in `post` is
        // delivered (its handler frees it after TXN_CLOSE once none is on its way); it runs on
        // the transaction's thread, under the transaction's mutex.
        unsafe { TSContScheduleOnThread(txn_contp, 0, task.thread) };
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a plugin call run on a task thread");
    }
    // SAFETY: the continuation fired once and is not referenced any more.
    unsafe { TSContDestroy(contp) };
    0
}
