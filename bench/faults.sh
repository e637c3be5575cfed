#!/usr/bin/env bash
# Runs the randomized fault test over many seeds (default 1..200), one seed per test process so
# that a failure names its seed and the others go on; prints how many passed and how long it
# took. A failing seed replays alone with:
#   STRATA_FAULT_SEEDS=<seed> cargo test --release -p strata-server --test cluster faults
# Usage: bench/faults.sh [FIRST [LAST]]
set -uo pipefail
cd "$(dirname "$0")/.."
first=${1:-1}
last=${2:-200}
# Build once and run a copy of the test binary, so that editing the sources meanwhile does not
# rebuild (or change) what is being tested.
bin=$(cargo test --release -p strata-server --test cluster --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cluster":
        print(m["executable"])')
[ -n "$bin" ] || {
    echo "build failed" >&2
    exit 2
}
copy=$(mktemp /tmp/strata-fault-bin.XXXXXX)
cp "$bin" "$copy" && chmod 700 "$copy"
cd crates/server # where cargo runs the tests
trap 'rm -f "$copy"' EXIT
start=$(date +%s)
passed=0
failed=()
for seed in $(seq "$first" "$last"); do
    if STRATA_FAULT_SEEDS=$seed RUST_LOG=${RUST_LOG:-strata_volume=info,strata_server=info} \
        "$copy" faults:: >"/tmp/strata-fault-$seed.log" 2>&1; then
        passed=$((passed + 1))
        rm -f "/tmp/strata-fault-$seed.log"
    else
        failed+=("$seed")
        echo "seed $seed failed: /tmp/strata-fault-$seed.log"
    fi
done
took=$(($(date +%s) - start))
echo "$passed passed, ${#failed[@]} failed (seeds ${first}..${last}, ${took} s)${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
