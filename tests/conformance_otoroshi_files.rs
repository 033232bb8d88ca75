//! An Otoroshi entity's `allowedPaths` on both servers (`for_each_server!`): the host folders it
//! lists are preopened through WASI, and a plugin built with the Extism Rust PDK for wasm32-wasi
//! reads (and, in an `rw:` folder, writes) files there with Rust's std::fs; every path that
//! leaves the folder is refused. The plugin (tests/plugins/otoroshi/rust/examples/files.rs)
//! allows a request for `/files/<name>` when `/data/<name>` holds `allow`, and otherwise denies it
//! with 403 and the file's text or the error std::fs gave.
//!
//! Run with `make ats nginx && cargo test --test conformance_otoroshi_files` (and with
//! `E2E_RUNTIME=wamr`).

mod e2e;

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::origin::Origin;
use e2e::server::{Kind, ServerUnderTest, Setup};

/// A folder tree for one test: `data/` (the folder given to the plugin) and a file beside it.
struct Tree(PathBuf);

impl Tree {
    fn new(test: &str, server: &str) -> Tree {
        let root = std::env::temp_dir().join(format!("pw-oto-files-{test}-{server}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/allow.txt"), "allow\n").unwrap();
        std::fs::write(root.join("data/deny.txt"), "deny\n").unwrap();
        std::fs::write(root.join("secret.txt"), "allow\n").unwrap();
        std::os::unix::fs::symlink(root.join("secret.txt"), root.join("data/link.txt")).unwrap();
        // NGINX's workers run as nobody: the writable folder is open to all.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("data"), std::fs::Permissions::from_mode(0o777)).unwrap();
        Tree(root)
    }

    fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The entity: ValidateAccess with the files plugin, `wasi: true`, `host` given as `/data`.
fn entity_yaml(id: &str, host: &str) -> String {
    let doc = serde_json::json!({
        "id": id,
        "name": "files through WASI",
        "config": {
            "source": { "kind": "File", "path": "@REPO@/build/plugins/otoroshi_rust_files.wasm", "opts": {} },
            "memoryPages": 50,
            "functionName": "execute",
            "config": {},
            "allowedHosts": [],
            "allowedPaths": { host: "/data" },
            "wasi": true,
            "opa": false,
            "instances": 1
        },
        "steps": ["ValidateAccess"]
    });
    format!("otoroshi:\n  runtime: wasmtime\n  callback_timeout: 2s\nwasm_plugins:\n  - {doc}\n")
}

fn start<S: ServerUnderTest>(test: &str, origin: &Origin, host: &Path, writable: bool) -> S {
    let id = "files";
    let host = format!("{}{}", if writable { "rw:" } else { "" }, host.display());
    S::start(Setup::new(test, origin.port()).workers(1).plugin(id, entity_yaml(id, &host)))
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

/// examples/otoroshi/files.json as exported, its module and folder made absolute (the harness
/// writes the entity into the server's own configuration folder).
fn example_yaml() -> (String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/otoroshi/files.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["config"]["source"]["path"] = "@REPO@/build/plugins/otoroshi_rust_files.wasm".into();
    let folder = root.join("examples/otoroshi/files-data").display().to_string();
    doc["config"]["allowedPaths"] = serde_json::json!({ folder: "/data" });
    let id = doc["id"].as_str().unwrap().to_owned();
    (id, format!("otoroshi:\n  runtime: wasmtime\nwasm_plugins:\n  - {doc}\n"))
}

e2e::server::for_each_server! {

#[test]
fn the_files_example_allows_and_denies_by_its_folders_files() {
    let origin = Origin::start();
    let (id, yaml) = example_yaml();
    let s = <Server as ServerUnderTest>::start(Setup::new("oto-files-example", origin.port()).workers(1).plugin(&id, yaml));
    assert_eq!(send(&s, Request::get("/files/allow.txt")).status, 200, "{}", s.log_report());
    let r = send(&s, Request::get("/files/deny.txt").header("accept", "application/json"));
    assert_eq!(r.status, 403, "{}\n{}", r.body_str(), s.log_report());
    assert!(r.body_str().contains("/data/deny.txt says deny"), "{}", r.body_str());
}

#[test]
fn a_plugin_reads_a_file_of_its_allowed_folder_with_std_fs() {
    let origin = Origin::start();
    let tree = Tree::new("read", Server::NAME);
    let s = start::<Server>("oto-files-read", &origin, &tree.data(), false);
    let r = send(&s, Request::get("/files/allow.txt"));
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), s.log_report());
    let r = send(&s, Request::get("/files/deny.txt").header("accept", "application/json"));
    assert_eq!(r.status, 403, "{}\n{}", r.body_str(), s.log_report());
    assert!(r.body_str().contains("/data/deny.txt says deny"), "{}", r.body_str());
    let r = send(&s, Request::get("/files/missing.txt").header("accept", "application/json"));
    assert_eq!(r.status, 403);
    assert!(r.body_str().contains("No such file or directory"), "{}", r.body_str());
    s.assert_nothing_died();
}

#[test]
fn paths_that_leave_the_allowed_folder_are_refused() {
    let origin = Origin::start();
    let tree = Tree::new("escape", Server::NAME);
    let s = start::<Server>("oto-files-escape", &origin, &tree.data(), false);
    let before = origin.request_count();
    // `..` out of the folder, and a symbolic link inside it that leads out: both reach a file
    // that says "allow", and both are refused by the host (WASI notcapable, errno 76).
    for path in ["/files/../secret.txt", "/files/link.txt"] {
        let r = send(&s, Request::get(path).header("accept", "application/json"));
        assert_eq!(r.status, 403, "{path}: {}\n{}", r.body_str(), s.log_report());
        assert!(r.body_str().contains("os error 76"), "{path}: {}", r.body_str());
    }
    assert_eq!(origin.request_count(), before, "a refused request never reaches the origin");
    s.assert_nothing_died();
}

#[test]
fn a_folder_is_read_only_unless_given_with_rw() {
    let origin = Origin::start();
    let tree = Tree::new("write", Server::NAME);
    let s = start::<Server>("oto-files-ro", &origin, &tree.data(), false);
    let r = send(&s, Request::get("/files/new.txt").header("x-write", "allow").header("accept", "application/json"));
    assert_eq!(r.status, 403, "{}\n{}", r.body_str(), s.log_report());
    assert!(r.body_str().contains("write /data/new.txt") && r.body_str().contains("os error 69"), "{}", r.body_str());
    assert!(!tree.data().join("new.txt").exists(), "nothing was written");
    drop(s);
    let s = start::<Server>("oto-files-rw", &origin, &tree.data(), true);
    let r = send(&s, Request::get("/files/new.txt").header("x-write", "allow"));
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), s.log_report());
    assert_eq!(std::fs::read_to_string(tree.data().join("new.txt")).unwrap(), "allow");
    s.assert_nothing_died();
}

#[test]
fn an_allowed_folder_that_does_not_exist_is_a_load_error_naming_the_key() {
    let origin = Origin::start();
    let tree = Tree::new("missing", Server::NAME);
    let missing = tree.0.join("no-such-folder");
    let setup = Setup::new("oto-files-missing", origin.port()).workers(1).plugin("files", entity_yaml("files", &missing.display().to_string()));
    let expected = "config.allowedPaths: host folder";
    match Server::KIND {
        // nginx refuses the configuration (nginx -t says why).
        Kind::Nginx => {
            let err = std::panic::catch_unwind(|| <Server as ServerUnderTest>::start(setup)).err().expect("nginx does not start");
            let message = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(message.contains(expected) && message.contains("no-such-folder"), "{message}");
        }
        // Traffic Server logs the configuration error and serves without these plugins.
        Kind::TrafficServer => {
            let s = <Server as ServerUnderTest>::start(setup);
            s.expect_log(expected, Duration::from_secs(5));
        }
    }
}

}
