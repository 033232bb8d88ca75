//! The table linked on a real runtime: a minimal Wasmtime adapter (what `runtime::wasmtime` will
//! do once its traits are generic over the state, see docs/otoroshi.md "Linking") runs
//! hand-written Extism plugins through the call protocol and the step contracts.

use std::sync::Arc;

use wasmtime::{Engine, Linker, Module, Store};

use super::authorizations::{Authorizations, DataRights};
use super::call::{self, CallError, ExtismGuest};
use super::link::{resolve_all, LinkOptions, Resolved};
use super::state::ExtismState;
use super::steps::{input, output, route::RouteInfo, view::RequestParts};
use super::testing::{state_with, Recorder};
use crate::abi::LogLevel;
use crate::runtime::{ExportDesc, FuncType, ImportDesc, Trap, Val, ValType};

fn to_ours(v: &wasmtime::Val) -> Val {
    match v {
        wasmtime::Val::I64(x) => Val::I64(*x),
        other => Val::I32(other.i32().unwrap_or(0)),
    }
}

fn to_theirs(v: Val) -> wasmtime::Val {
    match v {
        Val::I32(x) => wasmtime::Val::I32(x),
        Val::I64(x) => wasmtime::Val::I64(x),
    }
}

fn ty(t: &wasmtime::ValType) -> ValType {
    match t {
        wasmtime::ValType::I32 => ValType::I32,
        wasmtime::ValType::I64 => ValType::I64,
        wasmtime::ValType::F32 => ValType::F32,
        wasmtime::ValType::F64 => ValType::F64,
        _ => ValType::Other,
    }
}

/// A compiled plugin and its instance.
struct Plugin {
    store: Store<ExtismState>,
    instance: wasmtime::Instance,
    exports: Vec<ExportDesc>,
}

impl ExtismGuest for Plugin {
    fn state(&mut self) -> &mut ExtismState {
        self.store.data_mut()
    }

    fn call_export(&mut self, name: &str) -> Result<Option<Val>, Trap> {
        let f = self.instance.get_func(&mut self.store, name).ok_or_else(|| Trap::new(format!("no export {name}")))?;
        let mut results = vec![wasmtime::Val::I32(0); f.ty(&self.store).results().len()];
        f.call(&mut self.store, &[], &mut results).map_err(|e| Trap::new(format!("{e:#}")))?;
        Ok(results.first().map(to_ours))
    }
}

/// Resolves the module's imports against the tables and links each entry as a closure over the
/// instance's state: the whole adapter.
fn load(wat: &str, state: ExtismState, options: &LinkOptions) -> Result<Plugin, String> {
    let engine = Engine::default();
    let module = Module::new(&engine, wat::parse_str(wat).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let imports: Vec<ImportDesc> = module
        .imports()
        .map(|i| ImportDesc {
            module: i.module().to_owned(),
            name: i.name().to_owned(),
            ty: i.ty().func().map(|f| FuncType {
                params: f.params().map(|p| ty(&p)).collect(),
                results: f.results().map(|r| ty(&r)).collect(),
            }),
        })
        .collect();
    let exports: Vec<ExportDesc> = module
        .exports()
        .map(|e| ExportDesc {
            name: e.name().to_owned(),
            ty: e.ty().func().map(|f| FuncType {
                params: f.params().map(|p| ty(&p)).collect(),
                results: f.results().map(|r| ty(&r)).collect(),
            }),
        })
        .collect();
    let resolved = resolve_all(&imports, options).map_err(|e| e.to_string())?;
    let mut linker: Linker<ExtismState> = Linker::new(&engine);
    for (import, resolved) in imports.iter().zip(resolved) {
        let Resolved::Host(entry) = resolved else {
            return Err(format!("{}.{} needs more than the table", import.module, import.name));
        };
        let entry = *entry;
        let ft = wasmtime::FuncType::new(
            &engine,
            entry
                .params
                .iter()
                .map(|p| if *p == ValType::I64 { wasmtime::ValType::I64 } else { wasmtime::ValType::I32 }),
            entry
                .results
                .iter()
                .map(|r| if *r == ValType::I64 { wasmtime::ValType::I64 } else { wasmtime::ValType::I32 }),
        );
        linker
            .func_new(&import.module, &import.name, ft, move |mut caller, args, results| {
                let args: Vec<Val> = args.iter().map(to_ours).collect();
                match entry.call(caller.data_mut(), &args) {
                    Ok(Some(v)) => {
                        results[0] = to_theirs(v);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(trap) => Err(wasmtime::Error::msg(trap.message)),
                }
            })
            .map_err(|e| e.to_string())?;
    }
    let mut store = Store::new(&engine, state);
    let instance = linker.instantiate(&mut store, &module).map_err(|e| format!("{e:#}"))?;
    let mut plugin = Plugin { store, instance, exports };
    let exports = plugin.exports.clone();
    call::initialize(&mut plugin, &exports).map_err(|t| t.message)?;
    Ok(plugin)
}

fn run(plugin: &mut Plugin, function: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
    call::check_export(&plugin.exports, function)?;
    call::call(plugin, function, input)
}

/// An Extism 1.x plugin written against the kernel functions, as a PDK compiles to.
const EXTISM_PLUGIN: &str = r#"
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
  (import "extism:host/env" "log_info" (func $log_info (param i64)))
  (import "extism:host/env" "load_u64" (func $load_u64 (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "free" (func $free (param i64)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "greeting")
  (data (i32.const 16) "bad input")
  (data (i32.const 32) "hello from wasm")
  (global $inits (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $inits (i32.add (global.get $inits) (i32.const 1))))
  (func (export "inits") (result i32) (global.get $inits))

  ;; Copies `len` bytes of linear memory at `at` into a new kernel block.
  (func $block (param $at i32) (param $len i64) (result i64)
    (local $h i64) (local $i i64)
    (local.set $h (call $alloc (local.get $len)))
    (block $done (loop $copy
      (br_if $done (i64.ge_u (local.get $i) (local.get $len)))
      (call $store_u8 (i64.add (local.get $h) (local.get $i)) (i32.load8_u (i32.add (local.get $at) (i32.wrap_i64 (local.get $i)))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $copy)))
    (local.get $h))

  ;; output = input, upper-cased (ASCII)
  (func (export "upper") (result i32)
    (local $n i64) (local $h i64) (local $i i64) (local $c i32)
    (local.set $n (call $input_length))
    (local.set $h (call $alloc (local.get $n)))
    (block $done (loop $each
      (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
      (local.set $c (call $input_load_u8 (local.get $i)))
      (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
        (then (local.set $c (i32.sub (local.get $c) (i32.const 32)))))
      (call $store_u8 (i64.add (local.get $h) (local.get $i)) (local.get $c))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $each)))
    (call $output_set (local.get $h) (local.get $n))
    (i32.const 0))

  ;; output = config_get("greeting"); also logs a line
  (func (export "greeting") (result i32)
    (local $v i64)
    (call $log_info (call $block (i32.const 32) (i64.const 15)))
    (local.set $v (call $config_get (call $block (i32.const 0) (i64.const 8))))
    (call $output_set (local.get $v) (call $length (local.get $v)))
    (i32.const 0))

  ;; sets an error and returns 0
  (func (export "fails") (result i32)
    (call $error_set (call $block (i32.const 16) (i64.const 9)))
    (i32.const 0))

  ;; bad handles everywhere, then a normal output: nothing may break
  (func (export "hostile") (result i32)
    (drop (call $load_u64 (i64.const -1)))
    (drop (call $load_u8 (i64.const 0x7fffffffffff)))
    (call $store_u64 (i64.const -8) (i64.const 1))
    (call $store_u8 (i64.const 3) (i32.const 1))
    (drop (call $length (i64.const 12345)))
    (call $free (i64.const 77777))
    (drop (call $input_load_u64 (i64.const -1)))
    (drop (call $alloc (i64.const -1)))
    (call $output_set (i64.const 77) (i64.const -1))
    (call $output_set (call $block (i32.const 32) (i64.const 5)) (i64.const 5))
    (i32.const 0))

  ;; an Otoroshi access control: allows when the input is longer than 100 bytes
  (func (export "access") (result i32)
    (if (i64.gt_u (call $input_length) (i64.const 100))
      (then (call $output_set (call $block (i32.const 64) (i64.const 15)) (i64.const 15)))
      (else (call $output_set (call $block (i32.const 80) (i64.const 54)) (i64.const 54))))
    (i32.const 0))
  (data (i32.const 64) "{\"result\":true}")
  (data (i32.const 80) "{\"result\":false,\"error\":{\"message\":\"no\",\"status\":401}}")

  (func (export "traps") (result i32) unreachable)
  (func (export "nonzero") (result i32) (i32.const 7)))
"#;

fn plugin(edit: impl FnOnce(&mut super::state::PluginContext)) -> Plugin {
    load(EXTISM_PLUGIN, state_with(edit), &LinkOptions::default()).unwrap()
}

#[test]
fn a_plugin_reads_its_input_and_sets_its_output() {
    let mut p = plugin(|_| {});
    assert_eq!(run(&mut p, "upper", b"hello, extism").unwrap(), b"HELLO, EXTISM");
    assert_eq!(run(&mut p, "upper", b"").unwrap(), b"");
}

#[test]
fn the_initializer_runs_once_per_instance() {
    let mut p = plugin(|_| {});
    run(&mut p, "upper", b"a").unwrap();
    let n = p.call_export("inits").unwrap();
    assert_eq!(n, Some(Val::I32(1)));
}

#[test]
fn config_get_and_logs_reach_the_host() {
    let rec = Recorder::default();
    let mut plugin_ctx = super::testing::plugin_context();
    plugin_ctx.config.insert("greeting".into(), "bonjour".into());
    let services = super::state::Services {
        host: Arc::new(rec.clone()),
        http: None,
        datastore: Arc::new(super::otoroshi::datastore::InProcessDataStore::new(1 << 20)),
        maps: Arc::new(super::otoroshi::maps::Maps::new(1 << 20)),
    };
    let state = ExtismState::new(Arc::new(plugin_ctx), Arc::new(services));
    let mut p = load(EXTISM_PLUGIN, state, &LinkOptions::default()).unwrap();
    assert_eq!(run(&mut p, "greeting", b"").unwrap(), b"bonjour");
    assert_eq!(rec.lines(), vec![(LogLevel::Info, "hello from wasm".to_owned())]);
}

#[test]
fn errors_traps_and_return_codes_fail_the_call() {
    let mut p = plugin(|_| {});
    assert_eq!(run(&mut p, "fails", b"x").unwrap_err().to_string(), "bad input");
    assert!(run(&mut p, "traps", b"x").unwrap_err().trap().is_some());
    assert!(matches!(run(&mut p, "nonzero", b"x"), Err(CallError::ExitCode(7))));
    assert!(matches!(run(&mut p, "missing", b"x"), Err(CallError::NoSuchFunction(_))));
    // The instance still works after all that.
    assert_eq!(run(&mut p, "upper", b"ok").unwrap(), b"OK");
}

#[test]
fn bad_handles_never_break_the_host() {
    let mut p = plugin(|_| {});
    assert_eq!(run(&mut p, "hostile", b"").unwrap(), b"hello");
}

#[test]
fn an_access_step_runs_end_to_end() {
    let mut p = plugin(|_| {});
    let request = RequestParts {
        id: 1,
        method: "GET".into(),
        uri: "/".into(),
        version: "HTTP/1.1".into(),
        headers: vec![("Accept".into(), "application/json".into())],
        remote: "127.0.0.1".into(),
        ..Default::default()
    };
    let route = RouteInfo { id: "r".into(), name: "r".into(), ..Default::default() }.json().to_string();
    let attrs = serde_json::Map::new();
    let ctx = input::Context { snowflake: "1", request: &request, route: &route, config: "{}", attrs: &attrs };
    let json = String::from_utf8(input::access(&ctx)).unwrap();
    let out = run(&mut p, "access", json.as_bytes());
    let mut attrs = output::Attrs::default();
    assert_eq!(output::access(out.as_deref().map_err(|e| e), &mut attrs, &request.headers), output::Gate::Continue);
    let out = run(&mut p, "access", b"{}");
    let output::Gate::Respond(r) = output::access(out.as_deref().map_err(|e| e), &mut attrs, &request.headers) else {
        panic!()
    };
    assert_eq!(r.status, 401);
}

const OTOROSHI_PLUGIN: &str = r#"
(module
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "env" "proxy_log" (func $proxy_log (param i32 i64 i64) (result i32)))
  (import "env" "proxy_plugin_map_set" (func $map_set (param i64 i64) (result i64)))
  (memory 1)
  (data (i32.const 0) "{\"key\":\"k\",\"value\":\"v\"}")
  (func $block (param $at i32) (param $len i64) (result i64)
    (local $h i64) (local $i i64)
    (local.set $h (call $alloc (local.get $len)))
    (block $done (loop $copy
      (br_if $done (i64.ge_u (local.get $i) (local.get $len)))
      (call $store_u8 (i64.add (local.get $h) (local.get $i)) (i32.load8_u (i32.add (local.get $at) (i32.wrap_i64 (local.get $i)))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $copy)))
    (local.get $h))
  (func (export "run") (result i32)
    (local $h i64)
    (local.set $h (call $block (i32.const 0) (i64.const 23)))
    (drop (call $proxy_log (i32.const 2) (local.get $h) (i64.const 23)))
    (drop (call $map_set (local.get $h) (i64.const 23)))
    (i32.const 0)))
"#;

#[test]
fn an_unauthorized_otoroshi_import_fails_instantiation_naming_the_setting() {
    let err = load(OTOROSHI_PLUGIN, state_with(|_| {}), &LinkOptions::default()).err().unwrap();
    assert_eq!(err, "the plugin imports env.proxy_plugin_map_set, which needs config.authorizations.pluginMapAccess.write: true; the entity does not grant it");
}

#[test]
fn an_authorized_otoroshi_plugin_uses_its_map() {
    let auth = Authorizations { plugin_map_access: DataRights { read: true, write: true }, ..Default::default() };
    let state = state_with(|p| p.id = "me".into());
    let maps = state.services.maps.clone();
    let mut p = load(OTOROSHI_PLUGIN, state, &LinkOptions { authorizations: auth, ..Default::default() }).unwrap();
    run(&mut p, "run", b"").unwrap();
    assert_eq!(maps.get("me", "k"), Some(b"v".to_vec()));
}

const LEGACY_PLUGIN: &str = r#"
(module
  (import "env" "extism_input_length" (func $input_length (result i64)))
  (import "env" "extism_input_offset" (func $input_offset (result i64)))
  (import "env" "extism_output_set" (func $output_set (param i64 i64)))
  (func (export "echo") (result i32)
    (call $output_set (call $input_offset) (call $input_length))
    (i32.const 0)))
"#;

#[test]
fn a_pre_1_0_plugin_runs() {
    let mut p = load(LEGACY_PLUGIN, state_with(|_| {}), &LinkOptions::default()).unwrap();
    assert_eq!(run(&mut p, "echo", b"legacy").unwrap(), b"legacy");
}

/// An OPA-shaped policy: imports `env.memory` and `env.opa_abort`, allows when the input has more
/// than two bytes.
const POLICY: &str = r#"
(module
  (import "env" "opa_abort" (func $abort (param i32)))
  (import "env" "memory" (memory 2))
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 100) "[{\"result\":true}]\00[{\"result\":false}]\00")
  (func (export "opa_malloc") (param $n i32) (result i32)
    (global.get $heap)
    (global.set $heap (i32.add (global.get $heap) (local.get $n))))
  (func (export "opa_json_parse") (param i32 i32) (result i32) (i32.const 4000))
  (func (export "opa_heap_ptr_get") (result i32) (global.get $heap))
  (func (export "opa_eval") (param $r i32) (param $e i32) (param $data i32) (param $in i32) (param $len i32) (param $heap i32) (param $fmt i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 2))
      (then (memory.copy (local.get $heap) (i32.const 100) (i32.const 18)))
      (else (memory.copy (local.get $heap) (i32.const 118) (i32.const 19))))
    (local.get $heap)))
"#;

struct Policy {
    store: Store<()>,
    instance: wasmtime::Instance,
}

impl super::opa::OpaGuest for Policy {
    fn call(&mut self, export: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
        let f =
            self.instance.get_func(&mut self.store, export).ok_or_else(|| Trap::new(format!("no export {export}")))?;
        let args: Vec<wasmtime::Val> = args.iter().map(|v| to_theirs(*v)).collect();
        let mut results = vec![wasmtime::Val::I32(0); f.ty(&self.store).results().len()];
        f.call(&mut self.store, &args, &mut results).map_err(|e| Trap::new(format!("{e:#}")))?;
        Ok(results.first().map(to_ours))
    }
    fn memory(&mut self) -> &mut [u8] {
        let memory = self.instance.get_memory(&mut self.store, "memory").expect("the rewrite exports it");
        memory.data_mut(&mut self.store)
    }
}

#[test]
fn an_opa_policy_runs_with_its_memory_defined_by_the_rewrite() {
    use super::opa::{decide, evaluate, initialize, OpaImport, OpaVerdict};
    let wasm = super::opa_memory::define_imported_memory(&wat::parse_str(POLICY).unwrap(), 4).unwrap();
    let engine = Engine::default();
    let module = Module::new(&engine, &wasm).unwrap();
    let mut linker: Linker<()> = Linker::new(&engine);
    let abort = OpaImport::from_name("opa_abort").unwrap();
    linker
        .func_new(
            "env",
            "opa_abort",
            wasmtime::FuncType::new(&engine, [wasmtime::ValType::I32], []),
            move |mut caller, args, _| {
                let memory = caller
                    .get_export("memory")
                    .and_then(wasmtime::Extern::into_memory)
                    .map(|m| m.data(&caller).to_vec())
                    .unwrap_or_default();
                abort.invoke(&memory, &[to_ours(&args[0])]).map(|_| ()).map_err(|t| wasmtime::Error::msg(t.message))
            },
        )
        .unwrap();
    let mut store = Store::new(&engine, ());
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let mut policy = Policy { store, instance };
    let init = initialize(&mut policy).unwrap();
    assert_eq!(decide(&evaluate(&mut policy, init, br#"{"request":{}}"#).unwrap()), OpaVerdict::Allowed);
    assert_eq!(
        decide(&evaluate(&mut policy, init, b"{}").unwrap()),
        OpaVerdict::Denied { status: 403, message: "Forbidden access".into() }
    );
}
