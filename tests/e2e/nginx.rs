//! A private NGINX (master + workers) for one test, with our module loaded.
//!
//! [`Nginx::start`] builds a unique directory
//!
//! ```text
//! <tmp>/pw-e2e-<name>-<pid>-<n>-<x>/
//!   conf/nginx.conf   load_module, pid, error_log, the five *_temp_path, the test's http/server text
//!   conf/<files>      the test's own files (YAML ...)
//!   logs/ tmp/
//! ```
//!
//! and runs `/usr/sbin/nginx -p <dir> -c <dir>/conf/nginx.conf` in the
//! foreground (`daemon off`, `master_process on`) in its own process group.
//! It is ready when the port accepts connections and every worker has logged
//! that its plugins started (when there are plugins). As root, workers run as
//! `nobody`: the directory is world-readable and the temp dirs world-writable.
//! Drop stops it (SIGTERM, then SIGKILL to its group) and removes the
//! directory unless the test is panicking (or `E2E_KEEP` is set).
//!
//! Text may use placeholders: `@DIR@`, `@CONF@`, `@PORT@`, `@ORIGIN_PORT@`, `@REPO@`.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::client::{ClientError, Request, Response};
use super::{free_port, repo_root, tail_file, unique_dir, wait_until};

pub const NGINX: &str = "/usr/sbin/nginx";
pub const MODULE_SO: &str = "ngx_http_proxy_wasm_module.so";
/// What each worker logs once its plugins run.
pub const WORKER_READY: &str = "[proxy_wasm] plugins started in worker";

/// `$PROXY_WASM_NGINX_SO` or `<repo>/build/ngx_http_proxy_wasm_module.so`; panics if missing.
pub fn require_module_so() -> PathBuf {
    let p = std::env::var_os("PROXY_WASM_NGINX_SO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build").join(MODULE_SO));
    assert!(p.is_file(), "the NGINX module is not built: expected {} (run `make nginx`)", p.display());
    p
}

#[derive(Debug, Clone)]
pub struct NginxOptions {
    pub name: String,
    pub workers: usize,
    /// Lines in the main context (e.g. `env NAME=value;`).
    pub main: String,
    /// Lines inside `http {}` before the server (e.g. `proxy_wasm_config ...;`).
    pub http: String,
    /// Lines inside `server {}` (locations).
    pub server: String,
    pub origin_port: Option<u16>,
    /// Files written under conf/ (placeholders substituted).
    pub files: Vec<(String, String)>,
    /// `error_log` level.
    pub log_level: String,
    /// Wait for this many "plugins started" lines (default: workers when a
    /// `proxy_wasm_config` is given).
    pub expect_ready_workers: Option<usize>,
    pub startup_timeout: Duration,
    pub keep_dir: bool,
}

impl NginxOptions {
    pub fn new(name: &str) -> NginxOptions {
        NginxOptions {
            name: name.into(),
            workers: 2,
            main: String::new(),
            http: String::new(),
            server: String::new(),
            origin_port: None,
            files: Vec::new(),
            log_level: "info".into(),
            expect_ready_workers: None,
            startup_timeout: Duration::from_secs(30),
            keep_dir: std::env::var_os("E2E_KEEP").is_some(),
        }
    }
    pub fn http(mut self, text: impl Into<String>) -> Self {
        self.http.push_str(&text.into());
        self.http.push('\n');
        self
    }
    pub fn main(mut self, text: impl Into<String>) -> Self {
        self.main.push_str(&text.into());
        self.main.push('\n');
        self
    }
    pub fn server(mut self, text: impl Into<String>) -> Self {
        self.server.push_str(&text.into());
        self.server.push('\n');
        self
    }
    pub fn origin(mut self, port: u16) -> Self {
        self.origin_port = Some(port);
        self
    }
    pub fn file(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.files.push((name.into(), text.into()));
        self
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }
}

pub struct Nginx {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    opts: NginxOptions,
}

impl Nginx {
    pub fn start(opts: NginxOptions) -> Nginx {
        let mut last = String::new();
        for _ in 0..3 {
            match Nginx::try_start(opts.clone()) {
                Ok(n) => return n,
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}")
    }

    fn subst(&self, text: &str) -> String {
        text.replace("@DIR@", &self.dir.display().to_string())
            .replace("@CONF@", &self.dir.join("conf").display().to_string())
            .replace("@PORT@", &self.port.to_string())
            .replace("@ORIGIN_PORT@", &self.opts.origin_port.map_or("0".into(), |p| p.to_string()))
            .replace("@REPO@", &repo_root().display().to_string())
    }

    /// Writes the configuration (again, e.g. before a reload) and the files.
    pub fn write_config(&self) {
        let d = &self.dir;
        let so = require_module_so();
        let o = &self.opts;
        let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("    {t}_temp_path {}/tmp/{t};\n", d.display()))
            .collect();
        let conf = format!(
            "load_module {so};\nworker_processes {workers};\nmaster_process on;\ndaemon off;\npid {dir}/logs/nginx.pid;\nerror_log {dir}/logs/error.log {level};\n{main}\
             events {{ worker_connections 1024; }}\n\
             http {{\n    access_log {dir}/logs/access.log;\n{temp}    client_body_buffer_size 64k;\n{http}\n    server {{\n        listen 127.0.0.1:{port};\n{server}\n    }}\n}}\n",
            so = so.display(),
            workers = o.workers,
            dir = d.display(),
            level = o.log_level,
            main = self.subst(&o.main),
            temp = temp,
            http = self.subst(&o.http),
            port = self.port,
            server = self.subst(&o.server),
        );
        fs::write(d.join("conf/nginx.conf"), conf).expect("write nginx.conf");
        for (name, text) in &o.files {
            let p = d.join("conf").join(name);
            fs::write(&p, super::on_test_runtime(name, &self.subst(text))).expect("write conf file");
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o644));
        }
    }

    /// Writes the instance directory and runs `nginx -t` on it without
    /// starting anything; returns the output (the directory is removed).
    pub fn test_only(opts: NginxOptions) -> Output {
        let n = Nginx::prepare(opts);
        n.test_config()
    }

    fn prepare(opts: NginxOptions) -> Nginx {
        require_module_so();
        let dir = unique_dir(&opts.name);
        for sub in ["conf", "logs", "tmp"] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        let _ = fs::set_permissions(dir.join("conf"), fs::Permissions::from_mode(0o755));
        let _ = fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o777));
        let n = Nginx { dir, port: free_port(), child: None, opts };
        n.write_config();
        n
    }

    pub fn try_start(opts: NginxOptions) -> Result<Nginx, String> {
        let mut n = Nginx::prepare(opts);
        let err = fs::File::create(n.dir.join("logs/stderr.log")).expect("stderr log");
        let child = Command::new(NGINX)
            .args(["-p", &n.dir.display().to_string(), "-c", &n.conf_path().display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .env("RUST_BACKTRACE", "1")
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {NGINX}: {e}"))?;
        n.child = Some(child);
        let ready_workers = n.opts.expect_ready_workers.unwrap_or(if n.opts.http.contains("proxy_wasm_config") {
            n.opts.workers
        } else {
            0
        });
        let deadline = Instant::now() + n.opts.startup_timeout;
        loop {
            if let Some(status) = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let report = n.log_report();
                n.child = None;
                n.opts.keep_dir = true;
                return Err(format!("nginx exited during start-up ({status})\n{report}"));
            }
            let up = TcpStream::connect(("127.0.0.1", n.port)).is_ok();
            if up && n.error_log().matches(WORKER_READY).count() >= ready_workers {
                return Ok(n);
            }
            if Instant::now() > deadline {
                n.opts.keep_dir = true;
                return Err(format!("nginx not ready after {:?}\n{}", n.opts.startup_timeout, n.log_report()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("conf/nginx.conf")
    }
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }
    pub fn error_log(&self) -> String {
        fs::read(self.dir.join("logs/error.log")).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
    pub fn log_report(&self) -> String {
        format!(
            "--- {}/logs/error.log (tail) ---\n{}\n--- stderr ---\n{}",
            self.dir.display(),
            tail_file(&self.dir.join("logs/error.log"), 60),
            tail_file(&self.dir.join("logs/stderr.log"), 20)
        )
    }
    pub fn send(&self, req: &Request) -> Result<Response, ClientError> {
        req.send(self.port)
    }
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        Request::get(path).send(self.port)
    }
    /// Waits until the error log contains `text`; panics with the log otherwise.
    pub fn expect_log(&self, text: &str, timeout: Duration) {
        if !wait_until(timeout, || self.error_log().contains(text)) {
            panic!("error.log never said {text:?}\n{}", self.log_report());
        }
    }
    /// Whether the master is still running (not exited, not a zombie).
    pub fn is_running(&self) -> bool {
        let Some(master) = self.child.as_ref().map(|c| c.id()) else { return false };
        match fs::read_to_string(format!("/proc/{master}/stat")) {
            // The state is the first field after the command's `)`.
            Ok(stat) => !matches!(stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()), Some("Z" | "X")),
            Err(_) => false,
        }
    }
    /// How many worker processes the configuration asks for.
    pub fn workers(&self) -> usize {
        self.opts.workers
    }
    /// The pids of the worker processes (children of the master).
    pub fn worker_pids(&self) -> Vec<u32> {
        let Some(master) = self.child.as_ref().map(|c| c.id()) else { return Vec::new() };
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                let after = stat.rsplit(')').next().unwrap_or("");
                let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
    /// `nginx -s <signal>` with this instance's prefix and configuration.
    pub fn signal(&self, signal: &str) -> Output {
        Command::new(NGINX)
            .args(["-p", &self.dir.display().to_string(), "-c", &self.conf_path().display().to_string(), "-s", signal])
            .output()
            .expect("run nginx -s")
    }
    /// SIGHUP to the master (a reload without `nginx -s`).
    pub fn hup(&self) {
        if let Some(c) = &self.child {
            // SAFETY: signalling the master we started.
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }
    /// `nginx -t` on this instance's configuration (as it is on disk now).
    pub fn test_config(&self) -> Output {
        test_config_at(&self.dir, &self.conf_path())
    }
    /// Rewrites a file under conf/.
    pub fn rewrite_file(&self, name: &str, text: &str) {
        fs::write(self.dir.join("conf").join(name), self.subst(text)).expect("rewrite conf file");
    }
}

/// `nginx -t -p <dir> -c <conf>`.
pub fn test_config_at(dir: &Path, conf: &Path) -> Output {
    Command::new(NGINX)
        .args(["-t", "-p", &dir.display().to_string(), "-c", &conf.display().to_string()])
        .output()
        .expect("run nginx -t")
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            // SAFETY: signalling the process we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: its process group (master and workers), in case any is left.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
        }
        if std::thread::panicking() || self.opts.keep_dir {
            eprintln!("nginx instance kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
