//! Wasmo template "Pre route" (OTOROSHI_WASM_PRE_ROUTE), Rust PDK. Step
//! PreRoute, export `execute`. As Wasmo's Rust template: header `bar: foo` lets
//! the request go on; another `bar` value short-circuits with status 401 and body
//! "<value> is not authorized", no `bar` with "you're not authorized".

#[path = "../src/common/types.rs"]
mod types;

use extism_pdk::*;
use serde::Serialize;
use types::PreRouteContext;

#[derive(Serialize)]
struct PreRouteResponse {
    error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

#[plugin_fn]
pub fn execute(Json(context): Json<PreRouteContext>) -> FnResult<Json<PreRouteResponse>> {
    let refuse = |body: String| PreRouteResponse { error: true, status: Some(401), body: Some(body) };
    Ok(Json(match context.request.headers.get("bar") {
        Some(bar) if bar == "foo" => PreRouteResponse { error: false, status: None, body: None },
        Some(bar) => refuse(format!("{} is not authorized", bar)),
        None => refuse("you're not authorized".to_string()),
    }))
}
