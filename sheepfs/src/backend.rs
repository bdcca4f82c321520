//! What the filesystem needs from the cluster, behind a trait: the real implementation talks
//! to a gateway sheep ([`ClusterBackend`]); tests use an in-memory double
//! ([`crate::memory::MemoryBackend`]).

use std::collections::BTreeMap;
use std::fmt::{self, Display};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use protocol::cluster::{ClusterInfo, EpochRecord};
use protocol::inode::{Inode, InodeHeader};
use protocol::mux::Mux;
use protocol::node::Node;
use protocol::requests::{object, CacheStats, NewVdi, RecoveryState, VdiInfo};
use protocol::{Client, ClientError, Oid, ResultCode, Vid};
use thread_local::ThreadLocal;
use tokio::runtime::Handle;

use volume::{FsError, FsResult, ObjectIo};

/// Everything but volume I/O ([`ObjectIo`]): the VDI tree, locks, the cache switch and the
/// monitoring files.
pub trait Backend: ObjectIo {
    /// The gateway sheep this backend talks to.
    fn gateway(&self) -> SocketAddr;
    /// Headers of every live VDI (working and snapshots), in vid order.
    fn vdi_headers(&self) -> impl Future<Output = FsResult<Vec<InodeHeader>>> + Send;
    fn delete_vdi(&self, name: &str, snapid: u32) -> impl Future<Output = FsResult<()>> + Send;
    /// Opens working VDI `name` for writing by this mount, until [`Backend::release_vdi`] or
    /// the mount's end: EBUSY while another client (a mount, `dog vdi write`, a VM) has it.
    fn lock_vdi(&self, name: &str) -> impl Future<Output = FsResult<()>> + Send;
    /// Ends this mount's lock on `name`, if it holds one.
    fn release_vdi(&self, name: &str) -> impl Future<Output = FsResult<()>> + Send;
    /// The gateway's object cache figures (all zero where it runs none).
    fn stat_cache(&self) -> impl Future<Output = FsResult<CacheStats>> + Send;
    /// The gateway's metrics, as Prometheus/OpenMetrics text.
    fn metrics(&self) -> impl Future<Output = FsResult<String>> + Send;
    /// Whether object I/O asks the gateway's object cache to serve it (`/config/object_cache`).
    fn object_cache(&self) -> bool;
    fn set_object_cache(&self, on: bool);
    /// Whether this mount held `name`'s lock and lost it to another client (its gateway
    /// restarted and someone else took the VDI meanwhile): writes must then fail.
    fn lock_lost(&self, name: &str) -> bool;
    fn cluster_info(&self) -> impl Future<Output = FsResult<ClusterInfo>> + Send;
    fn epoch_log(&self, epochs: u32, nodes: u32) -> impl Future<Output = FsResult<Vec<EpochRecord>>> + Send;
    fn nodes(&self) -> impl Future<Output = FsResult<Vec<Node>>> + Send;
    /// Recovery progress of one node.
    fn stat_recovery(&self, node: SocketAddr) -> impl Future<Output = FsResult<RecoveryState>> + Send;
    /// Node `node`'s background scrub.
    fn stat_scrub(&self, node: SocketAddr) -> impl Future<Output = FsResult<protocol::stats::ScrubStats>> + Send;
    /// (size, free) of one node's store; `None` for the gateway this backend talks to.
    fn stat_sheep(&self, node: Option<SocketAddr>) -> impl Future<Output = FsResult<(u64, u64)>> + Send;
}

/// The cluster, reached through one gateway sheep.
pub struct ClusterBackend {
    gateway: SocketAddr,
    /// The VDI locks this mount holds, on a connection of their own.
    locks: Arc<Locks>,
    /// Object I/O carries the CACHE flag.
    object_cache: AtomicBool,
    /// The runtime that drives the lock connection (a connection can only be waited on by
    /// the runtime that opened it, and the FUSE threads' runtimes come and go with requests).
    rt: Handle,
    /// A connection pool per thread, for everything but reads and writes of objects: each
    /// FUSE thread runs its own runtime, and a connection can only be waited on by the
    /// runtime that opened it.
    clients: ThreadLocal<Client>,
    /// Reads and writes of objects while others are in flight, from every FUSE thread on
    /// one pipelined connection that `rt` serves: the gateway takes the requests that queue
    /// together in one read and answers them in one write, instead of waking for each on a
    /// connection of its own. A lone request goes on its thread's own connection instead,
    /// which spares it the hops to and from `rt`'s thread: through those alone, writes at a
    /// depth of 1 were a fifth slower.
    io: Mux,
    /// Object reads and writes in flight.
    in_flight: AtomicUsize,
    /// How long transport failures (gateway down) are retried before EIO.
    retry_for: Duration,
    /// How long a monitoring file waits for each node's answer (see [`NODE_TIMEOUT`]).
    node_timeout: Duration,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a monitoring file waits for one node's answer before it shows the node's row
/// without it (`sheepfs --node-timeout-secs`).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);

impl ClusterBackend {
    /// A backend for the gateway at `addr`; `rt` drives the VDI lock connection and its
    /// keeper, which runs for the backend's lifetime.
    pub fn new(addr: SocketAddr, retry_for: Duration, rt: Handle, object_cache: bool) -> ClusterBackend {
        let locks = Arc::new(Locks {
            client: Client::with_timeout(addr, REQUEST_TIMEOUT),
            held: std::sync::Mutex::new(BTreeMap::new()),
            one_at_a_time: tokio::sync::Mutex::new(()),
        });
        rt.spawn(Locks::keep(Arc::downgrade(&locks)));
        ClusterBackend {
            gateway: addr,
            locks,
            object_cache: AtomicBool::new(object_cache),
            clients: ThreadLocal::new(),
            io: Mux::with_timeout(addr, REQUEST_TIMEOUT).serving_on(rt.clone()),
            in_flight: AtomicUsize::new(0),
            rt,
            retry_for,
            node_timeout: NODE_TIMEOUT,
        }
    }

    /// Waits `t` for each node's answer in monitoring files instead of [`NODE_TIMEOUT`].
    pub fn with_node_timeout(mut self, t: Duration) -> ClusterBackend {
        self.node_timeout = t;
        self
    }

    /// A client for a question to one node (not the gateway) for a monitoring file.
    fn node(&self, addr: SocketAddr) -> Client {
        Client::with_timeout(addr, self.node_timeout)
    }

    /// Runs `f` on the runtime that owns the lock connection.
    async fn on_lock_connection<F, Fut>(&self, f: F) -> FsResult<()>
    where
        F: FnOnce(Arc<Locks>) -> Fut,
        Fut: Future<Output = FsResult<()>> + Send + 'static,
    {
        self.rt
            .spawn(f(self.locks.clone()))
            .await
            .map_err(|e| FsError::new(libc::EIO, format!("lock task failed: {e}")))?
    }

    fn cache_flag(&self) -> u16 {
        if self.object_cache.load(Ordering::Acquire) {
            protocol::flags::CACHE
        } else {
            0
        }
    }

    /// This thread's pool.
    fn client(&self) -> &Client {
        self.clients
            .get_or(|| Client::with_timeout(self.gateway, REQUEST_TIMEOUT))
    }

    /// Runs `f` against the gateway, retrying while the gateway cannot be reached. Results
    /// from the gateway (errors included) are returned at once.
    async fn retry<T, W, F, Fut>(&self, what: &W, f: F) -> FsResult<T>
    where
        W: Display + Sync + ?Sized,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut retry = Retry::new(self.retry_for);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => retry.after(what, e).await?,
            }
        }
    }
}

/// How often held locks are asserted again on the lock connection. After the gateway
/// restarts (its locks died with it), the next assertion takes them again.
const LOCK_KEEP: Duration = Duration::from_secs(1);
/// Refusals in a row after which a held lock counts as lost to another client.
const LOCK_LOST_AFTER: u32 = 5;

/// This mount's VDI locks. The gateway ties a lock to the connection that took it and
/// releases it when that connection closes, so they are all taken on one connection that
/// lives as long as the mount (this client's pool keeps its one idle connection open).
struct Locks {
    client: Client,
    /// Held VDI names, with how many re-assertions in a row were refused.
    held: std::sync::Mutex<BTreeMap<String, u32>>,
    /// One request on the lock connection at a time, so it stays the only one.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Locks {
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u32>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn take(&self, name: &str) -> FsResult<()> {
        if self.held().get(name).is_some_and(|&refused| refused < LOCK_LOST_AFTER) {
            return Ok(());
        }
        let _one = self.one_at_a_time.lock().await;
        match self.client.lock_vdi(name).await {
            Ok(_) => {
                self.held().insert(name.to_string(), 0);
                tracing::info!(vdi = name, "VDI locked for writing by this mount");
                Ok(())
            }
            Err(e) if e.result() == Some(ResultCode::VDI_LOCKED) => Err(FsError::new(
                libc::EBUSY,
                format!("VDI {name} is open for writing by another client"),
            )),
            Err(e) => Err(FsError::cluster(&format!("lock of VDI {name}"), &e)),
        }
    }

    async fn give_up(&self, name: &str) -> FsResult<()> {
        if self.held().remove(name).is_none() {
            return Ok(());
        }
        let _one = self.one_at_a_time.lock().await;
        let info = match self.client.vdi_info(name, None, 0).await {
            Ok(info) => info,
            // Deleted: its lock went with it.
            Err(e) if e.result() == Some(ResultCode::NO_VDI) => return Ok(()),
            Err(e) => return Err(FsError::cluster(&format!("lookup of VDI {name}"), &e)),
        };
        let vid = Vid::new(info.vid).ok_or_else(|| FsError::new(libc::EIO, "lookup returned a bad vid"))?;
        self.client
            .release_vdi(vid)
            .await
            .map_err(|e| FsError::cluster(&format!("release of VDI {name}"), &e))
    }

    fn lost(&self, name: &str) -> bool {
        self.held().get(name).is_some_and(|&refused| refused >= LOCK_LOST_AFTER)
    }

    /// Asserts every held lock again each [`LOCK_KEEP`] while the backend lives.
    async fn keep(this: Weak<Locks>) {
        loop {
            tokio::time::sleep(LOCK_KEEP).await;
            let Some(locks) = this.upgrade() else {
                return;
            };
            let names: Vec<String> = locks.held().keys().cloned().collect();
            for name in names {
                let _one = locks.one_at_a_time.lock().await;
                let r = locks.client.lock_vdi(&name).await;
                let mut held = locks.held();
                let Some(refused) = held.get_mut(&name) else {
                    continue;
                };
                match r {
                    Ok(_) => {
                        if *refused >= LOCK_LOST_AFTER {
                            tracing::warn!(vdi = %name, "VDI lock taken again; writes resume");
                        }
                        *refused = 0;
                    }
                    Err(e) if e.result() == Some(ResultCode::VDI_LOCKED) => {
                        *refused += 1;
                        if *refused == LOCK_LOST_AFTER {
                            tracing::error!(vdi = %name, "VDI lock lost to another client; writes to it fail");
                        }
                    }
                    // The gateway is away: asserted again once it is back.
                    Err(_) => {}
                }
            }
        }
    }
}

/// One object read or write counted in flight while it lives.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    /// How many others were in flight when it started.
    others: usize,
}

impl InFlight<'_> {
    fn enter(count: &AtomicUsize) -> InFlight<'_> {
        let others = count.fetch_add(1, Ordering::AcqRel);
        InFlight { count, others }
    }

    fn alone(&self) -> bool {
        self.others == 0
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The pacing of retries while the gateway is unreachable.
struct Retry {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl Retry {
    fn new(retry_for: Duration) -> Retry {
        Retry {
            deadline: tokio::time::Instant::now() + retry_for,
            pause: Duration::from_millis(50),
        }
    }

    /// After a failed attempt: waits and returns `Ok` to try again while the gateway is
    /// unreachable and time is left, else the error for the caller.
    async fn after<W: Display + ?Sized>(&mut self, what: &W, e: ClientError) -> FsResult<()> {
        if e.result().is_some() || tokio::time::Instant::now() >= self.deadline {
            return Err(FsError::cluster(&what.to_string(), &e));
        }
        tracing::warn!(error = %e, "{what}: gateway unreachable; retrying");
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        Ok(())
    }
}

/// An object request, named as "read of object …" only when a failure is logged: the
/// requests that succeed (nearly all) format nothing.
struct ObjectOp(&'static str, Oid);

impl Display for ObjectOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of object {}", self.0, self.1)
    }
}

impl ObjectIo for ClusterBackend {
    async fn read_obj(&self, oid: Oid, offset: u32, out: &mut [u8]) -> FsResult<usize> {
        let what = ObjectOp("read", oid);
        let flag = self.cache_flag();
        let busy = InFlight::enter(&self.in_flight);
        if busy.alone() {
            let mut retry = Retry::new(self.retry_for);
            loop {
                match self.client().read_obj_into_with(oid, offset, out, flag).await {
                    Ok(n) => return Ok(n),
                    Err(e) => retry.after(&what, e).await?,
                }
            }
        }
        let req = object::read(oid, offset, out.len() as u32, flag);
        let none = Bytes::new();
        let reply = self.retry(&what, || self.io.call(req.clone(), &none)).await?;
        // The mux refuses a reply longer than the request asked for, as a pooled connection does.
        let n = reply.data.len().min(out.len());
        out[..n].copy_from_slice(&reply.data[..n]);
        Ok(n)
    }

    async fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> FsResult<()> {
        let what = ObjectOp("write", oid);
        let flag = self.cache_flag();
        let busy = InFlight::enter(&self.in_flight);
        if busy.alone() {
            return self
                .retry(&what, || self.client().write_obj_with(oid, offset, data, flag))
                .await;
        }
        let req = object::write(oid, offset, data.len() as u32, flag);
        let data = Bytes::copy_from_slice(data);
        self.retry(&what, || self.io.call(req.clone(), &data)).await.map(|_| ())
    }

    async fn create_obj(&self, oid: Oid, cow: Option<Oid>, offset: u32, data: &[u8]) -> FsResult<()> {
        self.retry(&ObjectOp("create", oid), || {
            self.client().create_obj(oid, cow, offset, data)
        })
        .await
    }

    async fn remove_obj(&self, oid: Oid) -> FsResult<()> {
        self.retry(&ObjectOp("removal", oid), || self.client().remove_obj(oid))
            .await
    }

    async fn vdi_info(&self, name: &str, snapid: u32) -> FsResult<VdiInfo> {
        self.retry(&format!("lookup of VDI {name}"), || {
            self.client().vdi_info(name, None, snapid)
        })
        .await
    }

    async fn inode(&self, vid: Vid) -> FsResult<Inode> {
        self.retry(&format!("read of inode {vid}"), || self.client().inode(vid))
            .await
    }

    async fn new_vdi(&self, name: &str, v: NewVdi) -> FsResult<VdiInfo> {
        self.retry(&format!("creation of VDI {name}"), || self.client().new_vdi(name, v))
            .await
    }

    async fn snapshot(&self, name: &str, tag: &str) -> FsResult<VdiInfo> {
        self.retry(&format!("snapshot of VDI {name}"), || self.client().snapshot(name, tag))
            .await
    }

    async fn set_vdi_size(&self, vid: Vid, size: u64) -> FsResult<()> {
        self.retry(&format!("resize of VDI {vid}"), || {
            self.client().set_vdi_size(vid, size)
        })
        .await
    }

    async fn flush(&self, vid: Vid) -> FsResult<()> {
        self.retry(&format!("flush of VDI {vid}"), || self.client().flush_vdi(vid))
            .await
    }
}

impl Backend for ClusterBackend {
    fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    async fn vdi_headers(&self) -> FsResult<Vec<InodeHeader>> {
        self.retry("VDI listing", || self.client().vdi_headers()).await
    }

    async fn delete_vdi(&self, name: &str, snapid: u32) -> FsResult<()> {
        self.retry(&format!("deletion of VDI {name}"), || {
            self.client().delete_vdi(name, snapid, None)
        })
        .await
        .map(|_| ())
    }

    async fn lock_vdi(&self, name: &str) -> FsResult<()> {
        let name = name.to_string();
        self.on_lock_connection(move |locks| async move { locks.take(&name).await })
            .await
    }

    async fn release_vdi(&self, name: &str) -> FsResult<()> {
        let name = name.to_string();
        self.on_lock_connection(move |locks| async move { locks.give_up(&name).await })
            .await
    }

    fn lock_lost(&self, name: &str) -> bool {
        self.locks.lost(name)
    }

    async fn stat_cache(&self) -> FsResult<CacheStats> {
        self.retry("object cache figures", || self.client().stat_cache()).await
    }

    async fn metrics(&self) -> FsResult<String> {
        self.retry("metrics", || self.client().metrics()).await
    }

    fn object_cache(&self) -> bool {
        self.object_cache.load(Ordering::Acquire)
    }

    fn set_object_cache(&self, on: bool) {
        self.object_cache.store(on, Ordering::Release);
    }

    async fn cluster_info(&self) -> FsResult<ClusterInfo> {
        self.retry("cluster info", || self.client().cluster_info()).await
    }

    async fn epoch_log(&self, epochs: u32, nodes: u32) -> FsResult<Vec<EpochRecord>> {
        self.retry("epoch log", || self.client().epoch_log(epochs, nodes)).await
    }

    async fn nodes(&self) -> FsResult<Vec<Node>> {
        self.retry("node list", || self.client().nodes()).await
    }

    async fn stat_recovery(&self, node: SocketAddr) -> FsResult<RecoveryState> {
        self.node(node)
            .stat_recovery()
            .await
            .map_err(|e| FsError::cluster("recovery state", &e))
    }

    async fn stat_scrub(&self, node: SocketAddr) -> FsResult<protocol::stats::ScrubStats> {
        self.node(node)
            .stat_scrub()
            .await
            .map_err(|e| FsError::cluster("scrub state", &e))
    }

    async fn stat_sheep(&self, node: Option<SocketAddr>) -> FsResult<(u64, u64)> {
        match node {
            None => self.retry("node stat", || self.client().stat_sheep()).await,
            Some(addr) => self
                .node(addr)
                .stat_sheep()
                .await
                .map_err(|e| FsError::cluster("node stat", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::frame::{read_request, write_frame};
    use protocol::header::ResponseHeader;
    use tokio::net::TcpListener;

    /// A gateway that answers every request with 4 bytes more than it asked for.
    async fn overlong_gateway() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    while let Ok(Some((h, _))) = read_request(&mut s, 1 << 20).await {
                        let mut r = ResponseHeader::reply_to(&h, ResultCode::SUCCESS, 1);
                        let body = vec![0xee; h.data_length as usize + 4];
                        r.data_length = body.len() as u32;
                        if write_frame(&mut s, &r.encode(), &body).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_read_answered_with_more_than_asked_fails_on_either_connection() {
        let addr = overlong_gateway().await;
        let b = ClusterBackend::new(addr, Duration::ZERO, Handle::current(), false);
        let oid = Oid(0x0000_0001_0000_0000);
        let (mut first, mut second) = ([7u8; 4096], [7u8; 4096]);
        // Both are counted in flight before either awaits anything: the first is alone (its
        // thread's own connection), the second finds it in flight (the pipelined one).
        let (a, b2) = tokio::join!(b.read_obj(oid, 0, &mut first), b.read_obj(oid, 4096, &mut second));
        for (what, r, out) in [("alone", a, first), ("pipelined", b2, second)] {
            let e = r.expect_err(what);
            assert_eq!(e.errno, libc::EIO, "{what}: {e}");
            assert!(out.iter().all(|&x| x == 7), "{what}: the buffer was written");
        }
    }
}
