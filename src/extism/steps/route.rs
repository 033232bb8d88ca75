//! The `route`, `backend` and `snowflake` of the contexts, and Otoroshi's error responses.
//!
//! There are no Otoroshi routes here: the "route" is the server's own (an NGINX `location`, a
//! Traffic Server remap rule), described by [`RouteInfo`] and written in the shape of Otoroshi's
//! `NgRoute.json` with Otoroshi's defaults, so that a plugin (or MAIF's Rust types) reading it
//! finds every field.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::view::header;

/// An upstream, as Otoroshi's `NgTarget`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub hostname: String,
    pub port: u16,
    pub tls: bool,
}

impl Target {
    /// `NgTarget.json` with Otoroshi's defaults.
    #[must_use]
    pub fn json(&self) -> Value {
        json!({
            "id": format!("{}:{}", self.hostname, self.port),
            "hostname": self.hostname,
            "port": self.port,
            "tls": self.tls,
            "weight": 1,
            "backup": false,
            "predicate": {"type": "AlwaysMatch"},
            "protocol": "HTTP/1.1",
            "ip_address": null,
            "tls_config": {"certs": [], "trusted_certs": [], "enabled": false, "loose": false, "trust_all": false},
        })
    }
}

/// The server's route for a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteInfo {
    pub id: String,
    pub name: String,
    /// `host/path` patterns the route answers (Otoroshi's frontend domains).
    pub domains: Vec<String>,
    pub targets: Vec<Target>,
    /// The backend path prefix.
    pub root: String,
}

impl RouteInfo {
    /// `NgRoute.json` with Otoroshi's defaults for what the server does not have.
    #[must_use]
    pub fn json(&self) -> Value {
        json!({
            "_loc": {"tenant": "default", "teams": ["default"]},
            "id": self.id,
            "name": self.name,
            "description": "",
            "tags": [],
            "metadata": {},
            "enabled": true,
            "debug_flow": false,
            "export_reporting": false,
            "capture": false,
            "groups": ["default"],
            "bound_listeners": [],
            "frontend": {"domains": self.domains, "strip_path": true, "exact": false, "headers": {}, "cookies": {}, "query": {}, "methods": []},
            "backend": {
                "targets": self.targets.iter().map(Target::json).collect::<Vec<_>>(),
                "root": if self.root.is_empty() { "/" } else { self.root.as_str() },
                "rewrite": false,
                "load_balancing": {"type": "RoundRobin"},
                "client": {
                    "retries": 1, "max_errors": 20, "retry_initial_delay": 50, "backoff_factor": 2, "call_timeout": 30000,
                    "call_and_stream_timeout": 120000, "connection_timeout": 10000, "idle_timeout": 60000, "global_timeout": 30000,
                    "sample_interval": 2000, "proxy": {}, "custom_timeouts": [], "cache_connection_settings": {"enabled": false, "queue_size": 2048},
                },
                "health_check": null,
            },
            "backend_ref": null,
            "plugins": [],
        })
    }
}

/// Otoroshi's snowflake ids (`IdGenerator.nextIdStr`): milliseconds since 2010-11-04 shifted by
/// 22 bits, the generator id shifted by 10, and a counter from 0 to 4095.
pub struct Snowflake {
    generator: u64,
    counter: AtomicU64,
    last: Mutex<u64>,
}

/// Otoroshi's epoch (ms) for snowflakes.
const SNOWFLAKE_EPOCH_MS: u64 = 1_288_834_974_657;

impl Snowflake {
    /// `generator` tells processes apart (an NGINX worker slot, a Traffic Server process); at most
    /// 1024 as in Otoroshi.
    #[must_use]
    pub fn new(generator: u64) -> Snowflake {
        Snowflake { generator: generator.min(1024), counter: AtomicU64::new(0), last: Mutex::new(0) }
    }

    /// The next id for the time `now_ms` (milliseconds since the Unix epoch).
    pub fn next_at(&self, now_ms: u64) -> String {
        // As Otoroshi: a clock that went backwards still gives an id (Otoroshi appends a suffix).
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let backwards = now_ms < *last;
        *last = now_ms;
        drop(last);
        let count = self.counter.fetch_add(1, Ordering::Relaxed) % 4096;
        let id = (now_ms.saturating_sub(SNOWFLAKE_EPOCH_MS) << 22) | (self.generator << 10) | count;
        if backwards {
            format!("{id}-{}", self.generator + 1)
        } else {
            id.to_string()
        }
    }

    pub fn next(&self) -> String {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.next_at(now)
    }
}

/// A response the host sends instead of the origin's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalResponse {
    pub status: u16,
    /// Headers in order; `Set-Cookie` lines included.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// Otoroshi's `Errors.craftResponseResult` without error templates: an HTML page for a client
    /// that accepts `text/html` (or says nothing), else `{"Otoroshi-Error": message}`; both with
    /// `Otoroshi-Error: true` and `Otoroshi-Error-Msg`.
    #[must_use]
    pub fn otoroshi_error(status: u16, message: &str, request_headers: &[(String, String)]) -> LocalResponse {
        let accept = header(request_headers, "Accept").unwrap_or("text/html");
        let html = accept.split(',').any(|a| a.trim() == "text/html");
        let (content_type, body) = if html {
            ("text/html; charset=utf-8", format!("<!DOCTYPE html>\n<html><head><title>Otoroshi error</title></head><body><h1>{}</h1></body></html>\n", escape_html(message)))
        } else {
            ("application/json", json!({"Otoroshi-Error": message}).to_string())
        };
        LocalResponse {
            status,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                ("Otoroshi-Error".into(), "true".into()),
                ("Otoroshi-Error-Msg".into(), header_safe(message)),
            ],
            body: body.into_bytes(),
        }
    }

    /// Play's `Results.Status(status)(json)`: a JSON body.
    #[must_use]
    pub fn json(status: u16, body: &Value) -> LocalResponse {
        LocalResponse {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A message as a header value: control characters (a line break would end the header) become
/// spaces.
fn header_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflakes_are_otoroshis() {
        let s = Snowflake::new(3);
        let id: u64 = s.next_at(SNOWFLAKE_EPOCH_MS + 1000).parse().unwrap();
        assert_eq!(id >> 22, 1000);
        assert_eq!((id >> 10) & 0xfff, 3);
        let next: u64 = s.next_at(SNOWFLAKE_EPOCH_MS + 1000).parse().unwrap();
        assert_eq!(next, id + 1);
        assert!(s.next_at(SNOWFLAKE_EPOCH_MS).contains('-'));
    }

    #[test]
    fn the_route_has_every_field_of_ngroute() {
        let r = RouteInfo {
            id: "r1".into(),
            name: "api".into(),
            domains: vec!["api.test/".into()],
            targets: vec![Target { hostname: "127.0.0.1".into(), port: 8080, tls: false }],
            root: String::new(),
        };
        let v = r.json();
        for k in [
            "_loc",
            "id",
            "name",
            "description",
            "tags",
            "metadata",
            "enabled",
            "debug_flow",
            "export_reporting",
            "capture",
            "groups",
            "frontend",
            "backend",
            "backend_ref",
            "plugins",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["backend"]["targets"][0]["hostname"], "127.0.0.1");
        assert_eq!(v["backend"]["root"], "/");
    }

    #[test]
    fn errors_are_html_for_browsers_and_json_otherwise() {
        let html = LocalResponse::otoroshi_error(403, "no <way>", &[]);
        assert!(String::from_utf8(html.body).unwrap().contains("no &lt;way&gt;"));
        let json = LocalResponse::otoroshi_error(403, "nope\r\nX: y", &[("accept".into(), "application/json".into())]);
        assert_eq!(json.body, br#"{"Otoroshi-Error":"nope\r\nX: y"}"#);
        assert!(json.headers.contains(&("Otoroshi-Error-Msg".into(), "nope  X: y".into())));
    }
}
