#!/usr/bin/env bash
# Runs the randomized fault test over many seeds (default 1..200), one seed per test process so
# that a failure names its seed and the others go on; prints how many passed and how long it
# took. A failing seed replays alone with:
#   STRATA_FAULT_SEEDS=<seed> cargo test --release -p strata-server --test cluster faults -- --ignored
# Usage: bench/faults.sh [FIRST [LAST]]
set -uo pipefail
cd "$(dirname "$0")/.."
first=${1:-1}
last=${2:-200}
cargo test --release -p strata-server --test cluster --no-run >/dev/null 2>&1 || {
    echo "build failed" >&2
    exit 2
}
start=$(date +%s)
passed=0
failed=()
for seed in $(seq "$first" "$last"); do
    if STRATA_FAULT_SEEDS=$seed cargo test --release -q -p strata-server --test cluster \
        faults -- --ignored >"/tmp/strata-fault-$seed.log" 2>&1; then
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
