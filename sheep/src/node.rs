//! One running sheep: its identity, store, view of the cluster, and the loop that applies
//! cluster events in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;

use protocol::mux::Mux;
use protocol::node::Node;
use protocol::{Client, ResultCode};
use tokio::sync::{mpsc, watch, Notify};

use crate::cache::index::Index;
use crate::cluster::{Delivered, Delivery, Driver, DriverError};
use crate::group::{ClusterState, Effect, Event};
use crate::recovery::freshness::Recovery;
use crate::store::{write_durably, Store, StoreError};
use crate::uring::Ring;

/// How long a VDI operation waits for every member to apply its event.
const APPLY_BARRIER: Duration = Duration::from_secs(10);

pub struct Sheep {
    pub me: Node,
    pub dir: PathBuf,
    pub store: Store,
    pub driver: Driver,
    pub recovery: Recovery,
    /// The object cache (`-w`), if on.
    pub cache: Option<Arc<Index>>,
    /// Who may connect, and the cluster secret they must prove.
    pub access: crate::access::Access,
    /// Request counters for `--metrics`, STAT and STAT_METRICS.
    pub metrics: crate::metrics::Metrics,
    state: RwLock<ClusterState>,
    applied: watch::Sender<u64>,
    peers: Mutex<HashMap<SocketAddr, Arc<Client>>>,
    replicas: Mutex<HashMap<SocketAddr, Arc<Mux>>>,
    /// Woken when this node must stop (cluster shutdown).
    pub stop: Notify,
    /// Woken by each VDI delete this node serves, for [`crate::vdi::collector`].
    pub collect: Notify,
    /// The io_uring for disk I/O, started at first use (see [`Sheep::disk`]).
    disk: OnceLock<Option<Arc<Ring>>>,
}

/// File under DIR holding the log position whose local effects (store wipes) are done.
const APPLIED_FILE: &str = "applied";

fn read_applied(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(APPLIED_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Sheep {
    /// Logs a failed store call (a missing object is not worth a line) and gives its code.
    pub fn store_failed(&self, e: &StoreError) -> ResultCode {
        if !matches!(e, StoreError::NotFound(_)) {
            tracing::error!(error = %e, epoch = self.state().epoch(), "store operation failed");
        }
        e.code()
    }

    /// Runs a blocking store call on the blocking pool.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Sheep) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ResultCode> {
        let s = self.clone();
        match tokio::task::spawn_blocking(move || f(&s)).await {
            Ok(r) => r.map_err(|e| self.store_failed(&e)),
            Err(e) => {
                tracing::error!(error = %e, "store task panicked");
                Err(ResultCode::SYSTEM_ERROR)
            }
        }
    }

    pub fn new(
        me: Node,
        dir: PathBuf,
        store: Store,
        driver: Driver,
        recovery: Recovery,
        cache: Option<Arc<Index>>,
        access: crate::access::Access,
    ) -> Sheep {
        Sheep {
            me,
            dir,
            store,
            driver,
            recovery,
            cache,
            access,
            metrics: crate::metrics::Metrics::new(),
            state: RwLock::new(ClusterState::default()),
            applied: watch::channel(0).0,
            peers: Mutex::new(HashMap::new()),
            replicas: Mutex::new(HashMap::new()),
            stop: Notify::new(),
            collect: Notify::new(),
            disk: OnceLock::new(),
        }
    }

    /// The io_uring for object writes, syncs and reads that must wait for the disk; `None`
    /// where io_uring cannot be used, and that I/O runs on the blocking pool. Call from
    /// within the runtime.
    pub fn disk(&self) -> Option<&Ring> {
        self.disk
            .get_or_init(|| {
                Ring::start()
                    .inspect_err(|e| tracing::warn!(error = %e, "io_uring unavailable; disk I/O uses threads"))
                    .ok()
            })
            .as_deref()
    }

    /// A consistent view of the cluster state. Hold it briefly: never across an await.
    pub fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The pooled client for another sheep.
    pub fn peer(&self, addr: SocketAddr) -> Arc<Client> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.entry(addr).or_insert_with(|| Arc::new(Client::new(addr))).clone()
    }

    /// The multiplexed connection for the gateway's replica I/O to another sheep: small
    /// requests pipelined on one connection (`protocol::mux`), apart from the pooled
    /// connections that carry recovery's bulk transfers.
    pub fn replica(&self, addr: SocketAddr) -> Arc<Mux> {
        let mut replicas = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        replicas.entry(addr).or_insert_with(|| Arc::new(Mux::new(addr))).clone()
    }

    /// Position of the last cluster event this node applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until this node has applied every event up to `pos`.
    pub async fn wait_applied(&self, pos: u64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|&p| p >= pos).await;
    }

    /// Broadcasts `ev` and returns once this node and every member applied it.
    pub async fn commit(&self, ev: Event) -> Result<(), DriverError> {
        let pos = self.driver.broadcast(ev).await?;
        self.wait_applied(pos).await;
        let members: Vec<SocketAddr> = self.state().nodes().iter().map(|n| n.addr).collect();
        let late = self.driver.wait_applied_by(&members, pos, APPLY_BARRIER).await;
        if !late.is_empty() {
            tracing::warn!(?late, pos, "members did not confirm a cluster event in time");
        }
        Ok(())
    }

    /// Applies delivered events in order, forever, and hands the driver a checkpoint of
    /// the state when it asks for one.
    pub async fn apply_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Delivery>) {
        let done_before = read_applied(&self.dir);
        while let Some(Delivery { pos, what }) = rx.recv().await {
            let (effects, was_member, epoch, formatted_at) = {
                let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
                let was_member = st.is_member(self.me.addr);
                let fx = match what {
                    Delivered::Event(event) => st.apply_at(pos, &event),
                    Delivered::Checkpoint(image) => {
                        tracing::info!(pos, epoch = image.epoch(), "starting from the cluster's checkpoint");
                        st.jump_to(*image)
                    }
                    Delivered::Nothing => Vec::new(),
                };
                (fx, was_member, st.epoch(), st.formatted_at)
            };
            for fx in effects {
                // A wipe belongs to the format's position, which a checkpoint may have skipped.
                let at = if fx == Effect::WipeStore { formatted_at } else { pos };
                self.effect(fx, at > done_before, was_member, at, epoch).await;
            }
            self.applied.send_replace(pos);
            if self.driver.checkpoint_due() {
                let image = {
                    let st = self.state();
                    serde_json::to_vec(&*st).map(|b| (st.pos, b))
                };
                match image {
                    Ok((at, bytes)) => self.driver.checkpoint(at, bytes),
                    Err(e) => tracing::error!(error = %e, "cannot encode a checkpoint"),
                }
            }
        }
    }

    /// Tells the other members how far this node has applied, for their barriers. Reports
    /// coalesce (a burst of events costs one) and a failed report is retried, so a commit
    /// elsewhere never waits out its barrier because of a lost message.
    pub async fn report_loop(self: Arc<Self>) {
        let mut rx = self.applied.subscribe();
        while rx.changed().await.is_ok() {
            let mut failing = false;
            loop {
                let pos = *rx.borrow_and_update();
                match self.driver.report_applied(pos).await {
                    Ok(()) if !rx.has_changed().unwrap_or(false) => break,
                    Ok(()) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, pos, "cannot report the applied position; retrying");
                        }
                        failing = true;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    /// One line per membership change: who joined and left, and how many are members now.
    fn log_membership(&self, e: u32) {
        let st = self.state();
        let members = |n: u32| {
            st.epochs
                .iter()
                .find(|r| r.epoch == n)
                .map(|r| r.nodes.iter().map(|n| n.addr).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let (now, before) = (members(e), members(e.saturating_sub(1)));
        let joined: Vec<String> = now
            .iter()
            .filter(|a| !before.contains(a))
            .map(|a| a.to_string())
            .collect();
        let left: Vec<String> = before
            .iter()
            .filter(|a| !now.contains(a))
            .map(|a| a.to_string())
            .collect();
        tracing::info!(
            epoch = e,
            members = now.len(),
            joined = joined.join(","),
            left = left.join(","),
            "new epoch"
        );
    }

    async fn effect(&self, fx: Effect, fresh: bool, was_member: bool, pos: u64, epoch: u32) {
        match fx {
            Effect::WipeStore => {
                let _ = std::fs::remove_dir_all(self.dir.join("epoch"));
                self.recovery.reset(&self.dir, fresh);
                if fresh {
                    // The farm's copies belong to the cluster that was.
                    let farm = crate::store::farm::node::dir(&self.dir);
                    match std::fs::remove_dir_all(&farm) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            tracing::warn!(dir = %farm.display(), error = %e, "cannot remove the old cluster's farm")
                        }
                        _ => {}
                    }
                    match self.store.wipe() {
                        Ok(n) => tracing::info!(objects = n, "cluster formatted: removed every stored object"),
                        Err(e) => {
                            tracing::error!(error = %e, "cluster formatted but wiping the store failed")
                        }
                    }
                    if let Err(e) = write_durably(&self.dir.join(APPLIED_FILE), pos.to_string().as_bytes()) {
                        tracing::error!(error = %e, "cannot record the applied position");
                    }
                }
            }
            Effect::NewEpoch(e) => {
                self.log_membership(e);
                if let Err(err) = self.persist_epoch(e) {
                    tracing::error!(epoch = e, error = %err, "cannot persist the epoch log");
                }
                self.recovery.kick(e);
            }
            Effect::Shutdown => {
                if fresh && was_member {
                    tracing::info!(epoch, "cluster shutdown");
                    if let Err(e) = write_durably(&self.dir.join(APPLIED_FILE), pos.to_string().as_bytes()) {
                        tracing::error!(error = %e, "cannot record the applied position");
                    }
                    self.stop.notify_one();
                }
            }
        }
    }

    /// Writes `DIR/epoch/NNNNNNNN`: the epoch's time and members, one JSON document.
    fn persist_epoch(&self, epoch: u32) -> std::io::Result<()> {
        let st = self.state();
        let Some(e) = st.epochs.iter().find(|e| e.epoch == epoch) else {
            return Ok(());
        };
        let dir = self.dir.join("epoch");
        std::fs::create_dir_all(&dir)?;
        let body = serde_json::to_vec_pretty(e).map_err(std::io::Error::other)?;
        write_durably(&dir.join(format!("{epoch:08}")), &body)
    }
}
