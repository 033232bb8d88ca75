//! MatchRoute (`matches_route`) and Router (`find_route`): the steps that take part in routing.
//!
//! In a chain, an entity listing MatchRoute guards the route the chain belongs to (an NGINX
//! `location`/`server`, a Traffic Server remap rule): a request it does not match gets Otoroshi's
//! answer for a request no route matched (404 `route not found`), before any other step runs.
//! The servers also ask the entities themselves where they route (NGINX: the variables
//! `$proxy_wasm_match_<id>` and `$proxy_wasm_route_<id>`; Traffic Server: the remap rule's target
//! from Router), through [`matches_route`] and [`find_route`], outside any chain: the input has
//! no attributes of earlier plugins then (`attrs` is `{}`).

use serde_json::Value;

use crate::extism::call::CallError;
use crate::extism::entity::Step;
use crate::extism::steps::output::{self, Attrs};
use crate::extism::steps::route::{self, Target};
use crate::extism::steps::view::RequestParts;
use crate::extism::steps::{input, StepFunction};
use crate::runtime::Trap;
use crate::vm::VmError;

use super::{failed, local, snowflakes, EntityLink, StepResult};

/// A number for a request the steps see outside a chain (`request.id`), from the same sequence
/// as the chain's transactions.
#[must_use]
pub fn request_id() -> u64 {
    super::Transaction::default().id()
}

fn trap(entity: &EntityLink, f: StepFunction, trap: Trap) -> VmError {
    VmError::Trap { plugin: entity.plugin.id.clone(), callback: f.default_name(), trap }
}

fn call_matches(entity: &EntityLink, request: &RequestParts, snowflake: &str, attrs: &mut Attrs) -> Result<bool, Trap> {
    let ctx = input::Context {
        snowflake,
        request,
        route: &entity.route_json,
        config: &entity.plugin.context_text,
        attrs: &attrs.0,
    };
    let f = StepFunction::MatchesRoute;
    let out = entity.call(entity.export(f), &input::matches_route(&ctx));
    if let Err(CallError::Trap { trap, .. }) = out {
        return Err(trap);
    }
    Ok(output::matches_route(out.as_deref(), attrs))
}

/// Whether the entity's `matches_route` matches `request` (a failed call, or output that is not
/// JSON, does not match, as in Otoroshi).
///
/// # Errors
/// A trap of the plugin (an endless loop past `callback_timeout`, an instance that cannot start).
pub fn matches_route(entity: &EntityLink, request: &RequestParts) -> Result<bool, VmError> {
    let snowflake = snowflakes().next();
    call_matches(entity, request, &snowflake, &mut Attrs::default())
        .map_err(|t| trap(entity, StepFunction::MatchesRoute, t))
}

/// The first target of the route the entity's `find_route` found for `request` (`NgRoute`'s
/// `backend.targets[0]`: `hostname`, `port` (80, 443 with `tls`), `tls` (false)); `None` when it
/// found no route, or a route without a usable target.
///
/// # Errors
/// A trap of the plugin.
pub fn find_route(entity: &EntityLink, request: &RequestParts) -> Result<Option<Target>, VmError> {
    let f = StepFunction::FindRoute;
    let json = input::find_route(request, &entity.plugin.context_text, &serde_json::Map::new());
    let out = entity.call(entity.export(f), &json);
    if let Err(CallError::Trap { trap: t, .. }) = out {
        return Err(trap(entity, f, t));
    }
    let Some(found) = output::find_route(out.as_deref(), &mut Attrs::default()) else { return Ok(None) };
    Ok(first_target(&found.route))
}

fn first_target(route: &Value) -> Option<Target> {
    let t = route.get("backend")?.get("targets")?.as_array()?.first()?;
    let hostname = t.get("hostname")?.as_str().filter(|h| !h.is_empty())?.to_owned();
    let tls = t.get("tls").and_then(Value::as_bool).unwrap_or(false);
    let port = match t.get("port") {
        None | Some(Value::Null) => Some(if tls { 443 } else { 80 }),
        Some(p) => p.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0),
    }?;
    Some(Target { hostname, port, tls })
}

/// MatchRoute in a chain, before PreRoute: `None` when the request matches (or the entity has no
/// MatchRoute), else Otoroshi's 404 `route not found` (or the link's failure on a trap).
pub(super) fn gate(entity: &EntityLink, tx: &mut super::Transaction, request: &RequestParts) -> Option<StepResult> {
    if !entity.has(Step::MatchRoute) {
        return None;
    }
    let snowflake = tx.snowflake().to_owned();
    match call_matches(entity, request, &snowflake, &mut tx.attrs) {
        Err(t) => Some(failed(entity, StepFunction::MatchesRoute, t)),
        Ok(true) => None,
        Ok(false) => {
            Some(local(entity, route::LocalResponse::otoroshi_error(404, "route not found", &request.headers)))
        }
    }
}

/// The name a server gives an entity in its variables (NGINX: `$proxy_wasm_match_<name>`,
/// `$proxy_wasm_route_<name>`): the plugin's id in lower case, with `_` for every character that
/// is not an ASCII letter, digit or `_` (nginx's variable names allow no other).
#[must_use]
pub fn variable_name(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_lowercase() } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_as_variable_names() {
        assert_eq!(variable_name("wasm-plugin_Wasmo.Router"), "wasm_plugin_wasmo_router");
    }

    #[test]
    fn the_first_target_of_the_found_route() {
        let route = |t: Value| json!({"backend": {"targets": [t, {"hostname": "second"}]}});
        assert_eq!(
            first_target(&route(json!({"hostname": "a", "port": 8080, "tls": false}))),
            Some(Target { hostname: "a".into(), port: 8080, tls: false })
        );
        assert_eq!(
            first_target(&route(json!({"hostname": "b", "tls": true}))),
            Some(Target { hostname: "b".into(), port: 443, tls: true })
        );
        assert_eq!(first_target(&route(json!({"hostname": "c", "port": 70000}))), None);
        assert_eq!(first_target(&route(json!({"port": 80}))), None);
        assert_eq!(first_target(&json!({"backend": {"targets": []}})), None);
        assert_eq!(first_target(&json!({"id": "no backend"})), None);
    }
}
