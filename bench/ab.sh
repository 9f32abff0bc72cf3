#!/usr/bin/env bash
# A/B: runs the same scenarios against two registry-node binaries, or one
# binary with two sets of bench flags, taking turns (A, B, A, B, ...) so that
# both see the same machine and the same noise. Writes every row to one file,
# then a summary: per scenario and metric, the median of each side and B/A.
# Compare the ratios, not the absolute numbers.
# Usage: bench/ab.sh A_NODE_BIN B_NODE_BIN [rounds] [output.md] [scenario ...]
#   A_FLAGS, B_FLAGS: registry-bench flags of each side (e.g. B_FLAGS="--tls --token")
#   scenario: one quoted registry-bench command line each (default: the list below)
# Examples:
#   before/after a change:
#     git worktree add /tmp/before <rev> && (cd /tmp/before && cargo build --release -p registry-node)
#     cargo build --release -p registry-node -p registry-bench
#     bench/ab.sh /tmp/before/target/release/registry-node target/release/registry-node 2 ab.md
#   plaintext against TLS and auth:
#     B_FLAGS="--tls --token" bench/ab.sh target/release/registry-node target/release/registry-node 5 tls.md \
#         "ingest --instances 100000 --pipelined" "propagation --rate 1000 --seconds 10"
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1
b=$2
rounds=${3:-2}
out=${4:-ab-results.md}
shift $(($# < 4 ? $# : 4))
B=${REGISTRY_BENCH:-./target/release/registry-bench}
: > "$out"
run() {
    local label=$1 bin=$2 flags=$3
    shift 3
    echo "### $label: registry-bench $flags${flags:+ }$*" >> "$out"
    # shellcheck disable=SC2086
    if ! "$B" --node-bin "$bin" --out "$out" $flags "$@" > /dev/null; then
        echo "FAILED: $label registry-bench $flags $*" | tee -a "$out"
    fi
}
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(
        "ingest --instances 100000 --pipelined"
        "propagation --rate 1000 --seconds 10"
        "catchup --instances 1000000 --metadata 200"
        "scale --instances 1000000 --metadata 200"
    )
fi
for s in "${scenarios[@]}"; do
    for ((r = 1; r <= rounds; r++)); do
        # shellcheck disable=SC2086
        run "A round $r" "$a" "${A_FLAGS:-}" $s
        # shellcheck disable=SC2086
        run "B round $r" "$b" "${B_FLAGS:-}" $s
    done
done

# The summary: rows are keyed by the scenario's command line (without the
# side's flags) and the metric; medians per side, then B/A.
summary=$(awk -v aflags="${A_FLAGS:-}" -v bflags="${B_FLAGS:-}" '
    function strip(cmd, flags) {
        if (flags != "" && index(cmd, flags " ") == 1) return substr(cmd, length(flags) + 2)
        return cmd
    }
    function median(list,    v, n, i, j, t) {
        n = split(list, v, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    /^### / {
        side = substr($2, 1, 1)
        cmd = $0; sub(/^### [AB] round [0-9]+: registry-bench /, "", cmd)
        cmd = strip(cmd, side == "A" ? aflags : bflags)
        next
    }
    /^\| / && !/^\| scenario \|/ {
        n = split($0, f, " [|] ")
        scenario = f[1]; sub(/^\| /, "", scenario)
        metric = scenario ": " f[3]; value = f[4]; sub(/ \|$/, "", value)
        split(value, vu, " "); unit = vu[2]
        key = cmd " | " metric
        if (!(key in seen)) { seen[key] = 1; order[++keys] = key; units[key] = unit }
        vals[key, side] = vals[key, side] " " vu[1]
    }
    END {
        print "| scenario | metric | A median | B median | B/A |"
        print "|---|---|---|---|---|"
        for (k = 1; k <= keys; k++) {
            key = order[k]
            if (vals[key, "A"] == "" || vals[key, "B"] == "") continue
            ma = median(substr(vals[key, "A"], 2)); mb = median(substr(vals[key, "B"], 2))
            ratio = ma != 0 ? sprintf("%.3f", mb / ma) : "-"
            printf "| %s | %.2f %s | %.2f %s | %s |\n", key, ma, units[key], mb, units[key], ratio
        }
    }' "$out")
{
    echo
    echo "## Summary (A: ${A_FLAGS:-no flags}, B: ${B_FLAGS:-no flags}; $rounds rounds each)"
    echo
    echo "$summary"
} | tee -a "$out"
echo "rows written to $out"
