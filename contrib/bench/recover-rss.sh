#!/bin/bash
# Memory of sheep while they recover a VDI of 2 GiB objects (shift 31): objects move in
# pieces, so no sheep should hold one whole. Reports each surviving sheep's RSS before the
# recovery (the baseline) and its peak during it, with the object size beside them.
#
# Usage (from anywhere in the repository):
#   contrib/bench/recover-rss.sh
# Environment:
#   BENCH_DATA=3G       bytes of random data written into the VDI (non-zero, so recovery
#                       moves every piece; K, M, G = powers of 1024)
#   BENCH_SHIFT=31      object size of the VDI as a power of two
#   BENCH_DIR=/var/tmp  where the scratch directory (the sheep stores) goes
#   BENCH_NO_BUILD=1    skip `cargo build` (binaries must already be in target/release/)
#
# In one run: starts 3 local sheep (2 copies), creates a VDI of that object size, writes the
# data with `dog vdi write`, kills one sheep with -9, samples the other two's VmRSS every
# 0.1 s until `dog node recovery` shows them idle, and prints the figures. Everything it
# started is stopped and the scratch directory removed on exit.
set -eu

. "$(dirname "$0")/common.sh"
bench_options - "$@"

data=${BENCH_DATA:-3G}
shift_=${BENCH_SHIFT:-31}
bench_build

bench_scratch recover-rss

log "starting 3 sheep"
start_cluster 3 || die "3 sheep did not join within 30 s"
set -- $pids
"$bin/dog" cluster format -c 2 -f -p "$port" </dev/null
bytes=$(bench_bytes "$data") || die "BENCH_DATA: not a size: $data"
"$bin/dog" vdi create -z "$shift_" big "$bytes" -p "$port"
log "writing $data of random data"
head -c "$bytes" /dev/urandom | "$bin/dog" vdi write big 0 "$bytes" -p "$port"

rss() { awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$1/status"; }
epoch=$("$bin/dog" node recovery -r -p "$port" | awk 'NR == 1 { print $6 }')
before0=$(rss "$1")
before1=$(rss "$2")
log "killing node 2; sampling the others' memory until they have recovered"
kill -9 "$3"
start=$(date +%s.%N)
peak0=$before0
peak1=$before1
while :; do
    r0=$(rss "$1")
    r1=$(rss "$2")
    [ "$r0" -le "$peak0" ] || peak0=$r0
    [ "$r1" -le "$peak1" ] || peak1=$r1
    # Done: two members left, both idle with the epoch after the kill recovered.
    done=$("$bin/dog" node recovery -r -p "$port" 2>/dev/null |
        awk -v e="$epoch" '$3 == "idle" && $6 > e { n++ } END { print n + 0 }')
    [ "$done" != 2 ] || [ "$("$bin/dog" node list -r -p "$port" | wc -l)" != 2 ] || break
    sleep 0.1
done
secs=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$start" "$(date +%s.%N)")

echo
echo "recovery of a VDI with objects of 2^$shift_ bytes ($((1 << (shift_ - 20))) MiB), $data written, 2 copies, one of 3 sheep killed"
echo "recovered in $secs s"
printf '%-8s %12s %12s %12s\n' node "RSS before" "peak RSS" "object size"
printf '%-8s %9s MiB %9s MiB %9s MiB\n' node0 "$before0" "$peak0" $((1 << (shift_ - 20)))
printf '%-8s %9s MiB %9s MiB %9s MiB\n' node1 "$before1" "$peak1" $((1 << (shift_ - 20)))
