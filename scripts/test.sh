#!/usr/bin/env bash
# Runs every check of the project: formatting, lints, the deploy files, and the
# whole test suite (unit, property and end-to-end tests against real nodes and
# nats-server).
# Installs what the tests need from the distribution packages when it is
# missing: nats-server, dig, python3-venv, chromium and node.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs Debian packages (the first call refreshes the package lists).
apt_updated=false
apt_install() {
    local sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    if ! $apt_updated; then
        $sudo_cmd apt-get update -qq
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}

if ! command -v nats-server >/dev/null 2>&1; then
    echo "nats-server not found: installing the Debian package"
    apt_install nats-server
fi
echo "nats-server: $(nats-server --version)"

# The DNS tests (tests/tests/e2e/dns.rs) ask with the real dig.
if ! command -v dig >/dev/null 2>&1; then
    echo "dig not found: installing the Debian package"
    apt_install bind9-dnsutils
fi
echo "dig: $(dig -v 2>&1 | head -1)"

# Clients of other ecosystems (PyPI validators and clients) install into a
# virtual environment under target/ when a test first needs them; that takes
# python3 with venv and pip.
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
    echo "python3 venv not found: installing the Debian packages"
    apt_install python3 python3-venv python3-pip
fi

# The console's end-to-end tests drive Debian's chromium, headless, through
# playwright-core (npm, installed under target/ by the tests): they need
# chromium, node and npm.
browser_packages=()
[ -x /usr/bin/chromium ] || browser_packages+=(chromium)
command -v node >/dev/null 2>&1 || browser_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || browser_packages+=(npm)
if [ ${#browser_packages[@]} -gt 0 ]; then
    echo "installing the Debian packages ${browser_packages[*]} (console tests)"
    apt_install "${browser_packages[@]}"
fi
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo unknown); node: $(node --version)"

# The deploy checks use haproxy (-c) and docker-compose (config, no engine
# needed) when present. Installing them is best effort: without them those
# checks are skipped, and say so.
if ! command -v haproxy >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
    echo "haproxy or docker-compose not found: installing the Debian packages (best effort)"
    sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    timeout 300 $sudo_cmd apt-get update -qq >/dev/null 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive timeout 600 $sudo_cmd apt-get install -y -qq haproxy docker-compose >/dev/null 2>&1; then
        echo "could not install haproxy/docker-compose: their deploy checks will be skipped"
    fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# The store and the replication layer use registry-proto without its `grpc`
# feature, so they never compile tonic or hyper. A dependency that turns the
# feature on for them (or one that pulls gRPC in some other way) would go
# unnoticed by the build: the workspace build unifies features anyway.
# `cargo tree -p` resolves the package's features alone, which is what we check.
check_no_grpc() {
    local pkg=$1 tree found
    # Explicit: callers use `||`, which turns `set -e` off in here.
    tree=$(cargo tree -p "$pkg" -e normal --locked --prefix none) || return 1
    found=$(sed 's/ (\*)$//' <<<"$tree" | grep -E '^(tonic|tonic-[a-z-]+|hyper|hyper-[a-z-]+|h2) v' | sort -u || true)
    if [ -n "$found" ]; then
        echo "error: $pkg must not depend on gRPC or HTTP crates, but its tree has:" >&2
        sed 's/^/    /' <<<"$found" >&2
        echo "  (see 'cargo tree -p $pkg -e normal -i <crate>'; registry-proto's grpc feature must stay off for it)" >&2
        return 1
    fi
    echo "$pkg: no tonic, hyper or h2 in its dependencies"
}
no_grpc_ok=true
check_no_grpc registry-store || no_grpc_ok=false
check_no_grpc bus-sync || no_grpc_ok=false
$no_grpc_ok || exit 1
# TLS uses rustls with the ring provider only: aws-lc-rs needs cmake and a C
# toolchain to build, and two providers would make rustls pick at run time.
if aws_lc=$(cargo tree --workspace -e normal,dev --locked -i aws-lc-rs 2>&1); then
    echo "error: aws-lc-rs is in the dependency tree (see 'cargo tree -i aws-lc-rs'); enable rustls/tonic with ring only" >&2
    exit 1
elif ! grep -q "did not match any packages" <<<"$aws_lc"; then
    echo "error: cannot check for aws-lc-rs: $aws_lc" >&2
    exit 1
fi
echo "TLS: ring provider only (no aws-lc-rs)"
# The deploy files, checked with the tools this machine has (the systemd check
# runs against the node binary built here; cargo test reuses it).
cargo build --locked -p registry-node
./scripts/check-deploy.sh
cargo test --workspace --locked
