#!/usr/bin/env bash
# Instructions per request of Traffic Server with the plugin, counted by
# valgrind's callgrind (issue 15): the twin of callgrind-nginx.sh.
#
#   bash scripts/bench/callgrind-ats.sh [proxy_wasm_ats.so]
#
# One traffic_server (1 exec thread, no cache, under callgrind) per row answers
# /l/<row>/nocache/64/x from generator.so (the local answer of the W rows of
# scripts/bench.sh) behind a remap rule with the row's filter. curl sends
# CG_WARM requests (the thread's VMs start on its first transaction), then the
# counters are zeroed (`callgrind_control -z`), curl sends CG_N requests on one
# keep-alive connection, and the counters are dumped: the figure is the
# instructions of every thread of the process in that window divided by
# CG_N. Unlike nginx, Traffic Server does time-driven work whatever the load:
# its records sync (`sync_cont::sync`, about 2M instructions a second under
# valgrind, mostly a memset) and configuration callbacks run every second on
# the exec thread, so a difference of two runs of different lengths (the
# nginx script's method) would count them per request. They are left out
# (`--toggle-collect`); what else Traffic Server does while idle was measured
# at about 20k instructions a second, a few dozen per request here. User
# space only, every library included (traffic_server, the plugin, Wasmtime or
# WAMR, libc).
#
# Rows: base (generator.so alone), W2-min and W2-all (scripts/bench/*.wat) on
# Wasmtime (WAMR: `w2min-wamr`... in CG_ROWS), W2 (bench filter noop), W3
# (bench filter w3), W6 (`w6-wasmtime`: eight W3 plugins on one VM in one chain, as
# scripts/bench.sh's W6), w3-lua (tslua with scripts/bench/ts_w3.lua), null-transform
# (scripts/bench/ts_null_transform.c: a native response transform passing the body
# through, the floor of Traffic Server's transform machinery; built with cc).
# Environment: CG_WARM [50], CG_N [1000], CG_ROWS (e.g. "base w2min-wasmtime"),
# CG_WASM [build/plugins/bench_filter.wasm], CG_KEEP (a folder for the callgrind files),
# TRAFFIC_SERVER [/usr/bin/traffic_server].
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
so=${1:-$repo/build/bench/proxy_wasm_ats.so}
so=$(readlink -f "$so")
warm=${CG_WARM:-50}
n=${CG_N:-1000}
wasm=${CG_WASM:-$repo/build/plugins/bench_filter.wasm}
rows=${CG_ROWS:-base w2min-wasmtime w2all-wasmtime w2-wasmtime w3-wasmtime w6-wasmtime w3-lua null-transform}
ts=${TRAFFIC_SERVER:-/usr/bin/traffic_server}
modules=/usr/lib/trafficserver/modules
dir=$(mktemp -d /tmp/callgrind-ats.XXXXXX)
# CG_KEEP=DIR keeps the callgrind output files there (callgrind_annotate them).
pid=""
cleanup() {
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

for cmd in valgrind callgrind_control wat2wasm curl python3 cc "$ts"; do
    command -v "$cmd" >/dev/null || { echo "$cmd is not installed (valgrind: apt-get install valgrind)" >&2; exit 1; }
done
[ -f "$so" ] || { echo "no $so (make bench, or give the plugin's path)" >&2; exit 1; }
wat2wasm "$repo/scripts/bench/w2_min.wat" -o "$dir/w2_min.wasm"
wat2wasm "$repo/scripts/bench/w2_all.wat" -o "$dir/w2_all.wasm"
case " $rows " in
*" null-transform "*)
    cc -shared -fPIC -O2 -I/usr/include -o "$dir/ts_null_transform.so" "$repo/scripts/bench/ts_null_transform.c"
    ;;
esac

# layout DIR PORT REMAP-LINE: a private runroot (as scripts/bench.sh's ats_layout).
layout() {
    local d=$1 port=$2 p
    ats_runroot "$d"
    for p in "$modules"/*; do ln -sf "$p" "$d/plugins/$(basename "$p")"; done
    ln -sf "$so" "$d/plugins/proxy_wasm_ats.so"
    cat >>"$d/etc/records.config" <<EOF
CONFIG proxy.config.admin.user_id STRING #-1
CONFIG proxy.config.crash_log_helper STRING NULL
CONFIG proxy.config.http.server_ports STRING $port:ip-in=127.0.0.1
CONFIG proxy.config.http.cache.http INT 0
CONFIG proxy.config.reverse_proxy.enabled INT 1
CONFIG proxy.config.url_remap.remap_required INT 1
CONFIG proxy.config.url_remap.pristine_host_hdr INT 1
CONFIG proxy.config.exec_thread.autoconfig INT 0
CONFIG proxy.config.exec_thread.limit INT 1
CONFIG proxy.config.accept_threads INT 0
CONFIG proxy.config.diags.debug.enabled INT 0
CONFIG proxy.config.diags.output.diag STRING L
CONFIG proxy.config.diags.logfile.rolling_enabled INT 0
CONFIG proxy.config.log.logging_enabled INT 0
CONFIG proxy.config.plugin.plugin_dir STRING $d/plugins
CONFIG proxy.config.body_factory.template_sets_dir STRING $d/etc/body_factory
CONFIG proxy.config.http.keep_alive_no_activity_timeout_in INT 600
CONFIG proxy.config.http.transaction_no_activity_timeout_in INT 600
EOF
    echo "$3" >"$d/etc/remap.config"
}

# run ROW: prints the instructions callgrind counted per request for the row.
run() {
    local row=$1 d=$dir/$1 port name rt code wl plugin="" i total f
    port=$(free_port)
    if [ "$row" = w3-lua ]; then
        # tslua doing W3's work (scripts/bench/ts_w3.lua), the Lua row of scripts/bench.sh.
        plugin="@plugin=tslua.so @pparam=$repo/scripts/bench/ts_w3.lua"
    elif [ "$row" = null-transform ]; then
        plugin="@plugin=$dir/ts_null_transform.so"
    elif [ "$row" != base ]; then
        name=${row%-*} rt=${row##*-}
        case $name in
            w2min) code=$dir/w2_min.wasm wl=- ;;
            w2all) code=$dir/w2_all.wasm wl=- ;;
            w2) code=$wasm wl=noop ;;
            w3 | w6) code=$wasm wl=w3 ;;
            *) echo "unknown row $row" >&2; return 1 ;;
        esac
        mkdir -p "$d"
        if [ "$name" = w6 ]; then
            w6_yaml "$d/p.yaml" "$row" "$wl" "$rt" "$code" 8
        else
            plugin_yaml "$d/p.yaml" "$row" "$wl" "$rt" "$code"
        fi
        plugin="@plugin=proxy_wasm_ats.so @pparam=$d/p.yaml"
    fi
    layout "$d" "$port" "map /l/$row/ http://127.0.0.1:1/ $plugin @plugin=generator.so"
    # The sync and the configuration callbacks are toggled off (see the top);
    # --collect-atstart must follow --toggle-collect, which turns it off.
    (cd "$d" && TS_RUNROOT="$d/runroot.yaml" PROXY_WASM_HOST_COMPILED_CACHE="$dir/compiled-cache" exec \
        valgrind --tool=callgrind --separate-threads=yes \
        '--toggle-collect=sync_cont::sync(int, Event*)' \
        '--toggle-collect=config_update_cont::exec_callbacks(int, Event*)' \
        --collect-atstart=yes --callgrind-out-file="$d/cg.out" "$ts" </dev/null >"$d/logs/valgrind.out" 2>&1) &
    pid=$!
    # Compiling a module under valgrind takes minutes (the first row of a runtime).
    for ((i = 0; i < 2400; i++)); do
        grep -qsF "Traffic Server is fully initialized" "$d/logs/diags.log" && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { echo "$row: traffic_server exited: $(tail -n 5 "$d/logs/valgrind.out" "$d/logs/diags.log")" >&2; pid=""; return 1; }
        sleep 0.25
    done
    local url="http://127.0.0.1:$port/l/$row/nocache/64/x"
    local code1
    code1=$(curl -s -o /dev/null -w '%{http_code}' "$url") || true
    [ "$code1" = 200 ] || { echo "$row: the route answered $code1, not 200: $(tail -n 5 "$d/logs/diags.log")" >&2; kill -KILL "$pid"; pid=""; return 1; }
    curl -s -o /dev/null "$url?[1-$warm]"
    callgrind_control -z "$pid" >/dev/null 2>&1
    # One connection, n requests (curl reuses it for a URL range).
    curl -s -o /dev/null "$url?[1-$n]" || echo "$row: curl failed" >&2
    callgrind_control -d measured "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" || true
    pid=""
    total=0
    for f in "$d"/cg.out.1-*; do
        total=$((total + $(grep -m1 '^summary:' "$f" | awk '{print $2}')))
    done
    if [ -n "${CG_KEEP:-}" ]; then
        mkdir -p "$CG_KEEP"
        for f in "$d"/cg.out.1-*; do cp "$f" "$CG_KEEP/$row.${f##*.1-}.out"; done
    fi
    echo $((total / n))
}

printf '| Row | instructions per request (callgrind, user space) | added over base |\n|---|---:|---:|\n'
base=""
for row in $rows; do
    per=$(run "$row") || { printf '| %s | failed | |\n' "$row"; continue; }
    [ "$row" = base ] && base=$per
    added=""
    [ -n "$base" ] && [ "$row" != base ] && added="+$((per - base))"
    printf '| %s | %d | %s |\n' "$row" "$per" "$added"
done
