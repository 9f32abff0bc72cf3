#!/usr/bin/env bash
# A/B: runs the same scenarios against two registry-node binaries, taking
# turns (A, B, A, B, ...) so that both see the same machine and the same
# noise, and writes every row to one file. Compare the ratios, not the
# absolute numbers.
# Usage: bench/ab.sh A_NODE_BIN B_NODE_BIN [rounds] [output.md]
# Example (before/after a change):
#   git worktree add /tmp/before <rev> && (cd /tmp/before && cargo build --release -p registry-node)
#   cargo build --release -p registry-node -p registry-bench
#   bench/ab.sh /tmp/before/target/release/registry-node target/release/registry-node 2 ab.md
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1
b=$2
rounds=${3:-2}
out=${4:-ab-results.md}
B=${REGISTRY_BENCH:-./target/release/registry-bench}
: > "$out"
run() {
    local label=$1 bin=$2
    shift 2
    echo "### $label: registry-bench $*" >> "$out"
    if ! "$B" --node-bin "$bin" --out "$out" "$@" > /dev/null; then
        echo "FAILED: $label registry-bench $*" | tee -a "$out"
    fi
}
scenarios=(
    "ingest --instances 100000 --pipelined"
    "propagation --rate 1000 --seconds 10"
    "catchup --instances 1000000 --metadata 200"
    "scale --instances 1000000 --metadata 200"
)
for s in "${scenarios[@]}"; do
    for ((r = 1; r <= rounds; r++)); do
        # shellcheck disable=SC2086
        run "A round $r" "$a" $s
        # shellcheck disable=SC2086
        run "B round $r" "$b" $s
    done
done
echo "rows written to $out"
