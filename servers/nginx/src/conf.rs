//! Directives and configuration structures.
//!
//! - `proxy_wasm_config <file.yaml> [...]` (http): the plugins. The YAML is
//!   read and the modules validated while nginx reads its configuration, so
//!   `nginx -t` and `nginx -s reload` report errors with file and key.
//! - `proxy_wasm <name> | off` (http, server, location; repeatable): the
//!   chain, in order. A block with its own `proxy_wasm` lines replaces the
//!   chain it would inherit; `proxy_wasm off;` clears it.
//! - `proxy_wasm_metrics` (location): the plugins' metrics in Prometheus text.
//! - `proxy_wasm_shm_size <size>` (http; default 1m): the shared-memory zone
//!   of shared data, queues and metrics (shm.rs).

use std::ffi::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr;

use ngx::ffi::*;
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf};

use super::base::ProxyWasmModule;

use proxy_wasm_host::config::PluginConfig;

/// `http{}`-level configuration.
#[derive(Default)]
pub struct MainConf {
    /// The YAML files, absolute.
    pub paths: Vec<PathBuf>,
    /// Their plugins, in order; chains refer to them by index.
    pub plugins: Vec<PluginConfig>,
    /// Their Otoroshi WASM plugin entities; chain index `plugins.len() + i` is entity `i`.
    pub entities: Vec<proxy_wasm_host::extism::entity::Entity>,
    /// Their `otoroshi:` settings.
    pub otoroshi: Option<proxy_wasm_host::extism::entity::document::Settings>,
    /// The shared-memory zone (`proxy_wasm_shm_size`).
    pub shm: super::shm::ShmConf,
    /// nginx's thread pool `default`, registered when an entity is granted HTTP access (its
    /// calls run there: `thread_task`).
    pub thread_pool: Option<ptr::NonNull<ngx_thread_pool_t>>,
}

/// Per-location configuration.
#[derive(Default)]
pub struct LocConf {
    /// Plugin names from this block's `proxy_wasm` lines; `None`: inherit.
    names: Option<Vec<String>>,
    /// The chain as indices into `MainConf::plugins` (after merging).
    pub chain: Vec<usize>,
    /// `proxy_wasm_metrics` is set here.
    pub metrics: bool,
}

/// Allocates `value` in an nginx pool; it is dropped when the pool is destroyed.
unsafe fn pool_alloc<T>(pool: *mut ngx_pool_t, value: T) -> *mut T {
    unsafe extern "C" fn drop_value<T>(data: *mut c_void) {
        // A panicking destructor must not unwind into nginx.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `data` is the pointer written by `pool_alloc`, dropped once by the pool.
            unsafe { ptr::drop_in_place(data as *mut T) };
        }));
    }
    // SAFETY: the caller passes a live pool; the memory is written before use
    // and aligned to NGX_ALIGNMENT (8), enough for these Rust structures.
    unsafe {
        let p = ngx_pcalloc(pool, std::mem::size_of::<T>()) as *mut T;
        if p.is_null() {
            return ptr::null_mut();
        }
        let cln = ngx_pool_cleanup_add(pool, 0);
        if cln.is_null() {
            return ptr::null_mut();
        }
        ptr::write(p, value);
        (*cln).handler = Some(drop_value::<T>);
        (*cln).data = p as *mut c_void;
        p
    }
}

pub unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // A panic becomes NULL, which nginx reports as a configuration error.
    std::panic::catch_unwind(|| {
        // SAFETY: nginx passes a live configuration context.
        unsafe { pool_alloc((*cf).pool, MainConf::default()) as *mut c_void }
    })
    .unwrap_or(ptr::null_mut())
}

pub unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    std::panic::catch_unwind(|| {
        // SAFETY: as above.
        unsafe { pool_alloc((*cf).pool, LocConf::default()) as *mut c_void }
    })
    .unwrap_or(ptr::null_mut())
}

// SAFETY: the module's main configuration slot holds what `create_main_conf` returns, a MainConf.
unsafe impl HttpModuleMainConf for ProxyWasmModule {
    type MainConf = MainConf;
}

// SAFETY: the module's location configuration slots hold what `create_loc_conf` returns, LocConfs.
unsafe impl HttpModuleLocationConf for ProxyWasmModule {
    type LocationConf = LocConf;
}

/// The main configuration while the http block is being read (null if nginx has none).
///
/// # Safety
/// `cf` is nginx's live configuration context, inside the http block.
unsafe fn main_conf_of(cf: *mut ngx_conf_t) -> *mut MainConf {
    // SAFETY: the caller's contract; `cf->ctx` is then an ngx_http_conf_ctx_t.
    ProxyWasmModule::main_conf_mut(unsafe { &*cf }).map_or(ptr::null_mut(), |c| c as *mut MainConf)
}

/// A string for nginx's configuration error reporting: allocated in the
/// configuration pool, NUL-terminated ("<message> in <file>:<line>" is added by nginx).
pub(super) unsafe fn conf_error(cf: *mut ngx_conf_t, message: &str) -> *mut c_char {
    let bytes = message.replace('\0', " ");
    // SAFETY: the pool lives as long as the configuration cycle; we write
    // len + 1 bytes into a buffer of that size.
    unsafe {
        let p = ngx_pnalloc((*cf).pool, bytes.len() + 1) as *mut u8;
        if p.is_null() {
            return NGX_CONF_ERROR_PTR;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
        // nginx prints a directive's returned string after the directive name.
        p as *mut c_char
    }
}

const NGX_CONF_ERROR_PTR: *mut c_char = usize::MAX as *mut c_char;

/// The directive's arguments (after its name), as bytes.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> Vec<&'a [u8]> {
    // SAFETY: nginx fills `cf->args` with the directive and its arguments.
    unsafe {
        let a = (*cf).args;
        let elts = (*a).elts as *const ngx_str_t;
        (1..(*a).nelts).map(|i| (*elts.add(i)).as_bytes()).collect()
    }
}

/// Relative paths are taken from nginx's configuration prefix (like `include`).
unsafe fn full_path(cf: *mut ngx_conf_t, arg: &[u8]) -> PathBuf {
    let p = PathBuf::from(std::ffi::OsStr::from_bytes(arg));
    if p.is_absolute() {
        return p;
    }
    // SAFETY: the cycle's conf_prefix is set before the configuration is read.
    let prefix = unsafe { (*(*cf).cycle).conf_prefix.as_bytes() };
    PathBuf::from(std::ffi::OsStr::from_bytes(prefix)).join(p)
}

pub(super) fn catch(f: impl FnOnce() -> *mut c_char) -> *mut c_char {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(NGX_CONF_ERROR_PTR)
}

/// `proxy_wasm_config a.yaml [b.yaml ...]`
pub unsafe extern "C" fn proxy_wasm_config(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    catch(|| {
        // SAFETY: `conf` is this module's MainConf (NGX_HTTP_MAIN_CONF_OFFSET).
        let main = unsafe { &mut *(conf as *mut MainConf) };
        if !main.paths.is_empty() {
            // SAFETY: `cf` is live during the directive handler (so is its pool).
            return unsafe { conf_error(cf, "is duplicate") };
        }
        // SAFETY: `cf` is live during the directive handler, its arguments
        // and cycle too; the paths are copied before it returns.
        let paths: Vec<PathBuf> = unsafe { args(cf) }.iter().map(|a| unsafe { full_path(cf, a) }).collect();
        let loaded = match proxy_wasm_host::files::load_all(&paths) {
            Ok(p) => p,
            // SAFETY: as above.
            Err(e) => return unsafe { conf_error(cf, &format!("failed: {e}")) },
        };
        if let Err(e) = super::validate::validate_in_child(&loaded.plugins, &loaded.entities, loaded.otoroshi.as_ref())
        {
            // SAFETY: as above.
            return unsafe { conf_error(cf, &format!("failed: {e}")) };
        }
        // Entities that may call out run their calls on nginx's thread pool.
        if loaded.entities.iter().any(|e| e.config.authorizations.http_access || !e.config.allowed_hosts.is_empty()) {
            // SAFETY: `cf` is live during the directive handler.
            match unsafe { super::thread_task::register(cf) } {
                Ok(tp) => main.thread_pool = ptr::NonNull::new(tp),
                // SAFETY: as above.
                Err(e) => return unsafe { conf_error(cf, &format!("failed: {e}")) },
            }
        }
        main.paths = paths;
        main.plugins = loaded.plugins;
        main.entities = loaded.entities;
        main.otoroshi = loaded.otoroshi;
        ptr::null_mut()
    })
}

/// `proxy_wasm <name> | off`
pub unsafe extern "C" fn proxy_wasm(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    catch(|| {
        // SAFETY: `conf` is this module's LocConf (NGX_HTTP_LOC_CONF_OFFSET).
        let loc = unsafe { &mut *(conf as *mut LocConf) };
        // SAFETY: `cf` is live during the directive handler; NGX_CONF_TAKE1
        // makes nginx check there is exactly one argument, so [0] exists.
        let name = String::from_utf8_lossy(unsafe { args(cf) }[0]).into_owned();
        let names = loc.names.get_or_insert_with(Vec::new);
        if name == "off" {
            if !names.is_empty() {
                // SAFETY: `cf` is live during the directive handler (so is its pool).
                return unsafe { conf_error(cf, "\"off\" cannot be combined with plugin names in the same block") };
            }
            names.push(name);
            return ptr::null_mut();
        }
        if names.iter().any(|n| n == "off") {
            // SAFETY: as above.
            return unsafe { conf_error(cf, "\"off\" cannot be combined with plugin names in the same block") };
        }
        names.push(name);
        ptr::null_mut()
    })
}

pub unsafe extern "C" fn merge_loc_conf(cf: *mut ngx_conf_t, prev: *mut c_void, conf: *mut c_void) -> *mut c_char {
    catch(|| {
        // SAFETY: nginx merges location configurations inside the http block.
        let main = unsafe { main_conf_of(cf) };
        if main.is_null() {
            // SAFETY: the live configuration context nginx passed.
            return unsafe { conf_error(cf, "proxy_wasm: the http block's configuration is missing") };
        }
        // SAFETY: both are LocConf made by create_loc_conf; the main conf was checked above.
        let (prev, loc, main) = unsafe { (&*(prev as *const LocConf), &mut *(conf as *mut LocConf), &*main) };
        if loc.names.is_none() {
            loc.names = prev.names.clone();
        }
        loc.chain.clear();
        for name in loc.names.iter().flatten() {
            if name == "off" {
                continue;
            }
            let entity = || main.entities.iter().position(|e| e.id == *name).map(|i| main.plugins.len() + i);
            match main.plugins.iter().position(|p| p.name == *name).or_else(entity) {
                Some(i) => loc.chain.push(i),
                None => {
                    let known = main
                        .plugins
                        .iter()
                        .map(|p| p.name.as_str())
                        .chain(main.entities.iter().map(|e| e.id.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let msg = if main.plugins.is_empty() && main.entities.is_empty() {
                        format!("proxy_wasm: no plugin named \"{name}\": no proxy_wasm_config in the http block")
                    } else {
                        format!(
                            "proxy_wasm: no plugin named \"{name}\" in {} (plugins: {known})",
                            main.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                        )
                    };
                    // SAFETY: `cf` is live; nginx logs this at emerg level.
                    unsafe {
                        ngx_conf_log_error(
                            NGX_LOG_EMERG as ngx_uint_t,
                            cf,
                            0,
                            super::base::cstr(b"%s\0"),
                            conf_error(cf, &msg),
                        )
                    };
                    return NGX_CONF_ERROR_PTR;
                }
            }
        }
        ptr::null_mut()
    })
}

/// `proxy_wasm_shm_size <size>;` (http): e.g. `512k`, `4m`.
pub unsafe extern "C" fn proxy_wasm_shm_size(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    catch(|| {
        // SAFETY: `conf` is this module's MainConf (NGX_HTTP_MAIN_CONF_OFFSET); `cf` is live.
        unsafe { super::shm::set_size(cf, &mut (*(conf as *mut MainConf)).shm) }
    })
}

/// `init_main_conf`: declares the shared memory zone when the configuration has plugins or entities.
pub unsafe extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    catch(|| {
        // SAFETY: `conf` is this module's MainConf; `cf` is live.
        unsafe {
            let main = &mut *(conf as *mut MainConf);
            super::shm::declare_zone(cf, &mut main.shm, &main.plugins, !main.entities.is_empty())
        }
    })
}
