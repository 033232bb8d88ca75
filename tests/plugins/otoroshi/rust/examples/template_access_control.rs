//! Wasmo template "Access control" (OTOROSHI_WASM_ACCESS_CONTROL), Rust PDK.
//! Step ValidateAccess, export `execute`. As Wasmo's Rust template: header
//! `foo: bar` allows; another `foo` value denies with "<value> is not
//! authorized", no `foo` with "you're not authorized"; status 401 both times.

#[path = "../src/common/types.rs"]
mod types;

use extism_pdk::*;
use serde::Serialize;
use types::AccessContext;

#[derive(Serialize)]
struct AccessError {
    message: String,
    status: u32,
}

/// As otoroshi_rust_types serialises it: `error: null` when allowed.
#[derive(Serialize)]
struct AccessResponse {
    result: bool,
    error: Option<AccessError>,
}

#[plugin_fn]
pub fn execute(Json(context): Json<AccessContext>) -> FnResult<Json<AccessResponse>> {
    let deny = |message: String| AccessResponse { result: false, error: Some(AccessError { message, status: 401 }) };
    Ok(Json(match context.request.headers.get("foo") {
        Some(foo) if foo == "bar" => AccessResponse { result: true, error: None },
        Some(foo) => deny(format!("{} is not authorized", foo)),
        None => deny("you're not authorized".to_string()),
    }))
}
