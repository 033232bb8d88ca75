//! The NGINX dynamic module `ngx_http_proxy_wasm_module`
//! (build/ngx_http_proxy_wasm_module.so).
//!
//! ```nginx
//! load_module /path/to/ngx_http_proxy_wasm_module.so;
//! http {
//!     proxy_wasm_config /etc/nginx/plugins.yaml;   # loads and validates the plugins
//!     proxy_wasm auth;                             # a chain: http, server or location
//!     proxy_wasm_shm_size 4m;                      # shared data, queues, metrics (default 1m)
//!     server {
//!         location / { proxy_wasm headers; proxy_pass http://backend; }
//!         location /plain { proxy_wasm off; }
//!         location = /metrics { proxy_wasm_metrics; }
//!     }
//! }
//! ```
//!
//! Process model: the master only reads and validates the YAML (the modules
//! are compiled in a short-lived child process, so the master never holds a
//! WebAssembly engine that a worker would inherit). Each worker compiles the
//! modules and starts its own VMs in `init_process`; ticks, calls and queue
//! wake-ups run per worker on its event loop. Shared data, shared queues and
//! metrics live in the `proxy_wasm` shared-memory zone (shm.rs), common to
//! all workers.
//!
//! Requests go through the core's filter chain (`proxy_wasm_host::chain`): the module
//! calls its phase methods from nginx's hooks and acts on the `Flow` each
//! returns. One file per job:
//!
//! - `worker.rs`: the worker's VM generations (`chain::Generations`), ticks'
//!   and calls' way back into a VM, the configuration check in the master;
//! - `context.rs`: the request context (the chain, its `Signals`, the pause
//!   timer and resume event: `ChainServer`), its creation and end;
//! - `stream.rs`: what a plugin sees of the request (header maps, properties);
//! - `phase.rs`: the rewrite-phase handler (request headers, suspending);
//! - `request_body.rs`: reading the request body for the chain, in pieces;
//! - `filters.rs`, `header_filter.rs`, `body_filter.rs`: the response;
//! - `local.rs`: local responses and replaced responses;
//! - `resume.rs`: the chain's resume event and pause timer;
//! - `thread_task.rs`: Otoroshi entities' calls on nginx's thread pool (off the event loop);
//! - `jobs.rs`: Otoroshi jobs on worker timers;
//! - `routing.rs`: the variables `$proxy_wasm_match_<id>`, `$proxy_wasm_route_<id>`;
//! - `headers.rs`, `http_call.rs`, `server.rs`, `shm.rs`, `metrics.rs`, `conf.rs`.

mod base;
mod body_filter;
mod body_state;
mod conf;
mod context;
mod filters;
mod header_filter;
mod headers;
mod http_call;
mod jobs;
mod local;
mod metrics;
mod phase;
mod request_body;
mod routing;
mod server;
mod shm;
mod stream;
mod thread_task;
mod validate;
mod worker;

use std::ptr::{addr_of, addr_of_mut};

use ngx::ffi::*;
use ngx::http::HttpModuleMainConf;

pub use conf::{LocConf, MainConf};

/// Directives (see conf.rs for their handlers).
static mut COMMANDS: [ngx_command_t; 5] = [
    ngx_command_t {
        name: ngx::ngx_string!("proxy_wasm_config"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE) as ngx_uint_t,
        set: Some(conf::proxy_wasm_config),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx::ngx_string!("proxy_wasm"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::proxy_wasm),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx::ngx_string!("proxy_wasm_metrics"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(metrics::proxy_wasm_metrics),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx::ngx_string!("proxy_wasm_shm_size"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::proxy_wasm_shm_size),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(routing::preconfiguration),
    postconfiguration: Some(postconfiguration),
    create_main_conf: Some(conf::create_main_conf),
    init_main_conf: Some(conf::init_main_conf),
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(conf::create_loc_conf),
    merge_loc_conf: Some(conf::merge_loc_conf),
};

/// The module itself; its name in `ngx_module_names` is what nginx reports.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_proxy_wasm_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(MODULE_CTX) as *mut std::ffi::c_void,
    commands: addr_of_mut!(COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_process: Some(worker::init_process),
    exit_process: Some(worker::exit_process),
    ..ngx_module_t::default()
};

ngx::ngx_modules!(ngx_http_proxy_wasm_module);

/// Registers the phase handlers and the response filters.
///
/// # Safety
/// Called by nginx only, with the live configuration context of the http block.
pub unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: the http block's core main configuration has the phase
        // handler arrays; the filter chain heads are nginx globals set up
        // during configuration (single-threaded).
        unsafe {
            let Some(cmcf) = ngx::http::NgxHttpCoreModule::main_conf_mut(&*cf) else {
                return NGX_ERROR as ngx_int_t;
            };
            let rewrite = ngx_array_push(&mut cmcf.phases[ngx_http_phases_NGX_HTTP_REWRITE_PHASE as usize].handlers)
                as *mut ngx_http_handler_pt;
            if rewrite.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            *rewrite = Some(phase::rewrite_handler);
            let log = ngx_array_push(&mut cmcf.phases[ngx_http_phases_NGX_HTTP_LOG_PHASE as usize].handlers)
                as *mut ngx_http_handler_pt;
            if log.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            *log = Some(phase::log_handler);
            install_filters();
        }
        NGX_OK as ngx_int_t
    });
    r.unwrap_or(NGX_ERROR as ngx_int_t)
}

/// Puts the module's filters at the top of the chains.
///
/// # Safety
/// Only during configuration (nginx's single thread), once per configuration cycle.
pub unsafe fn install_filters() {
    // SAFETY: called from postconfiguration (single-threaded configuration).
    unsafe {
        filters::NEXT_HEADER_FILTER = ngx_http_top_header_filter;
        ngx_http_top_header_filter = Some(header_filter::header_filter);
        filters::NEXT_BODY_FILTER = ngx_http_top_body_filter;
        ngx_http_top_body_filter = Some(body_filter::body_filter);
    }
}
