//! Access control through an HTTP service, Rust PDK: Otoroshi's `proxy_http_call`.
//! Step ValidateAccess, export `execute` (the entity grants `httpAccess`; `allowedHosts`
//! names the service's host and `proxyHttpCallTimeout` bounds the wait). Asks the service at
//! config `auth_url` followed by the request's path (GET, header `x-auth-pdk: rust`): a 2xx
//! answer allows the request, any other status (Otoroshi's own 403 for a host outside
//! `allowedHosts` included) denies it with status 403 and the message "denied by the auth
//! service (<status>)". No answer at all (past `proxyHttpCallTimeout`) ends the call (the host
//! fails the plugin). The call blocks: the host runs it off the event loop.

#[path = "../src/common/types.rs"]
mod types;

use extism_pdk::*;
use serde::Serialize;
use serde_json::{json, Value};
use types::AccessContext;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_http_call(ptr: u64, len: u64) -> u64;
}

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
    let base = config::get("auth_url")?.ok_or_else(|| Error::msg("config auth_url is not set"))?;
    let request = json!({
        "url": format!("{}{}", base, context.request.path),
        "method": "GET",
        "headers": {"x-auth-pdk": "rust"},
    });
    let arg = Memory::from_bytes(request.to_string())?;
    // SAFETY: Otoroshi's host function, given (offset, length) of a kernel block this module
    // allocated and still owns; it answers a handle to a new block (0 for nothing).
    let handle = unsafe { proxy_http_call(arg.offset(), arg.len() as u64) };
    let answer: Value = match Memory::find(handle) {
        Some(m) => serde_json::from_slice(&m.to_vec())?,
        None => Value::Null,
    };
    let status = answer.get("status").and_then(Value::as_u64).unwrap_or(0);
    Ok(Json(if (200..300).contains(&status) {
        AccessResponse { result: true, error: None }
    } else {
        AccessResponse {
            result: false,
            error: Some(AccessError { message: format!("denied by the auth service ({})", status), status: 403 }),
        }
    }))
}
