//! The `zookeeper` driver: sheep on many hosts agree through a ZooKeeper ensemble.
//!
//! Znodes (all under `/sheepdog`):
//! - `queue/ev-NNNNNNNNNN`: the total order. Persistent sequential znodes, one event each,
//!   as JSON `{"id": <random u64>, "event": {...}}`. A position is the sequence number + 1.
//!   The id makes a retried append (after a connection loss) harmless: readers skip an id
//!   they have already delivered.
//! - `members/<addr:port>`: one ephemeral znode per live sheep, holding its node record and
//!   incarnation (its session id). When a session ends, the znode goes; the live member with
//!   the lowest address then appends that member's `Leave` (with its incarnation, so a late
//!   notice never removes the member's next life).
//! - `lock/l-NNNNNNNNNN`: the cluster-wide VDI operation lock (ephemeral sequential; the
//!   lowest holds it).
//! - `applied/<addr:port>`: how far each sheep has applied the queue.
//! - `checkpoint` and `checkpoints/`: the cluster state at a position every member has
//!   applied; the queue before it is deleted ([`checkpoint`]). A node that starts later
//!   begins at the checkpoint and reads only the events after it ([`queue`]).
//!
//! Members read new events in batches (one listing, then one multi-read per 256 events),
//! woken by a watch on the queue; the live member with the lowest address writes the
//! checkpoints and announces the leaves of members whose sessions ended.
//!
//! When this sheep's session expires, it stops accepting writes at once, connects anew and
//! joins again as a new incarnation; the others have seen it leave meanwhile.

mod checkpoint;
mod queue;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use protocol::node::Node;
use tokio::sync::mpsc::UnboundedSender;
use zookeeper_client as zk;

use super::{now_secs, Cadence, Delivery, DriverError};
use crate::group::Event;

const ROOT: &str = "/sheepdog";
const QUEUE: &str = "/sheepdog/queue";
const MEMBERS: &str = "/sheepdog/members";
const LOCK: &str = "/sheepdog/lock";
const APPLIED: &str = "/sheepdog/applied";
/// How often watchers also look without a notification (a cheap safety net).
const TICK: Duration = Duration::from_secs(1);
/// Attempts for an operation that fails with a transient connection error.
const ATTEMPTS: usize = 30;

/// Where the ensemble is, from `-c zookeeper:HOST:PORT[,HOST:PORT...][,timeout=SECONDS]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkSpec {
    pub hosts: String,
    pub session_timeout: Duration,
}

impl ZkSpec {
    pub fn parse(rest: &str) -> Option<ZkSpec> {
        let mut hosts = Vec::new();
        let mut session_timeout = Duration::from_secs(10);
        for item in rest.split(',') {
            if let Some(t) = item.strip_prefix("timeout=") {
                session_timeout = Duration::from_secs(t.parse().ok().filter(|&s: &u64| s > 0)?);
            } else if item
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                hosts.push(item);
            } else {
                return None;
            }
        }
        (!hosts.is_empty()).then(|| ZkSpec {
            hosts: hosts.join(","),
            session_timeout,
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    id: u64,
    event: Event,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MemberRecord {
    node: Node,
    incarnation: u64,
}

struct Shared {
    spec: ZkSpec,
    me: SocketAddr,
    client: RwLock<zk::Client>,
    /// False from a session expiry until this sheep has joined again.
    healthy: AtomicBool,
    /// Our node record, kept to join again after an expiry.
    node: Mutex<Option<(Node, bool)>>,
    /// Members as the delivered events say, with their incarnations.
    members: Mutex<BTreeMap<SocketAddr, u64>>,
    /// Set by [`ZkDriver::close`]: the background tasks end and the session closes.
    stopped: AtomicBool,
    /// Ids of recently delivered events (duplicates are delivered as nothing).
    recent: Mutex<queue::Recent>,
    /// When this node writes the next checkpoint.
    cadence: Cadence,
}

pub struct ZkDriver {
    shared: Arc<Shared>,
}

fn zk_err(what: &str, e: zk::Error) -> DriverError {
    DriverError::Task(format!("ZooKeeper {what}: {e}"))
}

/// An event as queued, with a fresh id.
fn envelope(event: &Event) -> Result<Vec<u8>, DriverError> {
    serde_json::to_vec(&Envelope {
        id: random_id(),
        event: event.clone(),
    })
    .map_err(|e| DriverError::Task(e.to_string()))
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Errors after which the request may or may not have taken effect and the session may
/// live on: worth a retry that first looks for what the request did. The client reports a
/// connection that broke under a request (reset by a dying server, no answer in time) as
/// a custom error carrying the I/O error, not as `ConnectionLoss`.
fn transient(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::ConnectionLoss
            | zk::Error::Timeout
            | zk::Error::SessionMoved
            | zk::Error::Throttled
            | zk::Error::Custom(_)
    )
}

fn sequence(name: &str) -> Option<u64> {
    name.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

async fn connect(spec: &ZkSpec) -> Result<zk::Client, DriverError> {
    zk::Client::connector()
        .with_session_timeout(spec.session_timeout)
        .connect(&spec.hosts)
        .await
        .map_err(|e| zk_err(&format!("connect to {}", spec.hosts), e))
}

impl Shared {
    fn client(&self) -> zk::Client {
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn incarnation(&self) -> u64 {
        self.client().session_id().0 as u64
    }

    /// Runs `f` with the current client, retrying transient failures.
    async fn retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T, DriverError>
    where
        F: Fn(zk::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, zk::Error>>,
    {
        let mut pause = Duration::from_millis(50);
        for _ in 0..ATTEMPTS {
            match f(self.client()).await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) || e == zk::Error::SessionExpired => {
                    tracing::warn!(error = %e, "ZooKeeper {what}: retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(zk_err(what, e)),
            }
        }
        Err(DriverError::Task(format!(
            "ZooKeeper {what}: gave up after {ATTEMPTS} attempts"
        )))
    }

    async fn append(&self, event: &Event) -> Result<u64, DriverError> {
        let body = envelope(event)?;
        let opts = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        let (_, seq) = self
            .retry("append", |c| {
                let body = body.clone();
                let opts = opts.clone();
                async move { c.create(&format!("{QUEUE}/ev-"), &body, &opts).await }
            })
            .await?;
        Ok(seq.into_i64() as u64 + 1)
    }

    /// Appends `events` in one transaction: readers learn of all of them at once.
    async fn append_all(&self, events: &[Event]) -> Result<(), DriverError> {
        let bodies = events.iter().map(envelope).collect::<Result<Vec<_>, _>>()?;
        let path = format!("{QUEUE}/ev-");
        let opts = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        self.retry("append", |c| {
            let (bodies, path, opts) = (&bodies, &path, &opts);
            async move {
                let mut w = c.new_multi_writer();
                for body in bodies {
                    w.add_create(path, body, opts)?;
                }
                w.commit().await.map(|_| ()).map_err(zk::Error::from)
            }
        })
        .await
    }

    /// Creates our member znode (waiting out a previous life's) and announces the join.
    async fn join(&self, node: Node, fixed_vnodes: bool) -> Result<u64, DriverError> {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = Some((node.clone(), fixed_vnodes));
        let incarnation = self.incarnation();
        let record = serde_json::to_vec(&MemberRecord {
            node: node.clone(),
            incarnation,
        })
        .map_err(|e| DriverError::Task(e.to_string()))?;
        let path = format!("{MEMBERS}/{}", self.me);
        let opts = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        let deadline = tokio::time::Instant::now() + self.spec.session_timeout * 3;
        loop {
            match self.client().create(&path, &record, &opts).await {
                Ok(_) => break,
                // Our own create, retried after its reply was lost.
                Err(zk::Error::NodeExists) if self.registered_by_us(&path, incarnation).await => break,
                Err(zk::Error::NodeExists) if tokio::time::Instant::now() < deadline => {
                    tracing::info!("a previous life of this sheep is still registered; waiting for its session to end");
                    if let Ok((Some(_), w)) = self.client().check_and_watch_stat(&path).await {
                        let _ = tokio::time::timeout(TICK, w.changed()).await;
                    }
                }
                Err(e) if transient(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(zk_err("register member", e)),
            }
        }
        let pos = self
            .append(&Event::Join {
                node,
                time: now_secs(),
                incarnation,
                fixed_vnodes,
            })
            .await?;
        self.healthy.store(true, Ordering::Release);
        Ok(pos)
    }
}

impl Shared {
    async fn registered_by_us(&self, path: &str, incarnation: u64) -> bool {
        match self.client().get_data(path).await {
            Ok((d, _)) => serde_json::from_slice::<MemberRecord>(&d).is_ok_and(|r| r.incarnation == incarnation),
            Err(_) => false,
        }
    }
}

impl ZkDriver {
    pub async fn start(spec: &ZkSpec, me: SocketAddr, tx: UnboundedSender<Delivery>) -> Result<ZkDriver, DriverError> {
        let client = connect(spec).await?;
        let dir = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        for p in [ROOT, QUEUE, MEMBERS, LOCK, APPLIED, checkpoint::CHECKPOINTS] {
            client
                .mkdir(p, &dir)
                .await
                .map_err(|e| zk_err(&format!("create {p}"), e))?;
        }
        let shared = Arc::new(Shared {
            spec: spec.clone(),
            me,
            client: RwLock::new(client),
            healthy: AtomicBool::new(false),
            node: Mutex::new(None),
            members: Mutex::new(BTreeMap::new()),
            stopped: AtomicBool::new(false),
            recent: Mutex::new(queue::Recent::default()),
            cadence: Cadence::default(),
        });
        tokio::spawn(queue::read_queue(shared.clone(), tx));
        tokio::spawn(watch_members(shared.clone()));
        tokio::spawn(watch_session(shared.clone()));
        Ok(ZkDriver { shared })
    }

    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation()
    }

    pub fn cadence(&self) -> &Cadence {
        &self.shared.cadence
    }

    /// Writes the checkpoint at `pos` and trims the queue behind it, in the background.
    pub fn checkpoint(&self, pos: u64, image: Vec<u8>) {
        let s = self.shared.clone();
        if !s.cadence.begin() {
            return;
        }
        tokio::spawn(async move {
            let recent = s.recent.lock().unwrap_or_else(|p| p.into_inner()).upto(pos);
            let started = tokio::time::Instant::now();
            let bytes = image.len();
            match checkpoint::write(&s, pos, image, recent).await {
                Ok(trimmed) => tracing::info!(
                    pos,
                    bytes,
                    trimmed,
                    ms = started.elapsed().as_millis() as u64,
                    "cluster checkpoint written"
                ),
                Err(e) => {
                    tracing::warn!(pos, error = %e, "cannot write the cluster checkpoint; the next one tries again")
                }
            }
            s.cadence.end();
        });
    }

    /// Stops the background tasks; the session closes once they are gone (within a tick),
    /// as if the process had ended.
    pub fn close(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.healthy.store(false, Ordering::Release);
    }

    pub async fn join(&self, node: Node, fixed_vnodes: bool) -> Result<u64, DriverError> {
        self.shared.join(node, fixed_vnodes).await
    }

    /// The sheep registered as live members right now.
    pub async fn listed_members(&self) -> Vec<SocketAddr> {
        let names = self.shared.client().list_children(MEMBERS).await.unwrap_or_default();
        names.iter().filter_map(|n| n.parse().ok()).collect()
    }

    pub async fn leave(&self) -> Result<(), DriverError> {
        let s = &self.shared;
        s.healthy.store(false, Ordering::Release);
        s.append(&Event::Leave {
            addr: s.me,
            time: now_secs(),
            incarnation: Some(s.incarnation()),
        })
        .await?;
        let _ = s.client().delete(&format!("{MEMBERS}/{}", s.me), None).await;
        Ok(())
    }

    pub async fn broadcast(&self, ev: Event) -> Result<u64, DriverError> {
        self.shared.append(&ev).await
    }

    /// The lock recipe: an ephemeral sequential znode; the lowest holds the lock, the others
    /// watch their predecessor. A failure leaves no znode behind: one would outlive the
    /// request in this live session and every later VDI operation would queue behind it.
    pub async fn lock_ops(&self) -> Result<(ZkLock, u64), DriverError> {
        let s = &self.shared;
        let opts = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        // The name carries a token, so a create retried after a lost reply finds the znode
        // it already made instead of queueing behind itself.
        let token = format!("{:016x}", random_id());
        let prefix = format!("{LOCK}/l-{token}-");
        let mut attempts = 0;
        let name = loop {
            attempts += 1;
            let failed = match s.client().create(&prefix, &[], &opts).await {
                Ok((_, seq)) => break format!("l-{token}-{seq}"),
                Err(e) if transient(&e) && attempts < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    // Create again only once ZooKeeper says the last create did not land: a
                    // second znode of ours would be a predecessor that never goes away.
                    match s.retry("lock", |c| async move { c.list_children(LOCK).await }).await {
                        Ok(children) => match children.into_iter().find(|n| n.contains(&token)) {
                            Some(n) => break n,
                            None => continue,
                        },
                        Err(e) => e,
                    }
                }
                Err(e) => zk_err("lock", e),
            };
            // The create may have landed all the same.
            release(s.client(), Held::Token(token));
            return Err(failed);
        };
        let mine = sequence(&name).unwrap_or(u64::MAX);
        // Released on every way out from here, the errors included.
        let lock = ZkLock {
            client: s.client(),
            path: format!("{LOCK}/{name}"),
        };
        loop {
            let children = s.retry("lock", |c| async move { c.list_children(LOCK).await }).await?;
            let before = children
                .iter()
                .filter_map(|n| sequence(n).filter(|&q| q < mine).map(|q| (q, n)))
                .max();
            let Some((_, pred)) = before else { break };
            let pred = format!("{LOCK}/{pred}");
            if let Ok((Some(_), w)) = s.client().check_and_watch_stat(&pred).await {
                let _ = tokio::time::timeout(TICK, w.changed()).await;
            }
        }
        let end = s
            .retry("queue listing", |c| async move { c.list_children(QUEUE).await })
            .await?
            .iter()
            .filter_map(|n| sequence(n))
            .max()
            .map_or(0, |q| q + 1);
        Ok((lock, end))
    }

    pub async fn report_applied(&self, pos: u64) -> Result<(), DriverError> {
        let s = &self.shared;
        let path = format!("{APPLIED}/{}", s.me);
        let body = pos.to_string().into_bytes();
        match s.client().set_data(&path, &body, None).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NoNode) => {
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                match s.client().create(&path, &body, &opts).await {
                    Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
                    Err(e) => Err(zk_err("report applied", e)),
                }
            }
            Err(e) => Err(zk_err("report applied", e)),
        }
    }

    pub async fn applied_by(&self, addr: SocketAddr) -> Result<u64, DriverError> {
        match self.shared.client().get_data(&format!("{APPLIED}/{addr}")).await {
            Ok((d, _)) => Ok(String::from_utf8_lossy(&d).trim().parse().unwrap_or(0)),
            Err(zk::Error::NoNode) => Ok(0),
            Err(e) => Err(zk_err("read applied", e)),
        }
    }
}

/// The VDI operation lock; released when dropped (or when the session ends).
pub struct ZkLock {
    client: zk::Client,
    path: String,
}

impl Drop for ZkLock {
    fn drop(&mut self) {
        release(self.client.clone(), Held::Path(std::mem::take(&mut self.path)));
    }
}

/// A lock znode to delete: by its path, or by the token in its name when the reply to its
/// create was lost.
enum Held {
    Path(String),
    Token(String),
}

/// Deletes a lock znode in the background. A release lost in a leader failover would block
/// every VDI operation for as long as this session lives: transient failures are retried.
fn release(client: zk::Client, held: Held) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        for _ in 0..ATTEMPTS {
            let path = match &held {
                Held::Path(p) => Ok(Some(p.clone())),
                Held::Token(t) => client.list_children(LOCK).await.map(|c| {
                    c.into_iter()
                        .find(|n| n.contains(t.as_str()))
                        .map(|n| format!("{LOCK}/{n}"))
                }),
            };
            let res = match path {
                Ok(Some(p)) => client.delete(&p, None).await,
                Ok(None) => return,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) | Err(zk::Error::NoNode) => return,
                Err(e) if transient(&e) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the ZooKeeper lock; it goes with the session");
                    return;
                }
            }
        }
        tracing::error!("gave up releasing the ZooKeeper lock; it goes with the session");
    });
}

/// Appends a `Leave` for every member whose znode is gone. Only the live member with the
/// lowest address does it, so a thousand nodes do not all write the same notice; it watches
/// the member list, the others only look once a [`TICK`] in case they become the lowest.
async fn watch_members(s: Arc<Shared>) {
    let mut reaped: HashSet<(SocketAddr, u64)> = HashSet::new();
    let mut reaper = false;
    while !s.stopped.load(Ordering::Acquire) {
        let client = s.client();
        let listed = if reaper {
            client
                .get_and_watch_children(MEMBERS)
                .await
                .map(|(c, _, w)| (c, Some(w)))
        } else {
            client.list_children(MEMBERS).await.map(|c| (c, None))
        };
        let (live, watcher) = match listed {
            Ok((c, w)) => (
                c.iter()
                    .filter_map(|n| n.parse::<SocketAddr>().ok())
                    .collect::<Vec<_>>(),
                w,
            ),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        reaper = s.healthy.load(Ordering::Acquire) && live.iter().min() == Some(&s.me);
        s.cadence.set_writer(reaper);
        if reaper {
            let gone: Vec<(SocketAddr, u64)> = s
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(a, _)| !live.contains(a))
                .map(|(a, i)| (*a, *i))
                .collect();
            let gone: Vec<(SocketAddr, u64)> = gone.into_iter().filter(|g| !reaped.contains(g)).collect();
            if !gone.is_empty() {
                // All in one transaction: a hundred sessions that end together cost every
                // reader one read, not a hundred.
                let leaves: Vec<Event> = gone
                    .iter()
                    .map(|&(addr, inc)| {
                        tracing::warn!(node = %addr, "node's ZooKeeper session ended; announcing its leave");
                        Event::Leave {
                            addr,
                            time: now_secs(),
                            incarnation: Some(inc),
                        }
                    })
                    .collect();
                match s.append_all(&leaves).await {
                    Ok(()) => reaped.extend(gone),
                    Err(e) => tracing::error!(nodes = gone.len(), error = %e, "cannot announce leaves"),
                }
            }
        }
        match watcher {
            Some(w) => {
                let _ = tokio::time::timeout(TICK, w.changed()).await;
            }
            None => tokio::time::sleep(TICK).await,
        }
    }
}

/// On session expiry: stop writes, connect anew, join again.
async fn watch_session(s: Arc<Shared>) {
    loop {
        let mut states = s.client().state_watcher();
        loop {
            let state = tokio::time::timeout(TICK, states.changed()).await;
            if s.stopped.load(Ordering::Acquire) {
                return;
            }
            let Ok(state) = state else { continue };
            match state {
                zk::SessionState::Expired | zk::SessionState::Closed => break,
                zk::SessionState::Disconnected => {
                    tracing::warn!("ZooKeeper connection lost; the session may still be saved")
                }
                zk::SessionState::SyncConnected => tracing::info!("ZooKeeper connection back"),
                other => tracing::warn!(state = ?other, "ZooKeeper session state"),
            }
        }
        if s.node.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return;
        }
        s.healthy.store(false, Ordering::Release);
        tracing::error!("ZooKeeper session expired: this sheep stops accepting writes and joins again as a new member");
        let client = loop {
            match connect(&s.spec).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "reconnecting to ZooKeeper");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        *s.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        let node = s.node.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((node, fixed_vnodes)) = node {
            match s.join(node, fixed_vnodes).await {
                Ok(_) => tracing::info!(incarnation = s.incarnation(), "joined again after the session expiry"),
                Err(e) => tracing::error!(error = %e, "cannot join again after the session expiry"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = ZkSpec::parse("127.0.0.1:2181").expect("one host");
        assert_eq!(
            (s.hosts.as_str(), s.session_timeout),
            ("127.0.0.1:2181", Duration::from_secs(10))
        );
        let s = ZkSpec::parse("a:1,b:2,timeout=3").expect("two hosts");
        assert_eq!(
            (s.hosts.as_str(), s.session_timeout),
            ("a:1,b:2", Duration::from_secs(3))
        );
        for bad in ["", "timeout=3", "a", "a:x", "a:1,timeout=0", "a:1,timeout=x"] {
            assert!(ZkSpec::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(sequence("ev-0000000012"), Some(12));
        assert_eq!(sequence("l-0000000000"), Some(0));
    }
}
