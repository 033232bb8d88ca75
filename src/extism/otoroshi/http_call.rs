//! `proxy_http_call`'s JSON contract, as Otoroshi's `Http.proxyHttpCall` (app/wasm/host.scala).
//!
//! The plugin passes `{"url", "method", "headers", "query", "request_timeout",
//! "follow_redirects", "body_str" | "body" | "body_json" | "body_base64" | "body_bytes"}`; it gets
//! `{"status", "headers", "body_base64"}`. A host outside `allowedHosts` gets a 403 answer, not an
//! error. A call that gets no answer (connection refused, timeout) ends the plugin's call, as the
//! exception does in Otoroshi.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::extism::body::{decode_base64, encode_base64, read_signed_bytes};
use crate::extism::http::{with_query, IncomingResponse, OtoroshiHosts, OutgoingRequest, Url};

/// Otoroshi's default URL when the plugin gives none.
pub const DEFAULT_URL: &str = "https://request.otoroshi.io";
/// `request_timeout` when the plugin gives none (Otoroshi: the cluster worker timeout, else 10 s).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// What to do with one `proxy_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallPlan {
    /// Send this request.
    Send(OutgoingRequest),
    /// The host is not allowed: answer this JSON without calling anyone.
    Denied(String),
}

/// A string map as Play reads `asOpt[Map[String, String]]`: any non-string value makes the whole
/// map absent.
fn string_map(v: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Object(map)) = v else { return Vec::new() };
    map.iter()
        .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default()
}

/// The request body: `body_str` (or `body`), else `body_json` (even `null`), else `body_base64`,
/// else `body_bytes`; unlike the steps' outputs, blank values are not skipped.
fn call_body(ctx: &Value) -> Result<Option<Vec<u8>>, String> {
    if let Some(s) = ctx.get("body_str").and_then(Value::as_str).or_else(|| ctx.get("body").and_then(Value::as_str)) {
        return Ok(Some(s.as_bytes().to_vec()));
    }
    if let Some(v) = ctx.get("body_json") {
        return Ok(Some(v.to_string().into_bytes()));
    }
    if let Some(s) = ctx.get("body_base64").and_then(Value::as_str) {
        return decode_base64(s).map(Some).map_err(|e| format!("body_base64: {e}"));
    }
    Ok(ctx.get("body_bytes").and_then(read_signed_bytes))
}

/// Reads the plugin's call. `wait_ms` is `authorizations.proxyHttpCallTimeout`: Otoroshi waits
/// that long for the answer whatever `request_timeout` says, so the shorter of the two applies.
pub fn plan(ctx: &Value, hosts: &OtoroshiHosts, wait_ms: u64, max_response_size: u64) -> Result<CallPlan, String> {
    let url = ctx.get("url").and_then(Value::as_str).unwrap_or(DEFAULT_URL);
    let parsed = Url::parse(url).map_err(|e| e.to_string())?;
    if !hosts.allows(&parsed.host) {
        return Ok(CallPlan::Denied(denied(&parsed.host)));
    }
    let request_timeout = ctx.get("request_timeout").and_then(Value::as_u64).unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
    Ok(CallPlan::Send(OutgoingRequest {
        method: ctx.get("method").and_then(Value::as_str).unwrap_or("GET").to_owned(),
        url: with_query(url, &string_map(ctx.get("query"))),
        headers: string_map(ctx.get("headers")),
        body: call_body(ctx)?,
        timeout: Duration::from_millis(request_timeout.min(wait_ms)),
        follow_redirects: ctx.get("follow_redirects").and_then(Value::as_bool).unwrap_or(false),
        max_response_size,
    }))
}

/// The answer: status, the first value of each header, the body in base64.
#[must_use]
pub fn answer(response: &IncomingResponse) -> String {
    let mut headers = Map::new();
    for (name, value) in &response.headers {
        headers.entry(name.clone()).or_insert_with(|| Value::from(value.clone()));
    }
    json!({"status": response.status, "headers": headers, "body_base64": encode_base64(&response.body)}).to_string()
}

/// Otoroshi's answer to a call to a host outside `allowedHosts`.
#[must_use]
pub fn denied(host: &str) -> String {
    json!({
        "status": 403,
        "headers": {"content-type": "text/plain"},
        "body_base64": encode_base64(format!("you cannot access host: {host}").as_bytes()),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> OtoroshiHosts {
        OtoroshiHosts::new(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn send(ctx: Value) -> OutgoingRequest {
        match plan(&ctx, &hosts(&[]), 5000, 1 << 20).unwrap() {
            CallPlan::Send(r) => r,
            CallPlan::Denied(d) => panic!("denied: {d}"),
        }
    }

    #[test]
    fn defaults_are_otoroshis() {
        let r = send(json!({}));
        assert_eq!((r.method.as_str(), r.url.as_str(), r.follow_redirects, r.body), ("GET", DEFAULT_URL, false, None));
        assert_eq!(r.timeout, Duration::from_millis(5000));
    }

    #[test]
    fn the_request_is_built_from_the_plugins_json() {
        let r = send(
            json!({"url": "http://api.test/a?x=1", "method": "POST", "headers": {"k": "v"}, "query": {"q": "a b"}, "request_timeout": 300, "follow_redirects": true, "body_json": {"a": 1}}),
        );
        assert_eq!(r.url, "http://api.test/a?x=1&q=a%20b");
        assert_eq!(r.headers, vec![("k".to_owned(), "v".to_owned())]);
        assert_eq!(r.body.as_deref(), Some(&br#"{"a":1}"#[..]));
        assert_eq!(r.timeout, Duration::from_millis(300));
        assert!(r.follow_redirects);
    }

    #[test]
    fn a_header_map_with_a_non_string_value_is_dropped_whole() {
        assert!(send(json!({"headers": {"a": "1", "b": 2}})).headers.is_empty());
    }

    #[test]
    fn body_precedence_does_not_skip_blank_values() {
        assert_eq!(send(json!({"body_str": "", "body_json": 1})).body.as_deref(), Some(&b""[..]));
        assert_eq!(send(json!({"body_json": null, "body_base64": "aGk="})).body.as_deref(), Some(&b"null"[..]));
        assert_eq!(send(json!({"body_base64": "aGk=", "body_bytes": [1]})).body.as_deref(), Some(&b"hi"[..]));
        assert_eq!(send(json!({"body_bytes": [104, -1]})).body.as_deref(), Some(&[104, 255][..]));
    }

    #[test]
    fn a_host_outside_allowed_hosts_gets_a_403_answer() {
        let p = plan(&json!({"url": "http://evil.test/"}), &hosts(&["*.good.test"]), 5000, 1).unwrap();
        let CallPlan::Denied(text) = p else { panic!("sent") };
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], 403);
        assert_eq!(v["headers"]["content-type"], "text/plain");
        assert_eq!(
            crate::extism::body::decode_base64(v["body_base64"].as_str().unwrap()).unwrap(),
            b"you cannot access host: evil.test"
        );
    }

    #[test]
    fn the_answer_has_the_first_value_of_each_header_and_a_base64_body() {
        let text = answer(&IncomingResponse {
            status: 200,
            headers: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            body: b"ok".to_vec(),
        });
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, json!({"status": 200, "headers": {"a": "1"}, "body_base64": "b2s="}));
    }
}
