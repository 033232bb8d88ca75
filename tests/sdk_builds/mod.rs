//! The builds of the test filters (tests/plugins/README.md): one per SDK
//! release, or toolchain, that builds here (scripts/build-plugins.sh), and the
//! macros that run a suite once per build, as `common::for_each_runtime!` runs
//! one once per runtime.
//!
//! A suite's items are given in sections; each build keeps the sections its
//! SDK's API allows (the others would test what the filter cannot do with
//! that SDK, not the host):
//!
//! ```ignore
//! mod sdk_builds;
//! crate::sdk_builds::for_each_rust_build! {
//!     all { /* helpers and tests for every build; `PLUGIN` is its file, `BUILD` its description */ }
//!     abi_0_2 { /* only builds of ABI 0.2.x */ }
//! }
//! ```
//!
//! | Macro | Builds (module name) | Sections |
//! |---|---|---|
//! | [`for_each_rust_build`] | `rust_0_1_0` ... `rust_0_2_3`: rust-sdk-filter with each Rust SDK release | `all`; `abi_0_2` (0.2.x only: `end_of_stream` in header callbacks, `proxy_close_stream`, `proxy_get_log_level`) |
//! | [`for_each_as_protocol_build`] | `as_0_1_8`, `as_0_1_1`: as-filter with each AssemblyScript SDK release; `c_abi_0_2_1`, `c_abi_0_1_0`: the same protocol in C | `all`; `as_0_1_8` (that SDK's own log lines and root-context lookup) |
#![allow(dead_code, unused_macros, unused_imports)]

/// Which test protocol a build speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// tests/plugins/README.md, "rust-sdk-filter"
    RustSdkFilter,
    /// tests/plugins/README.md, "as-filter"
    AsFilter,
}

/// One build of a test filter.
#[derive(Debug)]
pub struct SdkBuild {
    /// The module its tests are in, e.g. `rust_0_1_0`.
    pub name: &'static str,
    /// The SDK (or toolchain) and its release, as the README's matrix names them.
    pub sdk: &'static str,
    pub version: &'static str,
    /// Its file in build/plugins.
    pub file: &'static str,
    /// The ABI version it declares.
    pub abi: &'static str,
    pub protocol: Protocol,
    /// Its default tag (`x-proxy-wasm`, and `x-as-filter` for the as-filter protocol).
    pub tag: &'static str,
}

macro_rules! rust_build {
    ($const:ident, $name:literal, $version:literal, $file:literal, $abi:literal) => {
        pub const $const: SdkBuild = SdkBuild {
            name: $name,
            sdk: "Rust proxy-wasm",
            version: $version,
            file: $file,
            abi: $abi,
            protocol: Protocol::RustSdkFilter,
            tag: "rust-sdk",
        };
    };
}

rust_build!(RUST_0_1_0, "rust_0_1_0", "0.1.0", "rust_sdk_filter_0_1_0.wasm", "0.1.0");
rust_build!(RUST_0_1_1, "rust_0_1_1", "0.1.1", "rust_sdk_filter_0_1_1.wasm", "0.1.0");
rust_build!(RUST_0_1_2, "rust_0_1_2", "0.1.2", "rust_sdk_filter_0_1_2.wasm", "0.1.0");
rust_build!(RUST_0_1_3, "rust_0_1_3", "0.1.3", "rust_sdk_filter_0_1_3.wasm", "0.1.0");
rust_build!(RUST_0_1_4, "rust_0_1_4", "0.1.4", "rust_sdk_filter_0_1_4.wasm", "0.1.0");
rust_build!(RUST_0_2_0, "rust_0_2_0", "0.2.0", "rust_sdk_filter_0_2_0.wasm", "0.2.1");
rust_build!(RUST_0_2_1, "rust_0_2_1", "0.2.1", "rust_sdk_filter.wasm", "0.2.1");
rust_build!(RUST_0_2_2, "rust_0_2_2", "0.2.2", "rust_sdk_filter_0_2_2.wasm", "0.2.1");
rust_build!(RUST_0_2_3, "rust_0_2_3", "0.2.3", "rust_sdk_filter_0_2_3.wasm", "0.2.1");

pub const AS_0_1_8: SdkBuild = SdkBuild {
    name: "as_0_1_8",
    sdk: "AssemblyScript @solo-io/proxy-runtime (assemblyscript 0.14.13)",
    version: "0.1.8",
    file: "as_filter.wasm",
    abi: "0.2.0",
    protocol: Protocol::AsFilter,
    tag: "assemblyscript",
};

pub const AS_0_1_1: SdkBuild = SdkBuild {
    name: "as_0_1_1",
    sdk: "AssemblyScript @solo-io/proxy-runtime (assemblyscript 0.9.4)",
    version: "0.1.1",
    file: "as_filter_0_1_1.wasm",
    abi: "0.1.0",
    protocol: Protocol::AsFilter,
    tag: "assemblyscript",
};

pub const C_ABI_0_2_1: SdkBuild = SdkBuild {
    name: "c_abi_0_2_1",
    sdk: "C against the ABI (zig cc, PyPI ziglang 0.17.0)",
    version: "-",
    file: "c_filter.wasm",
    abi: "0.2.1",
    protocol: Protocol::AsFilter,
    tag: "c-filter",
};

pub const C_ABI_0_1_0: SdkBuild = SdkBuild {
    name: "c_abi_0_1_0",
    sdk: "C against the ABI (zig cc, PyPI ziglang 0.17.0)",
    version: "-",
    file: "c_filter_0_1_0.wasm",
    abi: "0.1.0",
    protocol: Protocol::AsFilter,
    tag: "c-filter",
};

/// Every build, in the README's order.
pub const ALL: &[&SdkBuild] = &[
    &RUST_0_1_0,
    &RUST_0_1_1,
    &RUST_0_1_2,
    &RUST_0_1_3,
    &RUST_0_1_4,
    &RUST_0_2_0,
    &RUST_0_2_1,
    &RUST_0_2_2,
    &RUST_0_2_3,
    &AS_0_1_1,
    &AS_0_1_8,
    &C_ABI_0_2_1,
    &C_ABI_0_1_0,
];

// ------------------------------------------------------------------ sections kept per kind of build

macro_rules! sections_rust_abi_0_1 {
    (all { $($i:tt)* }) => { $($i)* };
    ($other:ident { $($i:tt)* }) => {};
}

macro_rules! sections_rust_abi_0_2 {
    (all { $($i:tt)* }) => { $($i)* };
    (abi_0_2 { $($i:tt)* }) => { $($i)* };
    ($other:ident { $($i:tt)* }) => {};
}

macro_rules! sections_as_0_1_8 {
    (all { $($i:tt)* }) => { $($i)* };
    (as_0_1_8 { $($i:tt)* }) => { $($i)* };
    ($other:ident { $($i:tt)* }) => {};
}

macro_rules! sections_as_protocol {
    (all { $($i:tt)* }) => { $($i)* };
    ($other:ident { $($i:tt)* }) => {};
}

pub(crate) use {sections_as_0_1_8, sections_as_protocol, sections_rust_abi_0_1, sections_rust_abi_0_2};

/// One build's module: `BUILD`, `PLUGIN` (its file) and the sections `$keep`
/// keeps. Everything of the enclosing module is in scope.
macro_rules! build_module {
    ($module:ident, $build:ident, $keep:ident, $($section:ident { $($items:tt)* })*) => {
        pub mod $module {
            #![allow(unused_imports, dead_code)]
            use super::*;
            pub const BUILD: &crate::sdk_builds::SdkBuild = &crate::sdk_builds::$build;
            pub const PLUGIN: &str = BUILD.file;
            $( crate::sdk_builds::$keep!($section { $($items)* }); )*
        }
    };
}
pub(crate) use build_module;

/// The sections once per Rust SDK build of rust-sdk-filter.
macro_rules! for_each_rust_build {
    ($($body:tt)*) => {
        crate::sdk_builds::build_module!(rust_0_1_0, RUST_0_1_0, sections_rust_abi_0_1, $($body)*);
        crate::sdk_builds::build_module!(rust_0_1_1, RUST_0_1_1, sections_rust_abi_0_1, $($body)*);
        crate::sdk_builds::build_module!(rust_0_1_2, RUST_0_1_2, sections_rust_abi_0_1, $($body)*);
        crate::sdk_builds::build_module!(rust_0_1_3, RUST_0_1_3, sections_rust_abi_0_1, $($body)*);
        crate::sdk_builds::build_module!(rust_0_1_4, RUST_0_1_4, sections_rust_abi_0_1, $($body)*);
        crate::sdk_builds::build_module!(rust_0_2_0, RUST_0_2_0, sections_rust_abi_0_2, $($body)*);
        crate::sdk_builds::build_module!(rust_0_2_1, RUST_0_2_1, sections_rust_abi_0_2, $($body)*);
        crate::sdk_builds::build_module!(rust_0_2_2, RUST_0_2_2, sections_rust_abi_0_2, $($body)*);
        crate::sdk_builds::build_module!(rust_0_2_3, RUST_0_2_3, sections_rust_abi_0_2, $($body)*);
    };
}
pub(crate) use for_each_rust_build;

/// The sections once per build that speaks the as-filter protocol.
macro_rules! for_each_as_protocol_build {
    ($($body:tt)*) => {
        crate::sdk_builds::build_module!(as_0_1_8, AS_0_1_8, sections_as_0_1_8, $($body)*);
        crate::sdk_builds::build_module!(as_0_1_1, AS_0_1_1, sections_as_protocol, $($body)*);
        crate::sdk_builds::build_module!(c_abi_0_2_1, C_ABI_0_2_1, sections_as_protocol, $($body)*);
        crate::sdk_builds::build_module!(c_abi_0_1_0, C_ABI_0_1_0, sections_as_protocol, $($body)*);
    };
}
pub(crate) use for_each_as_protocol_build;
