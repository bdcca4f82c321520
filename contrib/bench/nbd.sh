#!/bin/bash
# Benchmarks a VDI exported over NBD (sheep --nbd) against a VDI of the same size through
# sheepfs on the same gateway, and against a plain file on the same disk, in one run.
#
# Usage (as root, from anywhere in the repository; needs /dev/fuse, python3, apt-get):
#   contrib/bench/nbd.sh            # 1G volumes, 15 s per fio job (~5 min plus the build)
#   contrib/bench/nbd.sh --quick    # 256M volumes, 5 s per fio job
# Environment:
#   BENCH_SIZE=1G       size of each VDI and of the plain file (K, M, G = powers of 1024)
#   BENCH_RUNTIME=15    seconds per fio job
#   BENCH_DIR=/var/tmp  where the scratch directory goes (the sheep stores, the plain file)
#   BENCH_NO_BUILD=1    skip `cargo build` (binaries must already be in target/release/)
#   BENCH_CACHE=SIZE    run every sheep with an object cache of SIZE (`sheep -w SIZE`)
#
# fio drives every target: the NBD export with its nbd engine (libnbd, requests in flight
# up to the depth), sheepfs and the plain file with libaio and O_DIRECT. Jobs: sequential
# write (1 MiB blocks, ending with a flush) and read, 4 KiB random write at depth 1 and 16,
# 4 KiB random read at depth 16. Targets take turns job by job. Prints the figures and the
# ratios nbd/sheepfs and nbd/plain. Everything it started is stopped on exit.
set -eu

. "$(dirname "$0")/common.sh"
bench_options quick "$@"
size=${BENCH_SIZE:-$([ "$quick" = 1 ] && echo 256M || echo 1G)}
runtime=${BENCH_RUNTIME:-$([ "$quick" = 1 ] && echo 5 || echo 15)}

[ "$(id -u)" = 0 ] || die "run as root (mounts, drop_caches)"
[ -e /dev/fuse ] || die "/dev/fuse is missing"
case "$size" in *[0-9]M | *[0-9]G) ;; *) die "BENCH_SIZE must be a number of MiB or GiB (256M, 1G)" ;; esac
case "$runtime" in '' | *[!0-9]*) die "BENCH_RUNTIME must be a number of seconds" ;; esac
size_mib=${size%?}
[ "${size: -1}" = G ] && size_mib=$((size_mib * 1024))

if ! fio --enghelp 2>/dev/null | grep -qw nbd || ! command -v nbdinfo >/dev/null; then
    log "installing fio and libnbd-bin"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio libnbd-bin
fi
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"

bench_build

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/nbd-bench.XXXXXX")
pids=""
cleanup() {
    log "cleaning up"
    if mountpoint -q "$WORK/mnt"; then
        umount "$WORK/mnt" || umount -l "$WORK/mnt"
    fi
    for p in $pids; do kill -TERM "$p" 2>/dev/null; done
    sleep 1
    kill_all $pids
    mountpoint -q "$WORK/mnt" || rm -rf "$WORK"
}
bench_on_exit

nbd_port=$(free_port)
mkdir -p "$WORK/mnt"
log "starting 3 sheep (NBD on $nbd_port from the first) in $WORK"
port=$(free_port)
for n in 0 1 2; do
    if [ "$n" = 0 ]; then p=$port extra="--nbd $nbd_port"; else p=$(free_port) extra=""; fi
    # shellcheck disable=SC2086 # optional flags
    start_sheep "$n" "$p" $extra ${BENCH_CACHE:+-w "$BENCH_CACHE"}
done
wait_members "$port" 3
"$bin/dog" cluster format -c 3 -f -p "$port" </dev/null
"$bin/dog" vdi create viafs "$size" -p "$port"
"$bin/dog" vdi create vianbd "$size" -p "$port"
"$bin/sheepfs" -p "$port" --log-file "$WORK/sheepfs.log" "$WORK/mnt" </dev/null
pids="$pids $(pgrep -f -x "$bin/sheepfs -p $port --log-file $WORK/sheepfs.log $WORK/mnt" || true)"
uri=nbd://127.0.0.1:$nbd_port/vianbd
nbdinfo "$uri" >/dev/null || die "the NBD export does not answer"
plain=$WORK/plain.img
fallocate -l "${size_mib}M" "$plain"

results=$WORK/results
: >"$results"
# fio on target $1 with the rest of the job's options; records "job target iops MB/s p99_us".
job() {
    local job=$1 t=$2 json=$WORK/fio.json
    shift 2
    case "$t" in
        nbd) set -- --ioengine=nbd --uri="$uri" "$@" ;;
        sheepfs) set -- --ioengine=libaio --direct=1 --filename="$WORK/mnt/vdi/viafs/volume" "$@" ;;
        plain) set -- --ioengine=libaio --direct=1 --filename="$plain" "$@" ;;
    esac
    sync
    echo 3 >/proc/sys/vm/drop_caches
    fio --name="$job-$t" --size="${size_mib}M" --runtime="$runtime" --time_based --ramp_time=1 \
        --randrepeat=0 --group_reporting --lat_percentiles=1 --output-format=json \
        --output="$json" "$@" >"$WORK/fio.err" 2>&1 || { cat "$WORK/fio.err" >&2; die "fio $job on $t failed"; }
    echo "$job $t $(fio_summary "$json")" >>"$results"
}

for t in nbd sheepfs plain; do
    log "$t: sequential write"
    job seq_write "$t" --rw=write --bs=1M --iodepth=4 --end_fsync=1
done
for t in nbd sheepfs plain; do
    log "$t: sequential read"
    job seq_read "$t" --rw=read --bs=1M --iodepth=4
done
for d in 1 16; do
    for t in nbd sheepfs plain; do
        log "$t: 4 KiB random write, depth $d"
        job "randwrite_qd$d" "$t" --rw=randwrite --bs=4k --iodepth="$d"
    done
done
for t in nbd sheepfs plain; do
    log "$t: 4 KiB random read, depth 16"
    job randread_qd16 "$t" --rw=randread --bs=4k --iodepth=16
done

echo
echo "NBD export vs sheepfs vs plain file: VDIs of $size, 3 copies on 3 local sheep, fio ${runtime} s per job"
echo "object cache: ${BENCH_CACHE:-off}; disk: $(bench_disk); $(nproc) CPUs"
python3 - "$results" <<'EOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    job, target, iops, mbs, p99 = line.split()
    rows.setdefault(job, {})[target] = (float(iops), float(mbs), float(p99))
head = ("job", "nbd", "sheepfs", "plain", "nbd/sheepfs", "nbd/plain", "p99 us nbd/sheepfs/plain")
out = [head]
for job, r in rows.items():
    seq = job.startswith("seq")
    pick = (lambda v: v[1]) if seq else (lambda v: v[0])
    unit = "MB/s" if seq else "IOPS"
    n, s, p = (pick(r[t]) for t in ("nbd", "sheepfs", "plain"))
    ratio = lambda a, b: "%.2f" % (a / b) if b else "-"
    out.append((f"{job} ({unit})", "%.0f" % n, "%.0f" % s, "%.0f" % p, ratio(n, s), ratio(n, p),
                "/".join("%.0f" % r[t][2] for t in ("nbd", "sheepfs", "plain"))))
w = [max(len(r[i]) for r in out) for i in range(len(head))]
for r in out:
    print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
EOF
