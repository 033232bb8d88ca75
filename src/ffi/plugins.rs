//! `pwh_plugins_*`: loading and compiling the plugins, once per process.

use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use std::ptr;

use crate::config;
use crate::loader::{self, LoadedPlugin};

use super::{ffi_call, guard, pwh_buffer, pwh_bytes};

/// Loaded, compiled plugins (from `pwh_plugins_load`). Immutable: may be used
/// by several threads at once, e.g. for `pwh_vms_start` on every worker.
pub struct pwh_plugins {
    pub(super) plugins: Vec<LoadedPlugin>,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<pwh_plugins>();
};

#[cfg(unix)]
pub(super) fn path_from_c(s: &CStr) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes()))
}

#[cfg(not(unix))]
pub(super) fn path_from_c(s: &CStr) -> PathBuf {
    PathBuf::from(s.to_string_lossy().into_owned())
}

/// Reads the `n` YAML files at `yaml_paths` (NUL-terminated paths) and
/// compiles their plugins, in order. Returns NULL on failure, with a message
/// naming the file (and line, plugin) in `error`.
///
/// # Safety
/// `yaml_paths` must point to `n` NUL-terminated strings; `error` must be NULL
/// or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_load(
    yaml_paths: *const *const c_char,
    n: usize,
    error: *mut pwh_buffer,
) -> *mut pwh_plugins {
    let body = || {
        if n == 0 {
            return Err("pwh_plugins_load: no configuration file given".to_string());
        }
        if yaml_paths.is_null() {
            return Err("pwh_plugins_load: yaml_paths is NULL".to_string());
        }
        // SAFETY: non-null and pointing to `n` pointers (contract).
        let raw = unsafe { std::slice::from_raw_parts(yaml_paths, n) };
        let mut paths = Vec::with_capacity(n);
        for (i, p) in raw.iter().enumerate() {
            if p.is_null() {
                return Err(format!("pwh_plugins_load: yaml_paths[{i}] is NULL"));
            }
            // SAFETY: a non-null, NUL-terminated string (contract).
            paths.push(path_from_c(unsafe { CStr::from_ptr(*p) }));
        }
        let configs = crate::files::load_files(&paths).map_err(|e| e.to_string())?;
        let plugins = loader::load(&configs).map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(pwh_plugins { plugins })))
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, ptr::null_mut(), body) }
}

/// Frees plugins from `pwh_plugins_load`; NULL is ignored. VMs already started
/// from them are not affected.
///
/// # Safety
/// `plugins` must be NULL or from `pwh_plugins_load`, not freed yet, and not in
/// use by another thread.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_free(plugins: *mut pwh_plugins) {
    if plugins.is_null() {
        return;
    }
    let free = || {
        // SAFETY: from Box::into_raw in pwh_plugins_load, freed once (contract).
        drop(unsafe { Box::from_raw(plugins) });
    };
    guard((), free)
}

/// The number of plugins (0 for NULL). Plugin indexes run from 0 to count - 1.
///
/// # Safety
/// `plugins` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_count(plugins: *const pwh_plugins) -> usize {
    // SAFETY: NULL or live (contract); only read.
    let plugins = unsafe { plugins.as_ref() };
    guard(0, || plugins.map_or(0, |p| p.plugins.len()))
}

/// The name of plugin `index` (not NUL-terminated), valid while `plugins` is;
/// `{NULL, 0}` for a bad index.
///
/// # Safety
/// `plugins` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_name(plugins: *const pwh_plugins, index: usize) -> pwh_bytes {
    // SAFETY: NULL or live (contract); only read.
    let plugins = unsafe { plugins.as_ref() };
    guard(pwh_bytes::EMPTY, || {
        plugins.and_then(|p| p.plugins.get(index)).map_or(pwh_bytes::EMPTY, |p| pwh_bytes::of(p.config.name.as_bytes()))
    })
}

/// The failure policy of plugin `index`: 1 when traffic passes while the plugin
/// cannot run (`fail_open: true`), 0 when it is refused, -1 for a bad index.
///
/// # Safety
/// `plugins` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_fail_open(plugins: *const pwh_plugins, index: usize) -> i32 {
    // SAFETY: NULL or live (contract); only read.
    let plugins = unsafe { plugins.as_ref() };
    guard(-1, || match plugins.and_then(|p| p.plugins.get(index)) {
        Some(p) => (p.config.failure_policy == config::FailurePolicy::FailOpen) as i32,
        None => -1,
    })
}
