#!/usr/bin/env bash
# Benchmarks of the Proxy-Wasm host in Traffic Server 9.2 and NGINX 1.22 (issue 6).
#
#   make bench                  (installs what it needs, builds, runs this)
#   bash scripts/bench.sh       (expects the builds below to exist)
#
# Everything runs on 127.0.0.1. The server under test is pinned to CPU 0
# (Traffic Server: 1 exec thread; NGINX: 1 worker), wrk to CPU 1 (1 thread),
# and the origin (a second NGINX serving static files, 1 worker) also to CPU 1,
# so that the server under test has CPU 0 to itself.
#
# Per server it starts, side by side (the idle ones cost nothing):
#   base   the server without our module (W0; the baseline of every row)
#   wasm   the server with our module, one route per workload and runtime
#   lua    NGINX with lua-nginx-module (Traffic Server: tslua.so routes live in
#          the base instance, since a remap plugin only touches its own rules)
# "local" rows answer from the server itself (Traffic Server: generator.so;
# NGINX: `return 200`, or a static file for the 64 KiB body), "proxy" rows go
# to the origin. Each row is measured against the base instance's same route
# in the same run, alternating (A B, B A, ...), BENCH_ROUNDS rounds of
# BENCH_DURATION seconds each; the table shows medians, the ratio to the
# baseline, and the server's CPU time per request (utime+stime of the server
# process from /proc/<pid>/stat, divided by wrk's request count).
#
# Then: resident memory with and without the module and a filter loaded (1 and
# 2 threads/workers), start-up time with 0, 1 (compiled, and from the
# compiled-module cache: allow_precompiled) and 8 plugins (the 8 share the
# code: the 7 extra ones hit the in-process compiled-code cache), and with
# BENCH_LONG=1 a 5-minute run with RSS every 30 s.
#
# Rows that cannot run are printed as such, never estimated: a WAMR plugin the
# build refuses ("wamr: not available in this build"), a missing or refused
# NGINX module ("nginx module not built"), a route whose probe request fails.
#
# Environment (defaults in brackets):
#   BENCH_ROUNDS [3]  BENCH_DURATION [2] (s)  BENCH_WARMUP [1] (s)
#   BENCH_CONNECTIONS [16]   BENCH_SERVERS ["ats nginx"]   BENCH_MODES ["local proxy"]
#   BENCH_RUNTIMES ["wasmtime wamr"]   BENCH_ROWS (space-separated row ids to run, e.g. "W0 W3 W3-lua W3-oto";
#                  "none": only memory and start-up)
#   BENCH_SERVER_CPU [0]  BENCH_CLIENT_CPU [1]
#   BENCH_ATS_SO [build/bench/proxy_wasm_ats.so, else build/proxy_wasm_ats.so]
#   BENCH_NGINX_SO [build/bench/ngx_http_proxy_wasm_module.so, else build/ngx_http_proxy_wasm_module.so]
#   BENCH_WASM [build/plugins/bench_filter.wasm]
#   BENCH_OUT [build/bench/results.md]  (the report is also printed)
#   BENCH_LONG=1  the 5-minute run (W3, wasmtime, local, on each server with the module)
#   BENCH_LONG_SECONDS [300]  BENCH_LONG_SAMPLE [30]
#   BENCH_SKIP_EXTRAS=1  only the throughput table
#   KEEP=1  keep the temporary directory
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
benchdir=$repo/scripts/bench

ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-2}
WARMUP=${BENCH_WARMUP:-1}
CONNS=${BENCH_CONNECTIONS:-16}
SERVERS=${BENCH_SERVERS:-ats nginx}
MODES=${BENCH_MODES:-local proxy}
RUNTIMES=${BENCH_RUNTIMES:-wasmtime wamr}
ROWS_FILTER=${BENCH_ROWS:-}
SCPU=${BENCH_SERVER_CPU:-0}
CCPU=${BENCH_CLIENT_CPU:-1}
if [ -n "${BENCH_ATS_SO:-}" ]; then
    ATS_SO=$BENCH_ATS_SO
elif [ -f "$repo/build/bench/proxy_wasm_ats.so" ]; then
    ATS_SO=$repo/build/bench/proxy_wasm_ats.so
else
    ATS_SO=$repo/build/proxy_wasm_ats.so
fi
if [ -n "${BENCH_NGINX_SO:-}" ]; then
    NGX_SO=$BENCH_NGINX_SO
elif [ -f "$repo/build/bench/ngx_http_proxy_wasm_module.so" ]; then
    NGX_SO=$repo/build/bench/ngx_http_proxy_wasm_module.so
else
    NGX_SO=$repo/build/ngx_http_proxy_wasm_module.so
fi
WASM=${BENCH_WASM:-$repo/build/plugins/bench_filter.wasm}
TEST_WASM=$repo/build/plugins/rust_sdk_filter.wasm
OUT=${BENCH_OUT:-$repo/build/bench/results.md}
LONG=${BENCH_LONG:-0}
LONG_SECONDS=${BENCH_LONG_SECONDS:-300}
LONG_SAMPLE=${BENCH_LONG_SAMPLE:-30}

TRAFFIC_SERVER=/usr/bin/traffic_server
NGINX=/usr/sbin/nginx
ATS_MODULES=/usr/lib/trafficserver/modules
NGX_MODULES=/usr/lib/nginx/modules
READY_LINE="Traffic Server is fully initialized"
SMALL=64      # body size of every row but W5
CLK_TCK=$(getconf CLK_TCK)

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wrk, the Lua module for NGINX and NGINX itself (the origin) are not in
# scripts/install-deps.sh: only the benchmarks need them.
need=()
for p in wrk nginx libnginx-mod-http-lua curl wabt; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${need[*]} (run as root, or install them)"
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
for cmd in wrk taskset curl python3 wat2wasm "$TRAFFIC_SERVER" "$NGINX"; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (make bench installs it)"
done
[ -f "$WASM" ] || die "$WASM missing (bash scripts/build-plugins.sh bench)"
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 CPUs; server and wrk share a CPU"

dir=$(mktemp -d "${TMPDIR:-/tmp}/pw-bench.XXXXXX")
chmod 755 "$dir" # NGINX workers run as nobody
mkdir -p "$dir/www" "$(dirname "$OUT")"
PIDS=()          # every process we start (session leaders)

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? p
    set +e
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [ -n "${KEEP:-}" ] || [ "$rc" -ne 0 ]; then log "kept $dir"; else rm -rf "$dir"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
now_ns() { date +%s%N; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Anonymous memory (heap, stacks, linear memories): what a process holds for
# itself. RSS also counts the pages of code it has run (the module's own and
# Wasmtime's compiler), which are file-backed, shared by every process that
# maps the library, and reclaimable.
anon_kib() { awk '/^Anonymous:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
mib() { python3 -c "print('%.1f' % ($1 / 1024))"; }
dmib() { python3 -c "print('%+.1f' % (($1 - $2) / 1024))"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Bodies for the origin and the static-file local route.
python3 - "$dir/www" "$SMALL" <<'PY'
import sys
d, small = sys.argv[1], int(sys.argv[2])
# No newline, quote or $: the same text is NGINX's `return 200 "..."` body.
line = b"the quick brown fox jumps over the lazy dog 0123456789 abcdefghij. "
for n in (small, 1024, 65536):
    data = (line * (n // len(line) + 1))[:n]
    open("%s/s%d" % (d, n), "wb").write(data)
PY
body_text() { cat "$dir/www/s$1"; } # for NGINX `return 200 "..."`

# The hand-written modules of W2-min and W2-all (scripts/bench/*.wat).
W2_MIN_WASM=$dir/w2_min.wasm
W2_ALL_WASM=$dir/w2_all.wasm
wat2wasm "$benchdir/w2_min.wat" -o "$W2_MIN_WASM" || die "scripts/bench/w2_min.wat does not compile"
wat2wasm "$benchdir/w2_all.wat" -o "$W2_ALL_WASM" || die "scripts/bench/w2_all.wat does not compile"
chmod 644 "$W2_MIN_WASM" "$W2_ALL_WASM"

# ------------------------------------------------------------------ the origin
start_origin() {
    local d=$dir/origin
    mkdir -p "$d/conf" "$d/logs" "$d/tmp"
    ORIGIN_PORT=$(free_port)
    cat >"$d/conf/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy; fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
    keepalive_requests 1000000; keepalive_timeout 120s;
    default_type text/plain;
    server { listen 127.0.0.1:$ORIGIN_PORT; root $dir/www; location / { } }
}
EOF
    (exec setsid taskset -c "$CCPU" "$NGINX" -p "$d" -c "$d/conf/nginx.conf" -g 'daemon off;' </dev/null >"$d/logs/out" 2>&1) &
    PIDS+=($!)
    local i
    for ((i = 0; i < 200; i++)); do port_open "$ORIGIN_PORT" && return 0; sleep 0.02; done
    die "the origin did not start ($(tail -3 "$d/logs/error.log" "$d/logs/out" 2>/dev/null))"
}

# ---------------------------------------------------------------- plugin YAML
# wasm_yaml FILE NAME WORKLOAD RUNTIME [COUNT] [WASM]: a YAML with COUNT (1) plugins of the bench
# filter (or of the module WASM).
wasm_yaml() {
    local file=$1 name=$2 workload=$3 runtime=$4 count=${5:-1} code=${6:-$WASM} i
    {
        echo "plugins:"
        for ((i = 1; i <= count; i++)); do
            cat <<EOF
  - config:
      name: "$name-$i"
      root_id: ""
      configuration: "$workload"
      vm_config:
        runtime: "$runtime"
        vm_id: "$name"
        allow_precompiled: ${PRECOMPILED:-false}
        code:
          local:
            filename: "$code"
EOF
        done
    } >"$file"
}
# The Rust test filter (tests/plugins/rust-sdk-filter), for the memory and load-time rows.
test_yaml() {
    cat >"$1" <<EOF
config:
  name: "rust-test-filter"
  root_id: ""
  configuration: |
    {"tag": "bench"}
  vm_config:
    runtime: "wasmtime"
    vm_id: "rust_test"
    allow_precompiled: ${PRECOMPILED:-false}
    code:
      local:
        filename: "$TEST_WASM"
EOF
}

# Workloads with a wasm route: route name -> workload, plugin count, and the
# module when it is not the bench filter (W2-min, W2-all: hand-written WAT).
WASM_ROUTES="w2:noop:1 w2min:-:1:$W2_MIN_WASM w2all:-:1:$W2_ALL_WASM w3:w3:1 w4:w4:1 w5:w5:1 w6:w3:8 w7:w7:1"

# W3-oto (issue 14): an Otoroshi access-control plugin per request, the Wasmo template built
# with the AssemblyScript PDK (examples/otoroshi/access-control.json, unchanged but for its
# module's path): a request with `foo: bar` is allowed, any other gets 401.
OTO_WASM=${BENCH_OTO_WASM:-$repo/build/plugins/otoroshi_as_template_access_control.wasm}
OTO_HEADER="foo: bar"
# oto_yaml FILE ID RUNTIME [SETTINGS]: the entity as id ID; with SETTINGS, `otoroshi.runtime: RUNTIME`.
oto_yaml() {
    local file=$1 id=$2 runtime=$3 settings=${4:-yes}
    python3 - "$repo/examples/otoroshi/access-control.json" "$OTO_WASM" "$id" >"$file.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["config"]["source"]["path"] = sys.argv[2]
doc["id"] = sys.argv[3]
print(json.dumps(doc))
PY
    {
        [ "$settings" = yes ] && printf 'otoroshi:\n  runtime: %s\n' "$runtime"
        printf 'wasm_plugins:\n  - %s\n' "$(cat "$file.json")"
    } >"$file"
}

# ------------------------------------------------------------- Traffic Server
# ats_layout NAME: a private runroot in $dir/NAME (as tests/e2e/ats.rs and scripts/demo-ats.sh).
ats_layout() {
    local d=$dir/$1 p
    ats_runroot "$d"
    : >"$d/etc/remap.config"
    for p in "$ATS_MODULES"/*; do ln -sf "$p" "$d/plugins/$(basename "$p")"; done
    [ -f "$ATS_SO" ] && ln -sf "$ATS_SO" "$d/plugins/proxy_wasm_ats.so"
    return 0
}
# ats_start NAME THREADS: starts it on a free port (ATS_PORT, ATS_PID); returns 1 if it failed.
ats_start() {
    local d=$dir/$1 threads=$2 i
    ATS_PORT=$(free_port)
    {
        cat "$d/records.config.stock"
        cat <<EOF
CONFIG proxy.config.admin.user_id STRING #-1
CONFIG proxy.config.crash_log_helper STRING NULL
CONFIG proxy.config.http.server_ports STRING $ATS_PORT:ip-in=127.0.0.1
CONFIG proxy.config.http.cache.http INT 0
CONFIG proxy.config.reverse_proxy.enabled INT 1
CONFIG proxy.config.url_remap.remap_required INT 1
CONFIG proxy.config.url_remap.pristine_host_hdr INT 1
CONFIG proxy.config.exec_thread.autoconfig INT 0
CONFIG proxy.config.exec_thread.limit INT $threads
CONFIG proxy.config.accept_threads INT 0
CONFIG proxy.config.diags.debug.enabled INT 0
CONFIG proxy.config.diags.output.diag STRING L
CONFIG proxy.config.diags.logfile.rolling_enabled INT 0
CONFIG proxy.config.log.logging_enabled INT 0
CONFIG proxy.config.plugin.plugin_dir STRING $d/plugins
CONFIG proxy.config.body_factory.template_sets_dir STRING $d/etc/body_factory
CONFIG proxy.config.net.connections_throttle INT 10000
CONFIG proxy.config.http.keep_alive_no_activity_timeout_in INT 120
CONFIG proxy.config.http.server_session_sharing.match STRING both
EOF
    } >"$d/etc/records.config"
    rm -f "$d/logs"/*
    T_START=$(now_ns)
    (cd "$d" && TS_RUNROOT="$d/runroot.yaml" PROXY_WASM_HOST_COMPILED_CACHE="$dir/compiled-cache" exec setsid taskset -c "$SCPU" "$TRAFFIC_SERVER" </dev/null >"$d/logs/traffic.out" 2>&1) &
    ATS_PID=$!
    PIDS+=("$ATS_PID")
    for ((i = 0; i < 3000; i++)); do # 30 s
        if grep -qsF "$READY_LINE" "$d/logs/diags.log" && port_open "$ATS_PORT"; then
            T_READY=$(now_ns)
            return 0
        fi
        kill -0 "$ATS_PID" 2>/dev/null || { log "traffic_server ($1) exited: $(tail -5 "$d/logs/diags.log" "$d/logs/traffic.out" 2>/dev/null)"; return 1; }
        sleep 0.01
    done
    log "traffic_server ($1) did not start"
    return 1
}

# remap lines. Local: generator.so answers /nocache/<size>/x; proxy: the origin's /s<size>.
ats_rule() { # MODE ROUTE PLUGIN-PARAMS...
    local mode=$1 route=$2
    shift 2
    if [ "$mode" = l ]; then
        echo "map /l/$route/ http://127.0.0.1:1/ $* @plugin=generator.so"
    else
        echo "map /p/$route/ http://127.0.0.1:$ORIGIN_PORT/ $*"
    fi
}
ats_setup() {
    local m r name wl count rt
    # base: no proxy_wasm_ats.so; tslua routes
    ats_layout ats-base
    cp "$benchdir/ts_w3.lua" "$benchdir/ts_w4.lua" "$dir/ats-base/etc/"
    for m in l p; do
        ats_rule $m base
        ats_rule $m lua3 "@plugin=tslua.so @pparam=$dir/ats-base/etc/ts_w3.lua"
        ats_rule $m lua4 "@plugin=tslua.so @pparam=$dir/ats-base/etc/ts_w4.lua"
    done >"$dir/ats-base/etc/remap.config"
    ats_start ats-base 1 || die "Traffic Server (base) does not start"
    ATS_BASE_PORT=$ATS_PORT ATS_BASE_PID=$ATS_PID

    # wasm: our module on one route per workload and runtime; w1 has none.
    ATS_WASM_PORT="" ATS_WASM_PID=""
    if [ ! -f "$ATS_SO" ]; then
        log "no $ATS_SO: Traffic Server wasm rows skipped"
        return 0
    fi
    ats_layout ats-wasm
    for m in l p; do
        ats_rule $m w1
        for rt in $RUNTIMES; do
            for r in $WASM_ROUTES; do
                IFS=: read -r name wl count code <<<"$r"
                wasm_yaml "$dir/ats-wasm/etc/$m-$name-$rt.yaml" "$m-$name-$rt" "$wl" "$rt" "$count" "${code:-$WASM}"
                ats_rule $m "$name-$rt" "@plugin=proxy_wasm_ats.so @pparam=$dir/ats-wasm/etc/$m-$name-$rt.yaml"
            done
            oto_yaml "$dir/ats-wasm/etc/$m-oto-$rt.yaml" "oto-$m-$rt" "$rt"
            ats_rule $m "oto-$rt" "@plugin=proxy_wasm_ats.so @pparam=$dir/ats-wasm/etc/$m-oto-$rt.yaml"
        done
    done >"$dir/ats-wasm/etc/remap.config"
    ats_start ats-wasm 1 || die "Traffic Server (wasm) does not start"
    ATS_WASM_PORT=$ATS_PORT ATS_WASM_PID=$ATS_PID
}

# ------------------------------------------------------------------------ NGINX
# ngx_conf NAME PORT MODULES HTTP-EXTRA SERVER-BODY: a private-prefix nginx.conf.
ngx_conf() {
    local d=$dir/$1
    mkdir -p "$d/conf" "$d/logs" "$d/tmp"
    cat >"$d/conf/nginx.conf" <<EOF
$3
worker_processes ${NGX_WORKERS:-1};
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy; fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
    keepalive_requests 1000000; keepalive_timeout 120s;
    default_type text/plain;
    upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
    map \$uri \$bench_body { ~/s1024\$ "$(body_text 1024)"; default "$(body_text $SMALL)"; }
$4
    server {
        listen 127.0.0.1:$2;
$5
    }
}
EOF
}
# ngx_locations ROUTE DIRECTIVES: a local and a proxy location for ROUTE.
ngx_locations() {
    local route=$1 directives=$2
    cat <<EOF
        location /l/$route/ {
            $directives
            location ~ /s65536\$ { alias $dir/www/s65536; }
            return 200 \$bench_body;
        }
        location /p/$route/ {
            $directives
            proxy_pass http://origin/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
EOF
}
# ngx_start NAME: NGX_PORT, NGX_PID (master), NGX_WORKER; returns 1 if nginx refused the config.
ngx_start() {
    local d=$dir/$1 i
    if ! "$NGINX" -t -q -p "$d" -c "$d/conf/nginx.conf" >"$d/logs/test.out" 2>&1; then
        log "nginx ($1) refuses its configuration: $(head -c 600 "$d/logs/test.out")"
        return 1
    fi
    T_START=$(now_ns)
    (exec setsid taskset -c "$SCPU" "$NGINX" -p "$d" -c "$d/conf/nginx.conf" -g 'daemon off;' </dev/null >"$d/logs/out" 2>&1) &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    for ((i = 0; i < 3000; i++)); do
        if port_open "$NGX_PORT"; then
            NGX_WORKER=$(pgrep -P "$NGX_PID" | head -n1 || true)
            if [ -n "$NGX_WORKER" ]; then
                T_READY=$(now_ns)
                return 0
            fi
        fi
        kill -0 "$NGX_PID" 2>/dev/null || { log "nginx ($1) exited: $(tail -5 "$d/logs/error.log" "$d/logs/out" 2>/dev/null)"; return 1; }
        sleep 0.01
    done
    log "nginx ($1) did not start"
    return 1
}
NGX_MODULE_NOTE=""
ngx_setup() {
    local r name wl count rt locs
    NGX_PORT=$(free_port)
    ngx_conf ngx-base "$NGX_PORT" "" "" "$(ngx_locations base "")"
    ngx_start ngx-base || die "NGINX (base) does not start"
    NGX_BASE_PORT=$NGX_PORT NGX_BASE_PID=$NGX_WORKER

    NGX_LUA_PORT="" NGX_LUA_PID=""
    if [ -f "$NGX_MODULES/ngx_http_lua_module.so" ]; then
        NGX_PORT=$(free_port)
        ngx_conf ngx-lua "$NGX_PORT" \
            "load_module $NGX_MODULES/ndk_http_module.so; load_module $NGX_MODULES/ngx_http_lua_module.so;" \
            "include $benchdir/ngx_lua.conf;" \
            "$(ngx_locations lua3 "include $benchdir/ngx_w3.conf;"; ngx_locations lua4 "include $benchdir/ngx_w4.conf;")"
        if ngx_start ngx-lua; then NGX_LUA_PORT=$NGX_PORT NGX_LUA_PID=$NGX_WORKER; fi
    else
        log "lua-nginx-module not installed (apt-get install libnginx-mod-http-lua): NGINX Lua rows skipped"
    fi

    NGX_WASM_PORT="" NGX_WASM_PID=""
    if [ ! -f "$NGX_SO" ]; then
        NGX_MODULE_NOTE="nginx module not built"
        return 0
    fi
    local yamls="" 
    locs=$(ngx_locations w1 "")
    mkdir -p "$dir/ngx-wasm"
    for rt in $RUNTIMES; do
        for r in $WASM_ROUTES; do
            IFS=: read -r name wl count code <<<"$r"
            wasm_yaml "$dir/ngx-wasm/$name-$rt.yaml" "$name-$rt" "$wl" "$rt" "$count" "${code:-$WASM}"
            yamls+=" $dir/ngx-wasm/$name-$rt.yaml"
            local chain="" i
            for ((i = 1; i <= count; i++)); do chain+="proxy_wasm $name-$rt-$i; "; done
            locs+=$'\n'"$(ngx_locations "$name-$rt" "$chain")"
        done
    done
    # One `otoroshi.runtime` per NGINX configuration: the entity runs on the runtime of the
    # configuration's first Proxy-Wasm plugin (the first of BENCH_RUNTIMES).
    NGX_OTO_RT=${RUNTIMES%% *}
    oto_yaml "$dir/ngx-wasm/oto.yaml" "oto" "$NGX_OTO_RT" no
    yamls+=" $dir/ngx-wasm/oto.yaml"
    locs+=$'\n'"$(ngx_locations "oto-$NGX_OTO_RT" "proxy_wasm oto;")"
    NGX_PORT=$(free_port)
    ngx_conf ngx-wasm "$NGX_PORT" "load_module $NGX_SO;" "proxy_wasm_config$yamls;" "$locs"
    if ngx_start ngx-wasm; then
        NGX_WASM_PORT=$NGX_PORT NGX_WASM_PID=$NGX_WORKER
    else
        # A runtime the build refuses fails the whole configuration: try without WAMR.
        if grep -q wamr "$dir/ngx-wasm/logs/test.out" 2>/dev/null && [[ " $RUNTIMES " == *" wamr "* ]]; then
            NGX_NO_WAMR=1
            yamls="" locs=$(ngx_locations w1 "")
            for r in $WASM_ROUTES; do
                IFS=: read -r name wl count code <<<"$r"
                yamls+=" $dir/ngx-wasm/$name-wasmtime.yaml"
                local chain="" i
                for ((i = 1; i <= count; i++)); do chain+="proxy_wasm $name-wasmtime-$i; "; done
                locs+=$'\n'"$(ngx_locations "$name-wasmtime" "$chain")"
            done
            ngx_conf ngx-wasm "$NGX_PORT" "load_module $NGX_SO;" "proxy_wasm_config$yamls;" "$locs"
            if ngx_start ngx-wasm; then NGX_WASM_PORT=$NGX_PORT NGX_WASM_PID=$NGX_WORKER; return 0; fi
        fi
        NGX_MODULE_NOTE="nginx module not built (nginx refuses it: $(grep -m1 -o 'emerg\].*' "$dir/ngx-wasm/logs/test.out" | head -c 160))"
    fi
}

# ------------------------------------------------------------------ measuring
# url SERVER-PORT MODE ROUTE SIZE
url() {
    local port=$1 mode=$2 route=$3 size=$4
    if [ "$SERVER_KIND" = ats ] && [ "$mode" = l ]; then
        echo "http://127.0.0.1:$port/l/$route/nocache/$size/x"
    else
        echo "http://127.0.0.1:$port/$mode/$route/s$size"
    fi
}
# probe URL SIZE MARKER: 0 when the answer is 200 with SIZE body bytes (and MARKER header if given).
PROBE_NOTE=""
probe() {
    local u=$1 size=$2 marker=$3 out code len
    local hdr=()
    [ -n "${REQ_HEADER:-}" ] && hdr=(-H "$REQ_HEADER")
    out=$(curl -sS "${hdr[@]}" -o "$dir/probe.body" -D "$dir/probe.hdr" -w '%{http_code} %{size_download}' --max-time 10 "$u" 2>&1) || { PROBE_NOTE="request failed: $out"; return 1; }
    read -r code len <<<"$out"
    if [ "$code" != 200 ]; then PROBE_NOTE="probe answered $code"; return 1; fi
    if [ "$len" != "$size" ]; then PROBE_NOTE="probe body $len bytes, expected $size"; return 1; fi
    case "$marker" in
        "") ;;
        body:*) grep -qF "${marker#body:}" "$dir/probe.body" || { PROBE_NOTE="the filter did not run (body not rewritten)"; return 1; } ;;
        *) grep -qi "^$marker:" "$dir/probe.hdr" || { PROBE_NOTE="the filter did not run (no $marker header)"; return 1; } ;;
    esac
    return 0
}
# run_wrk URL PID SECONDS: prints "rps cpu_us_per_req errors"
run_wrk() {
    local u=$1 pid=$2 secs=$3 c0 c1 out reqs rps errs
    c0=$(cpu_ticks "$pid")
    local hdr=()
    [ -n "${REQ_HEADER:-}" ] && hdr=(-H "$REQ_HEADER")
    out=$(taskset -c "$CCPU" wrk -t1 -c"$CONNS" -d"${secs}s" "${hdr[@]}" "$u" 2>&1) || true
    c1=$(cpu_ticks "$pid")
    reqs=$(awk '/requests in/ { print $1; exit }' <<<"$out")
    rps=$(awk '/^Requests\/sec:/ { print $2; exit }' <<<"$out")
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
    [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || { echo "0 0 1"; return; }
    python3 -c "import sys; t, r = int(sys.argv[1]), int(sys.argv[2]); print('%s %.2f %s' % (sys.argv[3], t * 1e6 / $CLK_TCK / r, sys.argv[4]))" "$((c1 - c0))" "$reqs" "$rps" "$errs"
}

ROWS_OUT=$dir/rows.tsv
: >"$ROWS_OUT"
emit() { # server mode row runtime rps base_rps ratio cpu base_cpu note
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$ROWS_OUT"
}
want_row() { [ -z "$ROWS_FILTER" ] || [[ " $ROWS_FILTER " == *" $1 "* ]]; }

# measure SERVER MODE ROW RUNTIME URL PID BASE_URL BASE_PID SIZE MARKER
measure() {
    local server=$1 mode=$2 row=$3 rt=$4 u=$5 pid=$6 bu=$7 bpid=$8 size=$9 marker=${10} r
    local mname; [ "$mode" = l ] && mname=local || mname=proxy
    if ! probe "$u" "$size" "$marker"; then
        local note=$PROBE_NOTE
        # A plugin the build refuses makes its route answer 503 (Traffic Server).
        if [ "$rt" = wamr ] && [[ $PROBE_NOTE == *"answered 503"* ]]; then note="wamr: not available in this build ($PROBE_NOTE)"; fi
        emit "$server" "$mname" "$row" "$rt" - - - - - "$note"
        log "$server $mname $row $rt: $note"
        return
    fi
    probe "$bu" "$size" "" || { emit "$server" "$mname" "$row" "$rt" - - - - - "baseline failed: $PROBE_NOTE"; return; }
    run_wrk "$bu" "$bpid" "$WARMUP" >/dev/null
    run_wrk "$u" "$pid" "$WARMUP" >/dev/null
    local a=() b=() ac=() bc=() errs=0 res rps cpu e
    for ((r = 1; r <= ROUNDS; r++)); do
        local order="b t"
        ((r % 2 == 0)) && order="t b"
        for w in $order; do
            if [ $w = b ]; then
                read -r rps cpu e < <(run_wrk "$bu" "$bpid" "$DURATION")
                b+=("$rps") bc+=("$cpu")
            else
                read -r rps cpu e < <(run_wrk "$u" "$pid" "$DURATION")
                a+=("$rps") ac+=("$cpu")
            fi
            errs=$((errs + e))
        done
    done
    res=$(python3 - "${a[*]}" "${b[*]}" "${ac[*]}" "${bc[*]}" <<'PY'
import sys, statistics as s
a, b, ac, bc = ([float(x) for x in v.split()] for v in sys.argv[1:5])
ma, mb, mac, mbc = s.median(a), s.median(b), s.median(ac), s.median(bc)
print("%.0f %.0f %.3f %.1f %.1f" % (ma, mb, ma / mb if mb else 0, mac, mbc))
PY
)
    local note=""
    [ "$errs" -gt 0 ] && note="$errs errors (non-2xx or socket) during the runs"
    read -r rps brps ratio cpu bcpu <<<"$res"
    emit "$server" "$mname" "$row" "$rt" "$rps" "$brps" "$ratio" "$cpu" "$bcpu" "$note"
    log "$server $mname $row $rt: $rps req/s vs $brps ($ratio), CPU $cpu vs $bcpu us/req $note"
}

# bench_server SERVER: every row on one server.
bench_server() {
    local server=$1 mode r name rt size marker base_port base_pid wasm_port wasm_pid lua_port lua_pid unavailable=""
    SERVER_KIND=$server
    if [ "$server" = ats ]; then
        base_port=$ATS_BASE_PORT base_pid=$ATS_BASE_PID wasm_port=$ATS_WASM_PORT wasm_pid=$ATS_WASM_PID
        lua_port=$ATS_BASE_PORT lua_pid=$ATS_BASE_PID
        [ -n "$wasm_port" ] || unavailable="proxy_wasm_ats.so not built"
    else
        base_port=$NGX_BASE_PORT base_pid=$NGX_BASE_PID wasm_port=$NGX_WASM_PORT wasm_pid=$NGX_WASM_PID
        lua_port=$NGX_LUA_PORT lua_pid=$NGX_LUA_PID
        [ -n "$wasm_port" ] || unavailable=${NGX_MODULE_NOTE:-nginx module not built}
    fi
    for mode in $MODES; do
        local m=${mode:0:1} mname=$mode
        local bs; bs=$(url "$base_port" "$m" base $SMALL)
        want_row W0 && measure "$server" "$m" W0 - "$bs" "$base_pid" "$bs" "$base_pid" $SMALL ""
        if [ -n "$unavailable" ]; then
            want_row W1 && emit "$server" "$mname" W1 - - - - - - "$unavailable"
        else
            want_row W1 && measure "$server" "$m" W1 - "$(url "$wasm_port" "$m" w1 $SMALL)" "$wasm_pid" "$bs" "$base_pid" $SMALL ""
        fi
        for r in W2:w2:$SMALL W2-min:w2min:$SMALL W2-all:w2all:$SMALL W3:w3:$SMALL W4:w4:$SMALL W5-1KiB:w5:1024 W5-64KiB:w5:65536 W6:w6:$SMALL W7:w7:$SMALL; do
            IFS=: read -r row name size <<<"$r"
            want_row "${row%%-*}" || want_row "$row" || continue
            marker=""
            case $name in w3 | w6) marker=x-bench-resp ;; w5) marker="body:THE QUICK BROWN FOX" ;; esac
            # generator.so's body is all "X": upper-casing leaves it as it is, nothing to check.
            [ "$server" = ats ] && [ "$m" = l ] && [ "$name" = w5 ] && marker=""
            for rt in $RUNTIMES; do
                if [ -n "$unavailable" ]; then
                    emit "$server" "$mname" "$row" "$rt" - - - - - "$unavailable"
                    continue
                fi
                if [ "$server" = nginx ] && [ "$rt" = wamr ] && [ -n "${NGX_NO_WAMR:-}" ]; then
                    emit "$server" "$mname" "$row" "$rt" - - - - - "wamr: not available in this build (nginx refused the configuration)"
                    continue
                fi
                measure "$server" "$m" "$row" "$rt" "$(url "$wasm_port" "$m" "$name-$rt" "$size")" "$wasm_pid" \
                    "$(url "$base_port" "$m" base "$size")" "$base_pid" "$size" "$marker"
            done
        done
        for r in W3-lua:lua3:x-bench-resp W4-lua:lua4:; do
            IFS=: read -r row name marker <<<"$r"
            want_row "${row%%-*}" || want_row "$row" || continue
            if [ -z "$lua_port" ]; then
                emit "$server" "$mname" "$row" lua - - - - - "Lua module not available"
                continue
            fi
            measure "$server" "$m" "$row" lua "$(url "$lua_port" "$m" "$name" $SMALL)" "$lua_pid" "$bs" "$base_pid" $SMALL "$marker"
        done
        if want_row W3-oto; then
            for rt in $RUNTIMES; do
                if [ -n "$unavailable" ]; then
                    emit "$server" "$mname" W3-oto "$rt" - - - - - "$unavailable"
                    continue
                fi
                if [ "$server" = nginx ] && [ "$rt" != "$NGX_OTO_RT" ]; then
                    emit "$server" "$mname" W3-oto "$rt" - - - - - "one otoroshi.runtime per NGINX configuration: run with BENCH_RUNTIMES=$rt"
                    continue
                fi
                local ou; ou=$(url "$wasm_port" "$m" "oto-$rt" $SMALL)
                # Without the header the entity answers 401: it runs.
                if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$ou")" != 401 ]; then
                    emit "$server" "$mname" W3-oto "$rt" - - - - - "the access-control entity did not answer 401 without its header"
                    continue
                fi
                REQ_HEADER=$OTO_HEADER measure "$server" "$m" W3-oto "$rt" "$ou" "$wasm_pid" "$bs" "$base_pid" $SMALL ""
            done
        fi
    done
}

# ------------------------------------------------------------ memory and load
EXTRAS=$dir/extras.md
: >"$EXTRAS"
median_of() { python3 -c 'import sys, statistics; print("%.1f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# ats_instance NAME THREADS PLUGIN-PARAMS: a Traffic Server with one local route; sets ATS_PORT ATS_PID.
ats_instance() {
    ats_layout "$1"
    echo "map /l/x/ http://127.0.0.1:1/ $3 @plugin=generator.so" >"$dir/$1/etc/remap.config"
    ats_start "$1" "$2"
}
warm() { # URL: requests on every thread
    taskset -c "$CCPU" wrk -t1 -c8 -d1s "$1" >/dev/null 2>&1 || true
}
memory_and_load_ats() {
    local t variant params rss mem_rows="" i n
    wasm_yaml "$dir/mem-noop.yaml" mem-noop noop wasmtime 1
    wasm_yaml "$dir/mem-w3.yaml" mem-w3 w3 wasmtime 1
    wasm_yaml "$dir/mem-wamr.yaml" mem-wamr noop wamr 1
    wasm_yaml "$dir/mem-8.yaml" mem-8 w3 wasmtime 8
    test_yaml "$dir/mem-test.yaml"
    PRECOMPILED=true wasm_yaml "$dir/mem-noop-cc.yaml" mem-noop noop wasmtime 1
    PRECOMPILED=true test_yaml "$dir/mem-test-cc.yaml"
    # Prime the compiled-module cache for the "code from the compiled-module cache" rows.
    if [ -f "$ATS_SO" ] && ats_instance mem-prime 1 "@plugin=proxy_wasm_ats.so @pparam=$dir/mem-test-cc.yaml"; then
        stop_pid "$ATS_PID"
    fi
    echo "### Traffic Server: resident memory (VmRSS, and its anonymous part, after 1 s of load on every thread)" >>"$EXTRAS"
    echo >>"$EXTRAS"
    echo "| Exec threads | Configuration | RSS MiB | Extra RSS over no module, MiB | Anonymous MiB | Extra anonymous, MiB |" >>"$EXTRAS"
    echo "|---|---|---|---|---|---|" >>"$EXTRAS"
    for t in 1 2; do
        local base_rss="" base_anon="" anon
        for variant in "no module:" "module, no filter on the route:@plugin=proxy_wasm_ats.so @pparam=$dir/mem-empty-marker" \
            "bench filter (noop, wasmtime):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-noop.yaml" \
            "Rust test filter (wasmtime):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-test.yaml" \
            "Rust test filter (wasmtime, code from the compiled-module cache):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-test-cc.yaml" \
            "bench filter (noop, wamr):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-wamr.yaml" \
            "8 x W3 filter (wasmtime, one VM):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-8.yaml"; do
            local label=${variant%%:*} params=${variant#*:}
            if [[ $params == *mem-empty-marker* ]]; then
                # the module loaded on another rule, none on the measured one
                params=""
                ats_layout "mem-$t-w1"
                printf 'map /l/x/ http://127.0.0.1:1/ @plugin=generator.so\nmap /l/y/ http://127.0.0.1:1/ @plugin=proxy_wasm_ats.so @pparam=%s @plugin=generator.so\n' "$dir/mem-noop.yaml" >"$dir/mem-$t-w1/etc/remap.config"
                ats_start "mem-$t-w1" "$t" || { echo "| $t | $label | - | did not start |" >>"$EXTRAS"; continue; }
            else
                [ -z "$params" ] || [ -f "$ATS_SO" ] || continue
                ats_instance "mem-$t-$(echo "$label" | tr -c 'a-z0-9' '_')" "$t" "$params" || { echo "| $t | $label | - | did not start |" >>"$EXTRAS"; continue; }
            fi
            if ! probe "http://127.0.0.1:$ATS_PORT/l/x/nocache/$SMALL/x" $SMALL ""; then
                local note=$PROBE_NOTE
                [[ $label == *wamr* ]] && [[ $note == *"answered 503"* ]] && note="wamr: not available in this build ($note)"
                echo "| $t | $label | - | $note |" >>"$EXTRAS"
                stop_pid "$ATS_PID"
                continue
            fi
            warm "http://127.0.0.1:$ATS_PORT/l/x/nocache/$SMALL/x"
            rss=$(rss_kib "$ATS_PID")
            anon=$(anon_kib "$ATS_PID")
            if [ -z "$base_rss" ]; then
                base_rss=$rss base_anon=$anon
                echo "| $t | $label | $(mib "$rss") | - | $(mib "$anon") | - |" >>"$EXTRAS"
            else
                echo "| $t | $label | $(mib "$rss") | $(dmib "$rss" "$base_rss") | $(mib "$anon") | $(dmib "$anon" "$base_anon") |" >>"$EXTRAS"
            fi
            stop_pid "$ATS_PID"
        done
    done
    echo >>"$EXTRAS"

    # Start-up time: traffic_server exec to "fully initialized" + port open, median of 5.
    [ -f "$ATS_SO" ] || return 0
    echo "### Traffic Server: start-up time (exec to ready, median of 5; 1 exec thread)" >>"$EXTRAS"
    echo >>"$EXTRAS"
    echo "| Configuration | Start-up ms | Over no module, ms | Inside the host: code load + first start of the VMs, ms |" >>"$EXTRAS"
    echo "|---|---|---|---|" >>"$EXTRAS"
    local base_ms="" one_ms=""
    for variant in "no module:" "1 plugin (bench filter, wasmtime):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-noop.yaml" \
        "1 plugin (Rust test filter, wasmtime):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-test.yaml" \
        "1 plugin (bench filter, wasmtime, compiled-module cache hit):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-noop-cc.yaml" \
        "1 plugin (Rust test filter, wasmtime, compiled-module cache hit):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-test-cc.yaml" \
        "8 plugins, same code (1 compile + 7 cache hits):@plugin=proxy_wasm_ats.so @pparam=$dir/mem-8.yaml"; do
        local label=${variant%%:*} params=${variant#*:} times=() host=()
        if [[ $label == *cache* ]]; then # one untimed start stores the compiled code
            ats_instance "load-prime-$(echo "$label" | tr -c 'a-z0-9' '_' | head -c 20)" 1 "$params" && stop_pid "$ATS_PID"
            grep -h 'compiled-module cache' "$dir"/load-prime-*/logs/diags.log 2>/dev/null | tail -n 1 | sed 's/^/bench: /' >&2 || true
            rm -rf "$dir"/load-prime-*
        fi
        for ((i = 1; i <= 5; i++)); do
            ats_instance "load-$i-$(echo "$label" | tr -c 'a-z0-9' '_' | head -c 20)" 1 "$params" || break
            times+=("$(( (T_READY - T_START) / 1000 ))")
            # The plugin logs how long loading the code and starting its VMs took.
            local logf; logf=$(ls "$dir/load-$i-"*/logs/diags.log 2>/dev/null | head -n 1)
            if [ -n "$logf" ] && grep -q 'started the VMs of' "$logf"; then
                host+=("$(python3 - "$logf" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
load = sum(float(m) for m in re.findall(r"loaded plugin .*? in ([0-9.]+) ms", text))
start = sum(float(m) for m in re.findall(r"started the VMs of .*? in ([0-9.]+) ms", text))
print("%d" % ((load + start) * 1000))
PY
)")
            fi
            stop_pid "$ATS_PID"
            rm -rf "$dir/load-$i-"*
        done
        [ ${#times[@]} -gt 0 ] || { echo "| $label | did not start | - |" >>"$EXTRAS"; continue; }
        n=$(median_of "${times[@]}")
        n=$(python3 -c "print('%.1f' % ($n / 1000))")
        local h="-"
        [ ${#host[@]} -gt 0 ] && h=$(python3 -c "print('%.2f' % ($(median_of "${host[@]}") / 1000))")
        if [ -z "$base_ms" ]; then base_ms=$n; echo "| $label | $n | - | - |" >>"$EXTRAS"
        else echo "| $label | $n | $(python3 -c "print('%+.1f' % ($n - $base_ms))") | $h |" >>"$EXTRAS"; fi
        [ "$label" = "1 plugin (bench filter, wasmtime)" ] && one_ms=$n
        if [[ $label == 8* ]] && [ -n "$one_ms" ]; then
            echo >>"$EXTRAS"
            echo "Load of a plugin whose code is already compiled in the process (each of the 7 extra plugins; a difference of start-up medians, so noisy): $(python3 -c "print('%.2f' % (($n - $one_ms) / 7))") ms." >>"$EXTRAS"
            echo "Without \`allow_precompiled\` every process start compiles each distinct module once; the \"compiled-module cache hit\" rows set \`vm_config.allow_precompiled: true\` and \`PROXY_WASM_HOST_COMPILED_CACHE\` (primed by one untimed start), so the code is read from disk instead of compiled." >>"$EXTRAS"
        fi
    done
    echo >>"$EXTRAS"
}

memory_and_load_nginx() {
    [ -n "${NGX_WASM_PORT:-}" ] || { printf '### NGINX: memory and start-up\n\n%s\n\n' "${NGX_MODULE_NOTE:-nginx module not built}" >>"$EXTRAS"; return 0; }
    local w variant rss base_rss anon base_anon label
    wasm_yaml "$dir/mem-noop.yaml" mem-noop noop wasmtime 1
    wasm_yaml "$dir/mem-wamr.yaml" mem-wamr noop wamr 1
    test_yaml "$dir/mem-test.yaml"
    PRECOMPILED=true test_yaml "$dir/mem-test-cc.yaml"
    # The workers (user nobody) write and read the compiled-module cache; it
    # is primed by one untimed start, and named to them through `env`. The
    # host uses a cache folder only when no one but its user (or root) can
    # write it: the workers' own, mode 0700.
    local ngx_cache=$dir/ngx-compiled-cache
    mkdir -p "$ngx_cache" && chmod 700 "$ngx_cache"
    if [ "$(id -u)" = 0 ]; then chown nobody "$ngx_cache"; fi
    local cache_env="env PROXY_WASM_HOST_COMPILED_CACHE=$ngx_cache;"
    NGX_PORT=$(free_port)
    NGX_WORKERS=1 ngx_conf ngxmem-prime "$NGX_PORT" "load_module $NGX_SO; $cache_env" "proxy_wasm_config $dir/mem-test-cc.yaml;" "$(ngx_locations x "proxy_wasm rust-test-filter;")"
    if ngx_start ngxmem-prime; then SERVER_KIND=nginx; warm "$(url "$NGX_PORT" l x $SMALL)"; stop_pid "$NGX_PID"; fi
    echo "### NGINX: resident memory of a worker (VmRSS, and its anonymous part, after 1 s of load)" >>"$EXTRAS"
    echo >>"$EXTRAS"
    echo "| Workers | Configuration | RSS MiB per worker | Extra RSS over no module, MiB | Anonymous MiB per worker | Extra anonymous, MiB |" >>"$EXTRAS"
    echo "|---|---|---|---|---|---|" >>"$EXTRAS"
    for w in 1 2; do
        base_rss="" base_anon=""
        for variant in "no module" "bench filter (noop, wasmtime)" "Rust test filter (wasmtime)" "Rust test filter (wasmtime, code from the compiled-module cache)" "bench filter (noop, wamr)"; do
            local name="ngxmem-$w-$(echo "$variant" | md5sum | head -c 8)"
            NGX_PORT=$(free_port)
            case "$variant" in
                "no module") NGX_WORKERS=$w ngx_conf "$name" "$NGX_PORT" "" "" "$(ngx_locations x "")" ;;
                *wamr*) NGX_WORKERS=$w ngx_conf "$name" "$NGX_PORT" "load_module $NGX_SO;" "proxy_wasm_config $dir/mem-wamr.yaml;" "$(ngx_locations x "proxy_wasm mem-wamr-1;")" ;;
                "bench"*) NGX_WORKERS=$w ngx_conf "$name" "$NGX_PORT" "load_module $NGX_SO;" "proxy_wasm_config $dir/mem-noop.yaml;" "$(ngx_locations x "proxy_wasm mem-noop-1;")" ;;
                *cache*) NGX_WORKERS=$w ngx_conf "$name" "$NGX_PORT" "load_module $NGX_SO; $cache_env" "proxy_wasm_config $dir/mem-test-cc.yaml;" "$(ngx_locations x "proxy_wasm rust-test-filter;")" ;;
                *) NGX_WORKERS=$w ngx_conf "$name" "$NGX_PORT" "load_module $NGX_SO;" "proxy_wasm_config $dir/mem-test.yaml;" "$(ngx_locations x "proxy_wasm rust-test-filter;")" ;;
            esac
            ngx_start "$name" || { echo "| $w | $variant | - | refused |" >>"$EXTRAS"; continue; }
            SERVER_KIND=nginx
            warm "$(url "$NGX_PORT" l x $SMALL)"
            rss=0 anon=0
            local p; for p in $(pgrep -P "$NGX_PID"); do rss=$((rss + $(rss_kib "$p"))); anon=$((anon + $(anon_kib "$p"))); done
            rss=$((rss / w)) anon=$((anon / w))
            if [ -z "$base_rss" ]; then base_rss=$rss base_anon=$anon; echo "| $w | $variant | $(mib "$rss") | - | $(mib "$anon") | - |" >>"$EXTRAS"
            else echo "| $w | $variant | $(mib "$rss") | $(dmib "$rss" "$base_rss") | $(mib "$anon") | $(dmib "$anon" "$base_anon") |" >>"$EXTRAS"; fi
            stop_pid "$NGX_PID"
        done
    done
    echo >>"$EXTRAS"
}

long_run() { # SERVER PORT PID URL
    local server=$1 u=$4 pid=$3 s out rps
    echo "### $server: long run (W3, wasmtime, local; $LONG_SECONDS s, RSS every $LONG_SAMPLE s)" >>"$EXTRAS"
    echo >>"$EXTRAS"
    echo "| t (s) | req/s in the last interval | RSS MiB |" >>"$EXTRAS"
    echo "|---|---|---|" >>"$EXTRAS"
    echo "| 0 | - | $(python3 -c "print('%.1f' % ($(rss_kib "$pid") / 1024))") |" >>"$EXTRAS"
    for ((s = LONG_SAMPLE; s <= LONG_SECONDS; s += LONG_SAMPLE)); do
        read -r rps _ _ < <(run_wrk "$u" "$pid" "$LONG_SAMPLE")
        echo "| $s | $rps | $(python3 -c "print('%.1f' % ($(rss_kib "$pid") / 1024))") |" >>"$EXTRAS"
        log "long run $server: ${s}s $rps req/s"
    done
    echo >>"$EXTRAS"
}

# ----------------------------------------------------------------------- main
T0=$(date +%s)
log "rounds $ROUNDS x ${DURATION}s (+${WARMUP}s warm-up), $CONNS connections; server on CPU $SCPU, wrk and origin on CPU $CCPU"
log "Traffic Server plugin: $ATS_SO; NGINX module: $NGX_SO"
start_origin
for server in $SERVERS; do
    case $server in
        ats) ats_setup; bench_server ats ;;
        nginx) ngx_setup; bench_server nginx ;;
        *) die "unknown server $server" ;;
    esac
    if [ "$LONG" = 1 ]; then
        if [ "$server" = ats ] && [ -n "$ATS_WASM_PORT" ]; then SERVER_KIND=ats; long_run "Traffic Server" "$ATS_WASM_PORT" "$ATS_WASM_PID" "$(url "$ATS_WASM_PORT" l w3-wasmtime $SMALL)"; fi
        if [ "$server" = nginx ] && [ -n "$NGX_WASM_PORT" ]; then SERVER_KIND=nginx; long_run NGINX "$NGX_WASM_PORT" "$NGX_WASM_PID" "$(url "$NGX_WASM_PORT" l w3-wasmtime $SMALL)"; fi
    fi
done
# Stop the throughput instances before the memory and start-up measurements.
for p in "${PIDS[@]:1}"; do stop_pid "$p"; done
if [ "${BENCH_SKIP_EXTRAS:-0}" != 1 ]; then
    for server in $SERVERS; do
        case $server in
            ats) memory_and_load_ats ;;
            nginx) memory_and_load_nginx ;;
        esac
    done
fi

# -------------------------------------------------------------------- report
{
    echo "## Results $(date -u '+%Y-%m-%d %H:%M UTC') ($(hostname))"
    echo
    echo "Rounds: $ROUNDS x ${DURATION} s per side (alternating, after ${WARMUP} s warm-up each), wrk 1 thread / $CONNS connections on CPU $CCPU;"
    echo "server on CPU $SCPU (1 exec thread / 1 worker); origin NGINX on CPU $CCPU. Body $SMALL bytes unless the row says otherwise."
    echo "Baseline: the same route on the same server without any module (W0), measured in the same run."
    echo "CPU µs/req: server process CPU time (utime+stime, /proc, ${CLK_TCK} Hz ticks) / requests; \"added\" = row − baseline."
    echo
    python3 - "$ROWS_OUT" <<'PY'
import sys
names = {"ats": "Traffic Server", "nginx": "NGINX"}
print("| Server | Mode | Row | Runtime | req/s | baseline req/s | ratio | CPU µs/req | baseline CPU µs/req | added CPU µs/req | note |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    server, mode, row, rt, rps, brps, ratio, cpu, bcpu, note = f
    added = "-"
    if cpu not in ("-", "") and bcpu not in ("-", ""):
        added = "%+.1f" % (float(cpu) - float(bcpu))
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (names.get(server, server), mode, row, rt, rps, brps, ratio, cpu, bcpu, added, note))
PY
    echo
    cat "$EXTRAS"
    echo "Total time: $(( $(date +%s) - T0 )) s."
} >"$OUT"
cat "$OUT"
log "report written to $OUT"
