//! Bindings to Traffic Server's C API (`/usr/include/ts`, or `TS_INCLUDE_DIR`), generated at
//! build time into `$OUT_DIR/ts_bindings.rs` (included by `src/sys.rs`).

fn main() {
    let include = std::env::var("TS_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
    println!("cargo:rerun-if-env-changed=TS_INCLUDE_DIR");
    println!("cargo:rerun-if-changed=src/wrapper.h");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bindings = bindgen::Builder::default()
        .header("src/wrapper.h")
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
