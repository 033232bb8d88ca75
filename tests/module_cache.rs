//! The compiled-module cache (`vm_config.allow_precompiled: true`): the first
//! load compiles and stores, a later one (another process: a restart) reuses
//! the stored code; a corrupt file is ignored with a warning and replaced.

mod common;
mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::Origin;

fn yaml(allow_precompiled: bool) -> String {
    format!("# e2e: keep runtime (the compiled-module cache is Wasmtime's)\nconfig:\n  name: cached\n  vm_config:\n    vm_id: cached\n    allow_precompiled: {allow_precompiled}\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\" }} }}\n")
}

fn start(test: &str, cache: &std::path::Path, allow_precompiled: bool) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let ats = TrafficServer::start(
        AtsOptions::new(test)
            .origin(origin.port())
            .env(proxy_wasm_host::module_cache::DIR_ENV, cache.display().to_string())
            .file("filter.yaml", yaml(allow_precompiled))
            .global_plugin(&["filter.yaml"]),
    );
    (origin, ats)
}

fn cache_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pwh-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn served(ats: &TrafficServer) {
    let r = ats.send(&Request::get("/").timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", ats.log_report());
}

#[test]
fn a_restart_reuses_the_compiled_module_cache() {
    let dir = cache_dir("module-cache-restart");
    let (_o, first) = start("ats-module-cache-1", &dir, true);
    served(&first);
    assert!(first.diags_log().contains("compiled, and stored in the compiled-module cache"), "{}", first.log_report());
    drop(first);
    let (_o, second) = start("ats-module-cache-2", &dir, true);
    served(&second);
    assert!(second.diags_log().contains("compiled code read from the compiled-module cache"), "{}", second.log_report());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_allow_precompiled_nothing_is_cached() {
    let dir = cache_dir("module-cache-off");
    let (_o, ats) = start("ats-module-cache-off", &dir, false);
    served(&ats);
    assert!(!ats.diags_log().contains("compiled-module cache"), "{}", ats.log_report());
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none());
}

#[test]
fn a_corrupt_cache_file_is_ignored_with_a_warning_and_replaced() {
    let dir = cache_dir("module-cache-corrupt");
    let (_o, first) = start("ats-module-cache-c1", &dir, true);
    served(&first);
    drop(first);
    let file = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "cwasm")).expect("a cache file");
    let mut data = std::fs::read(&file).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&file, &data).unwrap();
    let (_o, second) = start("ats-module-cache-c2", &dir, true);
    served(&second);
    let logs = second.diags_log();
    assert!(logs.contains("compiled-module cache: ignoring") && logs.contains("checksum mismatch"), "{}", second.log_report());
    assert!(logs.contains("compiled, and stored in the compiled-module cache"), "{}", second.log_report());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn in_process_the_cache_serves_a_module_compiled_by_an_earlier_load() {
    use proxy_wasm_host::module_cache::{load_or_compile, Outcome};
    let dir = cache_dir("module-cache-unit");
    std::env::set_var(proxy_wasm_host::module_cache::DIR_ENV, &dir);
    let engine = proxy_wasm_host::loader::engine(proxy_wasm_host::config::RuntimeKind::Wasmtime).unwrap();
    let wasm = common::built_plugin("rust_sdk_filter.wasm");
    let mut warnings = Vec::new();
    let (_, first) = load_or_compile(engine.as_ref(), &wasm, &mut |w| warnings.push(w.to_string())).unwrap();
    assert!(matches!(first, Outcome::Stored(_)), "{first:?}");
    let (module, second) = load_or_compile(engine.as_ref(), &wasm, &mut |w| warnings.push(w.to_string())).unwrap();
    assert!(matches!(second, Outcome::Hit(_)), "{second:?}");
    assert!(module.exports().iter().any(|e| e.name == "proxy_abi_version_0_2_1"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Remote code (`vm_config.code.remote`) pinned by sha256 on Traffic Server:
/// the right hash loads and serves, a wrong one refuses the plugin with both
/// hashes in the error, and Traffic Server keeps serving without it.
#[test]
fn remote_code_with_a_wrong_sha256_refuses_the_plugin_and_the_right_one_loads() {
    use sha2::Digest;
    let wasm = std::fs::read(e2e::repo_root().join("build/plugins/rust_sdk_filter.wasm")).expect("build the plugins first");
    let right: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    let wrong = "0".repeat(64);
    let served = wasm.clone();
    let code_server = Origin::with_handler(move |_| e2e::origin::Response::new(200).body(served.clone()));
    for (test, sha, loads) in [("ats-remote-right", right.as_str(), true), ("ats-remote-wrong", wrong.as_str(), false)] {
        let cache = cache_dir(test);
        let yaml = format!(
            "config:\n  name: remote\n  vm_config:\n    vm_id: remote\n    code:\n      remote:\n        http_uri: {{ uri: \"{}\" }}\n        sha256: \"{sha}\"\n        cache_dir: \"{}\"\n",
            code_server.url("/filter.wasm"),
            cache.display()
        );
        e2e::ats::require_plugin_so();
        let origin = Origin::start();
        let ats = TrafficServer::start(AtsOptions::new(test).origin(origin.port()).file("remote.yaml", yaml).global_plugin(&["remote.yaml"]));
        let r = ats.send(&Request::get("/").timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        if loads {
            assert_eq!(r.header("x-proxy-wasm"), Some("rust-sdk"), "{}", ats.log_report());
        } else {
            assert_eq!(r.header("x-proxy-wasm"), None);
            let logs = ats.diags_log();
            assert!(logs.contains("vm_config.code.remote.sha256") && logs.contains(&format!("has sha256 {right}")) && logs.contains(&format!("expected {wrong}")), "{}", ats.log_report());
        }
        let _ = std::fs::remove_dir_all(&cache);
    }
}
