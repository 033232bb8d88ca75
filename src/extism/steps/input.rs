//! The input of each step: the JSON Otoroshi's `wasmJson` of each plugin context builds
//! (MAIF/otoroshi `app/next/plugins/api.scala`, `app/next/plugins/wasm.scala`), from the server's
//! view of the request. Fields with no counterpart here are written as Otoroshi writes them when
//! they are empty: `apikey` and `user` are `null` (no Otoroshi authentication runs), and
//! `global_config` is `{}` (there is no Otoroshi global configuration).

use serde_json::{Map, Value};

use super::json_text::{self as text, Object};
use super::view::{write_request, write_response, PluginRequest, RequestView, ResponseParts};

/// What most contexts share. The parts that are the same for every request of a link (its route,
/// the entity's configuration) come as JSON text written once.
pub struct Context<'a> {
    /// A [`super::route::Snowflake`] id for this request.
    pub snowflake: &'a str,
    pub request: &'a dyn RequestView,
    /// The route's `NgRoute.json` ([`super::route::RouteInfo::json`]) as JSON text.
    pub route: &'a str,
    /// The entity's configuration ([`crate::extism::entity::WasmConfig::context_json`]) as JSON text.
    pub config: &'a str,
    /// The request's attributes as plugins set them ([`super::output::Attrs`]).
    pub attrs: &'a Map<String, Value>,
}

/// What the contexts write for fields Otoroshi has and this host does not (`apikey`, `user`,
/// `global_config`).
const NULL: &str = "null";
const EMPTY: &str = "{}";

/// A context is about as long as its request's headers and body (as JSON) plus its route and
/// configuration: one allocation for the common case.
fn buffer(c: &Context<'_>, body: usize) -> Vec<u8> {
    let headers: usize = c.request.headers().iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    Vec::with_capacity(512 + c.route.len() + c.config.len() + 2 * (headers + c.request.uri().len()) + 5 * body)
}

/// The `*_body_bytes` of a body that may be absent.
fn body_bytes(out: &mut Vec<u8>, body: Option<&[u8]>) {
    match body {
        Some(b) => text::signed_bytes(out, b),
        None => out.extend_from_slice(b"null"),
    }
}

/// MatchRoute (`matches_route`): `NgRouteMatcherContext.wasmJson`.
#[must_use]
pub fn matches_route(c: &Context<'_>) -> Vec<u8> {
    let mut out = buffer(c, 0);
    let mut o = Object::new(&mut out);
    text::map(o.key("attrs"), c.attrs);
    o.raw("config", c.config);
    write_request(o.key("request"), c.request, None);
    o.raw("route", c.route);
    o.str("snowflake", c.snowflake);
    o.end();
    out
}

/// Router (`find_route`): `NgRouterContext.json` (no snowflake, no route: it is being found).
#[must_use]
pub fn find_route(request: &dyn RequestView, config: &str, attrs: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 + config.len());
    let mut o = Object::new(&mut out);
    text::map(o.key("attrs"), attrs);
    o.raw("config", config);
    write_request(o.key("request"), request, None);
    o.end();
    out
}

/// PreRoute (`pre_route`): `NgPreRoutingContext.wasmJson`.
#[must_use]
pub fn pre_route(c: &Context<'_>) -> Vec<u8> {
    let mut out = buffer(c, 0);
    let mut o = Object::new(&mut out);
    text::map(o.key("attrs"), c.attrs);
    o.raw("config", c.config);
    o.raw("global_config", EMPTY);
    write_request(o.key("request"), c.request, None);
    o.raw("route", c.route);
    o.str("snowflake", c.snowflake);
    o.end();
    out
}

/// ValidateAccess (`access`, and the input of an OPA policy): `NgAccessContext.wasmJson`.
#[must_use]
pub fn access(c: &Context<'_>) -> Vec<u8> {
    let mut out = buffer(c, 0);
    let mut o = Object::new(&mut out);
    o.raw("apikey", NULL);
    text::map(o.key("attrs"), c.attrs);
    o.raw("config", c.config);
    o.raw("global_config", EMPTY);
    write_request(o.key("request"), c.request, None);
    o.raw("route", c.route);
    o.str("snowflake", c.snowflake);
    o.raw("user", NULL);
    o.end();
    out
}

/// TransformRequest (`transform_request`): `NgTransformerRequestContext.wasmJson`.
/// `raw` is the request as received, `otoroshi` as it will be sent (after earlier plugins);
/// `body` is its body, given only when Otoroshi would read one (`otoroshi.has_body()`).
#[must_use]
pub fn transform_request(c: &Context<'_>, raw: &PluginRequest, otoroshi: &PluginRequest, body: &[u8]) -> Vec<u8> {
    let mut out = buffer(c, body.len());
    let mut o = Object::new(&mut out);
    o.raw("apikey", NULL);
    text::map(o.key("attrs"), c.attrs);
    o.raw("config", c.config);
    o.raw("global_config", EMPTY);
    otoroshi.write_json(o.key("otoroshi_request"));
    raw.write_json(o.key("raw_request"));
    write_request(o.key("request"), c.request, None);
    body_bytes(o.key("request_body_bytes"), otoroshi.has_body().then_some(body));
    o.raw("route", c.route);
    o.str("snowflake", c.snowflake);
    o.raw("user", NULL);
    o.end();
    out
}

/// TransformResponse (`transform_response`): `NgTransformerResponseContext.wasmJson`; an empty
/// body is `null`.
#[must_use]
pub fn transform_response(c: &Context<'_>, raw: &ResponseParts, otoroshi: &ResponseParts, body: &[u8]) -> Vec<u8> {
    let mut out = buffer(c, body.len());
    let mut o = Object::new(&mut out);
    o.raw("apikey", NULL);
    text::map(o.key("attrs"), c.attrs);
    o.raw("config", c.config);
    o.raw("global_config", EMPTY);
    write_response(o.key("otoroshi_response"), otoroshi);
    write_response(o.key("raw_response"), raw);
    write_request(o.key("request"), c.request, None);
    body_bytes(o.key("response_body_bytes"), (!body.is_empty()).then_some(body));
    o.raw("route", c.route);
    o.str("snowflake", c.snowflake);
    o.raw("user", NULL);
    o.end();
    out
}

/// CallBackend (`call_backend`): `NgbBackendCallContext.wasmJson`: `backend` is the chosen
/// target, `raw_request` the request as received (in `request`'s shape), `request` the request
/// to send.
#[must_use]
pub fn call_backend(c: &Context<'_>, backend: &Value, request: &PluginRequest, body: &[u8]) -> Vec<u8> {
    let mut out = buffer(c, body.len());
    let mut o = Object::new(&mut out);
    o.raw("apikey", NULL);
    text::map(o.key("attrs"), c.attrs);
    text::value(o.key("backend"), backend);
    o.raw("config", c.config);
    o.raw("global_config", EMPTY);
    write_request(o.key("raw_request"), c.request, None);
    request.write_json(o.key("request"));
    body_bytes(o.key("request_body_bytes"), request.has_body().then_some(body));
    o.raw("route", c.route);
    o.str("snowflake", c.snowflake);
    o.raw("user", NULL);
    o.end();
    out
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

/// `NgRequestSinkContext.wasmJson`, with the whole request body as `body_bytes` for `sink_handle`.
fn sink(
    snowflake: &str,
    request: &dyn RequestView,
    config: &str,
    attrs: &Map<String, Value>,
    reason: &SinkReason,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 + config.len() + 5 * body.map_or(0, <[u8]>::len));
    let mut o = Object::new(&mut out);
    text::map(o.key("attrs"), attrs);
    if let Some(body) = body {
        text::signed_bytes(o.key("body_bytes"), body);
    }
    o.raw("config", config);
    o.str("message", &reason.message);
    o.str("origin", reason.origin);
    write_request(o.key("request"), request, None);
    o.str("snowflake", snowflake);
    text::u64(o.key("status"), u64::from(reason.status));
    o.end();
    out
}

/// Sink (`sink_matches`): `NgRequestSinkContext.wasmJson`.
#[must_use]
pub fn sink_matches(
    snowflake: &str,
    request: &dyn RequestView,
    config: &str,
    attrs: &Map<String, Value>,
    reason: &SinkReason,
) -> Vec<u8> {
    sink(snowflake, request, config, attrs, reason, None)
}

/// Sink (`sink_handle`): the same with the whole request body as `body_bytes`.
#[must_use]
pub fn sink_handle(
    snowflake: &str,
    request: &dyn RequestView,
    config: &str,
    attrs: &Map<String, Value>,
    reason: &SinkReason,
    body: &[u8],
) -> Vec<u8> {
    sink(snowflake, request, config, attrs, reason, Some(body))
}

/// HandlesRequest (`handle_request`): `{"request": <request + request_body_bytes when it has a
/// body>}`.
#[must_use]
pub fn handle_request(request: &dyn RequestView, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 + 5 * body.len());
    let mut o = Object::new(&mut out);
    let has_body = super::view::has_body(request.method(), request.headers());
    write_request(o.key("request"), request, has_body.then_some(body));
    o.end();
    out
}

/// Job (`job_start`, `job_run`, `job_stop`): `JobContext.wasmJson`.
#[must_use]
pub fn job(snowflake: &str, attrs: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut o = Object::new(&mut out);
    text::map(o.key("attrs"), attrs);
    o.raw("global_config", EMPTY);
    o.str("snowflake", snowflake);
    o.end();
    out
}

#[cfg(test)]
pub(crate) mod tree {
    //! The trees these contexts were built as before they were written as text (the tests'
    //! reference: the text must be the bytes serde_json writes for them).

    use serde_json::{json, Map, Value};

    use super::super::view::{request_json, response_json, PluginRequest, RequestView, ResponseParts};
    use super::{Context, SinkReason};
    use crate::extism::body::signed_bytes;

    fn parse(json: &str) -> Value {
        serde_json::from_str(json).unwrap()
    }

    fn object(pairs: Vec<(&str, Value)>) -> Value {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
    }

    /// The `*_body_bytes` of a body that may be absent.
    fn body_bytes(body: Option<&[u8]>) -> Value {
        body.map_or(Value::Null, signed_bytes)
    }

    /// MatchRoute (`matches_route`): `NgRouteMatcherContext.wasmJson`.
    pub fn matches_route(c: &Context<'_>) -> Value {
        object(vec![
            ("snowflake", Value::from(c.snowflake)),
            ("route", parse(c.route)),
            ("request", request_json(c.request)),
            ("config", parse(c.config)),
            ("attrs", Value::Object(c.attrs.clone())),
        ])
    }

    /// Router (`find_route`): `NgRouterContext.json` (no snowflake, no route: it is being found).
    pub fn find_route(request: &dyn RequestView, config: &str, attrs: &Map<String, Value>) -> Value {
        object(vec![
            ("request", request_json(request)),
            ("config", parse(config)),
            ("attrs", Value::Object(attrs.clone())),
        ])
    }

    /// PreRoute (`pre_route`): `NgPreRoutingContext.wasmJson`.
    pub fn pre_route(c: &Context<'_>) -> Value {
        object(vec![
            ("snowflake", Value::from(c.snowflake)),
            ("request", request_json(c.request)),
            ("config", parse(c.config)),
            ("global_config", json!({})),
            ("attrs", Value::Object(c.attrs.clone())),
            ("route", parse(c.route)),
        ])
    }

    /// ValidateAccess (`access`, and the input of an OPA policy): `NgAccessContext.wasmJson`.
    pub fn access(c: &Context<'_>) -> Value {
        object(vec![
            ("snowflake", Value::from(c.snowflake)),
            ("apikey", Value::Null),
            ("user", Value::Null),
            ("request", request_json(c.request)),
            ("config", parse(c.config)),
            ("global_config", json!({})),
            ("attrs", Value::Object(c.attrs.clone())),
            ("route", parse(c.route)),
        ])
    }

    /// TransformRequest (`transform_request`): `NgTransformerRequestContext.wasmJson`.
    /// `raw` is the request as received, `otoroshi` as it will be sent (after earlier plugins);
    /// `body` is its body, given only when Otoroshi would read one (`otoroshi.has_body()`).
    pub fn transform_request(c: &Context<'_>, raw: &PluginRequest, otoroshi: &PluginRequest, body: &[u8]) -> Value {
        object(vec![
            ("snowflake", Value::from(c.snowflake)),
            ("raw_request", raw.json()),
            ("otoroshi_request", otoroshi.json()),
            ("apikey", Value::Null),
            ("user", Value::Null),
            ("request", request_json(c.request)),
            ("config", parse(c.config)),
            ("global_config", json!({})),
            ("attrs", Value::Object(c.attrs.clone())),
            ("route", parse(c.route)),
            ("request_body_bytes", body_bytes(otoroshi.has_body().then_some(body))),
        ])
    }

    /// TransformResponse (`transform_response`): `NgTransformerResponseContext.wasmJson`; an empty
    /// body is `null`.
    pub fn transform_response(c: &Context<'_>, raw: &ResponseParts, otoroshi: &ResponseParts, body: &[u8]) -> Value {
        object(vec![
            ("snowflake", Value::from(c.snowflake)),
            ("raw_response", response_json(raw)),
            ("otoroshi_response", response_json(otoroshi)),
            ("apikey", Value::Null),
            ("user", Value::Null),
            ("request", request_json(c.request)),
            ("config", parse(c.config)),
            ("global_config", json!({})),
            ("attrs", Value::Object(c.attrs.clone())),
            ("route", parse(c.route)),
            ("response_body_bytes", body_bytes((!body.is_empty()).then_some(body))),
        ])
    }

    /// CallBackend (`call_backend`): `NgbBackendCallContext.wasmJson`: `backend` is the chosen
    /// target, `raw_request` the request as received (in `request`'s shape), `request` the request
    /// to send.
    pub fn call_backend(c: &Context<'_>, backend: &Value, request: &PluginRequest, body: &[u8]) -> Value {
        object(vec![
            ("snowflake", Value::from(c.snowflake)),
            ("backend", backend.clone()),
            ("apikey", Value::Null),
            ("user", Value::Null),
            ("raw_request", request_json(c.request)),
            ("config", parse(c.config)),
            ("global_config", json!({})),
            ("attrs", Value::Object(c.attrs.clone())),
            ("route", parse(c.route)),
            ("request_body_bytes", body_bytes(request.has_body().then_some(body))),
            ("request", request.json()),
        ])
    }

    /// Sink (`sink_matches`): `NgRequestSinkContext.wasmJson`.
    pub fn sink_matches(
        snowflake: &str,
        request: &dyn RequestView,
        config: &str,
        attrs: &Map<String, Value>,
        reason: &SinkReason,
    ) -> Value {
        object(vec![
            ("snowflake", Value::from(snowflake)),
            ("request", request_json(request)),
            ("config", parse(config)),
            ("attrs", Value::Object(attrs.clone())),
            ("origin", Value::from(reason.origin)),
            ("status", Value::from(reason.status)),
            ("message", Value::from(reason.message.clone())),
        ])
    }

    /// Sink (`sink_handle`): the same with the whole request body as `body_bytes`.
    pub fn sink_handle(
        snowflake: &str,
        request: &dyn RequestView,
        config: &str,
        attrs: &Map<String, Value>,
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
    pub fn job(snowflake: &str, attrs: &Map<String, Value>) -> Value {
        object(vec![
            ("snowflake", Value::from(snowflake)),
            ("attrs", Value::Object(attrs.clone())),
            ("global_config", json!({})),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extism::steps::route::RouteInfo;
    use crate::extism::steps::route::Target;
    use crate::extism::steps::view::RequestParts;
    use serde_json::json;

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

    fn keys(v: &[u8]) -> Vec<String> {
        let v: Value = serde_json::from_slice(v).unwrap();
        v.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
    }

    fn parsed(v: &[u8]) -> Value {
        serde_json::from_slice(v).unwrap()
    }

    fn with<R>(f: impl FnOnce(&Context<'_>) -> R) -> R {
        let request = request();
        let route = RouteInfo { id: "r".into(), name: "r".into(), ..Default::default() }.json().to_string();
        let config = json!({"source": {"kind": "Local", "path": "p"}}).to_string();
        let attrs = Map::new();
        f(&Context { snowflake: "42", request: &request, route: &route, config: &config, attrs: &attrs })
    }

    fn sorted(v: Vec<&str>) -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().map(str::to_owned).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn each_step_has_exactly_otoroshis_fields() {
        with(|c| {
            assert_eq!(keys(&matches_route(c)), sorted(vec!["snowflake", "route", "request", "config", "attrs"]));
            assert_eq!(
                keys(&pre_route(c)),
                sorted(vec!["snowflake", "request", "config", "global_config", "attrs", "route"])
            );
            assert_eq!(
                keys(&access(c)),
                sorted(vec!["snowflake", "apikey", "user", "request", "config", "global_config", "attrs", "route"])
            );
            let raw = PluginRequest::from_view(c.request, None);
            assert_eq!(
                keys(&transform_request(c, &raw, &raw, b"hi")),
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
                keys(&transform_response(c, &resp, &resp, b"")),
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
                keys(&call_backend(c, &backend, &raw, b"")),
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
            assert_eq!(keys(&find_route(c.request, c.config, c.attrs)), vec!["attrs", "config", "request"]);
            assert_eq!(keys(&job("1", c.attrs)), vec!["attrs", "global_config", "snowflake"]);
        });
    }

    #[test]
    fn bodies_are_signed_byte_arrays_or_null() {
        with(|c| {
            let raw = PluginRequest::from_view(c.request, None);
            assert_eq!(parsed(&transform_request(c, &raw, &raw, &[104, 200]))["request_body_bytes"], json!([104, -56]));
            let mut get = raw.clone();
            get.method = "GET".into();
            get.headers.clear();
            assert_eq!(parsed(&transform_request(c, &raw, &get, b""))["request_body_bytes"], Value::Null);
            let resp = ResponseParts { status: 200, headers: vec![] };
            assert_eq!(parsed(&transform_response(c, &resp, &resp, b""))["response_body_bytes"], Value::Null);
            assert_eq!(parsed(&transform_response(c, &resp, &resp, b"ok"))["response_body_bytes"], json!([111, 107]));
        });
    }

    #[test]
    fn the_sink_says_why_and_handle_carries_the_body() {
        let r = request();
        let v = parsed(&sink_handle("1", &r, "{}", &Map::new(), &SinkReason::no_route(), b"x"));
        assert_eq!((v["origin"].as_str(), v["status"].as_u64()), (Some("NgReverseProxy"), Some(404)));
        assert_eq!(v["body_bytes"], json!([120]));
        assert!(parsed(&sink_matches("1", &r, "{}", &Map::new(), &SinkReason::no_route())).get("body_bytes").is_none());
    }

    #[test]
    fn handle_request_nests_the_body_in_the_request() {
        let v = parsed(&handle_request(&request(), b"ab"));
        assert_eq!(v["request"]["request_body_bytes"], json!([97, 98]));
        let mut get = request();
        get.method = "GET".into();
        get.headers.retain(|(k, _)| k != "Content-Length");
        assert!(parsed(&handle_request(&get, b"")).get("request").unwrap().get("request_body_bytes").is_none());
    }

    /// Every step's text is the bytes serde_json writes for the tree the step was built as, with
    /// what needs escaping, non-ASCII text, attributes and bodies.
    #[test]
    fn every_context_is_the_text_of_its_tree() {
        let mut request = request();
        request.uri = "/\u{e9}?q=\"1\"&q=%E2%9C%93".into();
        request.headers.push(("X-Odd".into(), "a\u{1}b\t\"c\" \u{4e2d}".into()));
        request.headers.push(("Cookie".into(), "k=v; q=\"w\"".into()));
        let route = RouteInfo {
            id: "r\"1".into(),
            name: "r\u{e9}".into(),
            domains: vec!["a.test/x".into()],
            targets: vec![Target { hostname: "b".into(), port: 8080, tls: true }],
            root: "/api".into(),
        }
        .json()
        .to_string();
        let config = json!({"source": {"kind": "Local", "path": "p"}, "max_memory_usage": 0.0, "config": {"k\n": "v"}})
            .to_string();
        let mut attrs = Map::new();
        attrs.insert("otoroshi.core.Foo".into(), json!({"a": [1, "\u{7f}"], "b": null}));
        for attrs in [Map::new(), attrs] {
            let c = Context { snowflake: "4242", request: &request, route: &route, config: &config, attrs: &attrs };
            let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
            assert_eq!(text(matches_route(&c)), tree::matches_route(&c).to_string());
            assert_eq!(text(pre_route(&c)), tree::pre_route(&c).to_string());
            assert_eq!(text(access(&c)), tree::access(&c).to_string());
            assert_eq!(
                text(find_route(&request, &config, &attrs)),
                tree::find_route(&request, &config, &attrs).to_string()
            );
            let raw = PluginRequest::from_view(&request, None);
            let mut sent = raw.clone();
            sent.method = "GET".into();
            for (body, to) in [(&b"\xff\x00{}"[..], &raw), (&b""[..], &raw), (&b""[..], &sent)] {
                assert_eq!(
                    text(transform_request(&c, &raw, to, body)),
                    tree::transform_request(&c, &raw, to, body).to_string()
                );
                let backend = Target { hostname: "h".into(), port: 80, tls: false }.json();
                let to = PluginRequest { backend: Some(backend.clone()), ..to.clone() };
                assert_eq!(
                    text(call_backend(&c, &backend, &to, body)),
                    tree::call_backend(&c, &backend, &to, body).to_string()
                );
                let resp = ResponseParts {
                    status: 201,
                    headers: vec![("Set-Cookie".into(), "s=1; Path=/".into()), ("X-R".into(), "\u{1f600}".into())],
                };
                let other = ResponseParts { status: 500, headers: vec![] };
                assert_eq!(
                    text(transform_response(&c, &resp, &other, body)),
                    tree::transform_response(&c, &resp, &other, body).to_string()
                );
                let reason = SinkReason { origin: "NgErrorHandler", status: 502, message: "bad \"gateway\"".into() };
                assert_eq!(
                    text(sink_matches("1", &request, &config, &attrs, &reason)),
                    tree::sink_matches("1", &request, &config, &attrs, &reason).to_string()
                );
                assert_eq!(
                    text(sink_handle("1", &request, &config, &attrs, &reason, body)),
                    tree::sink_handle("1", &request, &config, &attrs, &reason, body).to_string()
                );
                assert_eq!(text(handle_request(&request, body)), tree::handle_request(&request, body).to_string());
                let mut get = request.clone();
                get.method = "GET".into();
                get.headers.retain(|(k, _)| k != "Content-Length");
                assert_eq!(text(handle_request(&get, body)), tree::handle_request(&get, body).to_string());
            }
            assert_eq!(text(job("9", &attrs)), tree::job("9", &attrs).to_string());
        }
    }
}
