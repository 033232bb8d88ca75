#!/usr/bin/env bash
# Builds the Proxy-Wasm test plugins into build/plugins/, from source:
#   rust_sdk_filter.wasm        tests/plugins/rust-sdk-filter (Rust SDK 0.2.1, Debian rustc + wasm32-wasi std)
#   rust_sdk_filter_<v>.wasm    the same filter with every other Rust SDK release that
#                               builds with rustc 1.63 (tests/plugins/rust-sdk-filter/versions/<v>)
#   as_filter.wasm              tests/plugins/as-filter       (AssemblyScript SDK 0.1.8)
#   as_filter_<v>.wasm          the same filter with another AssemblyScript SDK release
#                               (tests/plugins/as-filter/sdk-<v>, with its own compiler)
#   c_filter.wasm               tests/plugins/c-filter (C against ABI 0.2.1, Zig's C compiler
#   c_filter_0_1_0.wasm         from PyPI in the venv build/zig-venv; and against ABI 0.1.0)
#   <name>.wasm                 every tests/wat/<name>.wat    (wat2wasm)
#   bench_filter.wasm           examples/bench-filter         (benchmark filter, Rust SDK 0.2.1; scripts/bench.sh)
#   fault_injection.wasm, forward_auth.wasm, response_rewrite.wasm
#                               examples/<name>               (APISIX's example plugins, Rust SDK 0.2.1; README "Examples")
#   otoroshi_*.wasm, extism_*.wasm, opa_policy.wasm
#                               tests/plugins/otoroshi/       (Otoroshi/Wasmo Extism plugins: AssemblyScript
#                                                              PDK, Rust PDK 1.0.1, WAT; see its README.md)
#
# Usage: scripts/build-plugins.sh [--force] [rust] [rust-sdks] [as] [as-sdks] [c] [wat] [bench] [examples] [otoroshi]
#   With no target names, builds all nine kinds. --force (or FORCE=1) rebuilds
#   even when the outputs are newer than their sources.
#
# Installs nothing system-wide. Needs (see docs / BUILDING notes):
#   apt: rustc cargo libstd-rust-dev-wasm32 (for /usr/bin/rustc 1.63 with the
#        wasm32-wasi and wasm32-unknown-unknown std), wabt, nodejs/npm,
#        python3 python3-venv (the venv for ziglang).
# Runs `npm ci` (or `npm install` without a lock file) in tests/plugins/as-filter
# (and `npm ci` in each of its sdk-<v> folders) and tests/plugins/otoroshi/as when
# their node_modules is missing; creates build/zig-venv with
# `pip install ziglang==$ZIGLANG_VERSION` when missing.
#
# Environment overrides:
#   PLUGIN_RUSTC  (default /usr/bin/rustc)   rustc that has the wasm32-wasi std
#   PLUGIN_CARGO  (default /usr/bin/cargo)   cargo to drive it
#   PLUGIN_PYTHON (default /usr/bin/python3) python3 that makes the ziglang venv
#   ZIGLANG_VERSION (default 0.17.0)
#   WAT2WASM      (default wat2wasm)
#   WAT2WASM_FLAGS extra flags for every .wat (a file may add its own with a
#                 first-lines comment ";; wat2wasm-flags: --no-check ...")
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

out_dir="build/plugins"
target_dir="$root/build/plugins-target"
rust_dir="tests/plugins/rust-sdk-filter"
bench_dir="examples/bench-filter"
# The worked examples (APISIX's example plugins): crate directory = lib name with '-'.
example_crates=(fault-injection forward-auth response-rewrite)
as_dir="tests/plugins/as-filter"
c_dir="tests/plugins/c-filter"
zig_venv="$root/build/zig-venv"
wat_dir="tests/wat"
oto_dir="tests/plugins/otoroshi"

PLUGIN_RUSTC="${PLUGIN_RUSTC:-/usr/bin/rustc}"
PLUGIN_CARGO="${PLUGIN_CARGO:-/usr/bin/cargo}"
WAT2WASM="${WAT2WASM:-wat2wasm}"
WAT2WASM_FLAGS="${WAT2WASM_FLAGS:-}"
PLUGIN_PYTHON="${PLUGIN_PYTHON:-/usr/bin/python3}"
ZIGLANG_VERSION="${ZIGLANG_VERSION:-0.17.0}"

force="${FORCE:-0}"
want_rust=0 want_as=0 want_wat=0 want_bench=0 want_rust_sdks=0 want_as_sdks=0 want_c=0 want_examples=0 want_oto=0
for arg in "$@"; do
    case "$arg" in
        --force|-f) force=1 ;;
        rust) want_rust=1 ;;
        rust-sdks) want_rust_sdks=1 ;;
        as-sdks) want_as_sdks=1 ;;
        c) want_c=1 ;;
        as) want_as=1 ;;
        wat) want_wat=1 ;;
        bench) want_bench=1 ;;
        examples) want_examples=1 ;;
        otoroshi) want_oto=1 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "build-plugins: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done
if [ $want_rust = 0 ] && [ $want_as = 0 ] && [ $want_wat = 0 ] && [ $want_bench = 0 ] \
    && [ $want_rust_sdks = 0 ] && [ $want_as_sdks = 0 ] && [ $want_c = 0 ] && [ $want_examples = 0 ] \
    && [ $want_oto = 0 ]; then
    want_rust=1 want_as=1 want_wat=1 want_bench=1 want_rust_sdks=1 want_as_sdks=1 want_c=1 want_examples=1 want_oto=1
fi

mkdir -p "$out_dir"

log() { printf 'build-plugins: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# up_to_date OUTPUT SOURCE... : true when OUTPUT exists and no SOURCE file
# (directories are searched recursively) is newer than it.
up_to_date() {
    local output="$1"; shift
    [ "$force" = 1 ] && return 1
    [ -f "$output" ] || return 1
    local newer
    newer="$(find "$@" -type f -newer "$output" -print -quit 2>/dev/null || true)"
    [ -z "$newer" ]
}

# publish TMP FINAL : atomically move a freshly built module into place.
publish() {
    mv -f "$1" "$2"
    log "wrote $2 ($(stat -c %s "$2") bytes)"
}

elapsed() { echo "$(( $(date +%s%N) / 1000000 - $1 )) ms"; }
now_ms() { echo "$(( $(date +%s%N) / 1000000 ))"; }

# plugin_cargo DIR TARGET_DIR CARGO-ARGS...: Debian's cargo (PLUGIN_CARGO, with PLUGIN_RUSTC) in
# DIR, building into TARGET_DIR. Settings meant for the host crate (env or the repo's
# .cargo/config.toml: wrappers, rustflags, target) are neutralised; Debian's cargo 1.65 needs the
# sparse index switched on explicitly (nightly-gated there); callers pass --locked to keep the
# committed Cargo.lock as is.
plugin_cargo() {
    local dir=$1 target_dir=$2
    shift 2
    (
        cd "$dir"
        env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET \
            RUSTC_WRAPPER= CARGO_BUILD_RUSTC_WRAPPER= CARGO_BUILD_RUSTFLAGS= \
            RUSTC="$PLUGIN_RUSTC" \
            CARGO_TARGET_DIR="$target_dir" \
            __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS=nightly \
            CARGO_UNSTABLE_SPARSE_REGISTRY=true \
            CARGO_REGISTRIES_CRATES_IO_PROTOCOL=sparse \
            "$PLUGIN_CARGO" "$@"
    )
}

# build_rust_crate DIR CRATE_LIB_NAME LABEL: a Rust-SDK crate to $out_dir/<lib name>.wasm
build_rust_crate() {
    local rust_dir="$1" lib="$2" label="$3"
    local out="$out_dir/$lib.wasm"
    if up_to_date "$out" "$rust_dir/Cargo.toml" "$rust_dir/Cargo.lock" "$rust_dir/src" "$0"; then
        log "$label: up to date"
        return
    fi
    [ -x "$PLUGIN_RUSTC" ] || die "$PLUGIN_RUSTC not found (apt-get install -y rustc cargo libstd-rust-dev-wasm32)"
    [ -x "$PLUGIN_CARGO" ] || die "$PLUGIN_CARGO not found (apt-get install -y cargo)"
    local sysroot
    sysroot="$("$PLUGIN_RUSTC" --print sysroot)"
    [ -d "$sysroot/lib/rustlib/wasm32-wasi" ] \
        || die "$PLUGIN_RUSTC has no wasm32-wasi std (apt-get install -y libstd-rust-dev-wasm32)"
    [ -f "$rust_dir/Cargo.lock" ] \
        || die "$rust_dir/Cargo.lock missing; regenerate with: (cd $rust_dir && CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo generate-lockfile)"

    local t0; t0="$(now_ms)"
    log "$label: building with $("$PLUGIN_RUSTC" --version)"
    plugin_cargo "$rust_dir" "$target_dir" build --release --locked --target wasm32-wasi
    local built="$target_dir/wasm32-wasi/release/$lib.wasm"
    [ -f "$built" ] || die "cargo did not produce $built"
    cp -f "$built" "$out.tmp"
    chmod 0644 "$out.tmp"
    publish "$out.tmp" "$out"
    log "$label: done in $(elapsed "$t0")"
}

build_rust() { build_rust_crate "$rust_dir" rust_sdk_filter rust-sdk-filter; }

# build_rust_sdks: rust-sdk-filter with every other Rust SDK release, one
# manifest (and lock file) per release in $rust_dir/versions/<release>/, into
# $out_dir/rust_sdk_filter_<release>.wasm. A manifest's line
# "# build-plugins: <cargo flags>" gives its target (the 0.1.0-0.1.2 SDKs
# export their own malloc, which clashes with wasi-libc's: they build for
# wasm32-unknown-unknown) and e.g. --ignore-rust-version (0.2.3 declares
# Rust 1.65 and builds with 1.63).
build_rust_sdks() {
    local manifest dir version lib flags out built target t0
    [ -x "$PLUGIN_RUSTC" ] || die "$PLUGIN_RUSTC not found (apt-get install -y rustc cargo libstd-rust-dev-wasm32)"
    [ -x "$PLUGIN_CARGO" ] || die "$PLUGIN_CARGO not found (apt-get install -y cargo)"
    for manifest in "$rust_dir"/versions/*/Cargo.toml; do
        dir="$(dirname "$manifest")"
        version="$(basename "$dir")"
        lib="rust_sdk_filter_${version//./_}"
        out="$out_dir/$lib.wasm"
        if up_to_date "$out" "$manifest" "$dir/Cargo.lock" "$rust_dir/src" "$0"; then
            log "rust-sdk-filter (SDK $version): up to date"
            continue
        fi
        [ -f "$dir/Cargo.lock" ] \
            || die "$dir/Cargo.lock missing; regenerate with: (cd $dir && CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo generate-lockfile)"
        flags="$(sed -n 's/^# build-plugins:[[:space:]]*//p' "$manifest" | head -n 1)"
        target="$(printf '%s\n' $flags | sed -n '/^--target$/{n;p}')"
        [ -n "$target" ] || die "$manifest: its '# build-plugins:' line names no --target"
        [ -d "$("$PLUGIN_RUSTC" --print sysroot)/lib/rustlib/$target" ] \
            || die "$PLUGIN_RUSTC has no $target std (apt-get install -y libstd-rust-dev-wasm32)"
        t0="$(now_ms)"
        log "rust-sdk-filter (SDK $version): building for $target"
        # shellcheck disable=SC2086
        plugin_cargo "$dir" "$target_dir/sdk-$version" build --release --locked $flags
        built="$target_dir/sdk-$version/$target/release/$lib.wasm"
        [ -f "$built" ] || die "cargo did not produce $built"
        cp -f "$built" "$out.tmp"
        chmod 0644 "$out.tmp"
        publish "$out.tmp" "$out"
        log "rust-sdk-filter (SDK $version): done in $(elapsed "$t0")"
    done
}
build_bench() { build_rust_crate "$bench_dir" bench_filter bench-filter; }
build_examples() {
    local name
    for name in "${example_crates[@]}"; do
        build_rust_crate "examples/$name" "${name//-/_}" "$name"
    done
}

build_as() {
    local out="$out_dir/as_filter.wasm"
    command -v node >/dev/null || die "node not found (apt-get install -y nodejs npm)"
    command -v npm >/dev/null || die "npm not found (apt-get install -y npm)"
    local t0; t0="$(now_ms)"
    if [ ! -x "$as_dir/node_modules/.bin/asc" ]; then
        if [ -f "$as_dir/package-lock.json" ]; then
            log "as-filter: npm ci"
            (cd "$as_dir" && npm ci --no-audit --no-fund)
        else
            log "as-filter: npm install (no package-lock.json)"
            (cd "$as_dir" && npm install --no-audit --no-fund)
        fi
    fi
    if up_to_date "$out" "$as_dir/assembly" "$as_dir/package.json" "$as_dir/package-lock.json" "$0"; then
        log "as-filter: up to date"
        return
    fi
    log "as-filter: building"
    (
        cd "$as_dir"
        ./node_modules/.bin/asc assembly/index.ts -b "$root/$out.tmp" --use abort=abort_proc_exit -O3
    )
    publish "$out.tmp" "$out"
    log "as-filter: done in $(elapsed "$t0")"
}

# build_as_sdks: the as-filter protocol (tests/plugins/as-filter/assembly/
# filter.ts) glued to each other AssemblyScript SDK release,
# $as_dir/sdk-<release>/ (its own package.json/lock with the SDK and the
# AssemblyScript compiler it was made for), into $out_dir/as_filter_<release>.wasm.
build_as_sdks() {
    local dir version out t0
    command -v node >/dev/null || die "node not found (apt-get install -y nodejs npm)"
    command -v npm >/dev/null || die "npm not found (apt-get install -y npm)"
    for dir in "$as_dir"/sdk-*/; do
        dir="${dir%/}"
        version="${dir##*/sdk-}"
        out="$out_dir/as_filter_${version//./_}.wasm"
        t0="$(now_ms)"
        if [ ! -x "$dir/node_modules/.bin/asc" ]; then
            [ -f "$dir/package-lock.json" ] || die "$dir/package-lock.json missing (npm install there once and commit it)"
            log "as-filter (SDK $version): npm ci"
            (cd "$dir" && npm ci --no-audit --no-fund)
        fi
        if up_to_date "$out" "$dir/assembly" "$dir/package.json" "$dir/package-lock.json" "$as_dir/assembly/filter.ts" "$0"; then
            log "as-filter (SDK $version): up to date"
            continue
        fi
        log "as-filter (SDK $version): building"
        # A path relative to the SDK's folder: asc 0.9 takes even an absolute
        # -b path as relative to its base directory.
        (
            cd "$dir"
            ./node_modules/.bin/asc assembly/index.ts -b "../../../../$out.tmp" --use abort=abort_proc_exit -O3
        )
        publish "$out.tmp" "$out"
        log "as-filter (SDK $version): done in $(elapsed "$t0")"
    done
}

# build_c: tests/plugins/c-filter/filter.c (the as-filter protocol in C,
# written against the ABI as the C++ SDK's intrinsics are) with Zig's C
# compiler from PyPI (ziglang $ZIGLANG_VERSION, installed into the venv
# $zig_venv), as a WASI reactor: c_filter.wasm (ABI 0.2.1) and
# c_filter_0_1_0.wasm (ABI 0.1.0).
zig_cc() { "$zig_venv/bin/python" -m ziglang cc "$@"; }

ensure_zig() {
    if [ -x "$zig_venv/bin/python" ] \
        && [ "$("$zig_venv/bin/python" -m ziglang version 2>/dev/null)" = "$ZIGLANG_VERSION" ]; then
        return
    fi
    local python="$PLUGIN_PYTHON"
    [ -x "$python" ] || python="$(command -v python3 || true)"
    [ -n "$python" ] || die "python3 not found (apt-get install -y python3 python3-venv)"
    log "c-filter: installing ziglang $ZIGLANG_VERSION into $zig_venv"
    rm -rf "$zig_venv"
    "$python" -m venv "$zig_venv" || die "$python -m venv failed (apt-get install -y python3-venv)"
    "$zig_venv/bin/python" -m pip install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION" \
        || die "pip could not install ziglang==$ZIGLANG_VERSION"
}

build_c() {
    local src="$c_dir/filter.c" name defines out t0
    for name in c_filter c_filter_0_1_0; do
        out="$out_dir/$name.wasm"
        if up_to_date "$out" "$src" "$0"; then
            log "c-filter ($name): up to date"
            continue
        fi
        ensure_zig
        defines=""
        [ "$name" = c_filter_0_1_0 ] && defines="-DPROXY_ABI_0_1_0"
        t0="$(now_ms)"
        log "c-filter ($name): building with zig $("$zig_venv/bin/python" -m ziglang version)"
        # -mexec-model=reactor: _initialize, no _start; malloc exported as the
        # C++ SDK's builds export it; debug sections stripped (wasi-libc's).
        # shellcheck disable=SC2086
        zig_cc --target=wasm32-wasi -mexec-model=reactor -O2 -g0 -Wall -Wextra -Werror $defines \
            -Wl,--export=malloc -Wl,--strip-debug -o "$out.tmp" "$src" \
            || { rm -f "$out.tmp"; die "zig cc failed on $src"; }
        publish "$out.tmp" "$out"
        log "c-filter ($name): done in $(elapsed "$t0")"
    done
}

build_wat() {
    shopt -s nullglob
    local files=("$wat_dir"/*.wat)
    shopt -u nullglob
    if [ ${#files[@]} -eq 0 ]; then
        log "wat: no $wat_dir/*.wat files"
        return
    fi
    command -v "$WAT2WASM" >/dev/null || die "$WAT2WASM not found (apt-get install -y wabt)"
    local t0; t0="$(now_ms)"
    local f name out flags built=0 skipped=0
    for f in "${files[@]}"; do
        name="$(basename "$f" .wat)"
        out="$out_dir/$name.wasm"
        if up_to_date "$out" "$f"; then
            skipped=$((skipped + 1))
            continue
        fi
        # Optional per-file flags in the first 5 lines: ";; wat2wasm-flags: ..."
        flags="$(head -n 5 "$f" | sed -n 's/^[[:space:]]*;;[[:space:]]*wat2wasm-flags:[[:space:]]*//p' | head -n 1)"
        # shellcheck disable=SC2086
        "$WAT2WASM" $WAT2WASM_FLAGS $flags "$f" -o "$out.tmp" || { rm -f "$out.tmp"; die "wat2wasm failed on $f"; }
        mv -f "$out.tmp" "$out"
        built=$((built + 1))
    done
    log "wat: $built built, $skipped up to date ($(elapsed "$t0"))"
}

# ---- Otoroshi/Wasmo Extism plugins (issue 14) -------------------------------

# The Wasmo templates, built by both PDKs (AssemblyScript file / Rust example name).
oto_templates=(access_control backend pre_route request_transformer response_transformer route_matcher sink http_access)

# otoroshi_as.wasm (every step), otoroshi_as_host.wasm (Otoroshi host functions)
# and otoroshi_as_template_<t>.wasm, from tests/plugins/otoroshi/as.
build_oto_as() {
    local dir="$oto_dir/as"
    command -v node >/dev/null || die "node not found (apt-get install -y nodejs npm)"
    command -v npm >/dev/null || die "npm not found (apt-get install -y npm)"
    local t0; t0="$(now_ms)"
    if [ ! -x "$dir/node_modules/.bin/asc" ]; then
        log "otoroshi-as: npm ci"
        (cd "$dir" && npm ci --no-audit --no-fund)
    fi
    # entry file (relative to $dir) -> output name
    local entries=("assembly/index.ts:otoroshi_as" "assembly/host.ts:otoroshi_as_host")
    local t
    for t in "${oto_templates[@]}"; do entries+=("assembly/templates/$t.ts:otoroshi_as_template_$t"); done
    local e src name out built=0 skipped=0
    for e in "${entries[@]}"; do
        src="${e%%:*}" name="${e##*:}" out="$out_dir/$name.wasm"
        # Entries share assembly/lib: any change there rebuilds them all.
        if up_to_date "$out" "$dir/$src" "$dir/assembly/lib" "$dir/package.json" "$dir/package-lock.json" "$0"; then
            skipped=$((skipped + 1))
            continue
        fi
        (cd "$dir" && ./node_modules/.bin/asc "$src" -o "$root/$out.tmp" --use abort=assembly/lib/kit/otoAbort -O3) \
            || { rm -f "$out.tmp"; die "asc failed on $dir/$src"; }
        publish "$out.tmp" "$out"
        built=$((built + 1))
    done
    log "otoroshi-as: $built built, $skipped up to date ($(elapsed "$t0"))"
}

# otoroshi_rust.wasm (every step, the crate's library), otoroshi_rust_host.wasm
# and otoroshi_rust_template_<t>.wasm (its examples), wasm32-unknown-unknown.
build_oto_rust() {
    local dir="$oto_dir/rust"
    local outs=("$out_dir/otoroshi_rust.wasm" "$out_dir/otoroshi_rust_host.wasm" "$out_dir/otoroshi_rust_files.wasm") t o stale=0
    for t in "${oto_templates[@]}"; do outs+=("$out_dir/otoroshi_rust_template_$t.wasm"); done
    for o in "${outs[@]}"; do
        up_to_date "$o" "$dir/Cargo.toml" "$dir/Cargo.lock" "$dir/src" "$dir/examples" "$0" || stale=1
    done
    if [ $stale = 0 ]; then
        log "otoroshi-rust: up to date"
        return
    fi
    [ -x "$PLUGIN_RUSTC" ] || die "$PLUGIN_RUSTC not found (apt-get install -y rustc cargo libstd-rust-dev-wasm32)"
    [ -x "$PLUGIN_CARGO" ] || die "$PLUGIN_CARGO not found (apt-get install -y cargo)"
    [ -d "$("$PLUGIN_RUSTC" --print sysroot)/lib/rustlib/wasm32-unknown-unknown" ] \
        || die "$PLUGIN_RUSTC has no wasm32-unknown-unknown std (apt-get install -y libstd-rust-dev-wasm32)"
    local t0; t0="$(now_ms)"
    log "otoroshi-rust: building with $("$PLUGIN_RUSTC" --version)"
    plugin_cargo "$dir" "$target_dir" build --release --locked --target wasm32-unknown-unknown --lib --examples
    # The WASI example (std::fs through allowedPaths) needs wasm32-wasi's std.
    plugin_cargo "$dir" "$target_dir" build --release --locked --target wasm32-wasi --example files
    local rel="$target_dir/wasm32-unknown-unknown/release"
    local pairs=("$rel/otoroshi_rust.wasm:otoroshi_rust" "$rel/examples/host.wasm:otoroshi_rust_host")
    pairs+=("$target_dir/wasm32-wasi/release/examples/files.wasm:otoroshi_rust_files")
    for t in "${oto_templates[@]}"; do pairs+=("$rel/examples/template_$t.wasm:otoroshi_rust_template_$t"); done
    local p built name
    for p in "${pairs[@]}"; do
        built="${p%%:*}" name="${p##*:}"
        [ -f "$built" ] || die "cargo did not produce $built"
        cp -f "$built" "$out_dir/$name.wasm.tmp"
        chmod 0644 "$out_dir/$name.wasm.tmp"
        publish "$out_dir/$name.wasm.tmp" "$out_dir/$name.wasm"
    done
    log "otoroshi-rust: done in $(elapsed "$t0")"
}

# Every tests/plugins/otoroshi/wat/<name>.wat to <name>.wasm.
build_oto_wat() {
    command -v "$WAT2WASM" >/dev/null || die "$WAT2WASM not found (apt-get install -y wabt)"
    local t0; t0="$(now_ms)"
    local f name out built=0 skipped=0
    for f in "$oto_dir"/wat/*.wat; do
        [ -f "$f" ] || continue
        name="$(basename "$f" .wat)" out="$out_dir/$name.wasm"
        if up_to_date "$out" "$f"; then
            skipped=$((skipped + 1))
            continue
        fi
        "$WAT2WASM" "$f" -o "$out.tmp" || { rm -f "$out.tmp"; die "wat2wasm failed on $f"; }
        mv -f "$out.tmp" "$out"
        built=$((built + 1))
    done
    log "otoroshi-wat: $built built, $skipped up to date ($(elapsed "$t0"))"
}

build_otoroshi() {
    build_oto_as
    build_oto_rust
    build_oto_wat
}

[ $want_rust = 1 ] && build_rust
[ $want_rust_sdks = 1 ] && build_rust_sdks
[ $want_as = 1 ] && build_as
[ $want_as_sdks = 1 ] && build_as_sdks
[ $want_c = 1 ] && build_c
[ $want_wat = 1 ] && build_wat
[ $want_bench = 1 ] && build_bench
[ $want_examples = 1 ] && build_examples
[ $want_oto = 1 ] && build_otoroshi
exit 0
