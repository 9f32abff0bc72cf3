#!/usr/bin/env bash
# Makes a NATS password for each registry node's user (auth.conf), or new
# ones to rotate them, and writes both copies:
#
#   deploy/nats/passwords.conf  the NATS servers' copy: nats.conf includes it,
#                               and nats-server reads it again at every reload
#                               (--signal reload, or SIGHUP)
#   deploy/.env                 the nodes' copy, for the compose stack
#                               (REGISTRY_<N>_NATS_PASSWORD=...)
#
# Each file is written whole (a new file renamed over the old one), readable
# by its owner only. Neither belongs in git. Each password starts with a
# letter, so it stays a string where nats-server reads it from its
# environment instead (a value such as 1e5... is taken for a number).
#
# Usage: deploy/nats/make-passwords.sh [CONF_DIR [ENV_FILE [NODES]]]
#        (defaults: this directory, deploy/.env, 3 nodes: registry-0..2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf_dir=${1:-$here}
env_file=${2:-$here/../.env}
nodes=${3:-3}
umask 077
conf_tmp=$(mktemp "$conf_dir/passwords.conf.XXXXXX")
env_tmp=$(mktemp "$env_file.XXXXXX")
trap 'rm -f "$conf_tmp" "$env_tmp"' EXIT
echo "# NATS passwords of the registry nodes' users (made by make-passwords.sh)." > "$conf_tmp"
for ((n = 0; n < nodes; n++)); do
    password="p$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    echo "REGISTRY_${n}_NATS_PASSWORD: \"$password\"" >> "$conf_tmp"
    echo "REGISTRY_${n}_NATS_PASSWORD=$password" >> "$env_tmp"
done
mv "$conf_tmp" "$conf_dir/passwords.conf"
mv "$env_tmp" "$env_file"
trap - EXIT
echo "wrote $conf_dir/passwords.conf and $env_file ($nodes nodes)"
