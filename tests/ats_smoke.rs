//! Smoke tests of the end-to-end harness (tests/e2e): Traffic Server with NO
//! wasm plugin, a recording origin and the HTTP client.

mod e2e;

use std::time::{Duration, Instant};

use e2e::ats::{map_all, AtsOptions, TrafficServer};
use e2e::client::{self, Connection, Request};
use e2e::origin::{Origin, Response};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn get_and_post_pass_through_the_proxy() {
    let t0 = Instant::now();
    let origin = Origin::start();
    let ats = TrafficServer::start(AtsOptions::new("smoke").origin(origin.port()));
    eprintln!("traffic_server ready in {:?}", ats.startup_time());

    // GET with Host: example.com.
    let resp = ats.get("/hello?x=1").unwrap_or_else(|e| panic!("GET: {e}\n{}", ats.log_report()));
    assert_eq!(resp.status, 200, "GET status; body: {}", resp.body_str());
    assert_eq!(resp.body_str(), "hello from origin");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    let reqs = origin.wait_for_requests(1, WAIT);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/hello?x=1");
    assert_eq!(reqs[0].header("host"), Some("example.com"), "pristine Host header; got {:?}", reqs[0].headers);
    assert!(reqs[0].body.is_empty());

    // A small POST, echoed back.
    origin.clear();
    let resp = ats.send(&Request::post("/echo", "ping").header("Content-Type", "text/x-test")).expect("small POST");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "ping");
    assert_eq!(resp.header("x-echo-method"), Some("POST"));
    let reqs = origin.wait_for_requests(1, WAIT);
    assert_eq!((reqs[0].method.as_str(), reqs[0].path.as_str()), ("POST", "/echo"));
    assert_eq!(reqs[0].header("host"), Some("example.com"));
    assert_eq!(reqs[0].header("content-type"), Some("text/x-test"));
    assert_eq!(reqs[0].body, b"ping");

    // 1 MiB sent chunked, echoed back.
    origin.clear();
    let big = e2e::pattern_body(1 << 20);
    let resp = ats
        .send(&Request::post("/echo/big", big.clone()).chunked(64 * 1024).timeout(Duration::from_secs(8)))
        .unwrap_or_else(|e| panic!("1 MiB chunked POST: {e}\n{}", ats.log_report()));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), big.len(), "echoed length");
    assert!(resp.body == big, "echoed 1 MiB body differs");
    let reqs = origin.wait_for_requests(1, WAIT);
    assert_eq!(reqs[0].path, "/echo/big");
    assert_eq!(reqs[0].body.len(), big.len(), "origin got the whole body");
    assert!(reqs[0].body == big, "origin got a different body");
    eprintln!(
        "1 MiB request body reached the origin {}",
        if reqs[0].chunked { "chunked" } else { "with a Content-Length" }
    );

    // A chunked response with trailers, and keep-alive on the client side.
    origin.set_handler(|req| {
        Response::text(200, format!("chunked answer to {}", req.path)).chunked(5).trailer("x-t", "1")
    });
    let mut conn = Connection::open(ats.port()).expect("connect to proxy");
    let a = conn.send(&Request::get("/a")).expect("first request on the connection");
    let b = conn.send(&Request::get("/b")).expect("second request on the same connection");
    assert_eq!(a.body_str(), "chunked answer to /a");
    assert_eq!(b.body_str(), "chunked answer to /b");
    assert!(ats.is_running());
    eprintln!("smoke test took {:?}", t0.elapsed());
}

#[test]
fn two_servers_run_in_parallel() {
    let t0 = Instant::now();
    let origin_a = Origin::with_handler(|_| Response::text(200, "origin A"));
    let origin_b = Origin::with_handler(|_| Response::text(200, "origin B"));
    let (pa, pb) = (origin_a.port(), origin_b.port());
    let a = std::thread::spawn(move || TrafficServer::start(AtsOptions::new("par-a").origin(pa)));
    // B also shows that debug output (here the stock `http_hdrs` tag) lands in
    // diags.log, where `wait_for_log` looks.
    let b = std::thread::spawn(move || {
        TrafficServer::start(AtsOptions::new("par-b").origin(pb).exec_threads(1).debug_tags("http_hdrs"))
    });
    let (ats_a, ats_b) = (a.join().expect("start A"), b.join().expect("start B"));
    assert_ne!(ats_a.port(), ats_b.port());
    assert_ne!(ats_a.dir(), ats_b.dir());

    for _ in 0..3 {
        assert_eq!(ats_a.get("/x").expect("GET via A").body_str(), "origin A");
        assert_eq!(ats_b.get("/y").expect("GET via B").body_str(), "origin B");
    }
    assert_eq!(origin_a.wait_for_requests(3, WAIT).iter().filter(|r| r.path == "/x").count(), 3);
    assert_eq!(origin_b.wait_for_requests(3, WAIT).iter().filter(|r| r.path == "/y").count(), 3);
    ats_b.expect_log("(http_hdrs)", WAIT);
    assert!(!ats_a.diags_log().contains("(http_hdrs)"), "A has only the default `proxy_wasm` debug tag");

    let (dir_a, dir_b) = (ats_a.dir().to_path_buf(), ats_b.dir().to_path_buf());
    let stop = Instant::now();
    drop(ats_a);
    eprintln!("stopping one traffic_server took {:?}", stop.elapsed());
    drop(ats_b);
    if std::env::var_os("E2E_KEEP").is_none() {
        assert!(!dir_a.exists() && !dir_b.exists(), "instance directories are removed after a passing test");
    }
    eprintln!("parallel test took {:?}", t0.elapsed());
}

#[test]
fn reload_under_traffic_manager_switches_origin() {
    let t0 = Instant::now();
    let origin_a = Origin::with_handler(|_| Response::text(200, "before reload"));
    let origin_b = Origin::with_handler(|_| Response::text(200, "after reload"));
    let ats = TrafficServer::start(AtsOptions::new("reload").origin(origin_a.port()).manager(true));
    eprintln!("traffic_manager + traffic_server ready in {:?}", ats.startup_time());
    assert!(ats.server_pid().is_some(), "traffic_server pid in run/server.lock");
    assert_eq!(ats.get("/").expect("GET before reload").body_str(), "before reload");

    ats.write_config("remap.config", &map_all(origin_b.port(), ""));
    let r0 = Instant::now();
    ats.reload_and_wait("remap.config finished loading", Duration::from_secs(8));
    eprintln!("remap.config reloaded {:?} after traffic_ctl config reload", r0.elapsed());
    assert_eq!(ats.get("/").expect("GET after reload").body_str(), "after reload");
    assert_eq!(origin_b.wait_for_requests(1, WAIT)[0].path, "/");
    eprintln!("reload test took {:?}", t0.elapsed());
}

#[test]
fn harness_client_and_origin_directly() {
    // Chunked request with trailers; the origin sees the de-chunked body.
    let origin = Origin::start();
    let resp = Request::post("/echo", "abcdefghij")
        .chunked(3)
        .trailer("x-sum", "55")
        .send(origin.port())
        .expect("chunked POST");
    assert_eq!(resp.body_str(), "abcdefghij");
    let r = origin.last_request().unwrap();
    assert!(r.chunked);
    assert_eq!(r.trailer("x-sum"), Some("55"));
    assert_eq!(r.header("host"), Some("example.com"));

    // Chunked response with trailers; close-delimited response.
    origin.set_handler(|req| match req.path.as_str() {
        "/chunked" => Response::text(200, "0123456789").chunked(4).trailer("x-done", "yes"),
        "/close" => Response::text(200, "until close").close_delimited(),
        "/drop" => Response::drop_connection(),
        _ => Response::new(404),
    });
    let resp = client::get(origin.port(), "/chunked").unwrap();
    assert!(resp.chunked);
    assert_eq!(resp.body_str(), "0123456789");
    assert_eq!(resp.trailer("x-done"), Some("yes"));
    let resp = client::get(origin.port(), "/close").unwrap();
    assert_eq!(resp.body_str(), "until close");
    assert!(resp.header("content-length").is_none());

    // Keep-alive: two requests on one connection reach the origin on one connection.
    origin.clear();
    let mut conn = Connection::open(origin.port()).unwrap();
    assert_eq!(conn.send(&Request::get("/x")).unwrap().status, 404);
    assert_eq!(conn.send(&Request::head("/x")).unwrap().status, 404);
    let reqs = origin.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].connection, reqs[1].connection);
    assert_eq!(reqs[1].seq_on_connection, 2);

    // A connection closed without a response is an error value.
    let err = client::get(origin.port(), "/drop").unwrap_err();
    assert!(err.is_closed_without_response(), "expected Closed with 0 bytes, got {err:?}");

    // A server that never answers: timeout.
    origin.set_handler(|_| Response::hello().delay(Duration::from_secs(3)));
    let err = Request::get("/slow").timeout(Duration::from_millis(300)).send(origin.port()).unwrap_err();
    assert!(err.is_timeout(), "expected a timeout, got {err:?}");
    assert!(origin.errors().is_empty(), "origin errors: {:?}", origin.errors());
}

#[test]
fn startup_failure_is_reported_with_logs() {
    // A plugin.config naming a plugin that does not exist: traffic_server
    // refuses to start; the error must say so and quote the logs.
    let t0 = Instant::now();
    let err = match TrafficServer::try_start(AtsOptions::new("badplugin").plugin_config("no_such_plugin.so\n")) {
        Ok(ts) => panic!("traffic_server started with a missing plugin; logs:\n{}", ts.log_report()),
        Err(e) => e,
    };
    assert!(err.contains("diags.log"), "the error quotes the logs: {err}");
    assert!(err.contains("no_such_plugin.so"), "the error names the plugin: {err}");
    eprintln!("start-up failure reported in {:?}:\n{err}", t0.elapsed());
}
