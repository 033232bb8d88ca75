#!/usr/bin/env bash
# Demo of proxy_wasm_ats.so in a real, private Traffic Server (Debian 12, as root).
#
#   bash scripts/demo-ats.sh          (`make demo` runs it after building)
#
# Uses build/proxy_wasm_ats.so and build/plugins/rust_sdk_filter.wasm (build
# them first: `make plugins ats`), and the example configuration in
# ats-config/ (plugin.config, filter.yaml). In a temporary directory it lays
# out a runroot like tests/e2e/ats.rs does, starts a small Python origin and
# traffic_server on free 127.0.0.1 ports, sends a few requests with curl,
# prints them with their answers and the plugin's lines from diags.log, and
# stops everything. Exit status 0 when every answer is as expected; otherwise
# non-zero, with the tails of the logs.
#
# Environment: PROXY_WASM_ATS_SO (another build of the plugin), KEEP=1 (keep
# the temporary directory), DEMO_DEBUG_LINES (how many plugin debug lines of
# diags.log to show, default 40).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
so=${PROXY_WASM_ATS_SO:-$repo/build/proxy_wasm_ats.so}
wasm=$repo/build/plugins/rust_sdk_filter.wasm
conf=$repo/ats-config
debug_lines=${DEMO_DEBUG_LINES:-40}

TRAFFIC_SERVER=/usr/bin/traffic_server
SYSTEM_CONFIG_DIR=/etc/trafficserver
SYSTEM_PLUGIN_DIR=/usr/lib/trafficserver/modules
READY_LINE="Traffic Server is fully initialized"

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
die() { echo "demo-ats: FAILED: $*" >&2; exit 1; }

for f in "$so" "$wasm" "$conf/plugin.config" "$conf/filter.yaml"; do
    [ -f "$f" ] || die "missing $f (build with: make plugins ats)"
done
for cmd in "$TRAFFIC_SERVER" curl python3; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (run: bash scripts/install-deps.sh)"
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/pw-demo-ats.XXXXXX")
etc=$dir/etc
logs=$dir/logs
ts_pid=""
origin_pid=""

# Stops a process (and, for a session leader, its group): SIGTERM, up to 5 s, SIGKILL.
stop_process() {
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

show_tail() { # file lines
    [ -s "$1" ] || return 0
    echo "--- ${1#"$dir"/} (last $2 lines) ---" >&2
    tail -n "$2" "$1" >&2
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
        echo "demo-ats: failed (exit $rc); logs of $dir:" >&2
        show_tail "$logs/diags.log" 40
        show_tail "$logs/traffic.out" 30
        show_tail "$logs/error.log" 20
        show_tail "$dir/origin.log" 20
    fi
    stop_process "$ts_pid"
    stop_process "$origin_pid"
    if [ -n "${KEEP:-}" ]; then
        echo "demo-ats: kept $dir" >&2
    else
        rm -rf "$dir"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- the origin
# Answers every request with text naming the request and the x-pw-* headers it
# received (so the plugin's rewriting is visible), plus two headers the plugin
# rewrites on the way back. POST /callout is the plugin's http_call target.
cat >"$dir/origin.py" <<'PY'
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-origin"

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = [(k.lower(), v) for k, v in self.headers.items() if k.lower().startswith("x-pw-")]
        if self.path.startswith("/callout"):
            text = "pong from the origin (callout got %d bytes: %s)" % (len(body), body.decode("utf-8", "replace"))
            extra = [("x-origin-callout", "yes")]
        else:
            lines = ["hello from the origin: %s %s" % (self.command, self.path)]
            lines += ["origin saw %s: %s" % kv for kv in seen]
            text = "\n".join(lines) + "\n"
            extra = [("x-pw-resp-remove", "set by the origin"), ("x-pw-resp-replace", "set by the origin")]
        data = text.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        note = "".join(" %s=%s" % kv for kv in seen if kv[0] != "x-pw-test")
        print("origin: %s %s%s" % (self.command, self.path, note), file=sys.stderr, flush=True)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
PY
python3 -u "$dir/origin.py" "$dir/origin.port" >"$dir/origin.log" 2>&1 &
origin_pid=$!
for ((i = 0; i < 100; i++)); do
    [ -s "$dir/origin.port" ] && break
    kill -0 "$origin_pid" 2>/dev/null || die "the origin exited"
    sleep 0.05
done
[ -s "$dir/origin.port" ] || die "the origin did not start"
origin_port=$(cat "$dir/origin.port")

# ---------------------------------------------------- the Traffic Server layout
# As tests/e2e/ats.rs: runroot.yaml with absolute paths, a copy of
# /etc/trafficserver, our records appended, an empty storage.config, and a
# plugin dir with our plugin and the stock ones.
ats_runroot "$dir" "$SYSTEM_CONFIG_DIR"
cat >"$etc/ip_allow.yaml" <<'EOF'
# written by scripts/demo-ats.sh: loopback clients may use every method
ip_allow:
  - apply: in
    ip_addrs: 127.0.0.1
    action: allow
    methods: ALL
  - apply: in
    ip_addrs: ::1
    action: allow
    methods: ALL
EOF
# Every request (any Host) goes to the origin.
echo "map / http://127.0.0.1:$origin_port/" >"$etc/remap.config"
# The operator example, installed as ats-config/README.md says: plugin.config,
# the YAML and the wasm in the configuration dir; the callout upstream is our origin.
cp "$conf/plugin.config" "$etc/plugin.config"
sed "s/127\.0\.0\.1:8081/127.0.0.1:$origin_port/g" "$conf/filter.yaml" >"$etc/filter.yaml"
cp "$wasm" "$etc/rust_sdk_filter.wasm"
ln -s "$so" "$dir/plugins/proxy_wasm_ats.so"
for p in "$SYSTEM_PLUGIN_DIR"/*; do
    [ -e "$p" ] && [ ! -e "$dir/plugins/$(basename "$p")" ] && ln -s "$p" "$dir/plugins/$(basename "$p")"
done

write_records() { # port
    {
        cat "$dir/records.config.stock"
        echo
        echo "# ---- added by scripts/demo-ats.sh (as tests/e2e/ats.rs) ----"
        echo "CONFIG proxy.config.admin.user_id STRING #-1"
        echo "CONFIG proxy.config.crash_log_helper STRING NULL"
        echo "CONFIG proxy.config.http.server_ports STRING $1:ip-in=127.0.0.1"
        echo "CONFIG proxy.config.http.cache.http INT 0"
        echo "CONFIG proxy.config.reverse_proxy.enabled INT 1"
        echo "CONFIG proxy.config.url_remap.remap_required INT 1"
        echo "CONFIG proxy.config.url_remap.pristine_host_hdr INT 1"
        echo "CONFIG proxy.config.exec_thread.autoconfig INT 0"
        echo "CONFIG proxy.config.exec_thread.limit INT 2"
        echo "CONFIG proxy.config.diags.debug.enabled INT 1"
        echo "CONFIG proxy.config.diags.debug.tags STRING proxy_wasm"
        echo "CONFIG proxy.config.diags.output.debug STRING L"
        echo "CONFIG proxy.config.diags.output.diag STRING L"
        echo "CONFIG proxy.config.diags.logfile.rolling_enabled INT 0"
        echo "CONFIG proxy.config.plugin.plugin_dir STRING $dir/plugins"
        echo "CONFIG proxy.config.body_factory.template_sets_dir STRING $etc/body_factory"
        echo "CONFIG proxy.config.net.connections_throttle INT 4000"
    } >"$etc/records.config"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts traffic_server on $port; 0 when ready, 1 on a port conflict, dies otherwise.
start_ts() {
    local i
    write_records "$port"
    rm -f "$logs"/*
    (cd "$dir" && TS_RUNROOT="$dir/runroot.yaml" RUST_BACKTRACE=1 \
        exec setsid "$TRAFFIC_SERVER" </dev/null >"$logs/traffic.out" 2>&1) &
    ts_pid=$!
    for ((i = 0; i < 300; i++)); do # 30 s
        if grep -qs -e "unable to listen on port" -e "Address already in use" "$logs/diags.log" "$logs/traffic.out"; then
            stop_process "$ts_pid"
            ts_pid=""
            return 1
        fi
        if grep -qsF "$READY_LINE" "$logs/diags.log" && port_open "$port"; then
            return 0
        fi
        kill -0 "$ts_pid" 2>/dev/null || die "traffic_server exited during start-up"
        sleep 0.1
    done
    die "traffic_server did not become ready within 30 s"
}

say "Traffic Server $("$TRAFFIC_SERVER" --version 2>/dev/null | head -n1 | sed 's/^.*Traffic Server //' || true)"
started=false
for attempt in 1 2 3 4; do
    port=$(free_port)
    t0=$(date +%s%N)
    if start_ts; then
        started=true
        break
    fi
    echo "port $port was taken, trying another one"
done
$started || die "no free port for traffic_server"
echo "private runroot:  $dir"
echo "traffic_server:   pid $ts_pid, http://127.0.0.1:$port, ready in $((($(date +%s%N) - t0) / 1000000)) ms"
echo "origin:           http://127.0.0.1:$origin_port (python3 http.server)"
echo "plugin.config:    $(grep -v '^#' "$etc/plugin.config" | grep -v '^$')"
echo "remap.config:     $(cat "$etc/remap.config")"
echo "filter.yaml:      from ats-config/, upstream 127.0.0.1:$origin_port"
grep -F '[proxy_wasm] loaded plugin' "$logs/diags.log" | sed 's/^/diags.log:        /' || die "the plugin did not load"

# ------------------------------------------------------------------ requests
n=0
origin_lines() { wc -l <"$dir/origin.log"; }

# request TITLE PATH [curl args...]: prints the request, the answer and what the origin saw.
request() {
    local title=$1 path=$2
    shift 2
    n=$((n + 1))
    resp=$dir/resp.$n
    local before
    before=$(origin_lines)
    say "$n. $title"
    local shown="" a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=@-]+$ ]]; then shown+=" $a"; else shown+=" '$a'"; fi
    done
    echo "\$ curl -sS -i$shown http://127.0.0.1:$port$path"
    curl -sS -i --max-time 15 "$@" "http://127.0.0.1:$port$path" | tr -d '\r' >"$resp"
    sed 's/^/  /' "$resp"
    [ -z "$(tail -c 1 "$resp")" ] || echo
    sleep 0.05 # let the origin's log line land
    local seen
    seen=$(tail -n +"$((before + 1))" "$dir/origin.log")
    if [ -n "$seen" ]; then
        sed 's/^/  (log) /' <<<"$seen"
    else
        echo "  (log) the origin received nothing"
    fi
    origin_new=$(($(origin_lines) - before))
}

status() { awk 'NR == 1 { print $2; exit }' "$resp"; }
header() { # name: the first value of that response header
    awk -v n="$(tr 'A-Z' 'a-z' <<<"$1")" '
        NR == 1 { next }
        /^$/ { exit }
        { i = index($0, ":"); if (i && tolower(substr($0, 1, i - 1)) == n) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); print v; exit } }' "$resp"
}
has_header() { grep -qi "^$1:" <(sed '/^$/q' "$resp"); }
body() { sed '1,/^$/d' "$resp"; }

checks=0
expect() { # description, then a command that must succeed
    local what=$1
    shift
    if "$@"; then
        echo "  ok: $what"
        checks=$((checks + 1))
    else
        die "request $n: expected $what"
    fi
}
eq() { [ "$1" = "$2" ] || { echo "  got: '$1', expected: '$2'" >&2; return 1; }; }
contains() { grep -qF -- "$2" <<<"$1" || { echo "  '$2' not in: $1" >&2; return 1; }; }

request "A plain GET: the plugin adds x-proxy-wasm to the origin's answer" /hello
expect "status 200" eq "$(status)" 200
expect "x-proxy-wasm: ats-global" eq "$(header x-proxy-wasm)" ats-global
expect "the origin's body" contains "$(body)" "hello from the origin: GET /hello"

request "x-pw-test: headers, pseudo — request and response headers read and rewritten" "/h?q=1" \
    -H "x-pw-test: headers, pseudo" -H "x-pw-echo: echo me" -H "x-pw-remove: gone"
expect "status 200" eq "$(status)" 200
expect "the origin saw x-pw-added: 1 (added by the plugin)" contains "$(body)" "origin saw x-pw-added: 1"
expect "the origin saw x-pw-replace: replaced" contains "$(body)" "origin saw x-pw-replace: replaced"
expect "the origin did not see x-pw-remove (removed by the plugin)" eval '! body | grep -qi "x-pw-remove:"'
expect "pseudo-headers :method/:path/:scheme/:status" eq "$(header x-pw-method) $(header x-pw-path) $(header x-pw-scheme) $(header x-pw-status)" "GET /h?q=1 http 200"
expect "x-pw-echo: echo me" eq "$(header x-pw-echo)" "echo me"
expect "x-pw-resp-added: 1 and x-pw-resp-replace: replaced" eq "$(header x-pw-resp-added) $(header x-pw-resp-replace)" "1 replaced"
expect "the origin's x-pw-resp-remove is gone" eval '! has_header x-pw-resp-remove'

request "x-pw-test: local — a local 403 from the plugin, the origin is not contacted" /admin \
    -H "x-pw-test: local"
expect "status 403" eq "$(status)" 403
expect "x-pw-local: request-headers" eq "$(header x-pw-local)" request-headers
expect "body 'denied by rust-sdk-filter'" contains "$(body)" "denied by rust-sdk-filter"
expect "no request reached the origin" eq "$origin_new" 0

request "x-pw-test: http-call — the plugin calls the origin (POST /callout), then lets the request go on" /with-callout \
    -H "x-pw-test: http-call"
expect "status 200" eq "$(status)" 200
expect "x-pw-callout-dispatch: OK" eq "$(header x-pw-callout-dispatch)" OK
expect "x-pw-callout-status: 200" eq "$(header x-pw-callout-status)" 200
expect "the callout's answer in x-pw-callout-body" contains "$(header x-pw-callout-body)" "pong from the origin"
expect "the origin saw the callout, then the request" eq "$origin_new" 2
expect "the request reached the origin with x-pw-callout-status: 200" contains "$(body)" "origin saw x-pw-callout-status: 200"

# ------------------------------------------------------------ the plugin's log
say "The plugin's lines in diags.log ([proxy_wasm] notes/warnings/errors; debug tag proxy_wasm)"
sleep 0.2 # on_log runs after the last response
grep -F -e '[proxy_wasm]' -e '(proxy_wasm)' "$logs/diags.log" >"$dir/plugin.log" || true
total=$(wc -l <"$dir/plugin.log")
if [ "$total" -gt "$debug_lines" ]; then
    head -n "$debug_lines" "$dir/plugin.log"
    echo "... ($((total - debug_lines)) more; DEMO_DEBUG_LINES=$total shows all)"
else
    cat "$dir/plugin.log"
fi
if grep -E 'ERROR|FATAL|panicked' "$dir/plugin.log" "$logs/traffic.out" >/dev/null 2>&1; then
    die "errors in the logs"
fi

say "Traffic Server demo: $n requests, $checks checks passed"
