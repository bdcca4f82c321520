//! The background scrub (`--scrub-rate`): this node walks its store, pass after pass, and
//! compares each copy's SHA-1 with the other replicas'. When the majority holds another
//! digest it replaces its own copy from a majority holder; each node repairs only its own
//! copies, so no two nodes repair one object. A mismatch is acted on only when a second
//! look, a moment later and with this node's writes to the object held off, sees the very
//! same digests: a write still on its way to some replicas changes them, and is not damage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::check::{plan, Digest, Plan};
use protocol::{op, ObjArgs, Oid, RequestHeader, ResultCode};

use super::Healed;
use crate::node::Sheep;
use crate::store::StoreError;

/// What [`digests`] says when this node's own copy fails its checksums.
const DAMAGED: &str = "this node's copy fails its checksums";
/// How long to wait before the second look at a mismatch.
const CONFIRM_AFTER: Duration = Duration::from_secs(1);
/// Pause between passes, so that an empty store does not spin.
const BETWEEN_PASSES: Duration = Duration::from_secs(1);

/// What one object's check came to.
enum Finding {
    Good,
    /// Not this node's to judge (not a replica now), or changing under the scrub.
    Skipped,
    Repaired(String),
    Unrepairable(String),
}

pub async fn worker(sheep: Arc<Sheep>) {
    let Some(pause) = sheep.recovery.scrub_pause() else {
        return;
    };
    if sheep.me.is_gateway() {
        return;
    }
    loop {
        let oids = sheep.store.list();
        sheep.recovery.update_scrub(|s| {
            s.checked = 0;
            s.total = oids.len() as u64;
        });
        for oid in oids {
            tokio::time::sleep(pause).await;
            // Recovery moves copies around: judge them once it is done.
            while sheep.recovery.progress().running {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let found = scrub(&sheep, oid).await;
            sheep.recovery.update_scrub(|s| {
                s.checked += 1;
                match found {
                    Finding::Good | Finding::Skipped => {}
                    Finding::Repaired(line) => {
                        s.repaired += 1;
                        s.findings.push(line);
                    }
                    Finding::Unrepairable(line) => {
                        s.unrepairable += 1;
                        s.findings.push(line);
                    }
                }
            });
        }
        sheep.recovery.update_scrub(|s| s.passes += 1);
        tokio::time::sleep(BETWEEN_PASSES).await;
    }
}

/// Every replica's digest of `oid` (this node's from its store).
async fn digests(
    sheep: &Arc<Sheep>,
    oid: Oid,
    replicas: &[SocketAddr],
) -> Result<Vec<(SocketAddr, Option<Digest>)>, String> {
    let epoch = sheep.state().epoch();
    let size = sheep.state().object_size(oid).ok_or("its VDI is gone")? as usize;
    let ask = |at: SocketAddr| async move {
        if at == sheep.me.addr {
            if crate::peer::holds_unrecovered(sheep, oid) {
                return Err("this node's copy is not recovered yet".to_string());
            }
            let s = sheep.clone();
            return match tokio::task::spawn_blocking(move || s.store.hash(oid, size)).await {
                Ok(Ok(d)) => Ok(Some(d)),
                Ok(Err(e)) if e.code() == ResultCode::NO_OBJ => Ok(None),
                Ok(Err(StoreError::Damaged { .. })) => Err(DAMAGED.to_string()),
                Ok(Err(e)) => Err(format!("cannot read this node's copy: {e}")),
                Err(_) => Err("the hashing task died".to_string()),
            };
        }
        let mut req = RequestHeader::new(op::GET_HASH);
        req.set_obj(&ObjArgs {
            oid: oid.0,
            tgt_epoch: epoch,
            ..ObjArgs::default()
        });
        match sheep.peer(at).call(req, &[]).await {
            Ok(r) => Ok(Some(r.header.hash())),
            // A copy that fails its own checksums counts as none: its node repairs it.
            Err(e) if matches!(e.result(), Some(ResultCode::NO_OBJ | ResultCode::EIO)) => Ok(None),
            Err(e) => Err(format!("cannot get the digest from {at}: {e}")),
        }
    };
    futures::future::join_all(replicas.iter().map(|&a| ask(a)))
        .await
        .into_iter()
        .zip(replicas)
        .map(|(r, &a)| r.map(|d| (a, d)))
        .collect()
}

async fn scrub(sheep: &Arc<Sheep>, oid: Oid) -> Finding {
    let me = sheep.me.addr;
    let replicas: Vec<SocketAddr> = {
        let st = sheep.state();
        let copies = usize::from(st.copies_for(oid.vid().get()));
        st.ring().replicas(oid.0, copies).iter().map(|n| n.addr).collect()
    };
    if !replicas.contains(&me) {
        return Finding::Skipped;
    }
    let first = match digests(sheep, oid, &replicas).await {
        Ok(d) => d,
        Err(e) if e == DAMAGED => {
            return match super::heal(sheep.clone(), oid).await {
                Healed::From(from) => {
                    Finding::Repaired(format!("{:016x} failed its checksums; repaired from {from}", oid.0))
                }
                Healed::Busy => Finding::Skipped,
                Healed::Failed => Finding::Unrepairable(format!(
                    "{:016x} failed its checksums; no replica had a good copy",
                    oid.0
                )),
            };
        }
        Err(_) => return Finding::Skipped,
    };
    match plan(&first) {
        Plan::Good | Plan::Lost => return Finding::Good,
        Plan::Repair { ref to, .. } if !to.iter().any(|(a, _)| *a == me) => return Finding::Good,
        Plan::NoMajority => {}
        Plan::Repair { .. } => {}
    }
    tokio::time::sleep(CONFIRM_AFTER).await;
    let _g = sheep.recovery.stripe(oid).write().await;
    let second = match digests(sheep, oid, &replicas).await {
        Ok(d) if d == first => d,
        _ => return Finding::Skipped,
    };
    let epoch = sheep.state().epoch();
    match plan(&second) {
        Plan::Repair { from, .. } => match super::fetch(sheep, oid, from, epoch).await {
            Ok(()) => {
                tracing::warn!(%oid, %from, epoch, "scrub: this node's copy differed from the majority's; replaced");
                Finding::Repaired(format!("{:016x} repaired from {from}", oid.0))
            }
            Err(code) => Finding::Unrepairable(format!("{:016x} repair from {from} failed: {code}", oid.0)),
        },
        Plan::NoMajority => {
            let held: Vec<String> = second
                .iter()
                .map(|(a, d)| match d {
                    Some(d) => format!("{a}={:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3]),
                    None => format!("{a}=missing"),
                })
                .collect();
            tracing::error!(%oid, epoch, copies = %held.join(" "), "scrub: copies differ and no majority exists");
            Finding::Unrepairable(format!("{:016x} no majority: {}", oid.0, held.join(" ")))
        }
        Plan::Good | Plan::Lost => Finding::Good,
    }
}
