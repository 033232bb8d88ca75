#!/usr/bin/env bash
# Demo of ngx_http_proxy_wasm_module.so in a real, private nginx 1.22.1
# (master + 2 workers) on 127.0.0.1 (Debian 12, as root).
#
#   bash scripts/demo-nginx.sh          (`make demo` runs it after building)
#
# Uses build/ngx_http_proxy_wasm_module.so and build/plugins/rust_sdk_filter.wasm
# (`make plugins nginx`). In a temporary directory it writes nginx.conf and a
# plugin YAML, starts a small Python origin and nginx on free ports, sends a
# few requests with curl, prints them with their answers and the plugin's
# lines from error.log, and stops everything. Exit status 0 when every answer
# is as expected. KEEP=1 keeps the directory.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
so=${PROXY_WASM_NGINX_SO:-$repo/build/ngx_http_proxy_wasm_module.so}
wasm=$repo/build/plugins/rust_sdk_filter.wasm
for f in "$so" "$wasm"; do
    [ -f "$f" ] || { echo "demo-nginx: missing $f (run: make plugins nginx)" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/pw-demo-nginx-XXXXXX)
chmod 755 "$dir"
mkdir -p "$dir/conf" "$dir/logs" "$dir/tmp"
chmod 777 "$dir/tmp"
port=$(free_port)
origin_port=$(free_port)

cleanup() {
    [ -f "$dir/logs/nginx.pid" ] && kill "$(cat "$dir/logs/nginx.pid")" 2>/dev/null || true
    [ -n "${origin_pid:-}" ] && kill "$origin_pid" 2>/dev/null || true
    sleep 0.3
    if [ -z "${KEEP:-}" ]; then rm -rf "$dir"; else echo "kept $dir"; fi
}
trap cleanup EXIT

cat >"$dir/conf/plugins.yaml" <<YAML
- config:
    name: "demo"
    configuration: '{"tag":"nginx-demo"}'
    vm_config:
      vm_id: "demo_vm"
      code:
        local:
          filename: "$wasm"
YAML

temp=""
for t in client_body proxy fastcgi uwsgi scgi; do temp+="    ${t}_temp_path $dir/tmp/$t;"$'\n'; done
cat >"$dir/conf/nginx.conf" <<CONF
load_module $so;
worker_processes 2;
pid $dir/logs/nginx.pid;
error_log $dir/logs/error.log info;
events { worker_connections 256; }
http {
    access_log $dir/logs/access.log;
$temp
    proxy_wasm_config $dir/conf/plugins.yaml;
    proxy_wasm demo;
    server {
        listen 127.0.0.1:$port;
        location / { proxy_pass http://127.0.0.1:$origin_port; }
        location /plain { proxy_wasm off; proxy_pass http://127.0.0.1:$origin_port; }
        location = /metrics { proxy_wasm_metrics; }
    }
}
CONF

python3 - "$origin_port" >"$dir/logs/origin.log" 2>&1 <<'PY' &
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b"hello from the demo origin\n"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
origin_pid=$!

echo "== nginx -t"
/usr/sbin/nginx -t -p "$dir" -c "$dir/conf/nginx.conf"
/usr/sbin/nginx -p "$dir" -c "$dir/conf/nginx.conf"
for _ in $(seq 100); do
    [ "$(grep -c 'plugins started in worker' "$dir/logs/error.log" 2>/dev/null || true)" -ge 2 ] && break
    sleep 0.1
done

fail=0
show() { echo; echo "== curl $*"; curl -sS -D - "$@" || fail=1; }
expect() { if ! grep -q -- "$1" <<<"$2"; then echo "!! expected: $1"; fail=1; fi; }

out=$(curl -sS -D - "http://127.0.0.1:$port/hello"); echo; echo "== GET /hello"; echo "$out"
expect "x-proxy-wasm: nginx-demo" "$out"
out=$(curl -sS -D - -H "x-pw-test: local" "http://127.0.0.1:$port/deny"); echo; echo "== GET /deny with x-pw-test: local"; echo "$out"
expect "HTTP/1.1 403" "$out"
out=$(curl -sS -D - -H "x-pw-test: req-body-upper" --data "shout this" "http://127.0.0.1:$port/echo"); echo; echo "== POST /echo with x-pw-test: req-body-upper"; echo "$out"
expect "SHOUT THIS" "$out"
out=$(curl -sS -D - "http://127.0.0.1:$port/plain"); echo; echo "== GET /plain (proxy_wasm off)"; echo "$out"
if grep -q "x-proxy-wasm" <<<"$out"; then echo "!! /plain must not pass the filter"; fail=1; fi
out=$(curl -sS "http://127.0.0.1:$port/metrics"); echo; echo "== GET /metrics"; echo "$out" | head -12

echo; echo "== plugin lines in error.log"
grep "proxy_wasm" "$dir/logs/error.log" | tail -n 12
if [ "$fail" != 0 ]; then echo "demo-nginx: FAILED" >&2; tail -n 30 "$dir/logs/error.log" >&2; exit 1; fi
echo; echo "demo-nginx: OK"
