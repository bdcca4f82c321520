# Helpers the bench scripts share; each sources this file first.

# A message on stderr, prefixed with the script's name, and exit 1.
die() { echo "$(basename "$0" .sh): $*" >&2; exit 1; }
# A progress line on stderr.
log() { echo "== $*" >&2; }

# Moves to the repository root, sets $bin to the release binaries and builds them unless
# BENCH_NO_BUILD=1; fails unless sheep and dog are there.
bench_build() {
    local b
    cd "$(dirname "$0")/../.."
    bin=$(pwd)/target/release
    if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
        log "building release binaries"
        cargo build --release --bins
    fi
    for b in sheep dog; do [ -x "$bin/$b" ] || die "$bin/$b is missing"; done
}

# A TCP port on 127.0.0.1 that is free now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The comment at the top of the script (line 2 up to `set -eu`): its usage.
bench_usage() { sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# The filesystem and device that hold $WORK ("ext4 on /dev/vda"): the disk a bench measures.
bench_disk() { df -T "$WORK" | awk 'NR == 2 { print $2 " on " $1 }'; }

# Reads the command line: -h or --help prints the usage and exits; --quick sets quick=1 in
# scripts that take it (they pass `quick` first, the others `-`); anything else is an error.
bench_options() {
    local takes=$1 arg
    shift
    quick=0
    for arg in "$@"; do
        case "$arg" in
            -h | --help) bench_usage; exit 0 ;;
            --quick) [ "$takes" = quick ] && quick=1 && continue ;;
        esac
        echo "unknown argument: $arg" >&2
        bench_usage >&2
        exit 2
    done
}

# Runs the script's `cleanup` once, however the script ends (done, failed, ^C, killed), then
# exits with the status it ended with. `cleanup` runs without `set -e`: it undoes whatever
# part of the setup happened.
bench_on_exit() {
    trap bench_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_exit() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    cleanup
    exit "$rc"
}

# Makes the scratch directory $WORK (NAME.XXXXXX under BENCH_DIR, default /var/tmp), empties
# $pids, and arranges that on exit the sheep in $pids are killed and $WORK is removed.
bench_scratch() {
    WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/$1.XXXXXX")
    pids=""
    cleanup() {
        kill_all $pids
        rm -rf "$WORK"
    }
    bench_on_exit
}

# Kills the processes named (SIGKILL) and reaps them (only them: others keep running).
kill_all() {
    local p
    for p in "$@"; do kill -KILL "$p" 2>/dev/null; done
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# Starts sheep number N (zone N) of a cluster on the local driver in $WORK, on port P, with
# any further arguments; its store is $WORK/nodeN, its log $WORK/sheepN.log. Appends its pid
# to $pids ($! holds it too).
start_sheep() {
    local n=$1 p=$2
    shift 2
    "$bin/sheep" -p "$p" -c "local:$WORK/rv" -z "$n" --log-file "$WORK/sheep$n.log" "$@" "$WORK/node$n" \
        </dev/null >>"$WORK/sheep$n.log" 2>&1 &
    pids="$pids $!"
}

# Starts sheep 0 to N-1 (start_sheep, each with the further arguments) on free ports, listed
# in $ports ($port: the first), and waits until they list each other; fails if they do not
# within 30 s.
start_cluster() {
    local count=$1 n p
    shift
    ports=""
    for n in $(seq "$count"); do ports="$ports $(free_port)"; done
    n=0
    for p in $ports; do
        start_sheep "$n" "$p" "$@"
        n=$((n + 1))
    done
    read -r port _ <<<"$ports"
    wait_members "$port" "$count"
}

# SIZE in bytes: a positive number with an optional K, M, G or T (powers of 1024), as dog
# and memfs read it; anything else is an error.
bench_bytes() {
    python3 - "$1" <<'EOF'
import sys
s = sys.argv[1].strip()
shift = {"K": 10, "M": 20, "G": 30, "T": 40}.get(s[-1:].upper(), 0)
digits = s[:-1] if shift else s
if not digits.isdigit() or int(digits) == 0:
    sys.exit(f"not a size: {s!r}")
print(int(digits) << shift)
EOF
}

# Waits up to 30 s until the sheep on port P lists N members; fails after that.
wait_members() {
    local p=$1 want=$2 i
    for i in $(seq 300); do
        [ "$("$bin/dog" node list -r -p "$p" 2>/dev/null | wc -l)" = "$want" ] && return 0
        sleep 0.1
    done
    echo "$want sheep did not list each other within 30 s; the end of their logs:" >&2
    tail -n 20 "$WORK"/sheep*.log >&2
    return 1
}

# The figures of the job in fio's JSON output FILE, as "IOPS MB/s P99-µs": of its reads, or
# of its writes when it read nothing.
fio_summary() {
    python3 - "$1" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] else job["write"]
p99 = side.get("lat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000
print("%.0f %.1f %.0f" % (side["iops"], side["bw_bytes"] / 1e6, p99))
EOF
}
