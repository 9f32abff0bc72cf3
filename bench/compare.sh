#!/usr/bin/env bash
# Runs every benchmark scenario against our registry, etcd and ZooKeeper, one
# after another on this machine, and writes the result tables to one file.
# Usage: bench/compare.sh [output.md]   (builds release binaries first)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results.md}
cargo build --release -p registry-node -p registry-bench
B=./target/release/registry-bench
: > "$out"
run() {
    echo "### registry-bench $*" >> "$out"
    if ! "$B" --out "$out" "$@" > /dev/null; then
        echo "FAILED: registry-bench $*" | tee -a "$out"
    fi
}
for S in registry etcd zookeeper; do
    run --system $S ingest --instances 100000 --pipelined
    run --system $S ingest --instances 100000 --nodes 3 --pipelined
    for R in 100 1000 10000; do run --system $S propagation --rate $R --seconds 10; done
    run --system $S fanout --subscribers 10000 --connections 8 --flaps 20
    run --system $S scale --instances 100000 --metadata 200
    run --system $S catchup --instances 200000 --metadata 200
    run --system $S failure --rounds 5
done
# Our larger sizes (the peers would take tens of minutes each here).
run scale --instances 1000000 --metadata 200
run catchup --instances 1000000 --metadata 200
