//! Code sources besides `code.local.filename`: inline base64, and remote code
//! pinned by sha256, downloaded from a small HTTP server on 127.0.0.1 and
//! cached on disk. Each plugin is loaded from YAML and then filters a request.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use proxy_wasm_host::config::PluginConfig;
use proxy_wasm_host::files;
use proxy_wasm_host::host::ServerHost;
use proxy_wasm_host::loader::{self, LoadedPlugin, PluginError, PluginVms};
use proxy_wasm_host::remote_code::{sha256_hex, FetchError};
use proxy_wasm_host::vm::Verdict;

const FILTER: &str = "rust_sdk_filter.wasm";

/// An HTTP server that serves `body` at `/filter.wasm` (404 elsewhere) and
/// counts the requests it answers.
struct CodeServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl CodeServer {
    fn start(body: Vec<u8>) -> CodeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (requests.clone(), paths.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let path = request_line.split(' ').nth(1).unwrap_or_default().to_string();
                seen.lock().unwrap().push(path.clone());
                let (status, content): (&str, &[u8]) =
                    if path == "/filter.wasm" { ("200 OK", &body) } else { ("404 Not Found", b"no such module") };
                let head = format!("HTTP/1.1 {status}\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", content.len());
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(content));
            }
        });
        CodeServer { port, requests, paths }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A fresh folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pwh-code-sources-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `yaml` to `dir/plugins.yaml` and reads it back as configuration.
fn configs(dir: &Path, yaml: &str) -> (PathBuf, Vec<PluginConfig>) {
    let path = dir.join("plugins.yaml");
    std::fs::write(&path, yaml).unwrap();
    let configs = files::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    (path, configs)
}

/// Loads, collecting warnings.
fn load(configs: &[PluginConfig]) -> (Result<Vec<LoadedPlugin>, PluginError>, Vec<String>) {
    let mut warnings = Vec::new();
    let result = loader::load_with_warnings(configs, &mut |plugin, message| {
        warnings.push(format!("{}: {message}", plugin.name))
    });
    (result, warnings)
}

/// Starts the plugin and runs one request through it: the filter tags the
/// response with its configured `tag`.
fn assert_filters(plugins: &[LoadedPlugin], tag: &str) {
    let server = TestServer::new();
    let mut vms = PluginVms::start(plugins, |_| server.clone() as Arc<dyn ServerHost>).unwrap();
    let root = vms.roots[0];
    let vm = &mut vms.vms[root.vm];
    let stream = TestStream::with_request(&[(":method", "GET"), (":path", "/")]);
    stream.set_response(&[(":status", "200")]);
    let ctx = vm.create_stream(root.root_context_id, Box::new(stream.clone())).unwrap();
    assert_eq!(vm.on_request_headers(ctx, 2, true).unwrap(), Verdict::Continue);
    vm.on_response_headers(ctx, 1, true).unwrap();
    assert_eq!(stream.data().response_header("x-proxy-wasm").as_deref(), Some(tag));
}

fn remote_yaml(name: &str, uri: &str, sha256: &str, cache_dir: &Path) -> String {
    format!(
        "config:\n  name: {name}\n  configuration: '{{\"tag\":\"{name}\"}}'\n  vm_config:\n    vm_id: {vm_id}\n    code:\n      remote:\n        http_uri:\n          uri: \"{uri}\"\n          timeout: 5s\n        sha256: \"{sha256}\"\n        cache_dir: \"{cache}\"\n",
        vm_id = unique_vm_id(name),
        cache = cache_dir.display()
    )
}

#[test]
fn inline_base64_code_loads_and_runs() {
    let bytes = built_plugin(FILTER);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    // Folded over lines as an operator would paste it, in a block scalar.
    let folded: String =
        encoded.as_bytes().chunks(76).map(|l| format!("          {}\n", std::str::from_utf8(l).unwrap())).collect();
    let dir = temp_dir("inline");
    let yaml = format!(
        "config:\n  name: inline\n  configuration: '{{\"tag\":\"inline\"}}'\n  vm_config:\n    vm_id: {}\n    code:\n      local:\n        inline_bytes: |\n{folded}",
        unique_vm_id("inline")
    );
    let (_, configs) = configs(&dir, &yaml);
    let (plugins, warnings) = load(&configs);
    let plugins = plugins.unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_filters(&plugins, "inline");
}

#[test]
fn remote_code_with_the_right_sha256_is_downloaded_once_then_cached() {
    let bytes = built_plugin(FILTER);
    let server = CodeServer::start(bytes.clone());
    let dir = temp_dir("remote-ok");
    let cache = dir.join("cache");
    let uri = server.url("/filter.wasm");
    let (_, configs) = configs(&dir, &remote_yaml("remote", &uri, &sha256_hex(&bytes), &cache));

    let (plugins, warnings) = load(&configs);
    let plugins = plugins.unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(server.requests(), 1);
    let cached = cache.join(format!("{}.wasm", sha256_hex(&bytes)));
    assert_eq!(std::fs::read(&cached).unwrap(), bytes, "cached under its sha256");
    assert_filters(&plugins, "remote");

    // A second load (a restart, a reload, another worker) uses the cache.
    let (again, warnings) = load(&configs);
    let again = again.unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(server.requests(), 1, "the second load does not hit the server");
    assert_filters(&again, "remote");
    assert_eq!(*server.paths.lock().unwrap(), vec!["/filter.wasm".to_string()]);
}

#[test]
fn a_wrong_sha256_refuses_the_plugin() {
    let bytes = built_plugin(FILTER);
    let server = CodeServer::start(bytes.clone());
    let dir = temp_dir("remote-mismatch");
    let cache = dir.join("cache");
    let uri = server.url("/filter.wasm");
    let wrong = sha256_hex(b"not the filter");
    let (path, configs) = configs(&dir, &remote_yaml("pinned", &uri, &wrong, &cache));

    let (result, _) = load(&configs);
    let error = result.err().expect("the plugin is refused");
    assert!(matches!(&error, PluginError::Remote { source: FetchError::Mismatch { .. }, .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "{}:1: plugin \"pinned\": vm_config.code.remote.sha256: the code downloaded from {uri} has sha256 {}; expected {wrong}; plugin refused",
            path.display(),
            sha256_hex(&bytes)
        )
    );
    assert_eq!(server.requests(), 1);
    assert!(!cache.join(format!("{wrong}.wasm")).exists(), "nothing is cached");
    assert!(std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0) == 0, "no file left in the cache");
}

#[test]
fn a_corrupt_cache_file_is_ignored_with_a_warning_and_downloaded_again() {
    let bytes = built_plugin(FILTER);
    let server = CodeServer::start(bytes.clone());
    let dir = temp_dir("remote-corrupt");
    let cache = dir.join("cache");
    let uri = server.url("/filter.wasm");
    let hash = sha256_hex(&bytes);
    let (_, configs) = configs(&dir, &remote_yaml("corrupt", &uri, &hash, &cache));
    load(&configs).0.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server.requests(), 1);

    // Truncate the cached file, as a full disk or a crash might.
    let cached = cache.join(format!("{hash}.wasm"));
    std::fs::write(&cached, &bytes[..bytes.len() / 2]).unwrap();
    let (plugins, warnings) = load(&configs);
    let plugins = plugins.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        warnings,
        vec![format!(
            "corrupt: ignoring cache file {} for {uri}: its sha256 is {}, expected {hash}; downloading it again",
            cached.display(),
            sha256_hex(&bytes[..bytes.len() / 2])
        )]
    );
    assert_eq!(server.requests(), 2, "downloaded again");
    assert_eq!(std::fs::read(&cached).unwrap(), bytes, "the cache file is repaired");
    assert_filters(&plugins, "corrupt");
}

#[test]
fn a_failed_download_refuses_the_plugin_with_the_status() {
    let server = CodeServer::start(Vec::new());
    let dir = temp_dir("remote-404");
    let uri = server.url("/missing.wasm");
    let (path, configs) = configs(&dir, &remote_yaml("gone", &uri, &sha256_hex(b"x"), &dir.join("cache")));
    let error = load(&configs).0.err().expect("refused");
    assert_eq!(
        error.to_string(),
        format!("{}:1: plugin \"gone\": vm_config.code.remote: cannot download {uri}: the server answered with status 404, expected 200 (redirects are not followed); plugin refused", path.display())
    );
}

#[test]
fn an_unreachable_server_refuses_the_plugin() {
    // Bind then drop a listener: nothing accepts on that port any more.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = temp_dir("remote-down");
    let uri = format!("http://127.0.0.1:{port}/filter.wasm");
    let (_, configs) = configs(&dir, &remote_yaml("down", &uri, &sha256_hex(b"x"), &dir.join("cache")));
    let error = load(&configs).0.err().expect("refused");
    assert!(matches!(&error, PluginError::Remote { source: FetchError::Download { .. }, .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "plugin \"down\": vm_config.code.remote: cannot download {uri}: connect to 127.0.0.1:{port}:"
        )),
        "{message}"
    );
}

#[test]
fn a_planted_cache_file_with_other_code_is_ignored_and_downloaded_again() {
    let bytes = built_plugin(FILTER);
    let server = CodeServer::start(bytes.clone());
    let dir = temp_dir("remote-planted");
    let cache = dir.join("cache");
    let uri = server.url("/filter.wasm");
    let hash = sha256_hex(&bytes);
    let (_, configs) = configs(&dir, &remote_yaml("planted", &uri, &hash, &cache));
    // Someone else's (valid) module under the name of the pinned one.
    let planted = wat_bytes("lifecycle_0_2_1");
    std::fs::create_dir_all(&cache).unwrap();
    let cached = cache.join(format!("{hash}.wasm"));
    std::fs::write(&cached, &planted).unwrap();

    let (plugins, warnings) = load(&configs);
    let plugins = plugins.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        warnings,
        vec![format!(
            "planted: ignoring cache file {} for {uri}: its sha256 is {}, expected {hash}; downloading it again",
            cached.display(),
            sha256_hex(&planted)
        )]
    );
    assert_eq!(server.requests(), 1, "downloaded");
    assert_eq!(std::fs::read(&cached).unwrap(), bytes, "the planted file is replaced");
    assert_filters(&plugins, "planted");
}

#[test]
fn a_symlink_in_the_cache_is_not_followed() {
    let bytes = built_plugin(FILTER);
    let server = CodeServer::start(bytes.clone());
    let dir = temp_dir("remote-symlink");
    let cache = dir.join("cache");
    let uri = server.url("/filter.wasm");
    let hash = sha256_hex(&bytes);
    let (_, configs) = configs(&dir, &remote_yaml("linked", &uri, &hash, &cache));
    // A link to a file with the right code: following it would "work", and
    // would read whatever the link's owner points it at next.
    std::fs::create_dir_all(&cache).unwrap();
    let target = dir.join("elsewhere.wasm");
    std::fs::write(&target, &bytes).unwrap();
    let cached = cache.join(format!("{hash}.wasm"));
    std::os::unix::fs::symlink(&target, &cached).unwrap();

    let (plugins, warnings) = load(&configs);
    let plugins = plugins.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        warnings,
        vec![format!(
            "linked: ignoring cache file {0} for {uri}: {0} is a symbolic link (not followed); downloading it again",
            cached.display()
        )]
    );
    assert_eq!(server.requests(), 1, "downloaded, not read through the link");
    let meta = std::fs::symlink_metadata(&cached).unwrap();
    assert!(meta.file_type().is_file(), "the link is replaced by the downloaded file");
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
    assert_eq!(std::fs::read(&target).unwrap(), bytes, "the link's target is left alone");
    assert_filters(&plugins, "linked");
}
