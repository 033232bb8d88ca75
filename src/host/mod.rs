//! The interface a server binding implements for the core.
//!
//! The core never calls Traffic Server or NGINX directly. A binding hands the
//! core one [`ServerHost`] per VM instance (server-wide services: logging,
//! timers, outgoing calls, notifications) and one [`HttpStream`] per stream
//! context (the transaction as one plugin sees it). Everything here is plain
//! data and object-safe traits so that `ffi` can expose it as a C API.

use std::time::Duration;

use crate::abi::pairs::Pair;
use crate::abi::{LogLevel, MapType, Status, StreamType};

/// Which plugin a log line or event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
}

/// A request dispatched with `proxy_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallRequest {
    /// The upstream as the plugin named it: `host:port`, an IP or a name.
    pub upstream: String,
    /// Headers, pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
    pub trailers: Vec<Pair>,
    /// `None` means no timeout.
    pub timeout: Option<Duration>,
    /// The most bytes of the answer (status line, headers, body, trailers as
    /// read from the upstream) the server takes; a larger answer fails the
    /// call (`vm_config.limits.max_http_call_response_size` of the plugin).
    pub max_response_size: u64,
}

/// The answer to an outgoing call. A failed call (connect error, reset,
/// timeout) is delivered with no headers, as the ABI specifies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
    pub trailers: Vec<Pair>,
    /// Why the call failed, reported by `proxy_get_status` (code and message).
    pub failure: Option<(u32, String)>,
}

impl HttpCallResponse {
    pub fn failed(code: u32, message: impl Into<String>) -> HttpCallResponse {
        HttpCallResponse { failure: Some((code, message.into())), ..Default::default() }
    }
}

/// A response produced by the plugin instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    /// Envoy's "response code details" (reported as `response.code_details`).
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<Pair>,
    /// gRPC status, when the plugin set one (`-1` = none).
    pub grpc_status: i32,
}

impl LocalResponse {
    /// What the client gets when a plugin kept its request paused past the
    /// plugin's `pause_timeout` (see `PluginConfig::pause_timeout`).
    pub fn pause_timeout() -> LocalResponse {
        LocalResponse {
            status: 504,
            details: "pause_timeout".into(),
            body: b"the request waited too long for a plugin\n".to_vec(),
            headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
            grpc_status: -1,
        }
    }

    /// What the client gets when a request body held for a plugin grew past
    /// its `max_body_size`: Envoy's answer when a filter buffers a request
    /// body past its buffer limit (413, `request_payload_too_large`).
    pub fn request_payload_too_large() -> LocalResponse {
        LocalResponse {
            status: 413,
            details: "request_payload_too_large".into(),
            body: b"Payload Too Large".to_vec(),
            headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
            grpc_status: -1,
        }
    }

    /// The same for a response body, while the response header has not gone
    /// to the client yet: Envoy answers 500 (`response_payload_too_large`);
    /// once the header went out it resets the stream instead.
    pub fn response_payload_too_large() -> LocalResponse {
        LocalResponse {
            status: 500,
            details: "response_payload_too_large".into(),
            body: b"Internal Server Error".to_vec(),
            headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
            grpc_status: -1,
        }
    }
}

/// Server-wide services for one VM instance.
///
/// Methods are called from inside guest callbacks on the instance's thread and
/// must not call back into the same `Vm` synchronously: events (call responses,
/// ticks, queue notifications) are delivered later through the `Vm` methods.
pub trait ServerHost: Send + Sync {
    /// Writes one log line for a plugin.
    fn log(&self, plugin: &PluginRef, level: LogLevel, message: &str);

    /// The server's current log threshold, for `proxy_get_log_level`.
    fn log_level(&self) -> LogLevel;

    /// Starts an outgoing HTTP call; its answer comes back through
    /// `Vm::on_http_call_response(token, ..)`, also on failure or timeout.
    /// Returns BAD_ARGUMENT for an upstream the server cannot parse, and
    /// INTERNAL_FAILURE when the call cannot be started at all.
    fn dispatch_http_call(&self, root_context_id: u32, token: u32, request: HttpCallRequest) -> Result<(), Status>;

    /// Drops interest in a call whose context went away; no answer is
    /// expected after this. Tokens are numbered by each VM (from 1, and from
    /// 1 again in a new instance): a server that keeps calls of several VMs
    /// together must key them by VM and token.
    fn cancel_http_call(&self, _token: u32) {}

    /// Why the server takes no more outgoing calls now, if it does not: its
    /// own cap on calls in flight (all VMs together). The core then answers
    /// INTERNAL_FAILURE and logs the reason once per plugin.
    fn http_calls_full(&self) -> Option<String> {
        None
    }

    /// Arms (`Some`) or disarms (`None`) the periodic `Vm::on_tick(root_context_id)`.
    fn set_tick_period(&self, root_context_id: u32, period: Option<Duration>);

    /// A shared queue registered by `root_context_id` of this VM got data:
    /// arrange for `Vm::on_queue_ready(root_context_id, queue_id)` to run on the
    /// instance's own thread. May be called from any thread.
    fn notify_queue_ready(&self, root_context_id: u32, queue_id: u32);

    /// Server-level properties (outside any stream), e.g. `node.id`. The path
    /// is already split into segments. `Ok(None)` means not found.
    fn property(&self, _path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        Ok(None)
    }

    /// `proxy_call_foreign_function`: functions the server offers plugins by name.
    /// `Err(NOT_FOUND)` for a name it does not know.
    fn call_foreign_function(&self, _name: &str, _argument: &[u8]) -> Result<Vec<u8>, Status> {
        Err(Status::NotFound)
    }
}

/// The value of `key` in a header map (case-insensitive; several values
/// joined with ","), as `get_header_map_value` answers it; `None` when absent.
pub fn value_in_pairs(pairs: &[Pair], key: &[u8]) -> Option<Vec<u8>> {
    let mut values = pairs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_slice());
    let mut joined = values.next()?.to_vec();
    for v in values {
        joined.push(b',');
        joined.extend_from_slice(v);
    }
    Some(joined)
}

/// One HTTP transaction as one plugin sees it.
///
/// Header maps include pseudo-headers: `:method`, `:path`, `:authority`,
/// `:scheme` on request headers and `:status` on response headers. Key
/// comparison is case-insensitive. A map that does not exist (yet) is empty
/// for reads and BAD_ARGUMENT for writes.
pub trait HttpStream: Send {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status>;

    /// How many pairs [`HttpStream::header_map`] would give. A server that can count its
    /// headers without copying them overrides it: the chain asks after every link that edited
    /// a map (the next link's `num_headers`).
    fn header_count(&self, map: MapType) -> Result<usize, Status> {
        self.header_map(map).map(|pairs| pairs.len())
    }

    /// One header's value (multiple values joined with ","), `Ok(None)` when absent.
    fn header_value(&self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Ok(value_in_pairs(&self.header_map(map)?, key))
    }

    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status>;
    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status>;
    /// Replaces all values of `key`, adding it when absent.
    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status>;
    /// Removes all values of `key`; removing an absent key is OK.
    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status>;

    /// Sends a local response instead of (or in place of) the upstream's.
    /// BAD_ARGUMENT when response headers have already gone to the client.
    fn send_local_response(&mut self, response: LocalResponse) -> Result<(), Status>;

    /// Resumes a paused direction. Called after the callback that asked for it
    /// returned; must be a no-op on a direction that is not paused.
    fn resume(&mut self, stream: StreamType) -> Result<(), Status>;

    /// Closes (resets) a direction of the stream.
    fn close(&mut self, stream: StreamType) -> Result<(), Status>;

    /// Stream properties with Envoy's names and encodings (`request.path`,
    /// `source.address`...). The core answers `plugin_*` itself and values the
    /// plugin set. `Ok(None)` means not found.
    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status>;

    /// The transaction is gone but the plugin keeps the context (its
    /// `on_done` returned false) until `proxy_done`: from now on the stream
    /// must not touch server objects. Reads then answer empty / not found and
    /// writes BAD_ARGUMENT.
    fn detach(&mut self) {}

    /// Writes a property the server understands (e.g. `request.path`).
    /// `Err(NOT_FOUND)` means "not a server property": the core then keeps the
    /// value for the plugin itself, as Envoy's filter state does.
    fn set_property(&mut self, _path: &[&[u8]], _value: &[u8]) -> Result<(), Status> {
        Err(Status::NotFound)
    }
}
