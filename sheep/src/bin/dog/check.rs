//! `dog vdi check`: GET_HASH of the inode and of every used data object on each of its
//! replica nodes (the current ring), then REPAIR_REPLICA to each missing or differing copy
//! from one that the majority holds. Without a majority nothing changes and the object is
//! reported. One line per problem, then a summary line; the exit status says what was
//! found (0 clean, 1 repaired, 2 unrepairable).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use protocol::check::{plan, Digest, Plan};
use protocol::placement::Ring;
use protocol::{op, Client, ObjArgs, Oid, RequestHeader, ResultCode, Vid};
use sheep::dogcli::Snap;

use crate::error::{why, Failure};
use crate::{net, vdi, Out};

/// Objects checked at once.
const PARALLEL: usize = 16;
/// Exit statuses: some copy was (or, with --dry-run, would be) repaired; some could not be.
const EXIT_REPAIRED: i32 = 1;
const EXIT_UNREPAIRABLE: i32 = 2;

/// What happened to one object: lines to print and the worst outcome.
struct Outcome {
    lines: Vec<String>,
    repaired: bool,
    unrepairable: bool,
}

struct Checker {
    clients: HashMap<SocketAddr, Arc<Client>>,
    ring: Ring,
    copies: usize,
    epoch: u32,
    dry_run: bool,
}

impl Checker {
    /// A replica's digest of `oid`: `Ok(None)` when it has no copy, `Err(None)` when its
    /// copy fails its own checksums (the sheep answers EIO), `Err(Some(why))` when it cannot
    /// tell.
    async fn digest(&self, at: SocketAddr, oid: Oid) -> Result<Option<Digest>, Option<String>> {
        let mut req = RequestHeader::new(op::GET_HASH);
        req.set_obj(&ObjArgs {
            oid: oid.0,
            tgt_epoch: self.epoch,
            ..ObjArgs::default()
        });
        let c = self
            .clients
            .get(&at)
            .ok_or_else(|| Some(format!("{at} is not a member")))?;
        match c.call(req, &[]).await {
            Ok(r) => Ok(Some(r.header.hash())),
            Err(e) if e.result() == Some(ResultCode::NO_OBJ) => Ok(None),
            Err(e) if e.result() == Some(ResultCode::EIO) => Err(None),
            Err(e) => Err(Some(format!("cannot get the digest from {at}: {}", why(&e)))),
        }
    }

    async fn repair(&self, oid: Oid, to: SocketAddr, from: SocketAddr, want: Digest) -> Result<(), String> {
        let mut req = RequestHeader::new(op::REPAIR_REPLICA);
        req.set_forw(oid.0, from);
        let c = self.clients.get(&to).ok_or_else(|| format!("{to} is not a member"))?;
        c.call(req, &[]).await.map_err(|e| why(&e))?;
        // A write that raced the repair shows here: report rather than claim success.
        match self.digest(to, oid).await {
            Ok(Some(d)) if d == want => Ok(()),
            Err(Some(e)) => Err(e),
            _ => Err("the copy still differs after the repair".into()),
        }
    }

    async fn check(&self, oid: Oid) -> Outcome {
        let replicas: Vec<SocketAddr> = self.ring.replicas(oid.0, self.copies).iter().map(|n| n.addr).collect();
        let asked = futures::future::join_all(replicas.iter().map(|&a| self.digest(a, oid))).await;
        let mut held = Vec::with_capacity(replicas.len());
        let mut out = Outcome {
            lines: Vec::new(),
            repaired: false,
            unrepairable: false,
        };
        let mut damaged = Vec::new();
        for (a, r) in replicas.iter().zip(asked) {
            match r {
                Ok(d) => held.push((*a, d)),
                // A copy that fails its checksums counts as no copy: one that passes replaces it.
                Err(None) => {
                    held.push((*a, None));
                    damaged.push(*a);
                }
                Err(Some(e)) => {
                    out.lines.push(format!("{:016x} unchecked: {e}", oid.0));
                    out.unrepairable = true;
                }
            }
        }
        if out.unrepairable {
            return out;
        }
        match plan(&held) {
            Plan::Good => {}
            Plan::Lost => {
                out.lines.push(format!("{:016x} lost: no replica node holds it", oid.0));
                out.unrepairable = true;
            }
            Plan::NoMajority => {
                let copies: Vec<String> = held
                    .iter()
                    .map(|(a, d)| match d {
                        Some(d) => format!("{a}={}", hex(&d[..4])),
                        None => format!("{a}=missing"),
                    })
                    .collect();
                out.lines
                    .push(format!("{:016x} no majority: {}", oid.0, copies.join(" ")));
                out.unrepairable = true;
            }
            Plan::Repair { from, want, to } => {
                for (bad, what) in to {
                    let what = if damaged.contains(&bad) {
                        "fails its checksums"
                    } else {
                        what
                    };
                    if self.dry_run {
                        out.lines
                            .push(format!("{:016x} {what} on {bad}: would repair from {from}", oid.0));
                        out.repaired = true;
                        continue;
                    }
                    match self.repair(oid, bad, from, want).await {
                        Ok(()) => {
                            out.lines
                                .push(format!("{:016x} {what} on {bad}: repaired from {from}", oid.0));
                            out.repaired = true;
                        }
                        Err(e) => {
                            out.lines
                                .push(format!("{:016x} {what} on {bad}: repair failed: {e}", oid.0));
                            out.unrepairable = true;
                        }
                    }
                }
            }
        }
        out
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn check(addr: SocketAddr, name: &str, snap: Option<&Snap>, dry_run: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    // Copies of a VDI being written differ for a moment: check only what nobody writes.
    let lock = match (snap, dry_run) {
        (None, false) => Some(vdi::write_lock(addr, name).await?),
        _ => None,
    };
    let list = net::node_list(&c).await?;
    let (vid, inode) = vdi::open_vdi(&c, name, snap).await?;
    let h = &inode.header;
    if h.copy_policy != 0 {
        return Err(Failure::new(format!(
            "VDI {name} is erasure coded; vdi check handles replicated VDIs only"
        )));
    }
    let vid = Vid::new(vid).ok_or_else(|| Failure::new(format!("VDI {name} has a bad id {vid:#x}")))?;
    let mut oids = vec![vid.inode_oid()];
    for (idx, &owner) in inode.data_vdi_id.iter().enumerate() {
        if let Some(v) = Vid::new(owner).filter(|_| owner != 0) {
            oids.push(v.data_oid(idx as u32));
        }
    }
    let checker = Checker {
        clients: list
            .nodes
            .iter()
            .map(|n| (n.addr, Arc::new(Client::new(n.addr))))
            .collect(),
        ring: Ring::new(list.nodes.clone()),
        copies: usize::from(h.nr_copies),
        epoch: list.epoch,
        dry_run,
    };
    let total = oids.len();
    let outcomes: Vec<Outcome> = futures::stream::iter(oids)
        .map(|oid| checker.check(oid))
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut out = Out::new();
    let (mut repaired, mut unrepairable) = (0, 0);
    for o in &outcomes {
        for l in &o.lines {
            out.line(l);
        }
        repaired += usize::from(o.repaired);
        unrepairable += usize::from(o.unrepairable);
    }
    let good = outcomes.iter().filter(|o| o.lines.is_empty()).count();
    let verb = if dry_run { "to repair" } else { "repaired" };
    out.line(format!(
        "{name}: {total} objects, {good} good, {repaired} {verb}, {unrepairable} unrepairable"
    ));
    out.print()?;
    if let Some(l) = lock {
        l.release_vdi(vid)
            .await
            .map_err(|e| Failure::new(format!("Failed to release VDI {name}: {}", why(&e))))?;
    }
    match (repaired, unrepairable) {
        (_, u) if u > 0 => Err(Failure {
            code: EXIT_UNREPAIRABLE,
            msg: format!("{name}: {u} objects could not be repaired"),
        }),
        (r, _) if r > 0 => Err(Failure {
            code: EXIT_REPAIRED,
            msg: format!("{name}: {r} objects {verb}"),
        }),
        _ => Ok(()),
    }
}
