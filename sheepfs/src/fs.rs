//! The filesystem core: the tree of VDIs, control files and monitoring files, with inode
//! numbers, attributes and file handles. It knows nothing of FUSE (see `fuse.rs`), so tests
//! drive it directly.
//!
//! ```text
//! /vdi/list  /vdi/<name>/{volume,snapshot,info,snapshots/<id>/{volume,clone}}
//! /cluster/info  /cluster/recovery  /cluster/scrub  /node/list  /node/info  /node/metrics
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use protocol::inode::InodeHeader;
use protocol::node::Node;
use protocol::requests::NewVdi;

use crate::backend::Backend;
use crate::control;
use crate::monitor;
use volume::{FsError, FsResult};
use volume::{Volume, DEFAULT_CHUNK};

/// What a path names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    Root,
    VdiDir,
    ClusterDir,
    NodeDir,
    ConfigDir,
    ObjectCache,
    VdiList,
    ClusterInfo,
    ClusterRecovery,
    ClusterScrub,
    NodeList,
    NodeInfo,
    NodeMetrics,
    Vdi(String),
    Volume(String),
    SnapshotCtl(String),
    Info(String),
    Snapshots(String),
    Snapshot(String, u32),
    SnapVolume(String, u32),
    CloneCtl(String, u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What an open asks to do with the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    pub fn writes(self) -> bool {
        self != Access::Read
    }
}

/// Attributes of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    /// Content changes behind the kernel's back: no attribute caching, direct I/O.
    pub volatile: bool,
}

/// An open file: what it reads from.
enum Handle {
    /// A monitoring file's content, rendered at open.
    Text(Vec<u8>),
}

impl Entry {
    fn kind(&self) -> Kind {
        match self {
            Entry::Root
            | Entry::VdiDir
            | Entry::ClusterDir
            | Entry::NodeDir
            | Entry::ConfigDir
            | Entry::Vdi(_)
            | Entry::Snapshots(_)
            | Entry::Snapshot(..) => Kind::Dir,
            _ => Kind::File,
        }
    }

    fn is_monitor(&self) -> bool {
        matches!(
            self,
            Entry::VdiList
                | Entry::ClusterInfo
                | Entry::ClusterRecovery
                | Entry::ClusterScrub
                | Entry::NodeList
                | Entry::NodeInfo
                | Entry::NodeMetrics
                | Entry::Info(_)
        )
    }
}

struct Table {
    by_entry: HashMap<Entry, u64>,
    by_ino: HashMap<u64, Entry>,
    next: u64,
}

impl Table {
    fn new() -> Table {
        let mut t = Table {
            by_entry: HashMap::new(),
            by_ino: HashMap::new(),
            next: 1,
        };
        for e in [
            Entry::Root,
            Entry::VdiDir,
            Entry::ClusterDir,
            Entry::NodeDir,
            Entry::ConfigDir,
            Entry::ObjectCache,
            Entry::VdiList,
            Entry::ClusterInfo,
            Entry::NodeList,
            Entry::NodeInfo,
        ] {
            t.ino(e);
        }
        t
    }

    fn ino(&mut self, e: Entry) -> u64 {
        if let Some(&i) = self.by_entry.get(&e) {
            return i;
        }
        let i = self.next;
        self.next += 1;
        self.by_entry.insert(e.clone(), i);
        self.by_ino.insert(i, e);
        i
    }
}

pub const ROOT_INO: u64 = 1;

type VolKey = (String, Option<u32>);

/// Nodes a monitoring file asks at once ([`Fs::ask_each`]).
const ASK_AT_ONCE: usize = 64;

pub struct Fs<B> {
    backend: Arc<B>,
    table: Mutex<Table>,
    volumes: Mutex<HashMap<VolKey, Arc<Volume<B>>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    chunk: u32,
    /// Write-only opens of volumes skip the kernel's page cache (see [`Fs::open`]).
    direct_writes: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B: Backend> Fs<B> {
    pub fn new(backend: Arc<B>) -> Fs<B> {
        Fs {
            backend,
            table: Mutex::new(Table::new()),
            volumes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            chunk: DEFAULT_CHUNK,
            direct_writes: false,
        }
    }

    /// Makes write-only opens of volumes direct I/O; only safe where the kernel drops the
    /// pages other opens cached of a range written that way (Linux 6.6 and later).
    pub fn with_direct_writes(mut self, on: bool) -> Fs<B> {
        self.direct_writes = on;
        self
    }

    /// Cuts volume I/O into object requests of at most `bytes` (see [`DEFAULT_CHUNK`]).
    pub fn with_chunk(mut self, bytes: u32) -> Fs<B> {
        self.chunk = bytes.max(1);
        self
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    fn entry(&self, ino: u64) -> FsResult<Entry> {
        lock(&self.table)
            .by_ino
            .get(&ino)
            .cloned()
            .ok_or_else(|| FsError::not_found(format!("inode {ino}")))
    }

    fn ino(&self, e: Entry) -> u64 {
        lock(&self.table).ino(e)
    }

    /// The volume of a working VDI or snapshot, loaded on first use.
    pub async fn volume(&self, name: &str, snap: Option<u32>) -> FsResult<Arc<Volume<B>>> {
        let key = (name.to_string(), snap);
        if let Some(v) = lock(&self.volumes).get(&key) {
            return Ok(v.clone());
        }
        let v = Arc::new(Volume::open(self.backend.clone(), name, snap, self.chunk).await?);
        Ok(lock(&self.volumes).entry(key).or_insert(v).clone())
    }

    /// Does the VDI (or snapshot) behind `e` exist now?
    async fn check(&self, e: &Entry) -> FsResult<()> {
        match e {
            Entry::Vdi(n) | Entry::Volume(n) | Entry::SnapshotCtl(n) | Entry::Info(n) | Entry::Snapshots(n) => {
                self.backend.vdi_info(n, 0).await.map(|_| ())
            }
            Entry::Snapshot(n, s) | Entry::SnapVolume(n, s) | Entry::CloneCtl(n, s) => {
                self.backend.vdi_info(n, *s).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    async fn attr_of(&self, e: Entry) -> FsResult<Attr> {
        self.check(&e).await?;
        let size = match &e {
            Entry::Volume(n) => self.volume(n, None).await?.size().await,
            Entry::SnapVolume(n, s) => self.volume(n, Some(*s)).await?.size().await,
            _ => 0,
        };
        let perm = match &e {
            _ if e.kind() == Kind::Dir => 0o755,
            // A disk's bytes are its owner's alone; so are the switches.
            Entry::Volume(_) | Entry::ObjectCache => 0o600,
            Entry::SnapVolume(..) => 0o400,
            Entry::SnapshotCtl(_) | Entry::CloneCtl(..) => 0o200,
            _ => 0o444,
        };
        let volatile = e.is_monitor() || matches!(e, Entry::SnapshotCtl(_) | Entry::CloneCtl(..) | Entry::ObjectCache);
        Ok(Attr {
            ino: self.ino(e.clone()),
            kind: e.kind(),
            size,
            perm,
            volatile,
        })
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let e = self.entry(ino)?;
        self.attr_of(e).await
    }

    fn child(parent: &Entry, name: &str) -> Option<Entry> {
        Some(match (parent, name) {
            (Entry::Root, "vdi") => Entry::VdiDir,
            (Entry::Root, "cluster") => Entry::ClusterDir,
            (Entry::Root, "node") => Entry::NodeDir,
            (Entry::Root, "config") => Entry::ConfigDir,
            (Entry::ConfigDir, "object_cache") => Entry::ObjectCache,
            (Entry::VdiDir, "list") => Entry::VdiList,
            (Entry::VdiDir, n) => {
                control::check_name(n).ok()?;
                Entry::Vdi(n.to_string())
            }
            (Entry::ClusterDir, "info") => Entry::ClusterInfo,
            (Entry::ClusterDir, "recovery") => Entry::ClusterRecovery,
            (Entry::ClusterDir, "scrub") => Entry::ClusterScrub,
            (Entry::NodeDir, "list") => Entry::NodeList,
            (Entry::NodeDir, "info") => Entry::NodeInfo,
            (Entry::NodeDir, "metrics") => Entry::NodeMetrics,
            (Entry::Vdi(v), "volume") => Entry::Volume(v.clone()),
            (Entry::Vdi(v), "snapshot") => Entry::SnapshotCtl(v.clone()),
            (Entry::Vdi(v), "info") => Entry::Info(v.clone()),
            (Entry::Vdi(v), "snapshots") => Entry::Snapshots(v.clone()),
            (Entry::Snapshots(v), id) => Entry::Snapshot(v.clone(), id.parse().ok().filter(|&s| s > 0)?),
            (Entry::Snapshot(v, s), "volume") => Entry::SnapVolume(v.clone(), *s),
            (Entry::Snapshot(v, s), "clone") => Entry::CloneCtl(v.clone(), *s),
            _ => return None,
        })
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let p = self.entry(parent)?;
        let e = Self::child(&p, name).ok_or_else(|| FsError::not_found(name))?;
        self.attr_of(e).await
    }

    async fn snapshot_ids(&self, name: &str) -> FsResult<Vec<u32>> {
        let hs = self.backend.vdi_headers().await?;
        Ok(hs
            .iter()
            .filter(|h| h.name == name && h.is_snapshot())
            .map(|h| h.snap_id)
            .collect())
    }

    /// Directory entries (without `.` and `..`).
    pub async fn readdir(&self, ino: u64) -> FsResult<Vec<(u64, Kind, String)>> {
        let e = self.entry(ino)?;
        self.check(&e).await?;
        let names: Vec<String> = match &e {
            Entry::Root => vec!["vdi".into(), "cluster".into(), "node".into(), "config".into()],
            Entry::ConfigDir => vec!["object_cache".into()],
            Entry::VdiDir => {
                let mut v = vec!["list".to_string()];
                let hs = self.backend.vdi_headers().await?;
                v.extend(hs.into_iter().filter(|h| !h.is_snapshot()).map(|h| h.name));
                v
            }
            Entry::ClusterDir => vec!["info".into(), "recovery".into(), "scrub".into()],
            Entry::NodeDir => vec!["list".into(), "info".into(), "metrics".into()],
            Entry::Vdi(_) => vec!["volume".into(), "snapshot".into(), "info".into(), "snapshots".into()],
            Entry::Snapshots(n) => self.snapshot_ids(n).await?.iter().map(u32::to_string).collect(),
            Entry::Snapshot(..) => vec!["volume".into(), "clone".into()],
            _ => return Err(FsError::new(libc::ENOTDIR, "not a directory")),
        };
        Ok(names
            .into_iter()
            .filter_map(|n| Self::child(&e, &n).map(|c| (self.ino(c.clone()), c.kind(), n)))
            .collect())
    }

    /// Opens a file. Returns the handle and whether the kernel must bypass its page cache.
    pub async fn open(&self, ino: u64, access: Access) -> FsResult<(u64, bool)> {
        let e = self.entry(ino)?;
        self.check(&e).await?;
        let write = access.writes();
        match &e {
            _ if e.kind() == Kind::Dir => Err(FsError::new(libc::EISDIR, "is a directory")),
            Entry::SnapVolume(..) if write => Err(FsError::new(libc::EROFS, "snapshots are read-only")),
            _ if e.is_monitor() && write => Err(FsError::new(libc::EACCES, "monitoring files are read-only")),
            _ if e.is_monitor() => {
                let text = self.render(&e).await?;
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.handles).insert(fh, Handle::Text(text.into_bytes()));
                Ok((fh, true))
            }
            Entry::SnapshotCtl(_) | Entry::CloneCtl(..) | Entry::ObjectCache => Ok((0, true)),
            // One writer per VDI in the whole cluster: this mount until it ends. A write-only
            // open (dd, cp) never reads through the kernel's page cache, so its writes may
            // skip it: one copy of every byte fewer, and no page-sized bookkeeping.
            Entry::Volume(n) if write => {
                let direct = self.direct_writes && access == Access::Write;
                self.backend.lock_vdi(n).await.map(|()| (0, direct))
            }
            _ => Ok((0, false)),
        }
    }

    pub fn release(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    async fn render(&self, e: &Entry) -> FsResult<String> {
        match e {
            Entry::VdiList => {
                let hs = self.backend.vdi_headers().await?;
                let mut rows = Vec::with_capacity(hs.len());
                for h in hs {
                    let (used, shared) = self.usage(&h).await?;
                    rows.push((h, used, shared));
                }
                Ok(monitor::vdi_list(&rows))
            }
            Entry::Info(n) => {
                let info = self.backend.vdi_info(n, 0).await?;
                let vid = protocol::Vid::new(info.vid).ok_or_else(|| FsError::new(libc::EIO, "bad vid"))?;
                let ino = self.backend.inode(vid).await?;
                Ok(monitor::vdi_info(&ino.header, &self.snapshot_ids(n).await?))
            }
            Entry::ClusterInfo => {
                let ci = self.backend.cluster_info().await?;
                let epochs = if ci.ctime == 0 {
                    Vec::new()
                } else {
                    self.backend.epoch_log(ci.epoch, ci.nodes.len() as u32).await?
                };
                Ok(monitor::cluster_info(&ci, &epochs))
            }
            Entry::ClusterRecovery => Ok(monitor::recovery(
                &self.ask_each(|a| self.backend.stat_recovery(a)).await?,
            )),
            Entry::ClusterScrub => Ok(monitor::scrub(&self.ask_each(|a| self.backend.stat_scrub(a)).await?)),
            Entry::NodeList => Ok(monitor::node_list(
                &self.ask_each(|a| self.backend.stat_sheep(Some(a))).await?,
            )),
            Entry::NodeInfo => {
                let (size, free) = self.backend.stat_sheep(None).await?;
                let nodes = self.backend.nodes().await?;
                let addr = self.backend.gateway();
                let cache = self.backend.stat_cache().await?;
                Ok(monitor::node_info(
                    nodes.iter().find(|n| n.addr == addr),
                    addr,
                    size,
                    free,
                    &cache,
                ))
            }
            Entry::NodeMetrics => self.backend.metrics().await,
            _ => Err(FsError::invalid("not a monitoring file")),
        }
    }

    /// Every member with its answer to `ask`, or `None` where it gave none in time, in the
    /// order the gateway lists them. Up to [`ASK_AT_ONCE`] are asked at once, so that a
    /// hung node costs its timeout once rather than once more for every node behind it.
    async fn ask_each<T, F, Fut>(&self, ask: F) -> FsResult<Vec<(Node, Option<T>)>>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        let nodes = self.backend.nodes().await?;
        Ok(futures::stream::iter(nodes)
            .map(|n| {
                let answer = ask(n.addr);
                async move { (n, answer.await.ok()) }
            })
            .buffered(ASK_AT_ONCE)
            .collect()
            .await)
    }

    /// Bytes this VDI owns, and bytes it shares with its ancestors.
    async fn usage(&self, h: &InodeHeader) -> FsResult<(u64, u64)> {
        let Some(vid) = protocol::Vid::new(h.vdi_id) else {
            return Ok((0, 0));
        };
        let ino = self.backend.inode(vid).await?;
        let own = ino.data_vdi_id.iter().filter(|&&v| v == h.vdi_id).count() as u64;
        let shared = ino.data_vdi_id.iter().filter(|&&v| v != 0 && v != h.vdi_id).count() as u64;
        Ok((own * h.object_size(), shared * h.object_size()))
    }

    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if let Some(Handle::Text(t)) = lock(&self.handles).get(&fh) {
            return Ok(slice(t, offset, size));
        }
        match self.entry(ino)? {
            Entry::Volume(n) => self.volume(&n, None).await?.read(offset, size).await,
            Entry::SnapVolume(n, s) => self.volume(&n, Some(s)).await?.read(offset, size).await,
            Entry::SnapshotCtl(_) => Ok(slice(b"write 1 or tag=NAME here to take a snapshot\n", offset, size)),
            Entry::ObjectCache => {
                let on = if self.backend.object_cache() { b"1\n" } else { b"0\n" };
                Ok(slice(on, offset, size))
            }
            Entry::CloneCtl(..) => Ok(slice(
                b"write a new VDI name here to clone this snapshot\n",
                offset,
                size,
            )),
            _ => Err(FsError::invalid("not readable")),
        }
    }

    /// Writes to a volume, or performs a control file's action inside the write.
    pub async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        match self.entry(ino)? {
            Entry::Volume(n) if self.backend.lock_lost(&n) => Err(FsError::new(
                libc::EIO,
                format!("VDI {n} was taken for writing by another client"),
            )),
            Entry::Volume(n) => self.volume(&n, None).await?.write(offset, data).await,
            Entry::SnapVolume(..) => Err(FsError::new(libc::EROFS, "snapshots are read-only")),
            Entry::SnapshotCtl(n) => {
                control_offset(offset)?;
                let tag = control::parse_snapshot(data)?;
                self.volume(&n, None).await?.snapshot(&tag).await?;
                Ok(data.len())
            }
            Entry::ObjectCache => {
                control_offset(offset)?;
                let on = control::parse_switch(data)?;
                if !on && self.backend.object_cache() {
                    // Everything the gateway's cache holds for this mount reaches the
                    // replicas, durably, before I/O goes around it.
                    self.flush_all().await?;
                }
                self.backend.set_object_cache(on);
                tracing::info!(on, "object cache switched");
                Ok(data.len())
            }
            Entry::CloneCtl(n, s) => {
                control_offset(offset)?;
                let new = control::parse_clone(data)?;
                match self.backend.vdi_info(&new, 0).await {
                    Ok(_) => return Err(FsError::new(libc::EEXIST, format!("VDI {new} exists already"))),
                    Err(e) if e.errno == libc::ENOENT => {}
                    Err(e) => return Err(e),
                }
                self.volume(&n, Some(s)).await?.clone_to(&new).await?;
                tracing::info!(from = %n, snapshot = s, to = %new, "cloned");
                Ok(data.len())
            }
            _ => Err(FsError::new(libc::EACCES, "not writable")),
        }
    }

    /// `truncate`: grows a volume. A truncation to 0 is ignored, as a block device ignores
    /// O_TRUNC, so `cp image volume` works; any other shrink is refused.
    pub async fn set_size(&self, ino: u64, size: u64) -> FsResult<Attr> {
        match self.entry(ino)? {
            Entry::Volume(n) => {
                if size > 0 {
                    self.volume(&n, None)
                        .await?
                        .resize(size)
                        .await
                        .inspect_err(|e| tracing::warn!(volume = %n, "{e}"))?;
                }
            }
            // `echo > file` truncates before it writes.
            Entry::SnapshotCtl(_) | Entry::CloneCtl(..) | Entry::ObjectCache => {}
            _ => return Err(FsError::new(libc::EACCES, "size cannot change")),
        }
        self.getattr(ino).await
    }

    /// `mkdir /vdi/<name>`: creates an empty VDI (grow it with truncate).
    pub async fn mkdir(&self, parent: u64, name: &str) -> FsResult<Attr> {
        if self.entry(parent)? != Entry::VdiDir {
            return Err(FsError::new(libc::EPERM, "VDIs are created in /vdi only"));
        }
        control::check_name(name)?;
        self.backend.new_vdi(name, NewVdi::default()).await?;
        tracing::info!(vdi = name, "created");
        self.attr_of(Entry::Vdi(name.to_string())).await
    }

    /// `rmdir /vdi/<name>` deletes the working VDI (refused while it has snapshots);
    /// `rmdir /vdi/<name>/snapshots/<id>` deletes that snapshot.
    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        let p = self.entry(parent)?;
        let e = Self::child(&p, name).ok_or_else(|| FsError::not_found(name))?;
        match &e {
            Entry::Vdi(n) => {
                self.backend.vdi_info(n, 0).await?;
                if !self.snapshot_ids(n).await?.is_empty() {
                    return Err(FsError::new(
                        libc::ENOTEMPTY,
                        format!("{n} has snapshots; remove them first"),
                    ));
                }
                let loaded = lock(&self.volumes).get(&(n.clone(), None)).cloned();
                if let Some(v) = loaded {
                    v.flush().await?;
                }
                self.backend.delete_vdi(n, 0).await?;
                lock(&self.volumes).remove(&(n.clone(), None));
                // The cluster dropped the lock with the VDI; forget it here too.
                self.backend.release_vdi(n).await?;
            }
            Entry::Snapshot(n, s) => {
                self.backend.vdi_info(n, *s).await?;
                self.backend.delete_vdi(n, *s).await?;
                lock(&self.volumes).remove(&(n.clone(), Some(*s)));
            }
            _ => return Err(FsError::new(libc::EPERM, "only VDIs and snapshots can be removed")),
        }
        tracing::info!(?e, "deleted");
        Ok(())
    }

    /// `fsync`: durable on every replica before it returns.
    pub async fn fsync(&self, ino: u64) -> FsResult<()> {
        match self.entry(ino)? {
            Entry::Volume(n) => self.volume(&n, None).await?.flush().await,
            _ => Ok(()),
        }
    }

    /// Flushes every loaded volume (unmount, SIGTERM).
    pub async fn flush_all(&self) -> FsResult<()> {
        for (_, v) in self.working_volumes() {
            v.flush().await?;
        }
        Ok(())
    }

    fn working_volumes(&self) -> Vec<(String, Arc<Volume<B>>)> {
        lock(&self.volumes)
            .iter()
            .filter(|(k, _)| k.1.is_none())
            .map(|(k, v)| (k.0.clone(), v.clone()))
            .collect()
    }

    /// The mount ends: every write made durable, then every VDI this mount opened for writing
    /// is free for other clients. Goes on past a failure, and reports the first.
    pub async fn unmount(&self) -> FsResult<()> {
        let mut first = self.flush_all().await.err();
        for (name, _) in self.working_volumes() {
            if let Err(e) = self.backend.release_vdi(&name).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn control_offset(offset: u64) -> FsResult<()> {
    if offset != 0 {
        return Err(FsError::invalid("control files take one write at offset 0"));
    }
    Ok(())
}

fn slice(b: &[u8], offset: u64, size: u32) -> Vec<u8> {
    let start = (offset as usize).min(b.len());
    let end = (start + size as usize).min(b.len());
    b[start..end].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NODE_TIMEOUT;
    use crate::memory::MemoryBackend;

    fn member(port: u16) -> Node {
        Node {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            nr_vnodes: 128,
            zone: u32::from(port),
            space: 0,
        }
    }

    /// Two of three members never answer: `/node/list` waits for them once, not once each,
    /// and keeps the gateway's order, with `-` where no answer came.
    #[tokio::test(start_paused = true)]
    async fn node_list_asks_every_member_at_once_and_keeps_their_order() {
        let members = vec![(member(7001), false), (member(7002), true), (member(7003), false)];
        let fs = Fs::new(Arc::new(MemoryBackend::with_members(members)));
        let start = tokio::time::Instant::now();
        let text = fs.render(&Entry::NodeList).await.expect("/node/list renders");
        assert!(
            start.elapsed() < NODE_TIMEOUT * 2,
            "took {:?}: the hung members were asked one after the other",
            start.elapsed()
        );
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            rows,
            [
                "127.0.0.1:7001 7001 128 - - -",
                "127.0.0.1:7002 7002 128 100 40 60",
                "127.0.0.1:7003 7003 128 - - -",
            ],
            "{text}"
        );
    }
}
