//! Benchmark filter for proxy-wasm-host (see docs/benchmarks.md, scripts/bench.sh).
//!
//! The plugin configuration (a plain string, surrounding whitespace and quotes
//! ignored) selects the workload:
//!
//! | config | workload |
//! |---|---|
//! | `noop` (or empty) | W2: every callback returns Continue at once |
//! | `w3` | W3: read one request header (`user-agent`), add one request header (`x-bench-req`) and one response header (`x-bench-resp`) |
//! | `w4` | W4: 20 request header adds, 20 gets, 20 removes (`x-bench-0` .. `x-bench-19`) |
//! | `w5` | W5: response body buffered to the end of the stream, upper-cased, set back |
//! | `w7` | W7: shared-data counter incremented with a CAS retry loop, and one counter metric per request |
//!
//! An unknown configuration makes `on_configure` fail, so the host refuses the plugin.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Noop,
    W3,
    W4,
    W5,
    W7,
}

const W4_NAMES: [&str; 20] = [
    "x-bench-0", "x-bench-1", "x-bench-2", "x-bench-3", "x-bench-4", "x-bench-5", "x-bench-6", "x-bench-7", "x-bench-8", "x-bench-9",
    "x-bench-10", "x-bench-11", "x-bench-12", "x-bench-13", "x-bench-14", "x-bench-15", "x-bench-16", "x-bench-17", "x-bench-18", "x-bench-19",
];

const COUNTER_KEY: &str = "bench.counter";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BenchRoot { mode: Mode::Noop, metric: 0 }) });
}}

struct BenchRoot {
    mode: Mode,
    metric: u32,
}

impl Context for BenchRoot {}

impl RootContext for BenchRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        let text = text.trim().trim_matches('"').trim().to_ascii_lowercase();
        self.mode = match text.as_str() {
            "" | "noop" | "w2" => Mode::Noop,
            "w3" => Mode::W3,
            "w4" => Mode::W4,
            "w5" => Mode::W5,
            "w7" => Mode::W7,
            other => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("bench-filter: unknown workload {:?} (noop, w3, w4, w5, w7)", other)).ok();
                return false;
            }
        };
        if self.mode == Mode::W7 {
            match hostcalls::define_metric(MetricType::Counter, "bench_requests") {
                Ok(id) => self.metric = id,
                Err(e) => {
                    proxy_wasm::hostcalls::log(LogLevel::Error, &format!("bench-filter: define_metric: {:?}", e)).ok();
                    return false;
                }
            }
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BenchHttp { mode: self.mode, metric: self.metric }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct BenchHttp {
    mode: Mode,
    metric: u32,
}

impl Context for BenchHttp {}

impl HttpContext for BenchHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.mode {
            Mode::W3 => {
                let ua = self.get_http_request_header("user-agent");
                let value = ua.as_deref().map(|v| if v.is_empty() { "-" } else { "ua" }).unwrap_or("none");
                self.add_http_request_header("x-bench-req", value);
            }
            Mode::W4 => {
                for name in W4_NAMES.iter() {
                    self.add_http_request_header(name, "bench-value");
                }
                let mut found = 0usize;
                for name in W4_NAMES.iter() {
                    if self.get_http_request_header(name).is_some() {
                        found += 1;
                    }
                }
                for name in W4_NAMES.iter() {
                    self.set_http_request_header(name, None);
                }
                if found != W4_NAMES.len() {
                    self.send_http_response(500, vec![("x-bench-error", "w4 get")], Some(b"w4: a header added was not found\n"));
                    return Action::Pause;
                }
            }
            Mode::W7 => {
                let mut tries = 0;
                loop {
                    tries += 1;
                    let (value, cas) = match hostcalls::get_shared_data(COUNTER_KEY) {
                        Ok(v) => v,
                        Err(_) => break,
                    };
                    let current = value
                        .as_deref()
                        .filter(|v| v.len() == 8)
                        .map(|v| {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(v);
                            u64::from_le_bytes(b)
                        })
                        .unwrap_or(0);
                    match hostcalls::set_shared_data(COUNTER_KEY, Some(&(current + 1).to_le_bytes()), cas) {
                        Ok(()) => break,
                        Err(Status::CasMismatch) if tries < 100 => continue,
                        Err(_) => break,
                    }
                }
                hostcalls::increment_metric(self.metric, 1).ok();
            }
            Mode::Noop | Mode::W5 => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.mode == Mode::W3 {
            self.add_http_response_header("x-bench-resp", "1");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode != Mode::W5 {
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffer until the whole body is there.
            return Action::Pause;
        }
        if let Some(mut body) = self.get_http_response_body(0, body_size) {
            body.make_ascii_uppercase();
            self.set_http_response_body(0, body_size, &body);
        }
        Action::Continue
    }
}
