#!/bin/bash
# Latency of a read during recovery, through a sheep whose copy of the object is stale,
# against the same read through a sheep whose copy is current (the baseline, same run). The
# VDI has 2 GiB objects (shift 31), where fetching a whole object takes seconds: a read
# should be served by a current replica, not wait for that fetch.
#
# Usage (from anywhere in the repository; needs python3):
#   contrib/bench/recovery-read.sh
# Environment:
#   BENCH_DATA=256M     random bytes written into each of the VDI's first two objects
#   BENCH_DIR=/var/tmp  where the scratch directory (the sheep stores) goes
#   BENCH_NO_BUILD=1    skip `cargo build` (binaries must already be in target/release/)
#
# In one run: starts 3 local sheep (3 copies), writes the data, kills one sheep, changes
# 4 KiB of each object through another, starts the killed one again with a recovery rate of
# one object a second, and at once times a 4 KiB read of the second object through it, then
# through a current one. Everything it started is stopped and the scratch directory
# removed on exit.
set -eu

. "$(dirname "$0")/common.sh"
bench_options - "$@"

data=${BENCH_DATA:-256M}
bench_build

bench_scratch recovery-read

dog() { "$bin/dog" "$@"; }
start_cluster 3 || die "the cluster did not form"
read -r _ _ behind_port <<<"$ports"
set -- $pids
behind_pid=$3
dog cluster format -c 3 -p "$port" </dev/null
obj=$((1 << 31))
bytes=$(bench_bytes "$data") || die "BENCH_DATA: not a size: $data"
dog vdi create -z 31 big $((2 * obj)) -p "$port"
log "writing $data into each of two objects of 2 GiB"
head -c "$bytes" /dev/urandom >"$WORK/data"
dog vdi write big 0 "$bytes" -p "$port" <"$WORK/data"
dog vdi write big "$obj" "$bytes" -p "$port" <"$WORK/data"
rm "$WORK/data"

log "killing node 2 and changing 4 KiB of each object without it"
kill_all "$behind_pid"
wait_members "$port" 2 || die "node 2 did not leave"
head -c 4096 /dev/urandom | dog vdi write big 4096 4096 -p "$port"
head -c 4096 /dev/urandom | dog vdi write big $((obj + 4096)) 4096 -p "$port"
start_sheep 2 "$behind_port" --recovery-rate 1
wait_members "$port" 3 || die "node 2 did not come back"

ms() { python3 -c "print('%.1f' % (($2 - $1) * 1000))"; }
read_at() {
    local t0 t1
    t0=$(date +%s.%N)
    dog vdi read big "$obj" 4096 -p "$1" >/dev/null
    t1=$(date +%s.%N)
    ms "$t0" "$t1"
}
stale=$(read_at "$behind_port")
current=$(read_at "$port")
recovered=$(dog node recovery -r -p "$port" | awk -v p="$behind_port" '$2 ~ ":" p "$" { print $3 }')

echo
echo "4 KiB read of a 2 GiB object during recovery (3 copies, one sheep back with stale copies)"
echo "through the sheep that is behind: $stale ms (its recovery: $recovered)"
echo "through a current sheep:          $current ms (baseline)"
echo "ratio:                            $(python3 -c "print('%.2f' % ($stale / $current))") x the baseline"
