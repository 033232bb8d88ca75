//! `pwh_vms_*`: the VMs of one server thread or worker.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::chain::PluginSet;
use crate::host::ServerHost;
use crate::loader::{PluginRoot, PluginVms};
use crate::vm::{Vm, VmError};

use super::server_host::{CServer, Gate};
use super::{ffi_call, guard, pwh_buffer, pwh_plugins, pwh_server_vtable, pwh_status};

pub(super) struct VmsState {
    pub(super) vms: PluginVms,
    /// Live stream contexts: (vm index, context id) -> plugin index.
    pub(super) streams: HashMap<(usize, u32), usize>,
}

/// The VMs of one server thread or worker (from `pwh_vms_start`). Used by one
/// thread at a time; may move between threads.
pub struct pwh_vms {
    /// Set while a call uses `state`: catches re-entry from callbacks and
    /// concurrent use, which would otherwise alias `state`.
    pub(super) busy: AtomicBool,
    pub(super) state: UnsafeCell<VmsState>,
    /// Immutable copy of `PluginVms::roots`, readable without `busy`.
    pub(super) roots: Vec<PluginRoot>,
    pub(super) gate: Arc<Gate>,
    /// The plugins, for the chains run on these VMs (`pwh_chain_new`).
    pub(super) set: PluginSet,
}

// "May move between threads": the VMs and streams are Send.
const _: () = {
    const fn movable<T: Send>() {}
    movable::<VmsState>();
};

/// Exclusive access to the state of a `pwh_vms`.
pub(super) struct VmsGuard<'a> {
    pub(super) owner: &'a pwh_vms,
}

impl pwh_vms {
    pub(super) fn lock(&self) -> Result<VmsGuard<'_>, String> {
        if self.busy.swap(true, Ordering::Acquire) {
            return Err(
                "pwh_vms is busy: called from one of its own callbacks, or from two threads at once".to_string()
            );
        }
        Ok(VmsGuard { owner: self })
    }

    pub(super) fn root(&self, plugin_index: usize) -> Result<PluginRoot, String> {
        self.roots
            .get(plugin_index)
            .copied()
            .ok_or_else(|| format!("no plugin with index {plugin_index} (there are {})", self.roots.len()))
    }
}

impl Deref for VmsGuard<'_> {
    type Target = VmsState;
    fn deref(&self) -> &VmsState {
        // SAFETY: `busy` was false and is now true for this guard's lifetime, so
        // no other guard (hence no other reference into `state`) exists.
        unsafe { &*self.owner.state.get() }
    }
}

impl DerefMut for VmsGuard<'_> {
    fn deref_mut(&mut self) -> &mut VmsState {
        // SAFETY: as in `deref`; `&mut self` makes this borrow unique within the guard.
        unsafe { &mut *self.owner.state.get() }
    }
}

impl Drop for VmsGuard<'_> {
    fn drop(&mut self) {
        self.owner.busy.store(false, Ordering::Release);
    }
}

/// Starts the plugins on new VMs (plugins with the same `vm_id`, code and VM
/// configuration share one), each VM with a server host calling `vtable`.
/// Server callbacks may run during the call (logs, timers armed by the
/// plugins' configure step). `plugins` may be freed afterwards. Returns NULL on
/// failure, with the message in `error`.
///
/// # Safety
/// `plugins` and `vtable` must be NULL or live; `error` NULL or a live buffer;
/// `vtable->user_data` must stay valid until `pwh_vms_free` returns.
#[no_mangle]
pub unsafe extern "C" fn pwh_vms_start(
    plugins: *const pwh_plugins,
    vtable: *const pwh_server_vtable,
    error: *mut pwh_buffer,
) -> *mut pwh_vms {
    // SAFETY: NULL or live (contract); only read.
    let plugins = unsafe { plugins.as_ref() };
    // SAFETY: NULL or live (contract); copied.
    let vtable = unsafe { vtable.as_ref() }.copied();
    let body = || {
        let plugins = plugins.ok_or("pwh_vms_start: plugins is NULL")?;
        let vt = vtable.ok_or("pwh_vms_start: vtable is NULL")?;
        let gate = Arc::new(Gate::default());
        let mut vm_count = 0;
        let started = PluginVms::start(&plugins.plugins, |_key| {
            let server = CServer { vt, vm_index: vm_count, gate: gate.clone() };
            vm_count += 1;
            Arc::new(server) as Arc<dyn ServerHost>
        });
        match started {
            Ok(vms) => {
                debug_assert_eq!(vms.vms.len(), vm_count);
                let roots = vms.roots.clone();
                let state = VmsState { vms, streams: HashMap::new() };
                Ok(Box::into_raw(Box::new(pwh_vms {
                    busy: AtomicBool::new(false),
                    state: UnsafeCell::new(state),
                    roots,
                    gate,
                    set: PluginSet::new(plugins.plugins.clone()),
                })))
            }
            Err(e) => {
                gate.close();
                Err(e.to_string())
            }
        }
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, ptr::null_mut(), body) }
}

/// Shuts every plugin down (`proxy_on_done` / `proxy_on_delete` of the root
/// contexts), destroys streams never finished (their `destroy` runs) and frees
/// the VMs. NULL is ignored. No server callback runs after it returns.
///
/// # Safety
/// `vms` must be NULL or from `pwh_vms_start` and not freed yet; no other
/// thread may use it meanwhile. Called from one of its own callbacks, it does
/// nothing (the VMs are leaked rather than freed under the caller).
#[no_mangle]
pub unsafe extern "C" fn pwh_vms_free(vms: *mut pwh_vms) {
    if vms.is_null() {
        return;
    }
    let free = || {
        let gate = {
            // SAFETY: a live pwh_vms from pwh_vms_start (contract); shared access only.
            let shared = unsafe { &*vms };
            let Ok(mut state) = shared.lock() else { return };
            // A plugin that wants to finish later (`false`) or fails is dropped anyway.
            let _ = state.vms.shutdown();
            shared.gate.clone()
        };
        gate.close();
        // SAFETY: from Box::into_raw in pwh_vms_start, freed once, and no guard or
        // reference into it is left (contract: no other user meanwhile).
        drop(unsafe { Box::from_raw(vms) });
    };
    guard((), free)
}

/// The plugin whose root context is `root_context_id` in VM `vm_index`, as
/// named by server callbacks, into `*plugin_index`. Returns `PWH_STATUS_OK`,
/// `PWH_STATUS_NOT_FOUND`, or `PWH_STATUS_BAD_ARGUMENT` for NULL arguments.
/// Safe to call from any thread and from callbacks.
///
/// # Safety
/// `vms` must be NULL or live; `plugin_index` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pwh_vms_find_plugin(
    vms: *const pwh_vms,
    vm_index: usize,
    root_context_id: u32,
    plugin_index: *mut usize,
) -> i32 {
    // SAFETY: NULL or live (contract); only `roots`, which never changes, is read.
    let vms = unsafe { vms.as_ref() };
    // SAFETY: NULL or writable (contract).
    let out = unsafe { plugin_index.as_mut() };
    guard(pwh_status::InternalFailure as i32, || {
        let (Some(vms), Some(out)) = (vms, out) else {
            return pwh_status::BadArgument as i32;
        };
        match vms.roots.iter().position(|r| r.vm == vm_index && r.root_context_id == root_context_id) {
            Some(i) => {
                *out = i;
                pwh_status::Ok as i32
            }
            None => pwh_status::NotFound as i32,
        }
    })
}

/// Runs `f` on the VM of `plugin_index` (with its root context id), checking
/// that `stream` (when given) is a live stream context of that plugin.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
pub(super) unsafe fn on_vm<T>(
    vms: *mut pwh_vms,
    plugin_index: usize,
    stream: Option<u32>,
    error: *mut pwh_buffer,
    fail: T,
    f: impl FnOnce(&mut Vm, u32) -> Result<T, VmError>,
) -> T {
    // SAFETY: NULL or live (contract); shared access, exclusive access goes through `lock`.
    let vms = unsafe { vms.as_ref() };
    let body = || {
        let vms = vms.ok_or("vms is NULL")?;
        let root = vms.root(plugin_index)?;
        let mut state = vms.lock()?;
        if let Some(ctx) = stream {
            match state.streams.get(&(root.vm, ctx)) {
                Some(&p) if p == plugin_index => {}
                Some(&p) => return Err(format!("stream context {ctx} belongs to plugin {p}, not {plugin_index}")),
                None => {
                    return Err(format!(
                        "no stream context {ctx} for plugin {plugin_index} (finished or never created)"
                    ))
                }
            }
        }
        f(&mut state.vms.vms[root.vm], root.root_context_id).map_err(|e| e.to_string())
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, fail, body) }
}
