#!/bin/sh
# A local Sheepdog cluster in one command: three sheep (3 copies) on this host, a demo VDI,
# and sheepfs mounted.
#
#   contrib/cluster.sh start     build, start 3 sheep, format (first time), create "demo", mount
#   contrib/cluster.sh stop      unmount sheepfs and stop the sheep (data stays)
#   contrib/cluster.sh status    what is running
#
# Environment: SHEEP_DATA (default /var/lib/sheepdog-demo) holds the stores, logs and the
# local driver's rendezvous; SHEEP_MNT (default /mnt/sheep) is the mount point; SHEEP_PORT
# (default 7000) is the first of three ports; SHEEP_PROFILE=debug uses a debug build.
set -eu

cd "$(dirname "$0")/.."
data=${SHEEP_DATA:-/var/lib/sheepdog-demo}
mnt=${SHEEP_MNT:-/mnt/sheep}
port=${SHEEP_PORT:-7000}
profile=${SHEEP_PROFILE:-release}
bin=target/$profile
ports="$port $((port + 1)) $((port + 2))"

dog() { "$bin/dog" "$@" -p "$port"; }

wait_for() { # seconds description command...
    wait_secs=$1; wait_what=$2; shift 2
    wait_tries=0
    while ! "$@" >/dev/null 2>&1; do
        wait_tries=$((wait_tries + 1))
        if [ "$wait_tries" -gt $((wait_secs * 10)) ]; then
            echo "timed out waiting for $wait_what; logs are in $data/*.log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

three_nodes() { [ "$(dog node list -r 2>/dev/null | wc -l)" -ge 3 ]; }

start() {
    if [ "$profile" = release ]; then cargo build --release --bins; else cargo build --bins; fi
    mkdir -p "$data" "$mnt"
    i=0
    for p in $ports; do
        if [ -f "$data/sheep$i.pid" ] && kill -0 "$(cat "$data/sheep$i.pid")" 2>/dev/null; then
            echo "sheep $i already running (pid $(cat "$data/sheep$i.pid"))"
        else
            "$bin/sheep" -p "$p" -z "$((i + 1))" -c "local:$data/rendezvous" --log-file "$data/sheep$i.log" \
                "$data/node$i" >>"$data/sheep$i.out" 2>&1 &
            echo $! >"$data/sheep$i.pid"
        fi
        i=$((i + 1))
    done
    wait_for 30 "three sheep" three_nodes
    if dog cluster info 2>&1 | grep -q "Waiting for cluster to be formatted"; then
        dog cluster format -c 3
    fi
    if ! dog vdi list -r 2>/dev/null | awk '{print $2}' | grep -qx demo; then
        dog vdi create demo 1G
    fi
    if ! mountpoint -q "$mnt"; then
        "$bin/sheepfs" -p "$port" --log-file "$data/sheepfs.log" "$mnt"
    fi
    cat <<EOM

A 3-node cluster (3 copies) is running; sheepfs is mounted at $mnt.

Try:
  cat $mnt/cluster/info $mnt/node/list $mnt/vdi/list
  dd if=/dev/urandom of=$mnt/vdi/demo/volume bs=1M count=64 conv=fsync,notrunc
  echo 1 > $mnt/vdi/demo/snapshot && ls $mnt/vdi/demo/snapshots
  echo demo2 > $mnt/vdi/demo/snapshots/1/clone && ls $mnt/vdi
  mkdir $mnt/vdi/scratch && truncate -s 10G $mnt/vdi/scratch/volume
  $bin/dog vdi list -p $port;  $bin/dog cluster info -p $port

Stop it all with: contrib/cluster.sh stop   (data stays in $data)
EOM
}

stop() {
    if mountpoint -q "$mnt"; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    # One cluster-wide shutdown: the nodes stop together and resume at the same epoch.
    dog cluster shutdown >/dev/null 2>&1 || true
    i=0
    for _ in $ports; do
        f="$data/sheep$i.pid"
        if [ -f "$f" ]; then
            pid=$(cat "$f")
            if ! (wait_for 10 "sheep $i to stop" sh -c "! kill -0 $pid"); then
                kill "$pid" 2>/dev/null || true
                wait_for 10 "sheep $i to stop" sh -c "! kill -0 $pid"
            fi
            rm -f "$f"
        fi
        i=$((i + 1))
    done
    echo "stopped; data kept in $data"
}

status() {
    i=0
    for p in $ports; do
        f="$data/sheep$i.pid"
        if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
            echo "sheep $i: running on port $p (pid $(cat "$f"))"
        else
            echo "sheep $i: stopped"
        fi
        i=$((i + 1))
    done
    if mountpoint -q "$mnt"; then echo "sheepfs: mounted at $mnt"; else echo "sheepfs: not mounted"; fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
