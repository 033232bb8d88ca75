//! From YAML to running plugins: code compiled once, instances shared by
//! `vm_id`, and shared data exact under two threads.

mod common;
common::for_each_runtime! {
use common::*;

use std::sync::Arc;

use proxy_wasm_host::files;
use proxy_wasm_host::host::ServerHost;
use proxy_wasm_host::loader::{self, PluginError, PluginVms};
use proxy_wasm_host::vm::{Verdict, VmOptions};

fn write_config(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let wasm = repo_root().join("build/plugins/rust_sdk_filter.wasm");
    let _ = built_plugin("rust_sdk_filter.wasm");
    let path = dir.join("plugins.yaml");
    // Every plugin runs on the runtime under test.
    let yaml = yaml.replace("WASM", &wasm.display().to_string()).replace("vm_config: {", &format!("vm_config: {{ runtime: {RUNTIME},"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pwh-{name}-{RUNTIME}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn plugins_with_the_same_vm_id_and_code_share_one_instance() {
    let dir = temp_dir("share");
    let vm_id = unique_vm_id("shared");
    let path = write_config(
        &dir,
        &format!(
            r#"
- config:
    name: first
    configuration: '{{"tag":"one"}}'
    vm_config: {{ vm_id: "{vm_id}", code: {{ local: {{ filename: "WASM" }} }} }}
- config:
    name: second
    configuration: '{{"tag":"two"}}'
    vm_config: {{ vm_id: "{vm_id}", code: {{ local: {{ filename: "WASM" }} }} }}
- config:
    name: third
    vm_config: {{ vm_id: "{vm_id}-other", code: {{ local: {{ filename: "WASM" }} }} }}
"#
        ),
    );
    let configs = files::load_file(&path).unwrap();
    let plugins = loader::load(&configs).unwrap();
    assert!(Arc::ptr_eq(&plugins[0].code, &plugins[2].code), "the module is compiled once");
    let server = TestServer::new();
    let vms = PluginVms::start(&plugins, |_| server.clone() as Arc<dyn ServerHost>).unwrap();
    assert_eq!(vms.vms.len(), 2);
    assert_eq!(vms.roots.iter().map(|r| r.vm).collect::<Vec<_>>(), vec![0, 0, 1]);
    assert_ne!(vms.roots[0].root_context_id, vms.roots[1].root_context_id);
}

#[test]
fn a_plugin_chain_runs_every_plugin_in_order() {
    let dir = temp_dir("chain");
    let vm_id = unique_vm_id("chain");
    let path = write_config(
        &dir,
        &format!(
            r#"
plugins:
  - config:
      name: a
      configuration: '{{"tag":"a"}}'
      vm_config: {{ vm_id: "{vm_id}", code: {{ local: {{ filename: "WASM" }} }} }}
  - config:
      name: b
      configuration: '{{"tag":"b"}}'
      vm_config: {{ vm_id: "{vm_id}", code: {{ local: {{ filename: "WASM" }} }} }}
"#
        ),
    );
    let plugins = loader::load(&files::load_file(&path).unwrap()).unwrap();
    let server = TestServer::new();
    let mut vms = PluginVms::start(&plugins, |_| server.clone() as Arc<dyn ServerHost>).unwrap();
    let stream = TestStream::with_request(&[(":method", "GET"), (":path", "/")]);
    stream.set_response(&[(":status", "200")]);
    let mut contexts = Vec::new();
    for root in vms.roots.clone() {
        let vm = &mut vms.vms[root.vm];
        let ctx = vm.create_stream(root.root_context_id, Box::new(stream.clone())).unwrap();
        assert_eq!(vm.on_request_headers(ctx, 2, true).unwrap(), Verdict::Continue);
        contexts.push((root.vm, ctx));
    }
    for &(vm, ctx) in &contexts {
        vms.vms[vm].on_response_headers(ctx, 1, true).unwrap();
    }
    let tags: Vec<String> = stream.data().response_headers.iter().filter(|(k, _)| k == b"x-proxy-wasm").map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect();
    assert_eq!(tags, vec!["a", "b"]);
}

#[test]
fn a_missing_runtime_or_bad_code_names_the_yaml_file_and_plugin() {
    let dir = temp_dir("badcode");
    let wasm = dir.join("not-wasm.wasm");
    std::fs::write(&wasm, b"this is not wasm").unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "config:\n  name: broken\n  vm_config:\n    code:\n      local:\n        filename: not-wasm.wasm\n").unwrap();
    let e = loader::load(&files::load_file(&path).unwrap()).err().unwrap();
    assert!(matches!(e, PluginError::Load { .. }));
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}:1: plugin \"broken\": {}:", path.display(), wasm.display())), "{msg}");
}

#[test]
fn the_runtime_named_in_the_config_runs_the_plugin() {
    let dir = temp_dir("runtime");
    let path = dir.join("rt.yaml");
    let wasm = repo_root().join("build/plugins/rust_sdk_filter.wasm");
    let _ = built_plugin("rust_sdk_filter.wasm");
    std::fs::write(&path, format!("config:\n  name: w\n  vm_config:\n    runtime: ats.wasm.runtime.{RUNTIME}\n    vm_id: {}\n    code: {{ local: {{ filename: \"{}\" }} }}\n", unique_vm_id("rt"), wasm.display())).unwrap();
    let plugins = loader::load(&files::load_file(&path).unwrap()).unwrap();
    assert_eq!(plugins[0].code.engine, RUNTIME.as_str());
    let server = TestServer::new();
    let mut vms = PluginVms::start(&plugins, |_| server.clone() as Arc<dyn ServerHost>).unwrap();
    let root = vms.roots[0];
    let stream = TestStream::with_request(&[(":method", "GET"), (":path", "/")]);
    let vm = &mut vms.vms[root.vm];
    let ctx = vm.create_stream(root.root_context_id, Box::new(stream.clone())).unwrap();
    assert_eq!(vm.on_request_headers(ctx, 2, true).unwrap(), Verdict::Continue);
}

#[test]
fn shared_data_increments_from_two_threads_are_exact() {
    let bytes = built_plugin("rust_sdk_filter.wasm");
    let vm_id = unique_vm_id("cas");
    // The key is created before the race: a create is a CAS-0 write, which
    // (as on Envoy) overwrites unconditionally, so two creators could both write 1.
    {
        let mut h = Harness::start_with_on(RUNTIME, &bytes, "", VmOptions::new(vm_id.clone()));
        let (ctx, stream, _) = h.request(&[(":method", "GET"), (":path", "/"), ("x-pw-test", "shared"), ("x-pw-key", "two-threads")], true);
        h.respond(ctx, &stream, &[(":status", "200")], true);
        assert_eq!(stream.data().response_header("x-pw-shared").as_deref(), Some("1"));
        h.vm.finish_stream(ctx).unwrap();
    }
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let bytes = bytes.clone();
            let vm_id = vm_id.clone();
            std::thread::spawn(move || {
                // Each thread has its own instance, as each server thread does.
                let mut h = Harness::start_with_on(RUNTIME, &bytes, "", VmOptions::new(vm_id));
                let mut seen = Vec::new();
                for _ in 0..200 {
                    let (ctx, stream, _) = h.request(&[(":method", "GET"), (":path", "/"), ("x-pw-test", "shared"), ("x-pw-key", "two-threads")], true);
                    h.respond(ctx, &stream, &[(":status", "200")], true);
                    seen.push(stream.data().response_header("x-pw-shared").unwrap().parse::<u32>().unwrap());
                    h.vm.finish_stream(ctx).unwrap();
                }
                seen
            })
        })
        .collect();
    let mut all: Vec<u32> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort();
    assert_eq!(all, (2..=401).collect::<Vec<_>>(), "every increment is seen exactly once");
}

#[test]
fn shared_data_is_scoped_by_vm_id() {
    let bytes = built_plugin("rust_sdk_filter.wasm");
    let mut a = Harness::start_with_on(RUNTIME, &bytes, "", VmOptions::new(unique_vm_id("scope-a")));
    let mut b = Harness::start_with_on(RUNTIME, &bytes, "", VmOptions::new(unique_vm_id("scope-b")));
    for h in [&mut a, &mut b] {
        let (ctx, stream, _) = h.request(&[(":method", "GET"), ("x-pw-test", "shared"), ("x-pw-key", "scoped")], true);
        h.respond(ctx, &stream, &[(":status", "200")], true);
        assert_eq!(stream.data().response_header("x-pw-shared").as_deref(), Some("1"));
    }
}

#[test]
fn shutdown_calls_on_done_then_on_delete_for_every_plugin() {
    let bytes = wat_bytes("lifecycle_0_2_1");
    let dir = temp_dir("shutdown");
    let wasm = dir.join("lifecycle.wasm");
    std::fs::write(&wasm, &bytes).unwrap();
    let path = dir.join("p.yaml");
    let vm_id = unique_vm_id("sd");
    std::fs::write(&path, format!("- config: {{ name: one, vm_config: {{ runtime: {RUNTIME}, vm_id: {vm_id}, code: {{ local: {{ filename: lifecycle.wasm }} }} }} }}\n- config: {{ name: two, vm_config: {{ runtime: {RUNTIME}, vm_id: {vm_id}, code: {{ local: {{ filename: lifecycle.wasm }} }} }} }}\n")).unwrap();
    let plugins = loader::load(&files::load_file(&path).unwrap()).unwrap();
    let server = TestServer::new();
    let mut vms = PluginVms::start(&plugins, |_| server.clone() as Arc<dyn ServerHost>).unwrap();
    server.clear_logs();
    let results = vms.shutdown();
    assert!(results.iter().all(|(_, r)| matches!(r, Ok(true))));
    let (a, b) = (vms.roots[0].root_context_id, vms.roots[1].root_context_id);
    assert_eq!(server.messages(), vec![format!("on_done ctx={a}"), format!("on_delete ctx={a}"), format!("on_done ctx={b}"), format!("on_delete ctx={b}")]);
    assert_eq!(vms.vms[0].context_count(), 0);
}
}
