//! The APISIX example plugins (`examples/fault-injection`, `examples/forward-auth`,
//! `examples/response-rewrite`; README "Examples") on a real NGINX: what is
//! about NGINX only (`nginx -t`, VMs of one worker). The cases both servers
//! share are in tests/conformance_examples.rs (`tests/apisix_examples/mod.rs`).
//!
//! Run with `make nginx plugins && cargo test --test nginx_examples`.

mod apisix_examples;
mod e2e;

use apisix_examples::Route;
use e2e::client::Request;
use e2e::nginx::{Nginx, NginxOptions};

/// Every route's YAML in one `proxy_wasm_config`, and per route a server with
/// the README's location: `proxy_wasm <plugin>; proxy_pass <origin>;` (as
/// `ServerUnderTest::start` writes it; here for `nginx -t`).
fn options(test: &str, origin_port: u16, routes: &[Route]) -> NginxOptions {
    let mut opts = NginxOptions::new(test).workers(2).origin(origin_port);
    let files: Vec<String> = routes.iter().map(|r| format!("@CONF@/{}.yaml", r.host)).collect();
    let mut http = format!("proxy_wasm_config {};\n", files.join(" "));
    for r in routes {
        opts = opts.file(format!("{}.yaml", r.host), r.yaml.clone());
        http.push_str(&format!(
            "server {{\n    listen 127.0.0.1:@PORT@;\n    server_name {};\n    location / {{ proxy_wasm {}; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; proxy_set_header Host $host; }}\n}}\n",
            r.host, r.plugin
        ));
    }
    opts.http(http).server("location / { return 404; }")
}

/// A configuration an example rejects: `nginx -t` fails with the plugin's
/// message naming the key (nginx would not start or reload with it).
#[test]
fn a_configuration_an_example_rejects_fails_nginx_t_with_its_key() {
    let routes = [
        apisix_examples::route("fi-empty", "fault_injection", "", ""),
        apisix_examples::route("fa-https", "forward_auth", r#"{"uri": "https://auth.example.com/check"}"#, ""),
    ];
    for route in routes {
        let out = Nginx::test_only(options("apisix-rejected", 1, std::slice::from_ref(&route)));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "nginx -t accepted {}:\n{text}", route.host);
        let expected = if route.host.starts_with("fi-") {
            "fault-injection: the configuration is empty"
        } else {
            "forward-auth: uri: \"https://auth.example.com/check\": https is not supported"
        };
        assert!(text.contains(expected), "nginx -t did not say {expected:?}:\n{text}");
    }
}

/// Two plugins in different VMs of one worker each have an `http_call` in
/// flight at once (each VM numbers its calls from 1): both answers arrive,
/// each to its own request. (The worker once kept its calls by token alone,
/// so the second call replaced the first, whose request then waited for ever
/// while nginx still held pointers into the dropped call.)
#[test]
fn http_calls_of_two_vms_in_one_worker_each_get_their_own_answer() {
    use std::time::Duration;
    let origin = e2e::origin::Origin::start();
    let auth = e2e::origin::Origin::with_handler(|req| {
        let r = e2e::origin::Response::text(200, "ok")
            .header("x-user-id", req.path_only().trim_start_matches("/auth/").to_string());
        if req.path_only() == "/auth/slow" {
            r.delay(Duration::from_millis(1500))
        } else {
            r
        }
    });
    let allowed = format!("  authorizations:\n    allowed_hosts: [\"127.0.0.1:{}\"]\n", auth.port());
    let config = |who: &str| {
        format!(r#"{{"uri": "http://127.0.0.1:{}/auth/{who}", "upstream_headers": ["X-User-ID"]}}"#, auth.port())
    };
    let routes = [
        apisix_examples::route("fa-slow", "forward_auth", &config("slow"), &allowed),
        apisix_examples::route("fa-quick", "forward_auth", &config("quick"), &allowed),
    ];
    let n = Nginx::start(options("apisix-two-vms", origin.port(), &routes).workers(1));
    let port = n.port();
    let slow = std::thread::spawn(move || {
        Request::get("/two/slow").host("fa-slow.test").timeout(Duration::from_secs(10)).send(port)
    });
    // The slow call is in flight (its answer takes 1.5 s) when the quick one starts.
    assert!(
        e2e::wait_until(Duration::from_secs(5), || auth.requests().iter().any(|r| r.path == "/auth/slow")),
        "{}",
        n.log_report()
    );
    let quick = Request::get("/two/quick").host("fa-quick.test").timeout(Duration::from_secs(10)).send(port);
    let slow = slow.join().expect("client thread");
    for (what, r) in [("quick", quick), ("slow", slow)] {
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}\n{}", n.log_report()));
        assert_eq!(r.status, 200, "{what}\n{}", n.log_report());
    }
    let seen = |path: &str| {
        origin.requests().into_iter().find(|r| r.path == path).and_then(|r| r.header("x-user-id").map(str::to_string))
    };
    assert_eq!(seen("/two/slow").as_deref(), Some("slow"), "each request gets its own auth answer");
    assert_eq!(seen("/two/quick").as_deref(), Some("quick"));
    assert!(!n.error_log().contains("exited on signal"), "{}", n.log_report());
}
