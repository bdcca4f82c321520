//! `dog`, the Sheepdog administrator CLI: formats and inspects a cluster and manages VDIs
//! (virtual disk images) by sending the request sequences of the original `dog`
//! (PROTOCOL.md section 5) to one sheep.

mod attr;
mod cluster;
mod error;
mod fmt;
#[cfg(test)]
mod mock;
mod net;
mod node;
#[cfg(test)]
mod scenario;
mod span;
mod transfer;
mod vdi;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use clap::{Args, Parser, Subcommand};

use crate::error::Failure;
use crate::fmt::Snap;

/// Default address and port of the sheep `dog` talks to.
const DEFAULT_ADDR: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 7000;
const ENV_ADDR: &str = "SHEEPDOG_DOG_ADDR";
const ENV_PORT: &str = "SHEEPDOG_DOG_PORT";

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
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the sheep is.
#[derive(Args, Debug)]
struct Conn {
    /// Address of the sheep to talk to [default: $SHEEPDOG_DOG_ADDR, else 127.0.0.1]
    #[arg(short = 'a', long = "address", value_name = "ADDR", global = true)]
    address: Option<String>,
    /// Port of the sheep to talk to [default: $SHEEPDOG_DOG_PORT, else 7000]
    #[arg(short = 'p', long = "port", value_name = "PORT", global = true)]
    port: Option<u16>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
enum ClusterCmd {
    /// Create a Sheepdog store: wipe every VDI and object and start the cluster at epoch 1
    ///
    /// Asks for confirmation when the cluster already holds VDIs or when more copies are
    /// asked for than there are nodes; -f skips the questions.
    Format {
        /// Default redundancy of new VDIs: N copies (1 to 31) or D:P erasure coding
        /// [default: chosen by the server, 3]
        #[arg(short = 'c', long = "copies", value_name = "COPIES", value_parser = fmt::parse_copies)]
        copies: Option<(u8, u8)>,
        /// Default object size of new VDIs as a power of two, 20 (1 MiB) to 26 (64 MiB)
        /// [default: chosen by the server, 22 = 4 MiB]
        #[arg(short = 'z', long = "block_size_shift", value_name = "SHIFT", value_parser = fmt::parse_block_size_shift)]
        block_size_shift: Option<u8>,
        /// Backend store of the objects
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
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
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
}

#[derive(Subcommand, Debug)]
enum MdCmd {
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
enum VdiCmd {
    /// Create a VDI of SIZE bytes (e.g. 1G); no data object exists until it is written
    Create {
        /// Name of the new VDI (at most 255 bytes)
        #[arg(value_parser = fmt::parse_name)]
        name: String,
        /// Size of the VDI: bytes or a number with a K, M, G, T or P suffix
        #[arg(value_parser = fmt::parse_size)]
        size: u64,
        /// Redundancy: N copies (1 to 31) or D:P erasure coding [default: the cluster's]
        #[arg(short = 'c', long = "copies", value_name = "COPIES", value_parser = fmt::parse_copies)]
        copies: Option<(u8, u8)>,
        /// Preallocate: create every data object now, filled with zeros
        #[arg(short = 'P', long = "prealloc")]
        prealloc: bool,
        /// Object size as a power of two, 20 (1 MiB) to 26 (64 MiB) [default: the cluster's]
        #[arg(short = 'z', long = "block_size_shift", value_name = "SHIFT", value_parser = fmt::parse_block_size_shift)]
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
    /// Delete a VDI, or one of its snapshots with -s
    Delete {
        /// Name of the VDI
        name: String,
        /// The snapshot to delete: its id (a number) or its tag
        #[arg(short = 's', long = "snapshot", value_name = "SNAP", value_parser = fmt::parse_snap)]
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
        #[arg(value_parser = fmt::parse_name)]
        dst: String,
        /// The snapshot to clone: its id (a number) or its tag
        #[arg(short = 's', long = "snapshot", value_name = "SNAP", value_parser = fmt::parse_snap, required = true)]
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
        #[arg(value_parser = fmt::parse_size)]
        offset: Option<u64>,
        /// How many bytes (suffixes allowed) [default: to the end of the VDI]
        #[arg(value_parser = fmt::parse_size)]
        len: Option<u64>,
        /// Read this snapshot (its id or tag) instead of the working VDI
        #[arg(short = 's', long = "snapshot", value_name = "SNAP", value_parser = fmt::parse_snap)]
        snapshot: Option<Snap>,
    },
    /// Copy stdin into a VDI at OFFSET: LEN bytes, or until stdin ends or the VDI ends
    ///
    /// The write stops where stdin ends, without padding.
    Write {
        /// Name of the VDI
        name: String,
        /// Where to start, in bytes (suffixes allowed) [default: 0]
        #[arg(value_parser = fmt::parse_size)]
        offset: Option<u64>,
        /// How many bytes at most (suffixes allowed) [default: until stdin or the VDI ends]
        #[arg(value_parser = fmt::parse_size)]
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
        #[arg(value_parser = fmt::parse_size)]
        size: u64,
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

/// Text for stdout, written at once at the end of a command.
#[derive(Default)]
pub struct Out(String);

impl Out {
    pub fn new() -> Out {
        Out::default()
    }

    pub fn push_str(&mut self, s: &str) {
        self.0.push_str(s);
    }

    pub fn line(&mut self, s: impl AsRef<str>) {
        self.0.push_str(s.as_ref());
        self.0.push('\n');
    }

    pub fn print(self) -> Result<(), Failure> {
        emit(&self.0)
    }
}

/// Writes `s` to stdout and flushes it.
pub fn emit(s: &str) -> Result<(), Failure> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())
        .and_then(|()| o.flush())
        .map_err(|e| Failure::new(format!("Failed to write to stdout: {e}")))
}

/// The sheep to talk to: -a/-p, else the environment, else 127.0.0.1:7000.
fn target(conn: &Conn) -> Result<SocketAddr, Failure> {
    let from_env = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
    let host = conn
        .address
        .clone()
        .or_else(|| from_env(ENV_ADDR))
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let port = match conn.port {
        Some(p) => p,
        None => match from_env(ENV_PORT) {
            Some(s) => s
                .parse()
                .map_err(|_| Failure::usage(format!("Invalid port '{s}' in {ENV_PORT}: use 1 to 65535")))?,
            None => DEFAULT_PORT,
        },
    };
    if port == 0 {
        return Err(Failure::usage("Invalid port 0: use 1 to 65535"));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| Failure::usage(format!("Invalid address '{host}': {e}")))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| Failure::usage(format!("Invalid address '{host}': no IP address")))
}

async fn dispatch(addr: SocketAddr, cmd: Cmd) -> Result<(), Failure> {
    match cmd {
        Cmd::Cluster(c) => match c {
            ClusterCmd::Format {
                copies,
                block_size_shift,
                store,
                force,
                strict,
                fixed_vnodes,
            } => {
                let o = cluster::FormatOpts {
                    copies,
                    block_size_shift,
                    store,
                    force,
                    strict,
                    fixed_vnodes,
                };
                cluster::format(addr, &o).await
            }
            ClusterCmd::Info { raw, verbose } => cluster::info(addr, raw, verbose).await,
            ClusterCmd::Shutdown => cluster::shutdown(addr).await,
        },
        Cmd::Node(n) => match n {
            NodeCmd::List { raw } => node::list(addr, raw).await,
            NodeCmd::Info { raw } => node::info(addr, raw).await,
            NodeCmd::Recovery { raw } => node::recovery(addr, raw).await,
            NodeCmd::Stat { raw, watch } => node::stat(addr, raw, watch).await,
            NodeCmd::Md(MdCmd::Info { all, raw }) => node::md_info(addr, all, raw).await,
        },
        Cmd::Vdi(v) => match v {
            VdiCmd::Create {
                name,
                size,
                copies,
                prealloc,
                block_size_shift,
                verbose,
                raw,
            } => {
                let o = vdi::CreateOpts {
                    name,
                    size,
                    copies,
                    block_size_shift,
                    prealloc,
                    verbose,
                    raw,
                };
                vdi::create(addr, &o).await
            }
            VdiCmd::List { name, raw } => vdi::list(addr, name.as_deref(), raw).await,
            VdiCmd::Delete { name, snapshot } => vdi::delete(addr, &name, snapshot.as_ref()).await,
            VdiCmd::Snapshot {
                name,
                tag,
                verbose,
                raw,
            } => {
                if let Some(t) = &tag {
                    match fmt::parse_snap(t) {
                        Ok(Snap::Tag(_)) => {}
                        Ok(Snap::Id(_)) => {
                            return Err(Failure::usage(
                                "Please specify a non-integer value for a snapshot tag name",
                            ))
                        }
                        Err(e) => return Err(Failure::usage(e)),
                    }
                }
                vdi::snapshot(addr, &name, tag.as_deref(), verbose, raw).await
            }
            VdiCmd::Clone {
                src,
                dst,
                snapshot,
                verbose,
                raw,
            } => vdi::clone(addr, &src, &snapshot, &dst, verbose, raw).await,
            VdiCmd::Read {
                name,
                offset,
                len,
                snapshot,
            } => vdi::read(addr, &name, snapshot.as_ref(), offset.unwrap_or(0), len).await,
            VdiCmd::Write {
                name,
                offset,
                len,
                writeback,
            } => vdi::write(addr, &name, offset.unwrap_or(0), len, writeback).await,
            VdiCmd::Resize { name, size } => vdi::resize(addr, &name, size).await,
            VdiCmd::Setattr {
                name,
                key,
                value,
                delete,
                exclusive,
            } => attr::set(addr, &name, &key, value, delete, exclusive).await,
            VdiCmd::Getattr { name, key } => attr::get(addr, &name, &key).await,
        },
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let addr = target(&cli.conn)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("Failed to start the async runtime: {e}")))?;
    rt.block_on(dispatch(addr, cli.cmd))
}

fn main() {
    // Like the C original, stop quietly when the reader of stdout goes away
    // (`dog vdi read x | head -c 10`) instead of failing on EPIPE.
    // SAFETY: restoring the default disposition of a signal has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(f) => {
            let _ = writeln!(std::io::stderr(), "{}", f.msg);
            f.code
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dog").chain(args.iter().copied()))
    }

    #[test]
    fn options_after_the_subcommand() {
        let cli = parse(&["vdi", "list", "-p", "7001", "-a", "10.0.0.1", "-r"]).expect("parse");
        assert_eq!(cli.conn.port, Some(7001));
        assert_eq!(cli.conn.address.as_deref(), Some("10.0.0.1"));
        assert_eq!(target(&cli.conn).expect("addr"), "10.0.0.1:7001".parse().expect("addr"));
        let cli = parse(&["vdi", "create", "alpha", "1G", "-c", "2", "-P"]).expect("parse");
        match cli.cmd {
            Cmd::Vdi(VdiCmd::Create {
                size, copies, prealloc, ..
            }) => {
                assert_eq!(size, 1 << 30);
                assert_eq!(copies, Some((2, 0)));
                assert!(prealloc);
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = parse(&["vdi", "clone", "-s", "1", "test", "test2"]).expect("parse");
        assert!(matches!(
            cli.cmd,
            Cmd::Vdi(VdiCmd::Clone {
                snapshot: Snap::Id(1),
                ..
            })
        ));
        let cli = parse(&["vdi", "read", "test", "1M", "4096", "-s", "snap"]).expect("parse");
        assert!(matches!(
            cli.cmd,
            Cmd::Vdi(VdiCmd::Read {
                offset: Some(1_048_576),
                len: Some(4096),
                snapshot: Some(Snap::Tag(_)),
                ..
            })
        ));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["vdi", "create", "alpha", "1X"][..],
            &["vdi", "create", "alpha"],
            &["vdi", "clone", "test", "test2"],
            &["vdi", "delete", "test", "-s", "0"],
            &["cluster", "format", "-c", "0"],
            &["cluster", "format", "-z", "40"],
            &["vdi", "list", "-p", "notaport"],
        ] {
            let e = parse(bad).expect_err("must be refused");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn default_target() {
        let conn = Conn {
            address: Some("127.0.0.1".into()),
            port: Some(7000),
        };
        assert_eq!(target(&conn).expect("addr"), "127.0.0.1:7000".parse().expect("addr"));
        let conn = Conn {
            address: Some("[::1]".into()),
            port: Some(7000),
        };
        assert_eq!(target(&conn).expect("addr"), "[::1]:7000".parse().expect("addr"));
    }
}
