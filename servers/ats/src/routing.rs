//! Router (`find_route`) on Traffic Server: in a remap rule, the first entity of the rule's
//! plugins that lists Router and finds a route gives the rule its target: the route's first
//! target (`backend.targets[0]`: host, port, `tls` → `https`) replaces the request URL's scheme,
//! host and port, and the rule's own target is not applied (`TSREMAP_DID_REMAP`). When no entity
//! finds a route, the rule maps as written. A trap of the plugin is logged and counts as no
//! route. The path and query stay the request's.
//!
//! MatchRoute needs nothing here: it runs first in the rule's chain (`chain::extism::routing`),
//! and a request it does not match gets Otoroshi's 404 `route not found`.

use std::os::raw::{c_char, c_int};

use super::hdr::Hdr;
use super::server::log;
use super::shared::TxnShared;
use super::sys::*;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::extism::routing;
use proxy_wasm_host::chain::PluginSet;
use proxy_wasm_host::extism::entity::Step;
use proxy_wasm_host::extism::steps::route::Target;
use proxy_wasm_host::extism::steps::stream::request_parts_from;

/// Runs the Router entities of `set` for the transaction; whether one set the target.
///
/// # Safety
/// `txnp` is a live transaction and `rri` its remap request info, from `TSRemapDoRemap`.
pub unsafe fn route(set: &PluginSet, txnp: TSHttpTxn, rri: *mut TSRemapRequestInfo) -> bool {
    let routers: Vec<_> = set.entities.iter().filter(|e| e.plugin.steps.contains(&Step::Router)).collect();
    if routers.is_empty() || rri.is_null() {
        return false;
    }
    // SAFETY: Traffic Server's remap request info for this live transaction.
    let (buf, hdr, url) = unsafe { ((*rri).requestBufp, (*rri).requestHdrp, (*rri).requestUrl) };
    let h = Hdr { buf, loc: hdr, is_request: true };
    // SAFETY: live transaction and header.
    let request = unsafe {
        let v = TSHttpHdrVersionGet(buf, hdr);
        let protocol = format!("HTTP/{}.{}", (v >> 16) & 0xffff, v & 0xffff);
        let client = TxnShared::addr(TSHttpTxnClientAddrGet(txnp) as *const libc::sockaddr).map(|a| a.to_string());
        request_parts_from(
            &h.pairs(),
            Some(protocol.as_bytes()),
            client.as_deref().map(str::as_bytes),
            routing::request_id(),
        )
    };
    for entity in routers {
        match routing::find_route(entity, &request) {
            Ok(Some(target)) => {
                // SAFETY: the request URL of the live transaction.
                if unsafe { set_target(buf, url, &target) } {
                    return true;
                }
                log(
                    LogLevel::Error,
                    &format!(
                        "[proxy_wasm] otoroshi plugin {}: cannot set the target {}:{} found by find_route",
                        entity.plugin.id, target.hostname, target.port
                    ),
                );
            }
            Ok(None) => {}
            Err(e) => log(LogLevel::Error, &format!("[proxy_wasm] {e}; the rule maps as written")),
        }
    }
    false
}

/// # Safety
/// `url` is a live URL of `buf`.
unsafe fn set_target(buf: TSMBuffer, url: TSMLoc, target: &Target) -> bool {
    let scheme: &str = if target.tls { "https" } else { "http" };
    let Ok(host_len) = c_int::try_from(target.hostname.len()) else { return false };
    // SAFETY: see above; the strings outlive the calls, which copy them.
    unsafe {
        TSUrlSchemeSet(buf, url, scheme.as_ptr() as *const c_char, scheme.len() as c_int) == TS_SUCCESS
            && TSUrlHostSet(buf, url, target.hostname.as_ptr() as *const c_char, host_len) == TS_SUCCESS
            && TSUrlPortSet(buf, url, c_int::from(target.port)) == TS_SUCCESS
    }
}
