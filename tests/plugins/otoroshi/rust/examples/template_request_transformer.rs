//! Wasmo template "Request transformer" (OTOROSHI_WASM_REQUEST_TRANSFORMER), Rust
//! PDK. Step TransformRequest, export `execute`. As Wasmo's Rust template: method
//! POST, headers = the incoming request's headers plus `OTOROSHI_WASM_PLUGIN_ID`
//! and `Content-Type: text/plain`, body_str "Text plain content"; `url`,
//! `cookies` and the other body forms are serialised as null.

#[path = "../src/common/types.rs"]
mod types;

use extism_pdk::*;
use serde::Serialize;
use serde_json::Value;
use types::{Headers, RequestTransformerContext};

#[derive(Serialize)]
struct TransformerResponse {
    url: Option<String>,
    method: Option<String>,
    headers: Headers,
    cookies: Value,
    body_bytes: Option<Vec<u8>>,
    body_base64: Option<String>,
    body_json: Option<Value>,
    body_str: Option<String>,
}

#[plugin_fn]
pub fn execute(Json(context): Json<RequestTransformerContext>) -> FnResult<Json<TransformerResponse>> {
    let mut headers = context.request.headers;
    headers.insert("OTOROSHI_WASM_PLUGIN_ID".to_string(), "OTOROSHI_WASM_REQUEST_TRANSFORMER".to_string());
    headers.insert("Content-Type".to_string(), "text/plain".to_string());
    Ok(Json(TransformerResponse {
        url: None,
        method: Some("POST".to_string()),
        headers,
        cookies: Value::Null,
        body_bytes: None,
        body_base64: None,
        body_json: None,
        body_str: Some("Text plain content".to_string()),
    }))
}
