//! `traffic_ctl config reload` with the Traffic Server plugin: the YAML files
//! are read again; a broken file keeps the plugins in use; requests keep
//! flowing through the reload. Traffic Server runs under traffic_manager (9.2
//! needs it for reloads; the manager passes the reload on within ~5 s).

mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::{Flow, Request};
use e2e::origin::Origin;

const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// The Rust-SDK test filter, tagging every response with `x-proxy-wasm: <tag>`.
fn tagging_yaml(name: &str, tag: &str) -> String {
    format!(
        r#"config:
  name: "{name}"
  configuration: '{{"tag":"{tag}"}}'
  vm_config:
    runtime: "ats.wasm.runtime.wasmtime"
    vm_id: "{name}_vm"
    code:
      local:
        filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// A YAML file with a misspelt key on line 4.
fn broken_yaml(name: &str) -> String {
    format!("config:\n  name: \"{name}\"\n  vm_config:\n    vm_idd: x\n    code: {{ local: {{ filename: nope.wasm }} }}\n# e2e: keep runtime (positions in the error)\n")
}

fn tag(ats: &TrafficServer, host: &str) -> String {
    let r = ats.send(&Request::get("/").host(host)).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    r.header("x-proxy-wasm").unwrap_or("<none>").to_string()
}

/// Clients asking `host` for /flow until stopped; a response is fine when it is a 200 tagged by
/// one of `allowed_tags` (the plugins before or after the reload).
fn traffic(port: u16, host: &'static str, clients: usize, allowed_tags: &'static [&'static str]) -> Flow {
    Flow::start(
        port,
        clients,
        move || Request::get("/flow").host(host).timeout(Duration::from_secs(10)),
        move |r| r.status == 200 && r.header("x-proxy-wasm").is_some_and(|t| allowed_tags.contains(&t)),
    )
}

#[test]
fn a_reload_rereads_the_global_yaml_while_requests_flow_and_a_broken_yaml_keeps_the_plugins_in_use() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let ats = TrafficServer::start(
        AtsOptions::new("ats-reload-global")
            .manager(true)
            .origin(origin.port())
            .file("filter.yaml", tagging_yaml("reloading", "v1"))
            .global_plugin(&["filter.yaml"]),
    );
    assert_eq!(tag(&ats, "a.test"), "v1");

    // The file changes and is reloaded while clients keep sending requests:
    // none fails, each is filtered by the old or the new plugins.
    let traffic = traffic(ats.port(), "a.test", 4, &["v1", "v2"]);
    std::thread::sleep(Duration::from_millis(300));
    ats.write_config("filter.yaml", &tagging_yaml("reloading", "v2"));
    ats.reload_and_wait("[proxy_wasm] reloaded 1 global plugin(s)", RELOAD_WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let (sent, failures) = traffic.finish();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the reload: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        ats.log_report()
    );
    assert!(sent > 20, "only {sent} requests were sent during the reload");
    assert_eq!(tag(&ats, "a.test"), "v2");

    // A broken file: the error names file, line and key; the v2 plugins stay.
    ats.write_config("filter.yaml", &broken_yaml("reloading"));
    ats.reload_and_wait("reload failed, keeping the plugins in use", RELOAD_WAIT);
    assert!(
        ats.diags_log().contains("filter.yaml:4:5: config.vm_config: unknown key \"vm_idd\""),
        "{}",
        ats.log_report()
    );
    assert_eq!(tag(&ats, "a.test"), "v2");

    // Fixed again: the next reload takes it.
    ats.write_config("filter.yaml", &tagging_yaml("reloading", "v3"));
    ats.reload_and_wait("[proxy_wasm] reloaded 1 global plugin(s)", RELOAD_WAIT);
    assert_eq!(tag(&ats, "a.test"), "v3");
    ats.assert_running();
}

#[test]
fn a_reload_rereads_a_remap_rules_yaml_and_a_broken_one_keeps_the_rules_plugins() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let port = origin.port();
    let remap = format!("map http://route.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=route.yaml\nmap / http://127.0.0.1:{port}/\n");
    let ats = TrafficServer::start(
        AtsOptions::new("ats-reload-remap")
            .manager(true)
            .origin(port)
            .remap_config(remap.clone())
            .file("route.yaml", tagging_yaml("route", "r1")),
    );
    assert_eq!(tag(&ats, "route.test"), "r1");
    assert_eq!(tag(&ats, "other.test"), "<none>");

    let traffic = traffic(ats.port(), "route.test", 2, &["r1", "r2"]);
    ats.write_config("route.yaml", &tagging_yaml("route", "r2"));
    // Traffic Server re-reads remap.config (and so its rules' plugin files)
    // only when remap.config itself changed.
    ats.write_config("remap.config", &remap);
    ats.reload_and_wait("remap.config finished loading", RELOAD_WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let (sent, failures) = traffic.finish();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during the reload: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        ats.log_report()
    );
    assert_eq!(tag(&ats, "route.test"), "r2");

    ats.write_config("route.yaml", &broken_yaml("route"));
    std::thread::sleep(Duration::from_millis(1100));
    ats.write_config("remap.config", &remap);
    ats.reload_and_wait("remap.config finished loading", RELOAD_WAIT);
    assert!(ats.diags_log().contains("reload failed, keeping the plugins in use"), "{}", ats.log_report());
    assert!(
        ats.diags_log().contains("route.yaml:4:5: config.vm_config: unknown key \"vm_idd\""),
        "{}",
        ats.log_report()
    );
    // The new remap table is in use (its rule kept the r2 plugins).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tag(&ats, "route.test"), "r2");
    ats.assert_running();
}
