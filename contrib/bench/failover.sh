#!/bin/bash
# Measures how long writes stall when a replica dies mid-write: a 3-node local cluster (3
# copies), sheepfs mounted on node 0, a writer that writes 1 MiB blocks (O_DIRECT) into the
# volume in a loop and times each one, and `kill -9` of node 2 while it writes. Prints the
# longest write before the kill (the baseline), the longest after it (the stall), and checks
# every byte written through another gateway afterwards.
#
# Usage (as root, from anywhere in the repository; needs /dev/fuse and python3):
#   contrib/bench/failover.sh
# Environment:
#   BENCH_RUNS=3        kills measured (a fresh cluster each)
#   BENCH_DIR=/var/tmp  where the scratch directory goes
#   BENCH_NO_BUILD=1    skip `cargo build` (binaries must already be in target/release/)
set -eu
. "$(dirname "$0")/common.sh"
bench_options - "$@"

runs=${BENCH_RUNS:-3}
[ "$(id -u)" = 0 ] || die "run as root (mounts)"
case "$runs" in '' | 0 | *[!0-9]*) die "BENCH_RUNS must be a positive number" ;; esac
bench_build

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/failover-bench.XXXXXX")
pids=""
cleanup() {
    if grep -q " $WORK/mnt " /proc/mounts; then umount "$WORK/mnt" || umount -l "$WORK/mnt"; fi
    kill_all $pids
    rm -rf "$WORK"
}
bench_on_exit

one_run() { # run number
    local r=$1 d=$WORK port1 victim
    rm -rf "$d"/node* "$d"/rv "$d"/sheep*.log "$d/mnt"
    mkdir -p "$d/mnt"
    pids=""
    start_cluster 3
    # The victim is killed on purpose: no job notice for it.
    # shellcheck disable=SC2086
    disown $pids
    read -r _ port1 _ <<<"$ports"
    "$bin/dog" cluster format -c 3 -p "$port" </dev/null
    "$bin/dog" vdi create fo 1G -p "$port"
    "$bin/sheepfs" -p "$port" --log-file "$d/sheepfs.log" "$d/mnt" </dev/null
    # shellcheck disable=SC2086
    set -- $pids
    victim=$3
    python3 - "$d/mnt/vdi/fo/volume" "$victim" "$d/written" <<'EOF'
import mmap, os, signal, sys, time
path, victim, record = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
before, after = [], []
start = time.monotonic()
killed_at = None
i = 0
while True:
    now = time.monotonic()
    if killed_at is None and now - start >= 1.5:
        os.kill(victim, signal.SIGKILL)
        killed_at = now
    if killed_at is not None and now - killed_at >= 4.0:
        break
    buf.seek(0)
    buf.write(i.to_bytes(8, "little") * (1 << 17))
    t0 = time.monotonic()
    os.pwrite(fd, buf, (i % 1024) << 20)
    dt = time.monotonic() - t0
    (before if killed_at is None or t0 < killed_at else after).append(dt)
    i += 1
os.fsync(fd)
os.close(fd)
with open(record, "w") as f:
    f.write(str(i))
print("%d writes; longest before the kill %.0f ms, longest after it %.0f ms" % (
    i, max(before) * 1000, max(after) * 1000))
EOF
    n=$(cat "$d/written")
    # Every block holds the index of the last write to it.
    "$bin/dog" vdi read fo 0 $((1024 << 20)) -p "$port1" >"$d/readback"
    python3 - "$d/readback" "$n" <<'EOF'
import sys
data, n = open(sys.argv[1], "rb").read(), int(sys.argv[2])
last = {}
for i in range(n):
    last[i % 1024] = i
for blk in range(1024):
    want = last.get(blk, 0).to_bytes(8, "little") * (1 << 17) if blk in last else bytes(1 << 20)
    if data[blk << 20:(blk + 1) << 20] != want:
        sys.exit("block %d differs after the failover" % blk)
print("every block read back through node 1 as written")
EOF
    umount "$d/mnt"
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $pids; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    pids=""
    log "run $r done"
}

for r in $(seq "$runs"); do
    one_run "$r"
done
