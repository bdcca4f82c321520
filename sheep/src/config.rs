//! Command-line options and the optional TOML config file. Flags override the file; the file
//! overrides the defaults, which live in [`Config::default`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;

/// The sheep storage daemon. Runs in the foreground (systemd style) and serves the Sheepdog
/// 1.0 protocol: client I/O as a gateway, replicated objects in DIR/obj/, cluster membership
/// through a cluster driver.
#[derive(Parser, Debug)]
#[command(name = "sheep", version = protocol::VERSION, disable_version_flag = true)]
pub struct Args {
    /// Print the version.
    #[arg(long, action = clap::ArgAction::Version)]
    version: Option<bool>,
    /// Directory for this node's objects (DIR/obj/), epoch log (DIR/epoch/) and state.
    pub dir: PathBuf,
    /// TCP port to listen on [default: 7000].
    #[arg(short, long)]
    pub port: Option<u16>,
    /// Address to listen on and to advertise to the other nodes [default: 127.0.0.1]. Nothing
    /// listens beyond loopback unless you say so; it must be an address the others can reach.
    #[arg(short, long)]
    pub bind: Option<IpAddr>,
    /// Cluster driver: `local` (sheep on this host, rendezvous in /tmp/sheepdog-local) or
    /// `local:PATH` (rendezvous directory PATH) [default: local].
    #[arg(short, long)]
    pub cluster: Option<String>,
    /// Failure zone. Copies of an object go to distinct zones. Default: derived from the
    /// address (the last four bytes); on loopback, where every sheep shares the address, the
    /// port, so that sheep on one host count as separate failure domains.
    #[arg(short, long)]
    pub zone: Option<u32>,
    /// Gateway only: store nothing (zero vnodes) but serve client I/O.
    #[arg(short, long)]
    pub gateway: bool,
    /// Fix this node's virtual nodes on the hash ring. Without it the count follows the
    /// store's capacity relative to the other nodes' (128 for an average store), so a node
    /// with twice the space receives about twice the objects. `dog node vnodes set`
    /// changes it on a running cluster.
    #[arg(short = 'V', long)]
    pub vnodes: Option<u16>,
    /// Write logs to this file instead of stderr.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Recovery speed limit in objects per second, so client I/O keeps going while nodes
    /// come and go; a farm store's archive of the copies a recovery drops keeps to it too
    /// [default: 0 = no limit].
    #[arg(long)]
    pub recovery_rate: Option<u32>,
    /// Background scrub in objects per second [default: 0 = off]: this node walks its store
    /// again and again, compares each copy's SHA-1 with the other replicas' and, when the
    /// majority holds another, replaces its own (after a second look, so that a write in
    /// flight is not mistaken for damage). Progress and findings: `dog cluster scrub`,
    /// `/cluster/scrub` in sheepfs, the sheep's log.
    #[arg(long)]
    pub scrub_rate: Option<u32>,
    /// System snapshots this node's farm keeps, when the cluster was formatted with `-b farm`
    /// [default: 8]. After each recovery the copies this node no longer owns are stored in
    /// DIR/farm as one snapshot (deduplicated in 128 KiB slices) before they leave the
    /// working directory; the oldest snapshots go when there are more. 0 keeps none. A
    /// snapshot is skipped (the copies are only deleted, as with `-b plain`) when storing it
    /// could leave less than a fifth of the disk free. `dog node farm` reads them.
    #[arg(long, value_name = "N")]
    pub farm_keep: Option<usize>,
    /// Write data objects through the page cache. By default, writes aligned to 4 KiB go
    /// straight to the disk (O_DIRECT, as Sheepdog's -D did): three copies on one host do not
    /// triple the page cache, and the flush that follows has little left to do. Stores on
    /// filesystems without O_DIRECT (tmpfs) fall back to the page cache by themselves.
    #[arg(long)]
    pub buffered_io: bool,
    /// Make every write durable before it is acknowledged. By default this node's store
    /// behaves like a disk with a volatile write cache: writes are acknowledged once the
    /// kernel has them, and a client's flush (fsync on a sheepfs volume, FLUSH_VDI) makes
    /// every write of that VDI acknowledged before it durable on every replica. With this
    /// flag a power cut never loses an acknowledged write, at the cost of a disk sync per
    /// write.
    #[arg(long)]
    pub sync_writes: bool,
    /// Object cache for the clients of this gateway: SIZE[,dir=PATH], e.g. `256M` or
    /// `1G,dir=/ssd/cache` (K, M, G, T are powers of 1024; the directory defaults to
    /// DIR/cache). Writes of clients that ask for it (sheepfs with /config/object_cache = 1)
    /// are acknowledged once in the cache and reach the replicas at the next flush (fsync)
    /// or when dirty data passes half the cache. Only VDIs whose write lock a client of this
    /// gateway holds are cached. Off by default.
    #[arg(short = 'w', long = "cache", value_name = "SIZE[,dir=PATH]")]
    pub cache: Option<String>,
    /// Serve every VDI over NBD on [ADDR:]PORT (ADDR defaults to 127.0.0.1; the usual port
    /// is 10809): `qemu-img info nbd://127.0.0.1:10809/NAME`. Export names are VDI names;
    /// NAME@ID or NAME@TAG is a snapshot, read-only. A writable export holds the VDI's write
    /// lock while any connection has it open. Off by default.
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub nbd: Option<String>,
    /// Serve Prometheus/OpenMetrics text at http://[ADDR:]PORT/metrics (ADDR defaults to
    /// 127.0.0.1): request counts, latency histograms, bytes and errors by op class, epoch,
    /// members, recovery, store space and the object cache's figures. Off by default.
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub metrics: Option<String>,
    /// File holding the cluster secret (at least 16 bytes, mode 600). Every connection to
    /// this sheep, from clients and other sheep, must then prove it knows the secret before
    /// its first request, and this sheep proves it to those it connects to; dog and sheepfs
    /// take the same file. A node whose secret differs from the members' cannot join. Off by
    /// default: anyone who reaches the port can read and write every VDI.
    #[arg(long, value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,
    /// Only these client networks may connect (every listener: Sheepdog, NBD, metrics):
    /// addresses or CIDR networks, comma-separated, e.g. `10.0.0.0/24,192.0.2.7`. Loopback
    /// is always allowed. Default: whoever reaches the bind address.
    #[arg(long, value_name = "NET[,NET...]")]
    pub allow: Option<String>,
    /// Log filter, e.g. `info` or `sheep=debug` [default: info; env RUST_LOG also works].
    #[arg(long)]
    pub log_level: Option<String>,
    /// TOML file with any of: port, bind, cluster, zone, gateway, vnodes, log_file, log_level,
    /// recovery_rate, scrub_rate, farm_keep, buffered_io, sync_writes, cache, nbd, metrics,
    /// auth_key_file, allow.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The same settings, as read from a TOML file. Every field is optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub port: Option<u16>,
    pub bind: Option<IpAddr>,
    pub cluster: Option<String>,
    pub zone: Option<u32>,
    pub gateway: Option<bool>,
    pub vnodes: Option<u16>,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub recovery_rate: Option<u32>,
    pub scrub_rate: Option<u32>,
    pub farm_keep: Option<usize>,
    pub buffered_io: Option<bool>,
    pub sync_writes: Option<bool>,
    pub cache: Option<String>,
    pub nbd: Option<String>,
    pub metrics: Option<String>,
    pub auth_key_file: Option<PathBuf>,
    pub allow: Option<String>,
}

/// Effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dir: PathBuf,
    pub port: u16,
    pub bind: IpAddr,
    pub cluster: String,
    pub zone: Option<u32>,
    pub gateway: bool,
    /// `Some`: fixed by hand; `None`: weighted by capacity.
    pub vnodes: Option<u16>,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    pub recovery_rate: u32,
    pub scrub_rate: u32,
    pub farm_keep: usize,
    pub buffered_io: bool,
    pub sync_writes: bool,
    pub cache: Option<CacheConfig>,
    /// Where the NBD export listens, if it runs.
    pub nbd: Option<SocketAddr>,
    /// Where the metrics endpoint listens, if it runs.
    pub metrics: Option<SocketAddr>,
    /// The cluster secret's file (read at start, never logged).
    pub auth_key_file: Option<PathBuf>,
    /// Client networks let in (empty: all).
    pub allow: Vec<crate::access::Network>,
}

/// `-w SIZE[,dir=PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub size: u64,
    pub dir: PathBuf,
}

impl CacheConfig {
    /// Parses `SIZE[,dir=PATH]`; the directory defaults to `base/cache`.
    pub fn parse(spec: &str, base: &Path) -> Result<CacheConfig, String> {
        let bad = |why: &str| format!("--cache {spec:?}: {why} (expected SIZE[,dir=PATH], e.g. 256M)");
        let mut parts = spec.split(',');
        let size = parse_size(parts.next().unwrap_or("")).ok_or_else(|| bad("not a size"))?;
        if size == 0 {
            return Err(bad("the size must be above 0"));
        }
        let mut dir = base.join("cache");
        for p in parts {
            match p.split_once('=') {
                Some(("dir", d)) if !d.is_empty() => dir = PathBuf::from(d),
                _ => return Err(bad(&format!("unknown option {p:?}"))),
            }
        }
        Ok(CacheConfig { size, dir })
    }
}

/// `--FLAG [ADDR:]PORT`: a bare port listens on loopback.
fn parse_listen(flag: &str, spec: &str, example: u16) -> Result<SocketAddr, String> {
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port));
    }
    spec.parse::<SocketAddr>()
        .map_err(|_| format!("--{flag} {spec:?}: expected [ADDR:]PORT, e.g. {example} or 192.0.2.1:{example}"))
}

/// Bytes in `s`: digits with an optional K, M, G or T suffix (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl Config {
    fn defaults(dir: PathBuf) -> Config {
        Config {
            dir,
            port: 7000,
            bind: IpAddr::from([127, 0, 0, 1]),
            cluster: "local".into(),
            zone: None,
            gateway: false,
            vnodes: None,
            log_file: None,
            log_level: "info".into(),
            recovery_rate: 0,
            scrub_rate: 0,
            farm_keep: crate::store::farm::node::KEEP,
            buffered_io: false,
            sync_writes: false,
            cache: None,
            nbd: None,
            metrics: None,
            auth_key_file: None,
            allow: Vec::new(),
        }
    }

    pub fn load(args: Args) -> Result<Config, String> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let d = Config::defaults(args.dir);
        let cfg = Config {
            port: args.port.or(file.port).unwrap_or(d.port),
            bind: args.bind.or(file.bind).unwrap_or(d.bind),
            cluster: args.cluster.or(file.cluster).unwrap_or(d.cluster),
            zone: args.zone.or(file.zone),
            gateway: args.gateway || file.gateway.unwrap_or(d.gateway),
            vnodes: args.vnodes.or(file.vnodes),
            log_file: args.log_file.or(file.log_file),
            log_level: args.log_level.or(file.log_level).unwrap_or(d.log_level),
            recovery_rate: args.recovery_rate.or(file.recovery_rate).unwrap_or(d.recovery_rate),
            scrub_rate: args.scrub_rate.or(file.scrub_rate).unwrap_or(d.scrub_rate),
            farm_keep: args.farm_keep.or(file.farm_keep).unwrap_or(d.farm_keep),
            buffered_io: args.buffered_io || file.buffered_io.unwrap_or(d.buffered_io),
            sync_writes: args.sync_writes || file.sync_writes.unwrap_or(d.sync_writes),
            cache: match args.cache.or(file.cache) {
                Some(spec) => Some(CacheConfig::parse(&spec, &d.dir)?),
                None => None,
            },
            nbd: (args.nbd.or(file.nbd).as_deref())
                .map(|s| parse_listen("nbd", s, 10809))
                .transpose()?,
            metrics: (args.metrics.or(file.metrics).as_deref())
                .map(|s| parse_listen("metrics", s, 9100))
                .transpose()?,
            auth_key_file: args.auth_key_file.or(file.auth_key_file),
            allow: match args.allow.or(file.allow) {
                Some(spec) => crate::access::parse_networks(&spec)?,
                None => Vec::new(),
            },
            dir: d.dir,
        };
        if cfg.bind.is_unspecified() {
            return Err(format!(
                "--bind {} is not an address other nodes can reach; give this host's address",
                cfg.bind
            ));
        }
        Ok(cfg)
    }

    /// The zone this node advertises.
    pub fn zone(&self) -> u32 {
        self.zone.unwrap_or(if self.bind.is_loopback() {
            u32::from(self.port)
        } else {
            protocol::node::default_zone(self.bind)
        })
    }
}

fn read_file(p: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
    toml::from_str(&text).map_err(|e| format!("bad config {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let t = tempfile::tempdir().expect("tmp");
        let f = t.path().join("sheep.toml");
        std::fs::write(&f, "port = 7100\nzone = 4\ncluster = \"local:/x\"\n").expect("write");
        let args = Args::parse_from(["sheep", "--config", f.to_str().expect("utf8"), "-p", "7200", "/d"]);
        let c = Config::load(args).expect("load");
        assert_eq!((c.port, c.zone(), c.cluster.as_str()), (7200, 4, "local:/x"));
        assert_eq!(c.vnodes, None);
        let c = Config::load(Args::parse_from(["sheep", "-p", "7003", "/d"])).expect("load");
        assert_eq!(c.zone(), 7003);
        let c = Config::load(Args::parse_from(["sheep", "-b", "10.0.0.5", "/d"])).expect("load");
        assert_eq!(c.zone(), protocol::node::default_zone(c.bind));
    }

    #[test]
    fn the_example_config_parses() {
        let f: FileConfig =
            toml::from_str(include_str!("../../contrib/sheep.toml")).expect("contrib/sheep.toml parses");
        assert_eq!((f.port, f.vnodes, f.recovery_rate), (Some(7000), Some(128), Some(0)));
        assert_eq!(f.buffered_io, Some(false));
        assert_eq!(f.sync_writes, Some(false));
    }

    #[test]
    fn bad_configs_are_clear() {
        let t = tempfile::tempdir().expect("tmp");
        let f = t.path().join("sheep.toml");
        std::fs::write(&f, "prot = 1\n").expect("write");
        let e =
            Config::load(Args::parse_from(["sheep", "--config", f.to_str().expect("utf8"), "/d"])).expect_err("typo");
        assert!(e.contains("unknown field"), "{e}");
        let e = Config::load(Args::parse_from(["sheep", "-b", "0.0.0.0", "/d"])).expect_err("unspecified");
        assert!(e.contains("not an address"), "{e}");
        for bad in ["", "12Q", "0", "1G,size=2", "1G,dir="] {
            let e = Config::load(Args::parse_from(["sheep", "-w", bad, "/d"])).expect_err(bad);
            assert!(e.contains("expected SIZE[,dir=PATH]"), "{bad}: {e}");
        }
    }

    #[test]
    fn farm_keep_from_file_or_flag() {
        let t = tempfile::tempdir().expect("tmp");
        let f = t.path().join("sheep.toml");
        std::fs::write(&f, "farm_keep = 3\n").expect("write");
        let conf = f.to_str().expect("utf8");
        let c = Config::load(Args::parse_from(["sheep", "/d"])).expect("load");
        assert_eq!(c.farm_keep, crate::store::farm::node::KEEP);
        let c = Config::load(Args::parse_from(["sheep", "--config", conf, "/d"])).expect("load");
        assert_eq!(c.farm_keep, 3);
        let c = Config::load(Args::parse_from(["sheep", "--config", conf, "--farm-keep", "0", "/d"])).expect("load");
        assert_eq!(c.farm_keep, 0);
    }

    #[test]
    fn cache_spec() {
        let c = Config::load(Args::parse_from(["sheep", "-w", "64M", "/d"])).expect("load");
        assert_eq!(
            c.cache,
            Some(CacheConfig {
                size: 64 << 20,
                dir: "/d/cache".into()
            })
        );
        let c = Config::load(Args::parse_from(["sheep", "--cache", "2g,dir=/ssd/c", "/d"])).expect("load");
        assert_eq!(
            c.cache,
            Some(CacheConfig {
                size: 2 << 30,
                dir: "/ssd/c".into()
            })
        );
    }

    #[test]
    fn listen_specs() {
        let pick = |c: &Config, flag: &str| if flag == "--nbd" { c.nbd } else { c.metrics };
        for flag in ["--nbd", "--metrics"] {
            let c = Config::load(Args::parse_from(["sheep", flag, "10809", "/d"])).expect("load");
            assert_eq!(pick(&c, flag), Some("127.0.0.1:10809".parse().expect("addr")));
            let c = Config::load(Args::parse_from(["sheep", flag, "[::1]:7", "/d"])).expect("load");
            assert_eq!(pick(&c, flag), Some("[::1]:7".parse().expect("addr")));
            for bad in ["", "x", "1.2.3.4", "99999"] {
                let e = Config::load(Args::parse_from(["sheep", flag, bad, "/d"])).expect_err(bad);
                assert!(e.contains("expected [ADDR:]PORT") && e.contains(flag), "{bad}: {e}");
            }
        }
    }
}
