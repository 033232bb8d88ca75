//! rust-sdk-filter: a Proxy-Wasm (ABI 0.2.1) test filter for proxy-wasm-host,
//! written with the real Rust SDK (proxy-wasm 0.2.1; also built with every
//! other release from 0.1.0 to 0.2.3, see `sdk` and versions/).
//!
//! It exercises every host function of ABI 0.2.1. Behaviours are selected by
//! the plugin configuration (JSON) and, per request, by the `x-pw-test`
//! request header. The protocol (trigger -> hostcalls -> observable result)
//! is documented in tests/plugins/README.md; keep both in sync.

mod config;
mod http;
mod json;
mod raw;
mod sdk;
mod util;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
#[cfg(not(feature = "sdk-no-http-context-factory"))]
use proxy_wasm::types::ContextType;
use proxy_wasm::types::{LogLevel, MapType};
#[cfg(feature = "sdk-no-bytes")]
use sdk::CallBytes;

use config::Config;
use util::{bump, header_safe, put, sdk_status_name, status_name, NONE};

/// Buffer type 8 (FOREIGN_FUNCTION_ARGUMENTS / CallData); the 0.2.1 SDK enum
/// does not have it.
const BUFFER_FOREIGN_ARGS: u32 = 8;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const BUFFER_VM_CONFIGURATION: u32 = 6;

#[cfg(not(feature = "api-0-1"))]
proxy_wasm::main! {{
    init();
}}

/// The 0.1.x SDKs have no `main!`: their filters export `_start`.
#[cfg(feature = "api-0-1")]
#[no_mangle]
pub fn _start() {
    init();
}

fn init() {
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root::new(context_id)) });
    #[cfg(feature = "sdk-no-http-context-factory")]
    proxy_wasm::set_http_context(|context_id, root_context_id| -> Box<dyn HttpContext> {
        Box::new(http::Filter::new(context_id, root_shared(root_context_id)))
    });
}

/// What a root context hands to the HTTP contexts it creates (a snapshot:
/// a later on_configure affects only new requests).
pub struct RootShared {
    pub root_id: u32,
    pub config: Config,
    pub queue_id: Option<u32>,
    /// (counter, gauge, histogram)
    pub metrics: Option<(u32, u32, u32)>,
}

/// How a paused request gets resumed by the root context.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Resumer {
    Tick,
    Queue,
}

impl Resumer {
    pub fn name(self) -> &'static str {
        match self {
            Resumer::Tick => "tick",
            Resumer::Queue => "queue",
        }
    }
}

thread_local! {
    /// (root id, http context id) waiting for the next on_tick to resume them.
    static PENDING_TICK_RESUME: RefCell<Vec<(u32, u32)>> = RefCell::new(Vec::new());
    /// (root id, http context id) whose on_done returned false.
    static PENDING_DONE: RefCell<Vec<(u32, u32)>> = RefCell::new(Vec::new());
    /// http context ids resumed by the root context, and by what.
    static RESUMED: RefCell<Vec<(u32, Resumer)>> = RefCell::new(Vec::new());
    /// The VM configuration read in on_vm_start.
    static VM_CONFIG: RefCell<Vec<u8>> = RefCell::new(Vec::new());
    /// What each root context hands to its HTTP contexts, for SDKs that
    /// create HTTP contexts without asking the root (`set_http_context`).
    #[cfg(feature = "sdk-no-http-context-factory")]
    static ROOTS: RefCell<Vec<Rc<RootShared>>> = RefCell::new(Vec::new());
}

#[cfg(feature = "sdk-no-http-context-factory")]
fn publish_root_shared(shared: &Rc<RootShared>) {
    ROOTS.with(|r| {
        let mut r = r.borrow_mut();
        r.retain(|s| s.root_id != shared.root_id);
        r.push(shared.clone());
    });
}

#[cfg(not(feature = "sdk-no-http-context-factory"))]
fn publish_root_shared(_shared: &Rc<RootShared>) {}

#[cfg(feature = "sdk-no-http-context-factory")]
fn root_shared(root_id: u32) -> Rc<RootShared> {
    ROOTS.with(|r| r.borrow().iter().find(|s| s.root_id == root_id).cloned()).unwrap_or_else(|| {
        Rc::new(RootShared { root_id, config: Config::default(), queue_id: None, metrics: None })
    })
}

pub fn push_tick_resume(root_id: u32, ctx: u32) {
    PENDING_TICK_RESUME.with(|p| p.borrow_mut().push((root_id, ctx)));
}

pub fn push_pending_done(root_id: u32, ctx: u32) {
    PENDING_DONE.with(|p| p.borrow_mut().push((root_id, ctx)));
}

/// Returns (and forgets) how `ctx` was resumed by a root context, if it was.
pub fn take_resumed(ctx: u32) -> Option<Resumer> {
    RESUMED.with(|r| {
        let mut r = r.borrow_mut();
        let pos = r.iter().position(|(id, _)| *id == ctx)?;
        Some(r.remove(pos).1)
    })
}

pub fn vm_config() -> Vec<u8> {
    VM_CONFIG.with(|v| v.borrow().clone())
}

fn drain_for(list: &'static std::thread::LocalKey<RefCell<Vec<(u32, u32)>>>, root_id: u32) -> Vec<u32> {
    list.with(|p| {
        let mut p = p.borrow_mut();
        let mine: Vec<u32> = p.iter().filter(|(r, _)| *r == root_id).map(|(_, c)| *c).collect();
        p.retain(|(r, _)| *r != root_id);
        mine
    })
}

/// Resumes paused HTTP context `ctx` from a root callback: switch the effective
/// context, add request header `x-pw-resumed-by: <how>`, continue the request.
/// Records `resume.last` = "<how> <ctx> <set_effective_context status>".
fn resume_from_root(ctx: u32, how: Resumer) {
    let st = raw::set_effective_context(ctx);
    if st == 0 {
        RESUMED.with(|r| r.borrow_mut().push((ctx, how)));
        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, "x-pw-resumed-by", how.name());
        let _ = hostcalls::resume_http_request();
    }
    put("resume.last", format!("{} {} {}", how.name(), ctx, status_name(st)).as_bytes());
    bump(&format!("resume.{}.count", how.name()));
}

pub struct Root {
    id: u32,
    shared: Rc<RootShared>,
    tick_callout: Option<u32>,
    done_requested: bool,
}

impl Root {
    fn new(id: u32) -> Root {
        let shared = Rc::new(RootShared {
            root_id: id,
            config: Config::default(),
            queue_id: None,
            metrics: None,
        });
        publish_root_shared(&shared);
        Root {
            id,
            shared,
            tick_callout: None,
            done_requested: false,
        }
    }

    #[cfg(not(feature = "api-0-1"))]
    fn vm_configuration(&self) -> Option<Vec<u8>> {
        self.get_vm_configuration()
    }

    #[cfg(not(feature = "api-0-1"))]
    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        self.get_plugin_configuration()
    }

    /// ABI 0.1.0 has one call for both: `proxy_get_configuration` answers
    /// the VM configuration in `on_vm_start`, the plugin's in `on_configure`.
    #[cfg(feature = "api-0-1")]
    fn vm_configuration(&self) -> Option<Vec<u8>> {
        self.get_configuration()
    }

    #[cfg(feature = "api-0-1")]
    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        self.get_configuration()
    }

    fn property_text(&self, path: Vec<&str>) -> String {
        util::opt_text(self.get_property(path).as_deref(), 256)
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        if self.tick_callout == Some(token) {
            self.tick_callout = None;
        }
        let result = if num_headers == 0 {
            let (code, msg) = sdk::get_status();
            format!("failed {} {}", code, msg.unwrap_or_default())
        } else {
            match self.get_http_call_response_header_bytes(":status") {
                Some(s) => header_safe(&s, 16),
                None => NONE.to_string(),
            }
        };
        put("tick.callout", result.trim_end().as_bytes());
        bump("tick.callout.count");
    }

    fn on_done(&mut self) -> bool {
        bump("root.done.count");
        if self.shared.config.defer_root_done {
            // Finished later with proxy_done from on_tick / on_queue_ready.
            self.done_requested = true;
            return false;
        }
        true
    }

    #[cfg(feature = "sdk-foreign-callback")]
    fn on_foreign_function(&mut self, function_id: u32, arguments_size: usize) {
        record_foreign_callback(function_id, arguments_size);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        let cfg = self.vm_configuration().unwrap_or_default();
        let (st, size, _) = raw::get_buffer_status(BUFFER_VM_CONFIGURATION);
        put("vm.config", &cfg);
        put(
            "vm.config.size",
            format!("{} {} {}", vm_configuration_size, status_name(st), size).as_bytes(),
        );
        bump("vm.starts");
        VM_CONFIG.with(|v| *v.borrow_mut() = cfg.clone());
        if cfg.as_slice().trim_ascii_compat() == b"reject" {
            hostcalls::log(LogLevel::Error, "rust-sdk-filter: VM configuration says reject").ok();
            return false;
        }
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        bump("configure.count");
        let (st, size, _) = raw::get_buffer_status(BUFFER_PLUGIN_CONFIGURATION);
        put(
            "config.size",
            format!("{} {} {}", plugin_configuration_size, status_name(st), size).as_bytes(),
        );
        let raw_cfg = self.plugin_configuration();
        let config = match Config::parse(raw_cfg.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                hostcalls::log(LogLevel::Error, &format!("rust-sdk-filter: bad configuration: {}", e)).ok();
                put("config.error", e.as_bytes());
                return false;
            }
        };
        if config.reject {
            hostcalls::log(LogLevel::Error, "rust-sdk-filter: configuration asks to be rejected").ok();
            put("config.error", b"rejected by configuration");
            return false;
        }

        let queue_id = Some(self.register_shared_queue(&config.queue));
        let p = &config.metric_prefix;
        let metrics = (
            sdk::define_metric(sdk::Metric::Counter, &format!("{}.requests", p)),
            sdk::define_metric(sdk::Metric::Gauge, &format!("{}.gauge", p)),
            sdk::define_metric(sdk::Metric::Histogram, &format!("{}.histogram", p)),
        );
        let metrics = match metrics {
            (Ok(c), Ok(g), Ok(h)) => Some((c, g, h)),
            _ => None,
        };
        self.set_tick_period(Duration::from_millis(config.tick_ms as u64));

        // Request properties must be NOT_FOUND outside a request.
        put("root.request.path", self.property_text(vec!["request", "path"]).as_bytes());
        put("root.plugin_name", self.property_text(vec!["plugin_name"]).as_bytes());
        put("root.plugin_root_id", self.property_text(vec!["plugin_root_id"]).as_bytes());
        put("root.plugin_vm_id", self.property_text(vec!["plugin_vm_id"]).as_bytes());
        put("config.tag", config.tag.as_bytes());
        put("config.error", b"");

        hostcalls::log(
            LogLevel::Info,
            &format!(
                "rust-sdk-filter: root {} configured (tag={}, tick_ms={}, queue={})",
                self.id, config.tag, config.tick_ms, config.queue
            ),
        )
        .ok();
        self.shared = Rc::new(RootShared {
            root_id: self.id,
            config,
            queue_id,
            metrics,
        });
        publish_root_shared(&self.shared);
        true
    }

    fn on_tick(&mut self) {
        bump("ticks");
        for ctx in drain_for(&PENDING_TICK_RESUME, self.id) {
            resume_from_root(ctx, Resumer::Tick);
        }
        self.finish_deferred();
        // The effective context is reset on every VM entry, but set it back
        // explicitly: exercises set_effective_context on a root id.
        let st = raw::set_effective_context(self.id);
        if st != 0 {
            put("tick.effective_root", status_name(st).as_bytes());
        }

        if self.shared.config.tick_http_call && self.tick_callout.is_none() {
            let c = &self.shared.config;
            let headers = vec![
                (":method", "GET"),
                (":path", c.callout_path.as_str()),
                (":authority", c.authority.as_str()),
                (":scheme", "http"),
                ("x-pw-tick", "1"),
            ];
            match self.dispatch_http_call(
                &c.upstream,
                headers,
                None,
                vec![],
                Duration::from_millis(c.callout_timeout_ms as u64),
            ) {
                Ok(token) => self.tick_callout = Some(token),
                Err(st) => put("tick.callout", format!("dispatch {}", sdk_status_name(st)).as_bytes()),
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        for _ in 0..1000 {
            match hostcalls::dequeue_shared_queue(queue_id) {
                Ok(Some(item)) => {
                    put("queue.last", &item);
                    bump("queue.count");
                    if let Some(rest) = item.strip_prefix(b"resume:") {
                        if let Some(ctx) = util::parse_u64(rest) {
                            resume_from_root(ctx as u32, Resumer::Queue);
                        }
                    }
                }
                Ok(None) => break,
                Err(st) => {
                    put("queue.error", sdk_status_name(st).as_bytes());
                    break;
                }
            }
        }
        self.finish_deferred();
    }

    #[cfg(not(feature = "sdk-no-http-context-factory"))]
    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(http::Filter::new(context_id, self.shared.clone())))
    }

    #[cfg(not(feature = "sdk-no-http-context-factory"))]
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// Calls proxy_done for HTTP contexts whose on_done returned false
    /// (`defer-done` case) and for this root if its own on_done was deferred.
    fn finish_deferred(&mut self) {
        for ctx in drain_for(&PENDING_DONE, self.id) {
            let st = raw::set_effective_context(ctx);
            let result = if st == 0 {
                status_name(raw::done())
            } else {
                format!("set_effective_context {}", status_name(st))
            };
            put("done.deferred", result.as_bytes());
            bump("done.deferred.count");
        }
        if self.done_requested {
            self.done_requested = false;
            let _ = raw::set_effective_context(self.id);
            put("root.done.deferred", status_name(raw::done()).as_bytes());
        }
    }
}

/// Rust 1.63 has no `<[u8]>::trim_ascii`.
trait TrimAscii {
    fn trim_ascii_compat(&self) -> &[u8];
}

impl TrimAscii for [u8] {
    fn trim_ascii_compat(&self) -> &[u8] {
        let mut s = self;
        while let Some((first, rest)) = s.split_first() {
            if first.is_ascii_whitespace() {
                s = rest;
            } else {
                break;
            }
        }
        while let Some((last, rest)) = s.split_last() {
            if last.is_ascii_whitespace() {
                s = rest;
            } else {
                break;
            }
        }
        s
    }
}

/// ABI callback the SDKs before 0.2.3 do not export: the host calls it for
/// foreign callbacks it registered.
#[cfg(not(feature = "sdk-foreign-callback"))]
#[no_mangle]
pub extern "C" fn proxy_on_foreign_function(_root_context_id: u32, function_id: u32, arguments_size: usize) {
    record_foreign_callback(function_id, arguments_size);
}

/// Records `foreign.callback` =
/// "<function_id> <size> <get_buffer_bytes(8) status> <arguments>".
fn record_foreign_callback(function_id: u32, arguments_size: usize) {
    let (st, data) = raw::get_buffer_bytes(BUFFER_FOREIGN_ARGS, 0, arguments_size);
    let text = format!(
        "{} {} {} {}",
        function_id,
        arguments_size,
        status_name(st),
        util::opt_text(data.as_deref(), 256)
    );
    put("foreign.callback", text.as_bytes());
    bump("foreign.callback.count");
}
