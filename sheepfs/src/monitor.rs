//! Monitoring files: stable, line-oriented text for `cat` and `awk`. Each format is
//! documented in `sheepfs/SEMANTICS.md`; tests there check the examples.

use std::fmt::Write;

use protocol::cluster::{status, ClusterInfo, EpochRecord};
use protocol::inode::InodeHeader;
use protocol::node::Node;
use protocol::requests::CacheStats;

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (UTC).
pub fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn field(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `/vdi/list`: a header line, then one line per VDI (working and snapshots).
pub fn vdi_list(headers: &[(InodeHeader, u64, u64)]) -> String {
    let mut out = String::from("# name snap_id size used shared created vdi_id copies tag block_size_shift\n");
    for (h, used, shared) in headers {
        let snap = if h.is_snapshot() { h.snap_id } else { 0 };
        let _ = writeln!(
            out,
            "{} {snap} {} {used} {shared} {} {:x} {} {} {}",
            h.name,
            h.vdi_size,
            utc(h.create_time >> 32),
            h.vdi_id,
            h.nr_copies,
            field(&h.tag),
            h.block_size_shift
        );
    }
    out
}

/// `/vdi/<name>/info`: `key: value` lines.
pub fn vdi_info(h: &InodeHeader, snapshots: &[u32]) -> String {
    let snaps: Vec<String> = snapshots.iter().map(u32::to_string).collect();
    format!(
        "name: {}\nvid: {:x}\nsize: {}\ncopies: {}\nobject_size: {}\ncreated: {}\nparent: {}\nsnapshots: {}\n",
        h.name,
        h.vdi_id,
        h.vdi_size,
        h.nr_copies,
        h.object_size(),
        utc(h.create_time >> 32),
        if h.parent_vdi_id == 0 {
            "-".to_string()
        } else {
            format!("{:x}", h.parent_vdi_id)
        },
        if snaps.is_empty() {
            "-".to_string()
        } else {
            snaps.join(",")
        }
    )
}

fn status_word(ci: &ClusterInfo) -> &'static str {
    match ci.status {
        status::OK => "running",
        status::WAIT if ci.ctime == 0 => "waiting-for-format",
        status::WAIT => "waiting-for-join",
        status::SHUTDOWN => "shutdown",
        status::KILLED => "killed",
        _ => "unknown",
    }
}

/// `/cluster/info`: `key: value` lines, then one `epoch:` line per epoch, newest first.
pub fn cluster_info(ci: &ClusterInfo, epochs: &[EpochRecord]) -> String {
    let mut out = format!(
        "status: {}\nepoch: {}\ncopies: {}\nblock_size_shift: {}\nstore: {}\ncreated: {}\nnodes: {}\n",
        status_word(ci),
        ci.epoch,
        ci.nr_copies,
        ci.block_size_shift,
        field(&ci.default_store),
        if ci.ctime == 0 {
            "-".to_string()
        } else {
            utc(ci.ctime >> 32)
        },
        ci.nodes.len()
    );
    for e in epochs {
        let nodes: Vec<String> = e.nodes.iter().map(|n| n.addr.to_string()).collect();
        let _ = writeln!(out, "epoch: {} {} {}", e.epoch, utc(e.time), field(&nodes.join(",")));
    }
    out
}

/// `/node/list`: a header, then `addr zone vnodes size free used` per node (`-` when a
/// node could not be asked).
pub fn node_list(nodes: &[(Node, Option<(u64, u64)>)]) -> String {
    let mut out = String::from("# addr zone vnodes size free used\n");
    for (n, stat) in nodes {
        let (size, free, used) = match stat {
            Some((s, f)) => (s.to_string(), f.to_string(), s.saturating_sub(*f).to_string()),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(out, "{} {} {} {size} {free} {used}", n.addr, n.zone, n.nr_vnodes);
    }
    out
}

/// `/cluster/scrub`: a header, then `addr state passes checked total repaired unrepairable`
/// per node (state `on` or `off`; `-` fields when a node could not be asked), then each
/// node's latest findings as `addr finding TEXT`.
pub fn scrub(nodes: &[(Node, Option<protocol::stats::ScrubStats>)]) -> String {
    let mut out = String::from("# addr state passes checked total repaired unrepairable\n");
    for (n, st) in nodes {
        match st {
            Some(s) => {
                let state = if s.enabled { "on" } else { "off" };
                let _ = writeln!(
                    out,
                    "{} {state} {} {} {} {} {}",
                    n.addr, s.passes, s.checked, s.total, s.repaired, s.unrepairable
                );
            }
            None => {
                let _ = writeln!(out, "{} - - - - - -", n.addr);
            }
        }
    }
    for (n, st) in nodes {
        for f in st.iter().flat_map(|s| &s.findings) {
            let _ = writeln!(out, "{} finding {f}", n.addr);
        }
    }
    out
}

/// `/cluster/recovery`: a header, then `addr state done total recovered_epoch` per node
/// (`-` fields when a node could not be asked).
pub fn recovery(nodes: &[(Node, Option<protocol::requests::RecoveryState>)]) -> String {
    let mut out = String::from("# addr state done total recovered_epoch\n");
    for (n, st) in nodes {
        match st {
            Some(s) => {
                let state = if s.running { "recovering" } else { "idle" };
                let _ = writeln!(out, "{} {state} {} {} {}", n.addr, s.done, s.total, s.recovered_epoch);
            }
            None => {
                let _ = writeln!(out, "{} - - - -", n.addr);
            }
        }
    }
    out
}

/// `/node/info`: the gateway node's own figures, with its object cache's (all zero when it
/// runs none).
pub fn node_info(node: Option<&Node>, addr: std::net::SocketAddr, size: u64, free: u64, cache: &CacheStats) -> String {
    format!(
        "addr: {addr}\nzone: {}\nvnodes: {}\nsize: {size}\nused: {}\nfree: {free}\n\
         cache_size: {}\ncache_used: {}\ncache_dirty: {}\ncache_hits: {}\ncache_misses: {}\n\
         cache_hit_ratio: {:.1}\n",
        node.map_or("-".to_string(), |n| n.zone.to_string()),
        node.map_or("-".to_string(), |n| n.nr_vnodes.to_string()),
        size.saturating_sub(free),
        cache.limit,
        cache.used,
        cache.dirty,
        cache.hits,
        cache.misses,
        cache.hit_ratio()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantics_example;
    use protocol::cluster::status;

    const T0: u64 = 1_795_620_173; // 2026-11-25T15:22:53Z
    const T1: u64 = 1_795_620_600; // 2026-11-25T15:30:00Z

    fn node(port: u16, zone: u32) -> Node {
        Node {
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            nr_vnodes: 128,
            zone,
            space: 0,
        }
    }

    fn alpha() -> (InodeHeader, InodeHeader) {
        let snap = InodeHeader {
            name: "alpha".into(),
            tag: "before".into(),
            create_time: T0 << 32,
            snap_ctime: T1 << 32,
            vdi_size: 1 << 30,
            nr_copies: 3,
            block_size_shift: 22,
            snap_id: 1,
            vdi_id: 0x7c2b25,
            ..InodeHeader::default()
        };
        let work = InodeHeader {
            tag: String::new(),
            create_time: T1 << 32,
            snap_ctime: 0,
            snap_id: 2,
            vdi_id: 0x7c2b26,
            parent_vdi_id: 0x7c2b25,
            ..snap.clone()
        };
        (snap, work)
    }

    #[test]
    fn documented_vdi_files() {
        let (snap, work) = alpha();
        let list = vdi_list(&[(snap, 8 << 20, 0), (work.clone(), 4 << 20, 4 << 20)]);
        assert_eq!(list, semantics_example("vdi-list"));
        assert_eq!(vdi_info(&work, &[1]), semantics_example("vdi-info"));
    }

    #[test]
    fn documented_cluster_and_node_files() {
        let ci = ClusterInfo {
            epoch: 2,
            ctime: T0 << 32,
            nr_copies: 3,
            status: status::OK,
            block_size_shift: 22,
            default_store: "plain".into(),
            nodes: vec![node(7000, 1), node(7001, 2)],
            ..ClusterInfo::default()
        };
        let epochs = vec![
            EpochRecord {
                epoch: 2,
                time: T1,
                nodes: vec![node(7000, 1), node(7001, 2)],
                ..EpochRecord::default()
            },
            EpochRecord {
                epoch: 1,
                time: T0,
                nodes: vec![node(7000, 1), node(7001, 2), node(7002, 3)],
                ..EpochRecord::default()
            },
        ];
        assert_eq!(cluster_info(&ci, &epochs), semantics_example("cluster-info"));
        let rows = vec![
            (node(7000, 1), Some((270_553_174_016, 82_765_303_808))),
            (node(7001, 2), None),
        ];
        assert_eq!(node_list(&rows), semantics_example("node-list"));
        let n = node(7000, 1);
        let cache = CacheStats {
            limit: 268_435_456,
            used: 8_388_608,
            dirty: 4_194_304,
            hits: 300,
            misses: 100,
        };
        assert_eq!(
            node_info(Some(&n), n.addr, 1000, 600, &cache),
            semantics_example("node-info")
        );
        let busy = protocol::requests::RecoveryState {
            running: true,
            done: 10,
            total: 42,
            recovered_epoch: 2,
        };
        let idle = protocol::requests::RecoveryState {
            running: false,
            done: 0,
            total: 0,
            recovered_epoch: 3,
        };
        let rows = vec![
            (node(7000, 1), Some(busy)),
            (node(7001, 2), Some(idle)),
            (node(7002, 3), None),
        ];
        assert_eq!(recovery(&rows), semantics_example("cluster-recovery"));
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_620_173), "2026-11-25T15:22:53Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
