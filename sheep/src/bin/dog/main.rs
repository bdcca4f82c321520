//! `dog`, the Sheepdog administrator CLI: formats and inspects a cluster and manages VDIs
//! (virtual disk images) by sending the request sequences of the original `dog`
//! (PROTOCOL.md section 5) to one sheep.

mod attr;
mod backup;
mod check;
mod cluster;
mod csnap;
mod error;
mod fmt;
#[cfg(test)]
mod mock;
mod net;
mod node;
mod nodefarm;
mod progress;
#[cfg(test)]
mod scenario;
mod span;
mod transfer;
mod tree;
mod vdi;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use clap::Parser;
use sheep::dogcli::args::parse_snap;
use sheep::dogcli::{Cli, ClusterCmd, Cmd, Conn, MdCmd, NodeCmd, NodeFarmCmd, Snap, SnapshotCmd, VdiCmd, VnodesCmd};

use crate::error::Failure;

/// Default address and port of the sheep `dog` talks to.
const DEFAULT_ADDR: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 7000;
const ENV_ADDR: &str = "SHEEPDOG_DOG_ADDR";
const ENV_PORT: &str = "SHEEPDOG_DOG_PORT";

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
            ClusterCmd::Scrub { raw } => node::scrub(addr, raw).await,
            ClusterCmd::Snapshot(s) => match s {
                SnapshotCmd::Save { tag, dir, vdis } => csnap::save(addr, &tag, &dir, &vdis).await,
                SnapshotCmd::List { dir, raw } => csnap::list(&dir, raw),
                SnapshotCmd::Check { tag, dir } => csnap::check(&tag, &dir),
                SnapshotCmd::Delete { tag, dir } => csnap::delete(&tag, &dir),
                SnapshotCmd::Load { tag, dir, vdis } => csnap::load(addr, &tag, &dir, &vdis).await,
            },
        },
        Cmd::Node(n) => match n {
            NodeCmd::List { raw } => node::list(addr, raw).await,
            NodeCmd::Info { raw } => node::info(addr, raw).await,
            NodeCmd::Recovery { raw } => node::recovery(addr, raw).await,
            NodeCmd::Stat { raw, watch } => node::stat(addr, raw, watch).await,
            NodeCmd::Md(MdCmd::Info { all, raw }) => node::md_info(addr, all, raw).await,
            NodeCmd::Vnodes(VnodesCmd::Set { count }) => node::set_vnodes(addr, count.0).await,
            NodeCmd::Farm(f) => match f {
                NodeFarmCmd::List { dir, raw } => nodefarm::list(&dir, raw),
                NodeFarmCmd::Check { dir } => nodefarm::check(&dir),
                NodeFarmCmd::Read { dir, oid, epoch } => nodefarm::read(&dir, oid, epoch),
            },
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
            VdiCmd::Tree { name } => tree::tree(addr, name.as_deref()).await,
            VdiCmd::Delete { name, snapshot } => vdi::delete(addr, &name, snapshot.as_ref()).await,
            VdiCmd::Snapshot {
                name,
                tag,
                verbose,
                raw,
            } => {
                if let Some(t) = &tag {
                    match parse_snap(t) {
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
            VdiCmd::Check {
                name,
                snapshot,
                dry_run,
            } => check::check(addr, &name, snapshot.as_ref(), dry_run).await,
            VdiCmd::Backup { name, from, snapshot } => backup::backup(addr, &name, from.as_ref(), &snapshot).await,
            VdiCmd::Restore { name, snapshot } => backup::restore(addr, &name, &snapshot).await,
        },
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let addr = target(&cli.conn)?;
    if let Some(p) = &cli.conn.auth_key_file {
        protocol::auth::install(protocol::auth::AuthKey::from_file(p).map_err(Failure::usage)?);
    }
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
            auth_key_file: None,
        };
        assert_eq!(target(&conn).expect("addr"), "127.0.0.1:7000".parse().expect("addr"));
        let conn = Conn {
            address: Some("[::1]".into()),
            port: Some(7000),
            auth_key_file: None,
        };
        assert_eq!(target(&conn).expect("addr"), "[::1]:7000".parse().expect("addr"));
    }
}
