//! Plugin configuration (JSON object). Every key is optional; see
//! tests/plugins/README.md for the table of keys and defaults.

use crate::json::{self, Json};

#[derive(Debug, Clone)]
pub struct Config {
    pub tag: String,
    pub upstream: String,
    pub authority: String,
    pub callout_path: String,
    pub callout_timeout_ms: u32,
    pub fail_upstream: String,
    pub fail_timeout_ms: u32,
    pub grpc_upstream: String,
    pub tick_ms: u32,
    pub tick_http_call: bool,
    pub queue: String,
    pub metric_prefix: String,
    pub prefix: String,
    pub suffix: String,
    pub replacement: String,
    pub foreign_function: String,
    pub defer_root_done: bool,
    pub reject: bool,
    /// Size in bytes of the configuration text as read from the host.
    pub raw_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tag: "rust-sdk".to_string(),
            upstream: "127.0.0.1:8081".to_string(),
            authority: String::new(),
            callout_path: "/callout".to_string(),
            callout_timeout_ms: 5000,
            fail_upstream: "127.0.0.1:1".to_string(),
            fail_timeout_ms: 1000,
            grpc_upstream: String::new(),
            tick_ms: 0,
            tick_http_call: false,
            queue: "q1".to_string(),
            metric_prefix: "rust_sdk_filter".to_string(),
            prefix: "[pw]".to_string(),
            suffix: "[/pw]".to_string(),
            replacement: "replaced by rust-sdk-filter".to_string(),
            foreign_function: "echo".to_string(),
            defer_root_done: false,
            reject: false,
            raw_len: 0,
        }
    }
}

fn want_str(key: &str, v: &Json) -> Result<String, String> {
    match v {
        Json::Str(s) => Ok(s.clone()),
        _ => Err(format!("'{}' must be a string", key)),
    }
}

fn want_bool(key: &str, v: &Json) -> Result<bool, String> {
    match v {
        Json::Bool(b) => Ok(*b),
        _ => Err(format!("'{}' must be a boolean", key)),
    }
}

fn want_u32(key: &str, v: &Json) -> Result<u32, String> {
    match v {
        Json::Num(n) if *n >= 0.0 && *n <= u32::MAX as f64 && n.fract() == 0.0 => Ok(*n as u32),
        _ => Err(format!("'{}' must be an integer in 0..=4294967295", key)),
    }
}

impl Config {
    /// Parses the plugin configuration. `None` or empty (after trimming
    /// whitespace) means "all defaults". Anything else must be a JSON object.
    pub fn parse(raw: Option<&[u8]>) -> Result<Config, String> {
        let mut c = Config::default();
        let raw = raw.unwrap_or(&[]);
        c.raw_len = raw.len();
        let text = std::str::from_utf8(raw).map_err(|_| "configuration is not UTF-8".to_string())?;
        if !text.trim().is_empty() {
            let members = match json::parse(text)? {
                Json::Obj(m) => m,
                _ => return Err("configuration must be a JSON object".to_string()),
            };
            for (k, v) in members.iter() {
                let k = k.as_str();
                match k {
                    "tag" => c.tag = want_str(k, v)?,
                    "upstream" => c.upstream = want_str(k, v)?,
                    "authority" => c.authority = want_str(k, v)?,
                    "callout_path" => c.callout_path = want_str(k, v)?,
                    "callout_timeout_ms" => c.callout_timeout_ms = want_u32(k, v)?,
                    "fail_upstream" => c.fail_upstream = want_str(k, v)?,
                    "fail_timeout_ms" => c.fail_timeout_ms = want_u32(k, v)?,
                    "grpc_upstream" => c.grpc_upstream = want_str(k, v)?,
                    "tick_ms" => c.tick_ms = want_u32(k, v)?,
                    "tick_http_call" => c.tick_http_call = want_bool(k, v)?,
                    "queue" => c.queue = want_str(k, v)?,
                    "metric_prefix" => c.metric_prefix = want_str(k, v)?,
                    "prefix" => c.prefix = want_str(k, v)?,
                    "suffix" => c.suffix = want_str(k, v)?,
                    "replacement" => c.replacement = want_str(k, v)?,
                    "foreign_function" => c.foreign_function = want_str(k, v)?,
                    "defer_root_done" => c.defer_root_done = want_bool(k, v)?,
                    "reject" => c.reject = want_bool(k, v)?,
                    // Unknown keys are ignored so that tests can annotate configs.
                    _ => {}
                }
            }
        }
        if c.authority.is_empty() {
            c.authority = c.upstream.clone();
        }
        if c.grpc_upstream.is_empty() {
            c.grpc_upstream = c.upstream.clone();
        }
        if c.queue.is_empty() {
            return Err("'queue' must not be empty".to_string());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn empty_means_defaults() {
        for raw in [None, Some(&b""[..]), Some(&b"  \n"[..])] {
            let c = Config::parse(raw).unwrap();
            assert_eq!(c.tag, "rust-sdk");
            assert_eq!(c.upstream, "127.0.0.1:8081");
            assert_eq!(c.authority, "127.0.0.1:8081");
            assert_eq!(c.queue, "q1");
            assert_eq!(c.tick_ms, 0);
        }
    }

    #[test]
    fn keys_are_read() {
        let c = Config::parse(Some(
            br#"{"upstream":"up:1","tick_ms":250,"queue":"qq","tag":"t\u00e9","tick_http_call":true,"note":[1,{"a":null}]}"#,
        ))
        .unwrap();
        assert_eq!(c.upstream, "up:1");
        assert_eq!(c.authority, "up:1");
        assert_eq!(c.grpc_upstream, "up:1");
        assert_eq!(c.tick_ms, 250);
        assert_eq!(c.queue, "qq");
        assert_eq!(c.tag, "t\u{e9}");
        assert!(c.tick_http_call);
    }

    #[test]
    fn bad_configs_are_rejected() {
        for bad in [
            &b"{"[..],
            b"[]",
            b"42",
            b"not json",
            br#"{"tick_ms":"x"}"#,
            br#"{"tick_ms":-1}"#,
            br#"{"tick_ms":1.5}"#,
            br#"{"upstream":1}"#,
            br#"{"reject":"yes"}"#,
            br#"{"queue":""}"#,
            br#"{} x"#,
            b"\xff",
        ] {
            assert!(Config::parse(Some(bad)).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // `reject` parses fine; on_configure returns false for it.
        assert!(Config::parse(Some(br#"{"reject":true}"#)).unwrap().reject);
    }
}
