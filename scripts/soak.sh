#!/usr/bin/env bash
# Runs the fault suite's soak (seeded random churn, node kills, route cuts
# and NATS restarts against three real nodes and three real nats-servers)
# once per seed, one seed after another: a soak runs alone, since on a small
# machine anything beside it measures the contention, not the registry.
#
#   scripts/soak.sh [-s SECONDS] SEED...      e.g. scripts/soak.sh -s 300 6 7 8
#
# SECONDS defaults to 300. Each seed's report and its nodes' and servers'
# logs (every peer change applied and every instance leaving a view, at the
# default NODE_LOG) go to target/soak/seed-<SEED>/; a table of every seed's
# result ends the run. Exits non-zero if any seed failed. Meant for a
# nightly job over new seeds too: each seed is another sequence of faults.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=300
if [ "${1:-}" = "-s" ]; then
    secs=${2:?"-s needs a number of seconds"}
    shift 2
fi
if [ $# -eq 0 ]; then
    echo "usage: $0 [-s SECONDS] SEED..." >&2
    exit 2
fi
for seed in "$@"; do
    case $seed in
        '' | *[!0-9]*) echo "not a seed (a whole number): $seed" >&2; exit 2 ;;
    esac
done

# Built once, before the first seed's clock starts.
cargo test -p registry-tests --test faults --no-run --quiet

failed=0
summary=()
for seed in "$@"; do
    dir="target/soak/seed-$seed"
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "soak: seed $seed, $secs s (logs in $dir)"
    status=passed
    if ! FAULTS=full FAULTS_SOAK_SECS="$secs" FAULTS_SEED="$seed" \
        NODE_LOG="${NODE_LOG:-info,registry_node::registry=trace}" NODE_LOG_DIR="$PWD/$dir" \
        cargo test -p registry-tests --test faults soak -- --include-ignored --nocapture \
        >"$dir/report.txt" 2>&1; then
        status=FAILED
        failed=1
    fi
    # The report's rows (one table per run), or the end of the output if
    # the run ended before it printed one.
    rows=$(grep '^| soak' "$dir/report.txt" | awk '!seen[$0]++' || true)
    [ -n "$rows" ] || rows=$(tail -5 "$dir/report.txt")
    summary+=("seed $seed: $status" "$rows")
done

echo
printf '%s\n' "${summary[@]}"
exit $failed
