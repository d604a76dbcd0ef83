#!/usr/bin/env bash
# `make run`: two local standalone ZooKeeper servers in .run/ (ports from
# config/local.toml), a little demo data in the source, and the bridge
# mirroring between them. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --quiet

RUN="$PWD/.run"
CP="/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  echo "stopping..." >&2
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

srvr() { # port -> prints the server's `srvr` reply
  (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf srvr >&3 && timeout 2 cat <&3) 2>/dev/null || true
}

start_zk() { # name port
  local dir="$RUN/$1"
  mkdir -p "$dir/data"
  if srvr "$2" | grep -q Mode; then
    echo "port $2 already serves ZooKeeper: stop it first (a previous 'make run'?)" >&2
    exit 1
  fi
  cat > "$dir/zoo.cfg" <<CFG
tickTime=1000
dataDir=$dir/data
clientPort=$2
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr
CFG
  java -Xmx256m -cp "$CP" org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" >"$dir/server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    srvr "$2" | grep -q Mode && { echo "ZooKeeper $1 serving on 127.0.0.1:$2 (log: $dir/server.log)" >&2; return; }
    sleep 0.1
  done
  echo "ZooKeeper $1 did not start; see $dir/server.log" >&2
  exit 1
}

start_zk us-east 21810
start_zk eu-west 21820

ZKCLI=/usr/share/zookeeper/bin/zkCli.sh
printf '%s\n' 'create /demo "zkbridge demo"' 'create /demo/service-a "{\"port\":8080}"' \
  'create /demo/service-b "{\"port\":9090}"' 'create /demo/tmp "excluded from the mirror"' quit |
  "$ZKCLI" -server 127.0.0.1:21810 >/dev/null 2>&1 || true

cat >&2 <<MSG

zkbridge mirrors us-east:/demo (127.0.0.1:21810) to eu-west:/demo (127.0.0.1:21820).
Try, in another terminal:
  $ZKCLI -server 127.0.0.1:21810 create /demo/hello world
  $ZKCLI -server 127.0.0.1:21820 get /demo/hello
  target/release/zkbridge diff -c config/local.toml
  curl -s 127.0.0.1:9717/metrics | grep zkbridge_applied_ops_total
Ctrl-C stops the bridge and both servers.

MSG
target/release/zkbridge run -c config/local.toml &
PIDS+=($!)
wait "${PIDS[-1]}"
