//! Otoroshi's WASM step contexts and answers, written with serde from Otoroshi's
//! own JSON writers (`next/plugins/api.scala` `wasmJson`, `next/utils/json.scala`,
//! `plugins/wasm.scala`). MAIF's `otoroshi_rust_types` crate cannot be used here
//! (it needs extism-pdk >= 1.1, which needs a newer rustc than 1.63).
//!
//! Field types are strict (a header value that is not a string is an error) but
//! every field is optional on input (`#[serde(default)]`): a missing field reads as
//! its default, and the plugins' `x-check-context` case reports which fields are
//! missing instead.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;

pub type Headers = BTreeMap<String, String>;

/// Bytes as Otoroshi writes them: a JSON array of *signed* bytes (-128..127).
/// Reading also accepts unsigned values (0..255).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SignedBytes(pub Vec<u8>);

impl Serialize for SignedBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|b| *b as i8))
    }
}

impl<'de> Deserialize<'de> for SignedBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Vec<i64> = Vec::deserialize(d)?;
        let mut out = Vec::with_capacity(raw.len());
        for v in raw {
            if !(-128..=255).contains(&v) {
                return Err(serde::de::Error::custom(format!("byte value {} out of range", v)));
            }
            out.push((v & 0xff) as u8);
        }
        Ok(SignedBytes(out))
    }
}

/// A cookie of the incoming request (`JsonHelpers.cookieToJson`).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct RequestCookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub http_only: bool,
    pub max_age: Option<i64>,
    pub secure: bool,
    pub same_site: Option<String>,
}

/// A cookie of an outgoing request or response, and of a step's answer
/// (`WasmUtils.convertJsonCookies`: camelCase `maxAge`, `httpOnly`).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(rename = "maxAge", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i64>,
    pub secure: bool,
    #[serde(rename = "httpOnly")]
    pub http_only: bool,
}

/// The incoming request (`JsonHelpers.requestToJson`): `request` in most
/// contexts, `raw_request` in CallBackend's. HandlesRequest adds
/// `request_body_bytes` to it.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct RawRequest {
    pub id: u64,
    pub method: String,
    pub headers: Headers,
    pub cookies: Vec<RequestCookie>,
    pub tls: bool,
    pub uri: String,
    pub query: BTreeMap<String, Vec<String>>,
    pub path: String,
    pub version: String,
    pub has_body: bool,
    pub remote: String,
    pub client_cert_chain: Value,
    pub path_params: BTreeMap<String, Value>,
    pub request_body_bytes: Option<SignedBytes>,
}

/// The request Otoroshi sends to the backend (`NgPluginHttpRequest.json`).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct OtoroshiRequest {
    pub url: String,
    pub method: String,
    pub headers: Headers,
    pub query: BTreeMap<String, Vec<String>>,
    pub version: String,
    pub client_cert_chain: Value,
    pub backend: Value,
    pub cookies: Vec<Cookie>,
}

/// The backend's response (`NgPluginHttpResponse.json`).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct OtoroshiResponse {
    pub status: Option<u16>,
    pub headers: Headers,
    pub cookies: Vec<Cookie>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct PreRouteContext {
    pub snowflake: Option<String>,
    pub request: RawRequest,
    pub config: Value,
    pub global_config: Value,
    pub attrs: Value,
    pub route: Value,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct AccessContext {
    pub snowflake: Option<String>,
    pub apikey: Value,
    pub user: Value,
    pub request: RawRequest,
    pub config: Value,
    pub global_config: Value,
    pub attrs: Value,
    pub route: Value,
}

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct RequestTransformerContext {
    pub snowflake: Option<String>,
    pub raw_request: OtoroshiRequest,
    pub otoroshi_request: OtoroshiRequest,
    pub apikey: Value,
    pub user: Value,
    pub request: RawRequest,
    pub config: Value,
    pub global_config: Value,
    pub attrs: Value,
    pub route: Value,
    pub request_body_bytes: Option<SignedBytes>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct ResponseTransformerContext {
    pub snowflake: Option<String>,
    pub raw_response: OtoroshiResponse,
    pub otoroshi_response: OtoroshiResponse,
    pub apikey: Value,
    pub user: Value,
    pub request: RawRequest,
    pub config: Value,
    pub global_config: Value,
    pub attrs: Value,
    pub route: Value,
    pub response_body_bytes: Option<SignedBytes>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct MatchRouteContext {
    pub snowflake: Option<String>,
    pub route: Value,
    pub request: RawRequest,
    pub config: Value,
    pub attrs: Value,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct RouterContext {
    pub request: RawRequest,
    pub config: Value,
    pub attrs: Value,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct SinkContext {
    pub snowflake: Option<String>,
    pub request: RawRequest,
    pub config: Value,
    pub attrs: Value,
    pub origin: Value,
    pub status: Value,
    pub message: Value,
    pub body_bytes: Option<SignedBytes>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct BackendContext {
    pub snowflake: Option<String>,
    pub backend: Value,
    pub apikey: Value,
    pub user: Value,
    pub raw_request: RawRequest,
    pub config: Value,
    pub global_config: Value,
    pub attrs: Value,
    pub route: Value,
    pub request_body_bytes: Option<SignedBytes>,
    pub request: OtoroshiRequest,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct RequestHandlerContext {
    pub request: RawRequest,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct JobContext {
    pub snowflake: Option<String>,
    pub attrs: Value,
    pub global_config: Value,
}

/// The body of an answer, in Otoroshi's forms. Otoroshi reads them in the order
/// `body_str` (or `body`) > `body_json` > `body_base64` > `body_bytes`.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Body {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_str: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_json: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<SignedBytes>,
}

/// PreRoute's answer: `error: true` short-circuits with status (default 200),
/// headers and body.
#[derive(Serialize, Debug, Default)]
pub struct PreRouteResponse {
    pub error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Serialize, Debug, Default)]
pub struct AccessError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// ValidateAccess's answer: `result: false` denies with `error` (status
/// default 403).
#[derive(Serialize, Debug, Default)]
pub struct AccessResponse {
    pub result: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AccessError>,
}

/// TransformRequest / TransformResponse answer, or their error form
/// (`error: true`, status default 500).
#[derive(Serialize, Debug, Default)]
pub struct TransformerResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookies: Option<Vec<Cookie>>,
    #[serde(flatten)]
    pub body: Body,
}

/// `{result}` of MatchRoute and `sink_matches`.
#[derive(Serialize, Debug, Default)]
pub struct ResultResponse {
    pub result: bool,
}

/// Router's answer; `route: null` = no route.
#[derive(Serialize, Debug, Default)]
pub struct RouterResponse {
    pub route: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_params: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_more_segments: Option<bool>,
}

/// A full response: `sink_handle`, `call_backend` (or `delegates_call`),
/// `handle_request` (which reads only `body`).
#[derive(Serialize, Debug, Default)]
pub struct HttpAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegates_call: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookies: Option<Vec<Cookie>>,
    #[serde(flatten)]
    pub body: Body,
}
