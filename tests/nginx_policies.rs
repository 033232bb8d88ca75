//! The safety model on NGINX that is about NGINX itself (issue 5):
//! recycling (`vm_config.kill_options`), hostile pointers, the
//! compiled-module cache shared by the workers and remote code, as
//! tests/ats_recycling.rs, tests/ats_hostile.rs and tests/module_cache.rs do
//! on Traffic Server. The failure policies (a trap in each callback under
//! each policy), `max_body_size` and authorizations are in
//! tests/conformance_policies.rs, written once for both servers. One worker
//! per nginx, so that "the next request" meets the same instances.
//!
//! Run with `make nginx && cargo test --test nginx_policies`.

mod e2e;

use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

/// The Rust-SDK test filter with extra plugin keys (`failure_policy`, ...) and `vm_config` keys.
fn filter_yaml(extra: &str, configuration: &str, vm_extra: &str) -> String {
    format!(
        "config:\n  name: \"guarded\"\n  configuration: '{configuration}'\n{extra}\n  vm_config:\n    vm_id: \"guarded_vm\"\n{vm_extra}    code:\n      local:\n        filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\"\n"
    )
}

fn start_with(test: &str, yaml: String, tune: impl FnOnce(NginxOptions) -> NginxOptions) -> (Origin, Nginx) {
    let origin = Origin::start();
    let opts = NginxOptions::new(test)
        .workers(1)
        .origin(origin.port())
        .file("plugins.yaml", yaml)
        .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm guarded;")
        .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }");
    let n = Nginx::start(tune(opts));
    (origin, n)
}

fn start(test: &str, yaml: String) -> (Origin, Nginx) {
    start_with(test, yaml, |o| o)
}

fn send(n: &Nginx, req: Request) -> Response {
    n.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()))
}

fn count(n: &Nginx, text: &str) -> usize {
    n.error_log().matches(text).count()
}

fn shared_u64(n: &Nginx, key: &str) -> u64 {
    let r = send(n, Request::get("/").header("x-pw-test", "shared-get").header("x-pw-key", key));
    assert_eq!(r.status, 200, "{key}\n{}", n.log_report());
    r.body_str().parse().unwrap_or_else(|_| panic!("{key} = {:?}", r.body_str()))
}

// ------------------------------------------------------------------ recycling

#[test]
fn an_instance_is_replaced_after_max_calls_and_starts_again() {
    let (_origin, n) = start("ngx-recycle-calls", filter_yaml("", "", "    kill_options: { max_calls: 30 }\n"));
    let before = shared_u64(&n, "vm.starts");
    for _ in 0..12 {
        let r = send(&n, Request::get("/"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")));
    }
    n.expect_log("after recycling: guarded: ", WAIT);
    assert!(n.error_log().contains("(kill_options.max_calls 30)"), "{}", n.log_report());
    assert!(shared_u64(&n, "vm.starts") > before, "proxy_on_vm_start ran again in the new instance");
}

#[test]
fn an_instance_whose_memory_passes_max_memory_usage_is_replaced() {
    let (_origin, n) =
        start("ngx-recycle-memory", filter_yaml("", "", "    kill_options: { max_memory_usage: 0.01 }\n"));
    let before = shared_u64(&n, "vm.starts");
    let r = send(&n, Request::get("/").header("x-pw-test", "alloc").header("x-pw-alloc-mb", "64"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert!(shared_u64(&n, "vm.starts") > before, "{}", n.log_report());
    assert!(n.error_log().contains("kill_options.max_memory_usage 0.01"), "{}", n.log_report());
}

#[test]
fn an_instance_unused_for_max_unused_duration_is_shut_down_and_a_fresh_one_serves_the_next_request() {
    let (_origin, n) =
        start("ngx-recycle-idle", filter_yaml("", "", "    kill_options: { max_unused_duration: 1s }\n"));
    let before = shared_u64(&n, "vm.starts");
    n.expect_log("replaced after recycling: guarded: unused for", Duration::from_secs(10));
    let r = send(&n, Request::get("/"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")));
    assert!(shared_u64(&n, "vm.starts") > before, "{}", n.log_report());
}

// ------------------------------------------------------------------ hostile module

#[test]
fn out_of_bounds_pointers_get_invalid_memory_access_and_the_worker_keeps_serving() {
    let origin = Origin::start();
    let yaml = "config:\n  name: hostile\n  configuration: hostile\n  vm_config:\n    vm_id: hostile\n    code: { local: { filename: \"@REPO@/build/plugins/hostile.wasm\" } }\n";
    let n = Nginx::start(
        NginxOptions::new("ngx-hostile")
            .workers(1)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm hostile;")
            .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }"),
    );
    let r = send(&n, Request::post("/echo", "hello"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    for line in ["hostile configure done", "hostile request_headers done", "hostile request_body done"] {
        n.expect_log(line, WAIT);
    }
    let logs = n.error_log();
    for (case, status) in [
        ("cfg_get_ret_ptr_oob", 6),
        ("log_msg_oob", 6),
        ("log_ptr_len_wrap", 6),
        ("hdr_get_key_oob", 6),
        ("hdr_get_ret_straddle", 6),
        ("hdr_get_map_99", 2),
        ("hdr_add_probe", 0),
    ] {
        assert!(logs.contains(&format!("{case}={status}")), "{case}={status}\n{}", n.log_report());
    }
    assert!(!logs.contains("trapped"), "{}", n.log_report());
    for _ in 0..3 {
        assert_eq!(send(&n, Request::get("/again")).status, 200);
    }
}

// ------------------------------------------------------------------ compiled-module cache

/// A cache folder for the workers: owned by their user (`nobody` when the
/// tests run as root) and private to it (0700), as the host requires.
fn cache_dir(test: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pw-ngx-cache-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let _ = std::process::Command::new("chmod").args(["0700", &d.display().to_string()]).status();
    if proxy_wasm_host::cache_file::euid() == 0 {
        let _ = std::process::Command::new("chown").args(["nobody", &d.display().to_string()]).status();
    }
    d
}

fn cached(test: &str, cache: &std::path::Path, workers: usize) -> (Origin, Nginx) {
    let yaml = "# e2e: keep runtime (the compiled-module cache is Wasmtime's)\nconfig:\n  name: guarded\n  vm_config:\n    vm_id: cached\n    allow_precompiled: true\n    code: { local: { filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\" } }\n";
    let cache = cache.display().to_string();
    start_with(test, yaml.to_string(), move |o| {
        o.workers(workers).main(format!("env PROXY_WASM_HOST_COMPILED_CACHE={cache};"))
    })
}

#[test]
fn every_worker_and_a_restart_reuse_the_compiled_module_cache() {
    let dir = cache_dir("workers");
    {
        let (_origin, n) = cached("ngx-cache-first", &dir, 2);
        assert_eq!(send(&n, Request::get("/")).header("x-proxy-wasm"), Some("rust-sdk"));
        let logs = n.error_log();
        // The workers start together: at least one stores, the others may read it back.
        assert_eq!(logs.matches("guarded: loaded in worker").count(), 2, "{}", n.log_report());
    }
    let (_origin, n) = cached("ngx-cache-second", &dir, 2);
    assert_eq!(send(&n, Request::get("/")).header("x-proxy-wasm"), Some("rust-sdk"));
    assert_eq!(
        count(&n, "compiled code read from the compiled-module cache"),
        2,
        "both workers of the restart reuse it\n{}",
        n.log_report()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cache folder others may write (as the tests used to make for the
/// workers) is not used: each worker compiles, says why in the error log,
/// and serves.
#[test]
fn a_world_writable_compiled_module_cache_folder_is_not_used() {
    let dir = cache_dir("world-writable");
    let _ = std::process::Command::new("chmod").args(["0777", &dir.display().to_string()]).status();
    let (_origin, n) = cached("ngx-cache-world-writable", &dir, 1);
    assert_eq!(send(&n, Request::get("/")).header("x-proxy-wasm"), Some("rust-sdk"));
    let logs = n.error_log();
    assert!(logs.contains(&format!("compiled-module cache: not using the folder {0}: {0} cannot be trusted: it is writable by others (mode 0777)", dir.display())), "{}", n.log_report());
    assert_eq!(count(&n, "compiled, not cached: no usable compiled-module cache folder"), 1, "{}", n.log_report());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written there");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ remote code pinned by sha256

/// Remote code (`vm_config.code.remote`) on NGINX: the right sha256 loads
/// and serves; a wrong one fails the configuration (`nginx -t` and start-up)
/// with the key and both hashes, as any plugin error does.
#[test]
fn remote_code_with_a_wrong_sha256_fails_the_configuration_and_the_right_one_loads() {
    use sha2::Digest;
    let wasm =
        std::fs::read(e2e::repo_root().join("build/plugins/rust_sdk_filter.wasm")).expect("build the plugins first");
    let right: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    let wrong = "0".repeat(64);
    let code_server = Origin::with_handler(move |_| e2e::origin::Response::new(200).body(wasm.clone()));
    let yaml = |sha: &str, cache: &std::path::Path| {
        format!(
            "config:\n  name: guarded\n  vm_config:\n    vm_id: remote\n    code:\n      remote:\n        http_uri: {{ uri: \"{}\" }}\n        sha256: \"{sha}\"\n        cache_dir: \"{}\"\n",
            code_server.url("/filter.wasm"),
            cache.display()
        )
    };

    let cache = cache_dir("remote-right");
    let (_origin, n) = start("ngx-remote-right", yaml(&right, &cache));
    assert_eq!(send(&n, Request::get("/")).header("x-proxy-wasm"), Some("rust-sdk"), "{}", n.log_report());
    drop(n);
    let _ = std::fs::remove_dir_all(&cache);

    let cache = cache_dir("remote-wrong");
    let out = Nginx::test_only(
        NginxOptions::new("ngx-remote-wrong")
            .file("plugins.yaml", yaml(&wrong, &cache))
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm guarded;"),
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("vm_config.code.remote.sha256")
            && text.contains(&format!("has sha256 {right}"))
            && text.contains(&format!("expected {wrong}")),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}
