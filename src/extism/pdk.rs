//! The Extism host ABI: the kernel functions and Extism's built-in host functions
//! (`config_get`, `var_*`, `http_request`, `log_*`...), under module `extism:host/env` (Extism
//! 1.x) and under module `env` with an `extism_` prefix (Extism before 1.0).
//!
//! Behaviour follows extism/extism `kernel/src/lib.rs` and `runtime/src/pdk.rs`:
//! * kernel functions never fail: a bad handle reads 0 or is ignored (see [`super::kernel`]);
//! * built-in functions end the call with an error (a trap, Extism's `bail!`) on a handle that is
//!   not a live block, on text that is not UTF-8, on a refused or failed HTTP request, and on a
//!   full variable store;
//! * in 1.x a built-in function takes ownership of the handles passed to it and frees them
//!   (Extism #743); before 1.0 it did not, and the legacy entries do not either.

use super::authorizations::Requirement;
use super::http::{extism_host_allowed, OutgoingRequest, Url};
use super::imports::{arg, i32_result, i64_result, none, ExtismFn, HostImport, ImportModule, I32, I64, R};
use super::state::ExtismState;
use crate::abi::LogLevel;
use crate::runtime::{Trap, TypedFn, Val};

fn trap(message: impl Into<String>) -> Trap {
    Trap::new(message)
}

/// Extism's `memory_handle` + `memory_bytes`: handle 0 is the empty value, any other handle must
/// be a live block.
fn handle_bytes(st: &ExtismState, handle: u64, what: &str) -> Result<Vec<u8>, Trap> {
    if handle != 0 && st.kernel.length(handle) == 0 {
        return Err(trap(format!("invalid handle offset for {what}: {handle}")));
    }
    Ok(st.kernel.bytes(handle).unwrap_or_default().to_vec())
}

fn handle_str(st: &ExtismState, handle: u64, what: &str) -> Result<String, Trap> {
    String::from_utf8(handle_bytes(st, handle, what)?).map_err(|e| trap(format!("{what} is not UTF-8: {e}")))
}

/// Copies `data` into a new block for the plugin (0 for nothing).
pub(crate) fn store(st: &mut ExtismState, data: &[u8]) -> Result<u64, Trap> {
    st.kernel.store(data).ok_or_else(|| {
        trap(format!("{} out of memory (kernel memory is capped at {} bytes)", st.plugin.name, st.kernel.max_bytes()))
    })
}

// Kernel functions: typed (the runtimes call them without value lists: a guest reads its input
// 8 bytes per call), and they never fail. Handles, offsets and lengths are the guest's i64s.

fn alloc(st: &mut ExtismState, n: i64) -> i64 {
    st.kernel.alloc(n as u64) as i64
}
fn free(st: &mut ExtismState, h: i64) {
    st.kernel.free(h as u64);
}
fn length(st: &mut ExtismState, h: i64) -> i64 {
    st.kernel.length(h as u64) as i64
}
fn length_unsafe(st: &mut ExtismState, h: i64) -> i64 {
    st.kernel.length_unsafe(h as u64) as i64
}
fn load_u8(st: &mut ExtismState, addr: i64) -> i32 {
    i32::from(st.kernel.load_u8(addr as u64))
}
fn load_u64(st: &mut ExtismState, addr: i64) -> i64 {
    st.kernel.load_u64(addr as u64) as i64
}
fn store_u8(st: &mut ExtismState, addr: i64, byte: i32) {
    st.kernel.store_u8(addr as u64, byte as u8);
}
fn store_u64(st: &mut ExtismState, addr: i64, v: i64) {
    st.kernel.store_u64(addr as u64, v as u64);
}
fn input_set(st: &mut ExtismState, h: i64, len: i64) {
    st.kernel.input_set(h as u64, len as u64);
}
fn output_set(st: &mut ExtismState, h: i64, len: i64) {
    st.kernel.output_set(h as u64, len as u64);
}
fn input_length(st: &mut ExtismState) -> i64 {
    st.kernel.input_length() as i64
}
fn input_offset(st: &mut ExtismState) -> i64 {
    st.kernel.input_offset() as i64
}
fn output_length(st: &mut ExtismState) -> i64 {
    st.kernel.output_length() as i64
}
fn output_offset(st: &mut ExtismState) -> i64 {
    st.kernel.output_offset() as i64
}
fn input_load_u8(st: &mut ExtismState, offset: i64) -> i32 {
    i32::from(st.kernel.input_load_u8(offset as u64))
}
fn input_load_u64(st: &mut ExtismState, offset: i64) -> i64 {
    st.kernel.input_load_u64(offset as u64) as i64
}
fn reset(st: &mut ExtismState) {
    st.kernel.reset();
}
fn error_set(st: &mut ExtismState, h: i64) {
    st.kernel.error_set(h as u64);
}
fn error_get(st: &mut ExtismState) -> i64 {
    st.kernel.error_get() as i64
}
fn memory_bytes(st: &mut ExtismState) -> i64 {
    st.kernel.memory_bytes() as i64
}
/// Before 1.0, `extism_memory_bytes` answered the allocator's position.
fn legacy_memory_bytes(st: &mut ExtismState) -> i64 {
    st.kernel.position() as i64
}

// Built-in host functions; `frees` is Extism 1.x's ownership rule.

fn config_get_with(st: &mut ExtismState, a: &[Val], frees: bool) -> R {
    let key_handle = arg(a, 0);
    let key = handle_str(st, key_handle, "config key")?;
    if frees {
        st.kernel.free(key_handle);
    }
    let plugin = st.plugin.clone();
    match plugin.config.get(&key) {
        Some(value) => i64_result(store(st, value.as_bytes())?),
        None => i64_result(0),
    }
}

fn var_get_with(st: &mut ExtismState, a: &[Val], frees: bool) -> R {
    let key_handle = arg(a, 0);
    let key = handle_str(st, key_handle, "var key")?;
    if frees {
        st.kernel.free(key_handle);
    }
    match st.vars.get(&key).map(<[u8]>::to_vec) {
        Some(value) => i64_result(store(st, &value)?),
        None => i64_result(0),
    }
}

fn var_set_with(st: &mut ExtismState, a: &[Val], frees: bool) -> R {
    if st.plugin.max_var_bytes == 0 {
        return Err(trap("Vars are disabled by this host"));
    }
    let (key_handle, value_handle) = (arg(a, 0), arg(a, 1));
    let key = handle_str(st, key_handle, "var key")?;
    if value_handle == 0 {
        st.vars.remove(&key);
        if frees {
            st.kernel.free(key_handle);
        }
        return none();
    }
    let value = handle_bytes(st, value_handle, "var value")?;
    st.vars.set(&key, &value).map_err(|e| trap(e.to_string()))?;
    if frees {
        st.kernel.free(value_handle);
        st.kernel.free(key_handle);
    }
    none()
}

/// Extism's `HttpRequest` (extism-manifest): `{"url": ..., "headers": {...}, "method": ...}`.
#[derive(serde::Deserialize)]
struct HttpRequestJson {
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    method: Option<String>,
}

fn http_request_with(st: &mut ExtismState, a: &[Val], frees: bool) -> R {
    st.http_headers.clear();
    st.http_status = 0;
    let (request_handle, body_handle) = (arg(a, 0), arg(a, 1));
    let raw = handle_bytes(st, request_handle, "http request")?;
    let request: HttpRequestJson =
        serde_json::from_slice(&raw).map_err(|e| trap(format!("http_request: invalid request JSON: {e}")))?;
    if frees {
        st.kernel.free(request_handle);
    }
    let url = Url::parse(&request.url).map_err(|e| trap(format!("Invalid URL: {e}")))?;
    if !extism_host_allowed(&st.plugin.allowed_hosts, &url.host) {
        return Err(trap(format!("HTTP request to {} is not allowed (config.allowedHosts)", request.url)));
    }
    let body = if body_handle != 0 { Some(handle_bytes(st, body_handle, "http request body")?) } else { None };
    let Some(client) = st.services.http.clone() else {
        return Err(trap(format!("http_request is not enabled, request to {} is not allowed", request.url)));
    };
    let outgoing = OutgoingRequest {
        method: request.method.as_deref().unwrap_or("GET").to_ascii_uppercase(),
        url: request.url.clone(),
        headers: request.headers.into_iter().collect(),
        body,
        timeout: st.plugin.http_request_timeout,
        follow_redirects: true,
        max_response_size: st.plugin.max_response_size,
    };
    let answer = client.send(&outgoing);
    if frees && body_handle != 0 {
        st.kernel.free(body_handle);
    }
    let answer = answer.map_err(|e| trap(e.to_string()))?;
    st.http_status = answer.status;
    for (name, value) in &answer.headers {
        st.http_headers.insert(name.clone(), value.clone());
    }
    i64_result(store(st, &answer.body)?)
}

fn http_status_code(st: &mut ExtismState, _: &[Val]) -> R {
    i32_result(i32::from(st.http_status))
}

fn http_headers(st: &mut ExtismState, _: &[Val]) -> R {
    let json = serde_json::to_string(&st.http_headers).unwrap_or_else(|_| "{}".to_owned());
    i64_result(store(st, json.as_bytes())?)
}

fn log_with(st: &mut ExtismState, a: &[Val], level: LogLevel, frees: bool) -> R {
    let handle = arg(a, 0);
    if !st.logs(level) {
        if frees && st.kernel.length(handle) != 0 {
            st.kernel.free(handle);
        }
        return none();
    }
    let bytes = handle_bytes(st, handle, "log message")?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => st.log(level, text),
        Err(e) => st.log(LogLevel::Error, &format!("unable to log message: {e}")),
    }
    if frees {
        st.kernel.free(handle);
    }
    none()
}

/// Extism's numbering: trace 0, debug 1, info 2, warn 3, error 4; `i32::MAX` when logs are off.
fn get_log_level(st: &mut ExtismState, _: &[Val]) -> R {
    i32_result(match st.services.host.log_threshold() {
        None => i32::MAX,
        Some(level) => (level as i32).min(4),
    })
}

macro_rules! wrappers {
    ($($name:ident => $with:ident($($extra:expr),*) frees $frees:expr;)*) => {
        $(fn $name(st: &mut ExtismState, a: &[Val]) -> R { $with(st, a, $($extra,)* $frees) })*
    };
}

wrappers! {
    config_get => config_get_with() frees true;
    var_get => var_get_with() frees true;
    var_set => var_set_with() frees true;
    http_request => http_request_with() frees true;
    log_trace => log_with(LogLevel::Trace) frees true;
    log_debug => log_with(LogLevel::Debug) frees true;
    log_info => log_with(LogLevel::Info) frees true;
    log_warn => log_with(LogLevel::Warn) frees true;
    log_error => log_with(LogLevel::Error) frees true;
    legacy_config_get => config_get_with() frees false;
    legacy_var_get => var_get_with() frees false;
    legacy_var_set => var_set_with() frees false;
    legacy_http_request => http_request_with() frees false;
    legacy_log_debug => log_with(LogLevel::Debug) frees false;
    legacy_log_info => log_with(LogLevel::Info) frees false;
    legacy_log_warn => log_with(LogLevel::Warn) frees false;
    legacy_log_error => log_with(LogLevel::Error) frees false;
}

/// A table entry's function: `[Variant] f` for a kernel function ([`TypedFn`]), else `f`.
macro_rules! entry_fn {
    ($variant:ident $func:ident) => {
        ExtismFn::Typed(TypedFn::$variant($func))
    };
    ($func:ident) => {
        ExtismFn::Vals($func)
    };
}

macro_rules! table {
    ($module:expr; $($name:literal => $([$variant:ident])? $func:ident ($($p:expr),*) -> ($($r:expr),*);)*) => {
        &[$(HostImport {
            module: $module,
            name: $name,
            params: &[$($p),*],
            results: &[$($r),*],
            func: entry_fn!($($variant)? $func),
            requires: Requirement::Always,
        }),*]
    };
}

/// Extism 1.x: module `extism:host/env`.
pub static EXTISM_FUNCTIONS: &[HostImport] = table! { ImportModule::ExtismEnv;
    "alloc" => [I64ToI64] alloc(I64) -> (I64);
    "free" => [I64] free(I64) -> ();
    "length" => [I64ToI64] length(I64) -> (I64);
    "length_unsafe" => [I64ToI64] length_unsafe(I64) -> (I64);
    "load_u8" => [I64ToI32] load_u8(I64) -> (I32);
    "load_u64" => [I64ToI64] load_u64(I64) -> (I64);
    "store_u8" => [I64I32] store_u8(I64, I32) -> ();
    "store_u64" => [I64I64] store_u64(I64, I64) -> ();
    "input_set" => [I64I64] input_set(I64, I64) -> ();
    "output_set" => [I64I64] output_set(I64, I64) -> ();
    "input_length" => [ToI64] input_length() -> (I64);
    "input_offset" => [ToI64] input_offset() -> (I64);
    "output_length" => [ToI64] output_length() -> (I64);
    "output_offset" => [ToI64] output_offset() -> (I64);
    "input_load_u8" => [I64ToI32] input_load_u8(I64) -> (I32);
    "input_load_u64" => [I64ToI64] input_load_u64(I64) -> (I64);
    "reset" => [Unit] reset() -> ();
    "error_set" => [I64] error_set(I64) -> ();
    "error_get" => [ToI64] error_get() -> (I64);
    "memory_bytes" => [ToI64] memory_bytes() -> (I64);
    "config_get" => config_get(I64) -> (I64);
    "var_get" => var_get(I64) -> (I64);
    "var_set" => var_set(I64, I64) -> ();
    "http_request" => http_request(I64, I64) -> (I64);
    "http_status_code" => http_status_code() -> (I32);
    "http_headers" => http_headers() -> (I64);
    "log_trace" => log_trace(I64) -> ();
    "log_debug" => log_debug(I64) -> ();
    "log_info" => log_info(I64) -> ();
    "log_warn" => log_warn(I64) -> ();
    "log_error" => log_error(I64) -> ();
    "get_log_level" => get_log_level() -> (I32);
};

/// Extism before 1.0: module `env`, names prefixed `extism_` (Extism ≤ 0.5, rust-pdk ≤ 0.3).
pub static LEGACY_FUNCTIONS: &[HostImport] = table! { ImportModule::LegacyEnv;
    "extism_alloc" => [I64ToI64] alloc(I64) -> (I64);
    "extism_free" => [I64] free(I64) -> ();
    "extism_length" => [I64ToI64] length(I64) -> (I64);
    "extism_load_u8" => [I64ToI32] load_u8(I64) -> (I32);
    "extism_load_u64" => [I64ToI64] load_u64(I64) -> (I64);
    "extism_store_u8" => [I64I32] store_u8(I64, I32) -> ();
    "extism_store_u64" => [I64I64] store_u64(I64, I64) -> ();
    "extism_input_set" => [I64I64] input_set(I64, I64) -> ();
    "extism_output_set" => [I64I64] output_set(I64, I64) -> ();
    "extism_input_length" => [ToI64] input_length() -> (I64);
    "extism_input_offset" => [ToI64] input_offset() -> (I64);
    "extism_output_length" => [ToI64] output_length() -> (I64);
    "extism_output_offset" => [ToI64] output_offset() -> (I64);
    "extism_input_load_u8" => [I64ToI32] input_load_u8(I64) -> (I32);
    "extism_input_load_u64" => [I64ToI64] input_load_u64(I64) -> (I64);
    "extism_reset" => [Unit] reset() -> ();
    "extism_error_set" => [I64] error_set(I64) -> ();
    "extism_error_get" => [ToI64] error_get() -> (I64);
    "extism_memory_bytes" => [ToI64] legacy_memory_bytes() -> (I64);
    "extism_config_get" => legacy_config_get(I64) -> (I64);
    "extism_var_get" => legacy_var_get(I64) -> (I64);
    "extism_var_set" => legacy_var_set(I64, I64) -> ();
    "extism_http_request" => legacy_http_request(I64, I64) -> (I64);
    "extism_http_status_code" => http_status_code() -> (I32);
    "extism_log_debug" => legacy_log_debug(I64) -> ();
    "extism_log_info" => legacy_log_info(I64) -> ();
    "extism_log_warn" => legacy_log_warn(I64) -> ();
    "extism_log_error" => legacy_log_error(I64) -> ();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extism::testing::{call, state, state_with, Recorder};

    #[test]
    fn every_kernel_function_is_in_both_tables() {
        for name in [
            "alloc",
            "free",
            "length",
            "load_u8",
            "load_u64",
            "store_u8",
            "store_u64",
            "input_set",
            "output_set",
            "input_length",
            "input_offset",
            "output_length",
            "output_offset",
            "input_load_u8",
            "input_load_u64",
            "reset",
            "error_set",
            "error_get",
            "memory_bytes",
        ] {
            assert!(EXTISM_FUNCTIONS.iter().any(|f| f.name == name), "{name}");
            assert!(LEGACY_FUNCTIONS.iter().any(|f| f.name == format!("extism_{name}")), "extism_{name}");
        }
    }

    #[test]
    fn config_get_answers_a_value_and_frees_the_key() {
        let mut st = state_with(|p| {
            p.config.insert("greeting".into(), "hello".into());
        });
        let key = st.kernel.store(b"greeting").unwrap();
        let value =
            call(&mut st, EXTISM_FUNCTIONS, "config_get", &[Val::I64(key as i64)]).unwrap().unwrap().as_i64() as u64;
        assert_eq!(st.kernel.bytes(value), Some(&b"hello"[..]));
        assert_eq!(st.kernel.length(key), 0, "1.x frees the key");
        let missing = st.kernel.store(b"nope").unwrap();
        assert_eq!(
            call(&mut st, EXTISM_FUNCTIONS, "config_get", &[Val::I64(missing as i64)]).unwrap(),
            Some(Val::I64(0))
        );
    }

    #[test]
    fn legacy_config_get_leaves_the_key_to_the_plugin() {
        let mut st = state();
        let key = st.kernel.store(b"k").unwrap();
        call(&mut st, LEGACY_FUNCTIONS, "extism_config_get", &[Val::I64(key as i64)]).unwrap();
        assert_eq!(st.kernel.length(key), 1);
    }

    #[test]
    fn a_builtin_given_a_bad_handle_ends_the_call() {
        let mut st = state();
        let h = st.kernel.store(b"abc").unwrap();
        let err = call(&mut st, EXTISM_FUNCTIONS, "config_get", &[Val::I64(h as i64 + 1)]).unwrap_err();
        assert!(err.message.contains("invalid handle offset for config key"), "{}", err.message);
        assert!(call(&mut st, EXTISM_FUNCTIONS, "log_info", &[Val::I64(-1)]).is_err());
        assert!(call(&mut st, EXTISM_FUNCTIONS, "var_set", &[Val::I64(h as i64), Val::I64(12345)]).is_err());
    }

    #[test]
    fn kernel_functions_given_bad_handles_answer_zero() {
        let mut st = state();
        for (name, args) in
            [("length", vec![Val::I64(-1)]), ("load_u64", vec![Val::I64(-8)]), ("load_u8", vec![Val::I64(1 << 40)])]
        {
            let r = call(&mut st, EXTISM_FUNCTIONS, name, &args).unwrap().unwrap();
            assert_eq!(r.as_i64(), 0, "{name}");
        }
        call(&mut st, EXTISM_FUNCTIONS, "free", &[Val::I64(-1)]).unwrap();
        call(&mut st, EXTISM_FUNCTIONS, "store_u64", &[Val::I64(-1), Val::I64(7)]).unwrap();
    }

    #[test]
    fn variables_survive_a_kernel_reset_and_value_zero_deletes() {
        let mut st = state();
        let (k, v) = (st.kernel.store(b"count").unwrap(), st.kernel.store(b"41").unwrap());
        call(&mut st, EXTISM_FUNCTIONS, "var_set", &[Val::I64(k as i64), Val::I64(v as i64)]).unwrap();
        st.kernel.reset();
        let k = st.kernel.store(b"count").unwrap();
        let got = call(&mut st, EXTISM_FUNCTIONS, "var_get", &[Val::I64(k as i64)]).unwrap().unwrap().as_i64() as u64;
        assert_eq!(st.kernel.bytes(got), Some(&b"41"[..]));
        let k = st.kernel.store(b"count").unwrap();
        call(&mut st, EXTISM_FUNCTIONS, "var_set", &[Val::I64(k as i64), Val::I64(0)]).unwrap();
        assert!(st.vars.get("count").is_none());
    }

    #[test]
    fn a_full_variable_store_ends_the_call() {
        let mut st = state_with(|p| p.max_var_bytes = 60);
        let (k, v) = (st.kernel.store(b"k").unwrap(), st.kernel.store(&[1; 20]).unwrap());
        let err = call(&mut st, EXTISM_FUNCTIONS, "var_set", &[Val::I64(k as i64), Val::I64(v as i64)]).unwrap_err();
        assert_eq!(err.message, "Variable store is full");
    }

    #[test]
    fn logs_go_to_the_server_at_their_level() {
        let recorder = Recorder::default();
        let mut st = crate::extism::testing::state_logging(recorder.clone());
        let h = st.kernel.store(b"hi there").unwrap();
        call(&mut st, EXTISM_FUNCTIONS, "log_warn", &[Val::I64(h as i64)]).unwrap();
        assert_eq!(recorder.lines(), vec![(LogLevel::Warn, "hi there".to_owned())]);
        assert_eq!(st.kernel.length(h), 0);
        // Below the server's threshold (info): not written, still freed.
        let h = st.kernel.store(b"quiet").unwrap();
        call(&mut st, EXTISM_FUNCTIONS, "log_debug", &[Val::I64(h as i64)]).unwrap();
        assert_eq!(recorder.lines().len(), 1);
        assert_eq!(st.kernel.length(h), 0);
        assert_eq!(call(&mut st, EXTISM_FUNCTIONS, "get_log_level", &[]).unwrap(), Some(Val::I32(2)));
    }

    #[test]
    fn http_request_to_a_host_outside_allowed_hosts_is_refused() {
        let mut st = state_with(|p| p.allowed_hosts = vec!["*.allowed.test".into()]);
        let req = st.kernel.store(br#"{"url":"http://denied.test/x"}"#).unwrap();
        let err = call(&mut st, EXTISM_FUNCTIONS, "http_request", &[Val::I64(req as i64), Val::I64(0)]).unwrap_err();
        assert!(err.message.contains("not allowed"), "{}", err.message);
    }

    #[test]
    fn http_request_answers_the_body_status_and_headers() {
        use crate::extism::testing::FakeHttp;
        let http = FakeHttp::answering(201, &[("x-a", "1")], b"created");
        let mut st =
            crate::extism::testing::state_with_http(http.clone(), |p| p.allowed_hosts = vec!["api.test".into()]);
        let req = st.kernel.store(br#"{"url":"http://api.test/x","method":"post","headers":{"k":"v"}}"#).unwrap();
        let body = st.kernel.store(b"payload").unwrap();
        let out = call(&mut st, EXTISM_FUNCTIONS, "http_request", &[Val::I64(req as i64), Val::I64(body as i64)])
            .unwrap()
            .unwrap()
            .as_i64() as u64;
        assert_eq!(st.kernel.bytes(out), Some(&b"created"[..]));
        assert_eq!(call(&mut st, EXTISM_FUNCTIONS, "http_status_code", &[]).unwrap(), Some(Val::I32(201)));
        let h = call(&mut st, EXTISM_FUNCTIONS, "http_headers", &[]).unwrap().unwrap().as_i64() as u64;
        assert_eq!(st.kernel.bytes(h), Some(&br#"{"x-a":"1"}"#[..]));
        let sent = http.requests();
        assert_eq!(sent[0].method, "POST");
        assert_eq!(sent[0].body.as_deref(), Some(&b"payload"[..]));
        assert_eq!(sent[0].headers, vec![("k".to_owned(), "v".to_owned())]);
        assert_eq!((st.kernel.length(req), st.kernel.length(body)), (0, 0));
    }
}
