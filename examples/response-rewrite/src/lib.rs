//! APISIX's `response-rewrite` plugin as a Proxy-Wasm filter (Rust SDK 0.2.1).
//!
//! The plugin configuration is the JSON object APISIX's plugin takes:
//!
//! ```json
//! {
//!   "status_code": 403,
//!   "headers": {
//!     "add": ["X-Server-Balancer-Addr: 127.0.0.1:80"],
//!     "set": {"X-Server-Id": "3"},
//!     "remove": ["X-Powered-By"]
//!   },
//!   "body": "{\"code\":\"ok\",\"message\":\"new json body\"}\n",
//!   "body_base64": false
//! }
//! ```
//!
//! Every key is optional. `status_code` (200..=598) replaces the status.
//! `headers` are applied in APISIX's order: `add` (`"Name: value"` strings,
//! appended to what the upstream sent), `set` (replaces every value), `remove`;
//! a `set` to `""` removes the header, as nginx does. APISIX's older form, a
//! plain map `{"X-Name": "value"}`, is a `set`. `body` replaces the body
//! (`body_base64: true`: `body` is base64, decoded once at configuration);
//! then `Content-Length`, `Content-Encoding`, `ETag` and `Last-Modified` are
//! removed, as APISIX does, and the server frames the new body. The upstream's
//! body is dropped chunk by chunk as it arrives, never buffered. APISIX's
//! `filters` (regex substitutions), `vars` and `$var` substitution in values
//! are not supported here.

use std::rc::Rc;

use base64::Engine as _;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use serde_json::Value;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(ResponseRewrite::default()));
}}

// ------------------------------------------------------------------ configuration

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    status_code: Option<u32>,
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    headers: Option<Value>,
    /// Only to reject them by name.
    filters: Option<Value>,
    vars: Option<Value>,
}

#[derive(Debug, Default)]
struct Config {
    status: Option<u32>,
    body: Option<Vec<u8>>,
    add: Vec<(String, String)>,
    set: Vec<(String, String)>,
    remove: Vec<String>,
}

/// What APISIX clears when it replaces a body (`clear_header_as_body_modified`).
const BODY_HEADERS: [&str; 4] = ["content-length", "content-encoding", "etag", "last-modified"];

impl Config {
    fn parse(bytes: &[u8]) -> Result<Config, String> {
        // Nothing configured: a filter that changes nothing.
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Config::default());
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| format!("the configuration is not valid: {e}"))?;
        if raw.filters.is_some() {
            return Err("filters: regex substitutions in the body are not supported by this filter".into());
        }
        if raw.vars.is_some() {
            return Err("vars: conditions on nginx variables are not supported by this filter".into());
        }
        let mut config = Config::default();
        if let Some(s) = raw.status_code {
            if !(200..=598).contains(&s) {
                return Err(format!("status_code: {s} is not an HTTP status from 200 to 598"));
            }
            config.status = Some(s);
        }
        config.body = match (raw.body, raw.body_base64) {
            (Some(b), true) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| format!("body: not valid base64 (body_base64 is true): {e}"))?,
            ),
            (Some(b), false) => Some(b.into_bytes()),
            (None, true) => return Err("body_base64: true needs a body".into()),
            (None, false) => None,
        };
        if let Some(h) = raw.headers {
            config.parse_headers(&h)?;
        }
        Ok(config)
    }

    fn parse_headers(&mut self, h: &Value) -> Result<(), String> {
        let map = h.as_object().ok_or("headers: expected an object")?;
        // APISIX's `is_new_headers_conf`: an add/set/remove that is a table.
        let new_form = matches!(map.get("add"), Some(Value::Array(_)))
            || matches!(map.get("set"), Some(Value::Object(_)))
            || matches!(map.get("remove"), Some(Value::Array(_)));
        if !new_form {
            for (name, value) in map {
                self.set.push((header_name("headers", name)?, scalar(&format!("headers.{name}"), value)?));
            }
            return Ok(());
        }
        for (key, value) in map {
            match (key.as_str(), value) {
                ("add", Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("headers.add[{i}]");
                        let line = item.as_str().ok_or(format!("{at}: expected a \"Name: value\" string"))?;
                        let (name, value) = line.split_once(':').ok_or(format!("{at}: {line:?} is not \"Name: value\""))?;
                        self.add.push((header_name(&at, name.trim())?, value.trim().to_string()));
                    }
                }
                ("set", Value::Object(pairs)) => {
                    for (name, value) in pairs {
                        self.set.push((header_name("headers.set", name)?, scalar(&format!("headers.set.{name}"), value)?));
                    }
                }
                ("remove", Value::Array(names)) => {
                    for (i, name) in names.iter().enumerate() {
                        let at = format!("headers.remove[{i}]");
                        self.remove.push(header_name(&at, name.as_str().ok_or(format!("{at}: expected a header name"))?)?);
                    }
                }
                ("add", _) | ("remove", _) => return Err(format!("headers.{key}: expected a list")),
                ("set", _) => return Err("headers.set: expected an object".into()),
                _ => return Err(format!("headers.{key}: unknown key; expected add, set or remove")),
            }
        }
        Ok(())
    }
}

fn header_name(at: &str, name: &str) -> Result<String, String> {
    if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7f) {
        return Err(format!("{at}: {name:?} is not a header name"));
    }
    Ok(name.to_string())
}

/// A header value: a string, or a number as APISIX's schema allows.
fn scalar(at: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("{at}: expected a string or a number")),
    }
}

// ------------------------------------------------------------------ the plugin

#[derive(Default)]
struct ResponseRewrite {
    config: Option<Rc<Config>>,
}

impl Context for ResponseRewrite {}

impl RootContext for ResponseRewrite {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(c) => {
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                hostcalls::log(LogLevel::Error, &format!("response-rewrite: {e}")).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Response { config: self.config.clone()? }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Response {
    config: Rc<Config>,
}

impl Context for Response {}

impl HttpContext for Response {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let c = &self.config;
        if let Some(status) = c.status {
            self.set_http_response_header(":status", Some(&status.to_string()));
        }
        for (name, value) in &c.add {
            self.add_http_response_header(name, value);
        }
        for (name, value) in &c.set {
            // An empty value removes the header, as nginx's set does.
            self.set_http_response_header(name, Some(value.as_str()).filter(|v| !v.is_empty()));
        }
        for name in &c.remove {
            self.set_http_response_header(name, None);
        }
        if c.body.is_some() {
            for name in BODY_HEADERS {
                self.set_http_response_header(name, None);
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let body = match &self.config.body {
            Some(b) => b,
            None => return Action::Continue,
        };
        // Each chunk of the upstream's body is replaced by nothing, the last
        // one by the new body: nothing of the upstream's is held.
        if end_of_stream {
            self.set_http_response_body(0, body_size, body);
        } else if body_size > 0 {
            self.set_http_response_body(0, body_size, &[]);
        }
        Action::Continue
    }
}
