//! Otoroshi host-function test plugin, Rust PDK: imports Otoroshi's host
//! functions (module `env`) on top of the Extism ABI, so it instantiates only
//! with every authorization granted. call_backend / handle_request run the
//! operation named by the request header `x-host` and answer a JSON report;
//! job_run counts its runs in the plugin data store. Same protocol as the
//! AssemblyScript host module (tests/plugins/otoroshi/README.md).

#[path = "../src/common/mod.rs"]
mod common;

use common::kit::{base64_decode, base64_encode, handle_string, output_json, parse_int, Ctx, Outcome};
use common::otoroshi::{self as oto, Arg};
use common::steps;
use common::types::HttpAnswer;
use serde_json::{json, Value};

const TAG: &str = "rust-host";

fn raw(v: u64) -> Value {
    json!(v as i64)
}

fn json_or_text(s: Option<String>) -> Value {
    match s {
        None => Value::Null,
        Some(t) => serde_json::from_str(&t).unwrap_or(Value::String(t)),
    }
}

fn map_op(ctx: &Ctx, plugin: bool, op: &str, key: &str) -> Value {
    // SAFETY (every call below): Otoroshi host functions given (offset, length)
    // of a kernel block this module allocated and still owns.
    unsafe {
        match op {
            "set" => {
                let a = Arg::new(&json!({"key": key, "value": ctx.header_or("x-value", "v")}).to_string());
                raw(if plugin { oto::proxy_plugin_map_set(a.ptr(), a.len()) } else { oto::proxy_global_map_set(a.ptr(), a.len()) })
            }
            "get" => {
                let a = Arg::new(key);
                json!(handle_string(if plugin { oto::proxy_plugin_map_get(a.ptr(), a.len()) } else { oto::proxy_global_map_get(a.ptr(), a.len()) }))
            }
            "del" => {
                let a = Arg::new(key);
                json!(handle_string(if plugin { oto::proxy_plugin_map_del(a.ptr(), a.len()) } else { oto::proxy_global_map_del(a.ptr(), a.len()) }))
            }
            "dump" => json!(handle_string(if plugin { oto::proxy_plugin_map(0) } else { oto::proxy_global_map(0) })),
            _ => {
                // incr: read, add one, write back; the value is decimal text.
                let g = Arg::new(key);
                let old = handle_string(if plugin { oto::proxy_plugin_map_get(g.ptr(), g.len()) } else { oto::proxy_global_map_get(g.ptr(), g.len()) });
                let n = parse_int(old.as_deref()).unwrap_or(0) + 1;
                let s = Arg::new(&json!({"key": key, "value": n.to_string()}).to_string());
                if plugin {
                    oto::proxy_plugin_map_set(s.ptr(), s.len());
                } else {
                    oto::proxy_global_map_set(s.ptr(), s.len());
                }
                json!(n)
            }
        }
    }
}

fn ds_op(ctx: &Ctx, plugin: bool, op: &str, key: &str) -> Value {
    macro_rules! pick {
        ($p:ident, $g:ident, $a:expr) => {
            if plugin { oto::$p($a.ptr(), $a.len()) } else { oto::$g($a.ptr(), $a.len()) }
        };
    }
    // SAFETY (every call below): as in map_op.
    unsafe {
        match op {
            "set" | "setnx" => {
                let v = ctx.header_or("x-value", "v");
                let mut d = json!({"key": key});
                if ctx.header("x-value-base64").is_some() {
                    d["value_base64"] = json!(base64_encode(v.as_bytes()));
                } else {
                    d["value"] = json!(v);
                }
                if let Some(ttl) = parse_int(ctx.header("x-ttl").as_deref()) {
                    d["ttl"] = json!(ttl);
                }
                let a = Arg::new(&d.to_string());
                raw(if op == "set" { pick!(proxy_plugin_datastore_set, proxy_datastore_set, a) } else { pick!(proxy_plugin_datastore_setnx, proxy_datastore_setnx, a) })
            }
            "get" => {
                let a = Arg::new(key);
                json!(handle_string(pick!(proxy_plugin_datastore_get, proxy_datastore_get, a)))
            }
            "exists" => {
                let a = Arg::new(key);
                raw(pick!(proxy_plugin_datastore_exists, proxy_datastore_exists, a))
            }
            "pttl" => {
                let a = Arg::new(key);
                raw(pick!(proxy_plugin_datastore_pttl, proxy_datastore_pttl, a))
            }
            "del" => {
                let a = Arg::new(&json!({"keys": [key]}).to_string());
                raw(pick!(proxy_plugin_datastore_del, proxy_datastore_del, a))
            }
            "pexpire" => {
                let pttl = parse_int(ctx.header("x-pttl").as_deref()).unwrap_or(1000);
                let a = Arg::new(&json!({"key": key, "pttl": pttl}).to_string());
                raw(pick!(proxy_plugin_datastore_pexpire, proxy_datastore_pexpire, a))
            }
            "keys" => {
                let a = Arg::new(&ctx.header_or("x-pattern", "*"));
                json_or_text(handle_string(pick!(proxy_plugin_datastore_keys, proxy_datastore_keys, a)))
            }
            "all_matching" => {
                let a = Arg::new(&ctx.header_or("x-pattern", "*"));
                json_or_text(handle_string(pick!(proxy_plugin_datastore_all_matching, proxy_datastore_all_matching, a)))
            }
            _ => {
                let incr = parse_int(ctx.header("x-incr").as_deref()).unwrap_or(1);
                let a = Arg::new(&json!({"key": key, "incr": incr}).to_string());
                raw(pick!(proxy_plugin_datastore_incrby, proxy_datastore_incrby, a))
            }
        }
    }
}

fn http_call(ctx: &Ctx, report: &mut Value) {
    let url = match ctx.config("http_url") {
        Some(u) => u,
        None => {
            report["error"] = json!("config http_url is not set");
            return;
        }
    };
    let method = ctx.header_or("x-http-method", "GET");
    let mut req = json!({"url": url, "method": method, "headers": {"x-otoroshi-wasm": ctx.tag}});
    if method != "GET" {
        req["body_str"] = json!(format!("ping from {}", ctx.tag));
    }
    if let Some(t) = parse_int(ctx.header("x-timeout").as_deref()) {
        req["request_timeout"] = json!(t);
    }
    let a = Arg::new(&req.to_string());
    // SAFETY: as in map_op.
    let res = json_or_text(handle_string(unsafe { oto::proxy_http_call(a.ptr(), a.len()) }));
    if let Some(b) = res.get("body_base64").and_then(|b| b.as_str()) {
        report["body"] = json!(base64_decode(b).map(|d| String::from_utf8_lossy(&d).into_owned()));
    }
    report["call"] = res;
}

/// The `x-host` operation's report; None when the header is absent.
fn host_report(ctx: &Ctx) -> Option<Value> {
    let mode = ctx.header("x-host")?;
    let op = ctx.header_or("x-op", "");
    let key = ctx.header_or("x-key", "counter");
    let mut report = json!({"host": mode, "op": op, "key": key});
    // SAFETY (every call below): as in map_op.
    unsafe {
        match mode.as_str() {
            "log" => {
                let text = ctx.header_or("x-log-message", &format!("hello from {}", ctx.tag));
                let level = parse_int(ctx.header("x-log-level").as_deref()).unwrap_or(2) as i32;
                let m = Arg::new(&text);
                report["proxy_log"] = json!(oto::proxy_log(level, m.ptr(), m.len()));
                let ev = Arg::new(&json!({"function": ctx.step, "message": text, "level": 2}).to_string());
                report["proxy_log_event"] = raw(oto::proxy_log_event(ev.ptr(), ev.len()));
            }
            "http" => http_call(ctx, &mut report),
            "plugin-map" => report["result"] = map_op(ctx, true, &op, &key),
            "global-map" => report["result"] = map_op(ctx, false, &op, &key),
            "plugin-datastore" => report["result"] = ds_op(ctx, true, &op, &key),
            "datastore" => report["result"] = ds_op(ctx, false, &op, &key),
            "state" => {
                let sv = Arg::new(&json!({"entity": "routes", "id": key}).to_string());
                let cv = Arg::new(&ctx.header_or("x-path", "/"));
                report["proxy_state"] = json!(handle_string(oto::proxy_state(0)));
                report["proxy_state_value"] = json!(handle_string(oto::proxy_state_value(sv.ptr(), sv.len())));
                report["proxy_global_config"] = json!(handle_string(oto::proxy_global_config(0)));
                report["proxy_config"] = json!(handle_string(oto::proxy_config(0)));
                report["proxy_cluster_state"] = json!(handle_string(oto::proxy_cluster_state(0)));
                report["proxy_cluster_state_value"] = json!(handle_string(oto::proxy_cluster_state_value(cv.ptr(), cv.len())));
            }
            "attrs" => {
                let set = Arg::new(&json!({"key": key, "value": ctx.header_or("x-value", "v")}).to_string());
                let k1 = Arg::new(&key);
                let k2 = Arg::new(&key);
                report["proxy_set_attr"] = json!(handle_string(oto::proxy_set_attr(set.ptr(), set.len())));
                report["proxy_get_attr"] = json!(handle_string(oto::proxy_get_attr(k1.ptr(), k1.len())));
                report["proxy_get_attrs"] = json!(handle_string(oto::proxy_get_attrs(0)));
                report["proxy_del_attr"] = json!(handle_string(oto::proxy_del_attr(k2.ptr(), k2.len())));
                report["proxy_clear_attrs"] = json!(handle_string(oto::proxy_clear_attrs(0)));
            }
            other => report["error"] = json!(format!("unknown x-host {}", other)),
        }
    }
    Some(report)
}

fn answer(ctx: &Ctx, in_body: bool, fallback: fn(&Ctx) -> Outcome) -> Outcome {
    let report = match host_report(ctx) {
        None => return fallback(ctx),
        Some(r) => r,
    };
    let mut out = HttpAnswer { status: Some(200), headers: Some(ctx.base_headers("application/json")), ..Default::default() };
    if in_body {
        out.body.body = Some(report.to_string());
    } else {
        out.body.body_str = Some(report.to_string());
    }
    output_json(&out)
}

fn call_backend_step(ctx: &Ctx) -> Outcome {
    answer(ctx, false, steps::call_backend)
}

fn handle_request_step(ctx: &Ctx) -> Outcome {
    answer(ctx, true, steps::handle_request)
}

#[no_mangle]
pub extern "C" fn call_backend() -> i32 {
    steps::run("call_backend", TAG, call_backend_step)
}

#[no_mangle]
pub extern "C" fn handle_request() -> i32 {
    steps::run("handle_request", TAG, handle_request_step)
}

/// Counts runs in the plugin data store (`job.runs`), records the run's
/// snowflake in the plugin map (`job.last`), logs through proxy_log.
#[no_mangle]
pub extern "C" fn job_run() -> i32 {
    let ctx = Ctx::read_lenient("job_run", TAG);
    let a = Arg::new(&json!({"key": "job.runs", "incr": 1}).to_string());
    // SAFETY: as in map_op.
    let n = unsafe { oto::proxy_plugin_datastore_incrby(a.ptr(), a.len()) } as i64;
    let snow = match ctx.raw.get("snowflake") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let m = Arg::new(&json!({"key": "job.last", "value": snow}).to_string());
    let l = Arg::new(&format!("{} job_run #{}", ctx.tag, n));
    // SAFETY: as in map_op.
    unsafe {
        oto::proxy_plugin_map_set(m.ptr(), m.len());
        oto::proxy_log(2, l.ptr(), l.len());
    }
    match output_json(&json!({})) {
        Ok(()) => 0,
        Err(rc) => rc,
    }
}
