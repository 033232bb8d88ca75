#!/usr/bin/env bash
# The whole test suite (`make test`): every unit and integration test, then the end-to-end
# suites (real Traffic Server and NGINX) a second time with every plugin on WAMR
# (tests/e2e/mod.rs: E2E_RUNTIME).
#
# Both passes run even when the first fails, and each keeps its whole output in
# build/test-logs/. CI shows only the end of a run, where cargo names the failed test binaries
# but not the tests nor why: so the run ends with every failed test's name and its panic
# message, read back from those logs.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
cargo=${CARGO:-cargo}
logs=build/test-logs
mkdir -p "$logs"

e2e=()
for f in tests/ats*.rs tests/nginx*.rs tests/conformance*.rs; do
    name=$(basename "$f" .rs)
    e2e+=(--test "$name")
done

status=0
"$cargo" test --locked --no-fail-fast 2>&1 | tee "$logs/wasmtime.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
E2E_RUNTIME=wamr "$cargo" test --locked --no-fail-fast "${e2e[@]}" 2>&1 | tee "$logs/wamr.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ "$status" -ne 0 ]; then
    echo
    grep -h "^error: .*target.* failed\|^    \`--test" "$logs/wasmtime.log" "$logs/wamr.log" | sed 's/^/  /'
    echo "=== failed tests (whole output in $logs/) ==="
    for pass in wasmtime wamr; do
        # libtest prints each failure as "---- name stdout ----" followed by its output; the
        # panic line and the few lines after it say why.
        python3 - "$logs/$pass.log" "$pass" <<'EOF'
import re, sys
path, run = sys.argv[1], sys.argv[2]
text = open(path, errors="replace").read()
# One section per test binary ("Running tests/x.rs (target/...)"), so each failure names its file.
for section in re.split(r"^\s+Running ", text, flags=re.M)[1:]:
    binary = section.split(None, 1)[0]
    for m in re.finditer(r"^---- (\S+) stdout ----\n(.*?)(?=^---- |^failures:$)", section, re.S | re.M):
        lines = m.group(2).splitlines()
        at = next((i for i, l in enumerate(lines) if "panicked at" in l), 0)
        print(f"[{run}] {binary} {m.group(1)}")
        for l in lines[at:at + 5]:
            print("    " + l[:300])
EOF
    done
fi
exit "$status"
