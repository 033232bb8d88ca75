// Otoroshi host-function test plugin, AssemblyScript PDK: imports Otoroshi's own
// host functions (module `env`) on top of the Extism ABI, so it instantiates only
// with every authorization granted (httpAccess, plugin/global map and data store
// read+write, proxyStateAccess, configurationAccess). call_backend and
// handle_request run the operation named by the request header `x-host` and answer
// a JSON report; job_run counts its runs in the plugin data store.
// Protocol: tests/plugins/otoroshi/README.md.

import { Ctx, JValue, b64, handleString, outputJson, parse, parseI64Or, parseIntOr, setError, unb64 } from "./lib/kit";
import * as steps from "./lib/steps";
import * as oto from "./lib/otoroshi";
import { Arg } from "./lib/otoroshi";

const TAG = "assemblyscript-host";

function strOrNull(s: string | null): JValue {
  return s === null ? JValue.nul() : JValue.str(s);
}

function raw(v: u64): JValue {
  return JValue.num(<f64>(<i64>v));
}

function mapOp(ctx: Ctx, scope: string, op: string, key: string): JValue {
  const plugin = scope == "plugin";
  if (op == "set") {
    const a = new Arg(JValue.obj().setStr("key", key).setStr("value", ctx.headerOr("x-value", "v")).stringify());
    return raw(plugin ? oto.proxy_plugin_map_set(a.ptr, a.len) : oto.proxy_global_map_set(a.ptr, a.len));
  }
  if (op == "get") {
    const a = new Arg(key);
    return strOrNull(handleString(plugin ? oto.proxy_plugin_map_get(a.ptr, a.len) : oto.proxy_global_map_get(a.ptr, a.len)));
  }
  if (op == "del") {
    const a = new Arg(key);
    return strOrNull(handleString(plugin ? oto.proxy_plugin_map_del(a.ptr, a.len) : oto.proxy_global_map_del(a.ptr, a.len)));
  }
  if (op == "dump") {
    return strOrNull(handleString(plugin ? oto.proxy_plugin_map(0) : oto.proxy_global_map(0)));
  }
  // incr (default): read, add one, write back; the value is decimal text.
  const g = new Arg(key);
  const old = handleString(plugin ? oto.proxy_plugin_map_get(g.ptr, g.len) : oto.proxy_global_map_get(g.ptr, g.len));
  const n = parseIntOr(old, 0) + 1;
  const s = new Arg(JValue.obj().setStr("key", key).setStr("value", n.toString()).stringify());
  if (plugin) oto.proxy_plugin_map_set(s.ptr, s.len);
  else oto.proxy_global_map_set(s.ptr, s.len);
  return JValue.num(n);
}

function dsOp(ctx: Ctx, scope: string, op: string, key: string): JValue {
  const p = scope == "plugin";
  if (op == "set" || op == "setnx") {
    const d = JValue.obj().setStr("key", key);
    const v = ctx.headerOr("x-value", "v");
    if (ctx.hasHeader("x-value-base64")) d.setStr("value_base64", b64(v));
    else d.setStr("value", v);
    const ttl = ctx.header("x-ttl");
    if (ttl !== null) d.setNum("ttl", <f64>parseI64Or(ttl, 0));
    const a = new Arg(d.stringify());
    if (op == "set") return raw(p ? oto.proxy_plugin_datastore_set(a.ptr, a.len) : oto.proxy_datastore_set(a.ptr, a.len));
    return raw(p ? oto.proxy_plugin_datastore_setnx(a.ptr, a.len) : oto.proxy_datastore_setnx(a.ptr, a.len));
  }
  if (op == "get") {
    const a = new Arg(key);
    return strOrNull(handleString(p ? oto.proxy_plugin_datastore_get(a.ptr, a.len) : oto.proxy_datastore_get(a.ptr, a.len)));
  }
  if (op == "exists") {
    const a = new Arg(key);
    return raw(p ? oto.proxy_plugin_datastore_exists(a.ptr, a.len) : oto.proxy_datastore_exists(a.ptr, a.len));
  }
  if (op == "pttl") {
    const a = new Arg(key);
    return raw(p ? oto.proxy_plugin_datastore_pttl(a.ptr, a.len) : oto.proxy_datastore_pttl(a.ptr, a.len));
  }
  if (op == "del") {
    const a = new Arg(JValue.obj().set("keys", JValue.arr().push(JValue.str(key))).stringify());
    return raw(p ? oto.proxy_plugin_datastore_del(a.ptr, a.len) : oto.proxy_datastore_del(a.ptr, a.len));
  }
  if (op == "pexpire") {
    const a = new Arg(JValue.obj().setStr("key", key).setNum("pttl", <f64>parseI64Or(ctx.header("x-pttl"), 1000)).stringify());
    return raw(p ? oto.proxy_plugin_datastore_pexpire(a.ptr, a.len) : oto.proxy_datastore_pexpire(a.ptr, a.len));
  }
  if (op == "keys" || op == "all_matching") {
    const a = new Arg(ctx.headerOr("x-pattern", "*"));
    let h: u64 = 0;
    if (op == "keys") h = p ? oto.proxy_plugin_datastore_keys(a.ptr, a.len) : oto.proxy_datastore_keys(a.ptr, a.len);
    else h = p ? oto.proxy_plugin_datastore_all_matching(a.ptr, a.len) : oto.proxy_datastore_all_matching(a.ptr, a.len);
    const s = handleString(h);
    if (s === null) return JValue.nul();
    const j = parse(s);
    return j === null ? JValue.str(s) : j;
  }
  // incrby (default)
  const a = new Arg(JValue.obj().setStr("key", key).setNum("incr", <f64>parseI64Or(ctx.header("x-incr"), 1)).stringify());
  return raw(p ? oto.proxy_plugin_datastore_incrby(a.ptr, a.len) : oto.proxy_datastore_incrby(a.ptr, a.len));
}

function httpCall(ctx: Ctx, report: JValue): void {
  const url = ctx.config("http_url");
  if (url === null) {
    report.setStr("error", "config http_url is not set");
    return;
  }
  const method = ctx.headerOr("x-http-method", "GET");
  const req = JValue.obj()
    .setStr("url", url)
    .setStr("method", method)
    .set("headers", JValue.obj().setStr("x-otoroshi-wasm", ctx.tag));
  if (method != "GET") req.setStr("body_str", "ping from " + ctx.tag);
  const t = ctx.header("x-timeout");
  if (t !== null) req.setNum("request_timeout", <f64>parseI64Or(t, 1000));
  const a = new Arg(req.stringify());
  const s = handleString(oto.proxy_http_call(a.ptr, a.len));
  if (s === null) {
    report.set("call", JValue.nul());
    return;
  }
  const j = parse(s);
  if (j === null) {
    report.setStr("call", s);
    return;
  }
  report.set("call", j);
  const b = j.get("body_base64");
  if (b !== null && b.isStr()) report.set("body", strOrNull(unb64(b.s)));
}

// Runs the `x-host` operation; null when the header is absent.
function hostReport(ctx: Ctx): JValue | null {
  const mode = ctx.header("x-host");
  if (mode === null) return null;
  const op = ctx.headerOr("x-op", "");
  const key = ctx.headerOr("x-key", "counter");
  const report = JValue.obj().setStr("host", mode).setStr("op", op).setStr("key", key);
  if (mode == "log") {
    const text = ctx.headerOr("x-log-message", "hello from " + ctx.tag);
    const m = new Arg(text);
    report.setNum("proxy_log", proxy_log_rc(parseIntOr(ctx.header("x-log-level"), 2), m));
    const ev = new Arg(JValue.obj().setStr("function", ctx.step).setStr("message", text).setNum("level", 2).stringify());
    report.set("proxy_log_event", raw(oto.proxy_log_event(ev.ptr, ev.len)));
  } else if (mode == "http") {
    httpCall(ctx, report);
  } else if (mode == "plugin-map") {
    report.set("result", mapOp(ctx, "plugin", op, key));
  } else if (mode == "global-map") {
    report.set("result", mapOp(ctx, "global", op, key));
  } else if (mode == "plugin-datastore") {
    report.set("result", dsOp(ctx, "plugin", op, key));
  } else if (mode == "datastore") {
    report.set("result", dsOp(ctx, "global", op, key));
  } else if (mode == "state") {
    const sv = new Arg(JValue.obj().setStr("entity", "routes").setStr("id", key).stringify());
    const cv = new Arg(ctx.headerOr("x-path", "/"));
    report.set("proxy_state", strOrNull(handleString(oto.proxy_state(0))));
    report.set("proxy_state_value", strOrNull(handleString(oto.proxy_state_value(sv.ptr, sv.len))));
    report.set("proxy_global_config", strOrNull(handleString(oto.proxy_global_config(0))));
    report.set("proxy_config", strOrNull(handleString(oto.proxy_config(0))));
    report.set("proxy_cluster_state", strOrNull(handleString(oto.proxy_cluster_state(0))));
    report.set("proxy_cluster_state_value", strOrNull(handleString(oto.proxy_cluster_state_value(cv.ptr, cv.len))));
  } else if (mode == "attrs") {
    const set = new Arg(JValue.obj().setStr("key", key).setStr("value", ctx.headerOr("x-value", "v")).stringify());
    const k1 = new Arg(key);
    const k2 = new Arg(key);
    report.set("proxy_set_attr", strOrNull(handleString(oto.proxy_set_attr(set.ptr, set.len))));
    report.set("proxy_get_attr", strOrNull(handleString(oto.proxy_get_attr(k1.ptr, k1.len))));
    report.set("proxy_get_attrs", strOrNull(handleString(oto.proxy_get_attrs(0))));
    report.set("proxy_del_attr", strOrNull(handleString(oto.proxy_del_attr(k2.ptr, k2.len))));
    report.set("proxy_clear_attrs", strOrNull(handleString(oto.proxy_clear_attrs(0))));
  } else {
    report.setStr("error", "unknown x-host " + mode);
  }
  return report;
}

function proxy_log_rc(level: i32, m: Arg): f64 {
  return <f64>oto.proxy_log(level, m.ptr, m.len);
}

function run(step: string, answer: (ctx: Ctx, report: JValue) => void, fallback: (ctx: Ctx) => void): i32 {
  const ctx = Ctx.read(step, TAG);
  if (ctx === null) return 1;
  const forced = ctx.forcedFailure();
  if (forced >= 0) return forced;
  const missing = ctx.missingFields();
  if (missing !== null && missing.length > 0) {
    setError(step + ": context lacks " + missing);
    return 1;
  }
  const report = hostReport(ctx);
  if (report === null) fallback(ctx);
  else answer(ctx, report);
  return 0;
}

export function call_backend(): i32 {
  return run(
    "call_backend",
    (ctx: Ctx, report: JValue): void => {
      const out = JValue.obj().setNum("status", 200).set("headers", ctx.baseHeaders("application/json"));
      out.setStr("body_str", report.stringify());
      outputJson(out);
    },
    (ctx: Ctx): void => steps.callBackend(ctx),
  );
}

export function handle_request(): i32 {
  return run(
    "handle_request",
    (ctx: Ctx, report: JValue): void => {
      const out = JValue.obj().setNum("status", 200).set("headers", ctx.baseHeaders("application/json"));
      out.setStr("body", report.stringify());
      outputJson(out);
    },
    (ctx: Ctx): void => steps.handleRequest(ctx),
  );
}

// Counts runs in the plugin data store (key `job.runs`) and the plugin map
// (key `job.last` = the run's snowflake), then logs through proxy_log.
export function job_run(): i32 {
  const ctx = Ctx.readLenient("job_run", TAG);
  const a = new Arg(JValue.obj().setStr("key", "job.runs").setNum("incr", 1).stringify());
  const n = <i64>oto.proxy_plugin_datastore_incrby(a.ptr, a.len);
  const snow = ctx.get("snowflake");
  const m = new Arg(
    JValue.obj()
      .setStr("key", "job.last")
      .setStr("value", snow === null ? "" : snow.asString(snow.stringify()))
      .stringify(),
  );
  oto.proxy_plugin_map_set(m.ptr, m.len);
  const l = new Arg(ctx.tag + " job_run #" + n.toString());
  oto.proxy_log(2, l.ptr, l.len);
  outputJson(JValue.obj());
  return 0;
}
