//! Shared helpers of the Otoroshi test plugins written with the Rust PDK
//! (extism-pdk 1.0.1): reading the step's context, header and configuration
//! lookups, the body forms and the forced-failure modes. The behaviour matches the
//! AssemblyScript plugins' (tests/plugins/otoroshi/README.md).

use super::types::{Body, SignedBytes};
use extism_pdk::{config, extism, input_bytes, Memory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// How an export ends: `Ok(())` after writing its output (returns 0), or the
/// return code after whatever the failure mode did.
pub type Outcome = Result<(), i32>;

/// Sets the Extism error message (the host reports the call as failed).
pub fn set_error(message: &str) {
    if let Ok(m) = Memory::from_bytes(message.as_bytes()) {
        // SAFETY: an Extism host function taking a kernel handle we own.
        unsafe { extism::error_set(m.offset()) };
    }
}

/// Writes a serialisable answer as the call's output.
pub fn output_json<T: Serialize>(v: &T) -> Outcome {
    let text = serde_json::to_vec(v).map_err(|e| {
        set_error(&format!("cannot serialise the answer: {}", e));
        1
    })?;
    output_bytes(&text)
}

pub fn output_bytes(b: &[u8]) -> Outcome {
    match Memory::from_bytes(b) {
        Ok(m) => {
            m.set_output();
            Ok(())
        }
        Err(e) => {
            set_error(&format!("cannot allocate the output: {}", e));
            Err(1)
        }
    }
}

/// The bytes of a kernel handle returned by a host function; None for handle 0.
pub fn handle_bytes(h: u64) -> Option<Vec<u8>> {
    if h == 0 {
        return None;
    }
    // SAFETY: `length` only reads the host's block table.
    let n = unsafe { extism::length(h) };
    if n == 0 {
        return Some(Vec::new());
    }
    let m = Memory(extism_pdk::MemoryHandle { offset: h, length: n });
    Some(m.to_vec())
}

pub fn handle_string(h: u64) -> Option<String> {
    handle_bytes(h).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The context of one step call: the raw JSON (for header lookups and the
/// `x-check-context` case) and the configured tag.
pub struct Ctx {
    pub raw: Value,
    pub step: &'static str,
    pub tag: String,
}

impl Ctx {
    pub fn read(step: &'static str, default_tag: &str) -> Result<Ctx, i32> {
        let input = input_bytes();
        let raw: Value = match serde_json::from_slice(&input) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                set_error(&format!("{}: input is not a JSON object ({} bytes)", step, input.len()));
                return Err(1);
            }
        };
        Ok(Ctx::new(raw, step, default_tag))
    }

    /// Jobs: anything that is not a JSON object reads as {}.
    pub fn read_lenient(step: &'static str, default_tag: &str) -> Ctx {
        let raw = match serde_json::from_slice(&input_bytes()) {
            Ok(v @ Value::Object(_)) => v,
            _ => Value::Object(Default::default()),
        };
        Ctx::new(raw, step, default_tag)
    }

    fn new(raw: Value, step: &'static str, default_tag: &str) -> Ctx {
        let mut c = Ctx { raw, step, tag: default_tag.to_string() };
        if let Some(t) = c.config("tag") {
            c.tag = t;
        }
        c
    }

    /// The step's typed context.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T, i32> {
        serde_json::from_value(self.raw.clone()).map_err(|e| {
            set_error(&format!("{}: unexpected context: {}", self.step, e));
            1
        })
    }

    /// A request header, case-insensitively, from `request.headers`, then
    /// `raw_request.headers`, then `otoroshi_request.headers`.
    pub fn header(&self, name: &str) -> Option<String> {
        for source in ["request", "raw_request", "otoroshi_request"] {
            if let Some(Value::Object(h)) = self.raw.get(source).and_then(|r| r.get("headers")) {
                for (k, v) in h {
                    if k.eq_ignore_ascii_case(name) {
                        return Some(match v {
                            Value::String(s) => s.clone(),
                            Value::Array(a) => a.first().and_then(|x| x.as_str()).unwrap_or("").to_string(),
                            _ => String::new(),
                        });
                    }
                }
            }
        }
        None
    }

    pub fn header_or(&self, name: &str, fallback: &str) -> String {
        self.header(name).unwrap_or_else(|| fallback.to_string())
    }

    /// The incoming request: `raw_request` (CallBackend) or `request`.
    fn raw_request(&self) -> Option<&Value> {
        match self.raw.get("raw_request") {
            Some(v @ Value::Object(_)) => Some(v),
            _ => self.raw.get("request"),
        }
    }

    pub fn path(&self) -> String {
        self.raw_request().and_then(|r| r.get("path")).and_then(|p| p.as_str()).unwrap_or("").to_string()
    }

    pub fn method(&self) -> String {
        self.raw_request().and_then(|r| r.get("method")).and_then(|p| p.as_str()).unwrap_or("").to_string()
    }

    /// Extism `config_get` (the entity's `config` map).
    pub fn config_from_extism(&self, key: &str) -> Option<String> {
        config::get(key).ok().flatten()
    }

    /// The context's `config.config.<key>`, then `config.<key>`.
    pub fn context_config(&self, key: &str) -> Option<String> {
        let c = self.raw.get("config")?;
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some(v) = c.get("config").and_then(|inner| inner.get(key)) {
            return Some(text(v));
        }
        c.get(key).map(text)
    }

    /// `config_get` first, then the context's configuration.
    pub fn config(&self, key: &str) -> Option<String> {
        self.config_from_extism(key).or_else(|| self.context_config(key))
    }

    pub fn config_or(&self, key: &str, fallback: &str) -> String {
        self.config(key).unwrap_or_else(|| fallback.to_string())
    }

    /// Headers every answer of the test plugins carries.
    pub fn base_headers(&self, content_type: &str) -> super::types::Headers {
        let mut h = super::types::Headers::new();
        h.insert("Content-Type".into(), content_type.into());
        h.insert("x-otoroshi-wasm".into(), self.tag.clone());
        h.insert("x-otoroshi-step".into(), self.step.into());
        h
    }

    /// With `x-check-context`: the context fields Otoroshi sends for this step
    /// that are missing here (empty string when none is).
    pub fn missing_fields(&self) -> Option<String> {
        self.header("x-check-context")?;
        let mut missing: Vec<String> = Vec::new();
        for f in step_fields(self.step) {
            if self.raw.get(*f).is_none() {
                missing.push((*f).to_string());
            }
        }
        let req_key = if self.step == "call_backend" { "raw_request" } else { "request" };
        if let Some(Value::Object(r)) = self.raw.get(req_key) {
            for f in REQUEST_FIELDS {
                if !r.contains_key(*f) {
                    missing.push(format!("{}.{}", req_key, f));
                }
            }
        }
        if self.step == "call_backend" || self.step == "transform_request" {
            let key = if self.step == "call_backend" { "request" } else { "otoroshi_request" };
            if let Some(Value::Object(r)) = self.raw.get(key) {
                for f in OTOROSHI_REQUEST_FIELDS {
                    if !r.contains_key(*f) {
                        missing.push(format!("{}.{}", key, f));
                    }
                }
            }
        }
        Some(missing.join(", "))
    }

    /// `x-fail` naming this step (or `*`): performs `x-fail-mode` and gives the
    /// code to return.
    pub fn forced_failure(&self) -> Option<i32> {
        let which = self.header("x-fail")?;
        if !which.split(',').any(|n| n.trim() == self.step || n.trim() == "*") {
            return None;
        }
        Some(fail_with(&self.header_or("x-fail-mode", "error"), self.step))
    }

    /// The common prologue: forced failure, then the context check.
    pub fn prologue(&self) -> Outcome {
        if let Some(rc) = self.forced_failure() {
            return Err(rc);
        }
        if let Some(missing) = self.missing_fields() {
            if !missing.is_empty() {
                set_error(&format!("{}: context lacks {}", self.step, missing));
                return Err(1);
            }
        }
        Ok(())
    }
}

/// The top-level fields of each step's context, as Otoroshi builds them.
pub fn step_fields(step: &str) -> &'static [&'static str] {
    match step {
        "pre_route" => &["snowflake", "request", "config", "global_config", "attrs", "route"],
        "access" => &["snowflake", "apikey", "user", "request", "config", "global_config", "attrs", "route"],
        "transform_request" => &[
            "snowflake", "raw_request", "otoroshi_request", "apikey", "user", "request", "config",
            "global_config", "attrs", "route", "request_body_bytes",
        ],
        "transform_response" => &[
            "snowflake", "raw_response", "otoroshi_response", "apikey", "user", "request", "config",
            "global_config", "attrs", "route", "response_body_bytes",
        ],
        "matches_route" => &["snowflake", "route", "request", "config", "attrs"],
        "find_route" => &["request", "config", "attrs"],
        "sink_matches" => &["snowflake", "request", "config", "attrs", "origin", "status", "message"],
        "sink_handle" => &["snowflake", "request", "config", "attrs", "origin", "status", "message", "body_bytes"],
        "call_backend" => &[
            "snowflake", "backend", "apikey", "user", "raw_request", "config", "global_config", "attrs", "route",
            "request_body_bytes", "request",
        ],
        "handle_request" => &["request"],
        _ => &[],
    }
}

const REQUEST_FIELDS: &[&str] = &[
    "id", "method", "headers", "cookies", "tls", "uri", "query", "path", "version", "has_body", "remote",
    "client_cert_chain", "path_params",
];
const OTOROSHI_REQUEST_FIELDS: &[&str] =
    &["url", "method", "headers", "query", "version", "client_cert_chain", "backend", "cookies"];

static mut SPINS: u64 = 1;

/// The failure modes shared by every step (README: "Forced failures").
pub fn fail_with(mode: &str, step: &str) -> i32 {
    match mode {
        "code" => 1,
        "error-zero" => {
            set_error(&format!("forced failure in {} (error set, returned 0)", step));
            0
        }
        "trap" => core::arch::wasm32::unreachable(),
        "abort" => panic!("forced abort in {}", step),
        "garbage" => {
            let _ = output_bytes(b"this is not JSON {");
            0
        }
        "empty" => 0,
        "loop" => {
            // Volatile accesses cannot be optimised away: the loop runs until the
            // host's timeout stops it.
            // SAFETY: a private static, touched only here on one thread.
            unsafe {
                let p = core::ptr::addr_of_mut!(SPINS);
                while core::ptr::read_volatile(p) != 0 {
                    core::ptr::write_volatile(p, core::ptr::read_volatile(p).wrapping_add(1));
                }
            }
            0
        }
        "alloc" => {
            // Grows linear memory by 16 MiB steps until the host's cap stops it.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 16 << 20]);
            }
        }
        "kernel-alloc" => {
            // SAFETY: an Extism host function; the handle is only reported.
            let h = unsafe { extism::alloc(1u64 << 40) };
            set_error(&format!("forced failure in {}: alloc(2^40) returned {}", step, h));
            1
        }
        _ => {
            set_error(&format!("forced failure in {}", step));
            1
        }
    }
}

/// Fills `body` with the forms named in `forms` (comma-separated: str, body,
/// json, base64, bytes, empty, none). One form: the content as is; several: each
/// prefixed with "<form>:". The json form is {"form":"json","tag":..,"body":..}.
pub fn put_body(body: &mut Body, forms: &str, content: &str, tag: &str) {
    let list: Vec<&str> = forms.split(',').map(|f| f.trim()).collect();
    let many = list.len() > 1;
    for f in list {
        let text = if many { format!("{}:{}", f, content) } else { content.to_string() };
        match f {
            "str" => body.body_str = Some(text),
            "body" => body.body = Some(text),
            "json" => {
                body.body_json = Some(serde_json::json!({"form": "json", "tag": tag, "body": content}));
            }
            "base64" => body.body_base64 = Some(base64_encode(text.as_bytes())),
            "bytes" => body.body_bytes = Some(SignedBytes(text.into_bytes())),
            "empty" => body.body_str = Some(String::new()),
            _ => {}
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as Otoroshi's `body_base64`.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity((data.len() + 2) / 3 * 4);
    for chunk in data.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { B64[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { B64[n as usize & 63] as char } else { '=' });
    }
    out
}

/// Decodes base64 (standard or URL-safe, padding and whitespace ignored).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        } as u32;
        acc = (acc << 6) | d;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Parses a decimal integer; None unless the whole (trimmed) text is one.
pub fn parse_int(s: Option<&str>) -> Option<i64> {
    s.and_then(|t| t.trim().parse::<i64>().ok())
}
