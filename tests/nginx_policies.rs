//! The safety model on NGINX that is about NGINX itself (issue 5): the
//! compiled-module cache shared by the workers and remote code, as
//! tests/module_cache.rs does on Traffic Server. The failure policies (a trap
//! in each callback under each policy), `max_body_size` and authorizations
//! are in tests/conformance_policies.rs, recycling and hostile pointers in
//! tests/conformance_recycling.rs, written once for both servers. One worker
//! per nginx, so that "the next request" meets the same instances.
//!
//! Run with `make nginx && cargo test --test nginx_policies`.

mod e2e;

use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::Origin;

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
