// The step behaviours of the Otoroshi test plugin (see tests/plugins/otoroshi/README.md),
// shared by the AssemblyScript modules. Each function takes the parsed context and
// writes the step's answer; the module entry files only export them under
// Otoroshi's default names.

import { Var, Memory, LogLevel } from "@extism/as-pdk";
import { http_request } from "@extism/as-pdk/lib/env";
import {
  Ctx,
  JValue,
  bytesFromJson,
  fromUtf8,
  handleString,
  log,
  outputJson,
  parseIntOr,
  putBody,
  setError,
} from "./kit";

@external("extism:host/env", "http_status_code")
declare function http_status_code(): i32;

// ------------------------------------------------------------- helpers

function bodyText(v: JValue | null): string | null {
  const b = bytesFromJson(v);
  if (b === null) return null;
  return fromUtf8(b);
}

function requestBody(ctx: Ctx): string | null {
  const top = ctx.get("request_body_bytes");
  if (top !== null && top.isArr()) return bodyText(top);
  const req = ctx.get("request");
  if (req !== null) {
    const inner = req.get("request_body_bytes");
    if (inner !== null && inner.isArr()) return bodyText(inner);
  }
  return null;
}

function headersCopy(v: JValue | null): JValue {
  if (v === null || !v.isObj()) return JValue.obj();
  return v.shallowCopy();
}

function removeHeaderCi(h: JValue, name: string): void {
  const lname = name.toLowerCase();
  for (let i = h.keys.length - 1; i >= 0; i--) {
    if (h.keys[i].toLowerCase() == lname) {
      h.keys.splice(i, 1);
      h.values.splice(i, 1);
    }
  }
}

// `x-add-cookie: name=value` → Otoroshi's output cookie form.
function cookiesWith(ctx: Ctx, existing: JValue | null): JValue | null {
  const spec = ctx.header("x-add-cookie");
  if (spec === null) return null;
  const out = JValue.arr();
  if (existing !== null && existing.isArr()) {
    for (let i = 0; i < existing.items.length; i++) out.push(existing.items[i]);
  }
  const eq = spec.indexOf("=");
  const c = JValue.obj();
  c.setStr("name", eq < 0 ? spec : spec.substring(0, eq));
  c.setStr("value", eq < 0 ? "" : spec.substring(eq + 1));
  c.setStr("path", "/");
  c.setBool("secure", false);
  c.setBool("httpOnly", false);
  out.push(c);
  return out;
}

// Otoroshi's error form for PreRoute and the transformers.
function errorForm(ctx: Ctx, what: string, formsHeader: string): JValue {
  const out = JValue.obj();
  out.setBool("error", true);
  const st = ctx.header("x-status");
  if (st !== null) out.setNum("status", parseIntOr(st, 500));
  out.set("headers", ctx.baseHeaders("text/plain"));
  putBody(out, ctx.headerOr(formsHeader, "str"), what + " refused " + ctx.path(), ctx.tag);
  return out;
}

function replaceUrlPath(url: string, path: string): string {
  const scheme = url.indexOf("://");
  if (scheme < 0) return path;
  const slash = url.indexOf("/", scheme + 3);
  if (slash < 0) return url + path;
  return url.substring(0, slash) + path;
}

// ------------------------------------------------------------- steps

export function preRoute(ctx: Ctx): void {
  const mode = ctx.header("x-pre-route");
  if (mode !== null && mode == "error") {
    outputJson(errorForm(ctx, "pre_route", "x-body-form"));
    return;
  }
  const out = JValue.obj();
  out.setBool("error", false);
  outputJson(out);
}

export function access(ctx: Ctx): void {
  const out = JValue.obj();
  const deny = ctx.header("x-deny");
  if (deny === null) {
    out.setBool("result", true);
  } else {
    out.setBool("result", false);
    if (deny != "bare") {
      const e = JValue.obj();
      e.setStr("message", deny.length > 0 ? "denied by " + ctx.tag + ": " + deny : "denied by " + ctx.tag);
      const st = ctx.header("x-deny-status");
      if (st !== null) e.setNum("status", parseIntOr(st, 403));
      out.set("error", e);
    }
  }
  outputJson(out);
}

export function transformRequest(ctx: Ctx): void {
  const mode = ctx.header("x-transform-request");
  if (mode !== null && mode == "error") {
    outputJson(errorForm(ctx, "transform_request", "x-request-body-form"));
    return;
  }
  const oreq = ctx.get("otoroshi_request");
  const out = JValue.obj();
  const headers = headersCopy(oreq === null ? null : oreq.get("headers"));
  headers.setStr("x-otoroshi-wasm", ctx.tag);
  headers.setStr("x-transformed-by", ctx.tag + " transform_request");
  const rm = ctx.header("x-remove-header");
  if (rm !== null) removeHeaderCi(headers, rm);
  out.set("headers", headers);
  const m = ctx.header("x-set-method");
  if (m !== null) out.setStr("method", m);
  const p = ctx.header("x-set-path");
  if (p !== null) {
    const url: JValue | null = oreq === null ? null : oreq.get("url");
    out.setStr("url", replaceUrlPath(url === null ? "" : url.asString(""), p));
  }
  const cookies = cookiesWith(ctx, oreq === null ? null : oreq.get("cookies"));
  if (cookies !== null) out.set("cookies", cookies);
  const original = requestBody(ctx);
  const forms = ctx.headerOr("x-request-body-form", original === null ? "none" : "str");
  putBody(out, forms, "transformed by " + ctx.tag + ": " + (original === null ? "" : original), ctx.tag);
  outputJson(out);
}

export function transformResponse(ctx: Ctx): void {
  const mode = ctx.header("x-transform-response");
  if (mode !== null && mode == "error") {
    outputJson(errorForm(ctx, "transform_response", "x-response-body-form"));
    return;
  }
  const ores = ctx.get("otoroshi_response");
  const out = JValue.obj();
  const origStatus: JValue | null = ores === null ? null : ores.get("status");
  const st = ctx.header("x-response-status");
  if (st !== null) out.setNum("status", parseIntOr(st, 200));
  else if (origStatus !== null && !origStatus.isNull()) out.set("status", origStatus);
  const headers = headersCopy(ores === null ? null : ores.get("headers"));
  headers.setStr("x-otoroshi-wasm", ctx.tag);
  headers.setStr("x-response-transformed-by", ctx.tag + " transform_response");
  headers.setStr("x-origin-status", origStatus === null ? "" : origStatus.stringify());
  const rm = ctx.header("x-remove-response-header");
  if (rm !== null) removeHeaderCi(headers, rm);
  out.set("headers", headers);
  const cookies = cookiesWith(ctx, ores === null ? null : ores.get("cookies"));
  if (cookies !== null) out.set("cookies", cookies);
  const original = bodyText(ctx.get("response_body_bytes"));
  const forms = ctx.headerOr("x-response-body-form", original === null ? "none" : "str");
  putBody(out, forms, "transformed by " + ctx.tag + ": " + (original === null ? "" : original), ctx.tag);
  outputJson(out);
}

export function matchesRoute(ctx: Ctx): void {
  const out = JValue.obj();
  const forced = ctx.header("x-match");
  if (forced !== null) out.setBool("result", forced == "true");
  else out.setBool("result", ctx.path().startsWith(ctx.configOr("match_prefix", "/match")));
  outputJson(out);
}

function routeJson(id: string, target: string): JValue {
  let host = target;
  let port: f64 = 80;
  const colon = target.lastIndexOf(":");
  if (colon > 0) {
    host = target.substring(0, colon);
    port = <f64>parseIntOr(target.substring(colon + 1), 80);
  }
  const loc = JValue.obj().setStr("tenant", "default").set("teams", JValue.arr().push(JValue.str("default")));
  const frontend = JValue.obj()
    .set("domains", JValue.arr())
    .set("strict_path", JValue.nul())
    .setBool("exact", false)
    .set("headers", JValue.obj())
    .set("query", JValue.obj())
    .set("methods", JValue.arr());
  const t = JValue.obj()
    .setStr("id", "target_1")
    .setStr("hostname", host)
    .setNum("port", port)
    .setBool("tls", false)
    .setNum("weight", 1)
    .setStr("protocol", "HTTP/1.1")
    .set("ip_address", JValue.nul())
    .set("predicate", JValue.obj().setStr("type", "AlwaysMatch"));
  const backend = JValue.obj()
    .set("targets", JValue.arr().push(t))
    .setStr("root", "/")
    .setBool("rewrite", false)
    .set("load_balancing", JValue.obj().setStr("type", "RoundRobin"));
  return JValue.obj()
    .set("_loc", loc)
    .setStr("id", id)
    .setStr("name", id)
    .setStr("description", "route chosen by find_route")
    .set("tags", JValue.arr())
    .set("metadata", JValue.obj())
    .setBool("enabled", true)
    .setBool("debug_flow", false)
    .setBool("export_reporting", false)
    .setBool("capture", false)
    .set("groups", JValue.arr().push(JValue.str("default")))
    .set("frontend", frontend)
    .set("backend", backend)
    .set("backend_ref", JValue.nul())
    .set("plugins", JValue.arr());
}

export function findRoute(ctx: Ctx): void {
  const prefix = ctx.configOr("route_prefix", "/routed/");
  const path = ctx.path();
  const out = JValue.obj();
  if (!path.startsWith(prefix)) {
    out.set("route", JValue.nul());
    outputJson(out);
    return;
  }
  const rest = path.substring(prefix.length);
  const slash = rest.indexOf("/");
  const id = slash < 0 ? rest : rest.substring(0, slash);
  if (id.length == 0) {
    out.set("route", JValue.nul());
    outputJson(out);
    return;
  }
  out.set("route", routeJson(id, ctx.configOr("route_target", "127.0.0.1:80")));
  out.setStr("path", path);
  out.set("path_params", JValue.obj().setStr("id", id));
  out.setBool("no_more_segments", slash < 0 || slash == rest.length - 1);
  outputJson(out);
}

export function sinkMatches(ctx: Ctx): void {
  const out = JValue.obj();
  const v = ctx.header("x-sink");
  out.setBool("result", v === null || v != "no");
  outputJson(out);
}

export function sinkHandle(ctx: Ctx): void {
  const out = JValue.obj();
  out.setNum("status", parseIntOr(ctx.header("x-sink-status"), 404));
  out.set("headers", ctx.baseHeaders("application/json"));
  const body = bodyText(ctx.get("body_bytes"));
  const report = JValue.obj()
    .setStr("sink", ctx.tag)
    .setStr("path", ctx.path())
    .set("origin", ctx.get("origin") === null ? JValue.nul() : ctx.get("origin")!)
    .set("status", ctx.get("status") === null ? JValue.nul() : ctx.get("status")!)
    .set("message", ctx.get("message") === null ? JValue.nul() : ctx.get("message")!)
    .setNum("body_length", body === null ? 0 : <f64>String.UTF8.byteLength(body));
  const forms = ctx.header("x-body-form");
  if (forms === null) out.set("body_json", report);
  else putBody(out, forms, report.stringify(), ctx.tag);
  outputJson(out);
}

// ------------------------------------------------------------- backend-like answers

class Reply {
  status: i32 = 200;
  headers: JValue;
  content: string = "";
  defaultForm: string = "str";
  constructor(headers: JValue) {
    this.headers = headers;
  }
}

class HttpResult {
  status: i32 = 0;
  body: string | null = null;
}

// Extism `http_request` (the host checks `allowedHosts`).
export function extismHttp(url: string, method: string, headers: JValue, body: string | null): HttpResult {
  const req = JValue.obj().setStr("url", url).setStr("method", method).set("headers", headers);
  const reqMem = Memory.allocateString(req.stringify());
  let bodyOffset: u64 = 0;
  if (body !== null) bodyOffset = Memory.allocateString(body).offset;
  const h = http_request(reqMem.offset, bodyOffset);
  const r = new HttpResult();
  r.status = http_status_code();
  r.body = handleString(h);
  return r;
}

function varCount(key: string): i32 {
  const v = Var.getString(key);
  return v === null ? 0 : parseIntOr(v, 0);
}

function varSetCount(key: string, n: i32): void {
  Var.set(key, Uint8Array.wrap(String.UTF8.encode(n.toString())));
}

// The utility cases of call_backend / handle_request (header `x-backend`), using
// only the Extism ABI. Returns null for the default answer.
function utility(ctx: Ctx, mode: string): Reply | null {
  const r = new Reply(ctx.baseHeaders("application/json"));
  if (mode == "vars") {
    const key = ctx.headerOr("x-var", "counter");
    const n = varCount(key) + 1;
    varSetCount(key, n);
    r.headers.setStr("x-var-value", n.toString());
    r.content = JValue.obj().setStr("var", key).setNum("value", n).stringify();
    return r;
  }
  if (mode == "vars-delete") {
    const key = ctx.headerOr("x-var", "counter");
    Var.remove(key);
    const after = Var.getString(key);
    r.content = JValue.obj()
      .setStr("var", key)
      .set("after_delete", after === null ? JValue.nul() : JValue.str(after))
      .stringify();
    return r;
  }
  if (mode == "config") {
    const key = ctx.headerOr("x-config-key", "tag");
    const fromGet = ctx.configFromExtism(key);
    const fromCtx = ctx.contextConfig(key);
    r.content = JValue.obj()
      .setStr("key", key)
      .set("config_get", fromGet === null ? JValue.nul() : JValue.str(fromGet))
      .set("context", fromCtx === null ? JValue.nul() : JValue.str(fromCtx))
      .stringify();
    return r;
  }
  if (mode == "http") {
    const url = ctx.config("http_url");
    if (url === null) {
      r.status = 500;
      r.content = JValue.obj().setStr("error", "config http_url is not set").stringify();
      return r;
    }
    const hh = JValue.obj().setStr("x-otoroshi-wasm", ctx.tag).setStr("content-type", "text/plain");
    const method = ctx.headerOr("x-http-method", "GET");
    const body: string | null = method == "GET" ? null : "ping from " + ctx.tag;
    const res = extismHttp(url, method, hh, body);
    r.headers.setStr("x-http-status", res.status.toString());
    r.content = JValue.obj()
      .setStr("url", url)
      .setNum("status", res.status)
      .set("body", res.body === null ? JValue.nul() : JValue.str(res.body!))
      .stringify();
    return r;
  }
  if (mode == "log") {
    const msg = ctx.headerOr("x-log-message", "hello");
    log(LogLevel.Debug, ctx.tag + " log debug: " + msg);
    log(LogLevel.Info, ctx.tag + " log info: " + msg);
    log(LogLevel.Warn, ctx.tag + " log warn: " + msg);
    log(LogLevel.Error, ctx.tag + " log error: " + msg);
    r.content = JValue.obj().setStr("logged", msg).stringify();
    return r;
  }
  return null;
}

function defaultReply(ctx: Ctx, what: string): Reply {
  const r = new Reply(ctx.baseHeaders("text/plain"));
  r.status = parseIntOr(ctx.header("x-backend-status"), 200);
  r.headers.setStr("x-backend-method", ctx.method());
  const body = requestBody(ctx);
  r.content = ctx.tag + " " + what + ": " + ctx.method() + " " + ctx.path() + " body=" + (body === null ? "" : body);
  return r;
}

export function callBackend(ctx: Ctx): void {
  const mode = ctx.headerOr("x-backend", "answer");
  if (mode == "delegate") {
    outputJson(JValue.obj().setBool("delegates_call", true));
    return;
  }
  let r = utility(ctx, mode);
  if (r === null) r = defaultReply(ctx, "call_backend");
  const out = JValue.obj();
  out.setNum("status", r.status);
  out.set("headers", r.headers);
  putBody(out, ctx.headerOr("x-body-form", r.defaultForm), r.content, ctx.tag);
  outputJson(out);
}

// HandlesRequest answers {status, headers, cookies, body}: only `body` (a string)
// is read by Otoroshi there.
export function handleRequest(ctx: Ctx): void {
  const mode = ctx.headerOr("x-backend", "answer");
  let r = utility(ctx, mode);
  if (r === null) r = defaultReply(ctx, "handle_request");
  const out = JValue.obj();
  out.setNum("status", r.status);
  out.set("headers", r.headers);
  const cookies = cookiesWith(ctx, null);
  if (cookies !== null) out.set("cookies", cookies);
  out.setStr("body", r.content);
  outputJson(out);
}

// ------------------------------------------------------------- jobs

// job_start / job_run / job_stop: count calls in an Extism var, log, and when the
// configuration has `job_url`, POST a JSON event there with `http_request`.
export function job(ctx: Ctx): i32 {
  const key = "job." + ctx.step + ".count";
  const n = varCount(key) + 1;
  varSetCount(key, n);
  log(LogLevel.Info, ctx.tag + " " + ctx.step + " #" + n.toString());
  const fail = ctx.config("job_fail");
  if (fail !== null && (fail == ctx.step || fail == "*")) {
    setError("forced failure in " + ctx.step);
    return 1;
  }
  const url = ctx.config("job_url");
  if (url !== null) {
    const snow = ctx.get("snowflake");
    const ev = JValue.obj()
      .setStr("event", ctx.step)
      .setNum("count", n)
      .setStr("tag", ctx.tag)
      .set("snowflake", snow === null ? JValue.nul() : snow);
    const hh = JValue.obj().setStr("content-type", "application/json").setStr("x-otoroshi-wasm", ctx.tag);
    extismHttp(url, "POST", hh, ev.stringify());
  }
  outputJson(JValue.obj());
  return 0;
}
