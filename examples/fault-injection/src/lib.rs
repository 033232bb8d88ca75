//! APISIX's `fault-injection` plugin as a Proxy-Wasm filter (Rust SDK 0.2.1).
//!
//! The plugin configuration is the JSON object APISIX's plugin takes:
//!
//! ```json
//! {
//!   "abort": { "http_status": 503, "body": "injected\n", "headers": { "x-fault": "abort" }, "percentage": 50 },
//!   "delay": { "duration": 0.5, "percentage": 100 }
//! }
//! ```
//!
//! At least one of `abort` and `delay`. `abort.http_status` (200..=599) is
//! required, `abort.body` and `abort.headers` are optional; `delay.duration` is
//! in seconds (fractions allowed). `percentage` (0..=100) is the share of
//! requests the fault hits; absent means every request. As in APISIX, the
//! delay comes first, then the abort is decided: a request may be delayed and
//! then aborted. APISIX's `vars` (conditions on nginx variables) and `$var`
//! substitution in the body are not supported here.
//!
//! How the delay works with the Rust SDK: `on_http_request_headers` pauses the
//! request and puts it on the root context's waiting list; the root context's
//! tick, set to fire when the earliest waiting request is due, resumes it
//! (`proxy_set_effective_context` + `proxy_continue_stream`), or sends the abort
//! response for it. No `http_call`, no busy loop: the server's timer wakes the
//! plugin. The host bounds every pause by the plugin's `pause_timeout`
//! (default 60 s), so a delay must be shorter than that.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(FaultInjection::default()));
}}

// ------------------------------------------------------------------ configuration

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    abort: Option<Abort>,
    delay: Option<Delay>,
    /// Only to reject it by name (see [`Config::check`]).
    vars: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Abort {
    http_status: u32,
    #[serde(default)]
    body: String,
    /// APISIX 3.x's `abort.headers`: added to the abort response.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    percentage: Option<u32>,
    vars: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Delay {
    /// Seconds.
    duration: f64,
    percentage: Option<u32>,
    vars: Option<serde_json::Value>,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Config, String> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err("the configuration is empty; expected a JSON object with \"abort\" and/or \"delay\"".into());
        }
        let config: Config = serde_json::from_slice(bytes).map_err(|e| format!("the configuration is not valid: {e}"))?;
        config.check()?;
        Ok(config)
    }

    /// The checks APISIX's schema makes, with the key in every message.
    fn check(&self) -> Result<(), String> {
        let unsupported = |key: &str| format!("{key}: conditions on nginx variables are not supported by this filter");
        if self.vars.is_some() {
            return Err(unsupported("vars"));
        }
        if self.abort.is_none() && self.delay.is_none() {
            return Err("expected \"abort\" and/or \"delay\", found neither".into());
        }
        if let Some(a) = &self.abort {
            if !(200..=599).contains(&a.http_status) {
                return Err(format!("abort.http_status: {} is not an HTTP status from 200 to 599", a.http_status));
            }
            check_percentage("abort.percentage", a.percentage)?;
            if a.vars.is_some() {
                return Err(unsupported("abort.vars"));
            }
        }
        if let Some(d) = &self.delay {
            if !(d.duration.is_finite() && d.duration >= 0.0 && d.duration <= 3600.0) {
                return Err(format!("delay.duration: {} is not a number of seconds from 0 to 3600", d.duration));
            }
            check_percentage("delay.percentage", d.percentage)?;
            if d.vars.is_some() {
                return Err(unsupported("delay.vars"));
            }
        }
        Ok(())
    }
}

fn check_percentage(key: &str, p: Option<u32>) -> Result<(), String> {
    match p {
        Some(p) if p > 100 => Err(format!("{key}: {p} is not a percentage from 0 to 100")),
        _ => Ok(()),
    }
}

// ------------------------------------------------------------------ sampling

/// A xorshift64 generator: sampling needs no cryptographic quality, and the
/// state lives in the VM (one per server thread or worker).
struct Rng(Cell<u64>);

impl Rng {
    fn seeded(now: SystemTime) -> Rng {
        let nanos = now.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Rng(Cell::new(nanos | 1))
    }

    /// APISIX's `sample_hit`: `math.random(1, 100) <= percentage`, always
    /// without a percentage.
    fn hit(&self, percentage: Option<u32>) -> bool {
        let p = match percentage {
            Some(p) => p,
            None => return true,
        };
        let mut x = self.0.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.set(x);
        (x % 100 + 1) as u32 <= p
    }
}

// ------------------------------------------------------------------ the plugin

/// A paused request and what to do when it is due.
struct Waiting {
    context_id: u32,
    due: SystemTime,
    abort: bool,
}

/// What the root context shares with its HTTP contexts (all on one thread).
struct Shared {
    config: Config,
    rng: Rng,
    waiting: RefCell<Vec<Waiting>>,
}

impl Shared {
    /// Sets the tick to fire when the earliest waiting request is due, or
    /// stops it when none waits. Both servers re-arm the timer on a change.
    fn reschedule(&self, now: SystemTime) {
        let next = self.waiting.borrow().iter().map(|w| w.due).min();
        let period = match next {
            // Whole milliseconds, rounded up: a tick never comes early.
            Some(due) => {
                let wait = due.duration_since(now).unwrap_or(Duration::ZERO);
                Duration::from_millis((wait.as_micros() as u64 + 999) / 1000).max(Duration::from_millis(1))
            }
            None => Duration::ZERO,
        };
        if let Err(status) = hostcalls::set_tick_period(period) {
            hostcalls::log(LogLevel::Error, &format!("fault-injection: cannot set the tick period: {status:?}")).ok();
        }
    }

    fn send_abort(&self) {
        if let Some(a) = &self.config.abort {
            let headers: Vec<(&str, &str)> = a.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            if let Err(status) = hostcalls::send_http_response(a.http_status, headers, Some(a.body.as_bytes())) {
                hostcalls::log(LogLevel::Error, &format!("fault-injection: cannot send the abort response: {status:?}")).ok();
            }
        }
    }
}

#[derive(Default)]
struct FaultInjection {
    shared: Option<Rc<Shared>>,
}

impl Context for FaultInjection {}

impl RootContext for FaultInjection {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.shared = Some(Rc::new(Shared { config, rng: Rng::seeded(self.get_current_time()), waiting: RefCell::new(Vec::new()) }));
                true
            }
            Err(e) => {
                hostcalls::log(LogLevel::Error, &format!("fault-injection: {e}")).ok();
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let shared = match &self.shared {
            Some(s) => s,
            None => return,
        };
        let now = self.get_current_time();
        let due: Vec<Waiting> = {
            let mut waiting = shared.waiting.borrow_mut();
            let (due, rest) = waiting.drain(..).partition(|w| w.due <= now);
            *waiting = rest;
            due
        };
        // Re-arm first, while the root context is still the effective one.
        shared.reschedule(now);
        for w in due {
            // BadArgument: the stream is gone (the client left, or the host
            // ended a pause that outlived the plugin's pause_timeout).
            if hostcalls::set_effective_context(w.context_id).is_err() {
                continue;
            }
            if w.abort {
                shared.send_abort();
            } else if let Err(status) = hostcalls::resume_http_request() {
                hostcalls::log(LogLevel::Error, &format!("fault-injection: cannot resume request {}: {status:?}", w.context_id)).ok();
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { context_id, shared: self.shared.clone()? }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    context_id: u32,
    shared: Rc<Shared>,
}

impl Context for Request {
    fn on_done(&mut self) -> bool {
        // A request that ends while it waits must not be resumed later.
        self.shared.waiting.borrow_mut().retain(|w| w.context_id != self.context_id);
        true
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let s = &self.shared;
        let delay = s.config.delay.as_ref().filter(|d| s.rng.hit(d.percentage)).map(|d| d.duration);
        let abort = s.config.abort.as_ref().map_or(false, |a| s.rng.hit(a.percentage));
        match delay {
            Some(seconds) if seconds > 0.0 => {
                let now = self.get_current_time();
                let due = now + Duration::from_secs_f64(seconds);
                s.waiting.borrow_mut().push(Waiting { context_id: self.context_id, due, abort });
                s.reschedule(now);
                Action::Pause
            }
            _ if abort => {
                s.send_abort();
                Action::Pause
            }
            _ => Action::Continue,
        }
    }
}
