//! The per-request (HTTP) context. Cases are selected by the `x-pw-test`
//! request header (comma/space separated list). See tests/plugins/README.md.

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, Status};

use crate::raw;
use crate::sdk;
#[cfg(feature = "sdk-no-body-set")]
use crate::sdk::BodySet;
#[cfg(feature = "sdk-no-bytes")]
use crate::sdk::{CallBytes, HttpBytes};
use crate::util::{self, bool_str, header_safe, incr_shared, opt_text, put, sdk_status_name, status_name, NONE};
use crate::{push_pending_done, push_tick_resume, take_resumed, RootShared};

/// Every case name this filter understands.
const KNOWN_CASES: &[&str] = &[
    "headers",
    "set-headers",
    "pseudo",
    "sizes",
    "local",
    "local-req-body",
    "local-req-trailers",
    "local-resp-headers",
    "req-body-upper",
    "req-body-prefix",
    "req-body-append",
    "req-body-replace",
    "req-body-splice",
    "resp-body-upper",
    "resp-body-prefix",
    "resp-body-append",
    "resp-body-replace",
    "resp-body-splice",
    "body-info",
    "trailers",
    "http-call",
    "http-call-local",
    "http-call-fail",
    "http-call-bad",
    "http-call-response",
    "http-call-req-body",
    "http-call-resp-body",
    "shared",
    "shared-cas",
    "shared-get",
    "shared-set",
    "enqueue",
    "dequeue",
    "queue-resume",
    "tick-resume",
    "metrics",
    "properties",
    "time",
    "log",
    "effective-context",
    "close",
    "close-response",
    "foreign",
    "grpc",
    "resume-reentrant",
    "resume-response-reentrant",
    "resume-in-body",
    "defer-done",
    "config",
    "panic",
    "spin",
    "alloc",
];

const REQ_BODY_LEN_CHANGING: &[&str] = &["req-body-prefix", "req-body-append", "req-body-replace"];
const RESP_BODY_LEN_CHANGING: &[&str] = &["resp-body-prefix", "resp-body-append", "resp-body-replace"];

const MAP_REQUEST_HEADERS: u32 = 0;
const MAP_RESPONSE_HEADERS: u32 = 2;
const BUFFER_REQUEST_BODY: u32 = 0;
const BUFFER_RESPONSE_BODY: u32 = 1;
const BOGUS_TYPE: u32 = 99;
const BOGUS_CONTEXT: u32 = 0x7fff_ff00;
const BOGUS_METRIC: u32 = 0x7fff_fff0;
const BOGUS_GRPC_TOKEN: u32 = 0x7fff_fff1;

/// Body sent with the `http-call*` callouts.
pub const CALLOUT_BODY: &str = "ping from rust-sdk-filter";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Callout {
    /// Request paused; result copied into request + response headers.
    Request,
    /// Request paused; answered with a local response built from the result.
    Local,
    /// Response paused; result copied into response headers.
    Response,
    /// Request body paused at its end; the callout's status is appended to it.
    RequestBody,
    /// Response body paused at its end; the callout's status is appended to it.
    ResponseBody,
    /// Not paused (a dispatch that should have been refused); just recorded.
    Ignore,
}

#[derive(Default, Debug)]
struct BodyStats {
    calls: u32,
    eos_calls: u32,
    last_size: usize,
}

pub struct Filter {
    id: u32,
    shared: Rc<RootShared>,
    cases: Vec<String>,
    /// `x-pw-*` request headers, captured in on_http_request_headers.
    params: Vec<(String, Vec<u8>)>,
    /// Response headers to add in on_http_response_headers.
    report: Vec<(String, String)>,
    local_sent: bool,
    req_headers_eos: Option<bool>,
    req_body: BodyStats,
    resp_body: BodyStats,
    callouts: Vec<(u32, Callout)>,
    headers_paused_for_body: bool,
}

impl Filter {
    pub fn new(id: u32, shared: Rc<RootShared>) -> Filter {
        Filter {
            id,
            shared,
            cases: Vec::new(),
            params: Vec::new(),
            report: Vec::new(),
            local_sent: false,
            req_headers_eos: None,
            req_body: BodyStats::default(),
            resp_body: BodyStats::default(),
            callouts: Vec::new(),
            headers_paused_for_body: false,
        }
    }

    fn has(&self, case: &str) -> bool {
        self.cases.iter().any(|c| c == case)
    }

    fn has_any(&self, cases: &[&str]) -> bool {
        cases.iter().any(|c| self.has(c))
    }

    fn rep<V: ToString>(&mut self, name: &str, value: V) {
        self.report.push((name.to_string(), value.to_string()));
    }

    /// Reads a request header now (request phase only).
    fn live_req_header(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_header_bytes(name)
    }

    /// A test parameter: request header `name` (an `x-pw-*` header) as it was
    /// when on_http_request_headers started. Snapshotted so that response-phase
    /// cases never need to read request headers.
    fn param(&self, name: &str) -> Option<Vec<u8>> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn param_text(&self, name: &str) -> Option<String> {
        self.param(name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn param_u64(&self, name: &str) -> Option<u64> {
        self.param(name).as_deref().and_then(util::parse_u64)
    }

    fn keep_content_length(&self) -> bool {
        self.param("x-pw-keep-content-length").is_some()
    }

    /// proxy_send_local_response with the filter's standard headers, the
    /// case-specific `extra` headers and every report collected so far.
    fn local(&mut self, status: u32, body: &[u8], mut extra: Vec<(String, String)>) {
        let tag = self.shared.config.tag.clone();
        extra.extend(std::mem::take(&mut self.report));
        let mut headers: Vec<(&str, &str)> = vec![("x-proxy-wasm", tag.as_str()), ("content-type", "text/plain")];
        // `x-pw-local-connection: close`: the plugin asks the server to close
        // the client connection after its response.
        let connection = self.param_text("x-pw-local-connection");
        if let Some(c) = connection.as_deref() {
            headers.push(("connection", c));
        }
        for (k, v) in extra.iter() {
            headers.push((k.as_str(), v.as_str()));
        }
        self.send_http_response(status, headers, Some(body));
        self.local_sent = true;
    }

    fn property(&self, path: Vec<&str>) -> String {
        opt_text(self.get_property(path).as_deref(), 256)
    }

    fn property_int(&self, path: Vec<&str>) -> String {
        util::property_int_or_text(self.get_property(path).as_deref())
    }

    /// The dotted property paths of parameter `x-pw-prop-paths` (comma-separated).
    fn prop_paths(&self) -> Vec<String> {
        self.param_text("x-pw-prop-paths")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
            .unwrap_or_default()
    }

    /// `<path>=<value>` for each path of `x-pw-prop-paths` (see `util::render_property`).
    fn prop_path_values(&self) -> Vec<String> {
        self.prop_paths()
            .iter()
            .map(|p| format!("{}={}", p, util::render_property(self.get_property(p.split('.').collect()).as_deref())))
            .collect()
    }

    fn callout_headers<'a>(&'a self, path: &'a str, ctx: &'a str) -> Vec<(&'a str, &'a str)> {
        let c = &self.shared.config;
        vec![
            (":method", "POST"),
            (":path", path),
            (":authority", c.authority.as_str()),
            (":scheme", "http"),
            ("content-type", "text/plain"),
            ("x-pw-callout", "1"),
            ("x-pw-context-id", ctx),
        ]
    }

    /// Dispatches the standard callout to the configured upstream (or
    /// `fail_upstream`). Returns true when the call is in flight.
    fn dispatch(&mut self, kind: Callout, failing: bool) -> bool {
        let c = &self.shared.config;
        let (upstream, timeout) = if failing {
            (c.fail_upstream.clone(), c.fail_timeout_ms)
        } else {
            (c.upstream.clone(), c.callout_timeout_ms)
        };
        let path = self
            .param_text("x-pw-callout-path")
            .unwrap_or_else(|| c.callout_path.clone());
        let ctx = self.id.to_string();
        let result = self.dispatch_http_call(
            &upstream,
            self.callout_headers(&path, &ctx),
            Some(CALLOUT_BODY.as_bytes()),
            vec![],
            Duration::from_millis(timeout as u64),
        );
        match result {
            Ok(token) => {
                self.callouts.push((token, kind));
                self.rep("x-pw-callout-dispatch", "OK");
                true
            }
            Err(st) => {
                self.rep("x-pw-callout-dispatch", sdk_status_name(st));
                false
            }
        }
    }

    // ----- request-phase cases that only report -------------------------

    fn case_sizes_request(&mut self) {
        let (st, size) = raw::get_header_map_size(MAP_REQUEST_HEADERS);
        let pairs = self.get_http_request_headers_bytes();
        self.rep("x-pw-req-header-map-size", format!("{} {}", status_name(st), size));
        self.rep("x-pw-req-header-map-size-expected", util::serialized_size(&pairs));
        let (st, _) = raw::get_header_map_size(BOGUS_TYPE);
        self.rep("x-pw-header-map-size-bad-type", status_name(st));
        let (st, _, _) = raw::get_buffer_status(BOGUS_TYPE);
        self.rep("x-pw-buffer-status-bad-type", status_name(st));
    }

    fn case_headers_request(&mut self, num_headers: usize) {
        let pairs = self.get_http_request_headers_bytes();
        self.rep("x-pw-req-header-count", pairs.len());
        self.rep("x-pw-req-header-count-param", num_headers);
        let echo = opt_text(self.live_req_header("x-pw-echo").as_deref(), 256);
        self.rep("x-pw-echo", echo);
        let echo_upper = opt_text(self.live_req_header("X-PW-ECHO").as_deref(), 256);
        self.rep("x-pw-echo-upper", echo_upper);
        let missing = opt_text(self.live_req_header("x-pw-surely-missing").as_deref(), 256);
        self.rep("x-pw-missing", missing);

        self.add_http_request_header("x-pw-added", "1");
        self.add_http_request_header("x-pw-multi", "a");
        self.add_http_request_header("x-pw-multi", "b");
        self.set_http_request_header("x-pw-replace", Some("replaced"));
        self.set_http_request_header("x-pw-remove", None);

        let rb = opt_text(self.live_req_header("x-pw-replace").as_deref(), 256);
        self.rep("x-pw-replace-readback", rb);
        let rm = opt_text(self.live_req_header("x-pw-remove").as_deref(), 256);
        self.rep("x-pw-remove-readback", rm);
        let multi: Vec<String> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-pw-multi"))
            .map(|(_, v)| header_safe(&v, 64))
            .collect();
        self.rep("x-pw-multi-readback", multi.join(","));
    }

    fn case_set_headers_request(&mut self) {
        let pairs = self.get_http_request_headers_bytes();
        let mut kept: Vec<(String, Vec<u8>)> = pairs
            .into_iter()
            .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("x-pw-drop-"))
            .collect();
        kept.push(("x-pw-set-all".to_string(), b"1".to_vec()));
        let n = kept.len();
        self.set_http_request_headers_bytes(kept.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect());
        self.rep("x-pw-set-all-count", n);
    }

    fn case_pseudo_request(&mut self) {
        for (name, hdr) in [
            (":method", "x-pw-method"),
            (":path", "x-pw-path"),
            (":authority", "x-pw-authority"),
            (":scheme", "x-pw-scheme"),
        ] {
            let v = opt_text(self.live_req_header(name).as_deref(), 256);
            self.rep(hdr, v);
        }
    }

    fn case_properties_request(&mut self) {
        let v = self.property(vec!["request", "path"]);
        self.rep("x-pw-prop-request-path", v);
        let v = self.property(vec!["request", "method"]);
        self.rep("x-pw-prop-request-method", v);
        let v = self.property(vec!["request", "headers", "x-pw-prop"]);
        self.rep("x-pw-prop-header", v);
        let v = self.property(vec!["source", "address"]);
        self.rep("x-pw-prop-source-address", v);
        let v = self.property_int(vec!["source", "port"]);
        self.rep("x-pw-prop-source-port", v);
        let v = self.property(vec!["plugin_name"]);
        self.rep("x-pw-prop-plugin-name", v);
        let v = self.property(vec!["plugin_root_id"]);
        self.rep("x-pw-prop-plugin-root-id", v);
        let v = self.property(vec!["plugin_vm_id"]);
        self.rep("x-pw-prop-plugin-vm-id", v);
        let v = self.property(vec!["pw", "no", "such", "property"]);
        self.rep("x-pw-prop-missing", v);
        // C++-SDK style path: segments joined by NUL *and* a trailing NUL.
        let (st, data) = raw::get_property(b"request\0path\0");
        let v = if st == 0 { opt_text(data.as_deref(), 256) } else { status_name(st) };
        self.rep("x-pw-prop-request-path-nul", v);

        let value = self
            .param_text("x-pw-prop-value")
            .unwrap_or_else(|| "round-trip".to_string());
        self.set_property(vec!["pw", "roundtrip"], Some(value.as_bytes()));
        let v = self.property(vec!["pw", "roundtrip"]);
        self.rep("x-pw-prop-roundtrip", v);
        for v in self.prop_path_values() {
            self.rep("x-pw-prop-req", v);
        }
    }

    fn case_time(&mut self) {
        let now = self.get_current_time();
        let ns = now.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        self.rep("x-pw-time-ns", ns);
        // 2020-01-01 .. 2100-01-01
        let sane = ns >= 1_577_836_800_000_000_000u128 && ns < 4_102_444_800_000_000_000u128;
        self.rep("x-pw-time-sane", bool_str(sane));
    }

    fn case_log(&mut self) {
        // By value, not in an array: LogLevel is neither Copy nor PartialEq
        // before SDK 0.1.4.
        let level = |i: usize| match i {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        };
        let names = ["trace", "debug", "info", "warn", "error", "critical"];
        for (i, name) in names.iter().enumerate() {
            let msg = format!("rust-sdk-filter log-test level={} context={}", name, self.id);
            let _ = hostcalls::log(level(i), &msg);
        }
        self.rep("x-pw-logged", names.len());
        match sdk::get_log_level() {
            Ok(level) => {
                let n = level as u32;
                self.rep("x-pw-log-level", n);
                self.rep("x-pw-log-level-name", names.get(n as usize).copied().unwrap_or("?"));
            }
            Err(why) => self.rep("x-pw-log-level", why),
        }
    }

    fn case_effective_context(&mut self) {
        let own = raw::set_effective_context(self.id);
        let bogus = raw::set_effective_context(BOGUS_CONTEXT);
        let restore = raw::set_effective_context(self.id);
        self.rep("x-pw-effective-self", status_name(own));
        self.rep("x-pw-effective-bogus", status_name(bogus));
        self.rep("x-pw-effective-restore", status_name(restore));
    }

    fn case_shared(&mut self) {
        let key = self.param_text("x-pw-key").unwrap_or_else(|| "counter".to_string());
        match incr_shared(&key, 1) {
            Ok((v, retries)) => {
                self.rep("x-pw-shared", v);
                self.rep("x-pw-shared-retries", retries);
            }
            Err(e) => self.rep("x-pw-shared", e),
        }
    }

    fn case_shared_cas(&mut self) {
        let key = self.param_text("x-pw-key").unwrap_or_else(|| "cas.test".to_string());
        let (_, mut cas) = self.get_shared_data(&key);
        if cas.is_none() {
            let _ = self.set_shared_data(&key, Some(b"init"), None);
            cas = self.get_shared_data(&key).1;
        }
        self.rep("x-pw-cas-value", cas.map(|c| c.to_string()).unwrap_or_else(|| NONE.to_string()));
        let first = self.set_shared_data(&key, Some(b"first"), cas);
        self.rep("x-pw-cas-first", sdk_status_name(first.err().unwrap_or(Status::Ok)));
        let stale = self.set_shared_data(&key, Some(b"stale"), cas);
        self.rep("x-pw-cas-stale", sdk_status_name(stale.err().unwrap_or(Status::Ok)));
        let (value, _) = self.get_shared_data(&key);
        self.rep("x-pw-cas-final", opt_text(value.as_deref(), 64));
    }

    /// Parameters: `x-pw-queue-vm` / `x-pw-queue-name` (the queue to resolve,
    /// default this plugin's VM and configured queue), `x-pw-queue-id` (a raw
    /// id to use instead of resolving), `x-pw-queue-count` (items to enqueue
    /// in this one callback, default 1; statuses reported space-separated).
    fn case_enqueue(&mut self) {
        let own_vm = self.get_property(vec!["plugin_vm_id"]).unwrap_or_default();
        let own_vm = String::from_utf8_lossy(&own_vm).into_owned();
        let target = match self.param_u64("x-pw-queue-id") {
            Some(id) => Some(id as u32),
            None => {
                let vm_id = self.param_text("x-pw-queue-vm").unwrap_or(own_vm);
                let queue = self.param_text("x-pw-queue-name").unwrap_or_else(|| self.shared.config.queue.clone());
                let resolved = self.resolve_shared_queue(&vm_id, &queue);
                self.rep("x-pw-queue-resolve", if resolved.is_some() { "OK" } else { "NOT_FOUND" });
                self.rep(
                    "x-pw-queue-resolve-same-id",
                    bool_str(resolved.is_some() && resolved == self.shared.queue_id),
                );
                self.rep("x-pw-queue-resolved-id", resolved.map(|q| q.to_string()).unwrap_or_else(|| NONE.to_string()));
                resolved.or(self.shared.queue_id)
            }
        };
        let value = self.param("x-pw-queue-value").unwrap_or_else(|| b"hello".to_vec());
        match target {
            Some(q) => {
                let count = self.param_u64("x-pw-queue-count").unwrap_or(1).max(1);
                let statuses: Vec<String> = (0..count)
                    .map(|_| sdk_status_name(self.enqueue_shared_queue(q, Some(&value)).err().unwrap_or(Status::Ok)))
                    .collect();
                self.rep("x-pw-enqueue", statuses.join(" "));
            }
            None => self.rep("x-pw-enqueue", "no-queue"),
        }
    }

    /// `x-pw-queue-id` (default the queue registered in on_configure): one
    /// dequeue, reported as `OK <item>`, `EMPTY` or the refusal.
    fn case_dequeue(&mut self) {
        let id = self.param_u64("x-pw-queue-id").map(|id| id as u32).or(self.shared.queue_id).unwrap_or(0);
        let report = match hostcalls::dequeue_shared_queue(id) {
            Ok(Some(item)) => format!("OK {}", header_safe(&item, 128)),
            Ok(None) => "EMPTY".to_string(),
            Err(st) => sdk_status_name(st),
        };
        self.rep("x-pw-dequeue", report);
    }

    fn case_metrics(&mut self) {
        let (counter, gauge, histogram) = match self.shared.metrics {
            Some(m) => m,
            None => {
                self.rep("x-pw-metric-counter", "no-metrics");
                return;
            }
        };
        let value = self.param_u64("x-pw-metric-value").unwrap_or(42);
        let name = |r: Result<(), u32>| status_name(r.err().unwrap_or(0));
        let inc = name(sdk::increment_metric(counter, 1));
        let neg = name(sdk::increment_metric(counter, -1));
        let rec_g = name(sdk::record_metric(gauge, value));
        let dec_g = name(sdk::increment_metric(gauge, -1));
        let rec_h = name(sdk::record_metric(histogram, value));
        self.rep("x-pw-metric-ops", format!("{} {} {} {}", inc, rec_g, dec_g, rec_h));
        self.rep("x-pw-metric-counter-negative", neg);
        let get = |id: u32| match sdk::get_metric(id) {
            Ok(v) => v.to_string(),
            Err(st) => status_name(st),
        };
        self.rep("x-pw-metric-counter", get(counter));
        self.rep("x-pw-metric-gauge", get(gauge));
        self.rep("x-pw-metric-histogram", get(histogram));
        self.rep("x-pw-metric-unknown", get(BOGUS_METRIC));
        let again = sdk::define_metric(sdk::Metric::Counter, &format!("{}.requests", self.shared.config.metric_prefix));
        self.rep("x-pw-metric-redefine-same-id", bool_str(again.ok() == Some(counter)));
    }

    fn case_foreign(&mut self) {
        let name = self
            .param_text("x-pw-foreign-name")
            .unwrap_or_else(|| self.shared.config.foreign_function.clone());
        let args = self.param("x-pw-foreign-args").unwrap_or_else(|| b"hello".to_vec());
        let (st, result) = raw::call_foreign_function(&name, &args);
        self.rep("x-pw-foreign-status", status_name(st));
        self.rep("x-pw-foreign-result", opt_text(result.as_deref(), 256));
    }

    fn case_grpc(&mut self) {
        let upstream = self.shared.config.grpc_upstream.clone();
        let metadata = util::serialize_pairs(&[(b"x-pw-grpc", b"1")]);
        let (st, token) = raw::grpc_call(&upstream, "pw.Test", "Ping", &metadata, b"ping", 1000);
        self.rep("x-pw-grpc-call", status_name(st));
        // Cancel immediately: no callback may follow (the SDK would not know the token).
        let cancel = if st == 0 { status_name(raw::grpc_cancel(token)) } else { "skipped".to_string() };
        self.rep("x-pw-grpc-call-cancel", cancel);

        let (st, stream) = raw::grpc_stream(&upstream, "pw.Test", "Chat", &metadata);
        self.rep("x-pw-grpc-stream", status_name(st));
        let (send, cancel) = if st == 0 {
            let send = status_name(raw::grpc_send(stream, b"hello", false));
            (send, status_name(raw::grpc_cancel(stream)))
        } else {
            ("skipped".to_string(), "skipped".to_string())
        };
        self.rep("x-pw-grpc-send", send);
        self.rep("x-pw-grpc-stream-cancel", cancel);
        self.rep("x-pw-grpc-close-unknown", status_name(raw::grpc_close(BOGUS_GRPC_TOKEN)));
        self.rep("x-pw-grpc-cancel-unknown", status_name(raw::grpc_cancel(BOGUS_GRPC_TOKEN)));
        self.rep("x-pw-grpc-send-unknown", status_name(raw::grpc_send(BOGUS_GRPC_TOKEN, b"x", true)));
    }

    fn case_config(&mut self) {
        let c = self.shared.config.clone();
        self.rep("x-pw-config-tag", c.tag);
        self.rep("x-pw-config-upstream", c.upstream);
        self.rep("x-pw-config-authority", c.authority);
        self.rep("x-pw-config-tick-ms", c.tick_ms);
        self.rep("x-pw-config-queue", c.queue);
        self.rep("x-pw-config-size", c.raw_len);
        self.rep("x-pw-vm-config", header_safe(&crate::vm_config(), 256));
        self.rep("x-pw-context-id", self.id);
        self.rep("x-pw-root-context-id", self.shared.root_id);
        let q = self.shared.queue_id.map(|q| q.to_string()).unwrap_or_else(|| NONE.to_string());
        self.rep("x-pw-queue-id", q);
    }

    fn case_http_call_bad(&mut self) {
        let c = &self.shared.config;
        let headers = vec![(":method", "GET"), (":authority", c.authority.as_str())]; // no :path
        let r = self.dispatch_http_call(&c.upstream, headers, None, vec![], Duration::from_millis(1000));
        match r {
            Ok(token) => {
                self.callouts.push((token, Callout::Ignore));
                self.rep("x-pw-callout-bad", "OK");
            }
            Err(st) => self.rep("x-pw-callout-bad", sdk_status_name(st)),
        }
    }

    fn case_alloc(&mut self) {
        let mb = self.param_u64("x-pw-alloc-mb").unwrap_or(64) as usize;
        let v = vec![1u8; mb * 1024 * 1024];
        let touched: u64 = v.iter().step_by(4096).map(|b| *b as u64).sum();
        self.rep("x-pw-alloc", format!("{} MiB {} pages", mb, touched));
    }

    // ----- bodies -------------------------------------------------------

    /// Applies the body edits selected by `<dir>-body-*` cases to a complete,
    /// buffered body of `size` bytes. `dir` is "req" or "resp".
    fn edit_body(&mut self, dir: &str, size: usize) {
        let request = dir == "req";
        let get = |s: &Self, start: usize, len: usize| -> Vec<u8> {
            let b = if request {
                s.get_http_request_body(start, len)
            } else {
                s.get_http_response_body(start, len)
            };
            b.unwrap_or_default()
        };
        let set = |s: &Self, start: usize, len: usize, data: &[u8]| {
            if request {
                s.set_http_request_body(start, len, data)
            } else {
                s.set_http_response_body(start, len, data)
            }
        };
        let mut len = size;
        if self.has(&format!("{}-body-upper", dir)) {
            let body = get(self, 0, len);
            set(self, 0, len, &body.to_ascii_uppercase());
        }
        if self.has(&format!("{}-body-splice", dir)) && len >= 3 {
            set(self, 1, 2, b"--");
        }
        if self.has(&format!("{}-body-replace", dir)) {
            let name = if request { "x-pw-replace-body" } else { "x-pw-replace-resp-body" };
            let repl = self
                .param(name)
                .unwrap_or_else(|| self.shared.config.replacement.as_bytes().to_vec());
            set(self, 0, len, &repl);
            len = repl.len();
        }
        if self.has(&format!("{}-body-prefix", dir)) {
            let p = self.shared.config.prefix.clone();
            set(self, 0, 0, p.as_bytes());
            len += p.len();
        }
        if self.has(&format!("{}-body-append", dir)) {
            let s = self.shared.config.suffix.clone();
            set(self, len, 0, s.as_bytes());
        }
    }

    fn wants_req_body_edit(&self) -> bool {
        self.has_any(&[
            "req-body-upper",
            "req-body-prefix",
            "req-body-append",
            "req-body-replace",
            "req-body-splice",
        ])
    }

    fn wants_resp_body_edit(&self) -> bool {
        self.has_any(&[
            "resp-body-upper",
            "resp-body-prefix",
            "resp-body-append",
            "resp-body-replace",
            "resp-body-splice",
        ])
    }

    fn on_callout_done(&mut self, kind: Callout, num_headers: usize, body_size: usize, num_trailers: usize) {
        let (code, msg) = sdk::get_status();
        let mut kv: Vec<(String, String)> = vec![("x-pw-callout-get-status".to_string(), code.to_string())];
        let mut status_code: Option<u32> = None;
        let mut body = Vec::new();
        if num_headers == 0 {
            kv.push(("x-pw-callout-failed".to_string(), "1".to_string()));
            kv.push((
                "x-pw-callout-get-status-message".to_string(),
                header_safe(msg.unwrap_or_default().as_bytes(), 128),
            ));
        } else {
            let status = self.get_http_call_response_header_bytes(":status");
            status_code = status.as_deref().and_then(util::parse_u64).map(|s| s as u32);
            body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            let pairs = self.get_http_call_response_headers_bytes().len();
            let trailers = self.get_http_call_response_trailers_bytes().len();
            kv.push(("x-pw-callout-status".to_string(), opt_text(status.as_deref(), 16)));
            kv.push(("x-pw-callout-body".to_string(), header_safe(&body, 128)));
            kv.push(("x-pw-callout-headers".to_string(), num_headers.to_string()));
            kv.push(("x-pw-callout-header-pairs".to_string(), pairs.to_string()));
            kv.push(("x-pw-callout-body-size".to_string(), body_size.to_string()));
            kv.push(("x-pw-callout-trailers".to_string(), format!("{} {}", num_trailers, trailers)));
        }
        match kind {
            Callout::Ignore => {
                put("callout.ignored", format!("{}", num_headers).as_bytes());
            }
            Callout::Request => {
                // What the origin receives ...
                if num_headers == 0 {
                    self.add_http_request_header("x-pw-callout-failed", "1");
                } else {
                    for (k, v) in kv.iter() {
                        if k == "x-pw-callout-status" || k == "x-pw-callout-body" {
                            self.add_http_request_header(k, v);
                        }
                    }
                }
                // ... and what the client sees.
                self.report.extend(kv);
                self.resume_http_request();
            }
            Callout::Local => {
                let (status, text) = match status_code {
                    Some(s) if (200..=599).contains(&s) => {
                        let mut t = b"callout:".to_vec();
                        t.extend_from_slice(&body);
                        (s, t)
                    }
                    _ => (503, b"callout failed".to_vec()),
                };
                self.local(status, &text, kv);
            }
            Callout::RequestBody if self.param("x-pw-body-callout-local").is_some() => {
                // Answers instead of continuing the held body.
                let mut text = b"callout:".to_vec();
                text.extend_from_slice(&body);
                self.local(status_code.filter(|s| (200..=599).contains(s)).unwrap_or(503), &text, kv);
            }
            Callout::RequestBody => {
                let tail = format!("[callout:{}]", opt_text(status_code.map(|s| s.to_string()).as_deref().map(str::as_bytes), 16));
                self.set_http_request_body(self.req_body.last_size, 0, tail.as_bytes());
                self.resume_http_request();
            }
            Callout::ResponseBody => {
                let tail = format!("[callout:{}]", opt_text(status_code.map(|s| s.to_string()).as_deref().map(str::as_bytes), 16));
                self.set_http_response_body(self.resp_body.last_size, 0, tail.as_bytes());
                self.resume_http_response();
            }
            Callout::Response => {
                kv.extend(std::mem::take(&mut self.report));
                for (k, v) in kv.iter() {
                    self.add_http_response_header(k, v);
                }
                self.resume_http_response();
            }
        }
    }
}

impl Drop for Filter {
    /// Runs from proxy_on_delete.
    fn drop(&mut self) {
        util::bump("delete.count");
    }
}

impl Context for Filter {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        let kind = match self.callouts.iter().position(|(t, _)| *t == token) {
            Some(i) => self.callouts.remove(i).1,
            None => return,
        };
        self.on_callout_done(kind, num_headers, body_size, num_trailers);
    }

    fn on_done(&mut self) -> bool {
        util::bump("done.count");
        if self.has("defer-done") {
            if self.shared.config.tick_ms > 0 {
                push_pending_done(self.shared.root_id, self.id);
                return false;
            }
            put("done.deferred", b"no-ticks");
        }
        true
    }
}

/// The header callbacks of SDK 0.2 (ABI 0.2.x) tell whether the headers end
/// the stream; those of 0.1 (ABI 0.1.0) do not.
#[cfg(not(feature = "api-0-1"))]
macro_rules! header_callbacks {
    () => {
        fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
            self.request_headers(num_headers, Some(end_of_stream))
        }

        fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
            self.response_headers(num_headers, Some(end_of_stream))
        }
    };
}

#[cfg(feature = "api-0-1")]
macro_rules! header_callbacks {
    () => {
        fn on_http_request_headers(&mut self, num_headers: usize) -> Action {
            self.request_headers(num_headers, None)
        }

        fn on_http_response_headers(&mut self, num_headers: usize) -> Action {
            self.response_headers(num_headers, None)
        }
    };
}

/// `end_of_stream` of a header callback for the reports (`(none)` where the
/// ABI does not say).
fn eos_text(end_of_stream: Option<bool>) -> &'static str {
    match end_of_stream {
        Some(eos) => bool_str(eos),
        None => NONE,
    }
}

impl Filter {
    /// `proxy_close_stream`, where the ABI has it: false when it has not
    /// (ABI 0.1.0), and the case is then reported as unsupported.
    #[cfg(not(feature = "api-0-1"))]
    fn close(&mut self, response: bool) -> bool {
        if response {
            self.reset_http_response();
        } else {
            self.reset_http_request();
        }
        true
    }

    #[cfg(feature = "api-0-1")]
    fn close(&mut self, response: bool) -> bool {
        self.rep(if response { "x-pw-close-response" } else { "x-pw-close" }, "unsupported");
        false
    }

    fn request_headers(&mut self, num_headers: usize, end_of_stream: Option<bool>) -> Action {
        self.req_headers_eos = end_of_stream;
        let selector = self.live_req_header("x-pw-test").unwrap_or_default();
        self.cases = String::from_utf8_lossy(&selector)
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if !self.cases.is_empty() {
            self.params = self
                .get_http_request_headers_bytes()
                .into_iter()
                .filter(|(k, _)| k.len() > 5 && k.as_bytes()[..5].eq_ignore_ascii_case(b"x-pw-"))
                .collect();
        }
        let unknown: Vec<String> = self
            .cases
            .iter()
            .filter(|c| !KNOWN_CASES.contains(&c.as_str()))
            .cloned()
            .collect();
        for u in unknown {
            self.rep("x-pw-unknown-case", u);
        }

        // Fault injection.
        if self.has("panic") {
            panic!("rust-sdk-filter: panic requested by x-pw-test");
        }
        if self.has("spin") {
            let x = 0u32;
            loop {
                // Volatile read: the loop cannot be optimised away.
                if unsafe { std::ptr::read_volatile(&x) } == 1 {
                    break;
                }
            }
        }
        if self.has("alloc") {
            self.case_alloc();
        }

        // Cases that only read/modify and report.
        if self.has("sizes") {
            self.case_sizes_request();
        }
        if self.has("headers") {
            self.case_headers_request(num_headers);
        }
        if self.has("set-headers") {
            self.case_set_headers_request();
        }
        if self.has("pseudo") {
            self.case_pseudo_request();
        }
        if self.has("properties") {
            self.case_properties_request();
        }
        if self.has("time") {
            self.case_time();
        }
        if self.has("log") {
            self.case_log();
        }
        if self.has("effective-context") {
            self.case_effective_context();
        }
        if self.has("shared") {
            self.case_shared();
        }
        if self.has("shared-cas") {
            self.case_shared_cas();
        }
        if self.has("enqueue") {
            self.case_enqueue();
        }
        if self.has("dequeue") {
            self.case_dequeue();
        }
        if self.has("metrics") {
            self.case_metrics();
        }
        if self.has("foreign") {
            self.case_foreign();
        }
        if self.has("grpc") {
            self.case_grpc();
        }
        if self.has("config") {
            self.case_config();
        }
        if self.has("http-call-bad") {
            self.case_http_call_bad();
        }
        if self.has("body-info") {
            self.rep("x-pw-req-headers-eos", eos_text(end_of_stream));
        }
        if self.has_any(REQ_BODY_LEN_CHANGING) && !self.keep_content_length() {
            self.set_http_request_header("content-length", None);
        }

        // Cases that end or pause the request here (first one wins).
        if self.has("close") && self.close(false) {
            return Action::Pause;
        }
        if self.has("shared-get") {
            let key = self.param_text("x-pw-key").unwrap_or_else(|| "counter".to_string());
            let (value, cas) = self.get_shared_data(&key);
            let cas = cas.map(|c| c.to_string()).unwrap_or_else(|| NONE.to_string());
            let (status, body) = match value {
                Some(v) => (200, v),
                None => (404, NONE.as_bytes().to_vec()),
            };
            let extra = vec![
                ("x-pw-shared-value".to_string(), header_safe(&body, 256)),
                ("x-pw-shared-cas".to_string(), cas),
            ];
            self.local(status, &body, extra);
            return Action::Pause;
        }
        if self.has("shared-set") {
            let key = self.param_text("x-pw-key").unwrap_or_else(|| "counter".to_string());
            let value = self.param("x-pw-value").unwrap_or_default();
            let cas = self.param_u64("x-pw-cas").map(|c| c as u32).filter(|c| *c != 0);
            let st = self.set_shared_data(&key, Some(&value), cas);
            let name = sdk_status_name(st.err().unwrap_or(Status::Ok));
            let status = if name == "OK" { 200 } else { 409 };
            self.local(status, name.as_bytes(), vec![("x-pw-shared-set".to_string(), name.clone())]);
            return Action::Pause;
        }
        if self.has("local") {
            let status = self.param_u64("x-pw-local-status").unwrap_or(403) as u32;
            let body = self
                .param("x-pw-local-body")
                .unwrap_or_else(|| b"denied by rust-sdk-filter".to_vec());
            self.local(status, &body, vec![("x-pw-local".to_string(), "request-headers".to_string())]);
            return Action::Pause;
        }
        if self.has("http-call") && self.dispatch(Callout::Request, false) {
            return Action::Pause;
        }
        if self.has("http-call-local") && self.dispatch(Callout::Local, false) {
            return Action::Pause;
        }
        if self.has("http-call-fail") && self.dispatch(Callout::Request, true) {
            return Action::Pause;
        }
        if self.has("queue-resume") {
            let item = format!("resume:{}", self.id);
            let st = match self.shared.queue_id {
                Some(q) => sdk_status_name(self.enqueue_shared_queue(q, Some(item.as_bytes())).err().unwrap_or(Status::Ok)),
                None => "no-queue".to_string(),
            };
            let ok = st == "OK";
            self.rep("x-pw-enqueue", st);
            if ok {
                return Action::Pause;
            }
        }
        if self.has("tick-resume") {
            if self.shared.config.tick_ms > 0 {
                push_tick_resume(self.shared.root_id, self.id);
                return Action::Pause;
            }
            self.rep("x-pw-tick-resume", "no-ticks");
        }
        if self.has("resume-in-body") {
            match end_of_stream {
                Some(true) => self.rep("x-pw-resume-in-body", "no-body"),
                Some(false) => {
                    self.headers_paused_for_body = true;
                    return Action::Pause;
                }
                // Without end_of_stream a request without a body would never continue.
                None => self.rep("x-pw-resume-in-body", "unsupported"),
            }
        }
        if self.has("resume-reentrant") {
            // Continue from inside the callback, then return Pause: the host
            // must defer the continue until the callback returns.
            self.resume_http_request();
            self.rep("x-pw-resume-reentrant", "1");
            return Action::Pause;
        }
        Action::Continue
    }

    fn response_headers(&mut self, num_headers: usize, end_of_stream: Option<bool>) -> Action {
        if self.local_sent {
            return Action::Continue;
        }
        let origin_pairs = self.get_http_response_headers_bytes();
        if self.has("sizes") {
            let (st, size) = raw::get_header_map_size(MAP_RESPONSE_HEADERS);
            self.rep("x-pw-resp-header-map-size", format!("{} {}", status_name(st), size));
            self.rep("x-pw-resp-header-map-size-expected", util::serialized_size(&origin_pairs));
        }
        if self.has("set-headers") {
            let mut kept: Vec<(String, Vec<u8>)> = origin_pairs
                .iter()
                .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("x-pw-drop-"))
                .cloned()
                .collect();
            kept.push(("x-pw-set-all-resp".to_string(), b"1".to_vec()));
            self.set_http_response_headers_bytes(kept.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect());
        }

        let tag = self.shared.config.tag.clone();
        self.add_http_response_header("x-proxy-wasm", &tag);
        if let Some(how) = take_resumed(self.id) {
            self.add_http_response_header("x-pw-resumed-by", how.name());
        }
        if self.has("headers") {
            self.rep("x-pw-resp-header-count", origin_pairs.len());
            self.rep("x-pw-resp-header-count-param", num_headers);
            let ct = opt_text(self.get_http_response_header_bytes("content-type").as_deref(), 256);
            self.rep("x-pw-resp-content-type", ct);
            self.add_http_response_header("x-pw-resp-added", "1");
            self.set_http_response_header("x-pw-resp-replace", Some("replaced"));
            self.set_http_response_header("x-pw-resp-remove", None);
        }
        if self.has("pseudo") {
            let v = opt_text(self.get_http_response_header_bytes(":status").as_deref(), 16);
            self.rep("x-pw-status", v);
        }
        if self.has("properties") {
            let v = self.property_int(vec!["response", "code"]);
            self.rep("x-pw-prop-response-code", v);
            for v in self.prop_path_values() {
                self.rep("x-pw-prop-resp", v);
            }
        }
        if self.has("body-info") {
            self.rep("x-pw-resp-headers-eos", eos_text(end_of_stream));
            self.rep("x-pw-req-body-calls", self.req_body.calls);
            self.rep("x-pw-req-body-eos-calls", self.req_body.eos_calls);
            self.rep("x-pw-req-body-last-size", self.req_body.last_size);
        }
        let report = std::mem::take(&mut self.report);
        for (k, v) in report.iter() {
            self.add_http_response_header(k, v);
        }
        if self.has_any(RESP_BODY_LEN_CHANGING) && !self.keep_content_length() {
            self.set_http_response_header("content-length", None);
        }

        if self.has("local-resp-headers") {
            let status = self.param_u64("x-pw-local-status").unwrap_or(403) as u32;
            let body = self
                .param("x-pw-local-body")
                .unwrap_or_else(|| b"replaced response by rust-sdk-filter".to_vec());
            self.local(status, &body, vec![("x-pw-local".to_string(), "response-headers".to_string())]);
            return Action::Pause;
        }
        if self.has("close-response") && self.close(true) {
            return Action::Pause;
        }
        if self.has("http-call-response") {
            if self.dispatch(Callout::Response, false) {
                return Action::Pause;
            }
            let report = std::mem::take(&mut self.report);
            for (k, v) in report.iter() {
                self.add_http_response_header(k, v);
            }
        }
        if self.has("resume-response-reentrant") {
            self.add_http_response_header("x-pw-resume-response-reentrant", "1");
            self.resume_http_response();
            return Action::Pause;
        }
        Action::Continue
    }
}

impl HttpContext for Filter {
    header_callbacks!();

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.req_body.calls += 1;
        if self.req_body.calls == 1 && self.has("tick-resume") {
            // Whether the tick had continued the paused headers before the
            // first body callback (on Envoy it must have).
            let by = self.live_req_header("x-pw-resumed-by").map(|v| String::from_utf8_lossy(&v).into_owned());
            self.rep("x-pw-first-body-call-resumed-by", by.as_deref().unwrap_or("not-resumed"));
        }
        if end_of_stream {
            self.req_body.eos_calls += 1;
        }
        self.req_body.last_size = body_size;
        if self.local_sent {
            return Action::Continue;
        }
        if self.headers_paused_for_body {
            if !end_of_stream {
                return Action::Pause;
            }
            self.headers_paused_for_body = false;
            self.rep("x-pw-resume-in-body", body_size);
            self.resume_http_request();
            return Action::Continue;
        }
        if self.has("http-call-req-body") {
            if end_of_stream && self.dispatch(Callout::RequestBody, false) {
                return Action::Pause;
            }
            return if end_of_stream { Action::Continue } else { Action::Pause };
        }
        let edit = self.wants_req_body_edit();
        let local = self.has("local-req-body");
        if !(edit || local || self.has("sizes")) {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if self.has("sizes") {
            let (st, size, _) = raw::get_buffer_status(BUFFER_REQUEST_BODY);
            self.rep("x-pw-req-body-buffer-status", format!("{} {}", status_name(st), size));
            self.rep("x-pw-req-body-size-param", body_size);
        }
        if edit {
            self.edit_body("req", body_size);
        }
        if local {
            let status = self.param_u64("x-pw-local-status").unwrap_or(403) as u32;
            let body = format!("request body had {} bytes", body_size);
            self.local(status, body.as_bytes(), vec![("x-pw-local".to_string(), "request-body".to_string())]);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        if self.local_sent {
            return Action::Continue;
        }
        if self.has("trailers") {
            let trailers = self.get_http_request_trailers_bytes();
            self.rep("x-pw-req-trailers", format!("{} {}", num_trailers, trailers.len()));
            let v = opt_text(self.get_http_request_trailer_bytes("x-trailer").as_deref(), 256);
            self.rep("x-pw-req-trailer-value", v);
            self.add_http_request_trailer("x-pw-req-trailer", "added");
        }
        if self.has("local-req-trailers") {
            let status = self.param_u64("x-pw-local-status").unwrap_or(403) as u32;
            let body = format!("request trailers: {}", num_trailers);
            self.local(status, body.as_bytes(), vec![("x-pw-local".to_string(), "request-trailers".to_string())]);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.resp_body.calls += 1;
        if end_of_stream {
            self.resp_body.eos_calls += 1;
        }
        self.resp_body.last_size = body_size;
        if self.local_sent {
            return Action::Continue;
        }
        if self.has("http-call-resp-body") {
            if end_of_stream && self.dispatch(Callout::ResponseBody, false) {
                return Action::Pause;
            }
            return if end_of_stream { Action::Continue } else { Action::Pause };
        }
        let edit = self.wants_resp_body_edit();
        if edit && !end_of_stream {
            return Action::Pause;
        }
        if end_of_stream {
            if self.has("sizes") {
                let (st, size, _) = raw::get_buffer_status(BUFFER_RESPONSE_BODY);
                put("resp.body.buffer_status", format!("{} {}", status_name(st), size).as_bytes());
            }
            if edit {
                self.edit_body("resp", body_size);
            }
            if self.has("trailers") {
                self.add_http_response_trailer("x-pw-trailer", "added");
            }
            if edit || self.has("body-info") {
                let info = format!(
                    "calls={} eos={} size={}",
                    self.resp_body.calls, self.resp_body.eos_calls, self.resp_body.last_size
                );
                put("resp.body.info", info.as_bytes());
            }
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        if self.has("trailers") {
            let trailers = self.get_http_response_trailers_bytes();
            put("resp.trailers", format!("{} {}", num_trailers, trailers.len()).as_bytes());
            self.add_http_response_trailer("x-pw-resp-trailer", "added");
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        util::bump("log.count");
        let m = opt_text(self.get_http_request_header_bytes(":method").as_deref(), 16);
        let p = opt_text(self.get_http_request_header_bytes(":path").as_deref(), 200);
        let s = opt_text(self.get_http_response_header_bytes(":status").as_deref(), 16);
        put("log.last", format!("{} {} {}", m, p, s).as_bytes());
        if self.has("properties") {
            for v in self.prop_path_values() {
                if let Some((path, _)) = v.split_once('=') {
                    put(&format!("log.prop.{}", path), v.as_bytes());
                }
            }
        }
    }
}
