#!/usr/bin/env bash
# Makes sure etcd is installed (Debian package etcd-server; installs it when
# the binary is missing, which needs root) and prints, one per line:
#   bin=<path of the etcd server binary>
#   version=<Debian package version>
# registry-bench runs this before `--system etcd` scenarios; it starts and
# stops the etcd members itself.
set -euo pipefail

find_bin() {
  if command -v etcd >/dev/null 2>&1; then
    command -v etcd
  elif dpkg -L etcd-server >/dev/null 2>&1; then
    dpkg -L etcd-server | grep -E '/bin/etcd$' | head -n 1
  fi
}

bin="$(find_bin || true)"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "etcd not found: installing the Debian package etcd-server" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q etcd-server >&2
  bin="$(find_bin)"
fi
[ -x "$bin" ] || { echo "no etcd binary after install" >&2; exit 1; }

echo "bin=$bin"
echo "version=$(dpkg-query -W -f='${Version}' etcd-server 2>/dev/null || "$bin" --version | head -n 1)"
