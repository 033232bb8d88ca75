//! The step behaviours of the Otoroshi test plugin, Rust PDK edition (same
//! protocol as the AssemblyScript one: tests/plugins/otoroshi/README.md).

use super::kit::{handle_string, output_json, parse_int, put_body, set_error, Ctx, Outcome};
use super::types::*;
use extism_pdk::{extism, var, HttpRequest, LogLevel, Memory};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn status_from(s: Option<String>, fallback: u16) -> u16 {
    parse_int(s.as_deref()).and_then(|n| u16::try_from(n).ok()).unwrap_or(fallback)
}

fn text(b: &Option<SignedBytes>) -> Option<String> {
    b.as_ref().map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

fn remove_header_ci(h: &mut Headers, name: &str) {
    h.retain(|k, _| !k.eq_ignore_ascii_case(name));
}

/// `x-add-cookie: name=value` → Otoroshi's output cookie form.
fn cookies_with(ctx: &Ctx, existing: &[Cookie]) -> Option<Vec<Cookie>> {
    let spec = ctx.header("x-add-cookie")?;
    let mut out = existing.to_vec();
    let (name, value) = match spec.find('=') {
        Some(i) => (spec[..i].to_string(), spec[i + 1..].to_string()),
        None => (spec.clone(), String::new()),
    };
    out.push(Cookie { name, value, path: Some("/".into()), ..Default::default() });
    Some(out)
}

/// The error form of PreRoute and the transformers.
fn error_form(ctx: &Ctx, what: &str, forms_header: &str) -> TransformerResponse {
    let mut out = TransformerResponse {
        error: Some(true),
        status: ctx.header("x-status").map(|s| status_from(Some(s), 500)),
        headers: Some(ctx.base_headers("text/plain")),
        ..Default::default()
    };
    put_body(&mut out.body, &ctx.header_or(forms_header, "str"), &format!("{} refused {}", what, ctx.path()), &ctx.tag);
    out
}

fn replace_url_path(url: &str, path: &str) -> String {
    match url.find("://") {
        None => path.to_string(),
        Some(i) => match url[i + 3..].find('/') {
            None => format!("{}{}", url, path),
            Some(j) => format!("{}{}", &url[..i + 3 + j], path),
        },
    }
}

pub fn pre_route(ctx: &Ctx) -> Outcome {
    let _typed: PreRouteContext = ctx.typed()?;
    if ctx.header("x-pre-route").as_deref() == Some("error") {
        let e = error_form(ctx, "pre_route", "x-body-form");
        let out = PreRouteResponse { error: true, status: e.status, headers: e.headers, body: e.body };
        return output_json(&out);
    }
    output_json(&PreRouteResponse { error: false, ..Default::default() })
}

pub fn access(ctx: &Ctx) -> Outcome {
    let _typed: AccessContext = ctx.typed()?;
    let out = match ctx.header("x-deny") {
        None => AccessResponse { result: true, error: None },
        Some(deny) if deny == "bare" => AccessResponse { result: false, error: None },
        Some(deny) => AccessResponse {
            result: false,
            error: Some(AccessError {
                message: if deny.is_empty() {
                    format!("denied by {}", ctx.tag)
                } else {
                    format!("denied by {}: {}", ctx.tag, deny)
                },
                status: ctx.header("x-deny-status").map(|s| status_from(Some(s), 403)),
            }),
        },
    };
    output_json(&out)
}

pub fn transform_request(ctx: &Ctx) -> Outcome {
    let c: RequestTransformerContext = ctx.typed()?;
    if ctx.header("x-transform-request").as_deref() == Some("error") {
        return output_json(&error_form(ctx, "transform_request", "x-request-body-form"));
    }
    let mut headers = c.otoroshi_request.headers.clone();
    headers.insert("x-otoroshi-wasm".into(), ctx.tag.clone());
    headers.insert("x-transformed-by".into(), format!("{} transform_request", ctx.tag));
    if let Some(rm) = ctx.header("x-remove-header") {
        remove_header_ci(&mut headers, &rm);
    }
    let mut out = TransformerResponse {
        headers: Some(headers),
        method: ctx.header("x-set-method"),
        url: ctx.header("x-set-path").map(|p| replace_url_path(&c.otoroshi_request.url, &p)),
        cookies: cookies_with(ctx, &c.otoroshi_request.cookies),
        ..Default::default()
    };
    let original = text(&c.request_body_bytes);
    let forms = ctx.header_or("x-request-body-form", if original.is_some() { "str" } else { "none" });
    let content = format!("transformed by {}: {}", ctx.tag, original.unwrap_or_default());
    put_body(&mut out.body, &forms, &content, &ctx.tag);
    output_json(&out)
}

pub fn transform_response(ctx: &Ctx) -> Outcome {
    let c: ResponseTransformerContext = ctx.typed()?;
    if ctx.header("x-transform-response").as_deref() == Some("error") {
        return output_json(&error_form(ctx, "transform_response", "x-response-body-form"));
    }
    let orig = c.otoroshi_response.status;
    let mut headers = c.otoroshi_response.headers.clone();
    headers.insert("x-otoroshi-wasm".into(), ctx.tag.clone());
    headers.insert("x-response-transformed-by".into(), format!("{} transform_response", ctx.tag));
    headers.insert("x-origin-status".into(), orig.map(|s| s.to_string()).unwrap_or_default());
    if let Some(rm) = ctx.header("x-remove-response-header") {
        remove_header_ci(&mut headers, &rm);
    }
    let status = match ctx.header("x-response-status") {
        Some(s) => Some(status_from(Some(s), 200)),
        None => orig,
    };
    let mut out = TransformerResponse {
        status,
        headers: Some(headers),
        cookies: cookies_with(ctx, &c.otoroshi_response.cookies),
        ..Default::default()
    };
    let original = text(&c.response_body_bytes);
    let forms = ctx.header_or("x-response-body-form", if original.is_some() { "str" } else { "none" });
    let content = format!("transformed by {}: {}", ctx.tag, original.unwrap_or_default());
    put_body(&mut out.body, &forms, &content, &ctx.tag);
    output_json(&out)
}

pub fn matches_route(ctx: &Ctx) -> Outcome {
    let c: MatchRouteContext = ctx.typed()?;
    let result = match ctx.header("x-match") {
        Some(v) => v == "true",
        None => c.request.path.starts_with(&ctx.config_or("match_prefix", "/match")),
    };
    output_json(&ResultResponse { result })
}

fn route_json(id: &str, target: &str) -> Value {
    let (host, port) = match target.rfind(':') {
        Some(i) if i > 0 => (&target[..i], target[i + 1..].parse::<u16>().unwrap_or(80)),
        _ => (target, 80),
    };
    json!({
        "_loc": {"tenant": "default", "teams": ["default"]},
        "id": id,
        "name": id,
        "description": "route chosen by find_route",
        "tags": [],
        "metadata": {},
        "enabled": true,
        "debug_flow": false,
        "export_reporting": false,
        "capture": false,
        "groups": ["default"],
        "frontend": {"domains": [], "strict_path": null, "exact": false, "headers": {}, "query": {}, "methods": []},
        "backend": {
            "targets": [{
                "id": "target_1", "hostname": host, "port": port, "tls": false, "weight": 1,
                "protocol": "HTTP/1.1", "ip_address": null, "predicate": {"type": "AlwaysMatch"}
            }],
            "root": "/",
            "rewrite": false,
            "load_balancing": {"type": "RoundRobin"}
        },
        "backend_ref": null,
        "plugins": []
    })
}

pub fn find_route(ctx: &Ctx) -> Outcome {
    let c: RouterContext = ctx.typed()?;
    let prefix = ctx.config_or("route_prefix", "/routed/");
    let path = c.request.path;
    let none = RouterResponse { route: Value::Null, ..Default::default() };
    let rest = match path.strip_prefix(prefix.as_str()) {
        Some(r) => r,
        None => return output_json(&none),
    };
    let (id, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if id.is_empty() {
        return output_json(&none);
    }
    let mut params = BTreeMap::new();
    params.insert("id".to_string(), id.to_string());
    let out = RouterResponse {
        route: route_json(id, &ctx.config_or("route_target", "127.0.0.1:80")),
        path: Some(path.clone()),
        path_params: Some(params),
        no_more_segments: Some(tail.map_or(true, |t| t.is_empty())),
    };
    output_json(&out)
}

pub fn sink_matches(ctx: &Ctx) -> Outcome {
    let _c: SinkContext = ctx.typed()?;
    output_json(&ResultResponse { result: ctx.header("x-sink").as_deref() != Some("no") })
}

pub fn sink_handle(ctx: &Ctx) -> Outcome {
    let c: SinkContext = ctx.typed()?;
    let report = json!({
        "sink": ctx.tag,
        "path": c.request.path,
        "origin": c.origin,
        "status": c.status,
        "message": c.message,
        "body_length": c.body_bytes.as_ref().map_or(0, |b| b.0.len()),
    });
    let mut out = HttpAnswer {
        status: Some(status_from(ctx.header("x-sink-status"), 404)),
        headers: Some(ctx.base_headers("application/json")),
        ..Default::default()
    };
    match ctx.header("x-body-form") {
        None => out.body.body_json = Some(report),
        Some(forms) => put_body(&mut out.body, &forms, &report.to_string(), &ctx.tag),
    }
    output_json(&out)
}

/// A response built by call_backend / handle_request before its body is put in
/// Otoroshi's form.
struct Reply {
    status: u16,
    headers: Headers,
    content: String,
}

/// Extism `http_request` (the host checks `allowedHosts`): status and body.
pub fn extism_http(url: &str, method: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, Option<String>) {
    let mut req = HttpRequest::new(url).with_method(method);
    for (k, v) in headers {
        req = req.with_header(*k, *v);
    }
    match extism_pdk::http::request::<String>(&req, body.map(|b| b.to_string())) {
        Ok(res) => {
            let body = if res.as_memory().offset() == 0 { None } else { Some(String::from_utf8_lossy(&res.body()).into_owned()) };
            (res.status_code(), body)
        }
        Err(_) => (0, None),
    }
}

fn var_count(key: &str) -> i64 {
    var::get::<String>(key).ok().flatten().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn log(level: LogLevel, message: &str) {
    if let Ok(m) = Memory::from_bytes(message.as_bytes()) {
        m.log(level);
    }
}

/// call_backend / handle_request utility cases (`x-backend`), Extism ABI only.
fn utility(ctx: &Ctx, mode: &str) -> Option<Reply> {
    let mut r = Reply { status: 200, headers: ctx.base_headers("application/json"), content: String::new() };
    match mode {
        "vars" => {
            let key = ctx.header_or("x-var", "counter");
            let n = var_count(&key) + 1;
            let _ = var::set(&key, n.to_string());
            r.headers.insert("x-var-value".into(), n.to_string());
            r.content = json!({"var": key, "value": n}).to_string();
        }
        "vars-delete" => {
            let key = ctx.header_or("x-var", "counter");
            let k = Memory::from_bytes(key.as_bytes()).ok()?;
            // SAFETY: Extism host function; value handle 0 deletes the variable.
            unsafe { extism::var_set(k.offset(), 0) };
            let after = var::get::<String>(&key).ok().flatten();
            r.content = json!({"var": key, "after_delete": after}).to_string();
        }
        "config" => {
            let key = ctx.header_or("x-config-key", "tag");
            r.content = json!({
                "key": key,
                "config_get": ctx.config_from_extism(&key),
                "context": ctx.context_config(&key),
            })
            .to_string();
        }
        "http" => match ctx.config("http_url") {
            None => {
                r.status = 500;
                r.content = json!({"error": "config http_url is not set"}).to_string();
            }
            Some(url) => {
                let method = ctx.header_or("x-http-method", "GET");
                let ping = format!("ping from {}", ctx.tag);
                let body = if method == "GET" { None } else { Some(ping.as_str()) };
                let (status, res) =
                    extism_http(&url, &method, &[("x-otoroshi-wasm", &ctx.tag), ("content-type", "text/plain")], body);
                r.headers.insert("x-http-status".into(), status.to_string());
                r.content = json!({"url": url, "status": status, "body": res}).to_string();
            }
        },
        "log" => {
            let msg = ctx.header_or("x-log-message", "hello");
            log(LogLevel::Debug, &format!("{} log debug: {}", ctx.tag, msg));
            log(LogLevel::Info, &format!("{} log info: {}", ctx.tag, msg));
            log(LogLevel::Warn, &format!("{} log warn: {}", ctx.tag, msg));
            log(LogLevel::Error, &format!("{} log error: {}", ctx.tag, msg));
            r.content = json!({"logged": msg}).to_string();
        }
        _ => return None,
    }
    Some(r)
}

fn default_reply(ctx: &Ctx, what: &str, body: Option<String>) -> Reply {
    let mut headers = ctx.base_headers("text/plain");
    headers.insert("x-backend-method".into(), ctx.method());
    Reply {
        status: status_from(ctx.header("x-backend-status"), 200),
        headers,
        content: format!("{} {}: {} {} body={}", ctx.tag, what, ctx.method(), ctx.path(), body.unwrap_or_default()),
    }
}

pub fn call_backend(ctx: &Ctx) -> Outcome {
    let c: BackendContext = ctx.typed()?;
    let mode = ctx.header_or("x-backend", "answer");
    if mode == "delegate" {
        return output_json(&HttpAnswer { delegates_call: Some(true), ..Default::default() });
    }
    let r = utility(ctx, &mode).unwrap_or_else(|| default_reply(ctx, "call_backend", text(&c.request_body_bytes)));
    let mut out = HttpAnswer { status: Some(r.status), headers: Some(r.headers), ..Default::default() };
    put_body(&mut out.body, &ctx.header_or("x-body-form", "str"), &r.content, &ctx.tag);
    output_json(&out)
}

/// HandlesRequest answers {status, headers, cookies, body}; Otoroshi reads only
/// `body` (a string) there.
pub fn handle_request(ctx: &Ctx) -> Outcome {
    let c: RequestHandlerContext = ctx.typed()?;
    let mode = ctx.header_or("x-backend", "answer");
    let r = utility(ctx, &mode).unwrap_or_else(|| default_reply(ctx, "handle_request", text(&c.request.request_body_bytes)));
    let mut out = HttpAnswer {
        status: Some(r.status),
        headers: Some(r.headers),
        cookies: cookies_with(ctx, &[]),
        ..Default::default()
    };
    out.body.body = Some(r.content);
    output_json(&out)
}

/// job_start / job_run / job_stop: count calls in an Extism var, log, and POST a
/// JSON event to `job_url` when configured.
pub fn job(ctx: &Ctx) -> Outcome {
    let key = format!("job.{}.count", ctx.step);
    let n = var_count(&key) + 1;
    let _ = var::set(&key, n.to_string());
    log(LogLevel::Info, &format!("{} {} #{}", ctx.tag, ctx.step, n));
    if let Some(fail) = ctx.config("job_fail") {
        if fail == ctx.step || fail == "*" {
            set_error(&format!("forced failure in {}", ctx.step));
            return Err(1);
        }
    }
    if let Some(url) = ctx.config("job_url") {
        let ev = json!({
            "event": ctx.step,
            "count": n,
            "tag": ctx.tag,
            "snowflake": ctx.raw.get("snowflake").cloned().unwrap_or(Value::Null),
        });
        extism_http(
            &url,
            "POST",
            &[("content-type", "application/json"), ("x-otoroshi-wasm", &ctx.tag)],
            Some(&ev.to_string()),
        );
    }
    output_json(&json!({}))
}

/// Reads the context, runs the prologue (x-fail, x-check-context) and the step;
/// the value an export returns.
pub fn run(step: &'static str, tag: &str, f: fn(&Ctx) -> Outcome) -> i32 {
    let ctx = match Ctx::read(step, tag) {
        Ok(c) => c,
        Err(rc) => return rc,
    };
    match ctx.prologue().and_then(|_| f(&ctx)) {
        Ok(()) => 0,
        Err(rc) => rc,
    }
}

pub fn run_job(step: &'static str, tag: &str) -> i32 {
    match job(&Ctx::read_lenient(step, tag)) {
        Ok(()) => 0,
        Err(rc) => rc,
    }
}

/// Content of a kernel handle as text (re-exported for the host module).
pub fn handle_text(h: u64) -> Option<String> {
    handle_string(h)
}
