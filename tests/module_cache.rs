//! The compiled-module cache (`vm_config.allow_precompiled: true`): the first
//! load compiles and stores, a later one (another process: a restart) reuses
//! the stored code; a corrupt file is ignored with a warning and replaced.
//! Nothing in it is trusted that someone else could have written: folders
//! others can write, files without this host's MAC, symbolic links and files
//! owned by other users are refused (the tests run as root and fake "another
//! user" with `chown nobody`).

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
    let r = ats
        .send(&Request::get("/").timeout(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
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
    assert!(
        second.diags_log().contains("compiled code read from the compiled-module cache"),
        "{}",
        second.log_report()
    );
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
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a cache file");
    let mut data = std::fs::read(&file).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&file, &data).unwrap();
    let (_o, second) = start("ats-module-cache-c2", &dir, true);
    served(&second);
    let logs = second.diags_log();
    assert!(
        logs.contains("compiled-module cache: ignoring") && logs.contains("checksum mismatch"),
        "{}",
        second.log_report()
    );
    assert!(logs.contains("compiled, and stored in the compiled-module cache"), "{}", second.log_report());
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ in process

use proxy_wasm_host::module_cache::{load_or_compile_in, Outcome, KEY_FILE};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A small valid plugin made unique with a custom section, so that no other
/// test (and no earlier load in this process) has compiled it.
fn unique_module(tag: &str) -> Vec<u8> {
    let mut wasm = common::wat_bytes("lifecycle_0_2_1");
    let name = format!("pwh-test-{tag}-{}", std::process::id());
    assert!(name.len() < 127);
    wasm.extend_from_slice(&[0, name.len() as u8 + 1, name.len() as u8]);
    wasm.extend_from_slice(name.as_bytes());
    wasm
}

fn wasmtime() -> std::sync::Arc<dyn proxy_wasm_host::runtime::Engine<proxy_wasm_host::hostcalls::state::HostState>> {
    proxy_wasm_host::loader::engine(proxy_wasm_host::config::RuntimeKind::Wasmtime).unwrap()
}

/// The cache file name the host uses for `wasm` on Wasmtime.
fn entry_name(wasm: &[u8]) -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(wasm).iter().map(|b| format!("{b:02x}")).collect();
    format!("{hash}-{}.cwasm", wasmtime().compiled_code_fingerprint().unwrap())
}

/// A cache file as a version without MACs wrote it (magic, sha256 of the
/// payload, payload), holding real compiled code for `wasm`: its checksum is
/// valid, and anyone can make one.
fn planted_entry(wasm: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let payload = wasmtime().compile(wasm).unwrap().serialize().unwrap();
    let mut data = b"proxy-wasm-host compiled module v1\n".to_vec();
    data.extend_from_slice(&sha2::Sha256::digest(&payload));
    data.extend_from_slice(&payload);
    data
}

fn load_in(dir: &Path, wasm: &[u8]) -> (Outcome, Vec<String>) {
    let mut warnings = Vec::new();
    let (_, outcome) =
        load_or_compile_in(wasmtime().as_ref(), wasm, &[dir.to_path_buf()], &mut |w| warnings.push(w.to_string()))
            .unwrap();
    (outcome, warnings)
}

fn chown_nobody(path: &Path) {
    let ok = std::process::Command::new("chown")
        .args(["-h", "nobody", &path.display().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown nobody {} (these tests run as root)", path.display());
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn in_process_the_cache_serves_a_module_compiled_by_an_earlier_load() {
    let dir = cache_dir("module-cache-unit");
    let wasm = unique_module("hit");
    let (first, warnings) = load_in(&dir, &wasm);
    assert!(matches!(first, Outcome::Stored(_)), "{first:?}");
    let (second, more) = load_in(&dir, &wasm);
    assert_eq!(second, Outcome::Hit(dir.join(entry_name(&wasm))));
    assert!(warnings.is_empty() && more.is_empty(), "{warnings:?} {more:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_folder_created_by_the_host_is_0700_with_a_0600_key_and_entries() {
    let parent = cache_dir("module-cache-modes");
    let dir = parent.join("compiled");
    let (outcome, _) = load_in(&dir, &unique_module("modes"));
    assert_eq!(outcome, Outcome::Stored(dir.join(entry_name(&unique_module("modes")))));
    assert_eq!(mode(&parent) & 0o022, 0, "a missing folder above it is made, closed to writers");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(entry_name(&unique_module("modes")))), 0o600);
    let _ = std::fs::remove_dir_all(&parent);
}

#[test]
fn a_world_writable_cache_folder_is_not_used() {
    let dir = cache_dir("module-cache-world-writable");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let wasm = unique_module("world-writable");
    let (outcome, warnings) = load_in(&dir, &wasm);
    let why = format!("{} cannot be trusted: it is writable by others (mode 0777)", dir.display());
    assert!(matches!(&outcome, Outcome::NotStored(w) if w.contains(&why)), "{outcome:?}");
    assert_eq!(warnings, vec![format!("compiled-module cache: not using the folder {}: {why}", dir.display())]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written there");
    // Logged once per process, not on every load.
    let (_, again) = load_in(&dir, &unique_module("world-writable-2"));
    assert!(again.is_empty(), "{again:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_folder_owned_by_another_user_is_not_used() {
    let dir = cache_dir("module-cache-foreign-folder");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wasm = unique_module("foreign-folder");
    // What the other user could have left there.
    std::fs::write(dir.join(entry_name(&wasm)), planted_entry(&wasm)).unwrap();
    chown_nobody(&dir);
    let (outcome, warnings) = load_in(&dir, &wasm);
    assert!(matches!(&outcome, Outcome::NotStored(_)), "{outcome:?}");
    let uid = std::fs::metadata(&dir).unwrap().uid();
    assert_eq!(warnings, vec![format!("compiled-module cache: not using the folder {0}: {0} cannot be trusted: it is owned by user {uid}, not by this process's user ({euid}) or root", dir.display(), euid = proxy_wasm_host::cache_file::euid())]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_entry_written_without_a_mac_is_not_loaded_and_is_replaced() {
    let dir = cache_dir("module-cache-no-mac");
    let wasm = unique_module("no-mac");
    load_in(&dir, &wasm); // makes the folder and its key
    let entry = dir.join(entry_name(&wasm));
    std::fs::write(&entry, planted_entry(&wasm)).unwrap();
    let (outcome, warnings) = load_in(&dir, &wasm);
    assert_eq!(outcome, Outcome::Stored(entry.clone()), "compiled again");
    assert_eq!(warnings, vec![format!("compiled-module cache: ignoring {} has no MAC (written by an older version of the host, or not by the host); not loaded", entry.display())]);
    assert_eq!(load_in(&dir, &wasm).0, Outcome::Hit(entry), "the replacement is used");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_entry_copied_from_another_cache_folder_is_not_loaded() {
    let (a, b) = (cache_dir("module-cache-copy-a"), cache_dir("module-cache-copy-b"));
    let wasm = unique_module("copied");
    let (stored, _) = load_in(&a, &wasm);
    assert!(matches!(stored, Outcome::Stored(_)), "{stored:?}");
    load_in(&b, &unique_module("copied-other")); // b gets its own key
    let name = entry_name(&wasm);
    std::fs::copy(a.join(&name), b.join(&name)).unwrap();
    let (outcome, warnings) = load_in(&b, &wasm);
    assert_eq!(outcome, Outcome::Stored(b.join(&name)));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!(
            "{} was not written by this host for this module (its MAC does not match the key {}",
            b.join(&name).display(),
            b.join(KEY_FILE).display()
        )),
        "{warnings:?}"
    );
    let _ = (std::fs::remove_dir_all(&a), std::fs::remove_dir_all(&b));
}

#[test]
fn an_entry_for_another_module_is_not_loaded_under_this_ones_name() {
    let dir = cache_dir("module-cache-renamed");
    let (real, other) = (unique_module("renamed-a"), unique_module("renamed-b"));
    load_in(&dir, &real);
    std::fs::copy(dir.join(entry_name(&real)), dir.join(entry_name(&other))).unwrap();
    let (outcome, warnings) = load_in(&dir, &other);
    assert_eq!(outcome, Outcome::Stored(dir.join(entry_name(&other))));
    assert!(warnings.len() == 1 && warnings[0].contains("its MAC does not match"), "{warnings:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_symlinked_entry_is_not_followed() {
    let dir = cache_dir("module-cache-symlink");
    let wasm = unique_module("symlink");
    load_in(&dir, &wasm);
    let entry = dir.join(entry_name(&wasm));
    std::fs::rename(&entry, dir.join("elsewhere.cwasm")).unwrap();
    std::os::unix::fs::symlink(dir.join("elsewhere.cwasm"), &entry).unwrap();
    let (outcome, warnings) = load_in(&dir, &wasm);
    assert_eq!(outcome, Outcome::Stored(entry.clone()));
    assert_eq!(
        warnings,
        vec![format!("compiled-module cache: ignoring {} is a symbolic link (not followed)", entry.display())]
    );
    assert!(std::fs::symlink_metadata(&entry).unwrap().file_type().is_file(), "the link is replaced by a file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_entry_writable_by_others_or_owned_by_another_user_is_not_loaded() {
    let dir = cache_dir("module-cache-entry-perms");
    let wasm = unique_module("entry-perms");
    load_in(&dir, &wasm);
    let entry = dir.join(entry_name(&wasm));
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (outcome, warnings) = load_in(&dir, &wasm);
    assert_eq!(outcome, Outcome::Stored(entry.clone()));
    assert_eq!(
        warnings,
        vec![format!(
            "compiled-module cache: ignoring {} cannot be trusted: it is writable by others (mode 0666)",
            entry.display()
        )]
    );
    chown_nobody(&entry);
    let uid = std::fs::metadata(&entry).unwrap().uid();
    let (outcome, warnings) = load_in(&dir, &wasm);
    assert_eq!(outcome, Outcome::Stored(entry.clone()));
    assert_eq!(warnings, vec![format!("compiled-module cache: ignoring {} cannot be trusted: it is owned by user {uid}, not by this process's user ({}) or root", entry.display(), proxy_wasm_host::cache_file::euid())]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Through the loader, as servers load plugins: `$PROXY_WASM_HOST_COMPILED_CACHE`
/// names the folder (the only test of this binary that sets it).
#[test]
fn the_loader_refuses_a_planted_entry_with_a_valid_checksum_and_no_mac() {
    let dir = cache_dir("module-cache-loader");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let wasm = unique_module("loader");
    let entry = dir.join(entry_name(&wasm));
    std::fs::write(&entry, planted_entry(&wasm)).unwrap();
    std::fs::write(dir.join("plugin.wasm"), &wasm).unwrap();
    let yaml = dir.join("plugin.yaml");
    let text = format!("config:\n  name: planted\n  vm_config:\n    vm_id: planted\n    allow_precompiled: true\n    code: {{ local: {{ filename: \"{}\" }} }}\n", dir.join("plugin.wasm").display());
    std::fs::write(&yaml, text).unwrap();
    std::env::set_var(proxy_wasm_host::module_cache::DIR_ENV, &dir);
    let configs = proxy_wasm_host::files::load_file(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut warnings = Vec::new();
    let loaded = proxy_wasm_host::loader::load_with_warnings(&configs, &mut |_, w| warnings.push(w.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded[0].compiled_cache,
        Some(Outcome::Stored(entry.clone())),
        "compiled, not read from the planted file"
    );
    assert_eq!(warnings, vec![format!("compiled-module cache: ignoring {} has no MAC (written by an older version of the host, or not by the host); not loaded", entry.display())]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// On Traffic Server: a cache file planted under the name the host will
/// look for, with real compiled code and a valid checksum but no MAC, is not
/// loaded; the plugin is compiled, the file replaced, and requests served.
#[test]
fn traffic_server_does_not_load_a_planted_cache_file() {
    let dir = cache_dir("module-cache-planted-ats");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let wasm =
        std::fs::read(e2e::repo_root().join("build/plugins/rust_sdk_filter.wasm")).expect("build the plugins first");
    let entry = dir.join(entry_name(&wasm));
    std::fs::write(&entry, planted_entry(&wasm)).unwrap();
    let (_o, ats) = start("ats-module-cache-planted", &dir, true);
    served(&ats);
    let logs = ats.diags_log();
    assert!(
        logs.contains(&format!("compiled-module cache: ignoring {} has no MAC", entry.display())),
        "{}",
        ats.log_report()
    );
    assert!(
        logs.contains(&format!("compiled, and stored in the compiled-module cache {}", entry.display())),
        "{}",
        ats.log_report()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// On Traffic Server: a world-writable cache folder is not used, the log
/// says why, and the plugin still loads.
#[test]
fn traffic_server_does_not_use_a_world_writable_cache_folder() {
    let dir = cache_dir("module-cache-world-writable-ats");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (_o, ats) = start("ats-module-cache-world-writable", &dir, true);
    served(&ats);
    let logs = ats.diags_log();
    assert!(logs.contains(&format!("compiled-module cache: not using the folder {0}: {0} cannot be trusted: it is writable by others (mode 0777)", dir.display())), "{}", ats.log_report());
    assert!(logs.contains("compiled, not cached: no usable compiled-module cache folder"), "{}", ats.log_report());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Remote code (`vm_config.code.remote`) pinned by sha256 on Traffic Server:
/// the right hash loads and serves, a wrong one refuses the plugin with both
/// hashes in the error, and Traffic Server keeps serving without it.
#[test]
fn remote_code_with_a_wrong_sha256_refuses_the_plugin_and_the_right_one_loads() {
    use sha2::Digest;
    let wasm =
        std::fs::read(e2e::repo_root().join("build/plugins/rust_sdk_filter.wasm")).expect("build the plugins first");
    let right: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    let wrong = "0".repeat(64);
    let served = wasm.clone();
    let code_server = Origin::with_handler(move |_| e2e::origin::Response::new(200).body(served.clone()));
    for (test, sha, loads) in [("ats-remote-right", right.as_str(), true), ("ats-remote-wrong", wrong.as_str(), false)]
    {
        let cache = cache_dir(test);
        let yaml = format!(
            "config:\n  name: remote\n  vm_config:\n    vm_id: remote\n    code:\n      remote:\n        http_uri: {{ uri: \"{}\" }}\n        sha256: \"{sha}\"\n        cache_dir: \"{}\"\n",
            code_server.url("/filter.wasm"),
            cache.display()
        );
        e2e::ats::require_plugin_so();
        let origin = Origin::start();
        let ats = TrafficServer::start(
            AtsOptions::new(test).origin(origin.port()).file("remote.yaml", yaml).global_plugin(&["remote.yaml"]),
        );
        let r = ats
            .send(&Request::get("/").timeout(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        if loads {
            assert_eq!(r.header("x-proxy-wasm"), Some("rust-sdk"), "{}", ats.log_report());
        } else {
            assert_eq!(r.header("x-proxy-wasm"), None);
            let logs = ats.diags_log();
            assert!(
                logs.contains("vm_config.code.remote.sha256")
                    && logs.contains(&format!("has sha256 {right}"))
                    && logs.contains(&format!("expected {wrong}")),
                "{}",
                ats.log_report()
            );
        }
        let _ = std::fs::remove_dir_all(&cache);
    }
}
