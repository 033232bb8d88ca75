//! Wasmo template "Backend" (OTOROSHI_WASM_BACKEND), Rust PDK. Step CallBackend,
//! export `execute`. Answers instead of the origin: status 200, headers `foo: bar`
//! plus the incoming request's headers (which win), and an HTML page in
//! `body_str`; the other body forms are serialised as null, as
//! otoroshi_rust_types does.

#[path = "../src/common/types.rs"]
mod types;

use extism_pdk::*;
use serde::Serialize;
use serde_json::Value;
use types::{BackendContext, Headers};

const PAGE: &str = r#"<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
  </head>
  <body style="display: flex; align-items: center; justify-content: center; flex-direction: column; height: 100vh; font-family: monospace;">
    <h1>This HTML comes from the Wasmo plugin</h1>
    <img src="https://maif.github.io/wasmo/wasmo.png" style="width: 200;">
  </body>
</html>"#;

#[derive(Serialize)]
struct BackendResponse {
    headers: Option<Headers>,
    body_bytes: Option<Vec<u8>>,
    body_base64: Option<String>,
    body_json: Option<Value>,
    body_str: Option<String>,
    status: u32,
}

#[plugin_fn]
pub fn execute(Json(context): Json<BackendContext>) -> FnResult<Json<BackendResponse>> {
    let mut headers = Headers::new();
    headers.insert("foo".to_string(), "bar".to_string());
    headers.extend(context.raw_request.headers);
    Ok(Json(BackendResponse {
        headers: Some(headers),
        body_bytes: None,
        body_base64: None,
        body_json: None,
        body_str: Some(PAGE.to_string()),
        status: 200,
    }))
}
