//! Otoroshi jobs (`otoroshi.jobs`) in an NGINX worker: `job_start` in `init_process`, `job_run`
//! on a timer of the worker's event loop every `interval` (the first after `initial_delay`, else
//! after one interval), `job_stop` in `exit_process`. Every worker runs each job (as every
//! Otoroshi instance runs a job of `OneInstancePerOtoroshiInstance`), unless the job says
//! `instantiation: one`: then one worker at a time holds it, through a lease in the shared-memory
//! zone's data store (key `proxy_wasm:job:<id>`, the holder's pid, kept for two intervals and
//! renewed at each run). The holder calls `job_start` when it takes the lease and `job_stop` when
//! it exits (and gives the lease back); a worker that dies without giving it back loses it when
//! it expires, and the next worker whose timer fires takes it. The timers are cancelable: they
//! never hold up a graceful shutdown.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

use ngx::ffi::*;

use super::base::{log, new_event};
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::extism::jobs::{jobs_of, Job};
use proxy_wasm_host::chain::EntityLink;

struct WorkerJob {
    job: Job,
    ev: ngx_event_t,
    /// `job_start` ran in this worker (for a one-worker job: it holds the lease).
    started: bool,
}

/// The lease of a one-worker job in the zone's data store.
fn lease_key(job: &Job) -> String {
    format!("proxy_wasm:job:{}", job.entity.plugin.id)
}

/// The shortest lease of a one-worker job.
const LEASE_MIN: Duration = Duration::from_secs(5);

/// Takes or renews the lease of a one-worker job: whether this worker holds it.
fn hold_lease(job: &Job) -> bool {
    let store = proxy_wasm_host::extism::otoroshi::datastore::process_datastore();
    let key = lease_key(job);
    let me = std::process::id().to_string();
    // At least a few seconds: a holder whose event loop stalls (a reload's compile, a loaded
    // machine) would otherwise lose the job to another worker while it still runs it.
    let ttl = job.interval.saturating_mul(2).max(LEASE_MIN);
    match store.get(&key) {
        Some(holder) if holder == me.as_bytes() && store.pexpire(&key, ttl.as_millis() as i64) => true,
        Some(holder) if holder != me.as_bytes() => false,
        // Free (or expired since it was read): the first worker to ask takes it.
        _ => store.setnx(&key, me.as_bytes(), Some(ttl)).unwrap_or(false),
    }
}

/// Gives the lease back if this worker holds it.
fn release_lease(job: &Job) {
    let store = proxy_wasm_host::extism::otoroshi::datastore::process_datastore();
    let key = lease_key(job);
    if store.get(&key).is_some_and(|holder| holder == std::process::id().to_string().as_bytes()) {
        store.del(&[key]);
    }
}

/// `job_start` for a job that starts in every worker, or, for a one-worker job, once this worker
/// holds its lease: whether the job runs here now.
fn ensure_started(j: &mut WorkerJob) -> bool {
    if j.job.one_worker && !hold_lease(&j.job) {
        if std::mem::take(&mut j.started) {
            // Another worker holds it now (this one stalled past the lease): it stops here.
            if let Err(e) = j.job.stop() {
                log(LogLevel::Error, &e);
            }
        }
        return false;
    }
    if !j.started {
        j.started = true;
        if let Err(e) = j.job.start() {
            log(LogLevel::Error, &e);
        }
        log(
            LogLevel::Info,
            &format!(
                "[proxy_wasm] otoroshi job {} started in worker (pid {}): job_run every {:?}",
                j.job.entity.plugin.id,
                std::process::id(),
                j.job.interval
            ),
        );
    }
    true
}

thread_local! {
    /// The worker's jobs; boxed, so that each timer's data (its job) stays where it is.
    static JOBS: RefCell<Vec<Box<WorkerJob>>> = const { RefCell::new(Vec::new()) };
}

fn arm(ev: &mut ngx_event_t, after: Duration) {
    // SAFETY: the event lives in its boxed job until `stop` removes its timer.
    unsafe { ngx_add_timer(ev, (after.as_millis() as ngx_msec_t).max(1)) };
}

/// Starts the jobs of the worker's entities: `job_start` now, `job_run` on their timers.
pub fn start(entities: &[Arc<EntityLink>]) {
    let jobs = jobs_of(entities);
    if jobs.is_empty() {
        return;
    }
    // The cached time is the master's until the worker's event loop updates it: the first
    // timers count from now.
    // SAFETY: nginx's time cache, updated on the worker's only thread.
    unsafe { ngx_time_update() };
    JOBS.with(|all| {
        let mut all = all.borrow_mut();
        for job in jobs {
            let first = if job.initial_delay.is_zero() { job.interval } else { job.initial_delay };
            let mut boxed = Box::new(WorkerJob { job, ev: new_event(on_timer, std::ptr::null_mut()), started: false });
            ensure_started(&mut boxed);
            boxed.ev.data = &mut *boxed as *mut WorkerJob as *mut c_void;
            boxed.ev.set_cancelable(1);
            arm(&mut boxed.ev, first);
            all.push(boxed);
        }
    });
}

/// Stops the worker's jobs: timers removed, then `job_stop`.
pub fn stop() {
    let jobs = JOBS.with(|all| std::mem::take(&mut *all.borrow_mut()));
    for mut j in jobs {
        if j.ev.timer_set() != 0 {
            // SAFETY: our own timer event, still in the tree.
            unsafe { ngx_del_timer(&mut j.ev) };
        }
        if !j.started {
            continue;
        }
        match j.job.stop() {
            Ok(()) => log(LogLevel::Info, &format!("[proxy_wasm] otoroshi job {} stopped", j.job.entity.plugin.id)),
            Err(e) => log(LogLevel::Error, &e),
        }
        if j.job.one_worker {
            release_lease(&j.job);
        }
    }
}

unsafe extern "C" fn on_timer(ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: the timer's data is its boxed job, alive while the timer is set (`stop` removes
        // the timer before dropping the job).
        let job = unsafe { &mut *((*ev).data as *mut WorkerJob) };
        if ensure_started(job) {
            if let Err(e) = job.job.run() {
                log(LogLevel::Error, &e);
            }
        }
        // SAFETY: nginx's globals, read on the worker's thread.
        if unsafe { ngx_exiting == 0 && ngx_quit == 0 && ngx_terminate == 0 } {
            let interval = job.job.interval;
            arm(&mut job.ev, interval);
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in an otoroshi job");
    }
}
