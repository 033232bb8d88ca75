//! What differs between the Rust SDK releases this filter is built with
//! (`proxy-wasm` 0.1.0 ... 0.2.3; one manifest per release under
//! `versions/`, this crate's own manifest is 0.2.1). The filter is written
//! against the 0.2.1 API; each feature below stands for something an older
//! (or newer) release does differently, and fills it in with that release's
//! own older call (the `String` header API instead of the byte one), or,
//! where the release has no call at all, with the raw hostcall (as the filter
//! already does for hostcalls no release wraps, see `raw`):
//!
//! | Feature | Releases | What differs |
//! |---|---|---|
//! | `api-0-1` | 0.1.x | ABI 0.1.0: header callbacks without `end_of_stream`; `_start` instead of `main!`; `get_configuration` for both configurations; no `proxy_close_stream`, no `proxy_get_log_level` |
//! | `sdk-no-http-context-factory` | 0.1.0-0.1.2 | HTTP contexts come from `set_http_context`, not `RootContext::create_http_context` |
//! | `sdk-no-body-set` | 0.1.0 | no `set_http_*_body` |
//! | `sdk-no-metrics` | 0.1.0-0.1.2 | no metric hostcalls |
//! | `sdk-no-bytes` | 0.1.0-0.1.3 | no `*_bytes` header calls (the `String` ones panic on non-UTF-8 values); no `get_grpc_status` |
//! | `sdk-callout-maps-7-8` | 0.1.0-0.1.1 | the SDK reads a callout's headers from map 7 and its trailers from map 8 (the spec's 6 and 7; fixed in 0.1.2): the filter reads maps 6 and 7 itself |
//! | `sdk-foreign-callback` | 0.2.3 | the SDK exports `proxy_on_foreign_function` itself (`Context::on_foreign_function`) |
//!
//! Every function here returns raw `proxy_status_t` codes as `u32` errors, so
//! the callers name them with `util::status_name` whatever the release's
//! `Status` enum holds.

#[cfg(any(feature = "sdk-no-bytes", feature = "sdk-no-body-set"))]
use proxy_wasm::traits::HttpContext;
#[cfg(all(feature = "sdk-no-bytes", not(feature = "sdk-callout-maps-7-8")))]
use proxy_wasm::traits::Context;
#[cfg(not(feature = "api-0-1"))]
use proxy_wasm::types::LogLevel;

#[cfg(not(feature = "sdk-no-metrics"))]
use proxy_wasm::{hostcalls, types::MetricType};

#[cfg(any(feature = "sdk-no-metrics", feature = "sdk-no-bytes", feature = "sdk-no-body-set"))]
use crate::raw;

/// A metric kind, as `proxy_define_metric` numbers them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Metric {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

#[cfg(not(feature = "sdk-no-metrics"))]
pub fn define_metric(kind: Metric, name: &str) -> Result<u32, u32> {
    let kind = match kind {
        Metric::Counter => MetricType::Counter,
        Metric::Gauge => MetricType::Gauge,
        Metric::Histogram => MetricType::Histogram,
    };
    hostcalls::define_metric(kind, name).map_err(|st| st as u32)
}

#[cfg(not(feature = "sdk-no-metrics"))]
pub fn increment_metric(id: u32, offset: i64) -> Result<(), u32> {
    hostcalls::increment_metric(id, offset).map_err(|st| st as u32)
}

#[cfg(not(feature = "sdk-no-metrics"))]
pub fn record_metric(id: u32, value: u64) -> Result<(), u32> {
    hostcalls::record_metric(id, value).map_err(|st| st as u32)
}

#[cfg(not(feature = "sdk-no-metrics"))]
pub fn get_metric(id: u32) -> Result<u64, u32> {
    hostcalls::get_metric(id).map_err(|st| st as u32)
}

#[cfg(feature = "sdk-no-metrics")]
pub fn define_metric(kind: Metric, name: &str) -> Result<u32, u32> {
    raw::define_metric(kind as u32, name)
}

#[cfg(feature = "sdk-no-metrics")]
pub fn increment_metric(id: u32, offset: i64) -> Result<(), u32> {
    raw::increment_metric(id, offset)
}

#[cfg(feature = "sdk-no-metrics")]
pub fn record_metric(id: u32, value: u64) -> Result<(), u32> {
    raw::record_metric(id, value)
}

#[cfg(feature = "sdk-no-metrics")]
pub fn get_metric(id: u32) -> Result<u64, u32> {
    raw::get_metric(id)
}

/// `proxy_get_status` after a callout: (code, message).
#[cfg(not(feature = "sdk-no-bytes"))]
pub fn get_status() -> (u32, Option<String>) {
    proxy_wasm::hostcalls::get_grpc_status().unwrap_or((0, None))
}

#[cfg(feature = "sdk-no-bytes")]
pub fn get_status() -> (u32, Option<String>) {
    match raw::get_status() {
        (0, code, message) => (code, message.map(|m| String::from_utf8_lossy(&m).into_owned())),
        _ => (0, None),
    }
}

/// The server's log level, or why there is none (ABI 0.1.0 has no
/// `proxy_get_log_level`).
#[cfg(not(feature = "api-0-1"))]
pub fn get_log_level() -> Result<LogLevel, String> {
    proxy_wasm::hostcalls::get_log_level().map_err(|st| crate::util::status_name(st as u32))
}

#[cfg(feature = "api-0-1")]
pub fn get_log_level() -> Result<proxy_wasm::types::LogLevel, String> {
    Err("unsupported".to_string())
}

/// The byte-valued header calls of 0.1.4+, built from the `String` ones of
/// older releases (which panic on values that are not UTF-8, as those
/// releases do).
#[cfg(feature = "sdk-no-bytes")]
pub trait HttpBytes {
    fn get_http_request_header_bytes(&self, name: &str) -> Option<Vec<u8>>;
    fn get_http_request_headers_bytes(&self) -> Vec<(String, Vec<u8>)>;
    fn set_http_request_headers_bytes(&self, headers: Vec<(&str, &[u8])>);
    fn get_http_request_trailers_bytes(&self) -> Vec<(String, Vec<u8>)>;
    fn get_http_request_trailer_bytes(&self, name: &str) -> Option<Vec<u8>>;
    fn get_http_response_headers_bytes(&self) -> Vec<(String, Vec<u8>)>;
    fn set_http_response_headers_bytes(&self, headers: Vec<(&str, &[u8])>);
    fn get_http_response_header_bytes(&self, name: &str) -> Option<Vec<u8>>;
    fn get_http_response_trailers_bytes(&self) -> Vec<(String, Vec<u8>)>;
}

#[cfg(feature = "sdk-no-bytes")]
fn bytes_pairs(pairs: Vec<(String, String)>) -> Vec<(String, Vec<u8>)> {
    pairs.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()
}

#[cfg(feature = "sdk-no-bytes")]
fn text_pairs(pairs: Vec<(&str, &[u8])>) -> Vec<(String, String)> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned())).collect()
}

#[cfg(feature = "sdk-no-bytes")]
impl<T: HttpContext + ?Sized> HttpBytes for T {
    fn get_http_request_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_header(name).map(String::into_bytes)
    }
    fn get_http_request_headers_bytes(&self) -> Vec<(String, Vec<u8>)> {
        bytes_pairs(self.get_http_request_headers())
    }
    fn set_http_request_headers_bytes(&self, headers: Vec<(&str, &[u8])>) {
        let owned = text_pairs(headers);
        self.set_http_request_headers(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
    }
    fn get_http_request_trailers_bytes(&self) -> Vec<(String, Vec<u8>)> {
        bytes_pairs(self.get_http_request_trailers())
    }
    fn get_http_request_trailer_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_trailer(name).map(String::into_bytes)
    }
    fn get_http_response_headers_bytes(&self) -> Vec<(String, Vec<u8>)> {
        bytes_pairs(self.get_http_response_headers())
    }
    fn set_http_response_headers_bytes(&self, headers: Vec<(&str, &[u8])>) {
        let owned = text_pairs(headers);
        self.set_http_response_headers(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
    }
    fn get_http_response_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_response_header(name).map(String::into_bytes)
    }
    fn get_http_response_trailers_bytes(&self) -> Vec<(String, Vec<u8>)> {
        bytes_pairs(self.get_http_response_trailers())
    }
}

/// The callout-response calls of 0.1.4+ (0.1.0-0.1.3 only read the whole
/// header map, as `String`s).
#[cfg(feature = "sdk-no-bytes")]
pub trait CallBytes {
    fn get_http_call_response_header_bytes(&self, name: &str) -> Option<Vec<u8>>;
    fn get_http_call_response_headers_bytes(&self) -> Vec<(String, Vec<u8>)>;
    fn get_http_call_response_trailers_bytes(&self) -> Vec<(String, Vec<u8>)>;
}

#[cfg(all(feature = "sdk-no-bytes", not(feature = "sdk-callout-maps-7-8")))]
impl<T: Context + ?Sized> CallBytes for T {
    fn get_http_call_response_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_call_response_headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.into_bytes())
    }
    fn get_http_call_response_headers_bytes(&self) -> Vec<(String, Vec<u8>)> {
        bytes_pairs(self.get_http_call_response_headers())
    }
    fn get_http_call_response_trailers_bytes(&self) -> Vec<(String, Vec<u8>)> {
        bytes_pairs(self.get_http_call_response_trailers())
    }
}

/// The callout maps of 0.1.0-0.1.1, whose `MapType` numbers them 7 and 8.
#[cfg(feature = "sdk-callout-maps-7-8")]
impl<T: ?Sized> CallBytes for T {
    fn get_http_call_response_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        callout_map(6).into_iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }
    fn get_http_call_response_headers_bytes(&self) -> Vec<(String, Vec<u8>)> {
        callout_map(6)
    }
    fn get_http_call_response_trailers_bytes(&self) -> Vec<(String, Vec<u8>)> {
        callout_map(7)
    }
}

#[cfg(feature = "sdk-callout-maps-7-8")]
fn callout_map(map_type: u32) -> Vec<(String, Vec<u8>)> {
    match raw::get_header_map_pairs(map_type) {
        (0, Some(data)) => crate::util::deserialize_pairs(&data),
        _ => Vec::new(),
    }
}

/// Body edits for 0.1.0, which reads bodies but cannot write them.
#[cfg(feature = "sdk-no-body-set")]
pub trait BodySet {
    fn set_http_request_body(&self, start: usize, size: usize, value: &[u8]);
    fn set_http_response_body(&self, start: usize, size: usize, value: &[u8]);
}

#[cfg(feature = "sdk-no-body-set")]
impl<T: HttpContext + ?Sized> BodySet for T {
    fn set_http_request_body(&self, start: usize, size: usize, value: &[u8]) {
        raw::set_buffer_bytes(0, start, size, value);
    }
    fn set_http_response_body(&self, start: usize, size: usize, value: &[u8]) {
        raw::set_buffer_bytes(1, start, size, value);
    }
}
