#!/usr/bin/env bash
# Prepares a configured NGINX source tree for building the NGINX module
# (crate `servers/nginx`, through the `ngx` crate) against Debian's nginx 1.22.1:
#   build/nginx-src        copy of /usr/share/nginx/src (package nginx-dev)
#   build/nginx-src/objs   what ./configure makes (ngx_auto_config.h, Makefile)
# configured with Debian's own flags (conf_flags, which include --with-compat),
# so that `load_module` in /usr/sbin/nginx accepts the module.
#
# Usage: scripts/nginx-src.sh [DIR]   (default: build/nginx-src)
# Prints the directory. Re-running is cheap: an already configured tree is kept.
#
# To build against another NGINX, configure that tree yourself with the same
# ./configure arguments as the nginx binary (`nginx -V`, keep --with-compat), then
#   NGINX_SOURCE_DIR=<tree> NGINX_BUILD_DIR=<tree>/objs cargo build --release -p ngx-http-proxy-wasm-module
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/build/nginx-src}"
kit=/usr/share/nginx/src

if [ -f "$dir/objs/ngx_auto_config.h" ] && [ -f "$dir/objs/Makefile" ]; then
    echo "$dir"
    exit 0
fi
if [ ! -f "$kit/conf_flags" ]; then
    echo "nginx-src: $kit/conf_flags not found: install the nginx-dev package" >&2
    exit 1
fi
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
cp -r "$kit" "$dir"
(
    cd "$dir"
    # shellcheck disable=SC1091
    . ./conf_flags
    ./configure "${NGX_CONF_FLAGS[@]}" >configure.log 2>&1 || { tail -n 30 configure.log >&2; exit 1; }
)
echo "$dir"
