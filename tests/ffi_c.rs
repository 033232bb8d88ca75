//! The C API from C: compiles `tests/c/smoke.c` against `include/proxy_wasm_host.h`,
//! links it with the cdylib cargo built for this test run, runs it on the Rust-SDK
//! test filter and checks what it printed. Also checks that the committed header
//! compiles on its own (build.rs regenerates it from `src/ffi/` on every build,
//! and CI checks that the regenerated header is the committed one).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cdylib cargo built for this test run. The test runs as
/// `target/<profile>/deps/ffi_c-<hash>`; `cargo test` builds the library with
/// both its crate types into that same `deps/` folder (it copies them up to
/// `target/<profile>/` only for `cargo build`, so the one there may be stale).
fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test binary is in a folder");
    assert_eq!(
        deps.file_name().and_then(|n| n.to_str()),
        Some("deps"),
        "unexpected test binary location {}",
        exe.display()
    );
    let lib = deps.join("libproxy_wasm_host.so");
    assert!(lib.is_file(), "{} is missing: cargo should have built the cdylib with the tests", lib.display());
    lib
}

/// Links (or copies) the cdylib into `dir/lib/`, so that a concurrent cargo
/// build replacing it cannot change it under this test, and returns that folder.
fn snapshot_cdylib(dir: &Path) -> PathBuf {
    let lib_dir = dir.join("lib");
    std::fs::create_dir_all(&lib_dir).expect("create lib dir");
    let dest = lib_dir.join("libproxy_wasm_host.so");
    let src = cdylib();
    if std::fs::hard_link(&src, &dest).is_err() {
        std::fs::copy(&src, &dest).unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dest.display()));
    }
    lib_dir
}

fn plugin() -> PathBuf {
    let wasm = repo().join("build/plugins/rust_sdk_filter.wasm");
    assert!(wasm.is_file(), "{} is missing; build the test plugins first with `make plugins`", wasm.display());
    wasm
}

/// A fresh scratch folder under cargo's per-test-target tmp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ffi_c").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_string())
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        let (stdout, stderr) = text(&out);
        panic!("{cmd:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
    }
    out
}

/// Runs the smoke program and checks its report.
fn check_smoke(exe: &Path, lib_dir: &Path) {
    let out = run(Command::new(exe).arg(plugin()).env("LD_LIBRARY_PATH", lib_dir).env("TMPDIR", exe.parent().unwrap()));
    let (stdout, stderr) = text(&out);
    eprintln!("--- smoke stdout\n{stdout}--- smoke stderr\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let has = |wanted: &str| lines.contains(&wanted);
    let has_prefix = |wanted: &str| lines.iter().any(|l| l.starts_with(wanted));
    for wanted in [
        concat!("libproxy_wasm_host ", env!("CARGO_PKG_VERSION")),
        "plugins: 1, first: c-smoke, fail_open: 0",
        "tick (1000 ms) delivered to plugin 0: 0",
        "request headers: CONTINUE",
        "re-entrant call from a callback: -1: pwh_vms is busy: called from one of its own callbacks, or from two threads at once",
        "request body: CONTINUE",
        "request body passed on: hello",
        "response headers: CONTINUE",
        "response header x-proxy-wasm: c-smoke",
        "stream finished: destroy called 1 time(s)",
        "local request headers: STOP",
        "local response: 403 denied by rust-sdk-filter (x-proxy-wasm: c-smoke)",
        "local stream finished: destroy called 1 time(s)",
        "deferred finish: 1, destroy called 1 time(s)",
        "tick after deferred finish: 0, destroy called 1 time(s)",
        "shared done.deferred: 200 OK",
        "bad plugin index: context 0, destroy called 1 time(s): no plugin with index 7 (there are 1)",
        "chain request headers: CONTINUE",
        "chain request body, first chunk: BUFFERED",
        "chain request body, last chunk: CONTINUE HELLO WORLD (end of stream: 1)",
        "chain response headers: CONTINUE (x-proxy-wasm: c-smoke)",
        "chain freed: destroy called 1 time(s)",
        "chain paused: WAIT, pause timer 60000 ms",
        "tick: 1 wake-up(s) asked for",
        "chain resumed: CONTINUE in phase 0 (x-pw-resumed-by: tick), timer cancelled 1 time(s)",
        "spurious wake-up: NOTHING",
        "chain local response: RESPOND 403 denied by rust-sdk-filter (3 header(s))",
        "NULL vms: -1: vms is NULL",
        "vms freed",
        "smoke: OK",
    ] {
        assert!(has(wanted), "smoke output lacks the line {wanted:?}");
    }
    assert!(
        has_prefix("[log c-smoke info] rust-sdk-filter: root 1 configured (tag=c-smoke, tick_ms=1000"),
        "the C log callback got the configure line"
    );
    assert!(has_prefix("finished context: ERROR: no stream context "), "a finished context is an error");
    // The malformed file's error names the file, line and column.
    let malformed = lines.iter().find(|l| l.starts_with("malformed config: ")).expect("malformed config line");
    assert!(malformed.contains("/malformed.yaml:") && malformed.contains("invalid YAML"), "{malformed}");
}

#[test]
fn smoke_c_program_drives_the_rust_sdk_filter() {
    let dir = scratch("cc");
    let lib_dir = snapshot_cdylib(&dir);
    let exe = dir.join("smoke");
    run(Command::new(cc())
        .args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg(repo().join("tests/c/smoke.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib_dir)
        .arg("-lproxy_wasm_host"));
    check_smoke(&exe, &lib_dir);
}

/// The same program built the way a C server using CMake would build it.
#[test]
fn cmake_package_builds_the_smoke_program() {
    if Command::new("cmake").arg("--version").output().is_err() {
        eprintln!("cmake is not installed: skipping the CMake package test");
        return;
    }
    let dir = scratch("cmake");
    let lib_dir = snapshot_cdylib(&dir);
    let build = dir.join("build");
    run(Command::new("cmake")
        .arg("-S")
        .arg(repo().join("tests/c"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DProxyWasmHost_DIR={}", repo().join("cmake").display()))
        .arg(format!("-DPROXY_WASM_HOST_LIBRARY={}", lib_dir.join("libproxy_wasm_host.so").display()))
        .env("CC", cc()));
    run(Command::new("cmake").arg("--build").arg(&build));
    let exe = build.join("smoke");
    // The imported target links the library by name and CMake sets the RUNPATH.
    let readelf = Command::new("readelf").arg("-d").arg(&exe).output();
    if let Ok(out) = readelf {
        let dynamic = String::from_utf8_lossy(&out.stdout);
        assert!(
            dynamic.contains("[libproxy_wasm_host.so]"),
            "smoke should need libproxy_wasm_host.so by name:\n{dynamic}"
        );
    }
    check_smoke(&exe, &lib_dir);
}

#[test]
fn header_compiles_on_its_own() {
    let header = repo().join("include/proxy_wasm_host.h");
    run(Command::new(cc())
        .args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only", "-x", "c"])
        .arg(&header));
    // cpp_compat: the same header from C++.
    if Command::new("c++").arg("--version").output().is_ok() {
        run(Command::new("c++")
            .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++"])
            .arg(&header));
    }
}
