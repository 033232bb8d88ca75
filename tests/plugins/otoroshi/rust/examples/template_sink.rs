//! Wasmo template "Sink" (OTOROSHI_WASM_SINK), Rust PDK. Step Sink, exports
//! `sink_matches` (always true) and `sink_handle`: as Wasmo's Rust template,
//! status 404, the request's headers, body_str
//! `{ "WASM_SINK_RESPONSE": "Unknown path and domain for <path>" }`.

#[path = "../src/common/types.rs"]
mod types;

use extism_pdk::*;
use serde::Serialize;
use serde_json::Value;
use types::{Headers, SinkContext};

#[derive(Serialize)]
struct SinkMatchesResponse {
    result: bool,
}

#[derive(Serialize)]
struct SinkHandleResponse {
    status: u32,
    headers: Headers,
    body_bytes: Option<Vec<u8>>,
    body_base64: Option<String>,
    body_json: Option<Value>,
    body_str: Option<String>,
}

#[plugin_fn]
pub fn sink_matches(Json(_context): Json<SinkContext>) -> FnResult<Json<SinkMatchesResponse>> {
    Ok(Json(SinkMatchesResponse { result: true }))
}

#[plugin_fn]
pub fn sink_handle(Json(context): Json<SinkContext>) -> FnResult<Json<SinkHandleResponse>> {
    let path = context.request.path;
    Ok(Json(SinkHandleResponse {
        status: 404,
        body_str: Some(format!(r#"{{ "WASM_SINK_RESPONSE": "Unknown path and domain for {}" }}"#, path)),
        headers: context.request.headers,
        body_base64: None,
        body_bytes: None,
        body_json: None,
    }))
}
