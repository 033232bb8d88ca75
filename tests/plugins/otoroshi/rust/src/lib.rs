//! Otoroshi test plugin, Rust PDK (extism-pdk 1.0.1): one module exporting every
//! proxy-engine step under Otoroshi's default function names. Imports only the
//! Extism ABI (`extism:host/env`). Protocol: tests/plugins/otoroshi/README.md.
//!
//! The exports are written by hand rather than with `#[plugin_fn]` so that the
//! forced-failure cases control the return code exactly (`#[plugin_fn]` always
//! sets an error and returns -1 on `Err`); the template examples use the macro.

mod common;

use common::steps;

const TAG: &str = "rust";

macro_rules! step_exports {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name() -> i32 {
                steps::run(stringify!($name), TAG, steps::$name)
            }
        )*
    };
}

step_exports!(
    pre_route,
    access,
    transform_request,
    transform_response,
    matches_route,
    find_route,
    sink_matches,
    sink_handle,
    call_backend,
    handle_request,
);

#[no_mangle]
pub extern "C" fn job_start() -> i32 {
    steps::run_job("job_start", TAG)
}

#[no_mangle]
pub extern "C" fn job_run() -> i32 {
    steps::run_job("job_run", TAG)
}

#[no_mangle]
pub extern "C" fn job_stop() -> i32 {
    steps::run_job("job_stop", TAG)
}
