//! APISIX's `forward-auth` plugin as a Proxy-Wasm filter (Rust SDK 0.2.1).
//!
//! The plugin configuration is the JSON object APISIX's plugin takes:
//!
//! ```json
//! {
//!   "uri": "http://127.0.0.1:9080/auth",
//!   "request_headers": ["Authorization"],
//!   "upstream_headers": ["X-User-ID"],
//!   "client_headers": ["WWW-Authenticate"],
//!   "timeout": 3000
//! }
//! ```
//!
//! Each request's headers pause while a `GET` goes to `uri` (`proxy_http_call`)
//! with `X-Forwarded-Proto`, `X-Forwarded-Method`, `X-Forwarded-Host`,
//! `X-Forwarded-Uri`, `X-Forwarded-For` and the client's `request_headers`.
//! The auth service's answer decides, as in APISIX:
//!
//! - below 300: its `upstream_headers` (those it sent) are set on the request,
//!   which goes on to the upstream;
//! - 300 or more: the client gets its status, its `client_headers` and its body;
//!   the upstream is never asked;
//! - no answer (refused, reset, `timeout` in milliseconds passed, or the call
//!   could not be made): `status_on_error` (default 403, as APISIX), or the
//!   request goes on unchecked with `allow_degradation: true`.
//!
//! `uri` must be `http://` (the host's `http_call` speaks plain HTTP/1.1); its
//! `host:port` is the `http_call` upstream, so the plugin's YAML must allow it
//! in `authorizations.allowed_hosts`. `ssl_verify` is accepted for APISIX
//! configurations and has no effect. APISIX's `request_method: "POST"` (which
//! forwards the request body) and its `keepalive*` settings are not supported.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(ForwardAuth::default()));
}}

// ------------------------------------------------------------------ configuration

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    uri: String,
    #[serde(default)]
    request_headers: Vec<String>,
    #[serde(default)]
    upstream_headers: Vec<String>,
    #[serde(default)]
    client_headers: Vec<String>,
    /// Milliseconds, 1..=60000 (APISIX's range and default).
    #[serde(default = "default_timeout")]
    timeout: u64,
    request_method: Option<String>,
    #[serde(default = "default_status_on_error")]
    status_on_error: u32,
    #[serde(default)]
    allow_degradation: bool,
    /// Accepted so APISIX configurations load; only `http://` is supported.
    #[allow(dead_code)]
    ssl_verify: Option<bool>,
}

fn default_timeout() -> u64 {
    3000
}

fn default_status_on_error() -> u32 {
    403
}

struct Config {
    /// `host:port` of `uri`: the `http_call` upstream.
    upstream: String,
    /// `uri`'s authority as written (the auth request's `:authority`).
    authority: String,
    /// `uri`'s path and query (the auth request's `:path`).
    path: String,
    request_headers: Vec<String>,
    upstream_headers: Vec<String>,
    client_headers: Vec<String>,
    timeout: Duration,
    status_on_error: u32,
    allow_degradation: bool,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Config, String> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err("the configuration is empty; expected a JSON object with at least \"uri\"".into());
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| format!("the configuration is not valid: {e}"))?;
        let (upstream, authority, path) = split_uri(&raw.uri).map_err(|e| format!("uri: {e}"))?;
        if !(1..=60_000).contains(&raw.timeout) {
            return Err(format!("timeout: {} is not a number of milliseconds from 1 to 60000", raw.timeout));
        }
        if !(200..=599).contains(&raw.status_on_error) {
            return Err(format!("status_on_error: {} is not an HTTP status from 200 to 599", raw.status_on_error));
        }
        match raw.request_method.as_deref() {
            None | Some("GET") => {}
            Some(m) => return Err(format!("request_method: {m:?} is not supported; this filter asks the auth service with GET")),
        }
        for (key, names) in [("request_headers", &raw.request_headers), ("upstream_headers", &raw.upstream_headers), ("client_headers", &raw.client_headers)] {
            if let Some(bad) = names.iter().find(|n| n.is_empty() || n.starts_with(':') || n.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7f)) {
                return Err(format!("{key}: {bad:?} is not a header name"));
            }
        }
        Ok(Config {
            upstream,
            authority,
            path,
            request_headers: raw.request_headers,
            upstream_headers: raw.upstream_headers,
            client_headers: raw.client_headers,
            timeout: Duration::from_millis(raw.timeout),
            status_on_error: raw.status_on_error,
            allow_degradation: raw.allow_degradation,
        })
    }
}

/// `http://host[:port][/path][?query]` → (`host:port`, authority, path).
fn split_uri(uri: &str) -> Result<(String, String, String), String> {
    let rest = match uri.strip_prefix("http://") {
        Some(r) => r,
        None if uri.starts_with("https://") => return Err(format!("{uri:?}: https is not supported (the host's http_call has no TLS)")),
        None => return Err(format!("{uri:?} is not an http:// URI")),
    };
    let (authority, path) = match rest.find(|c| c == '/' || c == '?') {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{uri:?} has no host (or has user information)"));
    }
    // A port after the last ':' unless that ':' is inside an IPv6 literal.
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let upstream = if has_port {
        let port = &authority[authority.rfind(':').unwrap_or(0) + 1..];
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{uri:?} has a bad port {port:?}"));
        }
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((upstream, authority.to_string(), path))
}

// ------------------------------------------------------------------ the plugin

#[derive(Default)]
struct ForwardAuth {
    config: Option<Rc<Config>>,
}

impl Context for ForwardAuth {}

impl RootContext for ForwardAuth {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(c) => {
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                hostcalls::log(LogLevel::Error, &format!("forward-auth: {e}")).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { config: self.config.clone()? }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    config: Rc<Config>,
}

impl Request {
    /// The auth request's headers: pseudo-headers, APISIX's `X-Forwarded-*`,
    /// then the chosen client headers (which may override those).
    fn auth_request_headers(&self) -> Vec<(String, String)> {
        let c = &self.config;
        let mut headers: Vec<(String, String)> = vec![
            (":method".into(), "GET".into()),
            (":path".into(), c.path.clone()),
            (":authority".into(), c.authority.clone()),
            (":scheme".into(), "http".into()),
        ];
        let mut put = |name: &str, value: String| {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            headers.push((name.to_string(), value));
        };
        let forwarded = [
            ("X-Forwarded-Proto", ":scheme"),
            ("X-Forwarded-Method", ":method"),
            ("X-Forwarded-Host", ":authority"),
            ("X-Forwarded-Uri", ":path"),
        ];
        for (name, pseudo) in forwarded {
            if let Some(v) = self.get_http_request_header(pseudo) {
                put(name, v);
            }
        }
        if let Some(ip) = self.client_ip() {
            put("X-Forwarded-For", ip);
        }
        for name in &c.request_headers {
            if let Some(v) = self.get_http_request_header(name) {
                put(name, v);
            }
        }
        headers
    }

    /// The client's address without its port (Envoy's `source.address` is `ip:port`).
    fn client_ip(&self) -> Option<String> {
        let raw = self.get_property(vec!["source", "address"])?;
        let addr = String::from_utf8(raw).ok()?;
        let ip = match addr.rfind(':') {
            // "[v6]:port" or "v4:port"; a bare v6 address has more than one ':'.
            Some(i) if addr.starts_with('[') => addr[1..i].trim_end_matches(']').to_string(),
            Some(i) if addr.matches(':').count() == 1 => addr[..i].to_string(),
            _ => addr,
        };
        Some(ip)
    }

    /// No answer from the auth service: APISIX's `status_on_error`, or on
    /// with `allow_degradation`.
    fn fail(&self, why: &str, resume: bool) -> Action {
        hostcalls::log(LogLevel::Warn, &format!("forward-auth: {why}")).ok();
        if self.config.allow_degradation {
            if resume {
                self.resume_http_request();
            }
            return Action::Continue;
        }
        self.send_http_response(self.config.status_on_error, vec![], None);
        Action::Pause
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, _token: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let headers = self.get_http_call_response_headers();
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse::<u32>().ok());
        let status = match status {
            Some(s) => s,
            // The host calls back with no headers when the call failed or timed out.
            None => {
                let why = format!("no answer from the auth service at {} (refused, reset, or none within {:?})", self.config.upstream, self.config.timeout);
                self.fail(&why, true);
                return;
            }
        };
        let values = |name: &str| -> Vec<String> { headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect() };
        if status >= 300 {
            // Framing headers are the server's business: the local response
            // gets its own length.
            let framing = ["content-length", "transfer-encoding", "connection"];
            let mut to_client: Vec<(String, String)> = Vec::new();
            for name in self.config.client_headers.iter().filter(|n| !framing.iter().any(|f| n.eq_ignore_ascii_case(f))) {
                to_client.extend(values(name).into_iter().map(|v| (name.clone(), v)));
            }
            let body = if body_size > 0 { self.get_http_call_response_body(0, body_size) } else { None };
            let pairs: Vec<(&str, &str)> = to_client.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            self.send_http_response(status, pairs, body.as_deref());
            return;
        }
        for name in &self.config.upstream_headers {
            let mut found = values(name).into_iter();
            if let Some(first) = found.next() {
                self.set_http_request_header(name, Some(&first));
                for more in found {
                    self.add_http_request_header(name, &more);
                }
            }
        }
        self.resume_http_request();
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let owned = self.auth_request_headers();
        let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match self.dispatch_http_call(&self.config.upstream, headers, None, vec![], self.config.timeout) {
            Ok(_) => Action::Pause,
            // BadArgument: e.g. the upstream is not in authorizations.allowed_hosts.
            Err(status) => self.fail(&format!("cannot call the auth service at {}: {status:?}", self.config.upstream), false),
        }
    }
}
