//! A plugin whose `proxy_on_done` returns false and which never calls
//! `proxy_done` (tests/wat/never_done.wat) on NGINX: its contexts are deleted
//! once its `pause_timeout` is over, and a generation replaced by recycling
//! (`kill_options`) is shut down and released instead of staying for ever
//! (its waiting stream context held the request's context, which held the
//! generation).

mod e2e;

use std::time::Duration;

use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::Origin;

#[test]
fn a_recycled_generation_whose_plugin_never_calls_proxy_done_is_released_after_its_pause_timeout() {
    let origin = Origin::start();
    // Starting takes 3 callbacks (root context, vm_start, configure), a
    // request 2 (context, on_done): the second request finds 5 and recycles.
    let yaml = "config:\n  name: never-done\n  pause_timeout: 1s\n  vm_config:\n    vm_id: never_done\n    kill_options: { max_calls: 5 }\n    code: { local: { filename: \"@REPO@/build/plugins/never_done.wasm\" } }\n";
    let n = Nginx::start(
        NginxOptions::new("ngx-never-done")
            .workers(1)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm never-done;\n")
            .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }"),
    );
    assert_eq!(n.get("/first").unwrap().status, 200, "{}", n.log_report());
    assert_eq!(n.get("/second").unwrap().status, 200, "{}", n.log_report());
    let count = |text: &str| n.error_log().matches(text).count();
    assert!(
        e2e::wait_until(Duration::from_secs(10), || count("never-done: on_delete ctx=1") == 1),
        "the old generation's root is deleted\n{}",
        n.log_report()
    );
    // The old generation was shut down (its root's on_done ran once) ...
    assert_eq!(count("never-done: on_done ctx=1"), 1, "{}", n.log_report());
    // ... after its waiting stream (ctx 2 of both generations) was deleted.
    assert!(count("never-done: on_log ctx=2") >= 1 && count("never-done: on_delete ctx=2") >= 1, "{}", n.log_report());
    let log = n.error_log();
    assert!(log.contains("never-done: proxy_on_done of a stream context returned false and proxy_done did not come within 1s (pause_timeout): the context is deleted (logged once)"), "{}", n.log_report());
    assert!(log.contains("never-done: proxy_on_done of a root context returned false and proxy_done did not come within 1s (pause_timeout)"), "{}", n.log_report());
    assert_eq!(n.get("/third").unwrap().status, 200);
    assert_eq!(n.worker_pids().len(), 1);
}
