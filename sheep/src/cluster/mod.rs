//! Cluster drivers: how sheep find each other and agree on one total order of [`Event`]s.
//!
//! A driver offers four things: join and leave; `broadcast`, which appends an event to the
//! total order; delivery of every event, in that order, to this node's apply loop (including
//! events from before this node started, so a late or restarted node catches up); and a
//! cluster-wide lock that serialises VDI operations, whose preparation reads shared state.

pub mod local;
pub mod zookeeper;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use protocol::node::Node;
use tokio::sync::mpsc::UnboundedSender;

use crate::group::{ClusterState, Event};

/// What is delivered at one position of the total order. Positions only grow.
#[derive(Debug)]
pub struct Delivery {
    pub pos: u64,
    pub what: Delivered,
}

#[derive(Debug)]
pub enum Delivered {
    Event(Event),
    /// A position that carries nothing to apply (a duplicate of an event already delivered,
    /// left by an append retried after its reply was lost): it is delivered all the same, so
    /// a writer waiting for that position to be applied is not left waiting.
    Nothing,
    /// The state after every event up to `pos`, from a checkpoint: the events before it may
    /// be gone from the driver's log, so a node that has not applied them starts here.
    Checkpoint(Box<ClusterState>),
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("unknown cluster driver {0:?} (supported: local, local:PATH, zookeeper:HOST:PORT[,HOST:PORT...][,timeout=SECONDS])")]
    Unknown(String),
    #[error("cluster driver i/o on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cluster driver task failed: {0}")]
    Task(String),
}

/// Which driver to use, parsed from `-c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverSpec {
    Local(PathBuf),
    Zookeeper(zookeeper::ZkSpec),
}

/// Rendezvous directory of the `local` driver when none is given.
pub const DEFAULT_LOCAL_PATH: &str = "/tmp/sheepdog-local";

impl DriverSpec {
    pub fn parse(s: &str) -> Result<DriverSpec, DriverError> {
        match s.split_once(':') {
            None if s == "local" => Ok(DriverSpec::Local(PathBuf::from(DEFAULT_LOCAL_PATH))),
            Some(("local", path)) if !path.is_empty() => Ok(DriverSpec::Local(PathBuf::from(path))),
            Some(("zookeeper", rest)) => zookeeper::ZkSpec::parse(rest)
                .map(DriverSpec::Zookeeper)
                .ok_or_else(|| DriverError::Unknown(s.to_string())),
            _ => Err(DriverError::Unknown(s.to_string())),
        }
    }
}

pub enum Driver {
    Local(local::LocalDriver),
    Zookeeper(zookeeper::ZkDriver),
}

/// Held while a node prepares and commits a VDI operation; dropping it releases the lock.
pub enum OpsLock {
    Local(std::fs::File),
    Zookeeper(zookeeper::ZkLock),
}

impl Driver {
    /// Starts the driver; every event (past and future) is sent to `tx` in order.
    pub async fn start(
        spec: &DriverSpec,
        me: SocketAddr,
        tx: UnboundedSender<Delivery>,
    ) -> Result<Driver, DriverError> {
        match spec {
            DriverSpec::Local(path) => Ok(Driver::Local(local::LocalDriver::start(path, me, tx)?)),
            DriverSpec::Zookeeper(z) => Ok(Driver::Zookeeper(zookeeper::ZkDriver::start(z, me, tx).await?)),
        }
    }

    /// Which life of this node in the cluster (the ZooKeeper session); 0 for the local driver.
    pub fn incarnation(&self) -> u64 {
        match self {
            Driver::Local(_) => 0,
            Driver::Zookeeper(d) => d.incarnation(),
        }
    }

    /// False while this node must not accept writes (its ZooKeeper session expired and it has
    /// not joined again yet).
    pub fn healthy(&self) -> bool {
        match self {
            Driver::Local(_) => true,
            Driver::Zookeeper(d) => d.healthy(),
        }
    }

    /// The members the driver knows of before this node joins (some may be gone).
    pub async fn listed_members(&self) -> Vec<SocketAddr> {
        match self {
            Driver::Local(d) => d.listed_members(),
            Driver::Zookeeper(d) => d.listed_members().await,
        }
    }

    /// Announces this node (`fixed_vnodes`: its vnode count was set by hand, so capacity
    /// weighting leaves it alone). Returns the position of its join event.
    pub async fn join(&self, node: Node, fixed_vnodes: bool) -> Result<u64, DriverError> {
        match self {
            Driver::Local(d) => d.join(node, fixed_vnodes).await,
            Driver::Zookeeper(d) => d.join(node, fixed_vnodes).await,
        }
    }

    pub async fn leave(&self) -> Result<(), DriverError> {
        match self {
            Driver::Local(d) => d.leave().await,
            Driver::Zookeeper(d) => d.leave().await,
        }
    }

    /// Appends `ev` to the total order and returns its position.
    pub async fn broadcast(&self, ev: Event) -> Result<u64, DriverError> {
        match self {
            Driver::Local(d) => d.broadcast(ev).await,
            Driver::Zookeeper(d) => d.broadcast(ev).await,
        }
    }

    /// Takes the cluster-wide VDI-operation lock. Returns the position of the last event
    /// ordered before it, which the caller must have applied before it reads shared state.
    pub async fn lock_ops(&self) -> Result<(OpsLock, u64), DriverError> {
        match self {
            Driver::Local(d) => d.lock_ops().await,
            Driver::Zookeeper(d) => d.lock_ops().await.map(|(l, end)| (OpsLock::Zookeeper(l), end)),
        }
    }
}

impl Driver {
    /// Tells the others that this node has applied every event up to `pos`.
    pub async fn report_applied(&self, pos: u64) -> Result<(), DriverError> {
        match self {
            Driver::Local(d) => d.report_applied(pos).await,
            Driver::Zookeeper(d) => d.report_applied(pos).await,
        }
    }

    /// Waits until each of `nodes` has applied the event at `pos`, or `limit` passes (a node
    /// that died meanwhile is about to be removed by a new epoch). Returns the laggards.
    pub async fn wait_applied_by(&self, nodes: &[SocketAddr], pos: u64, limit: Duration) -> Vec<SocketAddr> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut waiting: Vec<SocketAddr> = nodes.to_vec();
        loop {
            let mut still = Vec::new();
            for addr in waiting {
                let done = match self {
                    Driver::Local(d) => d.applied_by(addr).await,
                    Driver::Zookeeper(d) => d.applied_by(addr).await,
                };
                if !matches!(done, Ok(p) if p >= pos) {
                    still.push(addr);
                }
            }
            if still.is_empty() || tokio::time::Instant::now() >= deadline {
                return still;
            }
            waiting = still;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Driver {
    /// True when this node should hand the driver a checkpoint of its state now: it is the
    /// member that writes them, enough events passed since the last one, none is in flight.
    pub fn checkpoint_due(&self) -> bool {
        match self {
            Driver::Local(d) => d.cadence().due(),
            Driver::Zookeeper(d) => d.cadence().due(),
        }
    }

    /// Stores `image` (the state after the event at `pos`) as the cluster's checkpoint and
    /// then drops the events that every member has applied and the checkpoint covers. Runs
    /// in the background; a failure is logged and the next checkpoint tries again.
    pub fn checkpoint(&self, pos: u64, image: Vec<u8>) {
        match self {
            Driver::Local(d) => d.checkpoint(pos, image),
            Driver::Zookeeper(d) => d.checkpoint(pos, image),
        }
    }
}

/// Events between two checkpoints.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// When to write the next checkpoint. One member writes them (the driver picks it: the live
/// member with the lowest address), every [`CHECKPOINT_EVERY`] events, one at a time.
#[derive(Default)]
pub struct Cadence {
    events: AtomicU64,
    busy: AtomicBool,
    writer: AtomicBool,
}

impl Cadence {
    /// One more event was delivered.
    pub fn delivered(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// The node starts over from a checkpoint: no events since.
    pub fn restart(&self) {
        self.events.store(0, Ordering::Relaxed);
    }

    pub fn set_writer(&self, writer: bool) {
        self.writer.store(writer, Ordering::Relaxed);
    }

    pub fn due(&self) -> bool {
        self.writer.load(Ordering::Relaxed)
            && !self.busy.load(Ordering::Acquire)
            && self.events.load(Ordering::Relaxed) >= CHECKPOINT_EVERY
    }

    /// Claims the next checkpoint; false if one is being written.
    pub fn begin(&self) -> bool {
        let claimed = self
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if claimed {
            self.events.store(0, Ordering::Relaxed);
        }
        claimed
    }

    pub fn end(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// Seconds since the epoch, for event times.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(
            DriverSpec::parse("local").ok(),
            Some(DriverSpec::Local(DEFAULT_LOCAL_PATH.into()))
        );
        assert_eq!(
            DriverSpec::parse("local:/x/y").ok(),
            Some(DriverSpec::Local("/x/y".into()))
        );
        assert!(DriverSpec::parse("local:").is_err());
        assert!(DriverSpec::parse("corosync").is_err());
    }
}
