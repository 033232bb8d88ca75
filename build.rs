//! Generates `include/proxy_wasm_host.h` from the `extern "C"` API in `src/ffi/`.
//!
//! The header is committed so that C servers can build against it without Rust;
//! it is regenerated on every build so it never drifts from the code.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    match cbindgen::Builder::new().with_config(config).with_src(crate_dir.join("src/ffi/mod.rs")).generate() {
        Ok(bindings) => {
            bindings.write_to_file(crate_dir.join("include/proxy_wasm_host.h"));
        }
        // The committed header must always match the code: fail the build.
        Err(e) => panic!("cbindgen could not generate include/proxy_wasm_host.h from src/ffi/: {e}"),
    }
}
