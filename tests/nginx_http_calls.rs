//! `proxy_http_call` on NGINX under concurrency: several plugins (VMs) with
//! calls in flight at once, calls cancelled by one plugin while another's
//! are pending, and recycled generations whose fresh VMs number their calls
//! from 1 again while the old ones' calls are still pending. Each VM numbers
//! its calls itself, so a worker must keep them apart by VM, not by token.
//! Also the `vm_config.limits` caps on calls (`max_pending_http_calls`,
//! `max_http_call_response_size`) and upstreams that answer with hostile
//! bytes: the worker keeps serving.
//!
//! Run with `make plugins nginx && cargo test --test nginx_http_calls`.

mod e2e;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::client::{Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::{self, Origin};

const WAIT: Duration = Duration::from_secs(10);

/// One Rust-SDK filter plugin (its own `vm_id`) calling `upstream`.
fn plugin(name: &str, upstream: u16, extra_vm_config: &str) -> String {
    format!(
        r#"- config:
    name: "{name}"
    configuration: '{{"tag":"{name}","upstream":"127.0.0.1:{upstream}","callout_timeout_ms":5000}}'
    authorizations:
      allowed_hosts: ["*"]
    vm_config:
      vm_id: "{name}_vm"
{extra_vm_config}      code:
        local:
          filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// The callout upstream: answers after `delay` with the path it was asked for
/// as the body, so each answer names the request it belongs to.
fn callout(delay: Duration) -> Origin {
    Origin::with_handler(move |req| origin::Response::text(200, req.path.clone()).delay(delay))
}

/// nginx with `yaml`, location `/a/` filtered by plugin `a` and `/b/` by
/// plugin `b` (each proxying to the origin), `/` by nothing.
fn start(test: &str, yaml: String, origin: &Origin, workers: usize) -> Nginx {
    Nginx::start(
        NginxOptions::new(test)
            .workers(workers)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http("proxy_wasm_config @CONF@/plugins.yaml;")
            .server(
                "location /a/ { proxy_wasm a; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                 location /b/ { proxy_wasm b; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                 location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }",
            ),
    )
}

/// A request through plugin `plugin` (`a` or `b`) whose call asks the
/// callout for `/<plugin>/<id>`.
fn call_request(plugin: &str, id: usize) -> Request {
    Request::get(&format!("/{plugin}/r{id}")).header("x-pw-test", "http-call").header("x-pw-callout-path", format!("/{plugin}/{id}")).timeout(Duration::from_secs(20))
}

/// The request was answered through its own plugin with its own call's answer.
fn assert_answered(r: &Result<Response, e2e::client::ClientError>, plugin: &str, id: usize, n: &Nginx) {
    let r = r.as_ref().unwrap_or_else(|e| panic!("request {plugin}/{id}: {e}\n{}", n.log_report()));
    assert_eq!(r.status, 200, "request {plugin}/{id}\n{}", n.log_report());
    assert_eq!(r.header("x-proxy-wasm"), Some(plugin), "request {plugin}/{id}");
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"), "request {plugin}/{id}");
    assert_eq!(r.header("x-pw-callout-status"), Some("200"), "request {plugin}/{id}: {:?}", r.headers);
    assert_eq!(r.header("x-pw-callout-body"), Some(format!("/{plugin}/{id}").as_str()), "request {plugin}/{id} got another call's answer");
}

fn assert_no_worker_died(n: &Nginx) {
    let log = n.error_log();
    assert!(!log.contains("exited on signal"), "a worker died\n{}", n.log_report());
}

/// `total` requests from `clients` threads at once, alternating between the
/// plugins; returns each (plugin, id, outcome).
fn run_concurrently(n: &Nginx, clients: usize, total: usize, plugins: &'static [&'static str]) -> Vec<(&'static str, usize, Result<Response, e2e::client::ClientError>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let port = n.port();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if id >= total {
                        return out;
                    }
                    let plugin = plugins[id % plugins.len()];
                    out.push((plugin, id, call_request(plugin, id).send(port)));
                }
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

#[test]
fn two_plugins_with_http_calls_in_flight_at_once_get_their_own_answers_and_no_worker_dies() {
    let callout = callout(Duration::from_millis(50));
    let origin = Origin::start();
    let yaml = plugin("a", callout.port(), "") + &plugin("b", callout.port(), "");
    let n = start("ngx-calls-two-vms", yaml, &origin, 2);
    let results = run_concurrently(&n, 40, 200, &["a", "b"]);
    assert_eq!(results.len(), 200);
    for (plugin, id, r) in &results {
        assert_answered(r, plugin, *id, &n);
    }
    assert_no_worker_died(&n);
}

#[test]
fn a_call_cancelled_by_one_plugin_leaves_another_plugins_pending_call_with_the_same_token_alone() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let yaml = plugin("a", callout.port(), "") + &plugin("b", callout.port(), "");
    let n = start("ngx-calls-cancel", yaml, &origin, 1);
    // Plugin b's first call (token 1 of its VM) is pending ...
    let port = n.port();
    let b = std::thread::spawn(move || call_request("b", 1).send(port));
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 1), "b's call reached the callout");
    // ... when plugin a makes its first call (token 1 of its own VM) and the
    // client goes away: a's stream ends and a cancels its call.
    let mut s = TcpStream::connect(("127.0.0.1", n.port())).unwrap();
    s.write_all(b"GET /a/gone HTTP/1.1\r\nHost: x\r\nx-pw-test: http-call\r\nx-pw-callout-path: /a/gone\r\n\r\n").unwrap();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "a's call reached the callout");
    drop(s);
    // b still gets its own answer.
    assert_answered(&b.join().unwrap(), "b", 1, &n);
    let r = n.send(&call_request("a", 2)).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
    assert_eq!(r.header("x-pw-callout-body"), Some("/a/2"), "{}", n.log_report());
    assert_no_worker_died(&n);
}

#[test]
fn calls_of_recycled_generations_pending_together_get_their_own_answers() {
    // max_calls: 1 gives every request a fresh generation, whose VM numbers
    // its calls from 1 again while the calls of the previous ones are pending.
    let callout = callout(Duration::from_millis(200));
    let origin = Origin::start();
    // Only plugin a is used: the calls differ by generation alone.
    let yaml = plugin("a", callout.port(), "      kill_options: { max_calls: 1 }\n") + &plugin("b", callout.port(), "");
    let n = start("ngx-calls-recycled", yaml, &origin, 1);
    let results = run_concurrently(&n, 10, 40, &["a"]);
    for (plugin, id, r) in &results {
        assert_answered(r, plugin, *id, &n);
    }
    assert!(n.error_log().contains("recycling"), "the generations were recycled\n{}", n.log_report());
    assert_no_worker_died(&n);
}
