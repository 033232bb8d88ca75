//! Files through WASI (`allowedPaths`), Rust PDK built for wasm32-wasi with Rust's std::fs.
//! Step ValidateAccess, export `execute`. A request for `/files/<name>` reads the guest file
//! `/data/<name>` (the entity maps a host folder to `/data`): the request is allowed when the
//! file holds `allow`; otherwise it is denied (403) with the file's text, or with the error
//! std::fs gave (a path outside the folder, a missing file). With a header `x-write: <text>`
//! the plugin first writes `<text>` to the file, and a failed write denies with its error.

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

#[derive(Serialize)]
struct AccessResponse {
    result: bool,
    error: Option<AccessError>,
}

#[plugin_fn]
pub fn execute(Json(context): Json<AccessContext>) -> FnResult<Json<AccessResponse>> {
    let deny = |message: String| AccessResponse { result: false, error: Some(AccessError { message, status: 403 }) };
    let name = context.request.path.trim_start_matches("/files/").to_string();
    let path = format!("/data/{}", name);
    if let Some(text) = context.request.headers.get("x-write") {
        if let Err(e) = std::fs::write(&path, text.as_bytes()) {
            return Ok(Json(deny(format!("write {}: {}", path, e))));
        }
    }
    Ok(Json(match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == "allow" => AccessResponse { result: true, error: None },
        Ok(text) => deny(format!("{} says {}", path, text.trim())),
        Err(e) => deny(format!("read {}: {}", path, e)),
    }))
}
