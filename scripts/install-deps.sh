#!/usr/bin/env bash
# Installs what building and testing need on Debian 12, as root. Idempotent:
# packages already present are not touched, and `apt-get update` runs only
# when something is missing.
#
#   rustc cargo libstd-rust-dev-wasm32  Debian's Rust 1.63 with the wasm32-wasi std,
#                                       used only to build the Rust-SDK test plugin
#                                       (the rustup toolchain has no wasm32 std)
#   lld-14                              the wasm32 linker: Debian's /usr/bin/rust-lld
#                                       is a link to lld-14, only recommended by rustc
#   wabt                                wat2wasm, for the WAT test modules
#   nodejs npm                          the AssemblyScript test plugins
#   python3 python3-venv                a venv for Zig's C compiler from PyPI (ziglang),
#                                       which builds the C test plugin
#   build-essential pkg-config          C toolchain for -sys crates
#   cmake                               builds WAMR (wamrx-sys) from its vendored sources
#   trafficserver trafficserver-dev     Traffic Server 9.2 and its plugin headers
#   nginx nginx-dev                     NGINX 1.22.1 and its configured source kit
#                                       (/usr/share/nginx/src), for the NGINX module
#   clang libclang-dev                  bindgen, for the Traffic Server and NGINX bindings
#
# The host itself builds with the rustup toolchain (cargo); it must be on PATH.
set -euo pipefail

packages=(rustc cargo libstd-rust-dev-wasm32 lld-14 wabt python3 python3-venv build-essential pkg-config cmake curl trafficserver trafficserver-dev nginx nginx-dev clang libclang-dev)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "install-deps: note: add \$HOME/.cargo/bin to PATH" >&2
fi
# The host needs a recent Rust (rustup); Debian's cargo 1.65 is only for the wasm32 plugin.
if ! "${CARGO:-cargo}" --version 2>/dev/null | grep -qE 'cargo 1\.(8[5-9]|9[0-9]|[1-9][0-9]{2})'; then
    echo "install-deps: the host needs cargo >= 1.85 from rustup on PATH (found: $("${CARGO:-cargo}" --version 2>&1 || true))" >&2
    exit 1
fi
