//! Recovery: after every membership change, each storage node makes sure it holds a current
//! copy of every object it owns in the new epoch, and drops copies it no longer owns once
//! every member has recovered.
//!
//! Freshness is tracked per object as the epoch at which this node's copy was last known to
//! be current (`good`). A copy good at epoch `g` is still current at epoch `e` if this node
//! owned the object in every epoch after `g`: every write in those epochs reached it. A node
//! that was away (not a member) owned nothing meanwhile, so its old copies are never served;
//! it fetches them again from the holder whose copy is freshest. Client I/O to an object not
//! recovered yet recovers that object first; a read is served by a current replica instead
//! when there is one (`flags::CURRENT_ONLY`), and the object jumps the recovery queue.
//!
//! `DIR/recovered` holds the last epoch whose recovery finished here; after a restart, local
//! copies owned at that epoch count as good at it, and everything else as untrusted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::frame::PIECE;
use protocol::node::Node;
use protocol::{flags, op, ObjArgs, Oid, RequestHeader, ResultCode};

use crate::node::Sheep;
use crate::store::farm::node::NodeFarm;
use crate::store::farm::Error as FarmError;
use crate::store::Durability;

pub mod freshness;
pub mod landing;
pub mod scrub;

use freshness::Progress;

/// Loads freshness after a restart, once the cluster state has been replayed.
pub fn init(sheep: &Sheep) {
    let rec = &sheep.recovery;
    let r = freshness::read_recovered(&sheep.dir);
    let good = sheep
        .store
        .list()
        .into_iter()
        .map(|oid| (oid, if r > 0 && owns_at(sheep, oid, r) { r } else { 0 }))
        .collect();
    rec.load(r, good);
    rec.kick(sheep.state().epoch());
}

/// Whether this node held a copy of `oid` in `epoch`'s placement.
pub fn owns_at(sheep: &Sheep, oid: Oid, epoch: u32) -> bool {
    let st = sheep.state();
    let copies = usize::from(st.copies_for(oid.vid().get()));
    sheep
        .recovery
        .ring_at(&st, epoch)
        .is_some_and(|r| r.replicas(oid.0, copies).iter().any(|n| n.addr == sheep.me.addr))
}

/// The epoch up to which this node's copy of `oid` is known current, or `None` if it holds
/// no copy.
pub fn effective_good(sheep: &Sheep, oid: Oid) -> Option<u32> {
    if !sheep.store.exists(oid) {
        return None;
    }
    let rec = &sheep.recovery;
    let g = rec.good(oid);
    let now = sheep.state().epoch();
    if g == 0 || g >= now {
        return Some(g);
    }
    if (g + 1..=now).all(|e| owns_at(sheep, oid, e)) {
        rec.mark(oid, now);
        return Some(now);
    }
    Some(g)
}

/// The epoch at which `at`'s copy of `oid` was last known current (GET_OBJ_EPOCH):
/// `Ok(None)` when it holds no copy, `Err` when it did not answer.
async fn good_epoch_at(sheep: &Sheep, at: SocketAddr, oid: Oid) -> Result<Option<u32>, ()> {
    let mut req = RequestHeader::new(op::GET_OBJ_EPOCH);
    req.data_length = 4;
    req.set_obj(&ObjArgs {
        oid: oid.0,
        ..ObjArgs::default()
    });
    match sheep.peer(at).call(req, &[]).await {
        Ok(r) if r.data.len() == 4 => Ok(Some(u32::from_le_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]))),
        Err(e) if e.result() == Some(ResultCode::NO_OBJ) => Ok(None),
        _ => Err(()),
    }
}

/// Makes this node's copy of `oid` current, fetching it from the freshest holder if needed.
/// `Err(NO_OBJ)` when no node holds the object at all. Callers hold the object's stripe.
pub async fn ensure_current(sheep: &Arc<Sheep>, oid: Oid) -> Result<(), ResultCode> {
    let rec = &sheep.recovery;
    let epoch = sheep.state().epoch();
    let mine = effective_good(sheep, oid);
    if mine == Some(epoch) {
        return Ok(());
    }
    let others: Vec<Node> = sheep
        .state()
        .storage_nodes()
        .into_iter()
        .filter(|n| n.addr != sheep.me.addr)
        .collect();
    let asks = others.iter().map(|n| async move {
        match good_epoch_at(sheep, n.addr, oid).await {
            Ok(g) => Ok(g.map(|g| (n, g))),
            Err(()) => Err(n.addr),
        }
    });
    let answers = futures::future::join_all(asks).await;
    // A member that did not answer may hold the freshest copy: deciding without it could
    // crown a stale one. Refuse for now (gateways retry once the membership settles).
    if let Some(Err(silent)) = answers.iter().find(|a| a.is_err()) {
        tracing::warn!(%oid, node = %silent, epoch, "cannot tell which copy is freshest while a member is silent");
        return Err(ResultCode::NODE_IN_RECOVERY);
    }
    let best = answers
        .into_iter()
        .filter_map(|a| a.ok().flatten())
        .max_by_key(|(_, g)| *g);
    let fetch_from = best.filter(|(_, bg)| mine.is_none_or(|g| *bg > g));
    match (mine, fetch_from) {
        (None, None) => Err(ResultCode::NO_OBJ),
        (Some(g), None) => {
            if g + 1 < epoch {
                tracing::warn!(%oid, good = g, epoch, "no fresher copy exists anywhere; keeping this node's copy");
            }
            rec.mark(oid, epoch);
            Ok(())
        }
        (_, Some((node, g))) => {
            fetch(sheep, oid, node.addr, epoch).await?;
            tracing::debug!(%oid, from = %node.addr, good = g, epoch, "object recovered");
            Ok(())
        }
    }
}

/// Replaces this node's copy of `oid` with `from`'s whole object and marks it current. The
/// new copy is built piece by piece under a temporary name (zero pieces are left sparse) and
/// put in place at the end; an object of any size (to 2 GiB) is never held whole in
/// memory. Callers hold the object's stripe.
pub async fn fetch(sheep: &Arc<Sheep>, oid: Oid, from: SocketAddr, epoch: u32) -> Result<(), ResultCode> {
    let size = sheep.state().object_size(oid).ok_or(ResultCode::NO_VDI)?;
    let direct = sheep.store.wants_direct(oid, 0, PIECE.min(size) as usize);
    let mut copy = sheep.blocking(move |s| s.store.begin_new(oid, size, direct)).await?;
    for at in (0..size).step_by(PIECE as usize) {
        let len = PIECE.min(size - at);
        let mut req = RequestHeader::new(op::READ_PEER);
        req.flags |= flags::RECOVERY;
        // The source serves it once it holds every write it accepted before this epoch.
        req.epoch = epoch;
        req.data_length = len as u32;
        req.set_obj(&ObjArgs {
            oid: oid.0,
            offset: at as u32,
            ..ObjArgs::default()
        });
        let piece = sheep.peer(from).call(req, &[]).await.map_err(|e| match e.result() {
            Some(ResultCode::NO_OBJ) => ResultCode::NO_OBJ,
            // The source is not at this epoch yet, or writes of an older one are still
            // landing there: a retry will do (gateways retry this code).
            Some(ResultCode::NEW_NODE_VER | ResultCode::NODE_IN_RECOVERY) => {
                tracing::warn!(%oid, %from, epoch, offset = at, error = %e, "a peer cannot serve its copy at this epoch yet");
                ResultCode::NODE_IN_RECOVERY
            }
            _ => {
                tracing::error!(%oid, %from, epoch, offset = at, error = %e, "reading a copy from a peer failed");
                ResultCode::EIO
            }
        })?;
        if piece.data.len() as u64 != len {
            tracing::error!(%oid, %from, epoch, offset = at, got = piece.data.len(), len, "a peer sent a short piece of a copy");
            return Err(ResultCode::EIO);
        }
        if piece.data.iter().all(|&b| b == 0) {
            continue;
        }
        copy = sheep
            .blocking(move |s| copy.write(&s.store, at, &piece.data).map(|()| copy))
            .await?;
    }
    // Synced before the regions are taken: a big copy's commit holds every region lock of the
    // store, and must not hold them for an fsync.
    let copy = sheep.blocking(move |_| copy.sync().map(|()| copy)).await?;
    let _r = sheep.store.own_regions(oid, 0, size).await;
    sheep
        .blocking(move |s| s.store.commit_new(copy, Durability::Now))
        .await?;
    sheep.recovery.mark(oid, epoch);
    Ok(())
}

/// This node's copy of `oid` failed its checksums: replace it with the first other replica's
/// that passes its own (each replica checks what it serves). Every failed read asks for a
/// heal: while one of the object runs, the others return [`Healed::Busy`], so a hot object
/// does not fetch itself once per read.
pub async fn heal(sheep: Arc<Sheep>, oid: Oid) -> Healed {
    if !sheep.recovery.start_heal(oid) {
        return Healed::Busy;
    }
    let from = heal_now(&sheep, oid).await;
    sheep.recovery.end_heal(oid);
    match from {
        Some(a) => Healed::From(a),
        None => Healed::Failed,
    }
}

/// What [`heal`] did.
pub enum Healed {
    /// The copy was replaced from this node's.
    From(SocketAddr),
    /// Another heal of the object is under way.
    Busy,
    /// No other replica had a copy that passes its checksums.
    Failed,
}

async fn heal_now(sheep: &Arc<Sheep>, oid: Oid) -> Option<SocketAddr> {
    let _g = sheep.recovery.stripe(oid).write().await;
    let (others, epoch) = {
        let st = sheep.state();
        let copies = usize::from(st.copies_for(oid.vid().get()));
        let others: Vec<SocketAddr> = st
            .ring()
            .replicas(oid.0, copies)
            .iter()
            .map(|n| n.addr)
            .filter(|a| *a != sheep.me.addr)
            .collect();
        (others, st.epoch())
    };
    for from in others {
        // Only a current copy: one whose node has not recovered it yet may lack writes
        // acknowledged since, and would be marked current here.
        match good_epoch_at(sheep, from, oid).await {
            Ok(Some(g)) if g >= epoch => {}
            _ => continue,
        }
        if fetch(sheep, oid, from, epoch).await.is_ok() {
            tracing::warn!(%oid, %from, epoch, "damaged copy replaced from another replica");
            return Some(from);
        }
    }
    tracing::error!(%oid, epoch, "damaged copy: no other replica could provide a current good one");
    None
}

/// REPAIR_REPLICA (`dog vdi check`): this node's copy of `oid` is missing or differs from
/// the majority's; take `from`'s.
pub async fn repair(sheep: &Arc<Sheep>, oid: Oid, from: SocketAddr) -> Result<(), ResultCode> {
    if sheep.me.is_gateway() || from == sheep.me.addr {
        return Err(ResultCode::INVALID_PARMS);
    }
    let _g = sheep.recovery.stripe(oid).write().await;
    let epoch = sheep.state().epoch();
    fetch(sheep, oid, from, epoch).await?;
    tracing::warn!(%oid, %from, epoch, "replica repaired from another node's copy");
    Ok(())
}

/// The recovery worker: recovers the newest requested epoch, abandoning an older one as soon
/// as a newer epoch begins (objects already recovered stay recovered).
pub async fn worker(sheep: Arc<Sheep>) {
    let mut rx = sheep.recovery.targets();
    loop {
        let epoch = *rx.borrow_and_update();
        if epoch > 1 && epoch == sheep.state().epoch() && epoch > sheep.recovery.recovered_epoch() {
            recover_epoch(&sheep, epoch).await;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn list_objects(sheep: &Sheep, node: &Node) -> Option<Vec<Oid>> {
    if node.addr == sheep.me.addr {
        return Some(sheep.store.list());
    }
    let mut req = RequestHeader::new(op::GET_OBJ_LIST);
    req.data_length = protocol::frame::MAX_PAYLOAD;
    match sheep.peer(node.addr).call(req, &[]).await {
        Ok(r) => Some(
            r.data
                .chunks_exact(8)
                .map(|c| Oid(u64::from_le_bytes(c.try_into().unwrap_or_default())))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(node = %node.addr, error = %e, "cannot list a node's objects for recovery");
            None
        }
    }
}

async fn recover_epoch(sheep: &Arc<Sheep>, epoch: u32) {
    let rec = &sheep.recovery;
    let superseded = || sheep.state().epoch() != epoch;
    if sheep.me.is_gateway() {
        rec.set_recovered(&sheep.dir, epoch);
        return;
    }
    let nodes: Vec<Node> = sheep.state().storage_nodes();
    let mut all = BTreeSet::new();
    for n in &nodes {
        // A member that cannot be listed is restarting or about to leave: keep asking until it
        // answers or a new epoch takes over.
        let mut pause = Duration::from_millis(100);
        loop {
            if let Some(l) = list_objects(sheep, n).await {
                all.extend(l);
                break;
            }
            if superseded() {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
    let mine: Vec<Oid> = all.iter().copied().filter(|&o| owns_at(sheep, o, epoch)).collect();
    rec.set_progress(Progress {
        epoch,
        running: true,
        done: 0,
        total: mine.len() as u64,
    });
    tracing::info!(epoch, objects = mine.len(), "recovery started");
    let (started, total) = (std::time::Instant::now(), mine.len());
    let pause = rec.pause();
    let mut queue = mine.into_iter();
    let mut failed = Vec::new();
    loop {
        if superseded() {
            tracing::info!(epoch, "recovery superseded by a newer epoch");
            rec.update_progress(|p| p.running = false);
            return;
        }
        // An object a read found behind goes first; the progress counts the queue's.
        let (oid, queued) = match rec.next_wanted() {
            // Asked for in an earlier epoch and not this node's now, or current already (a
            // write recovered it): nothing to do, and no pause spent on it.
            Some(oid) if !owns_at(sheep, oid, epoch) || effective_good(sheep, oid) == Some(epoch) => continue,
            Some(oid) => (oid, false),
            None => match queue.next() {
                Some(oid) => (oid, true),
                None => break,
            },
        };
        if let Err(code) = recover_one(sheep, oid).await {
            tracing::error!(%oid, epoch, result = %code, "cannot recover object; retrying after the others");
            failed.push(oid);
        }
        if queued {
            rec.update_progress(|p| p.done += 1);
        }
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
    // The epoch is recovered only once every object is: the other members drop their copies
    // this node now owns when it says so, and those may be the only current ones.
    let retried = failed.len();
    let mut wait = Duration::from_secs(1);
    while !failed.is_empty() {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline && !superseded() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        wait = (wait * 2).min(Duration::from_secs(10));
        let mut still = Vec::new();
        let mut last = None;
        for oid in failed {
            if superseded() {
                tracing::info!(epoch, "recovery superseded by a newer epoch");
                rec.update_progress(|p| p.running = false);
                return;
            }
            if owns_at(sheep, oid, epoch) && effective_good(sheep, oid) != Some(epoch) {
                if let Err(code) = recover_one(sheep, oid).await {
                    last = Some((oid, code));
                    still.push(oid);
                }
            }
        }
        if let Some((oid, code)) = last {
            tracing::warn!(epoch, objects = still.len(), %oid, result = %code, "recovery: objects still not recovered; the epoch stays unrecovered and they are retried");
        }
        failed = still;
    }
    rec.set_recovered(&sheep.dir, epoch);
    rec.update_progress(|p| p.running = false);
    tracing::info!(
        epoch,
        objects = total,
        retried,
        secs = started.elapsed().as_secs_f64(),
        "recovery finished"
    );
    remove_orphans(sheep, epoch, &nodes).await;
}

/// Makes this node's copy of `oid` current. An object no member holds is not a failure:
/// there is nothing to recover.
async fn recover_one(sheep: &Arc<Sheep>, oid: Oid) -> Result<(), ResultCode> {
    let _g = sheep.recovery.stripe(oid).write().await;
    match ensure_current(sheep, oid).await {
        Err(ResultCode::NO_OBJ) => Ok(()),
        r => r,
    }
}

/// Once every member has recovered `epoch`, copies this node no longer owns are dropped.
async fn remove_orphans(sheep: &Arc<Sheep>, epoch: u32, nodes: &[Node]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if sheep.state().epoch() != epoch || tokio::time::Instant::now() > deadline {
            return;
        }
        let mut all_done = true;
        for n in nodes.iter().filter(|n| n.addr != sheep.me.addr) {
            let mut req = RequestHeader::new(op::STAT_RECOVERY);
            req.data_length = 24;
            let r = sheep.peer(n.addr).call(req, &[]).await;
            let done = matches!(r, Ok(ref r) if r.header.recovered_epoch() >= epoch);
            all_done &= done;
        }
        if all_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut orphans: Vec<Oid> = sheep
        .store
        .list()
        .into_iter()
        .filter(|&o| !owns_at(sheep, o, epoch))
        .collect();
    if orphans.is_empty() {
        return;
    }
    if sheep.state().format.as_ref().is_some_and(|f| f.store == "farm") {
        let members = nodes.iter().map(|n| n.addr.to_string()).collect();
        let s = sheep.clone();
        let done = tokio::task::spawn_blocking(move || {
            let kept = archive(&s, epoch, members, &orphans);
            (kept, orphans)
        })
        .await;
        orphans = match done {
            Ok((true, o)) => o,
            Ok((false, _)) => return,
            Err(e) => {
                tracing::error!(epoch, error = %e, "the farm archive failed; the copies this node no longer owns stay");
                return;
            }
        };
    }
    let mut removed = 0;
    for oid in orphans {
        if sheep.state().epoch() != epoch {
            return;
        }
        let _g = sheep.recovery.stripe(oid).write().await;
        if sheep.store.remove(oid).is_ok() {
            sheep.recovery.forget(oid);
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(epoch, removed, "removed copies this node no longer owns");
    }
}

/// Stores the copies `oids`, which this node no longer owns after `epoch`, as a system
/// snapshot in its farm (`-b farm`), oldest snapshots first making room for it. False when
/// they must stay in the working directory (the farm failed; the next recovery tries again).
fn archive(sheep: &Sheep, epoch: u32, members: Vec<String>, oids: &[Oid]) -> bool {
    let keep = sheep.recovery.farm_keep;
    let farm = match NodeFarm::create(&sheep.dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(epoch, error = %e, "cannot open the farm; the copies this node no longer owns stay");
            return false;
        }
    };
    // Room for the new snapshot; with --farm-keep 0, whatever an earlier setting kept goes.
    match farm.prune(keep.saturating_sub(1)) {
        Ok((0, _)) => {}
        Ok((objects, bytes)) => tracing::info!(objects, bytes, "dropped the farm's oldest system snapshots"),
        Err(e) => tracing::warn!(error = %e, "cannot drop the farm's oldest system snapshots"),
    }
    if keep == 0 {
        return true;
    }
    let bytes = sheep.store.bytes_of(oids);
    match sheep.store.space() {
        Ok((capacity, free)) if free.saturating_sub(bytes) >= capacity / 5 => {}
        other => {
            let free = other.map_or_else(|e| e.to_string(), |(_, free)| format!("{free} bytes free"));
            tracing::warn!(
                epoch,
                objects = oids.len(),
                bytes,
                free,
                "not archiving the copies this node no longer owns: the farm would leave under a fifth of the disk free"
            );
            return true;
        }
    }
    let pause = sheep.recovery.pause();
    let pace = || {
        pause.into_iter().for_each(std::thread::sleep);
        match sheep.state().epoch() {
            now if now == epoch => Ok(()),
            now => Err(FarmError::new(format!("epoch {now} began"))),
        }
    };
    match farm.archive(&sheep.store, epoch, members, oids, pace) {
        Ok(a) => {
            for oid in &a.damaged {
                tracing::warn!(%oid, epoch, "not archiving this copy: it fails its checksums");
            }
            tracing::info!(
                epoch,
                objects = a.objects,
                bytes = a.bytes,
                new_bytes = a.new_bytes,
                "archived the copies this node no longer owns in its farm"
            );
            true
        }
        Err(e) if sheep.state().epoch() != epoch => {
            tracing::info!(epoch, why = %e, "archive stopped: the copies this node no longer owns stay for now");
            false
        }
        Err(e) => {
            tracing::error!(epoch, error = %e, "cannot archive the copies this node no longer owns; they stay");
            false
        }
    }
}
