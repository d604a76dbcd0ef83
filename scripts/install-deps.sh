#!/usr/bin/env bash
# Installs what zkbridge's tests and quick start need and the machine lacks:
# - Apache ZooKeeper 3.8 from Debian's `zookeeper` package (Java 17 expected);
# - ZooKeeper 3.9 (Debian trixie's `libzookeeper-java`), fetched without
#   touching the machine's apt sources, for `make test-zk39`: only its
#   zookeeper and jute jars, in $ZK39_HOME (default
#   /opt/zkbridge/zookeeper-3.9), run on bookworm's dependency jars;
# - promtool (Debian's `prometheus`) and systemd-analyze (`systemd`), which
#   the deploy tests use to check the alert rules and the unit file;
# - chromium, headless, for the test of the status page at `/`;
# - with --bench, the JDK's jcmd, with which the benchmark settles the
#   servers' heaps before measuring a steady state.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail

bench=""
[ "${1:-}" = "--bench" ] && bench=1

ZK39_HOME="${ZK39_HOME:-/opt/zkbridge/zookeeper-3.9}"

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  SUDO="none"
fi

need_root() {
  if [ "$SUDO" = "none" ]; then
    echo "not root and no sudo: cannot $1; install it yourself, then retry" >&2
    exit 1
  fi
}

apt_updated=""
apt_install() {
  need_root "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
    if [ -z "$apt_updated" ]; then
      $SUDO apt-get update -qq >/dev/null
      apt_updated=1
    fi
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

if [ ! -f /usr/share/java/zookeeper.jar ]; then
  echo "zookeeper package not found: installing it (apt-get install zookeeper)" >&2
  apt_install zookeeper
  test -f /usr/share/java/zookeeper.jar
fi
command -v java >/dev/null || { echo "java is missing: apt-get install -y openjdk-17-jre-headless" >&2; exit 1; }

if [ -n "$bench" ] && ! command -v jcmd >/dev/null 2>&1; then
  echo "jcmd not found: installing openjdk-17-jdk-headless (the benchmark settles the servers' heaps with it)" >&2
  apt_install openjdk-17-jdk-headless
fi

for tool in ip:iproute2 nft:nftables; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || { echo "${tool%%:*} not found: installing Debian's ${tool#*:} (the region rig uses it)" >&2; apt_install "${tool#*:}"; }
done
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: installing Debian's prometheus package for it" >&2
  apt_install prometheus
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium not found: installing Debian's chromium (the status page is tested in a headless browser)" >&2
  apt_install chromium
fi
if ! command -v buildah >/dev/null 2>&1; then
  echo "buildah not found: installing Debian's buildah (the container image is built in a test where base images can be pulled)" >&2
  apt_install buildah
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-analyze not found: installing Debian's systemd package for it" >&2
  apt_install systemd
fi

if ! ls "$ZK39_HOME"/zookeeper-3.9*.jar >/dev/null 2>&1 || ! ls "$ZK39_HOME"/zookeeper-jute-3.9*.jar >/dev/null 2>&1; then
  echo "ZooKeeper 3.9 not found in $ZK39_HOME: fetching Debian trixie's libzookeeper-java" >&2
  need_root "install ZooKeeper 3.9 into $ZK39_HOME"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$work/sources.list"
  apt_private=(-q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
  apt-get "${apt_private[@]}" update >/dev/null
  (cd "$work" && apt-get "${apt_private[@]}" download libzookeeper-java >/dev/null 2>&1)
  dpkg -x "$work"/libzookeeper-java_*.deb "$work/x"
  repo="$work/x/usr/share/maven-repo/org/apache/zookeeper"
  $SUDO mkdir -p "$ZK39_HOME"
  $SUDO cp "$repo"/zookeeper/3.9*/zookeeper-3.9*.jar "$repo"/zookeeper-jute/3.9*/zookeeper-jute-3.9*.jar "$ZK39_HOME"/
  ls "$ZK39_HOME"/zookeeper-3.9*.jar "$ZK39_HOME"/zookeeper-jute-3.9*.jar >/dev/null
  echo "ZooKeeper 3.9 installed in $ZK39_HOME" >&2
fi
