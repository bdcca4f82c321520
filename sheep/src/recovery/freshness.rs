//! What a node knows of its own copies' freshness, and the recovery worker's bookkeeping:
//! per object, the epoch at which this node's copy was last known current; the rings of past
//! epochs; the recovered epoch (persisted in `DIR/recovered`); progress; the stripes that
//! order recovery against I/O. It holds no reference to the node: the functions in
//! [`super`] combine it with the store and the cluster state.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::node::Node;
use protocol::placement::Ring;
use protocol::stats::ScrubStats;
use protocol::Oid;
use tokio::sync::watch;

use crate::group::ClusterState;
use crate::store::write_durably;

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
    ready: AtomicBool,
    /// Objects per second; 0 = as fast as the disks go.
    rate: u32,
    /// The background scrub's objects per second (0: off) and what it found.
    scrub_rate: u32,
    scrub: Mutex<ScrubStats>,
    /// System snapshots a farm store keeps (`sheep --farm-keep`).
    pub farm_keep: usize,
    /// Objects whose damaged copy is being replaced (one heal at a time per object).
    healing: Mutex<std::collections::HashSet<Oid>>,
    /// Objects a read found behind, for the worker to recover next (at most [`WANTED_MAX`]).
    wanted: Mutex<std::collections::VecDeque<Oid>>,
    /// Peer writes still landing, which recovery reads of newer epochs wait for.
    pub landing: super::landing::Landing,
}

/// Most objects waiting to jump the recovery queue; past it, they wait their turn.
const WANTED_MAX: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The epoch whose recovery last finished in `dir` (0: none).
pub fn read_recovered(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join(RECOVERED_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Recovery {
    pub fn new(rate: u32, scrub_rate: u32, farm_keep: usize) -> Recovery {
        Recovery {
            good: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::RwLock::new(())).collect(),
            recovered: AtomicU32::new(0),
            rings: Mutex::new(HashMap::new()),
            progress: Mutex::new(Progress::default()),
            target: watch::channel(0).0,
            ready: AtomicBool::new(false),
            rate,
            scrub_rate,
            farm_keep,
            scrub: Mutex::new(ScrubStats {
                enabled: scrub_rate > 0,
                ..ScrubStats::default()
            }),
            healing: Mutex::new(std::collections::HashSet::new()),
            wanted: Mutex::new(std::collections::VecDeque::new()),
            landing: super::landing::Landing::default(),
        }
    }

    /// Asks the worker to recover `oid` before the rest of its queue.
    pub fn want(&self, oid: Oid) {
        let mut w = lock(&self.wanted);
        if w.len() < WANTED_MAX && !w.contains(&oid) {
            w.push_back(oid);
        }
    }

    /// The next object a read asked for, if any.
    pub fn next_wanted(&self) -> Option<Oid> {
        lock(&self.wanted).pop_front()
    }

    /// The pause between two objects of the scrub; `None` when it is off.
    pub fn scrub_pause(&self) -> Option<Duration> {
        (self.scrub_rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(self.scrub_rate)))
    }

    /// Claims the heal of `oid`; `false` while another heal of it runs.
    pub fn start_heal(&self, oid: Oid) -> bool {
        lock(&self.healing).insert(oid)
    }

    pub fn end_heal(&self, oid: Oid) {
        lock(&self.healing).remove(&oid);
    }

    pub fn scrub_stats(&self) -> ScrubStats {
        lock(&self.scrub).clone()
    }

    pub fn update_scrub(&self, f: impl FnOnce(&mut ScrubStats)) {
        let mut s = lock(&self.scrub);
        f(&mut s);
        let over = s.findings.len().saturating_sub(ScrubStats::FINDINGS);
        s.findings.drain(..over);
    }

    pub fn progress(&self) -> Progress {
        *lock(&self.progress)
    }

    pub fn set_progress(&self, p: Progress) {
        *lock(&self.progress) = p;
    }

    pub fn update_progress(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut lock(&self.progress));
    }

    /// The pause between two recovered objects under a rate limit.
    pub fn pause(&self) -> Option<Duration> {
        (self.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(self.rate)))
    }

    pub fn recovered_epoch(&self) -> u32 {
        self.recovered.load(Ordering::Acquire)
    }

    /// The cluster was formatted: epochs start again. When the format is new to this node
    /// (`fresh`), its store in `dir` was just wiped and epoch 1 needs no recovery.
    pub fn reset(&self, dir: &Path, fresh: bool) {
        lock(&self.rings).clear();
        if fresh {
            lock(&self.good).clear();
            self.set_recovered(dir, 1);
            self.target.send_replace(1);
        }
    }

    /// Records that recovery of `epoch` finished (durably, in `dir`).
    pub fn set_recovered(&self, dir: &Path, epoch: u32) {
        self.recovered.store(epoch, Ordering::Release);
        if let Err(e) = write_durably(&dir.join(RECOVERED_FILE), epoch.to_string().as_bytes()) {
            tracing::error!(error = %e, "cannot record the recovered epoch");
        }
    }

    /// Takes the freshness of local copies found at start-up, and starts following epochs.
    pub fn load(&self, recovered: u32, good: HashMap<Oid, u32>) {
        self.recovered.store(recovered, Ordering::Release);
        tracing::info!(
            recovered_epoch = recovered,
            objects = good.len(),
            "recovery state loaded"
        );
        *lock(&self.good) = good;
        self.ready.store(true, Ordering::Release);
    }

    /// The ring of `epoch`, from the epoch log in `st`.
    pub fn ring_at(&self, st: &ClusterState, epoch: u32) -> Option<Arc<Ring>> {
        if let Some(r) = lock(&self.rings).get(&epoch) {
            return Some(r.clone());
        }
        let nodes: Vec<Node> = st.epochs.iter().find(|e| e.epoch == epoch)?.nodes.clone();
        let ring = Arc::new(Ring::new(nodes));
        lock(&self.rings).insert(epoch, ring.clone());
        Some(ring)
    }

    /// The epoch at which this node's copy of `oid` was last marked current (0: never).
    pub fn good(&self, oid: Oid) -> u32 {
        lock(&self.good).get(&oid).copied().unwrap_or(0)
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

    /// The epochs to recover, newest last: the worker waits on it.
    pub fn targets(&self) -> watch::Receiver<u32> {
        self.target.subscribe()
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
