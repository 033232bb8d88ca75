//! The plugins `make plugins` builds (the Wasmo templates with both PDKs, the pre-1.0 ABI, OPA,
//! the hostile module, the link tests) run through [`ExtismPlugin`] and [`Pool`] on both
//! production runtimes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::extism::entity::document::{self, Settings};
use crate::extism::opa::{decide, OpaVerdict};
use crate::extism::steps::{input, output, route::RouteInfo, view::RequestParts};
use crate::extism::testing::Recorder;
use crate::runtime::wamr::WamrEngine;
use crate::runtime::wasmtime::WasmtimeEngine;
use crate::runtime::TrapKind;

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("build/plugins")
}

fn services(recorder: Recorder) -> Arc<Services> {
    Arc::new(Services {
        host: Arc::new(recorder),
        http: None,
        datastore: Arc::new(crate::extism::otoroshi::datastore::InProcessDataStore::new(1 << 20)),
        maps: Arc::new(crate::extism::otoroshi::maps::Maps::new(1 << 20)),
    })
}

/// An exported entity for `module` (a file of build/plugins/), with `extra` merged into `config`.
fn entity_json(module: &str, function: &str, extra: serde_json::Value) -> String {
    let mut config = serde_json::json!({
        "source": {"kind": "File", "path": plugins_dir().join(module), "opts": {}},
        "memoryPages": 50,
        "functionName": function,
        "config": {"tag": "from-the-entity"},
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            config[k] = v;
        }
    }
    serde_json::json!({"id": format!("test-{module}"), "name": module, "config": config, "steps": ["ValidateAccess"]})
        .to_string()
}

struct Loaded {
    plugin: Arc<ExtismPlugin>,
    recorder: Recorder,
}

fn try_load(
    engine: &dyn Engine<ExtismState>,
    module: &str,
    function: &str,
    extra: serde_json::Value,
    settings: &Settings,
) -> Result<Loaded, PluginError> {
    let file = plugins_dir().join("entity.json");
    let doc = document::parse(&entity_json(module, function, extra), &file, &[]).expect("a valid entity");
    let resolved = document::resolve(&doc.entities).unwrap();
    let wasm =
        module_bytes(&resolved[0].target.config.source, &file, settings, &crate::extism::http::BlockingHttpClient)
            .unwrap_or_else(|e| panic!("{e} (run `make plugins` first)"));
    let recorder = Recorder::default();
    let plugin = ExtismPlugin::new(engine, &resolved[0], &wasm, settings, services(recorder.clone()))?;
    Ok(Loaded { plugin: Arc::new(plugin), recorder })
}

fn load(engine: &dyn Engine<ExtismState>, module: &str, function: &str, extra: serde_json::Value) -> Loaded {
    let settings = Settings { callback_timeout: Duration::from_millis(300), ..Settings::default() };
    try_load(engine, module, function, extra, &settings).unwrap_or_else(|e| panic!("{}: {e}", engine.name()))
}

fn request(headers: &[(&str, &str)]) -> RequestParts {
    RequestParts {
        id: 1,
        method: "GET".into(),
        uri: "/hello?x=1".into(),
        version: "HTTP/1.1".into(),
        headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        remote: "127.0.0.1".into(),
        ..Default::default()
    }
}

/// The access step's input for `request`, as the chain builds it.
fn access_input(plugin: &ExtismPlugin, request: &RequestParts) -> String {
    let route = RouteInfo { id: "r".into(), name: "r".into(), ..Default::default() }.json().to_string();
    let attrs = serde_json::Map::new();
    let ctx = input::Context { snowflake: "1", request, route: &route, config: &plugin.context_text, attrs: &attrs };
    String::from_utf8(input::access(&ctx)).unwrap()
}

fn access(pool: &mut Pool, headers: &[(&str, &str)]) -> output::Gate {
    let request = request(headers);
    let function = pool.plugin().function_name.clone().unwrap_or_else(|| "access".into());
    let out = pool.call(&function, access_input(pool.plugin(), &request).as_bytes());
    output::access(out.as_deref(), &mut output::Attrs::default(), &request.headers)
}

fn status(gate: output::Gate) -> u16 {
    match gate {
        output::Gate::Continue => 0,
        output::Gate::Respond(r) => r.status,
    }
}

fn templates_allow_and_deny(engine: &dyn Engine<ExtismState>) {
    for pdk in ["as", "rust"] {
        let loaded =
            load(engine, &format!("otoroshi_{pdk}_template_access_control.wasm"), "execute", serde_json::json!({}));
        let mut pool = Pool::new(loaded.plugin);
        for _ in 0..3 {
            assert_eq!(status(access(&mut pool, &[("foo", "bar")])), 0, "{pdk} on {}", engine.name());
            assert_eq!(status(access(&mut pool, &[("foo", "baz")])), 401, "{pdk} on {}", engine.name());
        }
        assert_eq!(pool.created, 1, "one instance serves every call");
    }
}

fn legacy_abi(engine: &dyn Engine<ExtismState>) {
    let loaded = load(engine, "extism_legacy_abi.wasm", "access", serde_json::json!({}));
    let mut pool = Pool::new(loaded.plugin);
    assert_eq!(status(access(&mut pool, &[("accept", "*/*")])), 0);
    assert_eq!(status(access(&mut pool, &[("x-deny", "1")])), 403);
    assert_eq!(pool.call("echo", b"as it is").unwrap(), b"as it is");
    assert_eq!(pool.call("config_tag", b"").unwrap(), b"from-the-entity");
    // Variables live as long as the instance.
    assert_eq!(pool.call("count", b"").unwrap(), b"1");
    assert_eq!(pool.call("count", b"").unwrap(), b"2");
    assert_eq!(pool.call("log", b"").unwrap(), b"logged");
    assert!(loaded.recorder.lines().iter().any(|(_, l)| l == "legacy-abi log_info"));
    assert_eq!(pool.call("fail", b"").unwrap_err().to_string(), "forced failure in legacy-abi");
}

fn hostile(engine: &dyn Engine<ExtismState>) {
    let loaded = load(engine, "extism_hostile.wasm", "ok", serde_json::json!({"memoryPages": 20}));
    let mut pool = Pool::new(loaded.plugin);
    let ok = |pool: &mut Pool| assert_eq!(pool.call("ok", b"").unwrap(), br#"{"result":true}"#, "{}", engine.name());
    ok(&mut pool);
    for failing in [
        "error_bad_handle",
        "error_then_zero",
        "output_then_error",
        "nonzero_no_error",
        "trap",
        "config_bad_key",
        "var_bad_handles",
        "http_bad_request",
        "log_bad_handle",
        "recurse",
    ] {
        assert!(pool.call(failing, b"{}").is_err(), "{failing} on {}", engine.name());
        ok(&mut pool);
    }
    // Loads and stores outside the arena read 0 / are ignored; a bad output is ignored
    // (docs/otoroshi.md, "Extism ABI"): the plugin goes on.
    assert_eq!(pool.call("load_bad_handle", b"").unwrap(), b"survived");
    assert_eq!(pool.call("store_bad_handle", b"").unwrap(), b"survived");
    assert_eq!(pool.call("output_bad_handle", b"").unwrap(), b"");
    assert_eq!(pool.call("output_too_long", b"").unwrap(), b"");
    assert_eq!(pool.call("error_then_zero", b"").unwrap_err().to_string(), "error set, then returned 0");
    assert_eq!(pool.call("length_bad_handle", b"").unwrap(), b"zero");
    assert_eq!(pool.call("alloc_huge", b"").unwrap(), b"alloc-returned-0");
    assert_eq!(pool.call("alloc_zero", b"").unwrap(), b"alloc-returned-0");
    // The kernel's arena is capped by memoryPages (20 pages): alloc stops, or the call ends.
    if let Ok(out) = pool.call("alloc_until_fail", b"") {
        assert_eq!(out, b"alloc-stopped");
    }
    assert_eq!(pool.call("grow_memory_huge", b"").unwrap(), b"grow-failed", "{}", engine.name());
    for tolerated in ["free_bad_handle", "free_twice", "use_after_free", "input_past_end", "var_too_big"] {
        let _ = pool.call(tolerated, b"{}");
        ok(&mut pool);
    }
    // An endless loop ends that call only, as a timeout; the next call gets a new instance.
    let created = pool.created;
    let started = std::time::Instant::now();
    let err = pool.call("spin", b"").unwrap_err();
    assert_eq!(err.trap().map(|t| t.kind), Some(TrapKind::Timeout), "{}: {err}", engine.name());
    assert!(started.elapsed() < Duration::from_secs(5));
    ok(&mut pool);
    assert_eq!(pool.created, created + 1, "the instance that trapped was replaced");
}

fn authorizations_decide_what_links(engine: &dyn Engine<ExtismState>) {
    let settings = Settings::default();
    let err = try_load(engine, "otoroshi_link_plugin_map_write.wasm", "access", serde_json::json!({}), &settings)
        .err()
        .expect("not granted");
    assert!(matches!(err, PluginError::Link { .. }), "{err}");
    assert!(err.to_string().contains("config.authorizations.pluginMapAccess.write"), "{err}");
    let granted = serde_json::json!({"authorizations": {"pluginMapAccess": {"read": false, "write": true}}});
    let loaded = try_load(engine, "otoroshi_link_plugin_map_write.wasm", "access", granted, &settings).unwrap();
    assert_eq!(status(access(&mut Pool::new(loaded.plugin), &[])), 0);
    // Functions Otoroshi always links need no grant.
    let loaded = try_load(engine, "otoroshi_link_always.wasm", "access", serde_json::json!({}), &settings).unwrap();
    assert_eq!(status(access(&mut Pool::new(loaded.plugin), &[])), 0);
    // An HTTP-capable plugin says so (it must run off the event loop).
    let granted = serde_json::json!({"authorizations": {"httpAccess": true}});
    let loaded = try_load(engine, "otoroshi_link_http.wasm", "access", granted, &settings).unwrap();
    assert!(loaded.plugin.makes_http_calls);
}

fn opa_policy(engine: &dyn Engine<ExtismState>) {
    let loaded = load(engine, "opa_policy.wasm", "", serde_json::json!({"opa": true}));
    assert_eq!(loaded.plugin.kind, Kind::Opa);
    let mut pool = Pool::new(loaded.plugin.clone());
    let verdict = |pool: &mut Pool, headers: &[(&str, &str)]| {
        let input = access_input(&loaded.plugin, &request(headers));
        pool.evaluate(input.as_bytes()).map(|r| decide(&r))
    };
    for _ in 0..2 {
        assert_eq!(verdict(&mut pool, &[("foo", "bar")]).unwrap(), OpaVerdict::Allowed, "{}", engine.name());
        assert!(matches!(verdict(&mut pool, &[("foo", "nope")]).unwrap(), OpaVerdict::Denied { status: 403, .. }));
    }
    let err = verdict(&mut pool, &[("x-opa-abort", "1")]).unwrap_err();
    assert!(err.to_string().contains("opa_abort requested by the input"), "{err}");
    assert_eq!(verdict(&mut pool, &[("foo", "bar")]).unwrap(), OpaVerdict::Allowed);
    verdict(&mut pool, &[("x-opa-println", "1"), ("foo", "bar")]).unwrap();
    assert!(loaded.recorder.lines().iter().any(|(_, l)| l.contains("opa_println requested by the input")));
}

fn kill_options_recycle(engine: &dyn Engine<ExtismState>) {
    let extra = serde_json::json!({"killOptions": {"max_calls": 2}});
    let loaded = load(engine, "extism_legacy_abi.wasm", "access", extra);
    let mut pool = Pool::new(loaded.plugin);
    assert_eq!(pool.call("count", b"").unwrap(), b"1");
    assert_eq!(pool.call("count", b"").unwrap(), b"2");
    // Retired after two calls: a new instance starts from zero.
    assert_eq!(pool.call("count", b"").unwrap(), b"1");
    assert_eq!(pool.created, 2);
}

fn memory_pages_cap_the_module(engine: &dyn Engine<ExtismState>) {
    // The Rust template's data and stack need more than one page: it cannot be instantiated.
    let loaded =
        load(engine, "otoroshi_rust_template_access_control.wasm", "execute", serde_json::json!({"memoryPages": 1}));
    let err = Pool::new(loaded.plugin).take().err().expect("over memoryPages");
    assert!(matches!(err, PluginError::Instantiate { .. }), "{err}");
}

/// Writes "hello from wasi" to stdout with WASI's `fd_write`, outputs the byte count it got.
const WASI_PLUGIN: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasi\n")
  (func (export "run") (result i32)
    (local $h i64)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $h (call $alloc (i64.const 1)))
    (call $store_u8 (local.get $h) (i32.load (i32.const 8)))
    (call $output_set (local.get $h) (i64.const 1))
    (i32.const 0)))"#;

fn wasi_with_wasi_true(engine: &dyn Engine<ExtismState>) {
    let path = std::env::temp_dir().join(format!("pwh-extism-wasi-{}-{}.wasm", engine.name(), std::process::id()));
    std::fs::write(&path, wat::parse_str(WASI_PLUGIN).unwrap()).unwrap();
    let module = path.to_str().unwrap();
    let settings = Settings::default();
    let err = try_load(engine, module, "run", serde_json::json!({}), &settings).err().expect("wasi: false");
    assert!(err.to_string().contains("needs config.wasi: true"), "{err}");
    let loaded = try_load(engine, module, "run", serde_json::json!({"wasi": true}), &settings).unwrap();
    let mut pool = Pool::new(loaded.plugin);
    assert_eq!(pool.call("run", b"").unwrap(), [16]);
    assert!(loaded.recorder.lines().contains(&(crate::abi::LogLevel::Info, "hello from wasi".to_owned())));
    let _ = std::fs::remove_file(path);
}

macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod wasmtime {
            use super::*;
            $(#[test] fn $name() { super::$name(WasmtimeEngine::shared().unwrap().as_ref()) })*
        }
        mod wamr {
            use super::*;
            $(#[test] fn $name() { super::$name(WamrEngine::shared().unwrap().as_ref()) })*
        }
    };
}

on_both_runtimes!(
    templates_allow_and_deny,
    legacy_abi,
    hostile,
    authorizations_decide_what_links,
    opa_policy,
    kill_options_recycle,
    memory_pages_cap_the_module,
    wasi_with_wasi_true,
);
