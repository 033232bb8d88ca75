//! Wasmo template "Route matcher" (OTOROSHI_WASM_ROUTE_MATCHER), Rust PDK. Step
//! MatchRoute, export `execute`: the route matches when header `foo` is `bar`.

#[path = "../src/common/types.rs"]
mod types;

use extism_pdk::*;
use serde::Serialize;
use types::MatchRouteContext;

#[derive(Serialize)]
struct MatchRouteResponse {
    result: bool,
}

#[plugin_fn]
pub fn execute(Json(context): Json<MatchRouteContext>) -> FnResult<Json<MatchRouteResponse>> {
    Ok(Json(MatchRouteResponse { result: context.request.headers.get("foo").map_or(false, |v| v == "bar") }))
}
