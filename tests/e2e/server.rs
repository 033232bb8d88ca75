//! One interface to both servers, so an end-to-end case is written once and
//! run on NGINX and on Traffic Server (as `common::for_each_runtime!` runs an
//! in-memory case on each runtime).
//!
//! A case describes what it needs as a [`Setup`] (plugins, which requests go
//! through which chain, the origin), starts it with
//! [`ServerUnderTest::start`], and then talks HTTP only. Each server turns
//! the setup into its own configuration:
//!
//! | Setup | NGINX ([`Nginx`]) | Traffic Server ([`TrafficServer`]) |
//! |---|---|---|
//! | a plugin | `conf/<name>.yaml`, all of them in `proxy_wasm_config` | `etc/<name>.yaml` |
//! | the route without a host | `proxy_wasm <name>;` per plugin (http level) and `location /` in the default server | one plugin.config line (global plugin) with the chain's files |
//! | a route for a host | a `server` with that `server_name` | a remap rule for `http://<host>/` with the chain's files as `@pparam` |
//! | the route without a host, among routes for hosts | the `default_server` (an empty chain: unfiltered) | a global plugin, or with an empty chain the last remap rule `map /` |
//! | a sink (requests no route matched) | a `default_server` answering 404 with `error_page 404 = @sink` and the chain in `location @sink` | the last remap rule `map /` with the chain's files as `@pparam` |
//! | an environment variable | `env NAME=value;` | the server's environment |
//! | workers | `worker_processes` | `proxy.config.exec_thread.limit` |
//!
//! [`for_each_server!`] instantiates a file's cases once per server: its
//! items go into `mod nginx` and `mod ats`, each with `type Server` naming
//! the server. A behaviour a server cannot have is written as a branch on
//! [`ServerUnderTest::KIND`] with a comment saying why; anything else that
//! differs between the servers fails the case on one of them.
//!
//! Both runtimes: the YAML goes through [`super::on_test_runtime`], so
//! `E2E_RUNTIME=wamr` moves every plugin onto WAMR, as for the other suites.

use std::time::Duration;

use super::ats::{AtsOptions, TrafficServer, PLUGIN_SO};
use super::client::{ClientError, Request, Response};
use super::nginx::{Nginx, NginxOptions};

/// Which server a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    TrafficServer,
}

/// One plugin: its name (as in its YAML) and the YAML file's text (a list
/// with that one plugin, `@REPO@` and the other placeholders allowed).
#[derive(Debug, Clone)]
pub struct Plugin {
    pub name: String,
    pub yaml: String,
}

/// Which plugins, in order, filter the requests for `host` (`None`: every
/// other request).
#[derive(Debug, Clone)]
pub struct Route {
    pub host: Option<String>,
    pub chain: Vec<String>,
}

/// What a case needs from a server.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Part of the instance directory's name.
    pub name: String,
    pub origin_port: u16,
    pub plugins: Vec<Plugin>,
    /// Empty: one route without a host through every plugin, in order.
    pub routes: Vec<Route>,
    /// NGINX worker processes, or Traffic Server exec threads (default 2).
    pub workers: usize,
    /// Environment variables of the server (NGINX: `env NAME=value;`).
    pub env: Vec<(String, String)>,
    /// The chain requests no route matched go through (instead of a route without a host).
    pub sink: Option<Vec<String>>,
    /// The case reloads the server ([`ServerUnderTest::reload_configuration`]): Traffic Server 9.2 then runs
    /// under traffic_manager, which `traffic_ctl config reload` needs.
    pub reloadable: bool,
}

impl Setup {
    pub fn new(name: &str, origin_port: u16) -> Setup {
        Setup {
            name: name.into(),
            origin_port,
            plugins: Vec::new(),
            routes: Vec::new(),
            workers: 2,
            env: Vec::new(),
            sink: None,
            reloadable: false,
        }
    }
    /// Adds a plugin named `name` with this YAML text.
    pub fn plugin(mut self, name: &str, yaml: impl Into<String>) -> Self {
        self.plugins.push(Plugin { name: name.into(), yaml: yaml.into() });
        self
    }
    /// Requests for `host` go through `chain` (plugin names, in order).
    pub fn route(mut self, host: &str, chain: &[&str]) -> Self {
        self.routes.push(Route { host: Some(host.into()), chain: chain.iter().map(|s| s.to_string()).collect() });
        self
    }
    /// Requests for any other host go through `chain` (empty: unfiltered).
    pub fn default_route(mut self, chain: &[&str]) -> Self {
        self.routes.push(Route { host: None, chain: chain.iter().map(|s| s.to_string()).collect() });
        self
    }
    /// Requests no route matched go through `chain` (NGINX: `error_page 404 = @sink`; Traffic
    /// Server: the catch-all remap rule); use with routes for hosts only.
    pub fn sink(mut self, chain: &[&str]) -> Self {
        self.sink = Some(chain.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// The case calls [`ServerUnderTest::reload`].
    pub fn reloadable(mut self) -> Self {
        self.reloadable = true;
        self
    }
    /// Sets an environment variable of the server process(es).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
    fn file_of(name: &str) -> String {
        format!("{name}.yaml")
    }
    fn routes(&self) -> Vec<Route> {
        if self.routes.is_empty() {
            vec![Route { host: None, chain: self.plugins.iter().map(|p| p.name.clone()).collect() }]
        } else {
            self.routes.clone()
        }
    }
}

/// A running server with our module, in front of the setup's origin;
/// stopped on drop.
pub trait ServerUnderTest: Sized + Send + Sync + 'static {
    const KIND: Kind;
    /// Its name in messages ("nginx", "Traffic Server").
    const NAME: &'static str;
    /// Starts it; panics with its logs if it does not become ready.
    fn start(setup: Setup) -> Self;
    /// Its port on 127.0.0.1.
    fn port(&self) -> u16;
    /// Sends `req` on a new connection.
    fn send(&self, req: &Request) -> Result<Response, ClientError> {
        req.send(self.port())
    }
    /// Everything it logged so far (where plugin log lines and traps go).
    fn logs(&self) -> String;
    /// Tails of its logs, for failure messages.
    fn log_report(&self) -> String;
    /// Whether it is still running (NGINX: the master; Traffic Server: traffic_server).
    fn is_running(&self) -> bool;
    /// Panics (with its logs) if it is no longer running.
    fn assert_running(&self) {
        if !self.is_running() {
            panic!("{} is not running any more\n{}", Self::NAME, self.log_report());
        }
    }
    /// Panics (with its logs) if it stopped, or if one of its processes died
    /// on a signal and was replaced (NGINX: a worker; the master starts
    /// another, so only its log and the number of workers tell).
    fn assert_nothing_died(&self) {
        self.assert_running();
        assert!(!self.logs().contains("exited on signal"), "a process of {} died\n{}", Self::NAME, self.log_report());
    }
    /// Waits until its logs contain `text`; panics with the logs otherwise.
    fn expect_log(&self, text: &str, timeout: Duration) {
        if !super::wait_until(timeout, || self.logs().contains(text)) {
            panic!("{} never logged {text:?}\n{}", Self::NAME, self.log_report());
        }
    }
    /// Replaces the YAML file of plugin `name` (placeholders allowed), for the next [`reload_configuration`](Self::reload_configuration).
    fn rewrite_plugin(&self, name: &str, yaml: &str);
    /// Reloads the configuration the way an operator does (NGINX: SIGHUP to the master;
    /// Traffic Server: `traffic_ctl config reload`, with `remap.config` touched first when the
    /// plugins are in remap rules) and returns once the new configuration serves (NGINX: every
    /// old worker exited and new ones run; Traffic Server: our plugin logged the reload).
    /// Needs [`Setup::reloadable`].
    fn reload_configuration(&self);
}

impl ServerUnderTest for Nginx {
    const KIND: Kind = Kind::Nginx;
    const NAME: &'static str = "nginx";

    fn start(setup: Setup) -> Nginx {
        let files: Vec<String> = setup.plugins.iter().map(|p| format!("@CONF@/{}", Setup::file_of(&p.name))).collect();
        let location = |chain: &[String]| {
            let wasm: String = chain.iter().map(|p| format!("proxy_wasm {p}; ")).collect();
            format!("location / {{ {wasm}proxy_pass http://127.0.0.1:@ORIGIN_PORT@; proxy_set_header Host $host; }}")
        };
        let mut opts = NginxOptions::new(&setup.name).workers(setup.workers).origin(setup.origin_port);
        for p in &setup.plugins {
            opts = opts.file(Setup::file_of(&p.name), p.yaml.clone());
        }
        for (name, value) in &setup.env {
            opts = opts.main(format!("env {name}={value};"));
        }
        if !files.is_empty() {
            opts = opts.http(format!("proxy_wasm_config {};", files.join(" ")));
        }
        // Traffic Server takes request bodies of any size and request headers
        // up to 128 KiB by default; NGINX's defaults (1m, header lines of 8k)
        // would answer 413 or 400 before any plugin ran.
        opts = opts.http("client_max_body_size 16m;\nlarge_client_header_buffers 4 32k;");
        match setup.routes().as_slice() {
            // Every request: the server `NginxOptions` writes.
            [Route { host: None, chain }] => opts = opts.server(location(chain)),
            // A server per route on the same port, the route without a host
            // the default one; the server `NginxOptions` writes gets a name
            // no request uses.
            routes => {
                for route in routes {
                    let name = match &route.host {
                        Some(h) => format!("server_name {h};"),
                        None => "server_name _;".to_string(),
                    };
                    let default = if route.host.is_none() { " default_server" } else { "" };
                    opts = opts.http(format!(
                        "server {{ listen 127.0.0.1:@PORT@{default}; {name} {} }}",
                        location(&route.chain)
                    ));
                }
                if let Some(sink) = &setup.sink {
                    let wasm: String = sink.iter().map(|p| format!("proxy_wasm {p}; ")).collect();
                    opts = opts.http(format!(
                        "server {{ listen 127.0.0.1:@PORT@ default_server; server_name _; \
                         location / {{ return 404; }} error_page 404 = @sink; \
                         location @sink {{ {wasm}return 404; }} }}"
                    ));
                }
                opts = opts.server("server_name unused.invalid; location / { return 404; }");
            }
        }
        Nginx::start(opts)
    }
    fn port(&self) -> u16 {
        Nginx::port(self)
    }
    fn logs(&self) -> String {
        self.error_log()
    }
    fn is_running(&self) -> bool {
        Nginx::is_running(self)
    }
    fn assert_nothing_died(&self) {
        self.assert_running();
        assert!(!self.error_log().contains("exited on signal"), "a worker died\n{}", self.log_report());
        assert_eq!(self.worker_pids().len(), self.workers(), "no worker died\n{}", self.log_report());
    }
    fn log_report(&self) -> String {
        Nginx::log_report(self)
    }
    fn rewrite_plugin(&self, name: &str, yaml: &str) {
        self.rewrite_file(&Setup::file_of(name), yaml);
    }
    fn reload_configuration(&self) {
        let old = self.worker_pids();
        self.hup();
        // Old workers finish their requests and exit; the master starts new ones at once.
        let replaced = super::wait_until(Duration::from_secs(30), || {
            let now = self.worker_pids();
            now.len() == self.workers() && now.iter().all(|p| !old.contains(p))
        });
        assert!(replaced, "the reload did not replace the workers {old:?}\n{}", self.log_report());
    }
}

impl ServerUnderTest for TrafficServer {
    const KIND: Kind = Kind::TrafficServer;
    const NAME: &'static str = "Traffic Server";

    fn start(setup: Setup) -> TrafficServer {
        super::ats::require_plugin_so();
        let mut opts = AtsOptions::new(&setup.name)
            .origin(setup.origin_port)
            .exec_threads(setup.workers)
            .manager(setup.reloadable);
        // Traffic Server compiles every plugin before it reports ready (about 1.5 s a module with
        // the debug build's Wasmtime, more on a loaded machine): a long chain needs longer.
        if setup.plugins.len() > 4 {
            opts = opts.startup_timeout(Duration::from_secs(20 + 2 * setup.plugins.len() as u64));
        }
        for p in &setup.plugins {
            opts = opts.file(Setup::file_of(&p.name), p.yaml.clone());
        }
        for (name, value) in &setup.env {
            opts = opts.env(name.clone(), value.clone());
        }
        let files = |chain: &[String]| chain.iter().map(|p| Setup::file_of(p)).collect::<Vec<_>>();
        let mut remap = String::new();
        let mut fallback = String::new();
        for route in setup.routes() {
            let files = files(&route.chain);
            match &route.host {
                // Every request: a global plugin, as the README's first example.
                None if !files.is_empty() => {
                    let names: Vec<&str> = files.iter().map(String::as_str).collect();
                    opts = opts.global_plugin(&names);
                }
                // Every other request, unfiltered: the last remap rule.
                None => fallback = format!("map / http://127.0.0.1:{}/\n", setup.origin_port),
                // A host whose requests no plugin filters: a plain rule.
                Some(host) if files.is_empty() => {
                    remap.push_str(&format!("map http://{host}/ http://127.0.0.1:{}/\n", setup.origin_port));
                }
                Some(host) => {
                    let params: String = files.iter().map(|f| format!(" @pparam={f}")).collect();
                    remap.push_str(&format!(
                        "map http://{host}/ http://127.0.0.1:{}/ @plugin={PLUGIN_SO}{params}\n",
                        setup.origin_port
                    ));
                }
            }
        }
        if let Some(sink) = &setup.sink {
            let params: String = files(sink).iter().map(|f| format!(" @pparam={f}")).collect();
            fallback = format!("map / http://127.0.0.1:{}/ @plugin={PLUGIN_SO}{params}\n", setup.origin_port);
        }
        remap.push_str(&fallback);
        if !remap.is_empty() {
            opts = opts.remap_config(remap);
        }
        TrafficServer::start(opts)
    }
    fn port(&self) -> u16 {
        TrafficServer::port(self)
    }
    fn logs(&self) -> String {
        format!("{}\n{}", self.diags_log(), self.traffic_out())
    }
    fn is_running(&self) -> bool {
        TrafficServer::is_running(self)
    }
    /// traffic_server writes a crash (a signal, a failed assertion) to traffic.out; under
    /// traffic_manager a crashed server is restarted, which only the logs then tell.
    fn assert_nothing_died(&self) {
        self.assert_running();
        let logs = format!("{}\n{}", self.logs(), self.manager_log());
        for sign in ["received signal", "Received Signal", "Fatal:", "failed assertion", "terminated due to Sig"] {
            assert!(!logs.contains(sign), "Traffic Server crashed ({sign:?} in its logs)\n{}", self.log_report());
        }
    }
    fn log_report(&self) -> String {
        TrafficServer::log_report(self)
    }
    fn rewrite_plugin(&self, name: &str, yaml: &str) {
        self.write_config(&Setup::file_of(name), yaml);
    }
    fn reload_configuration(&self) {
        const WAIT: Duration = Duration::from_secs(30);
        let global = std::fs::read_to_string(self.etc_dir().join("plugin.config"))
            .is_ok_and(|c| c.lines().any(|l| l.trim_start().starts_with(PLUGIN_SO)));
        if global {
            self.reload_and_wait("[proxy_wasm] reloaded", WAIT);
        } else {
            // Traffic Server re-reads remap.config, and so the rules' YAML files, only when
            // remap.config itself changed.
            let path = self.etc_dir().join("remap.config");
            let text = std::fs::read(&path).expect("remap.config");
            std::thread::sleep(Duration::from_millis(1100));
            std::fs::write(&path, text).expect("touch remap.config");
            self.reload_and_wait("remap.config finished loading", WAIT);
        }
    }
}

/// Runs the items of a file once per server: they go into `mod nginx` and
/// `mod ats`, where `Server` is that server's type (a
/// [`ServerUnderTest`](crate::e2e::server::ServerUnderTest)). Use after
/// `mod e2e;`, around the file's cases; helpers outside it are shared.
#[allow(unused_macros)]
macro_rules! for_each_server {
    ($($body:tt)*) => {
        mod nginx {
            #![allow(unused_imports, dead_code)]
            use super::*;
            type Server = crate::e2e::nginx::Nginx;
            $($body)*
        }
        mod ats {
            #![allow(unused_imports, dead_code)]
            use super::*;
            type Server = crate::e2e::ats::TrafficServer;
            $($body)*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use for_each_server;
