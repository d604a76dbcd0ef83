#!/usr/bin/env bash
# Installs what zkbridge's tests and quick start need and the machine lacks:
# Apache ZooKeeper from Debian's `zookeeper` package (Java 17 is expected).
set -euo pipefail

# promtool validates deploy/prometheus/alerts.yml in the tests; optional.
install_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  echo "promtool not found: installing Debian's prometheus package for it (optional)" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } ||
    echo "could not install prometheus (promtool): the alert-rule check will be skipped" >&2
}

if [ -f /usr/share/java/zookeeper.jar ]; then
  install_promtool
  exit 0
fi
echo "zookeeper package not found: installing it (apt-get install -y zookeeper)" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  echo "not root: using sudo for apt-get" >&2
  SUDO="sudo"
else
  echo "not root and no sudo: install it yourself with 'apt-get install -y zookeeper', then retry" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq zookeeper >/dev/null
test -f /usr/share/java/zookeeper.jar
command -v java >/dev/null || { echo "java is missing: apt-get install -y openjdk-17-jre-headless" >&2; exit 1; }
install_promtool
