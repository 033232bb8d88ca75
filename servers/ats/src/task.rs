//! Plugin calls off the event loop on Traffic Server: the calls of an Otoroshi entity that can
//! make outgoing HTTP calls (`http_request`, `proxy_http_call` block until the answer) run on
//! threads of that entity's own pool, never on the transaction's exec thread. The transaction
//! waits meanwhile as for any paused link; once the call returned, the link's resume is recorded
//! and the transaction's continuation is scheduled back on its own thread (a wake-up counted in
//! `TxnShared::wakes` when the task was posted, so the continuation outlives TXN_CLOSE until it
//! arrives), where the chain picks up the result and the transaction is reenabled. A transaction
//! closed meanwhile finds nothing waiting: the result is dropped with the chain.
//!
//! Why a pool per entity, and not Traffic Server's task threads (`TS_THREAD_POOL_TASK`, 2 by
//! default): a call blocks its thread until the service answers, so two slow calls held every
//! task thread, and with them every other entity's calls (and anything else Traffic Server runs
//! there). Each entity gets up to [`THREADS_PER_PLUGIN`] threads (`TSThreadCreate`, so they may
//! use the API), made when a call finds none idle; past that, calls queue in order. A thread
//! idle for [`IDLE_EXIT`] exits. So a slow service holds the calls of the entities that ask it,
//! up to their bound, and nothing else.

use std::collections::{HashMap, VecDeque};
use std::os::raw::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::server::log;
use super::shared::TxnShared;
use super::sys::*;
use proxy_wasm_host::abi::{LogLevel, StreamType};
use proxy_wasm_host::chain::OffLoop;

/// The most threads one entity's calls run on at once (NGINX's thread pool `default` has 32 for
/// all entities).
pub const THREADS_PER_PLUGIN: usize = 16;
/// How long a pool thread waits for another call before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(30);

struct Task {
    work: Option<Box<dyn FnOnce() + Send + 'static>>,
    shared: Arc<TxnShared>,
    link: u32,
    direction: StreamType,
    /// The transaction's thread, where the result goes back.
    thread: TSEventThread,
}

// SAFETY: the only field that is not Send is the event thread handle, an opaque pointer Traffic
// Server accepts from any thread when scheduling onto that thread; it is never dereferenced here.
unsafe impl Send for Task {}

/// One entity's threads and the calls waiting for one.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    work: Condvar,
}

#[derive(Default)]
struct PoolState {
    tasks: VecDeque<Box<Task>>,
    threads: usize,
    idle: usize,
}

/// The pools, by entity id; an entity keeps its pool (its threads exit when idle).
fn pool_of(owner: &str) -> Arc<Pool> {
    static POOLS: OnceLock<Mutex<HashMap<String, Arc<Pool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    pools.entry(owner.to_owned()).or_default().clone()
}

/// Queues `job` on its entity's pool for the transaction of `shared` (`ChainServer::run_off_loop`).
/// Called under the transaction's mutex, from a chain call.
pub fn post(shared: &Arc<TxnShared>, job: OffLoop) -> Result<(), String> {
    if shared.contp.load(Ordering::Acquire).is_null() {
        return Err("the transaction has no continuation".into());
    }
    let OffLoop { work, link, direction, owner } = job;
    // SAFETY: called on the transaction's event thread (a hook or one of its events).
    let thread = unsafe { TSEventThreadSelf() };
    if thread.is_null() {
        return Err("not called on a Traffic Server event thread".into());
    }
    let pool = pool_of(&owner);
    let mut state = pool.state.lock().unwrap_or_else(|p| p.into_inner());
    // The wake-up that brings the result back is counted now, while the transaction lives.
    shared.expect_wake();
    state.tasks.push_back(Box::new(Task { work: Some(work), shared: shared.clone(), link, direction, thread }));
    if state.tasks.len() > state.idle && state.threads < THREADS_PER_PLUGIN {
        let raw = Arc::into_raw(pool.clone());
        // SAFETY: the thread takes the pool reference; if it cannot start, the reference is ours.
        let t = unsafe { TSThreadCreate(Some(pool_thread), raw as *mut c_void) };
        if t.is_null() {
            // SAFETY: as above, the thread did not start.
            drop(unsafe { Arc::from_raw(raw) });
            if state.threads == 0 {
                // No thread would ever run it: the call fails now.
                state.tasks.pop_back();
                shared.unexpect_wake();
                return Err("cannot start a thread for the call".into());
            }
        } else {
            state.threads += 1;
        }
    }
    drop(state);
    pool.work.notify_one();
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

/// A thread of an entity's pool: runs its calls in order, each result sent back to its
/// transaction's thread, until it sat idle for [`IDLE_EXIT`].
extern "C" fn pool_thread(data: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the Arc<Pool> reference `post` gave this thread.
    let pool = unsafe { Arc::from_raw(data as *const Pool) };
    loop {
        let mut state = pool.state.lock().unwrap_or_else(|p| p.into_inner());
        let task = loop {
            if let Some(task) = state.tasks.pop_front() {
                break Some(task);
            }
            state.idle += 1;
            let (next, waited) = pool.work.wait_timeout(state, IDLE_EXIT).unwrap_or_else(|p| p.into_inner());
            state = next;
            state.idle -= 1;
            if waited.timed_out() && state.tasks.is_empty() {
                break None;
            }
        };
        let Some(mut task) = task else {
            state.threads -= 1;
            return std::ptr::null_mut();
        };
        drop(state);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let txn_contp = run(&mut task);
            // SAFETY: this thread was made by TSThreadCreate, so it may use the API; the
            // transaction's continuation lives until the wake-up counted in `post` arrives, and
            // runs on the transaction's thread, under the transaction's mutex.
            unsafe { TSContScheduleOnThread(txn_contp, 0, task.thread) };
        }));
        if r.is_err() {
            log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a plugin call run on its pool's thread");
        }
    }
}
