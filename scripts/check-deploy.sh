#!/usr/bin/env bash
# Checks the files under deploy/ with whatever tools this machine has; a check
# whose tool is missing says so and is skipped. The node's own checks of these
# files (--check-config on every TOML, known settings, the NATS config in a
# real nats-server) are Rust tests: tests/tests/e2e/deploy.rs.
#
#   YAML parses           python3 with PyYAML (installed with pip if missing)
#   compose file          docker compose config, or docker-compose config
#   k8s kustomization     kubectl kustomize
#   HAProxy config        haproxy -c (host names resolved at run time)
#   systemd unit          systemd-analyze verify, against the built binary
set -euo pipefail
cd "$(dirname "$0")/.."

skipped=()
skip() { echo "deploy: skipped $1"; skipped+=("$1"); }

# YAML: every *.yml / *.yaml parses (all documents of a file).
if command -v python3 >/dev/null 2>&1; then
    if ! python3 -c 'import yaml' >/dev/null 2>&1; then
        echo "deploy: PyYAML not found: installing it with pip"
        python3 -m pip install --quiet --disable-pip-version-check pyyaml >/dev/null 2>&1 || true
    fi
    if python3 -c 'import yaml' >/dev/null 2>&1; then
        find deploy -name '*.yml' -o -name '*.yaml' | sort | python3 -c '
import sys, yaml
files = [l.strip() for l in sys.stdin if l.strip()]
for f in files:
    with open(f) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    if not docs:
        sys.exit(f"{f}: no YAML document")
print(f"deploy: {len(files)} YAML files parse")
'
    else
        skip "YAML parse (no PyYAML)"
    fi
else
    skip "YAML parse (no python3)"
fi

# Compose: the file is a valid compose project. Needs no Docker engine. The
# NATS passwords it requires (deploy/.env) are made up for the check only.
for n in 0 1 2; do
    export "REGISTRY_${n}_NATS_PASSWORD=p$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
done
if docker compose version >/dev/null 2>&1; then
    docker compose -f deploy/docker-compose.yml config -q && echo "deploy: docker compose config ok"
elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f deploy/docker-compose.yml config -q && echo "deploy: docker-compose config ok"
else
    skip "compose config (no docker compose)"
fi

# Kubernetes: the kustomization renders (resources, generated ConfigMaps).
if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize deploy/k8s >/dev/null && echo "deploy: kubectl kustomize ok"
else
    skip "k8s kustomize (no kubectl)"
fi

# HAProxy: syntax and semantics. The node names only resolve inside compose;
# haproxy warns about them and still says the file is valid.
if command -v haproxy >/dev/null 2>&1; then
    haproxy -c -q -f deploy/haproxy/haproxy.cfg && echo "deploy: haproxy -c ok"
else
    skip "HAProxy config (no haproxy)"
fi

# systemd: the unit verifies, with ExecStart pointed at the built binary.
bin=target/debug/registry-node
if command -v systemd-analyze >/dev/null 2>&1 && [ -x "$bin" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    sed "s#/usr/local/bin/registry-node#$PWD/$bin#" deploy/systemd/registry-node.service >"$tmp/registry-node.service"
    out=$(systemd-analyze verify "$tmp/registry-node.service" 2>&1) || { echo "$out"; exit 1; }
    if [ -n "$out" ]; then echo "$out"; exit 1; fi
    echo "deploy: systemd-analyze verify ok"
else
    skip "systemd unit (no systemd-analyze or no $bin)"
fi

echo "deploy: checks done; ${#skipped[@]} skipped"
