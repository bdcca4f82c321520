#!/bin/sh
# Runs the whole test suite on a fresh Debian 12 machine (as root): installs what the tests
# drive (fio, qemu-io, nbdcopy, mkfs.ext4, losetup, fuse), builds every binary, runs every test.
set -eu
cd "$(dirname "$0")/.."

pkgs="fio e2fsprogs qemu-utils libnbd-bin util-linux fuse3 procps zookeeper iproute2 python3"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi

cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
