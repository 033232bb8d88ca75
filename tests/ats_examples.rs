//! The APISIX example plugins (`examples/fault-injection`, `examples/forward-auth`,
//! `examples/response-rewrite`; README "Examples") on a real Traffic Server, one
//! remap rule per configuration, in front of a real origin and auth service.
//! The cases are shared with NGINX (`tests/apisix_examples/mod.rs`,
//! `tests/nginx_examples.rs`).
//!
//! Run with `make ats plugins && cargo test --test ats_examples`.

mod apisix_examples;
mod e2e;

use apisix_examples::{Proxy, Route};
use e2e::ats::{AtsOptions, TrafficServer, PLUGIN_SO};
use e2e::client::{Request, Response};

struct Ats(TrafficServer);

impl Proxy for Ats {
    fn send(&self, req: &Request) -> Response {
        self.0.send(req).unwrap_or_else(|e| panic!("{e}\n{}", self.0.log_report()))
    }
    fn log_report(&self) -> String {
        self.0.log_report()
    }
    fn logs(&self) -> String {
        format!("{}\n{}", self.0.diags_log(), self.0.traffic_out())
    }
    fn port(&self) -> u16 {
        self.0.port()
    }
}

/// The remap lines the README documents, one per route: `map http://<host>/ <origin> @plugin=... @pparam=<yaml>`.
fn options(test: &str, origin_port: u16, routes: &[Route]) -> AtsOptions {
    let mut remap = String::new();
    let mut opts = AtsOptions::new(test).origin(origin_port);
    for r in routes {
        let file = format!("{}.yaml", r.host);
        remap.push_str(&format!(
            "map http://{}/ http://127.0.0.1:{origin_port}/ @plugin={PLUGIN_SO} @pparam=@ETC@/{file}\n",
            r.host
        ));
        opts = opts.file(file, r.yaml.clone());
    }
    opts.remap_config(remap)
}

fn start(test: &str, origin_port: u16, routes: &[Route]) -> Box<dyn Proxy> {
    Box::new(Ats(TrafficServer::start(options(test, origin_port, routes))))
}

apisix_examples::cases!(start);

/// A configuration an example rejects: Traffic Server logs the plugin's
/// message naming the key, and the rule answers 503 without reaching the origin.
#[test]
fn a_configuration_an_example_rejects_is_logged_with_its_key_and_the_rule_answers_503() {
    let origin = e2e::origin::Origin::start();
    let routes = [apisix_examples::route("rr-bad", "response_rewrite", r#"{"status_code": 99}"#, "")];
    let ats = TrafficServer::start(options("apisix-rejected", origin.port(), &routes));
    ats.expect_log(
        "response-rewrite: status_code: 99 is not an HTTP status from 200 to 598",
        std::time::Duration::from_secs(10),
    );
    let r = ats
        .send(&Request::get("/rejected").host("rr-bad.test"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 503, "{}", ats.log_report());
    origin.assert_no_new_requests(std::time::Duration::from_millis(300));
}
