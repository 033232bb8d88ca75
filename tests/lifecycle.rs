//! Lifecycle order and start-up, with the WAT module that logs every callback.

mod common;
use common::*;

#[test]
fn root_context_is_created_then_vm_start_then_configure() {
    let h = Harness::start(&wat_bytes("lifecycle_0_2_1"), "cfg");
    let m = h.server.messages();
    println!("{m:#?}");
}
