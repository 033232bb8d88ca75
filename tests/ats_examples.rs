//! The APISIX example plugins (`examples/fault-injection`, `examples/forward-auth`,
//! `examples/response-rewrite`; README "Examples") on a real Traffic Server:
//! what is about Traffic Server only. The cases both servers share are in
//! tests/conformance_examples.rs (`tests/apisix_examples/mod.rs`).
//!
//! Run with `make ats plugins && cargo test --test ats_examples`.

mod apisix_examples;
mod e2e;

use e2e::ats::TrafficServer;
use e2e::client::Request;

/// A configuration an example rejects: Traffic Server logs the plugin's
/// message naming the key, and the rule answers 503 without reaching the origin.
#[test]
fn a_configuration_an_example_rejects_is_logged_with_its_key_and_the_rule_answers_503() {
    let origin = e2e::origin::Origin::start();
    let routes = [apisix_examples::route("rr-bad", "response_rewrite", r#"{"status_code": 99}"#, "")];
    let ats: TrafficServer = apisix_examples::start("apisix-rejected", origin.port(), &routes);
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
