//! Shared data, shared queues, metrics and the Otoroshi entities' data store of all workers in
//! one nginx shared-memory zone named `proxy_wasm` (`proxy_wasm_shm_size`, default 1m).
//!
//! The zone is declared while the configuration is read (`init_main_conf`,
//! only when `proxy_wasm_config` loaded plugins); nginx maps it in the master,
//! so every worker forked afterwards sees the same memory. The layout and the
//! stores are [`proxy_wasm_host::shm_store`]: offsets from the zone's start, one lock
//! (the zone's `ngx_shmtx_t`, which the master force-unlocks when a worker
//! dies holding it). After a reload with the same size nginx hands the old
//! zone to the new cycle and its content (shared data, queues, metrics) is kept.
//!
//! Each worker, in `init_process`, installs the zone's store as the process
//! store of shared data, queues and metrics (so every VM it starts uses it, and
//! `proxy_wasm_metrics` reads it), and arms a timer every
//! [`POLL_INTERVAL`](proxy_wasm_host::shm_store::POLL_INTERVAL) that delivers queue
//! notifications left by other workers.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::ptr;
use std::sync::Arc;

use ngx::ffi::*;

use super::base::log;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::shm_store::{ShmRegion, ShmStore, ZoneLock, MIN_SIZE, POLL_INTERVAL};

/// Default `proxy_wasm_shm_size`.
pub const DEFAULT_SIZE: usize = 1 << 20;
/// Zones up to this size are checked whole when a worker starts.
const CHECK_AT_START_MAX: usize = 64 << 20;
/// The smallest size accepted (the store's header plus room for entries).
pub const MIN_ZONE_SIZE: usize = 32 * 1024;
const _: () = assert!(MIN_ZONE_SIZE > MIN_SIZE + 1024);

/// The zone settings of one configuration cycle (in its `MainConf`).
pub struct ShmConf {
    /// `proxy_wasm_shm_size`, when given.
    pub size: Option<usize>,
    /// The zone, declared in `init_main_conf` when there are plugins.
    pub zone: *mut ngx_shm_zone_t,
}

impl Default for ShmConf {
    fn default() -> ShmConf {
        ShmConf { size: None, zone: ptr::null_mut() }
    }
}

/// Where our layout starts: after the slab pool header nginx keeps at the
/// start of every zone (its mutex is the one we lock; the master's crash
/// handling looks at it, so it stays intact).
fn region_offset() -> usize {
    (std::mem::size_of::<ngx_slab_pool_t>() + 63) & !63
}

const NGX_CONF_ERROR_PTR: *mut c_char = usize::MAX as *mut c_char;

/// `proxy_wasm_shm_size <size>;`, for the main configuration's `shm`.
///
/// # Safety
/// `cf` is live and `cf->args` holds the directive and its one argument.
pub unsafe fn set_size(cf: *mut ngx_conf_t, shm: &mut ShmConf) -> *mut c_char {
    {
        // SAFETY: per the contract.
        unsafe {
            if shm.size.is_some() {
                return super::base::cstr(b"is duplicate\0") as *mut c_char;
            }
            let arg = ((*(*cf).args).elts as *mut ngx_str_t).add(1);
            let size = ngx_parse_size(arg);
            if size < 0 {
                ngx_conf_log_error(
                    NGX_LOG_EMERG as ngx_uint_t,
                    cf,
                    0,
                    super::base::cstr(b"proxy_wasm_shm_size: invalid size \"%V\"\0"),
                    arg,
                );
                return NGX_CONF_ERROR_PTR;
            }
            let size = size as usize;
            if !(MIN_ZONE_SIZE..=u32::MAX as usize).contains(&size) {
                ngx_conf_log_error(
                    NGX_LOG_EMERG as ngx_uint_t,
                    cf,
                    0,
                    super::base::cstr(b"proxy_wasm_shm_size: \"%V\" is out of range (32k to 4095m)\0"),
                    arg,
                );
                return NGX_CONF_ERROR_PTR;
            }
            shm.size = Some(size);
        }
        ptr::null_mut()
    }
}

/// Declares the zone when the configuration has plugins or Otoroshi entities (their data
/// store lives in it) (`init_main_conf`).
///
/// # Safety
/// `cf` is live (configuration time).
pub unsafe fn declare_zone(
    cf: *mut ngx_conf_t,
    shm: &mut ShmConf,
    plugins: &[proxy_wasm_host::config::PluginConfig],
    has_entities: bool,
) -> *mut c_char {
    {
        // SAFETY: per the contract.
        unsafe {
            if plugins.is_empty() && !has_entities {
                return ptr::null_mut();
            }
            let mut name = ngx_str_t { len: 10, data: b"proxy_wasm".as_ptr() as *mut u8 };
            let size = shm.size.unwrap_or(DEFAULT_SIZE);
            let zone = ngx_shared_memory_add(cf, &mut name, size, super::base::module() as *mut c_void);
            if zone.is_null() {
                return NGX_CONF_ERROR_PTR;
            }
            (*zone).init = Some(init_zone);
            shm.zone = zone;
            let caps: Vec<(String, u64)> =
                plugins.iter().map(|p| (p.vm.vm_id.clone(), p.vm.quotas.max_shared_data_size)).collect();
            if let Some(warning) =
                proxy_wasm_host::shm_store::overcommit_warning(size.saturating_sub(region_offset()), &caps)
            {
                if let Ok(text) = std::ffi::CString::new(format!("proxy_wasm_shm_size: {warning}")) {
                    ngx_conf_log_error(NGX_LOG_WARN as ngx_uint_t, cf, 0, super::base::cstr(b"%s\0"), text.as_ptr());
                }
            }
        }
        ptr::null_mut()
    }
}

/// The zone's memory after nginx's slab header.
unsafe fn zone_memory(zone: *mut ngx_shm_zone_t) -> Option<(*mut u8, usize)> {
    // SAFETY: the caller passes a zone that nginx mapped (shm.addr, shm.size).
    unsafe {
        let (addr, size) = ((*zone).shm.addr, (*zone).shm.size);
        let off = region_offset();
        if addr.is_null() || size <= off {
            return None;
        }
        Some((addr.add(off), size - off))
    }
}

/// The zone's `init`: formats a new zone; keeps the content of one reused
/// from the previous cycle (`data` is that cycle's zone data).
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: nginx calls this in the master with the zone mapped and no
        // worker of this cycle running yet; old workers may use a reused zone,
        // which is only attached to (read), never formatted.
        unsafe {
            let Some((base, len)) = zone_memory(zone) else { return NGX_ERROR as ngx_int_t };
            if !data.is_null() && ShmRegion::attach(base, len).is_ok() {
                (*zone).data = data;
                return NGX_OK as ngx_int_t;
            }
            match ShmRegion::format(base, len) {
                Ok(_) => {
                    (*zone).data = (*zone).shm.addr as *mut c_void;
                    NGX_OK as ngx_int_t
                }
                Err(e) => {
                    log(LogLevel::Critical, &format!("[proxy_wasm] shared memory zone: {e}"));
                    NGX_ERROR as ngx_int_t
                }
            }
        }
    });
    r.unwrap_or(NGX_ERROR as ngx_int_t)
}

/// The zone's mutex (`ngx_shmtx_t` in nginx's slab header).
struct NgxShmtx(*mut ngx_shmtx_t);

// SAFETY: the mutex lives in shared memory for the worker's lifetime; nginx
// workers use it from their one thread.
unsafe impl Send for NgxShmtx {}
// SAFETY: as above.
unsafe impl Sync for NgxShmtx {}

impl ZoneLock for NgxShmtx {
    fn lock(&self) {
        // SAFETY: the mutex was created by nginx (ngx_init_zone_pool) before fork.
        unsafe { ngx_shmtx_lock(self.0) }
    }
    fn unlock(&self) {
        // SAFETY: as above; we hold it.
        unsafe { ngx_shmtx_unlock(self.0) }
    }
}

struct Poller {
    ev: Box<ngx_event_t>,
    store: Arc<ShmStore>,
}

thread_local! {
    static POLLER: RefCell<Option<Poller>> = const { RefCell::new(None) };
}

/// `init_process`: this worker's shared data, queues and metrics are the zone's.
pub fn install_in_worker(shm: &ShmConf) {
    let zone = shm.zone;
    if zone.is_null() {
        return;
    }
    // SAFETY: the zone of the running cycle, mapped before fork; formatted by init_zone.
    let store = unsafe {
        let Some((base, len)) = zone_memory(zone) else { return };
        let region = match ShmRegion::attach(base, len) {
            Ok(r) => r,
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("[proxy_wasm] shared memory zone: {e}; shared data, queues and metrics stay per worker"),
                );
                return;
            }
        };
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        let lock = NgxShmtx(ptr::addr_of_mut!((*pool).mutex));
        Arc::new(ShmStore::new(region, Box::new(lock), Box::new(|level, m| log(level, &format!("[proxy_wasm] {m}")))))
    };
    // A zone kept across a reload: checked before this worker uses it
    // (rebuilt empty, with a critical line, if damaged). The check walks the
    // whole zone under its lock, so larger zones are left to the checks every
    // operation makes (an update a dead worker left is undone either way).
    if store.region().size() <= CHECK_AT_START_MAX {
        store.check();
    }
    proxy_wasm_host::shared::set_process_stores(store.clone(), store.clone());
    // Otoroshi entities' data store: every worker's keys in the zone (the in-memory maps stay
    // per worker, as Otoroshi's are per instance).
    proxy_wasm_host::extism::otoroshi::datastore::set_process_datastore(Arc::new(
        proxy_wasm_host::shm_store::ShmDataStore::new(store.clone(), proxy_wasm_host::chain::extism::DATA_CAP),
    ));
    proxy_wasm_host::metrics::set_process_metrics(store.clone());
    let mut ev = Box::new(super::base::new_event(on_poll, ptr::null_mut()));
    ev.set_cancelable(1);
    // SAFETY: the event lives in the thread-local box until stop_in_worker removes its timer.
    unsafe { ngx_add_timer(&mut *ev, POLL_INTERVAL.as_millis() as ngx_msec_t) };
    POLLER.with(|p| *p.borrow_mut() = Some(Poller { ev, store }));
}

/// Delivers queue notifications other workers left for this one.
unsafe extern "C" fn on_poll(ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        let store = POLLER.with(|p| p.borrow().as_ref().map(|p| p.store.clone()));
        if let Some(store) = store {
            store.poll();
        }
        // SAFETY: `ev` is the poller's event, alive in its box (see install_in_worker).
        unsafe {
            if (*ev).timer_set() == 0 {
                ngx_add_timer(ev, POLL_INTERVAL.as_millis() as ngx_msec_t);
            }
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) delivering queue notifications");
    }
}

/// `exit_process`: stops the poller.
pub fn stop_in_worker() {
    POLLER.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            if p.ev.timer_set() != 0 {
                // SAFETY: our own timer event, still in the tree.
                unsafe { ngx_del_timer(&mut *p.ev) };
            }
        }
    });
}
