#!/bin/sh
# Runs every cargo-fuzz target for SECONDS each (default 60) and prints how many inputs each
# executed. Needs a nightly toolchain (libFuzzer, sanitizers) and cargo-fuzz:
#
#   rustup toolchain install nightly && cargo install cargo-fuzz
#   contrib/fuzz.sh 600             # ten minutes per target
#   contrib/fuzz.sh 60 headers      # one target
#
# New inputs that reach new code are kept in fuzz/corpus/<target>/, which the stable test
# `tests/tests/fuzz_corpora.rs` replays in every test run; minimise before committing them
# (cargo +nightly fuzz cmin TARGET). A crash leaves its input in fuzz/artifacts/<target>/.
set -eu
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift 2>/dev/null || true
targets=${*:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build -O
total=0
for t in $targets; do
    log=$(mktemp)
    if ! cargo +nightly fuzz run -O "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz.sh: $t failed; its input is in fuzz/artifacts/$t/" >&2
        rm -f "$log"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    printf '%-16s %12s inputs in %ss\n' "$t" "${runs:-?}" "$secs"
    total=$((total + ${runs:-0}))
    rm -f "$log"
done
printf '%-16s %12s inputs\n' total "$total"
