//! Outputs as the Wasmo templates of Otoroshi write them (seed 000), and the edge cases Otoroshi's
//! readers define.

use super::*;
use crate::extism::call::CallError;
use serde_json::json;

fn ok(text: &str) -> CallResult<'_> {
    Ok(text.as_bytes())
}

fn header<'r>(r: &'r LocalResponse, name: &str) -> Option<&'r str> {
    r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn failed() -> CallError {
    CallError::Plugin { message: "boom".into(), code: 1 }
}

#[test]
fn route_matcher_template() {
    let mut a = Attrs::default();
    assert!(matches_route(ok(r#"{"result":true}"#), &mut a));
    assert!(!matches_route(ok(r#"{"result":"true"}"#), &mut a));
    assert!(!matches_route(ok("not json"), &mut a));
    assert!(!matches_route(Err(&failed()), &mut a));
}

#[test]
fn pre_route_template_lets_through_or_answers() {
    let mut a = Attrs::default();
    assert_eq!(pre_route(ok(r#"{"result":true}"#), &mut a), Gate::Continue);
    let Gate::Respond(r) = pre_route(
        ok(r#"{"error":true,"status":401,"headers":{"content-type":"text/plain","x-a":"1"},"body_str":"nope"}"#),
        &mut a,
    ) else {
        panic!()
    };
    assert_eq!((r.status, r.body.as_slice()), (401, &b"nope"[..]));
    assert_eq!(header(&r, "content-type"), Some("text/plain"));
    assert_eq!(header(&r, "x-a"), Some("1"));
    // Otoroshi's defaults for the error form: status 200, JSON.
    let Gate::Respond(r) = pre_route(ok(r#"{"error":true,"body_json":{"a":1}}"#), &mut a) else { panic!() };
    assert_eq!((r.status, header(&r, "Content-Type")), (200, Some("application/json")));
    assert_eq!(r.body, br#"{"a":1}"#);
    let Gate::Respond(r) = pre_route(Err(&failed()), &mut a) else { panic!() };
    assert_eq!((r.status, r.body.as_slice()), (500, &br#"{"error":"boom"}"#[..]));
}

#[test]
fn access_control_template_allows_or_denies_with_its_status_and_message() {
    let mut a = Attrs::default();
    let json_client = vec![("Accept".to_owned(), "application/json".to_owned())];
    assert_eq!(access(ok(r#"{"result":true}"#), &mut a, &json_client), Gate::Continue);
    let Gate::Respond(r) = access(
        ok(r#"{"result":false,"error":{"message":"you're not authorized","status":401}}"#),
        &mut a,
        &json_client,
    ) else {
        panic!()
    };
    assert_eq!(r.status, 401);
    assert_eq!(r.body, br#"{"Otoroshi-Error":"you're not authorized"}"#);
    let Gate::Respond(r) = access(ok(r#"{"result":false}"#), &mut a, &json_client) else { panic!() };
    assert_eq!((r.status, header(&r, "Otoroshi-Error-Msg")), (403, Some("An error occurred")));
    let Gate::Respond(r) = access(Err(&failed()), &mut a, &json_client) else { panic!() };
    assert_eq!(r.status, 400);
}

#[test]
fn request_transformer_template_replaces_method_headers_and_body() {
    let mut a = Attrs::default();
    let RequestVerdict::Continue(c) = transform_request(
        ok(r#"{"method":"POST","headers":{"Content-Type":"application/json"},"body_json":{"foo":"bar"}}"#),
        &mut a,
    ) else {
        panic!()
    };
    assert_eq!(c.method.as_deref(), Some("POST"));
    assert_eq!(c.headers, Some(vec![("Content-Type".into(), "application/json".into())]));
    assert_eq!(c.body.as_deref(), Some(&br#"{"foo":"bar"}"#[..]));
    assert_eq!((c.url, c.cookies), (None, None));
}

#[test]
fn a_transformer_without_body_keeps_the_original() {
    let mut a = Attrs::default();
    let RequestVerdict::Continue(c) = transform_request(ok(r#"{"body_str":"  "}"#), &mut a) else { panic!() };
    assert_eq!(c.body, None);
}

#[test]
fn request_cookies_replace_the_requests() {
    let mut a = Attrs::default();
    let RequestVerdict::Continue(c) =
        transform_request(ok(r#"{"cookies":[{"name":"a","value":"1","httpOnly":true}]}"#), &mut a)
    else {
        panic!()
    };
    assert_eq!(
        c.cookies.unwrap()[0],
        Cookie { name: "a".into(), value: "1".into(), http_only: true, ..Default::default() }
    );
    let RequestVerdict::Respond(r) = transform_request(ok(r#"{"cookies":[{"value":"1"}]}"#), &mut a) else { panic!() };
    assert_eq!(r.status, 500);
}

#[test]
fn the_transformers_error_form_answers_with_its_defaults() {
    let mut a = Attrs::default();
    let RequestVerdict::Respond(r) =
        transform_request(ok(r#"{"error":true,"body_base64":"aGk=","cookies":[{"name":"c","value":"v"}]}"#), &mut a)
    else {
        panic!()
    };
    assert_eq!((r.status, header(&r, "Content-Type")), (500, Some("application/octet-stream")));
    assert_eq!(r.body, b"hi");
    assert_eq!(header(&r, "Set-Cookie"), Some("c=v; Path=/"));
    let ResponseVerdict::Respond(r) = transform_response(Err(&failed()), &mut a) else { panic!() };
    assert_eq!(r.status, 400);
}

#[test]
fn response_transformer_template_and_the_200_default() {
    let mut a = Attrs::default();
    let ResponseVerdict::Continue(c) = transform_response(
        ok(r#"{"status":201,"headers":{"Content-Type":"application/json"},"body_json":{"foo":"bar"}}"#),
        &mut a,
    ) else {
        panic!()
    };
    assert_eq!((c.status, c.body.as_deref()), (201, Some(&br#"{"foo":"bar"}"#[..])));
    let ResponseVerdict::Continue(c) = transform_response(ok(r#"{"headers":{"a":1}}"#), &mut a) else { panic!() };
    assert_eq!((c.status, c.headers), (200, None));
    let ResponseVerdict::Respond(r) = transform_response(ok(r#"{"status":42}"#), &mut a) else { panic!() };
    assert_eq!(r.status, 500);
}

#[test]
fn backend_template_answers_with_otoroshis_default_content_type() {
    let mut a = Attrs::default();
    // The Wasmo backend template puts Content-Type at the top level, not in headers: Otoroshi then
    // answers with its default headers.
    let BackendVerdict::Respond(r) =
        call_backend(ok(r#"{"Content-Type":"text/html","body":"<html></html>","status":200}"#), &mut a)
    else {
        panic!()
    };
    assert_eq!(
        (r.status, header(&r, "Content-Type"), r.body.as_slice()),
        (200, Some("application/json"), &b"<html></html>"[..])
    );
    assert_eq!(call_backend(ok(r#"{"delegates_call":true}"#), &mut a), BackendVerdict::Delegate);
    let BackendVerdict::Respond(r) = call_backend(ok("garbage"), &mut a) else { panic!() };
    assert_eq!((r.status, r.body.len()), (200, 0));
    let BackendVerdict::Respond(r) = call_backend(Err(&failed()), &mut a) else { panic!() };
    assert_eq!((r.status, r.body.as_slice()), (400, &br#"{"error":"boom"}"#[..]));
}

#[test]
fn sink_template() {
    let mut a = Attrs::default();
    assert!(sink_matches(ok(r#"{"result":true}"#), &mut a));
    let r = sink_handle(
        ok(
            r#"{"status":200,"headers":{"Content-Type":"application/json"},"body_json":{"WASM_SINK_RESPONSE":"Unknown path and domain for /x"}}"#,
        ),
        &mut a,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers, vec![("Content-Type".to_owned(), "application/json".to_owned())]);
    assert_eq!(r.body, br#"{"WASM_SINK_RESPONSE":"Unknown path and domain for /x"}"#);
    // Only these two spellings are looked up, as in Otoroshi.
    let r = sink_handle(ok(r#"{"headers":{"CONTENT-TYPE":"text/plain"},"body":"x"}"#), &mut a);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(sink_handle(Err(&failed()), &mut a).status, 500);
}

#[test]
fn handle_request_takes_only_the_body_text() {
    let r = handle_request(ok(
        r#"{"status":202,"headers":{"x":"y"},"body":"hello","body_json":{"a":1},"cookies":[{"name":"s","value":"1","path":"/"}]}"#,
    ));
    assert_eq!((r.status, r.body.as_slice()), (202, &b"hello"[..]));
    assert_eq!(header(&r, "Set-Cookie"), Some("s=1; Path=/"));
    assert_eq!(handle_request(ok(r#"{}"#)).status, 200);
    assert_eq!(handle_request(Err(&failed())).status, 500);
}

#[test]
fn router_output() {
    let mut a = Attrs::default();
    let found =
        find_route(ok(r#"{"route":{"id":"r"},"path":"/x","path_params":{"id":"1"},"no_more_segments":true}"#), &mut a)
            .unwrap();
    assert_eq!((found.path.as_str(), found.no_more_segments), ("/x", true));
    assert_eq!(found.path_params, vec![("id".into(), "1".into())]);
    assert!(find_route(ok(r#"{"route":{"id":"r"}}"#), &mut a).is_none());
    assert!(find_route(Err(&failed()), &mut a).is_none());
}

#[test]
fn outputs_change_the_requests_attributes() {
    let mut a = Attrs::default();
    matches_route(ok(r#"{"result":true,"attrs":{"set":{"a":1,"b":"x"}}}"#), &mut a);
    assert_eq!(a.json(), json!({"a": 1, "b": "x"}));
    pre_route(ok(r#"{"attrs":{"del":["a"],"set":{"c":true}}}"#), &mut a);
    assert_eq!(a.json(), json!({"b": "x", "c": true}));
    access(ok(r#"{"result":true,"attrs":{"clear":true,"set":{"d":1}}}"#), &mut a, &[]);
    assert_eq!(a.json(), json!({}));
}
