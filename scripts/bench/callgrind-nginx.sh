#!/usr/bin/env bash
# Instructions per request of NGINX with the module, counted by valgrind's
# callgrind (issue 15): a repeatable figure on a shared or noisy machine, where
# CPU time per request moves with the other load.
#
#   bash scripts/bench/callgrind-nginx.sh [MODULE.so]
#
# One nginx (master_process off, 1 worker, under callgrind) per row serves
# `return 200 'ok'` at /l/ with the row's filter; curl sends N1 and then N2
# requests on one keep-alive connection in two runs of the same row, and the
# figure is (instructions of run 2 - instructions of run 1) / (N2 - N1): the
# start-up, the module's load and the plugin's code load cancel out (a first,
# unmeasured run fills the compiled-module cache, so that both measured runs
# take the code from it instead of compiling it under valgrind). User
# space only (callgrind does not see the kernel), every library included
# (nginx, the module, Wasmtime or WAMR, libc).
#
# Rows: base (no module), W2-min and W2-all (scripts/bench/*.wat) on
# Wasmtime (wamr: `w2min-wamr`... in CG_ROWS), W2 (bench filter noop), W3
# (bench filter w3), W6 (`w6-wasmtime`: eight W3 plugins on one VM, in one chain, as
# scripts/bench.sh's W6); and the Otoroshi access-control template of W3-oto
# (examples/otoroshi/access-control.json, each request carrying the `foo: bar`
# it allows) built with the AssemblyScript PDK (`oto-wasmtime`) and with the
# Rust PDK (`otors-wasmtime`), not in the default rows (`CG_ROWS="base
# oto-wasmtime otors-wasmtime"`; `-wamr` would run them on WAMR, but valgrind
# stops WAMR's nginx with an illegal instruction here, as for the other rows).
# Environment: CG_N1 [200], CG_N2 [1200], CG_ROWS (e.g. "base w2min-wasmtime"),
# CG_WASM [build/plugins/bench_filter.wasm], CG_OTO_DIR [build/plugins] (the
# templates' modules), CG_KEEP (a folder for the callgrind files).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
so=${1:-$repo/build/bench/ngx_http_proxy_wasm_module.so}
so=$(readlink -f "$so")
n1=${CG_N1:-200}
n2=${CG_N2:-1200}
wasm=${CG_WASM:-$repo/build/plugins/bench_filter.wasm}
oto_dir=${CG_OTO_DIR:-$repo/build/plugins}
rows=${CG_ROWS:-base w2min-wasmtime w2all-wasmtime w2-wasmtime w3-wasmtime w6-wasmtime}
nginx=${NGINX:-/usr/sbin/nginx}
dir=$(mktemp -d /tmp/callgrind-nginx.XXXXXX)
# CG_KEEP=DIR keeps the callgrind output files there (callgrind_annotate them).
trap 'rm -rf "$dir"' EXIT

command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
wat2wasm "$repo/scripts/bench/w2_min.wat" -o "$dir/w2_min.wasm"
wat2wasm "$repo/scripts/bench/w2_all.wat" -o "$dir/w2_all.wasm"

# oto_yaml FILE ID RUNTIME WASM: the access-control entity as exported, as id ID on RUNTIME
# running WASM.
oto_yaml() {
    python3 - "$repo/examples/otoroshi/access-control.json" "$4" "$2" >"$1.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["config"]["source"]["path"] = sys.argv[2]
doc["id"] = sys.argv[3]
print(json.dumps(doc))
PY
    printf 'otoroshi:\n  runtime: %s\nwasm_plugins:\n  - %s\n' "$3" "$(cat "$1.json")" >"$1"
}

# run ROW N: prints the instructions callgrind counted for nginx serving N requests.
run() {
    local row=$1 n=$2 d=$dir/$1-$2 port name rt code wl mod="" http="" loc="" hdr="X-Row: $1" count=1
    mkdir -p "$d/logs"
    port=$(free_port)
    if [ "$row" != base ]; then
        name=${row%-*} rt=${row##*-}
        case $name in
            w2min) code=$dir/w2_min.wasm wl=- ;;
            w2all) code=$dir/w2_all.wasm wl=- ;;
            w2) code=$wasm wl=noop ;;
            w3) code=$wasm wl=w3 ;;
            w6) code=$wasm wl=w3 count=8 ;;
            oto) code=$oto_dir/otoroshi_as_template_access_control.wasm ;;
            otors) code=$oto_dir/otoroshi_rust_template_access_control.wasm ;;
            *) echo "unknown row $row" >&2; return 1 ;;
        esac
        case $name in
            oto | otors) oto_yaml "$d/p.yaml" "$row" "$rt" "$code"; hdr="foo: bar" ;;
            w6) w6_yaml "$d/p.yaml" "$row" "$wl" "$rt" "$code" "$count" ;;
            *) plugin_yaml "$d/p.yaml" "$row" "$wl" "$rt" "$code" ;;
        esac
        mod="load_module $so;" http="proxy_wasm_config $d/p.yaml;" loc="proxy_wasm $row;"
        if [ "$name" = w6 ]; then
            local i
            loc=""
            for ((i = 1; i <= count; i++)); do loc+="proxy_wasm $row-$i; "; done
        fi
    fi
    cat >"$d/nginx.conf" <<EOF
$mod
env PROXY_WASM_HOST_COMPILED_CACHE=$dir/compiled-cache;
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/error.log error;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $d/tb; proxy_temp_path $d/tp; fastcgi_temp_path $d/tf;
    uwsgi_temp_path $d/tu; scgi_temp_path $d/ts;
    keepalive_requests 1000000;
    $http
    server {
        listen 127.0.0.1:$port;
        location /l/ { $loc return 200 'ok'; }
    }
}
EOF
    valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" "$nginx" -p "$d" -c "$d/nginx.conf" \
        >"$d/logs/valgrind.out" 2>&1 &
    local pid=$! i
    for ((i = 0; i < 1200; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { echo "$row: nginx exited: $(tail -n 5 "$d/logs/valgrind.out" "$d/logs/error.log")" >&2; return 1; }
        sleep 0.25
    done
    # One connection, N requests (curl reuses it for a URL range); every answer must be 200 (an
    # access-control row that refused its requests would measure its refusals).
    local codes
    codes=$(curl -s -o /dev/null -w '%{http_code}\n' -H "$hdr" "http://127.0.0.1:$port/l/[1-$n]" | sort -u | tr '\n' ' ') ||
        echo "$row: curl failed" >&2
    [ "$codes" = "200 " ] || echo "$row: answers were $codes(expected 200 only)" >&2
    kill -TERM "$pid"
    wait "$pid" || true
    if [ -n "${CG_KEEP:-}" ]; then mkdir -p "$CG_KEEP" && cp "$d/cg.out" "$CG_KEEP/$row-$n.out"; fi
    grep -m1 '^summary:' "$d/cg.out" | awk '{print $2}'
}

printf '| Row | instructions per request (callgrind, user space) | added over base |\n|---|---:|---:|\n'
base=""
for row in $rows; do
    # A first run fills the compiled-module cache: both measured runs then load the code from it.
    [ "$row" = base ] || run "$row" 1 >/dev/null
    a=$(run "$row" "$n1") b=$(run "$row" "$n2")
    per=$(((b - a) / (n2 - n1)))
    [ "$row" = base ] && base=$per
    added=""
    [ -n "$base" ] && [ "$row" != base ] && added="+$((per - base))"
    printf '| %s | %d | %s |\n' "$row" "$per" "$added"
done
