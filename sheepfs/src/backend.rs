//! What the filesystem needs from the cluster, behind a trait: the real implementation talks
//! to a gateway sheep ([`ClusterBackend`]); tests use an in-memory double
//! ([`crate::memory::MemoryBackend`]).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use protocol::cluster::{ClusterInfo, EpochRecord};
use protocol::inode::{Inode, InodeHeader};
use protocol::node::Node;
use protocol::requests::{NewVdi, RecoveryState, VdiInfo};
use protocol::{Client, ClientError, Oid, Vid};
use thread_local::ThreadLocal;

use crate::error::{FsError, FsResult};

pub trait Backend: Send + Sync + 'static {
    /// The gateway sheep this backend talks to.
    fn gateway(&self) -> SocketAddr;
    /// Reads `out.len()` bytes of `oid` at `offset` into `out`; returns how many the
    /// gateway answered (fewer only from a faulty one).
    fn read_obj(&self, oid: Oid, offset: u32, out: &mut [u8]) -> impl Future<Output = FsResult<usize>> + Send;
    fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> impl Future<Output = FsResult<()>> + Send;
    fn create_obj(
        &self,
        oid: Oid,
        cow: Option<Oid>,
        offset: u32,
        data: &[u8],
    ) -> impl Future<Output = FsResult<()>> + Send;
    /// Looks a working VDI (`snapid` 0) or a snapshot up by name. ENOENT if there is none.
    fn vdi_info(&self, name: &str, snapid: u32) -> impl Future<Output = FsResult<VdiInfo>> + Send;
    fn inode(&self, vid: Vid) -> impl Future<Output = FsResult<Inode>> + Send;
    /// Headers of every live VDI (working and snapshots), in vid order.
    fn vdi_headers(&self) -> impl Future<Output = FsResult<Vec<InodeHeader>>> + Send;
    fn new_vdi(&self, name: &str, v: NewVdi) -> impl Future<Output = FsResult<VdiInfo>> + Send;
    fn snapshot(&self, name: &str, tag: &str) -> impl Future<Output = FsResult<VdiInfo>> + Send;
    fn delete_vdi(&self, name: &str, snapid: u32) -> impl Future<Output = FsResult<()>> + Send;
    fn set_vdi_size(&self, vid: Vid, size: u64) -> impl Future<Output = FsResult<()>> + Send;
    /// Makes every acknowledged write durable on every replica.
    fn flush(&self, vid: Vid) -> impl Future<Output = FsResult<()>> + Send;
    fn cluster_info(&self) -> impl Future<Output = FsResult<ClusterInfo>> + Send;
    fn epoch_log(&self, epochs: u32, nodes: u32) -> impl Future<Output = FsResult<Vec<EpochRecord>>> + Send;
    fn nodes(&self) -> impl Future<Output = FsResult<Vec<Node>>> + Send;
    /// Recovery progress of one node.
    fn stat_recovery(&self, node: SocketAddr) -> impl Future<Output = FsResult<RecoveryState>> + Send;
    /// (size, free) of one node's store; `None` for the gateway this backend talks to.
    fn stat_sheep(&self, node: Option<SocketAddr>) -> impl Future<Output = FsResult<(u64, u64)>> + Send;
}

/// The cluster, reached through one gateway sheep.
pub struct ClusterBackend {
    gateway: SocketAddr,
    /// A connection pool per thread: each FUSE thread runs its own runtime, and a connection
    /// can only be waited on by the runtime that opened it.
    clients: ThreadLocal<Client>,
    /// How long transport failures (gateway down) are retried before EIO.
    retry_for: Duration,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

impl ClusterBackend {
    pub fn new(addr: SocketAddr, retry_for: Duration) -> ClusterBackend {
        ClusterBackend {
            gateway: addr,
            clients: ThreadLocal::new(),
            retry_for,
        }
    }

    /// This thread's pool.
    fn client(&self) -> &Client {
        self.clients
            .get_or(|| Client::with_timeout(self.gateway, REQUEST_TIMEOUT))
    }

    /// Runs `f` against the gateway, retrying while the gateway cannot be reached. Results
    /// from the gateway (errors included) are returned at once.
    async fn retry<T, F, Fut>(&self, what: &str, f: F) -> FsResult<T>
    where
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
    async fn after(&mut self, what: &str, e: ClientError) -> FsResult<()> {
        if e.result().is_some() || tokio::time::Instant::now() >= self.deadline {
            return Err(FsError::cluster(what, &e));
        }
        tracing::warn!(error = %e, "{what}: gateway unreachable; retrying");
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        Ok(())
    }
}

impl Backend for ClusterBackend {
    fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    async fn read_obj(&self, oid: Oid, offset: u32, out: &mut [u8]) -> FsResult<usize> {
        let mut retry = Retry::new(self.retry_for);
        loop {
            match self.client().read_obj_into(oid, offset, out).await {
                Ok(n) => return Ok(n),
                Err(e) => retry.after(&format!("read of object {oid}"), e).await?,
            }
        }
    }

    async fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> FsResult<()> {
        self.retry(&format!("write of object {oid}"), || {
            self.client().write_obj(oid, offset, data)
        })
        .await
    }

    async fn create_obj(&self, oid: Oid, cow: Option<Oid>, offset: u32, data: &[u8]) -> FsResult<()> {
        self.retry(&format!("create of object {oid}"), || {
            self.client().create_obj(oid, cow, offset, data)
        })
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

    async fn vdi_headers(&self) -> FsResult<Vec<InodeHeader>> {
        self.retry("VDI listing", || self.client().vdi_headers()).await
    }

    async fn new_vdi(&self, name: &str, v: NewVdi) -> FsResult<VdiInfo> {
        self.retry(&format!("creation of VDI {name}"), || self.client().new_vdi(name, v))
            .await
    }

    async fn snapshot(&self, name: &str, tag: &str) -> FsResult<VdiInfo> {
        self.retry(&format!("snapshot of VDI {name}"), || self.client().snapshot(name, tag))
            .await
    }

    async fn delete_vdi(&self, name: &str, snapid: u32) -> FsResult<()> {
        self.retry(&format!("deletion of VDI {name}"), || {
            self.client().delete_vdi(name, snapid, None)
        })
        .await
        .map(|_| ())
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
        Client::with_timeout(node, Duration::from_secs(2))
            .stat_recovery()
            .await
            .map_err(|e| FsError::cluster("recovery state", &e))
    }

    async fn stat_sheep(&self, node: Option<SocketAddr>) -> FsResult<(u64, u64)> {
        match node {
            None => self.retry("node stat", || self.client().stat_sheep()).await,
            Some(addr) => Client::with_timeout(addr, Duration::from_secs(2))
                .stat_sheep()
                .await
                .map_err(|e| FsError::cluster("node stat", &e)),
        }
    }
}
