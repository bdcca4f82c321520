#!/bin/sh
# Scale check: the placement ring at 1,000 nodes, and 1,000 light members (the real
# ZooKeeper driver, without store or server) against a fresh ZooKeeper on loopback.
#
# Usage (as root): contrib/bench/zk-scale.sh [MEMBERS]     (default 1000)
# Installs the Debian zookeeper package if missing, builds the example, starts ZooKeeper on
# a free port in a temporary directory, runs `scale ring` and `scale zookeeper`, and stops
# ZooKeeper again.
set -eu
cd "$(dirname "$0")/../.."
members=${1:-1000}

if [ ! -x /usr/share/zookeeper/bin/zkServer.sh ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q zookeeper
fi
cargo build --release --example scale

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/data"
cat >"$work/zoo.cfg" <<EOC
tickTime=500
initLimit=10
syncLimit=5
dataDir=$work/data
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=*
EOC
ZOOCFGDIR=$work ZOO_LOG_DIR=$work /usr/share/zookeeper/bin/zkServer.sh start-foreground "$work/zoo.cfg" >"$work/zk.log" 2>&1 &
zk=$!
trap 'kill $zk 2>/dev/null; wait $zk 2>/dev/null || true; rm -rf "$work"' EXIT
i=0
until [ "$(python3 -c "import socket; s=socket.create_connection(('127.0.0.1',$port),1); s.sendall(b'ruok'); print(s.recv(4).decode())" 2>/dev/null)" = imok ]; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "ZooKeeper did not start; see $work/zk.log" >&2; exit 1; }
    sleep 0.2
done

[ -n "${SKIP_RING:-}" ] || target/release/examples/scale ring
RUST_LOG=${RUST_LOG:-error} target/release/examples/scale zookeeper "127.0.0.1:$port" --members "$members"
