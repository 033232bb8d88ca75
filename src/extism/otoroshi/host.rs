//! Otoroshi's host functions (MAIF/otoroshi `app/wasm/host.scala`), imported from `env` (or
//! `env/Otoroshi` by JavaScript plugins).
//!
//! Calling convention, as Otoroshi's: most functions take a "context" `(ptr: i64, len: i64)`, a
//! byte range of the Extism kernel's memory holding text (a key, or JSON), and answer an `i64`:
//! either a kernel handle to new bytes (0 for nothing) or a plain number. The range need not be a
//! block and is not freed (the plugin owns it). Text is read as UTF-8 with replacement characters.
//! Anything Otoroshi answers with an exception (a range outside the kernel's memory, JSON that
//! does not parse, a required key missing, a data store failure) ends the plugin's call here.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::datastore::key_prefix;
use super::http_call::{self, CallPlan};
use super::maps::GLOBAL;
use crate::abi::LogLevel;
use crate::extism::authorizations::Requirement;
use crate::extism::body::{decode_base64, encode_base64, whole};
use crate::extism::imports::{arg, arg_i32, i32_result, i64_result, ExtismFn, HostImport, ImportModule, I32, I64, R};
use crate::extism::pdk::store;
use crate::extism::state::ExtismState;
use crate::runtime::{Trap, Val};

fn trap(message: impl Into<String>) -> Trap {
    Trap::new(message)
}

/// The text at `(ptr, len)`; Otoroshi reads `len` as a 32-bit int.
fn context(st: &ExtismState, a: &[Val], what: &str) -> Result<String, Trap> {
    let (ptr, len) = (arg(a, 0), arg(a, 1) as i32);
    let len = u64::try_from(len).map_err(|_| trap(format!("{what}: negative length {len}")))?;
    let bytes = st
        .kernel
        .raw(ptr, len)
        .ok_or_else(|| trap(format!("{what}: bytes {ptr}..{ptr}+{len} are outside the kernel's memory")))?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn context_json(st: &ExtismState, a: &[Val], what: &str) -> Result<Value, Trap> {
    let text = context(st, a, what)?;
    serde_json::from_str(&text).map_err(|e| trap(format!("{what}: invalid JSON: {e}")))
}

fn required_str<'v>(v: &'v Value, key: &str, what: &str) -> Result<&'v str, Trap> {
    v.get(key).and_then(Value::as_str).ok_or_else(|| trap(format!("{what}: \"{key}\" must be a string")))
}

fn return_string(st: &mut ExtismState, text: &str) -> R {
    i64_result(store(st, text.as_bytes())?)
}

fn return_int(v: i64) -> R {
    Ok(Some(Val::I64(v)))
}

// Logging (always linked).

/// Otoroshi's `LogLevel` enumeration: 0 trace ... 4 error, 5 critical, 6 max (both logged as
/// errors); any other number is an error, as the enumeration's lookup throws.
fn otoroshi_level(n: i64) -> Result<LogLevel, Trap> {
    Ok(match n {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4..=6 => LogLevel::Error,
        _ => return Err(trap(format!("no log level {n} (expected 0 to 6)"))),
    })
}

fn proxy_log(st: &mut ExtismState, a: &[Val]) -> R {
    let level = otoroshi_level(i64::from(arg_i32(a, 0)))?;
    let (ptr, len) = (arg(a, 1), arg(a, 2) as i32);
    let len = u64::try_from(len).map_err(|_| trap(format!("proxy_log: negative length {len}")))?;
    let text = st.kernel.raw(ptr, len).ok_or_else(|| trap("proxy_log: message outside the kernel's memory"))?;
    let text = String::from_utf8_lossy(text).into_owned();
    if st.logs(level) {
        st.log(level, &text);
    }
    i32_result(0)
}

/// Otoroshi turns `{function, message, level, route_id}` into an analytics event; there are no
/// analytics here, so it becomes a log line naming the function.
fn proxy_log_event(st: &mut ExtismState, a: &[Val]) -> R {
    let event = context_json(st, a, "proxy_log_event")?;
    let function = event.get("function").and_then(Value::as_str).unwrap_or("unknown function");
    let message = event.get("message").and_then(Value::as_str).unwrap_or("--");
    let level = match event.get("level").and_then(whole) {
        Some(n) => otoroshi_level(n)?,
        None => LogLevel::Debug,
    };
    if st.logs(level) {
        st.log(level, &format!("event from {function}: {message}"));
    }
    return_int(0)
}

// Attributes: Otoroshi links these with no attributes map (`attrs = None`), so they answer
// nothing and change nothing; a step's output `attrs` is applied instead (see `steps`).

fn proxy_get_attrs(_: &mut ExtismState, _: &[Val]) -> R {
    return_int(0)
}
fn proxy_get_attr(st: &mut ExtismState, a: &[Val]) -> R {
    context(st, a, "proxy_get_attr")?;
    return_int(0)
}
fn proxy_set_attr(st: &mut ExtismState, a: &[Val]) -> R {
    context(st, a, "proxy_set_attr")?;
    return_int(0)
}
fn proxy_del_attr(st: &mut ExtismState, a: &[Val]) -> R {
    context(st, a, "proxy_del_attr")?;
    return_int(0)
}
fn proxy_clear_attrs(_: &mut ExtismState, _: &[Val]) -> R {
    return_int(0)
}

// HTTP (httpAccess).

fn proxy_http_call(st: &mut ExtismState, a: &[Val]) -> R {
    let ctx = context_json(st, a, "proxy_http_call")?;
    let plugin = st.plugin.clone();
    let plan = http_call::plan(
        &ctx,
        &plugin.otoroshi_hosts,
        plugin.authorizations.proxy_http_call_timeout_ms,
        plugin.max_response_size,
    )
    .map_err(|e| trap(format!("proxy_http_call: {e}")))?;
    let text = match plan {
        CallPlan::Denied(text) => text,
        CallPlan::Send(request) => {
            let client = st
                .services
                .http
                .clone()
                .ok_or_else(|| trap("proxy_http_call: this server gives plugins no HTTP client"))?;
            let response =
                client.send(&request).map_err(|e| trap(format!("proxy_http_call to {}: {e}", request.url)))?;
            http_call::answer(&response)
        }
    };
    return_string(st, &text)
}

// Proxy state and configuration: there is no Otoroshi state here, so the functions answer the
// shapes Otoroshi answers, empty.

/// The keys of Otoroshi's `proxy_state` answer, each an empty list here.
pub const PROXY_STATE_KEYS: &[&str] = &[
    "raw_routes",
    "routes",
    "routeCompositions",
    "apikeys",
    "ngbackends",
    "jwtVerifiers",
    "certificates",
    "authModules",
    "services",
    "teams",
    "tenants",
    "serviceGroups",
    "dataExporters",
    "otoroshiAdmins",
    "backofficeSessions",
    "privateAppsSessions",
    "tcpServices",
    "scripts",
    "wasmPlugins",
    "drafts",
];

fn proxy_state(st: &mut ExtismState, _: &[Val]) -> R {
    let state: Map<String, Value> = PROXY_STATE_KEYS.iter().map(|k| ((*k).to_owned(), json!([]))).collect();
    return_string(st, &Value::Object(state).to_string())
}

/// `{"entity": name, "id"?: id}`: a known entity list without an id is `[]`; with an id, or an
/// unknown entity, `null` (nothing is ever found). `wasmPlugins` and `drafts` are not entities
/// `proxy_state_value` knows in Otoroshi.
fn proxy_state_value(st: &mut ExtismState, a: &[Val]) -> R {
    let ctx = context_json(st, a, "proxy_state_value")?;
    let entity = ctx.get("entity").and_then(Value::as_str).unwrap_or("");
    let has_id = ctx.get("id").and_then(Value::as_str).is_some();
    let known = PROXY_STATE_KEYS.iter().take(PROXY_STATE_KEYS.len() - 2).any(|k| *k == entity);
    return_string(st, if known && !has_id { "[]" } else { "null" })
}

fn proxy_global_config(st: &mut ExtismState, _: &[Val]) -> R {
    return_string(st, "{}")
}
fn proxy_config(st: &mut ExtismState, _: &[Val]) -> R {
    return_string(st, "{}")
}
fn proxy_cluster_state(st: &mut ExtismState, _: &[Val]) -> R {
    return_string(st, "{}")
}
/// A dotted path into the (empty) cluster state: always `null`.
fn proxy_cluster_state_value(st: &mut ExtismState, a: &[Val]) -> R {
    context(st, a, "proxy_cluster_state_value")?;
    return_string(st, "null")
}

// In-memory maps (globalMapAccess / pluginMapAccess).

fn map_id(st: &ExtismState, plugin: bool) -> String {
    if plugin {
        st.plugin.id.clone()
    } else {
        GLOBAL.to_owned()
    }
}

fn map_set(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let what = if plugin { "proxy_plugin_map_set" } else { "proxy_global_map_set" };
    let ctx = context_json(st, a, what)?;
    let key = required_str(&ctx, "key", what)?;
    let value = required_str(&ctx, "value", what)?;
    st.services.maps.set(&map_id(st, plugin), key, value.as_bytes()).map_err(|e| trap(format!("{what}: {e}")))?;
    return_int(0)
}

fn map_get(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let key = context(st, a, if plugin { "proxy_plugin_map_get" } else { "proxy_global_map_get" })?;
    let value = st.services.maps.get(&map_id(st, plugin), &key).unwrap_or_default();
    i64_result(store(st, &value)?)
}

/// Otoroshi answers a handle to the text `StatusOK` here (where `set` answers the number 0).
fn map_del(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let key = context(st, a, if plugin { "proxy_plugin_map_del" } else { "proxy_global_map_del" })?;
    st.services.maps.del(&map_id(st, plugin), &key);
    return_string(st, "StatusOK")
}

/// `{key: base64(value)}`, or nothing (handle 0) for a map never written.
fn map_dump(st: &mut ExtismState, plugin: bool) -> R {
    let text = match st.services.maps.dump(&map_id(st, plugin)) {
        Some(entries) => {
            Value::Object(entries.iter().map(|(k, v)| (k.clone(), Value::from(encode_base64(v)))).collect()).to_string()
        }
        None => String::new(),
    };
    return_string(st, &text)
}

fn proxy_global_map_set(st: &mut ExtismState, a: &[Val]) -> R {
    map_set(st, a, false)
}
fn proxy_global_map_get(st: &mut ExtismState, a: &[Val]) -> R {
    map_get(st, a, false)
}
fn proxy_global_map_del(st: &mut ExtismState, a: &[Val]) -> R {
    map_del(st, a, false)
}
fn proxy_global_map(st: &mut ExtismState, _: &[Val]) -> R {
    map_dump(st, false)
}
fn proxy_plugin_map_set(st: &mut ExtismState, a: &[Val]) -> R {
    map_set(st, a, true)
}
fn proxy_plugin_map_get(st: &mut ExtismState, a: &[Val]) -> R {
    map_get(st, a, true)
}
fn proxy_plugin_map_del(st: &mut ExtismState, a: &[Val]) -> R {
    map_del(st, a, true)
}
fn proxy_plugin_map(st: &mut ExtismState, _: &[Val]) -> R {
    map_dump(st, true)
}

// Data store (globalDataStoreAccess / pluginDataStoreAccess).

fn prefix(st: &ExtismState, plugin: bool) -> String {
    key_prefix(&st.plugin.storage_root, plugin.then_some(st.plugin.id.as_str()))
}

fn ds_name(op: &str, plugin: bool) -> String {
    format!("proxy_{}datastore_{op}", if plugin { "plugin_" } else { "" })
}

/// Otoroshi's `(data \ "incr").asOpt[String].map(_.toInt).getOrElse((data \ "incr").asOpt[Int].getOrElse(0))`:
/// text must parse as a 32-bit int; a number counts only when it is a whole 32-bit int.
fn int_field(v: &Value, key: &str, what: &str) -> Result<i64, Trap> {
    match v.get(key) {
        Some(Value::String(s)) => s
            .trim()
            .parse::<i32>()
            .map(i64::from)
            .map_err(|_| trap(format!("{what}: \"{key}\" is not a 32-bit integer: {s:?}"))),
        Some(n) => Ok(whole(n).filter(|n| i32::try_from(*n).is_ok()).unwrap_or(0)),
        None => Ok(0),
    }
}

/// `value` (text) or `value_base64`; one is required.
fn value_field(v: &Value, what: &str) -> Result<Vec<u8>, Trap> {
    if let Some(s) = v.get("value").and_then(Value::as_str) {
        return Ok(s.as_bytes().to_vec());
    }
    let b64 = v
        .get("value_base64")
        .and_then(Value::as_str)
        .ok_or_else(|| trap(format!("{what}: \"value\" or \"value_base64\" is required")))?;
    decode_base64(b64).map_err(|e| trap(format!("{what}: value_base64: {e}")))
}

fn ds_keys(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let pattern = format!("{}{}", prefix(st, plugin), context(st, a, &ds_name("keys", plugin))?);
    let keys = st.services.datastore.keys(&pattern);
    return_string(st, &Value::from(keys).to_string())
}

fn ds_all_matching(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let pattern = format!("{}{}", prefix(st, plugin), context(st, a, &ds_name("all_matching", plugin))?);
    let values: Vec<Value> =
        st.services.datastore.all_matching(&pattern).iter().map(|v| Value::from(encode_base64(v))).collect();
    return_string(st, &Value::from(values).to_string())
}

fn ds_get(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let key = format!("{}{}", prefix(st, plugin), context(st, a, &ds_name("get", plugin))?);
    let value = st.services.datastore.get(&key).unwrap_or_default();
    i64_result(store(st, &value)?)
}

fn ds_exists(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let key = format!("{}{}", prefix(st, plugin), context(st, a, &ds_name("exists", plugin))?);
    return_int(i64::from(st.services.datastore.exists(&key)))
}

fn ds_pttl(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let key = format!("{}{}", prefix(st, plugin), context(st, a, &ds_name("pttl", plugin))?);
    return_int(st.services.datastore.pttl(&key))
}

fn ds_set(st: &mut ExtismState, a: &[Val], plugin: bool, only_new: bool) -> R {
    let what = ds_name(if only_new { "setnx" } else { "set" }, plugin);
    let ctx = context_json(st, a, &what)?;
    let key = format!("{}{}", prefix(st, plugin), required_str(&ctx, "key", &what)?);
    let value = value_field(&ctx, &what)?;
    // Otoroshi reads `ttl` as milliseconds (`asOpt[Long]`: a whole number, else no TTL).
    let ttl = match ctx.get("ttl").and_then(Value::as_i64) {
        None => None,
        Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
        Some(_) => Some(Duration::ZERO),
    };
    let store = &st.services.datastore;
    let done = if only_new { store.setnx(&key, &value, ttl) } else { store.set(&key, &value, ttl) };
    return_int(i64::from(done.map_err(|e| trap(format!("{what}: {e}")))?))
}

fn ds_del(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let what = ds_name("del", plugin);
    let ctx = context_json(st, a, &what)?;
    let prefix = prefix(st, plugin);
    // `asOpt[Seq[String]]`: a list with anything but strings is no list.
    let keys: Vec<String> = ctx
        .get("keys")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().map(|k| k.as_str().map(|k| format!("{prefix}{k}"))).collect::<Option<Vec<_>>>())
        .unwrap_or_default();
    return_int(st.services.datastore.del(&keys) as i64)
}

fn ds_incrby(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let what = ds_name("incrby", plugin);
    let ctx = context_json(st, a, &what)?;
    let key = format!("{}{}", prefix(st, plugin), required_str(&ctx, "key", &what)?);
    let incr = int_field(&ctx, "incr", &what)?;
    return_int(st.services.datastore.incrby(&key, incr).map_err(|e| trap(format!("{what}: {e}")))?)
}

fn ds_pexpire(st: &mut ExtismState, a: &[Val], plugin: bool) -> R {
    let what = ds_name("pexpire", plugin);
    let ctx = context_json(st, a, &what)?;
    let key = format!("{}{}", prefix(st, plugin), required_str(&ctx, "key", &what)?);
    let pttl = int_field(&ctx, "pttl", &what)?;
    return_int(i64::from(st.services.datastore.pexpire(&key, pttl)))
}

macro_rules! both_stores {
    ($($global:ident, $plugin:ident => $f:ident($($extra:expr),*);)*) => {
        $(
            fn $global(st: &mut ExtismState, a: &[Val]) -> R { $f(st, a, false $(, $extra)*) }
            fn $plugin(st: &mut ExtismState, a: &[Val]) -> R { $f(st, a, true $(, $extra)*) }
        )*
    };
}

both_stores! {
    proxy_datastore_keys, proxy_plugin_datastore_keys => ds_keys();
    proxy_datastore_all_matching, proxy_plugin_datastore_all_matching => ds_all_matching();
    proxy_datastore_get, proxy_plugin_datastore_get => ds_get();
    proxy_datastore_exists, proxy_plugin_datastore_exists => ds_exists();
    proxy_datastore_pttl, proxy_plugin_datastore_pttl => ds_pttl();
    proxy_datastore_set, proxy_plugin_datastore_set => ds_set(false);
    proxy_datastore_setnx, proxy_plugin_datastore_setnx => ds_set(true);
    proxy_datastore_del, proxy_plugin_datastore_del => ds_del();
    proxy_datastore_incrby, proxy_plugin_datastore_incrby => ds_incrby();
    proxy_datastore_pexpire, proxy_plugin_datastore_pexpire => ds_pexpire();
}

macro_rules! table {
    ($($name:ident ($($p:expr),*) -> ($($r:expr),*) if $req:ident;)*) => {
        &[$(HostImport {
            module: ImportModule::Otoroshi,
            name: stringify!($name),
            params: &[$($p),*],
            results: &[$($r),*],
            func: ExtismFn::Vals($name),
            requires: Requirement::$req,
        }),*]
    };
}

/// Every Otoroshi host function with the right it needs (`HostFunctionWithAuthorization`).
pub static OTOROSHI_FUNCTIONS: &[HostImport] = table! {
    proxy_log(I32, I64, I64) -> (I32) if Always;
    proxy_log_event(I64, I64) -> (I64) if Always;
    proxy_get_attrs(I64) -> (I64) if Always;
    proxy_get_attr(I64, I64) -> (I64) if Always;
    proxy_set_attr(I64, I64) -> (I64) if Always;
    proxy_del_attr(I64, I64) -> (I64) if Always;
    proxy_clear_attrs(I64) -> (I64) if Always;
    proxy_http_call(I64, I64) -> (I64) if HttpAccess;
    proxy_state(I64) -> (I64) if ProxyStateAccess;
    proxy_state_value(I64, I64) -> (I64) if ProxyStateAccess;
    proxy_global_config(I64) -> (I64) if ProxyStateAccess;
    proxy_cluster_state(I64) -> (I64) if ConfigurationAccess;
    proxy_cluster_state_value(I64, I64) -> (I64) if ConfigurationAccess;
    proxy_config(I64) -> (I64) if ConfigurationAccess;
    proxy_global_map_del(I64, I64) -> (I64) if GlobalMapWrite;
    proxy_global_map_set(I64, I64) -> (I64) if GlobalMapWrite;
    proxy_global_map_get(I64, I64) -> (I64) if GlobalMapRead;
    proxy_global_map(I64) -> (I64) if GlobalMapRead;
    proxy_plugin_map_del(I64, I64) -> (I64) if PluginMapWrite;
    proxy_plugin_map_set(I64, I64) -> (I64) if PluginMapWrite;
    proxy_plugin_map_get(I64, I64) -> (I64) if PluginMapRead;
    proxy_plugin_map(I64) -> (I64) if PluginMapRead;
    proxy_datastore_keys(I64, I64) -> (I64) if GlobalDataStoreRead;
    proxy_datastore_get(I64, I64) -> (I64) if GlobalDataStoreRead;
    proxy_datastore_exists(I64, I64) -> (I64) if GlobalDataStoreRead;
    proxy_datastore_pttl(I64, I64) -> (I64) if GlobalDataStoreRead;
    proxy_datastore_all_matching(I64, I64) -> (I64) if GlobalDataStoreRead;
    proxy_datastore_set(I64, I64) -> (I64) if GlobalDataStoreWrite;
    proxy_datastore_setnx(I64, I64) -> (I64) if GlobalDataStoreWrite;
    proxy_datastore_del(I64, I64) -> (I64) if GlobalDataStoreWrite;
    proxy_datastore_incrby(I64, I64) -> (I64) if GlobalDataStoreWrite;
    proxy_datastore_pexpire(I64, I64) -> (I64) if GlobalDataStoreWrite;
    proxy_plugin_datastore_keys(I64, I64) -> (I64) if PluginDataStoreRead;
    proxy_plugin_datastore_get(I64, I64) -> (I64) if PluginDataStoreRead;
    proxy_plugin_datastore_exists(I64, I64) -> (I64) if PluginDataStoreRead;
    proxy_plugin_datastore_pttl(I64, I64) -> (I64) if PluginDataStoreRead;
    proxy_plugin_datastore_all_matching(I64, I64) -> (I64) if PluginDataStoreRead;
    proxy_plugin_datastore_set(I64, I64) -> (I64) if PluginDataStoreWrite;
    proxy_plugin_datastore_setnx(I64, I64) -> (I64) if PluginDataStoreWrite;
    proxy_plugin_datastore_del(I64, I64) -> (I64) if PluginDataStoreWrite;
    proxy_plugin_datastore_incrby(I64, I64) -> (I64) if PluginDataStoreWrite;
    proxy_plugin_datastore_pexpire(I64, I64) -> (I64) if PluginDataStoreWrite;
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extism::testing::{call, state, state_with, state_with_http, FakeHttp, Recorder};

    /// Puts `text` in the kernel and gives the `(ptr, len)` arguments.
    fn ctx(st: &mut ExtismState, text: &str) -> Vec<Val> {
        let h = st.kernel.store(text.as_bytes()).unwrap();
        vec![Val::I64(h as i64), Val::I64(text.len() as i64)]
    }

    fn text_at(st: &ExtismState, r: Option<Val>) -> String {
        let h = r.unwrap().as_i64() as u64;
        String::from_utf8(st.kernel.bytes(h).unwrap().to_vec()).unwrap()
    }

    fn run(st: &mut ExtismState, name: &str, text: &str) -> Result<Option<Val>, Trap> {
        let a = ctx(st, text);
        call(st, OTOROSHI_FUNCTIONS, name, &a)
    }

    #[test]
    fn every_function_of_host_scala_is_in_the_table() {
        assert_eq!(OTOROSHI_FUNCTIONS.len(), 2 + 5 + 1 + 6 + 8 + 20);
    }

    #[test]
    fn proxy_log_writes_at_otoroshis_levels_and_answers_ok() {
        let rec = Recorder::default();
        let mut st = crate::extism::testing::state_logging(rec.clone());
        let mut a = ctx(&mut st, "hello");
        a.insert(0, Val::I32(5));
        assert_eq!(call(&mut st, OTOROSHI_FUNCTIONS, "proxy_log", &a).unwrap(), Some(Val::I32(0)));
        assert_eq!(rec.lines(), vec![(LogLevel::Error, "hello".to_owned())]);
        a[0] = Val::I32(7);
        assert!(call(&mut st, OTOROSHI_FUNCTIONS, "proxy_log", &a).is_err());
    }

    #[test]
    fn a_context_outside_the_kernel_memory_ends_the_call() {
        let mut st = state();
        let err =
            call(&mut st, OTOROSHI_FUNCTIONS, "proxy_plugin_map_get", &[Val::I64(1 << 40), Val::I64(4)]).unwrap_err();
        assert!(err.message.contains("outside the kernel's memory"), "{}", err.message);
        assert!(call(&mut st, OTOROSHI_FUNCTIONS, "proxy_plugin_map_get", &[Val::I64(100), Val::I64(-1)]).is_err());
    }

    #[test]
    fn plugin_maps_store_text_and_dump_as_base64() {
        let mut st = state_with(|p| p.id = "my-plugin".into());
        assert_eq!(run(&mut st, "proxy_plugin_map_set", r#"{"key":"k","value":"v1"}"#).unwrap(), Some(Val::I64(0)));
        let got = run(&mut st, "proxy_plugin_map_get", "k").unwrap();
        assert_eq!(text_at(&st, got), "v1");
        assert_eq!(run(&mut st, "proxy_plugin_map_get", "missing").unwrap(), Some(Val::I64(0)));
        let dump = call(&mut st, OTOROSHI_FUNCTIONS, "proxy_plugin_map", &[Val::I64(0)]).unwrap();
        assert_eq!(text_at(&st, dump), r#"{"k":"djE="}"#);
        let del = run(&mut st, "proxy_plugin_map_del", "k").unwrap();
        assert_eq!(text_at(&st, del), "StatusOK");
        // The global map is another map.
        assert_eq!(call(&mut st, OTOROSHI_FUNCTIONS, "proxy_global_map", &[Val::I64(0)]).unwrap(), Some(Val::I64(0)));
        assert!(run(&mut st, "proxy_plugin_map_set", r#"{"key":"k"}"#).is_err());
    }

    #[test]
    fn datastore_keys_carry_otoroshis_prefixes() {
        let mut st = state_with(|p| p.id = "p1".into());
        assert_eq!(
            run(&mut st, "proxy_plugin_datastore_set", r#"{"key":"a","value":"1","ttl":60000}"#).unwrap(),
            Some(Val::I64(1))
        );
        assert_eq!(
            run(&mut st, "proxy_datastore_set", r#"{"key":"b","value_base64":"Mg=="}"#).unwrap(),
            Some(Val::I64(1))
        );
        let keys = run(&mut st, "proxy_datastore_keys", "*").unwrap();
        assert_eq!(text_at(&st, keys), r#"["otoroshi:b","otoroshi:wasm:p1:a"]"#);
        let keys = run(&mut st, "proxy_plugin_datastore_keys", "*").unwrap();
        assert_eq!(text_at(&st, keys), r#"["otoroshi:wasm:p1:a"]"#);
        let got = run(&mut st, "proxy_datastore_get", "b").unwrap();
        assert_eq!(text_at(&st, got), "2");
        let all = run(&mut st, "proxy_plugin_datastore_all_matching", "*").unwrap();
        assert_eq!(text_at(&st, all), r#"["MQ=="]"#);
        let pttl = run(&mut st, "proxy_plugin_datastore_pttl", "a").unwrap().unwrap().as_i64();
        assert!(pttl > 59_000 && pttl <= 60_000, "{pttl}");
        assert_eq!(run(&mut st, "proxy_datastore_pttl", "b").unwrap(), Some(Val::I64(-1)));
        assert_eq!(run(&mut st, "proxy_datastore_exists", "a").unwrap(), Some(Val::I64(0)));
    }

    #[test]
    fn datastore_numbers_and_deletes_answer_raw_values() {
        let mut st = state();
        assert_eq!(run(&mut st, "proxy_datastore_incrby", r#"{"key":"n","incr":"5"}"#).unwrap(), Some(Val::I64(5)));
        assert_eq!(run(&mut st, "proxy_datastore_incrby", r#"{"key":"n","incr":2}"#).unwrap(), Some(Val::I64(7)));
        // A number that is not a whole 32-bit int counts as 0, as Play's asOpt[Int] does.
        assert_eq!(run(&mut st, "proxy_datastore_incrby", r#"{"key":"n","incr":1.5}"#).unwrap(), Some(Val::I64(7)));
        assert!(run(&mut st, "proxy_datastore_incrby", r#"{"key":"n","incr":"x"}"#).is_err());
        assert_eq!(run(&mut st, "proxy_datastore_setnx", r#"{"key":"n","value":"0"}"#).unwrap(), Some(Val::I64(0)));
        assert_eq!(run(&mut st, "proxy_datastore_pexpire", r#"{"key":"n","pttl":1000}"#).unwrap(), Some(Val::I64(1)));
        assert_eq!(run(&mut st, "proxy_datastore_del", r#"{"keys":["n","other"]}"#).unwrap(), Some(Val::I64(1)));
        assert_eq!(run(&mut st, "proxy_datastore_pexpire", r#"{"key":"n","pttl":1000}"#).unwrap(), Some(Val::I64(0)));
    }

    #[test]
    fn proxy_state_answers_empty_lists_and_config_empty_objects() {
        let mut st = state();
        let s = call(&mut st, OTOROSHI_FUNCTIONS, "proxy_state", &[Val::I64(0)]).unwrap();
        let v: Value = serde_json::from_str(&text_at(&st, s)).unwrap();
        assert_eq!(v["routes"], json!([]));
        assert_eq!(v.as_object().unwrap().len(), PROXY_STATE_KEYS.len());
        let r = run(&mut st, "proxy_state_value", r#"{"entity":"apikeys"}"#).unwrap();
        assert_eq!(text_at(&st, r), "[]");
        let r = run(&mut st, "proxy_state_value", r#"{"entity":"apikeys","id":"x"}"#).unwrap();
        assert_eq!(text_at(&st, r), "null");
        let c = call(&mut st, OTOROSHI_FUNCTIONS, "proxy_config", &[Val::I64(0)]).unwrap();
        assert_eq!(text_at(&st, c), "{}");
    }

    #[test]
    fn proxy_http_call_answers_status_headers_and_base64_body() {
        let http = FakeHttp::answering(200, &[("content-type", "text/plain")], b"pong");
        let mut st = state_with_http(http.clone(), |_| {});
        let r = run(&mut st, "proxy_http_call", r#"{"url":"http://api.test/ping","method":"POST","body_str":"ping"}"#)
            .unwrap();
        let v: Value = serde_json::from_str(&text_at(&st, r)).unwrap();
        assert_eq!(v, json!({"status": 200, "headers": {"content-type": "text/plain"}, "body_base64": "cG9uZw=="}));
        assert_eq!(http.requests()[0].body.as_deref(), Some(&b"ping"[..]));
    }

    #[test]
    fn proxy_http_call_to_a_host_outside_allowed_hosts_answers_403_without_calling() {
        let http = FakeHttp::answering(200, &[], b"");
        let mut st = state_with_http(http.clone(), |p| {
            p.otoroshi_hosts = crate::extism::http::OtoroshiHosts::new(&["*.good".into()]).unwrap()
        });
        let r = run(&mut st, "proxy_http_call", r#"{"url":"http://bad.test/"}"#).unwrap();
        assert!(text_at(&st, r).contains("\"status\":403"));
        assert!(http.requests().is_empty());
    }

    #[test]
    fn attribute_functions_answer_nothing_as_in_otoroshi() {
        let mut st = state();
        assert_eq!(call(&mut st, OTOROSHI_FUNCTIONS, "proxy_get_attrs", &[Val::I64(0)]).unwrap(), Some(Val::I64(0)));
        assert_eq!(run(&mut st, "proxy_set_attr", r#"{"key":"a","value":1}"#).unwrap(), Some(Val::I64(0)));
    }
}
