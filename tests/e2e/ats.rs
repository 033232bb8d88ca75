//! A private Apache Traffic Server 9.2 instance for one test.
//!
//! [`TrafficServer::start`] builds a unique directory
//!
//! ```text
//! <tmp>/pw-e2e-<name>-<pid>-<n>-<x>/
//!   runroot.yaml        absolute paths to the directories below (bindir /usr/bin)
//!   etc/                copy of /etc/trafficserver, then: records.config (our block appended),
//!                       remap.config, plugin.config, ip_allow.yaml, storage.config (empty),
//!                       and the test's own files
//!   plugins/            libexecdir / plugin_dir: proxy_wasm_ats.so -> <repo>/build/proxy_wasm_ats.so
//!                       (if built) and symlinks to the stock plugins
//!   run/ logs/ cache/ var/
//! ```
//!
//! starts `traffic_server` (or `traffic_manager`, which starts `traffic_server`
//! and is needed for `traffic_ctl config reload` on 9.2) in its own session
//! with `TS_RUNROOT=<dir>/runroot.yaml`, and waits until `diags.log` says
//! "Traffic Server is fully initialized" and the port accepts connections.
//! Drop stops it (SIGTERM, then SIGKILL to its process group) and removes the
//! directory unless the test is panicking (then the path is printed).
//!
//! Text given for `plugin.config`, `remap.config` and extra files may use
//! placeholders, replaced when written: `@ETC@` (the etc dir), `@DIR@` (the
//! instance dir), `@LOGS@`, `@PLUGIN_DIR@`, `@PORT@` (proxy port),
//! `@ORIGIN_PORT@`, `@REPO@` (crate root, e.g. `@REPO@/build/plugins/x.wasm`).

use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::{self, ClientError, Response};
use super::{repo_root, tail_file, unique_dir, unique_dir_parent, wait_until};

/// The stock configuration that is copied.
pub const SYSTEM_CONFIG_DIR: &str = "/etc/trafficserver";
/// The stock plugins, symlinked into each instance's plugin dir.
pub const SYSTEM_PLUGIN_DIR: &str = "/usr/lib/trafficserver/modules";
pub const TRAFFIC_SERVER: &str = "/usr/bin/traffic_server";
pub const TRAFFIC_MANAGER: &str = "/usr/bin/traffic_manager";
pub const TRAFFIC_CTL: &str = "/usr/bin/traffic_ctl";
/// The file name of our plugin inside the plugin dir (what plugin.config / remap.config name).
pub const PLUGIN_SO: &str = "proxy_wasm_ats.so";
/// What diags.log says when the server is ready.
pub const READY_LINE: &str = "Traffic Server is fully initialized";

/// Path of the built ATS plugin: `$PROXY_WASM_ATS_SO` if set, else
/// `<repo>/build/proxy_wasm_ats.so`; `None` if that file does not exist.
pub fn plugin_so() -> Option<PathBuf> {
    let p = std::env::var_os("PROXY_WASM_ATS_SO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build").join(PLUGIN_SO));
    p.is_file().then_some(p)
}

/// Like [`plugin_so`] but panics with instructions if it is missing.
pub fn require_plugin_so() -> PathBuf {
    plugin_so().unwrap_or_else(|| {
        panic!(
            "the Traffic Server plugin is not built: expected {} (or set PROXY_WASM_ATS_SO)",
            repo_root().join("build").join(PLUGIN_SO).display()
        )
    })
}

/// A remap line sending every request (any Host, any path) to
/// `127.0.0.1:<origin_port>`, with `extra` appended (e.g.
/// `" @plugin=proxy_wasm_ats.so @pparam=@ETC@/a.yaml"`).
pub fn map_all(origin_port: u16, extra: &str) -> String {
    format!("map / http://127.0.0.1:{origin_port}/{extra}\n")
}

/// The `@plugin=... @pparam=...` suffix for our plugin with these YAML files.
pub fn remap_plugin_params(yaml_files: &[&str]) -> String {
    let mut s = format!(" @plugin={PLUGIN_SO}");
    for y in yaml_files {
        s.push_str(&format!(" @pparam={y}"));
    }
    s
}

/// Options for [`TrafficServer::start`]. Build with [`AtsOptions::new`] and the
/// builder methods; every field is public too.
#[derive(Debug, Clone)]
pub struct AtsOptions {
    /// A tag in the directory name (the test name is a good choice).
    pub name: String,
    /// Contents of plugin.config (empty: no global plugin).
    pub plugin_config: String,
    /// Contents of remap.config; `None`: [`map_all`] to `origin_port` (or no
    /// rule at all if there is no origin port: every request then gets 404).
    pub remap_config: Option<String>,
    pub origin_port: Option<u16>,
    /// `proxy.config.exec_thread.limit` (autoconfig off). Default 2.
    pub exec_threads: usize,
    /// `proxy.config.diags.debug.tags`. Default `proxy_wasm`. Empty: debug off.
    pub debug_tags: String,
    /// Extra records.config lines, appended after ours (so they win), e.g.
    /// `CONFIG proxy.config.http.connect_attempts_timeout INT 2`.
    pub records: Vec<String>,
    /// Extra files written (after placeholder substitution) relative to etc/.
    pub files: Vec<(String, String)>,
    /// Extra files written verbatim relative to etc/.
    pub binary_files: Vec<(String, Vec<u8>)>,
    /// Run under traffic_manager (needed for [`TrafficServer::reload`]).
    pub manager: bool,
    /// `proxy.config.url_remap.pristine_host_hdr`: keep the client's Host
    /// header towards the origin. Default true.
    pub pristine_host: bool,
    /// Symlink the built plugin into the plugin dir if it exists. Default true.
    pub install_plugin: bool,
    /// Extra environment for traffic_server / traffic_manager.
    pub env: Vec<(String, String)>,
    /// Readiness deadline. Default 10 s (20 s with the manager).
    pub startup_timeout: Duration,
    /// Grace period after SIGTERM before SIGKILL. Default 5 s.
    pub stop_timeout: Duration,
    /// Keep the directory even on success.
    pub keep_dir: bool,
}

impl Default for AtsOptions {
    fn default() -> Self {
        AtsOptions {
            name: "ats".into(),
            plugin_config: String::new(),
            remap_config: None,
            origin_port: None,
            exec_threads: 2,
            debug_tags: "proxy_wasm".into(),
            records: Vec::new(),
            files: Vec::new(),
            binary_files: Vec::new(),
            manager: false,
            pristine_host: true,
            install_plugin: true,
            env: vec![("RUST_BACKTRACE".into(), "1".into())],
            startup_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            keep_dir: std::env::var_os("E2E_KEEP").is_some(),
        }
    }
}

impl AtsOptions {
    pub fn new(name: &str) -> AtsOptions {
        AtsOptions { name: name.to_string(), ..Default::default() }
    }
    /// Send everything to this origin with the default remap rule.
    pub fn origin(mut self, port: u16) -> Self {
        self.origin_port = Some(port);
        self
    }
    pub fn plugin_config(mut self, text: impl Into<String>) -> Self {
        self.plugin_config = text.into();
        self
    }
    /// A plugin.config line loading our plugin with these YAML files.
    pub fn global_plugin(mut self, yaml_files: &[&str]) -> Self {
        let mut line = PLUGIN_SO.to_string();
        for y in yaml_files {
            line.push(' ');
            line.push_str(y);
        }
        self.plugin_config.push_str(&line);
        self.plugin_config.push('\n');
        self
    }
    pub fn remap_config(mut self, text: impl Into<String>) -> Self {
        self.remap_config = Some(text.into());
        self
    }
    pub fn exec_threads(mut self, n: usize) -> Self {
        self.exec_threads = n;
        self
    }
    pub fn debug_tags(mut self, tags: impl Into<String>) -> Self {
        self.debug_tags = tags.into();
        self
    }
    /// Adds a records.config line (a full `CONFIG name TYPE value` line).
    pub fn record(mut self, line: impl Into<String>) -> Self {
        self.records.push(line.into());
        self
    }
    /// Writes `etc/<name>` with `text` (placeholders substituted).
    pub fn file(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.files.push((name.into(), text.into()));
        self
    }
    pub fn binary_file(mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        self.binary_files.push((name.into(), bytes.into()));
        self
    }
    pub fn manager(mut self, yes: bool) -> Self {
        self.manager = yes;
        if yes && self.startup_timeout < Duration::from_secs(20) {
            self.startup_timeout = Duration::from_secs(20);
        }
        self
    }
    pub fn pristine_host(mut self, yes: bool) -> Self {
        self.pristine_host = yes;
        self
    }
    pub fn install_plugin(mut self, yes: bool) -> Self {
        self.install_plugin = yes;
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    pub fn startup_timeout(mut self, d: Duration) -> Self {
        self.startup_timeout = d;
        self
    }
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.stop_timeout = d;
        self
    }
    pub fn keep_dir(mut self, yes: bool) -> Self {
        self.keep_dir = yes;
        self
    }
}

/// A position in the logs; see [`TrafficServer::log_mark`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LogMark {
    diags: usize,
    out: usize,
}

/// A running Traffic Server; stopped and cleaned up on drop.
pub struct TrafficServer {
    dir: PathBuf,
    port: u16,
    origin_port: Option<u16>,
    child: Option<Child>,
    pid: u32,
    manager: bool,
    stop_timeout: Duration,
    keep_dir: bool,
    exit: Option<ExitStatus>,
    started_in: Duration,
    /// Start-up failed: the start code already dealt with the directory.
    failed_start: bool,
}

struct StartFailure {
    port_conflict: bool,
    message: String,
}

impl TrafficServer {
    /// Starts an instance; panics with the log tails if it does not become ready.
    pub fn start(opts: AtsOptions) -> TrafficServer {
        match TrafficServer::try_start(opts) {
            Ok(ts) => ts,
            Err(msg) => panic!("{msg}"),
        }
    }

    /// Starts an instance; `Err` (with the log tails) if it does not become
    /// ready. A lost race for the port is retried with another port.
    pub fn try_start(opts: AtsOptions) -> Result<TrafficServer, String> {
        for bin in [TRAFFIC_SERVER, TRAFFIC_MANAGER] {
            if !Path::new(bin).exists() {
                return Err(format!("{bin} is not installed (Debian package trafficserver)"));
            }
        }
        let mut last = String::new();
        for attempt in 1..=4 {
            match start_once(&opts) {
                Ok(ts) => return Ok(ts),
                Err(f) if f.port_conflict && attempt < 4 => {
                    last = f.message;
                    continue;
                }
                Err(f) => return Err(f.message),
            }
        }
        Err(last)
    }

    /// The proxy port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
    pub fn origin_port(&self) -> Option<u16> {
        self.origin_port
    }
    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `<dir>/etc` (sysconfdir: records.config, remap.config, plugin.config, ...).
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.join("plugins")
    }
    pub fn runroot(&self) -> PathBuf {
        self.dir.join("runroot.yaml")
    }
    /// Whether this instance runs under traffic_manager.
    pub fn under_manager(&self) -> bool {
        self.manager
    }
    /// How long start-up took (process spawn to ready).
    pub fn startup_time(&self) -> Duration {
        self.started_in
    }

    /// The pid of the traffic_server process (under the manager: read from
    /// run/server.lock).
    pub fn server_pid(&self) -> Option<u32> {
        if !self.manager {
            return Some(self.pid);
        }
        let text = fs::read_to_string(self.dir.join("run/server.lock")).ok()?;
        text.trim().parse().ok().filter(|p| process_alive(*p))
    }

    /// Whether the server (and, in manager mode, the manager) is still running.
    pub fn is_running(&self) -> bool {
        if self.child.is_none() || exited_nowait(self.pid) {
            return false;
        }
        !self.manager || self.server_pid().is_some()
    }

    /// Panics (with log tails) if the server is no longer running.
    pub fn assert_running(&self) {
        if !self.is_running() {
            panic!("Traffic Server is not running any more\n{}", self.log_report());
        }
    }

    // ---------------------------------------------------------------- logs

    /// Full text of logs/diags.log (debug output goes there too).
    pub fn diags_log(&self) -> String {
        read_lossy(&self.log_dir().join("diags.log"))
    }
    /// What the process wrote to stdout/stderr (panic messages of a Rust
    /// plugin end up here). Under the manager this is the manager's output.
    pub fn traffic_out(&self) -> String {
        read_lossy(&self.log_dir().join("traffic.out"))
    }
    pub fn error_log(&self) -> String {
        read_lossy(&self.log_dir().join("error.log"))
    }
    pub fn manager_log(&self) -> String {
        read_lossy(&self.log_dir().join("manager.log"))
    }

    /// The current end of diags.log and traffic.out, to search only what comes later.
    pub fn log_mark(&self) -> LogMark {
        LogMark {
            diags: file_len(&self.log_dir().join("diags.log")),
            out: file_len(&self.log_dir().join("traffic.out")),
        }
    }

    /// diags.log + traffic.out written after `mark`.
    pub fn logs_since(&self, mark: LogMark) -> String {
        let d = self.diags_log();
        let o = self.traffic_out();
        let mut s = String::new();
        s.push_str(d.get(mark.diags.min(d.len())..).unwrap_or(""));
        s.push('\n');
        s.push_str(o.get(mark.out.min(o.len())..).unwrap_or(""));
        s
    }

    /// How many times `pattern` (a plain substring) occurs in diags.log + traffic.out.
    pub fn count_in_logs(&self, pattern: &str) -> usize {
        self.diags_log().matches(pattern).count() + self.traffic_out().matches(pattern).count()
    }

    /// Waits until `pattern` (a plain substring) appears in diags.log or
    /// traffic.out; false on timeout.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.wait_for_log_since(LogMark::default(), pattern, timeout)
    }

    /// Like [`wait_for_log`](Self::wait_for_log), only text after `mark`.
    pub fn wait_for_log_since(&self, mark: LogMark, pattern: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs_since(mark).contains(pattern))
    }

    /// Waits until `pred` holds for diags.log + traffic.out (whole text).
    pub fn wait_for_logs_matching(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> bool {
        wait_until(timeout, || pred(&self.logs_since(LogMark::default())))
    }

    /// [`wait_for_log`](Self::wait_for_log) that panics with the log tails on timeout.
    pub fn expect_log(&self, pattern: &str, timeout: Duration) {
        if !self.wait_for_log(pattern, timeout) {
            panic!("{:?} did not appear in the Traffic Server logs within {timeout:?}\n{}", pattern, self.log_report());
        }
    }

    /// [`wait_for_log_since`](Self::wait_for_log_since) that panics on timeout.
    pub fn expect_log_since(&self, mark: LogMark, pattern: &str, timeout: Duration) {
        if !self.wait_for_log_since(mark, pattern, timeout) {
            panic!("{:?} did not appear in the Traffic Server logs within {timeout:?}\n{}", pattern, self.log_report());
        }
    }

    /// Tails of every log, for failure messages.
    pub fn log_report(&self) -> String {
        log_report(&self.dir, self.manager)
    }

    // ------------------------------------------------------------ requests

    /// `GET path` (Host: example.com) through the proxy.
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        client::get(self.port, path)
    }
    /// Sends `req` through the proxy on a new connection.
    pub fn send(&self, req: &client::Request) -> Result<Response, ClientError> {
        req.send(self.port)
    }

    // ------------------------------------------------------ config, reload

    /// Writes `etc/<name>` (placeholders substituted).
    pub fn write_config(&self, name: &str, text: &str) {
        let path = self.etc_dir().join(name);
        let text = super::on_test_runtime(name, &substitute(text, &self.dir, self.port, self.origin_port));
        write_file(&path, text.as_bytes());
    }

    /// Runs `traffic_ctl <args>` against this instance (10 s timeout).
    /// Returns (success, stdout + stderr).
    pub fn traffic_ctl(&self, args: &[&str]) -> (bool, String) {
        run_with_timeout(
            Command::new(TRAFFIC_CTL).args(args).env("TS_RUNROOT", self.runroot()).current_dir(&self.dir),
            &self.dir.join("traffic_ctl.out"),
            Duration::from_secs(10),
        )
    }

    /// `traffic_ctl config reload`. Needs the manager ([`AtsOptions::manager`]).
    /// Note: on 9.2 the manager hands the change to traffic_server on its
    /// record sync, which runs every 5 s (fixed), so the effect shows up
    /// 0-5 s later; wait for it with [`reload_and_wait`](Self::reload_and_wait).
    pub fn reload(&self) -> Result<(), String> {
        if !self.manager {
            return Err("reload needs traffic_manager: start with AtsOptions::manager(true)".into());
        }
        let (ok, out) = self.traffic_ctl(&["config", "reload"]);
        if ok {
            Ok(())
        } else {
            Err(format!("traffic_ctl config reload failed: {out}\n{}", self.log_report()))
        }
    }

    /// Reloads and waits until `pattern` appears in the logs after the reload
    /// request (e.g. `"remap.config finished loading"`); panics on failure.
    pub fn reload_and_wait(&self, pattern: &str, timeout: Duration) {
        let mark = self.log_mark();
        if let Err(e) = self.reload() {
            panic!("{e}");
        }
        self.expect_log_since(mark, pattern, timeout);
    }

    // ---------------------------------------------------------------- stop

    /// Stops the server (SIGTERM; SIGKILL to the whole process group after
    /// the stop timeout) and returns the exit status of the process we
    /// started. Idempotent.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(mut child) = self.child.take() {
            self.exit = terminate(&mut child, self.stop_timeout);
        }
        self.exit
    }
}

impl Drop for TrafficServer {
    fn drop(&mut self) {
        let died_early = self.child.is_some() && exited_nowait(self.pid);
        self.stop();
        if self.failed_start {
            return;
        }
        if std::thread::panicking() {
            let _ = fs::write(self.dir.join(KEEP_MARKER), "test panicked\n");
            eprintln!("Traffic Server instance kept for inspection: {}\n{}", self.dir.display(), self.log_report());
        } else if self.keep_dir {
            let _ = fs::write(self.dir.join(KEEP_MARKER), "keep_dir / E2E_KEEP\n");
            eprintln!("Traffic Server instance kept (E2E_KEEP / keep_dir): {}", self.dir.display());
        } else {
            if died_early {
                eprintln!("warning: Traffic Server had exited before the test stopped it\n{}", self.log_report());
            }
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ------------------------------------------------------------------ start-up

/// A file in an instance directory that was kept on purpose; the sweep
/// below leaves such directories alone.
const KEEP_MARKER: &str = "KEPT";

/// Once per test process: removes instance directories left by test
/// processes that no longer exist (killed before their destructors ran),
/// unless they hold [`KEEP_MARKER`]. Their servers died with them
/// (`PR_SET_PDEATHSIG`).
fn sweep_stale_dirs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let base = unique_dir_parent();
        let Ok(entries) = fs::read_dir(&base) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("pw-e2e-") {
                continue;
            }
            // pw-e2e-<tag>-<pid>-<n>-<x>: the pid is third from the end.
            let Some(pid) = name.rsplit('-').nth(2).and_then(|p| p.parse::<u32>().ok()) else { continue };
            if Path::new(&format!("/proc/{pid}")).exists() || e.path().join(KEEP_MARKER).exists() {
                continue;
            }
            let _ = fs::remove_dir_all(e.path());
        }
    });
}

fn start_once(opts: &AtsOptions) -> Result<TrafficServer, StartFailure> {
    sweep_stale_dirs();
    let port = super::free_port();
    let dir = unique_dir(&opts.name);
    // The failure message carries the log tails, so the directory is removed
    // unless the caller asked to keep it.
    let keep = opts.keep_dir;
    let fail = |dir: &Path, port_conflict: bool, message: String| -> StartFailure {
        if keep && !port_conflict {
            let _ = fs::write(dir.join(KEEP_MARKER), "keep_dir / E2E_KEEP\n");
            return StartFailure { port_conflict, message: format!("{message}\n(directory kept: {})", dir.display()) };
        }
        let _ = fs::remove_dir_all(dir);
        let hint = if port_conflict { "" } else { "\n(directory removed; set E2E_KEEP=1 to keep it)" };
        StartFailure { port_conflict, message: format!("{message}{hint}") }
    };
    if let Err(e) = build_layout(&dir, port, opts) {
        return Err(fail(&dir, false, format!("cannot build the Traffic Server layout in {}: {e}", dir.display())));
    }

    let out_path = dir.join("logs/traffic.out");
    let out =
        fs::File::create(&out_path).map_err(|e| fail(&dir, false, format!("create {}: {e}", out_path.display())))?;
    let err = out.try_clone().map_err(|e| fail(&dir, false, format!("dup: {e}")))?;
    let bin = if opts.manager { TRAFFIC_MANAGER } else { TRAFFIC_SERVER };
    let mut cmd = Command::new(bin);
    cmd.env("TS_RUNROOT", dir.join("runroot.yaml")).current_dir(&dir).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let began = Instant::now();
    let child = spawn_owned(cmd).map_err(|e| fail(&dir, false, format!("spawn {bin}: {e}")))?;
    let pid = child.id();
    let mut ts = TrafficServer {
        dir: dir.clone(),
        port,
        origin_port: opts.origin_port,
        child: Some(child),
        pid,
        manager: opts.manager,
        stop_timeout: opts.stop_timeout,
        keep_dir: opts.keep_dir,
        exit: None,
        started_in: Duration::ZERO,
        failed_start: false,
    };

    let deadline = began + opts.startup_timeout;
    let diags = dir.join("logs/diags.log");
    loop {
        let text = read_lossy(&diags);
        let conflict = text.contains("unable to listen on port")
            || text.contains("Address already in use")
            || read_lossy(&dir.join("logs/manager.log")).contains("Address already in use")
            || read_lossy(&out_path).contains("Address already in use");
        if conflict {
            let msg = format!("Traffic Server could not bind port {port} in {}\n{}", dir.display(), ts.log_report());
            ts.stop();
            ts.failed_start = true; // `fail` handles the directory
            return Err(fail(&dir, true, msg));
        }
        if text.contains(READY_LINE) && TcpStream::connect_timeout(&ts.addr(), Duration::from_millis(500)).is_ok() {
            break;
        }
        if exited_nowait(pid) {
            let status = ts.stop();
            ts.failed_start = true;
            return Err(fail(
                &dir,
                false,
                format!(
                    "{bin} exited during start-up ({}) in {}\n{}",
                    status.map(|s| s.to_string()).unwrap_or_else(|| "status unknown".into()),
                    dir.display(),
                    ts.log_report()
                ),
            ));
        }
        if Instant::now() >= deadline {
            let report = ts.log_report();
            ts.stop();
            ts.failed_start = true;
            return Err(fail(
                &dir,
                false,
                format!(
                    "Traffic Server did not become ready ({READY_LINE:?} in diags.log and port {port} open) within {:?}; dir {}\n{report}",
                    opts.startup_timeout,
                    dir.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ts.started_in = began.elapsed();
    Ok(ts)
}

/// Our records.config block (appended to the stock file; later lines win).
fn records_block(dir: &Path, port: u16, opts: &AtsOptions) -> String {
    let etc = dir.join("etc");
    let plugins = dir.join("plugins");
    let debug_on = !opts.debug_tags.trim().is_empty();
    let mut lines = vec![
        "# ---- added by tests/e2e/ats.rs ----".to_string(),
        // Running as root: without this traffic_server exits 70.
        "CONFIG proxy.config.admin.user_id STRING #-1".into(),
        "CONFIG proxy.config.crash_log_helper STRING NULL".into(),
        format!("CONFIG proxy.config.http.server_ports STRING {port}:ip-in=127.0.0.1"),
        "CONFIG proxy.config.http.cache.http INT 0".into(),
        // Reverse proxy: requests are mapped by remap.config (a `map /` rule
        // matches any Host); unmapped requests get 404 rather than being
        // forwarded to whatever the Host header names.
        "CONFIG proxy.config.reverse_proxy.enabled INT 1".into(),
        "CONFIG proxy.config.url_remap.remap_required INT 1".into(),
        format!("CONFIG proxy.config.url_remap.pristine_host_hdr INT {}", opts.pristine_host as i32),
        "CONFIG proxy.config.exec_thread.autoconfig INT 0".into(),
        format!("CONFIG proxy.config.exec_thread.limit INT {}", opts.exec_threads.max(1)),
        format!("CONFIG proxy.config.diags.debug.enabled INT {}", debug_on as i32),
        format!(
            "CONFIG proxy.config.diags.debug.tags STRING {}",
            if debug_on { opts.debug_tags.trim() } else { "none" }
        ),
        // Debug and diag output to diags.log (the default is stderr).
        "CONFIG proxy.config.diags.output.debug STRING L".into(),
        "CONFIG proxy.config.diags.output.diag STRING L".into(),
        "CONFIG proxy.config.diags.logfile.rolling_enabled INT 0".into(),
        format!("CONFIG proxy.config.plugin.plugin_dir STRING {}", plugins.display()),
        format!("CONFIG proxy.config.body_factory.template_sets_dir STRING {}", etc.join("body_factory").display()),
        // Quiet the "connection throttle too high" warning (fd limit).
        "CONFIG proxy.config.net.connections_throttle INT 4000".into(),
        // Faster config propagation and start-up under traffic_manager.
        "CONFIG proxy.config.config_update_interval_ms INT 100".into(),
        "CONFIG proxy.config.lm.pserver_timeout_secs INT 0".into(),
        "CONFIG proxy.config.lm.pserver_timeout_msecs INT 50".into(),
    ];
    lines.extend(opts.records.iter().cloned());
    lines.push(String::new());
    lines.join("\n")
}

const IP_ALLOW: &str = "\
# written by tests/e2e/ats.rs: loopback clients may use every method
ip_allow:
  - apply: in
    ip_addrs: 127.0.0.1
    action: allow
    methods: ALL
  - apply: in
    ip_addrs: ::1
    action: allow
    methods: ALL
";

fn build_layout(dir: &Path, port: u16, opts: &AtsOptions) -> io::Result<()> {
    let etc = dir.join("etc");
    for sub in ["etc", "run", "logs", "cache", "var", "plugins"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    copy_dir(Path::new(SYSTEM_CONFIG_DIR), &etc)?;

    let runroot = format!(
        "prefix: {d}\nexec_prefix: {d}\nbindir: /usr/bin\nsbindir: /usr/bin\nsysconfdir: {d}/etc\ndatadir: {d}/var\n\
         includedir: /usr/include\nlibdir: /usr/lib/trafficserver\nlibexecdir: {d}/plugins\nlocalstatedir: {d}/var\n\
         runtimedir: {d}/run\nlogdir: {d}/logs\ncachedir: {d}/cache\n",
        d = dir.display()
    );
    fs::write(dir.join("runroot.yaml"), runroot)?;

    let mut records = fs::read_to_string(etc.join("records.config")).unwrap_or_default();
    if !records.ends_with('\n') {
        records.push('\n');
    }
    records.push_str(&records_block(dir, port, opts));
    fs::write(etc.join("records.config"), records)?;

    fs::write(etc.join("storage.config"), "")?;
    fs::write(etc.join("ip_allow.yaml"), IP_ALLOW)?;
    let sub = |t: &str| substitute(t, dir, port, opts.origin_port);
    fs::write(etc.join("plugin.config"), sub(&opts.plugin_config))?;
    let remap = match (&opts.remap_config, opts.origin_port) {
        (Some(r), _) => sub(r),
        (None, Some(p)) => map_all(p, ""),
        (None, None) => "# no origin given: no rules (every request gets 404)\n".to_string(),
    };
    fs::write(etc.join("remap.config"), remap)?;
    for (name, text) in &opts.files {
        write_file(&etc.join(name), super::on_test_runtime(name, &sub(text)).as_bytes());
    }
    for (name, bytes) in &opts.binary_files {
        write_file(&etc.join(name), bytes);
    }

    // Plugins: ours (if built) and the stock ones.
    let plugins = dir.join("plugins");
    if opts.install_plugin {
        if let Some(so) = plugin_so() {
            symlink(&so, plugins.join(PLUGIN_SO))?;
        }
    }
    if let Ok(entries) = fs::read_dir(SYSTEM_PLUGIN_DIR) {
        for e in entries.flatten() {
            let target = plugins.join(e.file_name());
            if !target.exists() {
                let _ = symlink(e.path(), target);
            }
        }
    }
    Ok(())
}

/// Replaces the placeholders documented at the top of this module.
pub fn substitute(text: &str, dir: &Path, port: u16, origin_port: Option<u16>) -> String {
    let mut s = text
        .replace("@ETC@", &dir.join("etc").display().to_string())
        .replace("@LOGS@", &dir.join("logs").display().to_string())
        .replace("@PLUGIN_DIR@", &dir.join("plugins").display().to_string())
        .replace("@DIR@", &dir.display().to_string())
        .replace("@REPO@", &repo_root().display().to_string())
        .replace("@PORT@", &port.to_string());
    if let Some(p) = origin_port {
        s = s.replace("@ORIGIN_PORT@", &p.to_string());
    }
    s
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if fs::metadata(&src)?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        let _ = fs::create_dir_all(parent);
    }
    // Write then rename, so a reload never sees a half-written file.
    let tmp = path.with_extension("e2e-tmp");
    let result = fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes)).and_then(|_| fs::rename(&tmp, path));
    if let Err(e) = result {
        panic!("cannot write {}: {e}", path.display());
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn file_len(path: &Path) -> usize {
    // Length of the lossy text, so marks index the same string we search.
    read_lossy(path).len()
}

fn log_report(dir: &Path, manager: bool) -> String {
    let logs = dir.join("logs");
    let mut s = format!(
        "--- diags.log (tail) ---\n{}\n--- traffic.out (tail) ---\n{}\n",
        tail_file(&logs.join("diags.log"), 40),
        tail_file(&logs.join("traffic.out"), 30)
    );
    if logs.join("error.log").exists() {
        s.push_str(&format!("--- error.log (tail) ---\n{}\n", tail_file(&logs.join("error.log"), 20)));
    }
    if manager {
        s.push_str(&format!("--- manager.log (tail) ---\n{}\n", tail_file(&logs.join("manager.log"), 20)));
    }
    s
}

// ------------------------------------------------------------ process control

/// Whether process `pid` (our child) has exited, without reaping it (so its
/// pid, which is also the process group id, stays reserved).
fn exited_nowait(pid: u32) -> bool {
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        // r < 0: not our child any more (already reaped).
        r < 0 || info.si_pid() != 0
    }
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) state ppid pgrp ..." — comm may contain anything, so cut at the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let _ppid = fields.next();
        let pgrp: u32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if pgrp == pgid && state != "Z" && state != "X" {
            out.push(pid);
        }
    }
    out
}

fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

/// SIGTERM the leader; wait for it and then for the rest of its process group
/// (the manager's traffic_server); SIGKILL the group if the grace period
/// runs out; reap the leader.
fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    let deadline = Instant::now() + grace;
    if !exited_nowait(pid) {
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    let clean = wait_until(grace, || exited_nowait(pid))
        && wait_until(deadline.saturating_duration_since(Instant::now()), || group_members(pid).is_empty());
    if !clean {
        unsafe {
            // The group id is the leader's pid, still reserved because the
            // leader is not reaped yet.
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
        wait_until(Duration::from_secs(5), || exited_nowait(pid) && group_members(pid).is_empty());
    }
    child.wait().ok()
}

/// Spawns `cmd` in its own session (and so its own process group: no hang-up
/// from a terminal, and the whole group can be killed at the end) with
/// `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the test process even when
/// that is killed and no destructor runs.
///
/// The death signal fires when the *thread* that forked exits, so every
/// spawn goes through one thread that lives as long as the process: tests
/// may start servers from short-lived threads.
fn spawn_owned(cmd: Command) -> io::Result<Child> {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Mutex, OnceLock};
    type Job = (Command, Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = channel::<Job>();
            std::thread::Builder::new()
                .name("e2e-spawner".into())
                .spawn(move || {
                    let parent = std::process::id() as libc::pid_t;
                    for (mut cmd, reply) in rx {
                        unsafe {
                            cmd.pre_exec(move || {
                                if libc::setsid() < 0 {
                                    return Err(io::Error::last_os_error());
                                }
                                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                                    return Err(io::Error::last_os_error());
                                }
                                // The test process died between fork and prctl.
                                if libc::getppid() != parent {
                                    return Err(io::Error::other("parent exited"));
                                }
                                Ok(())
                            });
                        }
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .expect("spawn the e2e-spawner thread");
            Mutex::new(tx)
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (reply_tx, reply_rx) = channel();
    tx.send((cmd, reply_tx)).map_err(|_| io::Error::other("e2e-spawner thread is gone"))?;
    reply_rx.recv_timeout(Duration::from_secs(30)).map_err(|_| io::Error::other("e2e-spawner did not answer"))?
}

/// Runs `cmd` with output to `out_file`, killing it after `timeout`.
fn run_with_timeout(cmd: &mut Command, out_file: &Path, timeout: Duration) -> (bool, String) {
    let out = match fs::File::create(out_file) {
        Ok(f) => f,
        Err(e) => return (false, format!("create {}: {e}", out_file.display())),
    };
    let err = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return (false, format!("dup: {e}")),
    };
    let mut child = match cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("spawn: {e}")),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status.success(), read_lossy(out_file)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return (false, format!("timed out after {timeout:?}; output: {}", read_lossy(out_file)));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return (false, format!("wait: {e}")),
        }
    }
}
