//! sheepfs's command line: what it accepts and the help it prints, for the binary and the
//! docs generator (`xtask docs`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

/// Mounts a Sheepdog cluster as a filesystem: every VDI is a directory holding its bytes
/// (`volume`), control files (`snapshot`, `snapshots/<id>/clone`) and an `info` file;
/// `/cluster/info`, `/cluster/recovery`, `/node/list`, `/node/info` and `/node/metrics` are
/// monitoring files for `cat`; `/config/object_cache` switches the gateway's object cache.
///
/// Returns once the mount is ready and keeps serving in the background (`-f` stays in the
/// foreground). `umount MOUNTPOINT` or SIGTERM flushes everything and exits.
#[derive(Parser, Debug)]
#[command(name = "sheepfs", version = protocol::VERSION)]
pub struct Args {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Address of the gateway sheep.
    #[arg(short, long, default_value = "127.0.0.1", env = "SHEEPDOG_DOG_ADDR")]
    pub address: IpAddr,
    /// Port of the gateway sheep.
    #[arg(short, long, default_value_t = 7000, env = "SHEEPDOG_DOG_PORT")]
    pub port: u16,
    /// Stay in the foreground.
    #[arg(short, long)]
    pub foreground: bool,
    /// How long to keep retrying while the gateway is unreachable before failing with EIO.
    #[arg(long, default_value_t = 15)]
    pub retry_secs: u64,
    /// How long `/node/list`, `/cluster/recovery` and `/cluster/scrub` wait for each node's
    /// answer. A node that does not answer in time (hung, or cut off) shows `-` in its row;
    /// up to 64 nodes are asked at once, so one hung node costs this once.
    #[arg(long, default_value_t = crate::backend::NODE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=300))]
    pub node_timeout_secs: u64,
    /// FUSE worker threads: each takes requests from the kernel. A read or write with no other
    /// in flight runs on the thread that took it; one that arrives while others are in
    /// flight is handed to the main runtime, so that the thread is free for the next; so is
    /// every fsync and open (a monitoring file's open asks every node). Other requests
    /// (lookups, directories, control files) run one at a time per thread. Few threads are quicker under load: a thread that comes back finds the
    /// next request waiting instead of the kernel waking a sleeping one for it. More help
    /// only when many slow control-file or lookup requests come at once.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Largest request sent to the gateway, in KiB: a larger read or write is cut into
    /// pieces of this size that are all in flight at once.
    #[arg(long, default_value_t = volume::DEFAULT_CHUNK >> 10, value_parser = clap::value_parser!(u32).range(4..=4096))]
    pub chunk_kib: u32,
    /// Kernel read-ahead for the mount, in KiB (the default of 128 starves sequential reads).
    /// Needs root (it is set through /sys/class/bdi); 0 leaves the kernel's value.
    #[arg(long, default_value_t = 4096)]
    pub read_ahead_kib: u32,
    /// Start with the gateway's object cache off for this mount (`/config/object_cache`
    /// switches it at run time). It only matters where the gateway sheep runs with `-w`.
    #[arg(long)]
    pub no_object_cache: bool,
    /// File holding the cluster secret, when the sheep run with --auth-key-file.
    #[arg(long, value_name = "FILE", env = "SHEEPDOG_AUTH_KEY_FILE")]
    pub auth_key_file: Option<PathBuf>,
    /// Let other users than the one who mounts use the mount (FUSE's allow_other). The
    /// kernel then checks each file's mode bits: volumes are 0600, snapshot volumes 0400,
    /// control files 0200 or 0600, monitoring files 0444, all owned by the mounting user.
    #[arg(long)]
    pub allow_other: bool,
    /// Write logs here (in the background they are discarded otherwise).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}
