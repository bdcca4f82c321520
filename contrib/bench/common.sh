# Helpers the bench scripts share; each sources this file (after defining `log`).

# Moves to the repository root, sets $bin to the release binaries and builds them unless
# BENCH_NO_BUILD=1.
bench_build() {
    cd "$(dirname "$0")/../.."
    bin=$(pwd)/target/release
    if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
        log "building release binaries"
        cargo build --release --bins
    fi
}

# A TCP port on 127.0.0.1 that is free now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
