#!/bin/bash
# Cluster snapshots and backups of a 1 GiB VDI on a 3-node local cluster (2 copies):
#  - `dog cluster snapshot save` of the full VDI, timed against the same bytes read out with
#    `dog vdi read` into a local file (the baseline: what reading the VDI costs at all);
#  - the same after a 1% change (only new slices are stored: the farm's growth is printed);
#  - the size of a differential `dog vdi backup` for 1% changed in one run and for 1%
#    changed as scattered 4 KiB writes (a record spans an object's first to last changed
#    sector, as in Sheepdog 1.0.1's format);
#  - `dog cluster snapshot load` after a reformat, checked byte for byte.
#
# Usage (from anywhere in the repository; needs python3):
#   contrib/bench/farm.sh
# Environment:
#   BENCH_DIR=/var/tmp  where the scratch directory goes
#   BENCH_NO_BUILD=1    skip `cargo build` (binaries must already be in target/release/)
set -eu
. "$(dirname "$0")/common.sh"
bench_options - "$@"

bench_build

bench_scratch farm-bench

now() { date +%s.%N; }
secs() { python3 -c "print('%.2f' % ($2 - $1))"; }
mbps() { python3 -c "print('%.0f' % ($1 / 1048576 / ($3 - $2)))"; }
dog() { "$bin/dog" "$@" -p "$port"; }

start_cluster 3 || die "the cluster did not form"
dog cluster format -c 2 </dev/null
size=$((1 << 30))
dog vdi create v 1G
log "filling the VDI with 1 GiB of random bytes"
head -c "$size" /dev/urandom >"$WORK/image"
dog vdi write v 0 "$size" <"$WORK/image"
rm "$WORK/image"

t0=$(now)
dog vdi read v 0 "$size" >"$WORK/baseline"
t1=$(now)
rm "$WORK/baseline"
dog cluster snapshot save full "$WORK/farm" >/dev/null
t2=$(now)
farm1=$(du -sb "$WORK/farm" | cut -f1)
echo "read the VDI into a file (baseline): $(secs "$t0" "$t1") s, $(mbps "$size" "$t0" "$t1") MiB/s"
echo "cluster snapshot save, 1 GiB:        $(secs "$t1" "$t2") s, $(mbps "$size" "$t1" "$t2") MiB/s" \
    "($(python3 -c "print('%.2f' % (($t2 - $t1) / ($t1 - $t0)))") x the baseline), farm $farm1 bytes"

dog vdi snapshot -s a v
# 1% in one run: 10 MiB at 100 MiB.
head -c $((10 << 20)) /dev/urandom | dog vdi write v $((100 << 20)) $((10 << 20))
dog vdi snapshot -s b v
# 1% scattered: 2621 writes of 4 KiB at random 4 KiB-aligned offsets.
python3 - "$WORK/offsets" <<'EOF'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    for o in random.sample(range(1 << 18), 2621):
        f.write("%d\n" % (o * 4096))
EOF
while read -r off; do
    head -c 4096 /dev/urandom | dog vdi write v "$off" 4096
done <"$WORK/offsets"
dog vdi snapshot -s c v
run=$(dog vdi backup -F a -s b v | wc -c)
scattered=$(dog vdi backup -F b -s c v | wc -c)
echo "backup of 1% changed in one run:       $run bytes ($(python3 -c "print('%.2f' % ($run / $size * 100))")% of the VDI)"
echo "backup of 1% changed as 4 KiB writes:  $scattered bytes ($(python3 -c "print('%.2f' % ($scattered / $size * 100))")% of the VDI)"

t0=$(now)
dog cluster snapshot save after "$WORK/farm" >/dev/null
t1=$(now)
farm2=$(du -sb "$WORK/farm" | cut -f1)
echo "cluster snapshot save after 2% changed: $(secs "$t0" "$t1") s, the farm grew by $((farm2 - farm1)) bytes"

dog vdi read v 0 "$size" >"$WORK/expected"
dog cluster format -c 2 -f </dev/null
t0=$(now)
dog cluster snapshot load after "$WORK/farm" >/dev/null
t1=$(now)
echo "cluster snapshot load, 1 GiB:        $(secs "$t0" "$t1") s, $(mbps "$size" "$t0" "$t1") MiB/s"
dog vdi read v 0 "$size" | cmp - "$WORK/expected" || die "the loaded VDI differs"
echo "the loaded VDI reads as saved"
