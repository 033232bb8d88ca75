//! Generates `include/proxy_wasm_host.h` from the `extern "C"` API in `src/ffi/`.
//!
//! The header is committed so that C servers can build against it without Rust;
//! it is regenerated on every build so it never drifts from the code.

use std::path::PathBuf;

fn main() {
    #[cfg(feature = "ats")]
    ats::generate();
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

/// Bindings to Traffic Server's C API, for the `ats` feature.
#[cfg(feature = "ats")]
mod ats {
    pub fn generate() {
        let include = std::env::var("TS_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
        println!("cargo:rerun-if-env-changed=TS_INCLUDE_DIR");
        println!("cargo:rerun-if-changed=src/ats/wrapper.h");
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let bindings = bindgen::Builder::default()
            .header("src/ats/wrapper.h")
            .clang_arg(format!("-I{include}"))
            .allowlist_function("TS.*|_TS.*")
            .allowlist_type("TS.*")
            .allowlist_var("TS.*")
            // Functions the plugin defines itself.
            .blocklist_function("TSPluginInit|TSRemapInit|TSRemapNewInstance|TSRemapDeleteInstance|TSRemapDoRemap|TSRemapDone|TSRemapOSResponse|TSRemapPreConfigReload|TSRemapPostConfigReload")
            .prepend_enum_name(false)
            // Traffic Server may pass values a Rust enum would not know.
            .default_enum_style(bindgen::EnumVariation::Consts)
            .layout_tests(false)
            .generate()
            .unwrap_or_else(|e| panic!("bindgen over {include}/ts/ts.h failed (install trafficserver-dev): {e}"));
        bindings.write_to_file(out.join("ts_bindings.rs")).expect("write ts_bindings.rs");
    }
}
