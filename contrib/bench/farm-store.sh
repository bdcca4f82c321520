#!/bin/bash
# Working-directory I/O on a farm store (`dog cluster format -b farm`) against a plain store
# (the baseline, same run), and what the farm's archive after a recovery costs.
#
# Usage (from anywhere in the repository; needs python3; installs fio and libnbd-bin if
# missing, so run as root then):
#   contrib/bench/farm-store.sh
# Environment:
#   BENCH_SIZE=1G       size of the VDI (K, M, G, T = powers of 1024)
#   BENCH_RUNTIME=15    seconds of 4 KiB random writes
#   BENCH_REPS=2        rounds; each measures both stores, plain first in odd rounds and farm
#                       first in even ones, so that drift touches both alike; medians shown
#   BENCH_DIR=/var/tmp  where the scratch directory (the sheep stores) goes
#   BENCH_NO_BUILD=1    skip `cargo build` (binaries must already be in target/release/)
#
# Per store and round: starts 3 local sheep (the first exports NBD), formats with -b STORE
# and 2 copies, creates a VDI and writes it whole (fio, nbd engine, 1 MiB blocks, depth 4,
# fsync at the end), then 4 KiB random writes at depth 16 for BENCH_RUNTIME s; then starts a
# fourth sheep and times the recovery until each first sheep has dropped the copies it no
# longer owns (on the farm store: after storing them in its farm). Prints the medians, the
# farm/plain ratios, and the farm's archive: bytes archived, bytes the farm directories
# take, archive throughput. Everything it started is stopped and the scratch directory
# removed on exit.
set -eu

. "$(dirname "$0")/common.sh"
bench_options - "$@"


size=${BENCH_SIZE:-1G}
runtime=${BENCH_RUNTIME:-15}
reps=${BENCH_REPS:-2}
bench_build
command -v python3 >/dev/null || die "python3 is needed to parse fio's output"
if ! fio --enghelp 2>/dev/null | grep -qw nbd; then
    log "installing fio and libnbd-bin"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio libnbd-bin
fi
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"
size_bytes=$(bench_bytes "$size") || die "BENCH_SIZE: not a size: $size"

bench_scratch farm-store
results=$WORK/results
: >"$results"

# fio against the NBD export with the job's options; prints "IOPS MB/s P99-µs" (fio_summary).
fio_nbd() {
    local json=$WORK/fio.json
    fio --name=job --ioengine=nbd --uri="nbd://127.0.0.1:$nbd_port/bench" --size="$size_bytes" \
        --group_reporting --output-format=json --output="$json" "$@" >"$WORK/fio.err" 2>&1 ||
        { cat "$WORK/fio.err" >&2; die "fio $* failed"; }
    fio_summary "$json"
}

# Seconds since the epoch, to the millisecond.
now() { date +%s.%N; }

# One store, one round: records "metric store value" lines.
measure() {
    local store=$1 round=$2 n t0 t1 iops mbs
    rm -rf "$WORK"/node* "$WORK"/rv "$WORK"/sheep*.log
    nbd_port=$(free_port)
    ports=""
    for n in 0 1 2; do ports="$ports $(free_port)"; done
    read -r port _ <<<"$ports"
    n=0
    for p in $ports; do
        if [ "$n" = 0 ]; then start_sheep "$n" "$p" --nbd "$nbd_port"; else start_sheep "$n" "$p"; fi
        n=$((n + 1))
    done
    wait_members "$port" 3
    "$bin/dog" cluster format -c 2 -b "$store" -f -p "$port" </dev/null >/dev/null
    "$bin/dog" vdi create bench "$size" -p "$port"

    log "round $round, $store: sequential write of $size"
    read -r iops mbs _ < <(fio_nbd --rw=write --bs=1M --iodepth=4 --end_fsync=1)
    echo "seq_write_mbs $store $mbs" >>"$results"
    log "round $round, $store: 4 KiB random writes, depth 16, $runtime s"
    read -r iops mbs _ < <(fio_nbd --rw=randwrite --bs=4k --iodepth=16 --runtime="$runtime" \
        --time_based --ramp_time=1 --randrepeat=0)
    echo "randwrite_iops $store $iops" >>"$results"

    log "round $round, $store: a fourth sheep joins"
    t0=$(now)
    start_sheep 3 "$(free_port)"
    for n in 0 1 2; do
        for _ in $(seq 1200); do
            grep -q "removed copies this node no longer owns" "$WORK/sheep$n.log" && break
            sleep 0.05
        done
        grep -q "removed copies this node no longer owns" "$WORK/sheep$n.log" ||
            die "sheep $n did not drop its old copies within 60 s"
    done
    t1=$(now)
    echo "join_s $store $(python3 -c "print('%.2f' % ($t1 - $t0))")" >>"$results"
    if [ "$store" = farm ]; then
        echo "archived_bytes farm $(grep -h -o 'archived the copies .* bytes=[0-9]*' "$WORK"/sheep[012].log |
            sed "s/.*bytes=//" | awk "{ s += \$1 } END { print s + 0 }")" >>"$results"
        echo "farm_disk_bytes farm $(du -sb "$WORK"/node[012]/farm | awk '{ s += $1 } END { print s }')" >>"$results"
    fi
    kill_all $pids
    pids=""
}

for r in $(seq "$reps"); do
    if [ $((r % 2)) = 1 ]; then order="plain farm"; else order="farm plain"; fi
    for s in $order; do measure "$s" "$r"; done
done

echo
echo "farm vs plain store: VDI of $size, 2 copies on 3 local sheep, fio over NBD; medians of $reps rounds"
echo "disk: $(bench_disk); $(nproc) CPUs"
python3 - "$results" <<'EOF'
import statistics, sys
vals = {}
for line in open(sys.argv[1]):
    metric, store, value = line.split()
    vals.setdefault((metric, store), []).append(float(value))
med = {k: statistics.median(v) for k, v in vals.items()}
rows = [("seq_write_mbs", "sequential write (MB/s)"), ("randwrite_iops", "4k random write qd16 (IOPS)"),
        ("join_s", "a join: recovery and old copies dropped (s)")]
print(f"{'':44} {'plain':>10} {'farm':>10} {'farm/plain':>11}")
for key, label in rows:
    p, f = med[(key, "plain")], med[(key, "farm")]
    print(f"{label:44} {p:10.1f} {f:10.1f} {f / p:11.2f}")
arch, disk = med[("archived_bytes", "farm")], med[("farm_disk_bytes", "farm")]
extra = med[("join_s", "farm")] - med[("join_s", "plain")]
print(f"archived after the join: {arch / 1e6:.0f} MB of copies, farms take {disk / 1e6:.0f} MB on disk"
      f" ({disk / arch:.2f} of it)" if arch else "archived after the join: nothing")
if arch and extra > 0:
    print(f"the archive added {extra:.2f} s to the join: {arch / 1e6 / extra:.0f} MB/s")
EOF
