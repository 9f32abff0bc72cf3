#!/usr/bin/env bash
# Makes sure ZooKeeper and a Java runtime are installed (Debian packages
# zookeeper and openjdk-17-jre-headless; installs what is missing, which needs
# root) and prints, one per line:
#   java=<path of the java binary>
#   classpath=<class path for org.apache.zookeeper.server.quorum.QuorumPeerMain>
#   version=<Debian package version>
# registry-bench runs this before `--system zookeeper` scenarios; it writes the
# configuration and starts and stops the servers itself, the way
# /usr/share/zookeeper/bin/zkServer.sh would (java -cp ... QuorumPeerMain <cfg>).
set -euo pipefail

jar=/usr/share/java/zookeeper.jar
updated=no
install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "$updated" = no ]; then
    apt-get update -q >&2
    updated=yes
  fi
  apt-get install -y -q "$@" >&2
}

if [ ! -f "$jar" ]; then
  echo "ZooKeeper not found: installing the Debian package zookeeper" >&2
  install zookeeper
fi
if ! command -v java >/dev/null 2>&1; then
  echo "java not found: installing openjdk-17-jre-headless" >&2
  install openjdk-17-jre-headless
fi
[ -f "$jar" ] || { echo "no $jar after install" >&2; exit 1; }

# zookeeper.jar's manifest names its dependencies; add an SLF4J binding (when
# the system has one) so the server logs to stderr instead of nowhere.
classpath="$jar"
if [ -f /usr/share/java/slf4j-simple.jar ]; then
  classpath="$classpath:/usr/share/java/slf4j-simple.jar"
fi

echo "java=$(command -v java)"
echo "classpath=$classpath"
echo "version=$(dpkg-query -W -f='${Version}' zookeeper)"
