//! The Rust-SDK filter's cases that are about NGINX itself, on a real nginx
//! (master + workers) with `ngx_http_proxy_wasm_module.so` in front of a
//! real origin: NGINX variables as properties, its log levels, resetting a
//! stream, ticks with aborted requests, `http_call` through NGINX's upstream
//! connections and resolver (protocol: tests/plugins/README.md). Every case
//! both servers must answer the same way (headers, bodies, local responses,
//! shared data, queues, metrics, properties, the AssemblyScript filter,
//! chains, the SDK matrix) is in tests/conformance_sdk.rs, written once for
//! both.
//!
//! Shared data, queues and metrics live in the module's shared-memory zone
//! and are the same in every worker (tests/nginx_shared.rs proves that).
//!
//! Run with `make nginx && cargo test --test nginx_sdk`.

mod e2e;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use e2e::client::{Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::{self, Origin};

const WAIT: Duration = Duration::from_secs(5);

/// A plugin YAML for the Rust-SDK filter; outgoing calls allowed everywhere.
fn rust_yaml(name: &str, root_id: &str, configuration: &str, extra: &str) -> String {
    format!(
        r#"- config:
    name: "{name}"
    root_id: "{root_id}"
    configuration: '{configuration}'
{extra}    authorizations:
      allowed_hosts: ["*"]
    vm_config:
      vm_id: "{name}_vm"
      code:
        local:
          filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// nginx with `plugins.yaml`, the chain `proxy_wasm <plugin>` for every
/// location, `http_extra` in the http block, and `location /` proxying to the origin.
fn start(test: &str, yaml: &str, plugin: &str, origin: &Origin, http_extra: &str, workers: usize) -> Nginx {
    Nginx::start(
        NginxOptions::new(test)
            .workers(workers)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http(format!("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm {plugin};\n{http_extra}"))
            .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; proxy_set_header Host $host; }"),
    )
}

fn send(n: &Nginx, req: Request) -> Response {
    n.send(&req).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()))
}

/// A request with `x-pw-test: <cases>`.
fn case(path: &str, cases: &str) -> Request {
    Request::get(path).header("x-pw-test", cases)
}

// ------------------------------------------------------------------ one shared nginx

struct Shared {
    origin: Origin,
    n: Nginx,
}

/// nginx with the filter (`rust-filter`, root id `sdk-root`, default
/// configuration) in front of [`origin::sdk_cases_origin`]; started by the first test
/// that needs it, stopped when no running test holds it.
fn server() -> Arc<Shared> {
    static SERVER: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let origin = origin::sdk_cases_origin();
    let n = start("ngx-sdk-shared", &rust_yaml("rust-filter", "sdk-root", "", ""), "rust-filter", &origin, "", 2);
    let s = Arc::new(Shared { origin, n });
    *slot = Arc::downgrade(&s);
    s
}

mod on_one_server {
    use super::*;

    fn prop<'a>(r: &'a Response, name: &str, path: &str) -> &'a str {
        let prefix = format!("{path}=");
        r.header_all(name)
            .into_iter()
            .find_map(|v| v.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{name} has no {path}: {:?}", r.header_all(name)))
    }

    /// The Envoy property paths are in tests/conformance_sdk.rs (both
    /// servers); `ngx.<variable>` is NGINX's own.
    #[test]
    fn nginx_variables_are_properties_under_ngx() {
        let f = server();
        let paths = "ngx.request_method, ngx.uri, ngx.arg_b, ngx.no_such_variable";
        let r = send(
            &f.n,
            Request::post("/pp/a?b=1", "12345").header("x-pw-test", "properties").header("x-pw-prop-paths", paths),
        );
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        let q = |path| prop(&r, "x-pw-prop-req", path);
        for (path, want) in [
            ("ngx.request_method", "POST"),
            ("ngx.uri", "/pp/a"),
            ("ngx.arg_b", "1"),
            ("ngx.no_such_variable", "(none)"),
        ] {
            // An 8-byte text is also shown as an integer, a 1-byte one as a bool.
            assert_eq!(q(path).split(" int=").next().and_then(|v| v.split(" bool=").next()), Some(want), "{path}");
        }
    }

    #[test]
    fn plugin_log_levels_map_to_nginx_levels_with_the_plugin_name_in_each_line() {
        let f = server();
        let r = send(&f.n, case("/log", "log"));
        assert_eq!(r.header("x-pw-logged"), Some("6"));
        // error_log ... info: the plugins log from info up.
        assert_eq!((r.header("x-pw-log-level"), r.header("x-pw-log-level-name")), (Some("2"), Some("info")));
        f.n.expect_log("log-test level=critical", WAIT);
        let logs = f.n.error_log();
        let line =
            |level: &str| logs.lines().find(|l| l.contains(&format!("log-test level={level} "))).map(str::to_string);
        for (level, marker) in [("info", "[info]"), ("warn", "[warn]"), ("error", "[error]"), ("critical", "[crit]")] {
            let l = line(level).unwrap_or_else(|| panic!("no {level} line\n{}", f.n.log_report()));
            assert!(
                l.contains(marker)
                    && l.contains(&format!(
                        "[proxy_wasm] rust-filter: rust-sdk-filter log-test level={level} context="
                    )),
                "{level}: {l}"
            );
        }
        assert!(line("trace").is_none() && line("debug").is_none(), "below the error_log level");
    }

    #[test]
    fn close_in_on_request_headers_resets_the_request_without_contacting_the_origin() {
        let f = server();
        // Reset, as Envoy resets the stream: the connection is closed
        // without a response (it got 503 before the filter chain moved into
        // the core).
        let r = f.n.send(&case("/closed", "close"));
        let e = r.map(|r| r.status).expect_err("the connection is closed without a response");
        assert!(e.is_closed(), "{e}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!f.origin.requests().iter().any(|r| r.path == "/closed"));
        assert_eq!(send(&f.n, Request::get("/after-close")).status, 200);
    }

    #[test]
    fn close_in_on_response_headers_resets_the_response() {
        let f = server();
        let r = f.n.send(&case("/closed-resp", "close-response"));
        let e = r.map(|r| r.status).expect_err("the connection is closed without a response");
        assert!(e.is_closed(), "{e}");
        assert_eq!(send(&f.n, Request::get("/after-close-resp")).status, 200);
    }

    #[test]
    fn a_trap_answers_503_and_the_worker_keeps_serving() {
        // A plugin of its own: the shared one must not fail.
        let origin = Origin::start();
        let n = start(
            "ngx-sdk-panic",
            &rust_yaml("trapper", "", "", "    failure_policy: reload\n"),
            "trapper",
            &origin,
            "",
            1,
        );
        let r = send(&n, case("/boom", "panic"));
        assert_eq!(r.status, 503, "{}", n.log_report());
        n.expect_log("trapper", WAIT);
        assert!(n.error_log().contains("panicked at"), "the SDK's panic message is logged\n{}", n.log_report());
        let r = send(&n, Request::get("/after"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", n.log_report());
    }
}

// ------------------------------------------------------------------ ticks, deferred done, aborted requests (one worker)

mod with_ticks {
    use super::*;

    fn ticking() -> Arc<Shared> {
        static SERVER: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
        let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slot.upgrade() {
            return s;
        }
        let origin = Origin::with_handler(|req| {
            if req.path_only() == "/slow" {
                return origin::Response::text(200, "slow").delay(Duration::from_secs(2));
            }
            origin::Response::text(200, "hello from origin")
        });
        // One worker: requests on new connections (and aborted ones) meet the same shared data.
        let n = start("ngx-sdk-ticks", &rust_yaml("ticker", "", r#"{"tick_ms":50}"#, ""), "ticker", &origin, "", 1);
        let s = Arc::new(Shared { origin, n });
        *slot = Arc::downgrade(&s);
        s
    }

    fn shared(n: &Nginx, key: &str) -> String {
        send(n, case("/shared", "shared-get").header("x-pw-key", key)).body_str()
    }

    fn wait_shared(n: &Nginx, key: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = shared(n, key);
            if pred(&v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn num(v: &str) -> u64 {
        v.parse().unwrap_or(0)
    }

    #[test]
    fn a_request_paused_in_on_request_headers_resumes_from_a_tick() {
        let f = ticking();
        let r = send(&f.n, case("/tr", "tick-resume"));
        assert_eq!((r.status, r.header("x-pw-resumed-by")), (200, Some("tick")), "{}", f.n.log_report());
        assert_eq!(f.origin.wait_for_path("/tr", WAIT).header("x-pw-resumed-by"), Some("tick"));
        assert!(num(&shared(&f.n, "ticks")) > 0);
    }

    /// As on Envoy: no body callback while the headers are paused; nginx
    /// reads the body meanwhile and the plugins get it after the resume.
    #[test]
    fn the_body_of_a_request_paused_in_on_request_headers_reaches_the_plugin_after_the_resume() {
        let f = ticking();
        let body = vec![b'w'; 300_000];
        for (path, req) in [
            ("/trb", Request::post("/trb", "held with the headers").chunked(5)),
            // Large enough for a temporary file.
            ("/trb-big", Request::post("/trb-big", body.clone())),
        ] {
            let r = send(&f.n, req.header("x-pw-test", "tick-resume").timeout(Duration::from_secs(10)));
            assert_eq!(
                (r.status, r.header("x-pw-first-body-call-resumed-by")),
                (200, Some("tick")),
                "{path}\n{}",
                f.n.log_report()
            );
            let seen = f.origin.wait_for_path(path, WAIT);
            assert_eq!(seen.header("x-pw-resumed-by"), Some("tick"));
            assert_eq!(seen.body.len(), if path == "/trb" { 21 } else { body.len() }, "{path}");
        }
    }

    #[test]
    fn on_log_and_on_done_run_for_a_request_the_client_aborts_while_it_is_paused() {
        let f = ticking();
        let (log0, done0, delete0) =
            (num(&shared(&f.n, "log.count")), num(&shared(&f.n, "done.count")), num(&shared(&f.n, "delete.count")));
        // The request waits for the slow origin; the client goes away meanwhile.
        let mut s = TcpStream::connect(("127.0.0.1", f.n.port())).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
        // And one that sends half of its body and goes away.
        let mut s = TcpStream::connect(("127.0.0.1", f.n.port())).unwrap();
        s.write_all(
            b"POST /half HTTP/1.1\r\nHost: x\r\nx-pw-test: req-body-upper\r\nContent-Length: 100\r\n\r\nonly part",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
        let log = wait_shared(&f.n, "log.count", |v| num(v) >= log0 + 2 + 2);
        assert!(num(&log) >= log0 + 2, "on_log ran for both aborted requests: {log0} -> {log}\n{}", f.n.log_report());
        assert!(num(&wait_shared(&f.n, "done.count", |v| num(v) >= done0 + 2)) >= done0 + 2, "{}", f.n.log_report());
        assert!(
            num(&wait_shared(&f.n, "delete.count", |v| num(v) >= delete0 + 2)) >= delete0 + 2,
            "{}",
            f.n.log_report()
        );
    }

    #[test]
    fn on_log_and_on_done_run_for_a_request_aborted_while_an_http_call_is_pending() {
        let f = ticking();
        let done0 = num(&shared(&f.n, "done.count"));
        // http-call to the origin's slow path: the request stays paused ~2 s.
        let mut s = TcpStream::connect(("127.0.0.1", f.n.port())).unwrap();
        s.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\nx-pw-test: http-call\r\nx-pw-callout-path: /slow\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
        let done = wait_shared(&f.n, "done.count", |v| num(v) > done0);
        assert!(num(&done) > done0, "on_done ran: {done0} -> {done}\n{}", f.n.log_report());
        // The worker is fine.
        let mut buf = Vec::new();
        let mut s = TcpStream::connect(("127.0.0.1", f.n.port())).unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
    }
}

// ------------------------------------------------------------------ http_call

/// A tiny DNS server on 127.0.0.1 (UDP) answering every A question with
/// 127.0.0.1, for nginx's resolver.
fn dns_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let q = queries.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else { return };
            if n < 12 {
                continue;
            }
            q.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The question: name labels, then type and class.
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += 1 + buf[i] as usize;
            }
            let qend = i + 5;
            if qend > n {
                continue;
            }
            let qtype = u16::from_be_bytes([buf[i + 1], buf[i + 2]]);
            let mut out = Vec::with_capacity(qend + 16);
            out.extend_from_slice(&buf[..2]); // id
            out.extend_from_slice(&[0x81, 0x80]); // response, recursion desired/available, no error
            out.extend_from_slice(&[0, 1, 0, if qtype == 1 { 1 } else { 0 }, 0, 0, 0, 0]);
            out.extend_from_slice(&buf[12..qend]);
            if qtype == 1 {
                out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&out, peer);
        }
    });
    (port, queries)
}

#[test]
fn http_calls_answer_with_status_headers_body_and_trailers_and_reuse_one_connection() {
    let callout =
        Origin::with_handler(|req| origin::Response::text(200, "pong").header("x-callout-method", req.method.clone()));
    let origin = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":3000}}"#, callout.port());
    let n = start("ngx-sdk-callout", &rust_yaml("caller", "", &config, ""), "caller", &origin, "", 1);
    let r = send(&n, case("/c", "http-call"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(r.header("x-pw-callout-status"), Some("200"));
    assert_eq!(r.header("x-pw-callout-body"), Some("pong"));
    let seen = &callout.wait_for_requests(1, WAIT)[0];
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str(), seen.body_str().as_str()),
        ("POST", "/callout", "ping from rust-sdk-filter")
    );
    assert_eq!(seen.header("x-pw-callout"), Some("1"));
    // Several calls in a row to one upstream: one TCP connection (kept alive).
    for i in 0..5 {
        let r = send(&n, case(&format!("/c{i}"), "http-call"));
        assert_eq!(r.header("x-pw-callout-status"), Some("200"), "{}", n.log_report());
    }
    assert_eq!(callout.request_count(), 6);
    assert_eq!(callout.connections_accepted(), 1, "sequential calls reuse the kept-alive connection");
    // The upstream closes its kept connections: the next call connects again.
    callout.close_connections();
    std::thread::sleep(Duration::from_millis(100));
    let r = send(&n, case("/after-close", "http-call"));
    assert_eq!(r.header("x-pw-callout-status"), Some("200"), "{}", n.log_report());
    assert_eq!(callout.connections_accepted(), 2);
}

// What a call reports and the filter's call variants (no :path, a failed
// call, a local response from the callback, pauses in bodies and response
// headers): tests/conformance_http_calls.rs, on both servers.

#[test]
fn http_call_upstream_names_are_resolved_by_the_nginx_resolver() {
    let (dns, queries) = dns_server();
    let callout = Origin::start();
    let origin = Origin::start();
    let config = format!(r#"{{"upstream":"callout.test:{}","callout_timeout_ms":3000}}"#, callout.port());
    let n = start(
        "ngx-sdk-resolver",
        &rust_yaml("caller", "", &config, ""),
        "caller",
        &origin,
        &format!("resolver 127.0.0.1:{dns} ipv6=off;\nresolver_timeout 2s;\n"),
        1,
    );
    let r = send(&n, case("/c", "http-call"));
    assert_eq!(
        (r.header("x-pw-callout-dispatch"), r.header("x-pw-callout-status")),
        (Some("OK"), Some("200")),
        "{}",
        n.log_report()
    );
    assert!(queries.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let seen = &callout.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen.header("host"), Some(format!("callout.test:{}", callout.port()).as_str()));
}

#[test]
fn without_a_resolver_an_upstream_name_is_refused_with_bad_argument_and_a_log_line() {
    let origin = Origin::start();
    let config = r#"{"upstream":"callout.test:8080","callout_timeout_ms":1000}"#;
    let n = start("ngx-sdk-no-resolver", &rust_yaml("caller", "", config, ""), "caller", &origin, "", 1);
    let r = send(&n, case("/c", "http-call"));
    assert_eq!((r.status, r.header("x-pw-callout-dispatch")), (200, Some("BAD_ARGUMENT")), "{}", n.log_report());
    n.expect_log("configure `resolver`", WAIT);
}
