//! The output of each step, read as Otoroshi reads it (MAIF/otoroshi
//! `app/next/plugins/wasm.scala`): every field optional with Otoroshi's default, bodies by
//! [`extract_body`]'s precedence, the `attrs` changes applied, and Otoroshi's answer when the call
//! fails or its output is not JSON. The results are server-neutral verdicts.

use serde_json::{Map, Value};

use super::route::LocalResponse;
use super::view::Cookie;
use crate::extism::body::{extract_body, whole};
use crate::extism::call::CallError;

/// A call's result as the parsers take it: the output bytes, or why there are none.
pub type CallResult<'a> = Result<&'a [u8], &'a CallError>;

/// wasm4s's error JSON for a failed call: `{"error": message}`.
fn call_error_json(e: &CallError) -> Value {
    serde_json::json!({ "error": e.to_string() })
}

/// The request's attributes as plugins change them with an output's `attrs`
/// (`{"set": {...}, "del": [...], "clear": bool}`), and as the next plugins see them in their
/// input. Otoroshi keeps only the attributes it knows (typed keys); here any key is kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attrs(pub Map<String, Value>);

impl Attrs {
    #[must_use]
    pub fn json(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// Otoroshi's `AttrsHelper.updateAttrs`: `clear` empties (and nothing else applies), else
    /// `del` then `set`.
    pub fn apply(&mut self, output: &Value) {
        let Some(changes) = output.get("attrs").and_then(Value::as_object) else { return };
        if changes.get("clear").and_then(Value::as_bool).unwrap_or(false) {
            self.0.clear();
            return;
        }
        if let Some(del) = changes.get("del").and_then(Value::as_array) {
            if del.iter().all(Value::is_string) {
                for k in del.iter().filter_map(Value::as_str) {
                    self.0.remove(k);
                }
            }
        }
        if let Some(set) = changes.get("set").and_then(Value::as_object) {
            for (k, v) in set {
                self.0.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `asOpt[Int]`: a whole number that fits 32 bits.
fn int(doc: &Value, key: &str) -> Option<i64> {
    doc.get(key).and_then(whole).filter(|n| i32::try_from(*n).is_ok())
}

/// A status with Otoroshi's default; one a server cannot send is an error.
fn status(doc: &Value, default: u16) -> Result<u16, String> {
    match int(doc, "status") {
        None => Ok(default),
        Some(n) if (100..=999).contains(&n) => Ok(n as u16),
        Some(n) => Err(format!("the plugin answered status {n}, which is not an HTTP status")),
    }
}

/// `asOpt[Map[String, String]]`: a map whose values are all strings, else nothing.
fn string_map(v: Option<&Value>) -> Option<Vec<(String, String)>> {
    v?.as_object()?.iter().map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect()
}

fn header_of<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    super::view::header(headers, name)
}

/// `WasmUtils.convertJsonCookies` (requests and pass-through responses: no default path) and
/// `convertJsonPlayCookies` (responses the plugin makes: path `/` by default): each cookie needs a
/// `name` and a `value`. `None` when `cookies` is not a list of maps.
fn cookies(doc: &Value, default_path: Option<&str>) -> Result<Option<Vec<Cookie>>, String> {
    let Some(list) = doc.get("cookies").and_then(Value::as_array) else { return Ok(None) };
    if !list.iter().all(Value::is_object) {
        return Ok(None);
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let text = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
            Ok(Cookie {
                name: text("name").ok_or_else(|| format!("cookies[{i}] has no name"))?,
                value: text("value").ok_or_else(|| format!("cookies[{i}] has no value"))?,
                max_age: c.get("maxAge").and_then(whole),
                path: text("path").or_else(|| default_path.map(str::to_owned)),
                domain: text("domain"),
                secure: c.get("secure").and_then(Value::as_bool).unwrap_or(false),
                http_only: c.get("httpOnly").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

/// A response: `headers` with `Content-Type` set to `content_type`, then one `Set-Cookie` per
/// cookie.
fn respond(
    status: u16,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    cookies: &[Cookie],
    body: Vec<u8>,
) -> LocalResponse {
    let mut out: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| content_type.is_none() || !k.eq_ignore_ascii_case("content-type"))
        .collect();
    if let Some(ct) = content_type {
        out.insert(0, ("Content-Type".into(), ct));
    }
    out.extend(cookies.iter().map(|c| ("Set-Cookie".to_owned(), c.set_cookie())));
    LocalResponse { status, headers: out, body }
}

fn parse(output: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(output).map_err(|e| format!("the plugin's output is not JSON: {e}"))
}

/// MatchRoute: `result` (default false); a failed call does not match.
pub fn matches_route(result: CallResult<'_>, attrs: &mut Attrs) -> bool {
    let Ok(Ok(doc)) = result.map(parse) else { return false };
    attrs.apply(&doc);
    doc.get("result").and_then(Value::as_bool).unwrap_or(false)
}

/// The route a Router plugin found.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundRoute {
    /// Otoroshi's `NgRoute` JSON, as the plugin gave it.
    pub route: Value,
    pub path: String,
    pub path_params: Vec<(String, String)>,
    pub no_more_segments: bool,
}

/// Router: `{route, path, path_params, no_more_segments}`; a failed call, or a `route` that is
/// not a map or a `path` that is not text, finds nothing.
pub fn find_route(result: CallResult<'_>, attrs: &mut Attrs) -> Option<FoundRoute> {
    let doc = parse(result.ok()?).ok()?;
    attrs.apply(&doc);
    let route = doc.get("route").filter(|r| r.is_object())?.clone();
    Some(FoundRoute {
        route,
        path: doc.get("path")?.as_str()?.to_owned(),
        path_params: string_map(doc.get("path_params")).unwrap_or_default(),
        no_more_segments: doc.get("no_more_segments").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// What a PreRoute or ValidateAccess plugin decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Continue,
    Respond(LocalResponse),
}

/// PreRoute: `{"error": true, "status" (200), "headers" ({"Content-Type": "application/json"}),
/// body}` answers instead of the origin; anything else lets the request go on. A failed call, or
/// an output that is not JSON, answers 500.
pub fn pre_route(result: CallResult<'_>, attrs: &mut Attrs) -> Gate {
    let output = match result {
        Err(e) => return Gate::Respond(LocalResponse::json(500, &call_error_json(e))),
        Ok(o) => o,
    };
    let doc = match parse(output) {
        Ok(d) => d,
        Err(e) => return Gate::Respond(LocalResponse::json(500, &serde_json::json!({ "error": e }))),
    };
    attrs.apply(&doc);
    if !doc.get("error").and_then(Value::as_bool).unwrap_or(false) {
        return Gate::Continue;
    }
    let built = (|| {
        let status = status(&doc, 200)?;
        let body = extract_body(&doc, output)?.map(|b| b.0).unwrap_or_default();
        let headers =
            string_map(doc.get("headers")).unwrap_or_else(|| vec![("Content-Type".into(), "application/json".into())]);
        let content_type = header_of(&headers, "Content-Type").unwrap_or("application/json").to_owned();
        Ok::<_, String>(respond(status, headers, Some(content_type), &[], body))
    })();
    Gate::Respond(built.unwrap_or_else(|e| LocalResponse::json(500, &serde_json::json!({ "error": e }))))
}

/// ValidateAccess: `result: true` lets the request in; otherwise Otoroshi's error response with
/// `error.status` (403) and `error.message` ("An error occurred"). A failed call is a 400 with its
/// error. `request_headers` decide between an HTML and a JSON error (see
/// [`LocalResponse::otoroshi_error`]).
pub fn access(result: CallResult<'_>, attrs: &mut Attrs, request_headers: &[(String, String)]) -> Gate {
    let doc = match result.map_err(CallError::to_string).and_then(parse) {
        Ok(d) => d,
        Err(e) => return Gate::Respond(LocalResponse::otoroshi_error(400, &e, request_headers)),
    };
    attrs.apply(&doc);
    if doc.get("result").and_then(Value::as_bool).unwrap_or(false) {
        return Gate::Continue;
    }
    let empty = Value::Object(Map::new());
    let error = doc.get("error").filter(|e| e.is_object()).unwrap_or(&empty);
    let message = error.get("message").and_then(Value::as_str).unwrap_or("An error occurred");
    match status(error, 403) {
        Ok(s) => Gate::Respond(LocalResponse::otoroshi_error(s, message, request_headers)),
        Err(e) => Gate::Respond(LocalResponse::otoroshi_error(500, &e, request_headers)),
    }
}

/// The error form of a transformer: `{"error": true, "status" (500), "headers", "cookies", body}`,
/// with `Content-Type` from the headers or `application/octet-stream`.
fn transformer_error(doc: &Value, output: &[u8]) -> Result<LocalResponse, String> {
    let status = status(doc, 500)?;
    let headers = string_map(doc.get("headers")).unwrap_or_default();
    let cookies = cookies(doc, Some("/"))?.unwrap_or_default();
    let content_type = header_of(&headers, "Content-Type").unwrap_or("application/octet-stream").to_owned();
    let body = extract_body(doc, output)?.map(|b| b.0).unwrap_or_default();
    Ok(respond(status, headers, Some(content_type), &cookies, body))
}

/// A failed transformer call: Otoroshi answers 400 with the error JSON.
fn transformer_failed(e: &CallError) -> LocalResponse {
    LocalResponse::json(400, &call_error_json(e))
}

/// An output that cannot be used (not JSON, a bad status or cookie): 500.
fn unusable(message: String) -> LocalResponse {
    LocalResponse::json(500, &serde_json::json!({ "error": message }))
}

/// What a request transformer changes; `None` keeps what the request has.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestChanges {
    pub method: Option<String>,
    pub url: Option<String>,
    /// Replaces every header.
    pub headers: Option<Vec<(String, String)>>,
    /// Replaces the request's cookies (the `Cookie` header).
    pub cookies: Option<Vec<Cookie>>,
    /// Replaces the body.
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestVerdict {
    Continue(RequestChanges),
    Respond(LocalResponse),
}

/// TransformRequest: the changes, or the error form's response.
pub fn transform_request(result: CallResult<'_>, attrs: &mut Attrs) -> RequestVerdict {
    let output = match result {
        Err(e) => return RequestVerdict::Respond(transformer_failed(e)),
        Ok(o) => o,
    };
    let doc = match parse(output) {
        Ok(d) => d,
        Err(e) => return RequestVerdict::Respond(unusable(e)),
    };
    attrs.apply(&doc);
    if doc.get("error").and_then(Value::as_bool).unwrap_or(false) {
        return RequestVerdict::Respond(transformer_error(&doc, output).unwrap_or_else(unusable));
    }
    let changes = (|| {
        Ok::<_, String>(RequestChanges {
            method: doc.get("method").and_then(Value::as_str).map(str::to_owned),
            url: doc.get("url").and_then(Value::as_str).map(str::to_owned),
            headers: string_map(doc.get("headers")),
            cookies: cookies(&doc, None)?,
            body: extract_body(&doc, output)?.map(|b| b.0),
        })
    })();
    match changes {
        Ok(c) => RequestVerdict::Continue(c),
        Err(e) => RequestVerdict::Respond(unusable(e)),
    }
}

/// What a response transformer changes. Note Otoroshi's default: without `status` the status
/// becomes 200 (it is not kept).
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseChanges {
    pub status: u16,
    pub headers: Option<Vec<(String, String)>>,
    /// Replaces the response's cookies (its `Set-Cookie` headers).
    pub cookies: Option<Vec<Cookie>>,
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseVerdict {
    Continue(ResponseChanges),
    Respond(LocalResponse),
}

/// TransformResponse: the changes, or the error form's response.
pub fn transform_response(result: CallResult<'_>, attrs: &mut Attrs) -> ResponseVerdict {
    let output = match result {
        Err(e) => return ResponseVerdict::Respond(transformer_failed(e)),
        Ok(o) => o,
    };
    let doc = match parse(output) {
        Ok(d) => d,
        Err(e) => return ResponseVerdict::Respond(unusable(e)),
    };
    attrs.apply(&doc);
    if doc.get("error").and_then(Value::as_bool).unwrap_or(false) {
        return ResponseVerdict::Respond(transformer_error(&doc, output).unwrap_or_else(unusable));
    }
    let changes = (|| {
        Ok::<_, String>(ResponseChanges {
            status: status(&doc, 200)?,
            headers: string_map(doc.get("headers")),
            cookies: cookies(&doc, None)?,
            body: extract_body(&doc, output)?.map(|b| b.0),
        })
    })();
    match changes {
        Ok(c) => ResponseVerdict::Continue(c),
        Err(e) => ResponseVerdict::Respond(unusable(e)),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendVerdict {
    /// `delegates_call: true`: call the origin as usual.
    Delegate,
    Respond(LocalResponse),
}

/// CallBackend: `delegates_call`, or the answer (`status` 200, `headers` `{"Content-Type":
/// "application/json"}`, body). Output that is not JSON counts as `{}` (an empty 200), a failed
/// call as a 400 with the error, as in Otoroshi.
pub fn call_backend(result: CallResult<'_>, attrs: &mut Attrs) -> BackendVerdict {
    let output = match result {
        Err(e) => {
            return BackendVerdict::Respond(LocalResponse {
                status: 400,
                headers: vec![],
                body: call_error_json(e).to_string().into_bytes(),
            })
        }
        Ok(o) => o,
    };
    let doc = parse(output).unwrap_or_else(|_| Value::Object(Map::new()));
    attrs.apply(&doc);
    if doc.get("delegates_call").and_then(Value::as_bool) == Some(true) {
        return BackendVerdict::Delegate;
    }
    let built = (|| {
        let status = status(&doc, 200)?;
        let headers =
            string_map(doc.get("headers")).unwrap_or_else(|| vec![("Content-Type".into(), "application/json".into())]);
        let body = extract_body(&doc, output)?.map(|b| b.0).unwrap_or_default();
        Ok::<_, String>(respond(status, headers, None, &[], body))
    })();
    BackendVerdict::Respond(built.unwrap_or_else(unusable))
}

/// Sink `sink_matches`: `result` (default false); a failed call does not match.
pub fn sink_matches(result: CallResult<'_>, attrs: &mut Attrs) -> bool {
    matches_route(result, attrs)
}

/// Sink `sink_handle`: `status` (200), `headers` (`{"Content-Type": "application/json"}`; the
/// content type is looked up as `Content-Type` or `content-type` only, as Otoroshi does), body.
/// A failed call answers 500 with the error.
pub fn sink_handle(result: CallResult<'_>, attrs: &mut Attrs) -> LocalResponse {
    let output = match result {
        Err(e) => return LocalResponse::json(500, &call_error_json(e)),
        Ok(o) => o,
    };
    let doc = match parse(output) {
        Ok(d) => d,
        Err(e) => return unusable(e),
    };
    attrs.apply(&doc);
    let built = (|| {
        let status = status(&doc, 200)?;
        let all =
            string_map(doc.get("headers")).unwrap_or_else(|| vec![("Content-Type".into(), "application/json".into())]);
        let exact = |name: &str| all.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let content_type =
            exact("Content-Type").or_else(|| exact("content-type")).unwrap_or_else(|| "application/json".into());
        let headers: Vec<(String, String)> =
            all.into_iter().filter(|(k, _)| !k.eq_ignore_ascii_case("content-type")).collect();
        let body = extract_body(&doc, output)?.map(|b| b.0).unwrap_or_default();
        Ok::<_, String>(respond(status, headers, Some(content_type), &[], body))
    })();
    built.unwrap_or_else(unusable)
}

/// HandlesRequest: `status` (200), `headers` ({}), `cookies`, and only `body` (text) as the
/// body, as Otoroshi's `WasmRequestHandler`. A failed call answers 500 with the error.
pub fn handle_request(result: CallResult<'_>) -> LocalResponse {
    let output = match result {
        Err(e) => return LocalResponse::json(500, &call_error_json(e)),
        Ok(o) => o,
    };
    let built = (|| {
        let doc = parse(output)?;
        let status = status(&doc, 200)?;
        let headers = string_map(doc.get("headers")).unwrap_or_default();
        let cookies = cookies(&doc, None)?.unwrap_or_default();
        let body = doc.get("body").and_then(Value::as_str).unwrap_or_default().as_bytes().to_vec();
        Ok::<_, String>(respond(status, headers, None, &cookies, body))
    })();
    built.unwrap_or_else(unusable)
}

#[cfg(test)]
mod tests;
