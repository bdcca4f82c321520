//! Recovery: after every membership change, each storage node makes sure it holds a current
//! copy of every object it owns in the new epoch, and drops copies it no longer owns once
//! every member has recovered.
//!
//! Freshness is tracked per object as the epoch at which this node's copy was last known to
//! be current (`good`). A copy good at epoch `g` is still current at epoch `e` if this node
//! owned the object in every epoch after `g`: every write in those epochs reached it. A node
//! that was away (not a member) owned nothing meanwhile, so its old copies are never served;
//! it fetches them again from the holder whose copy is freshest. Client I/O to an object not
//! recovered yet recovers that object first (it jumps the queue).
//!
//! `DIR/recovered` holds the last epoch whose recovery finished here; after a restart, local
//! copies owned at that epoch count as good at it, and everything else as untrusted.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::node::Node;
use protocol::placement::Ring;
use protocol::{flags, op, ObjArgs, Oid, RequestHeader, ResultCode};
use tokio::sync::watch;

use crate::node::Sheep;
use crate::store::Durability;

const STRIPES: usize = 256;
const RECOVERED_FILE: &str = "recovered";

/// Progress of the running (or last) recovery, for STAT_RECOVERY and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub epoch: u32,
    pub running: bool,
    pub done: u64,
    pub total: u64,
}

pub struct Recovery {
    good: Mutex<HashMap<Oid, u32>>,
    /// Per object (striped): "check, fetch, mark" and creates hold it exclusively, writes
    /// into an existing object shared, so no write lands in a file that is being replaced.
    stripes: Vec<tokio::sync::RwLock<()>>,
    recovered: AtomicU32,
    rings: Mutex<HashMap<u32, Arc<Ring>>>,
    progress: Mutex<Progress>,
    /// The newest epoch to recover; the worker follows it.
    target: watch::Sender<u32>,
    /// Set once the freshness of local copies is known (after start-up replay).
    ready: std::sync::atomic::AtomicBool,
    /// Objects per second; 0 = as fast as the disks go.
    rate: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recovery {
    pub fn new(rate: u32) -> Recovery {
        Recovery {
            good: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::RwLock::new(())).collect(),
            recovered: AtomicU32::new(0),
            rings: Mutex::new(HashMap::new()),
            progress: Mutex::new(Progress::default()),
            target: watch::channel(0).0,
            ready: std::sync::atomic::AtomicBool::new(false),
            rate,
        }
    }

    pub fn progress(&self) -> Progress {
        *lock(&self.progress)
    }

    pub fn recovered_epoch(&self) -> u32 {
        self.recovered.load(Ordering::Acquire)
    }

    /// The cluster was formatted: epochs start again. When the format is new to this node
    /// (`fresh`), its store was just wiped and epoch 1 needs no recovery.
    pub fn reset(&self, sheep: &Sheep, fresh: bool) {
        lock(&self.rings).clear();
        if fresh {
            lock(&self.good).clear();
            self.set_recovered(sheep, 1);
            self.target.send_replace(1);
        }
    }

    fn set_recovered(&self, sheep: &Sheep, epoch: u32) {
        self.recovered.store(epoch, Ordering::Release);
        if let Err(e) = crate::store::write_durably(&sheep.dir.join(RECOVERED_FILE), epoch.to_string().as_bytes()) {
            tracing::error!(error = %e, "cannot record the recovered epoch");
        }
    }

    /// Loads freshness after a restart, once the cluster state has been replayed.
    pub fn init(&self, sheep: &Sheep) {
        let r: u32 = std::fs::read_to_string(sheep.dir.join(RECOVERED_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        self.recovered.store(r, Ordering::Release);
        let mut good = lock(&self.good);
        for oid in sheep.store.list() {
            let owned = r > 0 && self.owns_at(sheep, oid, r);
            good.insert(oid, if owned { r } else { 0 });
        }
        tracing::info!(recovered_epoch = r, objects = good.len(), "recovery state loaded");
        drop(good);
        self.ready.store(true, Ordering::Release);
        self.kick(sheep.state().epoch());
    }

    fn ring_at(&self, sheep: &Sheep, epoch: u32) -> Option<Arc<Ring>> {
        if let Some(r) = lock(&self.rings).get(&epoch) {
            return Some(r.clone());
        }
        let nodes: Vec<Node> = sheep.state().epochs.iter().find(|e| e.epoch == epoch)?.nodes.clone();
        let ring = Arc::new(Ring::new(nodes));
        lock(&self.rings).insert(epoch, ring.clone());
        Some(ring)
    }

    pub fn owns_at(&self, sheep: &Sheep, oid: Oid, epoch: u32) -> bool {
        let copies = usize::from(sheep.state().copies_for(oid.vid().get()));
        self.ring_at(sheep, epoch)
            .is_some_and(|r| r.replicas(oid.0, copies).iter().any(|n| n.addr == sheep.me.addr))
    }

    /// The epoch up to which this node's copy of `oid` is known current, or `None` if it
    /// holds no copy.
    pub fn effective_good(&self, sheep: &Sheep, oid: Oid) -> Option<u32> {
        if !sheep.store.exists(oid) {
            return None;
        }
        let g = lock(&self.good).get(&oid).copied().unwrap_or(0);
        let now = sheep.state().epoch();
        if g == 0 || g >= now {
            return Some(g);
        }
        if (g + 1..=now).all(|e| self.owns_at(sheep, oid, e)) {
            lock(&self.good).insert(oid, now);
            return Some(now);
        }
        Some(g)
    }

    /// Marks this node's copy current at `epoch` (after a write or create by a gateway).
    pub fn mark(&self, oid: Oid, epoch: u32) {
        lock(&self.good).insert(oid, epoch);
    }

    pub fn forget(&self, oid: Oid) {
        lock(&self.good).remove(&oid);
    }

    pub fn stripe(&self, oid: Oid) -> &tokio::sync::RwLock<()> {
        &self.stripes[(protocol::hash::sd_hash_oid(oid.0) as usize) % STRIPES]
    }

    /// Asks for recovery of `epoch` (the worker picks up the newest request).
    pub fn kick(&self, epoch: u32) {
        if !self.ready.load(Ordering::Acquire) {
            return;
        }
        self.target.send_if_modified(|t| {
            let newer = epoch > *t;
            if newer {
                *t = epoch;
            }
            newer
        });
    }
}

/// Makes this node's copy of `oid` current, fetching it from the freshest holder if needed.
/// `Err(NO_OBJ)` when no node holds the object at all. Callers hold the object's stripe.
pub async fn ensure_current(sheep: &Arc<Sheep>, oid: Oid) -> Result<(), ResultCode> {
    let rec = &sheep.recovery;
    let epoch = sheep.state().epoch();
    let mine = rec.effective_good(sheep, oid);
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
        let mut req = RequestHeader::new(op::GET_OBJ_EPOCH);
        req.data_length = 4;
        req.set_obj(&ObjArgs {
            oid: oid.0,
            ..ObjArgs::default()
        });
        // Ok(None): the node holds no copy. Err: it did not answer.
        match sheep.peer(n.addr).call(req, &[]).await {
            Ok(r) if r.data.len() == 4 => Ok(Some((
                n,
                u32::from_le_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]),
            ))),
            Err(e) if e.result() == Some(ResultCode::NO_OBJ) => Ok(None),
            _ => Err(n.addr),
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
            let size = sheep.state().object_size(oid).ok_or(ResultCode::NO_VDI)?;
            let mut req = RequestHeader::new(op::READ_PEER);
            req.flags |= flags::RECOVERY;
            req.data_length = size as u32;
            req.set_obj(&ObjArgs {
                oid: oid.0,
                ..ObjArgs::default()
            });
            let data = sheep.peer(node.addr).call(req, &[]).await.map_err(|e| {
                tracing::error!(%oid, from = %node.addr, epoch, error = %e, "recovery read failed");
                ResultCode::EIO
            })?;
            let s = sheep.clone();
            tokio::task::spawn_blocking(move || s.store.create(oid, size, 0, &data.data, Durability::Now))
                .await
                .map_err(|_| ResultCode::SYSTEM_ERROR)?
                .map_err(|e| {
                    tracing::error!(%oid, epoch, error = %e, "cannot store a recovered object");
                    e.code()
                })?;
            rec.mark(oid, epoch);
            tracing::debug!(%oid, from = %node.addr, good = g, epoch, "object recovered");
            Ok(())
        }
    }
}

/// The recovery worker: recovers the newest requested epoch, abandoning an older one as soon
/// as a newer epoch begins (objects already recovered stay recovered).
pub async fn worker(sheep: Arc<Sheep>) {
    let mut rx = sheep.recovery.target.subscribe();
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
        rec.set_recovered(sheep, epoch);
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
    let mine: Vec<Oid> = all.iter().copied().filter(|&o| rec.owns_at(sheep, o, epoch)).collect();
    *lock(&rec.progress) = Progress {
        epoch,
        running: true,
        done: 0,
        total: mine.len() as u64,
    };
    tracing::info!(epoch, objects = mine.len(), "recovery started");
    let pause = (rec.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rec.rate)));
    for oid in mine {
        if superseded() {
            tracing::info!(epoch, "recovery superseded by a newer epoch");
            lock(&rec.progress).running = false;
            return;
        }
        let _g = rec.stripe(oid).write().await;
        if let Err(code) = ensure_current(sheep, oid).await {
            if code != ResultCode::NO_OBJ {
                // Retried by the next epoch's recovery or on first access.
                tracing::error!(%oid, epoch, result = %code, "cannot recover object");
            }
        }
        drop(_g);
        lock(&rec.progress).done += 1;
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
    rec.set_recovered(sheep, epoch);
    lock(&rec.progress).running = false;
    tracing::info!(epoch, "recovery finished");
    remove_orphans(sheep, epoch, &nodes).await;
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
    let mut removed = 0;
    for oid in sheep.store.list() {
        if sheep.state().epoch() != epoch {
            return;
        }
        if !sheep.recovery.owns_at(sheep, oid, epoch) {
            let _g = sheep.recovery.stripe(oid).write().await;
            if sheep.store.remove(oid).is_ok() {
                sheep.recovery.forget(oid);
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(epoch, removed, "removed copies this node no longer owns");
    }
}
