//! The input of each step: the JSON Otoroshi's `wasmJson` of each plugin context builds
//! (MAIF/otoroshi `app/next/plugins/api.scala`, `app/next/plugins/wasm.scala`), from the server's
//! view of the request. Fields with no counterpart here are written as Otoroshi writes them when
//! they are empty: `apikey` and `user` are `null` (no Otoroshi authentication runs), and
//! `global_config` is `{}` (there is no Otoroshi global configuration).

use serde_json::{json, Map, Value};

use super::route::RouteInfo;
use super::view::{request_json, response_json, PluginRequest, RequestView, ResponseParts};
use crate::extism::body::signed_bytes;

/// What most contexts share.
pub struct Context<'a> {
    /// A [`super::route::Snowflake`] id for this request.
    pub snowflake: &'a str,
    pub request: &'a dyn RequestView,
    pub route: &'a RouteInfo,
    /// The entity's configuration ([`crate::extism::entity::WasmConfig::context_json`]).
    pub config: &'a Value,
    /// The request's attributes as plugins set them ([`super::output::Attrs`]).
    pub attrs: &'a Value,
}

fn object(pairs: Vec<(&str, Value)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
}

/// The `*_body_bytes` of a body that may be absent.
fn body_bytes(body: Option<&[u8]>) -> Value {
    body.map_or(Value::Null, signed_bytes)
}

/// MatchRoute (`matches_route`): `NgRouteMatcherContext.wasmJson`.
#[must_use]
pub fn matches_route(c: &Context<'_>) -> Value {
    object(vec![
        ("snowflake", Value::from(c.snowflake)),
        ("route", c.route.json()),
        ("request", request_json(c.request)),
        ("config", c.config.clone()),
        ("attrs", c.attrs.clone()),
    ])
}

/// Router (`find_route`): `NgRouterContext.json` (no snowflake, no route: it is being found).
#[must_use]
pub fn find_route(request: &dyn RequestView, config: &Value, attrs: &Value) -> Value {
    object(vec![("request", request_json(request)), ("config", config.clone()), ("attrs", attrs.clone())])
}

/// PreRoute (`pre_route`): `NgPreRoutingContext.wasmJson`.
#[must_use]
pub fn pre_route(c: &Context<'_>) -> Value {
    object(vec![
        ("snowflake", Value::from(c.snowflake)),
        ("request", request_json(c.request)),
        ("config", c.config.clone()),
        ("global_config", json!({})),
        ("attrs", c.attrs.clone()),
        ("route", c.route.json()),
    ])
}

/// ValidateAccess (`access`, and the input of an OPA policy): `NgAccessContext.wasmJson`.
#[must_use]
pub fn access(c: &Context<'_>) -> Value {
    object(vec![
        ("snowflake", Value::from(c.snowflake)),
        ("apikey", Value::Null),
        ("user", Value::Null),
        ("request", request_json(c.request)),
        ("config", c.config.clone()),
        ("global_config", json!({})),
        ("attrs", c.attrs.clone()),
        ("route", c.route.json()),
    ])
}

/// TransformRequest (`transform_request`): `NgTransformerRequestContext.wasmJson`.
/// `raw` is the request as received, `otoroshi` as it will be sent (after earlier plugins);
/// `body` is its body, given only when Otoroshi would read one (`otoroshi.has_body()`).
#[must_use]
pub fn transform_request(c: &Context<'_>, raw: &PluginRequest, otoroshi: &PluginRequest, body: &[u8]) -> Value {
    object(vec![
        ("snowflake", Value::from(c.snowflake)),
        ("raw_request", raw.json()),
        ("otoroshi_request", otoroshi.json()),
        ("apikey", Value::Null),
        ("user", Value::Null),
        ("request", request_json(c.request)),
        ("config", c.config.clone()),
        ("global_config", json!({})),
        ("attrs", c.attrs.clone()),
        ("route", c.route.json()),
        ("request_body_bytes", body_bytes(otoroshi.has_body().then_some(body))),
    ])
}

/// TransformResponse (`transform_response`): `NgTransformerResponseContext.wasmJson`; an empty
/// body is `null`.
#[must_use]
pub fn transform_response(c: &Context<'_>, raw: &ResponseParts, otoroshi: &ResponseParts, body: &[u8]) -> Value {
    object(vec![
        ("snowflake", Value::from(c.snowflake)),
        ("raw_response", response_json(raw)),
        ("otoroshi_response", response_json(otoroshi)),
        ("apikey", Value::Null),
        ("user", Value::Null),
        ("request", request_json(c.request)),
        ("config", c.config.clone()),
        ("global_config", json!({})),
        ("attrs", c.attrs.clone()),
        ("route", c.route.json()),
        ("response_body_bytes", body_bytes((!body.is_empty()).then_some(body))),
    ])
}

/// CallBackend (`call_backend`): `NgbBackendCallContext.wasmJson`: `backend` is the chosen
/// target, `raw_request` the request as received (in `request`'s shape), `request` the request
/// to send.
#[must_use]
pub fn call_backend(c: &Context<'_>, backend: &Value, request: &PluginRequest, body: &[u8]) -> Value {
    object(vec![
        ("snowflake", Value::from(c.snowflake)),
        ("backend", backend.clone()),
        ("apikey", Value::Null),
        ("user", Value::Null),
        ("raw_request", request_json(c.request)),
        ("config", c.config.clone()),
        ("global_config", json!({})),
        ("attrs", c.attrs.clone()),
        ("route", c.route.json()),
        ("request_body_bytes", body_bytes(request.has_body().then_some(body))),
        ("request", request.json()),
    ])
}

/// Why a request reached the sink (`NgRequestSinkContext`'s origin, status and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkReason {
    /// `NgReverseProxy` (no route matched) or `NgErrorHandler`.
    pub origin: &'static str,
    pub status: u16,
    pub message: String,
}

impl SinkReason {
    /// What Otoroshi passes when no route matches a request.
    #[must_use]
    pub fn no_route() -> SinkReason {
        SinkReason { origin: "NgReverseProxy", status: 404, message: "route not found".into() }
    }
}

/// Sink (`sink_matches`): `NgRequestSinkContext.wasmJson`.
#[must_use]
pub fn sink_matches(
    snowflake: &str,
    request: &dyn RequestView,
    config: &Value,
    attrs: &Value,
    reason: &SinkReason,
) -> Value {
    object(vec![
        ("snowflake", Value::from(snowflake)),
        ("request", request_json(request)),
        ("config", config.clone()),
        ("attrs", attrs.clone()),
        ("origin", Value::from(reason.origin)),
        ("status", Value::from(reason.status)),
        ("message", Value::from(reason.message.clone())),
    ])
}

/// Sink (`sink_handle`): the same with the whole request body as `body_bytes`.
#[must_use]
pub fn sink_handle(
    snowflake: &str,
    request: &dyn RequestView,
    config: &Value,
    attrs: &Value,
    reason: &SinkReason,
    body: &[u8],
) -> Value {
    let mut v = sink_matches(snowflake, request, config, attrs, reason);
    if let Value::Object(m) = &mut v {
        m.insert("body_bytes".into(), signed_bytes(body));
    }
    v
}

/// HandlesRequest (`handle_request`): `{"request": <request + request_body_bytes when it has a
/// body>}`.
#[must_use]
pub fn handle_request(request: &dyn RequestView, body: &[u8]) -> Value {
    let mut r = request_json(request);
    if r["has_body"].as_bool() == Some(true) {
        if let Value::Object(m) = &mut r {
            m.insert("request_body_bytes".into(), signed_bytes(body));
        }
    }
    json!({ "request": r })
}

/// Job (`job_start`, `job_run`, `job_stop`): `JobContext.wasmJson`.
#[must_use]
pub fn job(snowflake: &str, attrs: &Value) -> Value {
    object(vec![("snowflake", Value::from(snowflake)), ("attrs", attrs.clone()), ("global_config", json!({}))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extism::steps::route::Target;
    use crate::extism::steps::view::RequestParts;

    fn request() -> RequestParts {
        RequestParts {
            id: 1,
            method: "POST".into(),
            uri: "/a?b=c".into(),
            version: "HTTP/1.1".into(),
            headers: vec![("Host".into(), "h".into()), ("Content-Length".into(), "2".into())],
            remote: "127.0.0.1".into(),
            ..Default::default()
        }
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect::<Vec<_>>()
    }

    fn with<R>(f: impl FnOnce(&Context<'_>) -> R) -> R {
        let request = request();
        let route = RouteInfo { id: "r".into(), name: "r".into(), ..Default::default() };
        let config = json!({"source": {"kind": "Local", "path": "p"}});
        let attrs = json!({});
        f(&Context { snowflake: "42", request: &request, route: &route, config: &config, attrs: &attrs })
    }

    fn sorted(mut v: Vec<&str>) -> Vec<&str> {
        v.sort_unstable();
        v
    }

    #[test]
    fn each_step_has_exactly_otoroshis_fields() {
        with(|c| {
            assert_eq!(
                sorted(keys(&matches_route(c))),
                sorted(vec!["snowflake", "route", "request", "config", "attrs"])
            );
            assert_eq!(
                sorted(keys(&pre_route(c))),
                sorted(vec!["snowflake", "request", "config", "global_config", "attrs", "route"])
            );
            assert_eq!(
                sorted(keys(&access(c))),
                sorted(vec!["snowflake", "apikey", "user", "request", "config", "global_config", "attrs", "route"])
            );
            let raw = PluginRequest::from_view(c.request, None);
            assert_eq!(
                sorted(keys(&transform_request(c, &raw, &raw, b"hi"))),
                sorted(vec![
                    "snowflake",
                    "raw_request",
                    "otoroshi_request",
                    "apikey",
                    "user",
                    "request",
                    "config",
                    "global_config",
                    "attrs",
                    "route",
                    "request_body_bytes"
                ])
            );
            let resp = ResponseParts { status: 200, headers: vec![] };
            assert_eq!(
                sorted(keys(&transform_response(c, &resp, &resp, b""))),
                sorted(vec![
                    "snowflake",
                    "raw_response",
                    "otoroshi_response",
                    "apikey",
                    "user",
                    "request",
                    "config",
                    "global_config",
                    "attrs",
                    "route",
                    "response_body_bytes"
                ])
            );
            let backend = Target { hostname: "b".into(), port: 80, tls: false }.json();
            assert_eq!(
                sorted(keys(&call_backend(c, &backend, &raw, b""))),
                sorted(vec![
                    "snowflake",
                    "backend",
                    "apikey",
                    "user",
                    "raw_request",
                    "config",
                    "global_config",
                    "attrs",
                    "route",
                    "request_body_bytes",
                    "request"
                ])
            );
            assert_eq!(sorted(keys(&find_route(c.request, c.config, c.attrs))), vec!["attrs", "config", "request"]);
            assert_eq!(sorted(keys(&job("1", c.attrs))), vec!["attrs", "global_config", "snowflake"]);
        });
    }

    #[test]
    fn bodies_are_signed_byte_arrays_or_null() {
        with(|c| {
            let raw = PluginRequest::from_view(c.request, None);
            assert_eq!(transform_request(c, &raw, &raw, &[104, 200])["request_body_bytes"], json!([104, -56]));
            let mut get = raw.clone();
            get.method = "GET".into();
            get.headers.clear();
            assert_eq!(transform_request(c, &raw, &get, b"")["request_body_bytes"], Value::Null);
            let resp = ResponseParts { status: 200, headers: vec![] };
            assert_eq!(transform_response(c, &resp, &resp, b"")["response_body_bytes"], Value::Null);
            assert_eq!(transform_response(c, &resp, &resp, b"ok")["response_body_bytes"], json!([111, 107]));
        });
    }

    #[test]
    fn the_sink_says_why_and_handle_carries_the_body() {
        let r = request();
        let v = sink_handle("1", &r, &json!({}), &json!({}), &SinkReason::no_route(), b"x");
        assert_eq!((v["origin"].as_str(), v["status"].as_u64()), (Some("NgReverseProxy"), Some(404)));
        assert_eq!(v["body_bytes"], json!([120]));
        assert!(sink_matches("1", &r, &json!({}), &json!({}), &SinkReason::no_route()).get("body_bytes").is_none());
    }

    #[test]
    fn handle_request_nests_the_body_in_the_request() {
        let v = handle_request(&request(), b"ab");
        assert_eq!(v["request"]["request_body_bytes"], json!([97, 98]));
        let mut get = request();
        get.method = "GET".into();
        get.headers.retain(|(k, _)| k != "Content-Length");
        assert!(handle_request(&get, b"").get("request").unwrap().get("request_body_bytes").is_none());
    }
}
