//! Otoroshi jobs (`otoroshi.jobs`) on Traffic Server: once per process and plugin set, on task
//! threads. A job is a continuation with its own mutex (its calls never overlap): `job_start`
//! scheduled at once, then `job_run` every `interval` (`TSContScheduleEveryOnPool`; the first
//! after `initial_delay` when one is given). When the set is retired (a reload replaced it, its
//! last remap rule is gone) or Traffic Server shuts down, the schedule is cancelled under the
//! job's mutex and `job_stop` runs.

use std::collections::HashMap;
use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once};

use super::server::log;
use super::sys::*;
use proxy_wasm_host::abi::LogLevel;
// Jobs run on task threads, where a plugin's HTTP calls may block.
use proxy_wasm_host::chain::extism::jobs::{jobs_of, Job};
use proxy_wasm_host::chain::EntityLink;
use proxy_wasm_host::extism::http::off_the_event_loop;

const NEW: u8 = 0;
const FIRST: u8 = 1;
const EVERY: u8 = 2;

struct AtsJob {
    job: Job,
    /// `NEW` (`job_start` to run), `FIRST` (waiting for `initial_delay`), `EVERY` (periodic).
    state: AtomicU8,
    /// The pending schedule (a one-shot event or the periodic one), cancelled at stop. Read and
    /// written under the continuation's mutex.
    action: Mutex<Option<usize>>,
}

/// The continuations of the running jobs, by plugin set id (`TSCont` as an address).
static RUNNING: Mutex<Option<HashMap<u64, Vec<usize>>>> = Mutex::new(None);

fn running() -> std::sync::MutexGuard<'static, Option<HashMap<u64, Vec<usize>>>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: std::time::Duration) -> TSHRTime {
    d.as_millis().min(i64::MAX as u128) as TSHRTime
}

/// Starts the jobs among `entities`, as the jobs of the plugin set `set`.
pub fn start(set: u64, entities: &[Arc<EntityLink>]) {
    let jobs = jobs_of(entities);
    if jobs.is_empty() {
        return;
    }
    static SHUTDOWN: Once = Once::new();
    SHUTDOWN.call_once(|| {
        // SAFETY: a continuation without data for the shutdown lifecycle hook.
        unsafe {
            TSLifecycleHookAdd(TS_LIFECYCLE_SHUTDOWN_HOOK, TSContCreate(Some(on_shutdown), std::ptr::null_mut()))
        };
    });
    let mut conts = Vec::new();
    for job in jobs {
        let id = job.entity.plugin.id.clone();
        let interval = job.interval;
        let data = Box::into_raw(Box::new(AtsJob { job, state: AtomicU8::new(NEW), action: Mutex::new(None) }));
        // SAFETY: a continuation with its own mutex; its data is the leaked job, freed at stop.
        unsafe {
            let contp = TSContCreate(Some(on_event), TSMutexCreate());
            TSContDataSet(contp, data as *mut c_void);
            let mutex = TSContMutexGet(contp);
            TSMutexLock(mutex);
            let action = TSContScheduleOnPool(contp, 0, TS_THREAD_POOL_TASK);
            *(*data).action.lock().unwrap_or_else(|p| p.into_inner()) = Some(action as usize);
            TSMutexUnlock(mutex);
            conts.push(contp as usize);
        }
        log(LogLevel::Info, &format!("[proxy_wasm] otoroshi job {id} scheduled: job_run every {interval:?}"));
    }
    running().get_or_insert_with(HashMap::new).entry(set).or_default().extend(conts);
}

/// Stops the jobs of the plugin set `set` (on this thread: `job_stop` runs here).
pub fn stop(set: u64) {
    let conts = running().as_mut().and_then(|m| m.remove(&set)).unwrap_or_default();
    for contp in conts {
        // SAFETY: a job continuation made by `start`, stopped once (removed from RUNNING above).
        unsafe { stop_one(contp as TSCont) };
    }
}

/// # Safety
/// `contp` is a job continuation of `start`, not stopped yet.
unsafe fn stop_one(contp: TSCont) {
    // SAFETY: see above. Under the continuation's mutex its handler is not running, and the
    // pending event (if any) has not been handled, so cancelling it is valid.
    unsafe {
        let mutex = TSContMutexGet(contp);
        TSMutexLock(mutex);
        let data = TSContDataGet(contp) as *mut AtsJob;
        if let Some(action) = (*data).action.lock().unwrap_or_else(|p| p.into_inner()).take() {
            TSActionCancel(action as TSAction);
        }
        TSMutexUnlock(mutex);
        let job = Box::from_raw(data);
        let id = job.job.entity.plugin.id.clone();
        match off_the_event_loop(|| job.job.stop()) {
            Ok(()) => log(LogLevel::Info, &format!("[proxy_wasm] otoroshi job {id} stopped")),
            Err(e) => log(LogLevel::Error, &e),
        }
        TSContDestroy(contp);
    }
}

extern "C" fn on_event(contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the job's continuation (its mutex held by Traffic Server); its data lives until
        // `stop_one`, which cancels this schedule under the same mutex first.
        let job = unsafe { &*(TSContDataGet(contp) as *const AtsJob) };
        let (delay, every) = (job.job.initial_delay, job.job.interval);
        let next = match job.state.load(Ordering::Acquire) {
            NEW => {
                if let Err(e) = off_the_event_loop(|| job.job.start()) {
                    log(LogLevel::Error, &e);
                }
                if delay.is_zero() {
                    EVERY
                } else {
                    FIRST
                }
            }
            state => {
                if let Err(e) = off_the_event_loop(|| job.job.run()) {
                    log(LogLevel::Error, &e);
                }
                if state == FIRST {
                    EVERY
                } else {
                    // A periodic event: the schedule stays.
                    return;
                }
            }
        };
        // The one-shot event that ran is done: the next schedule replaces it.
        // SAFETY: this continuation; the action is kept to cancel it at stop.
        let action = unsafe {
            if next == FIRST {
                TSContScheduleOnPool(contp, ms(delay), TS_THREAD_POOL_TASK)
            } else {
                TSContScheduleEveryOnPool(contp, ms(every), TS_THREAD_POOL_TASK)
            }
        };
        *job.action.lock().unwrap_or_else(|p| p.into_inner()) = Some(action as usize);
        job.state.store(next, Ordering::Release);
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in an otoroshi job");
    }
    0
}

extern "C" fn on_shutdown(_contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(|| {
        let sets: Vec<u64> = running().as_ref().map(|m| m.keys().copied().collect()).unwrap_or_default();
        for set in sets {
            stop(set);
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) stopping the otoroshi jobs");
    }
    0
}
