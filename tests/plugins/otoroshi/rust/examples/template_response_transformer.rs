//! Wasmo template "Response transformer" (OTOROSHI_WASM_RESPONSE_TRANSFORMER),
//! Rust PDK. Step TransformResponse, export `execute`. As Wasmo's Rust template:
//! status 200, headers = the incoming request's headers plus
//! `OTOROSHI_WASM_PLUGIN_ID` and `Content-Type: text/plain`, body_str
//! `{ "foo": "bar" }`; `error`, `cookies` and the other body forms are null.

#[path = "../src/common/types.rs"]
mod types;

use extism_pdk::*;
use serde::Serialize;
use serde_json::Value;
use types::{Headers, ResponseTransformerContext};

#[derive(Serialize)]
struct WasmResponse {
    error: Option<bool>,
    status: Option<u32>,
    headers: Headers,
    cookies: Value,
    body_bytes: Option<Vec<u8>>,
    body_base64: Option<String>,
    body_json: Option<Value>,
    body_str: Option<String>,
}

#[plugin_fn]
pub fn execute(Json(context): Json<ResponseTransformerContext>) -> FnResult<Json<WasmResponse>> {
    let mut headers = context.request.headers;
    headers.insert("OTOROSHI_WASM_PLUGIN_ID".to_string(), "OTOROSHI_WASM_RESPONSE_TRANSFORMER".to_string());
    headers.insert("Content-Type".to_string(), "text/plain".to_string());
    Ok(Json(WasmResponse {
        error: None,
        status: Some(200),
        headers,
        cookies: Value::Null,
        body_bytes: None,
        body_base64: None,
        body_json: None,
        body_str: Some("{ \"foo\": \"bar\" }".to_string()),
    }))
}
