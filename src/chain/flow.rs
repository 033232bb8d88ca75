//! What a chain call tells its server to do next, and the responses the chain
//! itself makes (a failure's 503, a body over its limit's 413).

use crate::abi::StreamType;
use crate::host::LocalResponse;

/// The four places a chain filters, in the order a transaction meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

impl Phase {
    /// The direction the phase filters.
    #[inline]
    pub fn direction(self) -> StreamType {
        match self {
            Phase::RequestHeaders | Phase::RequestBody => StreamType::HttpRequest,
            Phase::ResponseHeaders | Phase::ResponseBody => StreamType::HttpResponse,
        }
    }

    #[inline]
    pub fn is_body(self) -> bool {
        matches!(self, Phase::RequestBody | Phase::ResponseBody)
    }

    /// The headers phase of `direction` (`HttpRequest` or `HttpResponse`).
    #[inline]
    pub fn headers(direction: StreamType) -> Phase {
        if direction == StreamType::HttpResponse {
            Phase::ResponseHeaders
        } else {
            Phase::RequestHeaders
        }
    }

    /// The body phase of `direction`.
    #[inline]
    pub fn body(direction: StreamType) -> Phase {
        if direction == StreamType::HttpResponse {
            Phase::ResponseBody
        } else {
            Phase::RequestBody
        }
    }

    /// For log lines: "request headers", "response body"...
    pub fn name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request headers",
            Phase::RequestBody => "request body",
            Phase::ResponseHeaders => "response headers",
            Phase::ResponseBody => "response body",
        }
    }
}

/// What the server does after a chain call. Values, not server calls: the
/// server acts on them with its own control flow (a phase handler's return
/// code, reenabling a transaction), after the chain call returned, so that
/// nothing it does (NGINX runs its header filter, hence the chain, from
/// inside `ngx_http_send_header`) can re-enter the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Headers: every link is through; the server passes the headers on.
    Continue,
    /// Body: pass these bytes on; they end the body when `end_of_stream`.
    /// `data` may be empty (nothing came out yet, or an empty last chunk).
    Forward { data: Vec<u8>, end_of_stream: bool },
    /// Body: a link keeps what it got (it paused before the end of the
    /// body, or the headers of this direction have not gone through yet):
    /// nothing to pass on now; the server keeps feeding chunks.
    Buffered,
    /// A link paused (its headers, or at the end of a body): the server holds
    /// this direction (and reads no further body for it) until
    /// `Chain::resume` or `Chain::on_pause_timeout`; the chain has armed the
    /// pause timer through `ChainServer::arm_pause_timer`.
    Wait,
    /// Answer with this response instead: a plugin's local response, or the
    /// chain's own (503 for a failure, 413 for a request body past
    /// `max_body_size`, 504 for a pause past `pause_timeout`). From a request
    /// phase the request is not sent on; from the response headers it
    /// replaces status, headers and body of the response.
    Respond(LocalResponse),
    /// The response headers have left the chain: end the response
    /// abnormally (close the connection) so that the client cannot take a
    /// cut response for a complete one.
    Abort,
    /// A plugin called `proxy_close_stream`: reset the stream (no response,
    /// or the server's own error where it cannot reset).
    Reset,
}

/// What a transaction whose plugin failed gets (policies `fail_closed` and `reload`).
pub fn failure_response() -> LocalResponse {
    LocalResponse {
        status: 503,
        details: "wasm_fail_stream".into(),
        body: b"plugin failure\n".to_vec(),
        headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
        grpc_status: -1,
    }
}

/// What a request gets whose body passed a plugin's `max_body_size`.
pub fn body_too_large_response() -> LocalResponse {
    LocalResponse {
        status: 413,
        details: "request_payload_too_large".into(),
        body: b"request body too large\n".to_vec(),
        headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
        grpc_status: -1,
    }
}
