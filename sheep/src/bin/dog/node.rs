//! `dog node list | info | recovery | stat | md info` (PROTOCOL.md 5.9, 5.11; `stat` and
//! `md info` use the original's STAT and MD_INFO layouts, see `protocol::stats`).

use std::net::SocketAddr;

use protocol::{op, RequestHeader};

use crate::error::{warn, why, Failure};
use crate::fmt::size_str;
use crate::net;
use crate::vdi;
use crate::Out;

/// A node whose store is at least this full (in %) is flagged in `dog node list`.
const NEARLY_FULL: u64 = 90;

/// `dog node list`: the original's columns (id, host:port, vnodes, zone), then each node's
/// store size, used space and use (`-` when the node could not be asked).
pub async fn list(addr: SocketAddr, raw: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let list = net::node_list(&c).await?;
    let mut out = Out::new();
    if !raw {
        out.line("  Id   Host:Port         V-Nodes       Zone       Size       Used  Use%");
    }
    for (i, n) in list.nodes.iter().enumerate() {
        let host = n.addr.to_string();
        let usage = store_usage(n.addr).await.map_err(warn).ok();
        let (size, used, pct) = match usage {
            Some((size, free)) => (
                size_str(size, raw),
                size_str(size.saturating_sub(free), raw),
                format!("{}%", use_ratio(size, free)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        if raw {
            out.line(format!("{i} {host} {} {} {size} {used} {pct}", n.nr_vnodes, n.zone));
        } else {
            let full = usage.is_some_and(|(s, f)| s > 0 && use_ratio(s, f) >= NEARLY_FULL);
            out.line(format!(
                "{i:4}   {host:<20}\t{:2}{:11} {size:>10} {used:>10} {pct:>5}{}",
                n.nr_vnodes,
                n.zone,
                if full { "  nearly full" } else { "" }
            ));
        }
    }
    out.print()
}

/// STAT_SHEEP of one node: its store's (size, free) bytes.
async fn store_usage(node: SocketAddr) -> Result<(u64, u64), Failure> {
    let c = net::connect(node).await?;
    let r = c
        .call(RequestHeader::new(op::STAT_SHEEP), &[])
        .await
        .map_err(|e| Failure::new(format!("Failed to get the status of {node}: {}", why(&e))))?;
    Ok((r.header.store_size(), r.header.store_free()))
}

/// `dog node vnodes set N|auto`: SET_VNODES to the node dog talks to.
pub async fn set_vnodes(addr: SocketAddr, vnodes: Option<u16>) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    c.set_vnodes(vnodes.unwrap_or(0))
        .await
        .map_err(|e| Failure::new(format!("Failed to set the vnodes of {addr}: {}", why(&e))))
}

/// `dog node recovery`: STAT_RECOVERY to every node.
pub async fn recovery(addr: SocketAddr, raw: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let list = net::node_list(&c).await?;
    let mut out = Out::new();
    if !raw {
        out.line("  Id   Host:Port              State        Done      Total  Recovered epoch");
    }
    for (i, n) in list.nodes.iter().enumerate() {
        let st = match protocol::Client::new(n.addr).stat_recovery().await {
            Ok(st) => st,
            Err(e) => {
                warn(format!("Failed to get the recovery state of {}: {}", n.addr, why(&e)));
                continue;
            }
        };
        let state = if st.running { "recovering" } else { "idle" };
        let host = n.addr.to_string();
        if raw {
            out.line(format!(
                "{i} {host} {state} {} {} {}",
                st.done, st.total, st.recovered_epoch
            ));
        } else {
            out.line(format!(
                "{i:4}   {host:<22} {state:<10} {:>6} {:>10}  {:>15}",
                st.done, st.total, st.recovered_epoch
            ));
        }
    }
    out.print()
}

/// `dog node stat`: STAT to the node dog talks to; with `watch`, again every second.
pub async fn stat(addr: SocketAddr, raw: bool, watch: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let get = || async {
        c.stat()
            .await
            .map_err(|e| Failure::new(format!("failed to get stat information: {}", why(&e))))
    };
    let mut last = get().await?;
    if !watch {
        let mut out = Out::new();
        if !raw {
            out.line("Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD");
        }
        for (name, s) in [("Client", &last.gateway), ("Peer", &last.peer)] {
            let row = stat_row(s, raw);
            out.line(if raw { row } else { format!("{name}\t{row}") });
        }
        return out.print();
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = get().await?;
        let mut out = Out::new();
        if !raw {
            out.line("Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\tWRBW\tRDBW\tRPS");
        }
        for (name, s, l) in [("Client", &now.gateway, &last.gateway), ("Peer", &now.peer, &last.peer)] {
            let rates = format!(
                "{}\t{}\t{}",
                size_str(s.rx.saturating_sub(l.rx), raw),
                size_str(s.tx.saturating_sub(l.tx), raw),
                s.total.saturating_sub(l.total)
            );
            let row = stat_row(s, raw);
            out.line(if raw {
                format!("{row}\t{rates}")
            } else {
                format!("{name}\t{row}\t{rates}")
            });
        }
        out.print()?;
        last = now;
    }
}

fn stat_row(s: &protocol::stats::StatSide, raw: bool) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        s.active,
        s.total,
        s.write,
        s.read,
        s.remove,
        s.flush,
        size_str(s.rx, raw),
        size_str(s.tx, raw)
    )
}

/// `dog node md info`: MD_INFO to the node dog talks to, or (`all`) to every node.
pub async fn md_info(addr: SocketAddr, all: bool, raw: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let nodes: Vec<SocketAddr> = if all {
        net::node_list(&c).await?.nodes.iter().map(|n| n.addr).collect()
    } else {
        vec![addr]
    };
    let mut out = Out::new();
    if !raw {
        out.line("Id\tSize\tUsed\tAvail\tUse%\tPath");
    }
    for (i, n) in nodes.iter().enumerate() {
        let disks = protocol::Client::new(*n)
            .md_info()
            .await
            .map_err(|e| Failure::new(format!("failed to get multi-disk information: {}", why(&e))))?;
        if all && !raw {
            out.line(format!("Node {i}:"));
        }
        for d in disks {
            let size = d.free + d.used;
            let [s, u, f] = [size, d.used, d.free].map(|v| size_str(v, raw));
            let ratio = use_ratio(size, d.free);
            out.line(if raw {
                format!("{n} {} {s} {u} {f} {ratio}% {}", d.idx, d.path)
            } else {
                format!("{:2}\t{s}\t{u}\t{f}\t{ratio:3}%\t{}", d.idx, d.path)
            });
        }
    }
    out.print()
}

/// `dog cluster scrub`: STAT_SCRUB to every node.
pub async fn scrub(addr: SocketAddr, raw: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let list = net::node_list(&c).await?;
    let mut out = Out::new();
    if !raw {
        out.line("  Id   Host:Port              State  Passes    Checked      Total  Repaired  Unrepairable");
    }
    let mut findings = Vec::new();
    for (i, n) in list.nodes.iter().enumerate() {
        let s = match protocol::Client::new(n.addr).stat_scrub().await {
            Ok(s) => s,
            Err(e) => {
                warn(format!("Failed to get the scrub state of {}: {}", n.addr, why(&e)));
                continue;
            }
        };
        let state = if s.enabled { "on" } else { "off" };
        let host = n.addr.to_string();
        out.line(if raw {
            format!(
                "{i} {host} {state} {} {} {} {} {}",
                s.passes, s.checked, s.total, s.repaired, s.unrepairable
            )
        } else {
            format!(
                "{i:4}   {host:<22} {state:<5} {:>7} {:>10} {:>10} {:>9} {:>13}",
                s.passes, s.checked, s.total, s.repaired, s.unrepairable
            )
        });
        findings.extend(s.findings.into_iter().map(|f| (host.clone(), f)));
    }
    for (host, f) in findings {
        out.line(if raw {
            format!("finding {host} {f}")
        } else {
            format!("{host}: {f}")
        });
    }
    out.print()
}

/// Percentage used, truncated like the original's `(int)` cast; 0 for an empty store.
fn use_ratio(size: u64, free: u64) -> u64 {
    if size == 0 {
        0
    } else {
        ((size.saturating_sub(free)) as f64 / size as f64 * 100.0) as u64
    }
}

pub async fn info(addr: SocketAddr, raw: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let list = net::node_list(&c).await?;
    let mut out = Out::new();
    if !raw {
        out.line("Id\tSize\tUsed\tAvail\tUse%");
    }
    let (mut total_size, mut total_free, mut answered) = (0u64, 0u64, 0usize);
    for (i, n) in list.nodes.iter().enumerate() {
        let Ok((size, free)) = store_usage(n.addr).await.map_err(warn) else {
            continue;
        };
        let used = size.saturating_sub(free);
        if raw {
            out.line(format!(
                "{i} {} {} {} {}%",
                size_str(size, raw),
                size_str(used, raw),
                size_str(free, raw),
                use_ratio(size, free)
            ));
        } else {
            out.line(format!(
                "{i:2}\t{}\t{}\t{}\t{:3}%",
                size_str(size, raw),
                size_str(used, raw),
                size_str(free, raw),
                use_ratio(size, free)
            ));
        }
        total_size += size;
        total_free += free;
        answered += 1;
    }
    if answered == 0 {
        out.print()?;
        return Err(Failure::new("Cannot get information from any nodes"));
    }

    let mut virtual_size = 0u64;
    vdi::for_each_vdi(&c, false, |h, _| {
        if !h.is_snapshot() {
            virtual_size += h.vdi_size;
        }
    })
    .await?;

    let used = total_size.saturating_sub(total_free);
    if raw {
        out.line(format!(
            "Total {} {} {} {}% {}",
            size_str(total_size, raw),
            size_str(used, raw),
            size_str(total_free, raw),
            use_ratio(total_size, total_free),
            size_str(virtual_size, raw)
        ));
    } else {
        out.line(format!(
            "Total\t{}\t{}\t{}\t{:3}%\n\nTotal virtual image size\t{}",
            size_str(total_size, raw),
            size_str(used, raw),
            size_str(total_free, raw),
            use_ratio(total_size, total_free),
            size_str(virtual_size, raw)
        ));
    }
    // The object cache of the gateway asked, where it runs one (`sheep -w`).
    if let Ok(s) = c.stat_cache().await {
        if s.limit > 0 {
            let [size, used, dirty] = [s.limit, s.used, s.dirty].map(|v| size_str(v, raw));
            let (hits, misses, ratio) = (s.hits, s.misses, s.hit_ratio());
            out.line(if raw {
                format!("Cache {size} {used} {dirty} {hits} {misses} {ratio:.1}%")
            } else {
                format!(
                    "\nObject cache of {addr}\tsize {size}\tused {used}\tdirty {dirty}\t\
                     hits {hits}\tmisses {misses}\thit ratio {ratio:.1}%"
                )
            });
        }
    }
    out.print()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        assert_eq!(use_ratio(0, 0), 0);
        assert_eq!(use_ratio(100, 97), 3);
        assert_eq!(use_ratio(107_287_605_248, 103_663_707_894), 3);
        assert_eq!(use_ratio(10, 0), 100);
    }
}
