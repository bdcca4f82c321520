#!/bin/bash
# Benchmarks a sheepfs volume against a plain file on the same disk and against memfs, an
# in-memory FUSE filesystem with the same FUSE settings (the FUSE-layer ceiling).
#
# Usage (as root, from anywhere in the repository; needs /dev/fuse, python3, apt-get):
#   contrib/bench/sheepfs.sh            # full run: 1G volume, 15 s per fio job (~4 min plus the build)
#   contrib/bench/sheepfs.sh --quick    # smoke run: 256M volume, 5 s per fio job
# Environment:
#   BENCH_SIZE=1G       size of the volume, the plain file and memfs (K, M, G, T = powers of 1024)
#   BENCH_RUNTIME=15    seconds per fio job
#   BENCH_DIR=/var/tmp  where the scratch directory goes: it holds the three sheep stores and
#                       the plain file, so it is "the disk" (keep it off tmpfs)
#   BENCH_NO_BUILD=1    skip `cargo build` (binaries must already be in target/release/)
#   BENCH_REPS=3        sequential runs per target (1 with --quick); the table shows the
#                       median, and every run is listed under it
#   BENCH_SHIFT=22      object size of the volume as a power of two (`dog vdi create -z`):
#                       20 (1 MiB) to 31 (2 GiB)
#   BENCH_CACHE=SIZE    run every sheep with an object cache of SIZE (`sheep -w SIZE`, e.g.
#                       256M); sheepfs uses it. The targets are then the cached ones
#
# In one run: installs fio if missing, builds the release binaries, starts a 3-node local
# cluster (3 copies) on free ports, creates and mounts a VDI with sheepfs, mounts memfs,
# preallocates the plain file, then measures on each target: sequential write and read (dd,
# 1 MiB blocks; BENCH_REPS rounds over the three targets in turn, so that a machine whose
# speed drifts, as shared VMs do, touches every target alike) and 4 KiB random write and
# read at depth 1 and 16 (fio, libaio), with the CPU time the gateway sheep, the other two
# sheep and sheepfs spent per random operation (from /proc/PID/stat, fio's 1 s ramp
# included, so slightly overstated), each daemon's peak RSS (VmHWM) over the whole run, and
# the CPU time the whole machine spent per GiB of each sequential write (/proc/stat, kernel
# included), from which follows the fastest that write could go with every CPU busy.
# Prints a table and whether the performance targets are met. A missed target is reported, not an
# error. Everything it started is stopped and the scratch directory removed on exit.
set -eu

. "$(dirname "$0")/common.sh"
bench_options quick "$@"
if [ "$quick" = 1 ]; then
    size=${BENCH_SIZE:-256M}
    runtime=${BENCH_RUNTIME:-5}
    reps=${BENCH_REPS:-1}
else
    size=${BENCH_SIZE:-1G}
    runtime=${BENCH_RUNTIME:-15}
    reps=${BENCH_REPS:-3}
fi

[ "$(id -u)" = 0 ] || die "run as root (mounts, drop_caches)"
[ -e /dev/fuse ] || die "/dev/fuse is missing"
command -v python3 >/dev/null || die "python3 is needed to parse fio's output"

size_bytes=$(bench_bytes "$size") || die "BENCH_SIZE: not a size: $size"
[ $((size_bytes % 1048576)) = 0 ] || die "BENCH_SIZE must be a whole number of MiB"
size_mib=$((size_bytes / 1048576))
case "$runtime" in '' | *[!0-9]*) die "BENCH_RUNTIME must be a number of seconds" ;; esac
case "$reps" in '' | 0 | *[!0-9]*) die "BENCH_REPS must be a positive number" ;; esac

cd "$(dirname "$0")/../.."
repo=$(pwd)
bin=$repo/target/release

if ! command -v fio >/dev/null; then
    log "installing fio"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio
fi

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "building release binaries"
    cargo build --release --bins
    cargo build --release -p sheepfs --example memfs
fi
for b in sheep dog sheepfs examples/memfs; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing"
done

# --- Setup, with a cleanup that undoes whatever part of it happened ---------------------

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/sheepfs-bench.XXXXXX")
pids=""
memfs_pid=""
sheepfs_pid=""

is_mounted() {
    python3 - "$1" <<'EOF'
import os, sys
want = os.path.realpath(sys.argv[1])
with open("/proc/self/mounts") as f:
    points = [l.split()[1].encode().decode("unicode_escape") for l in f]
sys.exit(0 if want in points else 1)
EOF
}

# Waits up to $2 seconds for process $1 to exit; true when it did.
wait_exit() {
    local i=0
    while kill -0 "$1" 2>/dev/null; do
        [ "$i" -ge $(($2 * 10)) ] && return 1
        sleep 0.1
        i=$((i + 1))
    done
}

unmount() {
    is_mounted "$1" || return 0
    umount "$1" 2>/dev/null || { echo "umount $1 failed; detaching" >&2; umount -l "$1"; }
}

cleanup() {
    log "cleaning up"
    # sheepfs first, while the cluster can still take its final flush; it exits once
    # unmounted.
    unmount "$WORK/mnt"
    if [ -n "$sheepfs_pid" ] && ! wait_exit "$sheepfs_pid" 10; then
        echo "sheepfs ($sheepfs_pid) still running after unmount; killing" >&2
        kill -KILL "$sheepfs_pid"
    fi
    # memfs unmounts itself on SIGTERM.
    if [ -n "$memfs_pid" ]; then
        kill -TERM "$memfs_pid" 2>/dev/null
        wait_exit "$memfs_pid" 10 || { echo "memfs ($memfs_pid) did not exit; killing" >&2; kill -KILL "$memfs_pid"; }
    fi
    unmount "$WORK/memfs"
    for p in $pids; do kill -TERM "$p" 2>/dev/null; done
    for p in $pids; do
        wait_exit "$p" 10 || { echo "sheep ($p) did not exit; killing" >&2; kill -KILL "$p"; }
    done
    wait 2>/dev/null
    if grep -q -E " (WARN|ERROR) " "$WORK"/*.log 2>/dev/null; then
        echo "warnings and errors in the logs (last 20):" >&2
        grep -H -E " (WARN|ERROR) " "$WORK"/*.log | sed "s|^$WORK/||" | tail -n 20 >&2
    fi
    if is_mounted "$WORK/mnt" || is_mounted "$WORK/memfs"; then
        echo "a mount under $WORK is still there; leaving $WORK in place" >&2
    else
        rm -rf "$WORK"
    fi
}
bench_on_exit

log "scratch directory $WORK ($(bench_disk))"
mkdir -p "$WORK/mnt" "$WORK/memfs"

log "starting 3 sheep"
# shellcheck disable=SC2086 # empty, or -w and the size
start_cluster 3 ${BENCH_CACHE:+-w "$BENCH_CACHE"}
"$bin/dog" cluster format -c 3 -f -p "$port" </dev/null
"$bin/dog" vdi create -z "${BENCH_SHIFT:-22}" bench "$size" -p "$port"

log "mounting sheepfs"
"$bin/sheepfs" -p "$port" --log-file "$WORK/sheepfs.log" "$WORK/mnt" </dev/null
# sheepfs went to the background (setsid) once mounted; find it to be able to wait for it.
sheepfs_pid=$(pgrep -f -x "$bin/sheepfs -p $port --log-file $WORK/sheepfs.log $WORK/mnt" || true)
vol=$WORK/mnt/vdi/bench/volume
[ -f "$vol" ] || die "$vol is missing"
[ "$(stat -c %s "$vol")" = "$size_bytes" ] || die "$vol is $(stat -c %s "$vol") bytes, not $size_bytes"

gw_pid=${pids# }
gw_pid=${gw_pid%% *}
[ -n "$sheepfs_pid" ] || die "cannot find the sheepfs process"

log "mounting memfs"
"$bin/examples/memfs" "$WORK/memfs" --size "$size" </dev/null >"$WORK/memfs.log" 2>&1 &
memfs_pid=$!
i=0
until [ -f "$WORK/memfs/volume" ]; do
    kill -0 "$memfs_pid" 2>/dev/null || { cat "$WORK/memfs.log" >&2; die "memfs died"; }
    [ "$i" -lt 100 ] || die "memfs did not mount within 10 s"
    sleep 0.1
    i=$((i + 1))
done

log "preallocating the plain file"
plain=$WORK/plain.img
fallocate -l "$size_bytes" "$plain" 2>/dev/null ||
    dd if=/dev/zero of="$plain" bs=1M count="$size_mib" conv=fsync status=none

# --- Measurements --------------------------------------------------------------------

targets="sheepfs plain memfs"
path_of() {
    case "$1" in
        sheepfs) echo "$vol" ;;
        plain) echo "$plain" ;;
        memfs) echo "$WORK/memfs/volume" ;;
    esac
}
results=$WORK/results
: >"$results"
record() { echo "$1 $2 $3" >>"$results"; } # metric target value

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# MB/s (10^6 bytes per second) from dd's summary line.
dd_rate() {
    python3 -c '
import re, sys
lines = [l for l in sys.stdin.read().splitlines() if " copied, " in l]
if not lines:
    sys.exit("no dd summary")
m = re.match(r"(\d+) bytes .* copied, ([\d.]+) s", lines[-1])
print("%.1f" % (int(m.group(1)) / float(m.group(2)) / 1e6))
'
}

# Sanity check before timing anything: 8 MiB of random bytes written, caches dropped, read
# back and compared.
log "checking that each target returns what was written"
dd if=/dev/urandom of="$WORK/pattern" bs=1M count=8 status=none
for t in $targets; do
    f=$(path_of "$t")
    dd if="$WORK/pattern" of="$f" bs=1M seek=1 conv=fsync,notrunc status=none
    drop_caches
    if ! cmp -n $((8 << 20)) -i 0:$((1 << 20)) "$WORK/pattern" "$f" >&2; then
        echo "DATA MISMATCH on $t ($f)" >&2
        data_bad="${data_bad:-} $t"
    fi
done

# CPU ticks the whole machine has been busy so far, all CPUs, kernel included (/proc/stat:
# user, nice, system, irq and softirq; not idle, iowait or time stolen by the hypervisor).
machine_busy() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

for rep in $(seq "$reps"); do
for t in $targets; do
    f=$(path_of "$t")
    log "$t: sequential write, $size_mib MiB (round $rep of $reps)"
    busy_before=$(machine_busy)
    out=$(dd if=/dev/zero of="$f" bs=1M count="$size_mib" conv=fsync,notrunc 2>&1) || {
        echo "$out" >&2
        die "dd write to $t failed"
    }
    record seq_write "$t" "$(echo "$out" | dd_rate)"
    busy=$(($(machine_busy) - busy_before))
    record seq_write_cpu "$t" "$(awk -v b="$busy" -v hz="$(getconf CLK_TCK)" -v m="$size_mib" \
        'BEGIN { printf "%.2f", b / hz / m * 1024 }')"
    log "$t: sequential read"
    drop_caches
    out=$(dd if="$f" of=/dev/null bs=1M 2>&1) || {
        echo "$out" >&2
        die "dd read from $t failed"
    }
    record seq_read "$t" "$(echo "$out" | dd_rate)"
done
done

# O_DIRECT on FUSE: a file opened without FOPEN_DIRECT_IO still accepts O_DIRECT when the
# kernel and the filesystem allow it. Use it on every target if every target takes it, so
# that the random-I/O numbers measure the filesystem and not the page cache.
direct=1
for t in $targets; do
    f=$(path_of "$t")
    if ! dd if="$f" of=/dev/null bs=4k count=1 iflag=direct status=none 2>"$WORK/probe.err" ||
        ! dd if="$f" of="$f" bs=4k count=1 iflag=direct oflag=direct conv=notrunc status=none 2>>"$WORK/probe.err"; then
        echo "O_DIRECT does not work on $t: $(cat "$WORK/probe.err")" >&2
        direct=0
    fi
done
if [ "$direct" = 1 ]; then
    io_mode="O_DIRECT (fio --direct=1) on all three targets"
    fsync_opt=""
else
    io_mode="buffered (fio --direct=0): writes end with fsync (--end_fsync=1), caches dropped before reads"
    fsync_opt="--end_fsync=1"
fi
log "random I/O: $io_mode"

fio_run() { # target rw depth
    local t=$1 rw=$2 depth=$3 f json
    f=$(path_of "$t")
    json=$WORK/fio-$t-$rw-$depth.json
    [ "$rw" = randread ] && drop_caches
    # shellcheck disable=SC2086 # $fsync_opt is empty or one option
    [ "$t" = sheepfs ] && cpu_before=$(cpu_ticks)
    fio --name="$t-$rw-qd$depth" --filename="$f" --size="$size_bytes" --rw="$rw" --bs=4k \
        --ioengine=libaio --iodepth="$depth" --direct="$direct" $fsync_opt \
        --runtime="$runtime" --time_based --ramp_time=1 --randrepeat=0 \
        --fallocate=none --allow_file_create=0 --group_reporting --lat_percentiles=1 \
        --output-format=json --output="$json" >"$WORK/fio.err" 2>&1 || {
        cat "$WORK/fio.err" >&2
        die "fio $rw depth $depth on $t failed"
    }
    python3 - "$json" "$rw" <<'EOF' >>"$WORK/fio.tmp"
import json, sys
path, rw = sys.argv[1], sys.argv[2]
text = open(path).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
side = job["read" if rw == "randread" else "write"]
# Total latency (submission + completion), not clat: on FUSE, io_submit blocks until the
# request is served, so the whole wait is submission latency and clat is ~0.
lat = side["lat_ns"] if "percentile" in side.get("lat_ns", {}) else side["clat_ns"]
p99 = lat.get("percentile", {}).get("99.000000", 0) / 1000
print("%.0f %.0f %d" % (side["iops"], p99, side["total_ios"]))
EOF
    read -r iops p99 ios <"$WORK/fio.tmp"
    rm -f "$WORK/fio.tmp"
    record "${rw}_qd${depth}_iops" "$t" "$iops"
    record "${rw}_qd${depth}_p99_us" "$t" "$p99"
    if [ "$t" = sheepfs ]; then
        # shellcheck disable=SC2086 # two lists of three numbers
        set -- $cpu_before $(cpu_ticks)
        tick_us=$((1000000 / $(getconf CLK_TCK)))
        echo "$rw qd$depth $ios $((($4 - $1) * tick_us)) $((($5 - $2) * tick_us)) $((($6 - $3) * tick_us))" >>"$WORK/cpu"
    fi
}

# CPU ticks (user + system) so far of the gateway sheep, of the other two sheep together, and
# of sheepfs.
cpu_ticks() {
    local gw=0 others=0 fs=0 p t
    for p in $pids; do
        t=$(awk '{ print $14 + $15 }' "/proc/$p/stat")
        if [ "$p" = "$gw_pid" ]; then gw=$t; else others=$((others + t)); fi
    done
    fs=$(awk '{ print $14 + $15 }' "/proc/$sheepfs_pid/stat")
    echo "$gw $others $fs"
}

for t in $targets; do
    for rw in randwrite randread; do
        for depth in 1 16; do
            log "$t: 4 KiB $rw, depth $depth, ${runtime} s"
            fio_run "$t" "$rw" "$depth"
        done
    done
done

# --- Report --------------------------------------------------------------------------

echo
echo "sheepfs benchmark: volume $size ($size_bytes bytes), 3 copies on 3 local sheep, fio ${runtime} s per job"
echo "object cache: ${BENCH_CACHE:-off}; object size: 2^${BENCH_SHIFT:-22} bytes"
echo "disk: $(bench_disk); kernel $(uname -r); $(nproc) CPUs"
echo "random I/O: $io_mode; libaio, 4 KiB blocks;"
echo "  p99 lat = 99th percentile of submission + completion latency (fio lat_ns)"
[ -z "${data_bad:-}" ] || echo "DATA CHECK FAILED on:$data_bad"
[ -n "${data_bad:-}" ] || echo "data check (8 MiB random, read back after drop_caches): ok on all targets"
echo
peaks=""
n=0
for p in $pids; do
    peaks="$peaks sheep$n=$(awk '/^VmHWM/ { print $2 }' "/proc/$p/status")"
    n=$((n + 1))
done
peaks="$peaks sheepfs=$(awk '/^VmHWM/ { print $2 }' "/proc/$sheepfs_pid/status")"
cache_bytes=0
[ -z "${BENCH_CACHE:-}" ] || cache_bytes=$(bench_bytes "$BENCH_CACHE")
python3 - "$results" "$WORK/cpu" "$peaks" "$cache_bytes" <<'EOF'
import os
import statistics
import sys

runs = {}
order = []
for line in open(sys.argv[1]):
    metric, target, value = line.split()
    if metric not in runs:
        order.append(metric)
        runs[metric] = {}
    runs[metric].setdefault(target, []).append(float(value))
values = {m: {t: statistics.median(v) for t, v in ts.items()} for m, ts in runs.items()}

labels = {
    "seq_write": "seq write 1M (MB/s)",
    "seq_write_cpu": "  its CPU, machine (s/GiB)",
    "seq_read": "seq read 1M (MB/s)",
}
for rw in ("randwrite", "randread"):
    for d in (1, 16):
        labels[f"{rw}_qd{d}_iops"] = f"4k {rw} qd{d} (IOPS)"
        labels[f"{rw}_qd{d}_p99_us"] = f"4k {rw} qd{d} p99 lat (us)"

def ratio(a, b):
    return "%.2f" % (a / b) if b else "-"

head = ("metric", "sheepfs", "plain", "memfs", "sheepfs/plain", "sheepfs/memfs")
rows = []
for m in order:
    v = values[m]
    s, p, f = v.get("sheepfs", 0), v.get("plain", 0), v.get("memfs", 0)
    fmt = lambda x: "%.1f" % x if x < 100 else "%.0f" % x
    rows.append((labels.get(m, m), fmt(s), fmt(p), fmt(f), ratio(s, p), ratio(s, f)))
widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
for r in [head] + rows:
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))

for m, fmt in (("seq_write", "%.0f"), ("seq_write_cpu", "%.1f"), ("seq_read", "%.0f")):
    if max(len(v) for v in runs[m].values()) > 1:
        each = "; ".join(f"{t} " + " ".join(fmt % x for x in v) for t, v in runs[m].items())
        print(f"  {labels[m].strip()}, every round: {each}")

print()
print("targets (medians):")
def target(name, got, need, how):
    verdict = "target met" if got >= need else "target missed"
    print(f"  {name}: {got:.1f} vs {need:.1f} needed ({how}): {verdict}")
sw = values["seq_write"]
target("sequential write", sw["sheepfs"], 0.5 * sw["plain"] / 3,
       f"0.5 x plain {sw['plain']:.1f} MB/s / 3 copies")
sr = values["seq_read"]
target("sequential read", sr["sheepfs"], 0.4 * sr["memfs"],
       f"0.4 x memfs {sr['memfs']:.1f} MB/s")
rr = values["randread_qd16_iops"]
target("4 KiB random read, depth 16", rr["sheepfs"], 0.2 * rr["plain"],
       f"0.2 x plain {rr['plain']:.0f} IOPS")
cache = int(sys.argv[4])
rw = values["randwrite_qd16_iops"]
p99 = values["randwrite_qd1_p99_us"]
if cache:
    target("4 KiB random write, depth 16 (cached)", rw["sheepfs"], 0.4 * rw["plain"],
           f"0.4 x plain {rw['plain']:.0f} IOPS")
    allowed = 10 * p99["plain"]
    target("sequential write (cached)", sw["sheepfs"], 0.8 * sw["plain"] / 3,
           f"0.8 x plain {sw['plain']:.1f} MB/s / 3 copies")
else:
    target("4 KiB random write, depth 16", rw["sheepfs"], 0.15 * rw["plain"],
           f"0.15 x plain {rw['plain']:.0f} IOPS")
    allowed = 1000
print(f"  4 KiB random write, depth 1: p99 {p99['sheepfs']:.0f} us vs {allowed:.0f} us allowed: "
      + ("target met" if p99["sheepfs"] <= allowed else "target missed"))

ncpu = os.cpu_count()
core_s = values["seq_write_cpu"]["sheepfs"]
if core_s > 0:
    print(f"  sequential write on sheepfs took {core_s:.2f} s of CPU per GiB (whole machine, kernel "
          f"included): with all {ncpu} CPUs busy throughout it could reach at most "
          f"{ncpu / core_s * 1.073741824e3:.0f} MB/s")
else:
    print("  sequential write on sheepfs: too short to measure its CPU time")

print()
print("CPU per random 4 KiB operation on sheepfs (us; gateway sheep, the other two sheep, sheepfs):")
for line in open(sys.argv[2]):
    rw, depth, ios, gw, others, fs = line.split()
    ios = max(int(ios), 1)
    print(f"  {rw} {depth}: gateway {int(gw) / ios:.0f}, other sheep {int(others) / ios:.0f}, "
          f"sheepfs {int(fs) / ios:.0f}  ({ios} ops)")
print()
peaks = dict(kv.split("=") for kv in sys.argv[3].split())
print("peak RSS (VmHWM) over the run, MiB: " + ", ".join(f"{k} {int(v) / 1024:.0f}" for k, v in peaks.items()))
sheep_peak = max(int(v) * 1024 for k, v in peaks.items() if k.startswith("sheep") and k != "sheepfs")
fs_peak = int(peaks["sheepfs"]) * 1024
print(f"  sheep peak {sheep_peak >> 20} MiB vs {(cache + (100 << 20)) >> 20} allowed (cache + 100 MiB): "
      + ("target met" if sheep_peak <= cache + (100 << 20) else "target missed"))
print(f"  sheepfs peak {fs_peak >> 20} MiB vs 100 allowed: " + ("target met" if fs_peak <= 100 << 20 else "target missed"))
EOF
