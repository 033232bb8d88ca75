//! Property and fuzz tests of every decoder that reads bytes someone else
//! controls (issue 11, "Fuzzing"). Each `fuzz_*` test is one target: it runs
//! random and mutated inputs for a time budget (`FUZZ_SECONDS`, a few seconds
//! by default, so the short runs are part of `make test`); `make fuzz` runs
//! every target for ten minutes and prints a table. See tests/fuzz/engine.rs
//! for the environment variables (seed, replaying one case, keep going) and
//! docs/robustness.md ("Fuzzing") for what each target covers and the results.

mod common;

#[path = "fuzz/engine.rs"]
mod engine;

#[path = "fuzz/abi.rs"]
mod abi;

#[path = "fuzz/hostcalls.rs"]
mod hostcalls;

#[path = "fuzz/config.rs"]
mod config;

/// Counts allocations for [`engine::peak_allocation`].
#[global_allocator]
static ALLOCATOR: engine::CountingAlloc = engine::CountingAlloc;

#[path = "fuzz/http.rs"]
mod http;

#[path = "fuzz/shm.rs"]
mod shm;
