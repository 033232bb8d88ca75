//! The APISIX example plugins (`examples/fault-injection`, `examples/forward-auth`,
//! `examples/response-rewrite`; README "Examples"), written once
//! (`tests/apisix_examples/mod.rs`) and run on NGINX (`nginx::...`) and on
//! Traffic Server (`ats::...`) through `e2e::server::ServerUnderTest`: one
//! route per configuration, chosen by the Host header, in front of a real
//! origin and auth service. What is about one server only stays in
//! tests/ats_examples.rs and tests/nginx_examples.rs.
//!
//! Run with `make ats nginx plugins && cargo test --test conformance_examples`
//! (and with `E2E_RUNTIME=wamr`).

mod apisix_examples;
mod e2e;

e2e::server::for_each_server! {
    crate::apisix_examples::cases!();
}
