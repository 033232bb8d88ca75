#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz.rs for FUZZ_SECONDS each (default 600),
# one after the other (FUZZ_JOBS=2 runs two at once), and prints a table:
# target, time, cases, result. Each target keeps going after a failure and
# reports each distinct one once, with the seed that replays it
# (FUZZ_CASE_SEED=...). Logs go to build/fuzz/<target>.log.
#
#   FUZZ_SECONDS   budget per target (default 600)
#   FUZZ_SEED      base seed (default: the one in tests/fuzz/engine.rs)
#   FUZZ_TARGETS   only the targets whose test name contains one of these words
#   FUZZ_JOBS      targets run at once (default 1)
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${FUZZ_SECONDS:-600}"
jobs="${FUZZ_JOBS:-1}"
out="build/fuzz"
mkdir -p "$out"
report="$out/report.tsv"
: > "$report"

cargo test --locked --test fuzz --no-run >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
bin=$(cargo test --locked --test fuzz --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "fuzz: cannot find the test binary" >&2; exit 1; }
# A copy: a rebuild during the run does not change what the later targets run.
cp "$bin" "$out/fuzz-bin" && bin="$out/fuzz-bin"

targets=$("$bin" --list 2>/dev/null | sed -n 's/^\(.*::fuzz_[a-z_0-9]*\): test$/\1/p')
if [ -n "${FUZZ_TARGETS:-}" ]; then
    targets=$(for t in $targets; do for w in $FUZZ_TARGETS; do case "$t" in *"$w"*) echo "$t"; break;; esac; done; done)
fi
[ -n "$targets" ] || { echo "fuzz: no target selected" >&2; exit 1; }

run_one() {
    local t="$1" log="$out/${1//::/_}.log"
    FUZZ_SECONDS="$seconds" FUZZ_KEEP_GOING=1 FUZZ_REPORT="$report" \
        "$bin" "$t" --exact --nocapture --test-threads 1 >"$log" 2>&1
    echo "fuzz: $t: $(grep -a 'cases in' "$log" | tail -n 1)"
}

echo "fuzz: $(echo "$targets" | wc -w) targets, ${seconds}s each, $jobs at a time; logs in $out/"
running=0
for t in $targets; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

echo
printf '| %-22s | %8s | %12s | %s |\n' target "time (s)" cases result
printf '|%s|%s|%s|%s|\n' "------------------------" "----------" "--------------" "--------"
status=0
while IFS=$'\t' read -r target time cases result; do
    [ "$target" = "#" ] && continue
    printf '| %-22s | %8s | %12s | %s |\n' "$target" "$time" "$cases" "$result"
    [ "$result" = ok ] || status=1
done < "$report"
if grep -q '^#' "$report"; then
    echo
    echo "Distinct failures (count, signature, seed to replay with FUZZ_CASE_SEED):"
    grep '^#' "$report" | cut -f2- | sed 's/^/  /'
fi
exit $status
