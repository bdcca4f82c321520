//! `dog`'s command line: what it accepts and the help it prints. The `dog` binary runs it;
//! the docs generator (`xtask docs`) renders its man page and completions from it.

pub mod args;

use clap::{Args, Parser, Subcommand};

pub use args::Snap;

#[derive(Parser, Debug)]
#[command(
    name = "dog",
    version = protocol::VERSION,
    about = "Sheepdog administrator utility",
    long_about = "Sheepdog administrator utility: formats and inspects a Sheepdog cluster and \
                  manages its VDIs (virtual disk images).\n\n\
                  Every command talks to one sheep, 127.0.0.1:7000 unless -a/-p (or the \
                  SHEEPDOG_DOG_ADDR / SHEEPDOG_DOG_PORT environment variables) say otherwise. \
                  -a and -p may be given after the subcommand, e.g. `dog vdi list -p 7001`.\n\n\
                  Sizes and offsets are bytes, or a number with a K, M, G, T or P suffix \
                  (powers of 1024): 512, 64M, 1G.",
    after_help = "Exit status: 0 on success, 1 when a command fails, 2 for usage errors."
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Where the sheep is.
#[derive(Args, Debug)]
pub struct Conn {
    /// Address of the sheep to talk to [default: $SHEEPDOG_DOG_ADDR, else 127.0.0.1]
    #[arg(short = 'a', long = "address", value_name = "ADDR", global = true)]
    pub address: Option<String>,
    /// Port of the sheep to talk to [default: $SHEEPDOG_DOG_PORT, else 7000]
    #[arg(short = 'p', long = "port", value_name = "PORT", global = true)]
    pub port: Option<u16>,
    /// File holding the cluster secret, when the sheep run with --auth-key-file
    #[arg(long, value_name = "FILE", global = true, env = "SHEEPDOG_AUTH_KEY_FILE")]
    pub auth_key_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Format the cluster, show its status and epoch history, or shut it down
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// List the member nodes and their disk usage
    #[command(subcommand)]
    Node(NodeCmd),
    /// Create, list, snapshot, clone, read, write, resize and delete VDIs
    #[command(subcommand)]
    Vdi(VdiCmd),
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Create a Sheepdog store: wipe every VDI and object and start the cluster at epoch 1
    ///
    /// Asks for confirmation when the cluster already holds VDIs or when more copies are
    /// asked for than there are nodes; -f skips the questions.
    Format {
        /// Default redundancy of new VDIs: N copies (1 to 31) or D:P erasure coding
        /// [default: chosen by the server, 3]
        #[arg(short = 'c', long = "copies", value_name = "COPIES", value_parser = args::parse_copies)]
        copies: Option<(u8, u8)>,
        /// Default object size of new VDIs as a power of two, 20 (1 MiB) to 31 (2 GiB)
        /// [default: chosen by the server, 22 = 4 MiB]
        #[arg(short = 'z', long = "block_size_shift", value_name = "SHIFT", value_parser = args::parse_block_size_shift)]
        block_size_shift: Option<u8>,
        /// Backend store of the objects: `plain` (one file per object), or `farm`: the same
        /// working directory, plus a farm on each node where the copies it drops after a
        /// recovery are kept, hashed and deduplicated (`dog node farm`, `sheep --farm-keep`)
        #[arg(short = 'b', long = "store", value_name = "STORE", default_value = "plain")]
        store: String,
        /// Do not ask for confirmation
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// Refuse writes while fewer nodes than copies are up
        #[arg(short = 't', long = "strict")]
        strict: bool,
        /// Keep each node's fixed number of vnodes instead of weighting them by disk space
        #[arg(short = 'V', long = "fixedvnodes")]
        fixed_vnodes: bool,
    },
    /// Show whether the cluster runs, when it was created and its epoch history
    ///
    /// One line per epoch, newest first: the time it started, its number and its members
    /// as host:port:vnodes.
    Info {
        /// Raw output: no headers, times as Unix seconds
        #[arg(short = 'r', long = "raw")]
        raw: bool,
        /// Also show the store, the redundancy policy and the vnode strategy
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
    },
    /// Stop every sheep of the cluster
    Shutdown,
    /// Save, list, check, load and delete cluster snapshots: every VDI (or some) at one moment, kept
    /// in a farm directory outside the cluster
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Show each node's background scrub (sheep --scrub-rate): passes, progress, copies
    /// repaired, objects it could not repair, then the latest findings
    Scrub {
        /// Raw output: no header, fields separated by single spaces; findings as
        /// `finding HOST:PORT TEXT`
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
}

/// `dog cluster snapshot ...`. A farm is a directory where each 128 KiB slice of VDI data
/// is stored once, named by its SHA-1, whichever VDIs and snapshots share it; its format is
/// described in ARCHITECTURE.md ("Farm").
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot every working VDI (or the VDIs named) at one moment and copy them into DIR
    ///
    /// The cut snapshots every VDI in one cluster operation: writes before it are in the
    /// cluster snapshot, writes after it are not, for all VDIs alike. Writes wait only for
    /// that moment, not for the copy, which then reads those snapshots; they are deleted
    /// when it is done. At most 1024 VDIs per cluster snapshot. DIR is created when missing. Slices of zeros take no
    /// space; slices already in the farm are not stored again.
    Save {
        /// Name of the cluster snapshot (unique within DIR)
        #[arg(value_parser = args::parse_farm_tag)]
        tag: String,
        /// The farm directory
        dir: std::path::PathBuf,
        /// Only these VDIs [default: every working VDI]
        #[arg(value_parser = args::parse_name)]
        vdis: Vec<String>,
    },
    /// List the cluster snapshots in DIR: index, tag, time, number of VDIs, their size
    List {
        /// The farm directory
        dir: std::path::PathBuf,
        /// Raw output: no header, fields separated by single spaces, times as Unix seconds
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// Re-read every object of a cluster snapshot and check it against its SHA-1
    ///
    /// Names each object that is missing or whose content does not match its name, and
    /// where it is used. Exit status 1 if any.
    Check {
        /// Name of the cluster snapshot
        tag: String,
        /// The farm directory
        dir: std::path::PathBuf,
    },
    /// Delete a cluster snapshot from DIR, and every object no other snapshot there uses
    ///
    /// Waits for saves into DIR to finish. Refused, with nothing deleted, when another
    /// snapshot's index cannot be read.
    Delete {
        /// Name of the cluster snapshot
        tag: String,
        /// The farm directory
        dir: std::path::PathBuf,
    },
    /// Create the VDIs of a cluster snapshot (all, or the ones named) from its copy in DIR
    ///
    /// Everything to load is checked against its SHA-1 first, and no VDI of that name may
    /// exist in the cluster: otherwise nothing is changed. Each VDI comes back as a new
    /// working VDI with the size, redundancy and object size it had; its snapshot history
    /// is not part of a cluster snapshot.
    Load {
        /// Name of the cluster snapshot
        tag: String,
        /// The farm directory
        dir: std::path::PathBuf,
        /// Only these VDIs [default: every VDI of the snapshot]
        #[arg(value_parser = args::parse_name)]
        vdis: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List the member nodes: id, host:port, number of vnodes and zone
    List {
        /// Raw output: no header, fields separated by single spaces
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// Show each node's store size, use and free space, then the cluster totals
    Info {
        /// Raw output: no header, sizes in bytes
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// Show each node's recovery: objects done and to do, and the last epoch it recovered
    Recovery {
        /// Raw output: no header, fields separated by single spaces
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// Show the request counters of the node dog talks to
    ///
    /// Two lines, Client (requests this node served as a gateway) and Peer (requests other
    /// nodes sent it): in flight now, total, writes, reads, removes, flushes, bytes received
    /// and sent. `sheep --metrics` serves the same counters with latencies.
    Stat {
        /// Raw output: no header or row names, tab-separated, sizes in bytes
        #[arg(short = 'r', long = "raw")]
        raw: bool,
        /// Print the counters every second with the rates since the last line, until ^C
        #[arg(short = 'w', long = "watch")]
        watch: bool,
    },
    /// The disks of a node's store (this implementation has one per node)
    #[command(subcommand)]
    Md(MdCmd),
    /// The virtual nodes of the node dog talks to (`-a`/`-p`)
    #[command(subcommand)]
    Vnodes(VnodesCmd),
    /// Read the farm of a node of a `-b farm` cluster, on the node's machine: the copies it
    /// dropped after each recovery, one system snapshot per epoch
    ///
    /// DIR is the sheep's directory (its farm is DIR/farm) or the farm itself. Every read
    /// checks each farm object against its SHA-1. The format is in ARCHITECTURE.md ("Farm").
    #[command(subcommand)]
    Farm(NodeFarmCmd),
}

#[derive(Subcommand, Debug)]
pub enum NodeFarmCmd {
    /// List the system snapshots: index, time, epoch, copies, their size, the members then;
    /// last, what the farm takes on disk (not in raw output)
    List {
        /// The sheep's directory, or its farm
        dir: std::path::PathBuf,
        /// Raw output: no header, fields separated by single spaces, times as Unix seconds
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// Re-read every object the system snapshots use and check it against its SHA-1
    ///
    /// Names each object that is missing or whose content does not match its name, and the
    /// snapshot that uses it. Exit status 1 if any.
    Check {
        /// The sheep's directory, or its farm
        dir: std::path::PathBuf,
    },
    /// Write a dropped copy of object OID (16 hex digits, its file name in a sheep's obj/) to
    /// standard output, from the newest snapshot that holds one
    ///
    /// Every slice is checked before the first byte is written: a corrupt copy fails with the
    /// farm object named, and prints nothing.
    Read {
        /// The sheep's directory, or its farm
        dir: std::path::PathBuf,
        /// The object id
        #[arg(value_parser = args::parse_oid)]
        oid: u64,
        /// From the snapshot of this epoch only
        #[arg(short = 'e', long = "epoch")]
        epoch: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VnodesCmd {
    /// Give the node COUNT vnodes on the hash ring, or `auto` to let its count follow its
    /// store's capacity again (or its `sheep -V`)
    ///
    /// The cluster agrees on the change as an event: a new epoch begins and objects move to
    /// where the new ring places them, at the recovery rate limit, while client I/O goes on.
    /// The count lasts until the node joins again (a restart, or a ZooKeeper session
    /// expiry); put `vnodes` in its configuration to keep it.
    /// A gateway-only node keeps zero vnodes.
    Set {
        /// 1 to 65535, or `auto`
        #[arg(value_parser = args::parse_vnodes)]
        count: args::Vnodes,
    },
}

#[derive(Subcommand, Debug)]
pub enum MdCmd {
    /// Show the disk of the node's store: size, used (by objects), free and path
    Info {
        /// Every node of the cluster, not only the one dog talks to
        #[arg(short = 'A', long = "all")]
        all: bool,
        /// Raw output: one line per disk, host:port first, sizes in bytes
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum VdiCmd {
    /// Create a VDI of SIZE bytes (e.g. 1G); no data object exists until it is written
    Create {
        /// Name of the new VDI (at most 255 bytes)
        #[arg(value_parser = args::parse_name)]
        name: String,
        /// Size of the VDI: bytes or a number with a K, M, G, T or P suffix
        #[arg(value_parser = args::parse_size)]
        size: u64,
        /// Redundancy: N copies (1 to 31) or D:P erasure coding [default: the cluster's]
        #[arg(short = 'c', long = "copies", value_name = "COPIES", value_parser = args::parse_copies)]
        copies: Option<(u8, u8)>,
        /// Preallocate: create every data object now, filled with zeros
        #[arg(short = 'P', long = "prealloc")]
        prealloc: bool,
        /// Object size as a power of two, 20 (1 MiB) to 31 (2 GiB) [default: the cluster's]
        #[arg(short = 'z', long = "block_size_shift", value_name = "SHIFT", value_parser = args::parse_block_size_shift)]
        block_size_shift: Option<u8>,
        /// Print the id of the new VDI
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// With -v, print the id alone
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// List VDIs, snapshots and clones (flag column: s = snapshot, c = clone)
    ///
    /// Columns: name, snapshot id (0 for a working VDI), size, bytes of objects the VDI
    /// owns (Used), bytes it shares with its parent (Shared), creation time, VDI id (hex),
    /// copies, snapshot tag and block size shift. With -r each line is
    /// `FLAG NAME ID SIZE USED SHARED CTIME VID COPIES TAG BSS` with FLAG one of s, c or =,
    /// sizes in bytes, the time in Unix seconds and blanks in NAME escaped with a backslash.
    List {
        /// Show only the VDI of this name (with its snapshots)
        name: Option<String>,
        /// Raw output, one space-separated line per VDI, no header
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// Show how VDIs descend from one another: snapshots, the working VDI, clones
    ///
    /// One tree per VDI that has no parent (or whose parent was deleted), drawn from left to
    /// right: `[ID TIME TAG]` for a snapshot, `(you are here)` for the working VDI, and the
    /// name before the first node of a clone.
    Tree {
        /// Show only the tree that holds the VDI of this name
        name: Option<String>,
    },
    /// Delete a VDI, or one of its snapshots with -s
    Delete {
        /// Name of the VDI
        name: String,
        /// The snapshot to delete: its id (a number) or its tag
        #[arg(short = 's', long = "snapshot", value_name = "SNAP", value_parser = args::parse_snap)]
        snapshot: Option<Snap>,
    },
    /// Take a snapshot of a VDI: the current state is frozen, writes go to a new working VDI
    Snapshot {
        /// Name of the VDI
        name: String,
        /// Tag to give the snapshot (not a number; the id is assigned)
        #[arg(short = 's', long = "snapshot", value_name = "TAG")]
        tag: Option<String>,
        /// Print the ids of the new working VDI and of the snapshot
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// With -v, print the two ids alone
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// Create a writable VDI DST that starts as a copy of snapshot SNAP of SRC
    ///
    /// The clone shares the snapshot's objects until it writes to them.
    Clone {
        /// Name of the VDI that has the snapshot
        src: String,
        /// Name of the new VDI (at most 255 bytes)
        #[arg(value_parser = args::parse_name)]
        dst: String,
        /// The snapshot to clone: its id (a number) or its tag
        #[arg(short = 's', long = "snapshot", value_name = "SNAP", value_parser = args::parse_snap, required = true)]
        snapshot: Snap,
        /// Print the id of the new VDI
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// With -v, print the id alone
        #[arg(short = 'r', long = "raw")]
        raw: bool,
    },
    /// Copy LEN bytes of a VDI from OFFSET to stdout (to the end of the VDI without LEN)
    ///
    /// Ranges never written read as zeros.
    Read {
        /// Name of the VDI
        name: String,
        /// Where to start, in bytes (suffixes allowed) [default: 0]
        #[arg(value_parser = args::parse_size)]
        offset: Option<u64>,
        /// How many bytes (suffixes allowed) [default: to the end of the VDI]
        #[arg(value_parser = args::parse_size)]
        len: Option<u64>,
        /// Read this snapshot (its id or tag) instead of the working VDI
        #[arg(short = 's', long = "snapshot", value_name = "SNAP", value_parser = args::parse_snap)]
        snapshot: Option<Snap>,
    },
    /// Copy stdin into a VDI at OFFSET: LEN bytes, or until stdin ends or the VDI ends
    ///
    /// The write stops where stdin ends, without padding.
    Write {
        /// Name of the VDI
        name: String,
        /// Where to start, in bytes (suffixes allowed) [default: 0]
        #[arg(value_parser = args::parse_size)]
        offset: Option<u64>,
        /// How many bytes at most (suffixes allowed) [default: until stdin or the VDI ends]
        #[arg(value_parser = args::parse_size)]
        len: Option<u64>,
        /// Mark the writes as cacheable (writeback mode) and return without flushing them;
        /// without it, dog flushes the VDI before it exits, so the bytes are durable
        #[arg(short = 'w', long = "writeback")]
        writeback: bool,
    },
    /// Grow a VDI to SIZE bytes (shrinking is refused)
    Resize {
        /// Name of the VDI
        name: String,
        /// The new size: bytes or a number with a K, M, G, T or P suffix
        #[arg(value_parser = args::parse_size)]
        size: u64,
    },
    /// Find and repair missing or differing copies of a VDI's objects
    ///
    /// Asks every replica node of the inode and of each used data object for the object's
    /// SHA-1 (GET_HASH) and repairs each missing or differing copy from one the majority
    /// holds (REPAIR_REPLICA). When the copies differ and none is held by more than half of
    /// the replica nodes, the object is reported and nothing changes. One line per problem,
    /// then a summary line. A working VDI is locked for writing while it is checked (refused
    /// while a mount or a VM writes it: check a snapshot of it instead).
    #[command(
        after_help = "Exit status: 0 every copy good, 1 copies repaired (or, with --dry-run, to repair), 2 copies that cannot be repaired or checked."
    )]
    Check {
        /// Name of the VDI
        name: String,
        /// Check this snapshot (id or tag) instead of the working VDI
        #[arg(short = 's', long = "snapshot", value_name = "SNAPSHOT", value_parser = args::parse_snap)]
        snapshot: Option<Snap>,
        /// Only report: change nothing
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
    /// Write the blocks of snapshot -s that differ from snapshot -F to standard output
    ///
    /// Without -F, every allocated block of -s. The stream is Sheepdog 1.0.1's (`dog vdi
    /// backup`): a header, one record per changed object (the range from its first to its
    /// last changed 512-byte sector), an end record. `dog vdi restore` reads it back; either
    /// tool restores the other's backups.
    Backup {
        /// Name of the VDI
        name: String,
        /// The older snapshot (id or tag): only what changed since it is written
        #[arg(short = 'F', long = "from", value_name = "SNAP", value_parser = args::parse_snap)]
        from: Option<Snap>,
        /// The snapshot to back up (id or tag)
        #[arg(short = 's', long = "snapshot", value_name = "SNAP", value_parser = args::parse_snap)]
        snapshot: Snap,
    },
    /// Apply a backup (standard input) on top of snapshot -s of a VDI
    ///
    /// The whole stream is read and checked first (a pipe is kept in a temporary file): a
    /// truncated or malformed backup is refused with what is wrong, and nothing changes.
    /// Then, as Sheepdog 1.0.1 does: the working VDI is deleted, a VDI cloned from -s gets
    /// the backup's blocks, and that restored state becomes the VDI's newest snapshot, while
    /// the working VDI starts again from the snapshot it was based on. Read or clone the new
    /// snapshot to use what was restored. Refused while a mount or a VM writes the VDI.
    Restore {
        /// Name of the VDI
        name: String,
        /// The snapshot the backup was taken against (its -F, or any for a full backup)
        #[arg(short = 's', long = "snapshot", value_name = "SNAP", value_parser = args::parse_snap)]
        snapshot: Snap,
    },
    /// Set (or with -d delete) attribute KEY of a VDI: a small value beside it
    ///
    /// The value is VALUE, or standard input when VALUE is not given (up to 64 KiB).
    /// Exit status 3 when -x finds the attribute already set, 5 when the VDI or (with -d)
    /// the attribute does not exist.
    #[command(after_help = "Exit status: 0 done, 1 failed, 3 exists (-x), 5 VDI or attribute missing.")]
    Setattr {
        /// Name of the VDI
        name: String,
        /// The attribute's key (at most 255 bytes)
        key: String,
        /// The value; read from standard input when absent
        value: Option<String>,
        /// Delete the attribute instead
        #[arg(short = 'd', long = "delete")]
        delete: bool,
        /// Only create: fail (exit 3) if the attribute is already set
        #[arg(short = 'x', long = "exclusive")]
        exclusive: bool,
    },
    /// Print attribute KEY of a VDI to standard output, as stored (no newline added)
    #[command(after_help = "Exit status: 0 printed, 1 failed, 5 VDI or attribute missing.")]
    Getattr {
        /// Name of the VDI
        name: String,
        /// The attribute's key
        key: String,
    },
}
