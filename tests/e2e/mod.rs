//! End-to-end test harness: a real Apache Traffic Server 9.2 process with a
//! private runroot ([`ats`]), a recording HTTP/1.1 origin server ([`origin`])
//! and a small blocking HTTP/1.1 client ([`client`]).
//!
//! Use it from a test file in `tests/` with `mod e2e;`:
//!
//! ```ignore
//! let origin = e2e::origin::Origin::start();               // 200 "hello from origin"
//! let ats = e2e::ats::TrafficServer::start(
//!     e2e::ats::AtsOptions::new("my-test")
//!         .origin(origin.port())                           // remap: map / -> origin
//!         .file("a.yaml", "...")                           // written to <etc>/a.yaml
//!         .global_plugin(&["a.yaml"]),                     // plugin.config line
//! );
//! let resp = ats.send(&e2e::client::Request::post("/echo", "hi")).unwrap();
//! assert_eq!(origin.wait_for_requests(1, Duration::from_secs(5))[0].body, b"hi");
//! ats.expect_log("some debug line", Duration::from_secs(5));
//! ```
//!
//! Set `E2E_KEEP=1` to keep every instance directory (logs, configs).
//!
//! Everything here uses only `std` (plus `libc` for signals and `setsid`).
//! Every blocking operation has a timeout; failures panic with a message that
//! says what was expected and, for Traffic Server, the tail of its logs.
#![allow(dead_code)]

pub mod ats;
pub mod client;
pub mod http;
pub mod nginx;
pub mod origin;
pub mod server;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The runtime every end-to-end plugin runs on: `E2E_RUNTIME` (`wasmtime`
/// or `wamr`), or `None` to leave each YAML file as written. `make test` runs
/// the end-to-end suites once per runtime.
pub fn runtime_override() -> Option<String> {
    std::env::var("E2E_RUNTIME").ok().filter(|r| !r.is_empty())
}

/// A YAML file as the tests wrote it, moved onto the runtime of
/// [`runtime_override`]: every `runtime:` value is replaced, and a block
/// `vm_config:` / `vmConfig:` without one gets one. A file containing
/// `# e2e: keep runtime` (a test about one runtime) is left alone.
pub fn on_test_runtime(name: &str, text: &str) -> String {
    let Some(runtime) = runtime_override() else { return text.to_string() };
    if !(name.ends_with(".yaml") || name.ends_with(".yml")) || text.contains("# e2e: keep runtime") {
        return text.to_string();
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::with_capacity(text.len() + 64);
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("runtime:") {
            out.push_str(&format!("{indent}runtime: \"{runtime}\"\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        let key = trimmed.trim_end();
        if key == "vm_config:" || key == "vmConfig:" {
            // The block's own indentation, from its first line.
            let child = lines.get(i + 1).map(|l| &l[..l.len() - l.trim_start().len()]).unwrap_or("  ");
            let block_has_runtime = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent.len())
                .any(|l| l.trim_start().starts_with("runtime:"));
            if !block_has_runtime {
                out.push_str(&format!("{child}runtime: \"{runtime}\"\n"));
            }
        }
    }
    out
}

/// The crate root (where `Cargo.toml` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port on 127.0.0.1 that was free a moment ago, for a server that binds it
/// itself (Traffic Server). It is taken outside the kernel's ephemeral range
/// (32768..61000), so sockets that other tests open meanwhile (the origin, client
/// connections) cannot steal it, and spread by process id and a counter, so
/// parallel tests and parallel test binaries rarely even try the same one.
/// Callers must still cope with losing a race (see `TrafficServer::start`).
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 20_000;
    const SPAN: usize = 12_000; // 20000..32000
    let seed = (std::process::id() as usize).wrapping_mul(7919)
        ^ (SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() as usize).unwrap_or(0));
    for _ in 0..500 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (seed.wrapping_add(n.wrapping_mul(104_729))) % SPAN) as u16;
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    // Fall back to an ephemeral port.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Where [`unique_dir`] creates directories: the system temp dir, or /tmp
/// if that path is long.
pub fn unique_dir_parent() -> PathBuf {
    let t = std::env::temp_dir();
    if t.as_os_str().len() > 40 {
        PathBuf::from("/tmp")
    } else {
        t
    }
}

/// A fresh, unique, short directory under the system temp dir (Unix socket
/// paths inside it must stay under 108 bytes). `tag` ends up in its name.
pub fn unique_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = unique_dir_parent();
    let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').take(24).collect();
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("pw-e2e-{tag}-{}-{n}-{:x}", std::process::id(), nanos & 0xfffff));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create temp dir {}: {e}", dir.display()),
        }
    }
}

/// Polls `cond` every 10 ms until it is true or `timeout` passes; returns the
/// last answer.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last `lines` lines of a file, or a note that it cannot be read.
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_text(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("<{}: {e}>", path.display()),
    }
}

/// The last `lines` lines of `text`.
pub fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// A body of `len` bytes with a recognisable, position-dependent pattern
/// (so a lost, duplicated or reordered block is detected by comparison).
pub fn pattern_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[(i * 7 + i / 61) % 62]).collect()
}
