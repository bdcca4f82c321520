//! An in-memory [`Backend`] for tests of the filesystem core: objects are sparse byte
//! vectors, VDIs are inode objects in the same map, and the rules that matter to a client
//! (missing objects, read-only snapshot data, copy-on-write sources) are enforced.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use protocol::cluster::{ClusterInfo, EpochRecord};
use protocol::inode::{Inode, InodeHeader, DEFAULT_BLOCK_SIZE_SHIFT, INODE_HEADER_SIZE};
use protocol::node::Node;
use protocol::requests::{CacheStats, NewVdi, RecoveryState, VdiInfo};
use protocol::{Oid, Vid};

use crate::backend::{Backend, NODE_TIMEOUT};
use volume::{FsError, FsResult, ObjectIo};

#[derive(Default)]
pub struct MemoryBackend {
    objects: Mutex<HashMap<Oid, Vec<u8>>>,
    next_vid: Mutex<u32>,
    cache_on: std::sync::atomic::AtomicBool,
    /// Members the gateway lists, each with whether it answers; those that do not take
    /// [`NODE_TIMEOUT`] to fail, as the real backend's timeout does.
    members: Vec<(Node, bool)>,
}

fn eio(what: impl std::fmt::Display) -> FsError {
    FsError::new(libc::EIO, what.to_string())
}

impl MemoryBackend {
    /// A backend whose gateway lists these members; `true` ones answer every question at
    /// once, the others never do.
    pub fn with_members(members: Vec<(Node, bool)>) -> MemoryBackend {
        MemoryBackend {
            members,
            ..MemoryBackend::default()
        }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, HashMap<Oid, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inodes(&self) -> Vec<Inode> {
        let objs = self.objects();
        let mut v: Vec<Inode> = objs
            .iter()
            .filter(|(o, _)| o.is_inode())
            .filter_map(|(_, b)| Inode::decode(b))
            .collect();
        v.sort_by_key(|i| i.header.vdi_id);
        v
    }

    fn put_inode(&self, ino: &Inode) {
        if let Some(vid) = Vid::new(ino.header.vdi_id) {
            self.objects().insert(vid.inode_oid(), ino.encode());
        }
    }

    /// A snapshot's data object or inode: read-only, as the gateway has it (READONLY).
    fn belongs_to_snapshot(&self, oid: Oid) -> bool {
        self.objects()
            .get(&oid.vid().inode_oid())
            .and_then(|b| InodeHeader::decode(b))
            .is_some_and(|h| h.is_snapshot())
    }

    fn find(&self, name: &str, snapid: u32) -> FsResult<Inode> {
        self.inodes()
            .into_iter()
            .rev()
            .find(|i| {
                i.header.name == name
                    && (if snapid == 0 {
                        !i.header.is_snapshot()
                    } else {
                        i.header.snap_id == snapid && i.header.is_snapshot()
                    })
            })
            .ok_or_else(|| FsError::not_found(name))
    }
}

fn info(h: &InodeHeader) -> VdiInfo {
    VdiInfo {
        vid: h.vdi_id,
        copies: h.nr_copies,
        block_size_shift: h.block_size_shift,
    }
}

impl ObjectIo for MemoryBackend {
    async fn read_obj(&self, oid: Oid, offset: u32, out: &mut [u8]) -> FsResult<usize> {
        let objs = self.objects();
        let b = objs.get(&oid).ok_or_else(|| eio(format!("object {oid} missing")))?;
        let start = (offset as usize).min(b.len());
        let end = (offset as usize + out.len()).min(b.len());
        out[..end - start].copy_from_slice(&b[start..end]);
        out[end - start..].fill(0);
        Ok(out.len())
    }

    async fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> FsResult<()> {
        if self.belongs_to_snapshot(oid) {
            return Err(FsError::new(libc::EROFS, format!("object {oid} belongs to a snapshot")));
        }
        let mut objs = self.objects();
        let b = objs.get_mut(&oid).ok_or_else(|| eio(format!("object {oid} missing")))?;
        let end = offset as usize + data.len();
        if b.len() < end {
            b.resize(end, 0);
        }
        b[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    async fn create_obj(&self, oid: Oid, cow: Option<Oid>, offset: u32, data: &[u8]) -> FsResult<()> {
        if self.belongs_to_snapshot(oid) {
            return Err(FsError::new(libc::EROFS, format!("object {oid} belongs to a snapshot")));
        }
        let mut objs = self.objects();
        let mut b = match cow {
            Some(src) => objs
                .get(&src)
                .cloned()
                .ok_or_else(|| eio(format!("cow source {src} missing")))?,
            None => Vec::new(),
        };
        let end = offset as usize + data.len();
        if b.len() < end {
            b.resize(end, 0);
        }
        b[offset as usize..end].copy_from_slice(data);
        objs.insert(oid, b);
        Ok(())
    }

    async fn remove_obj(&self, oid: Oid) -> FsResult<()> {
        if self.belongs_to_snapshot(oid) {
            return Err(FsError::new(libc::EROFS, format!("removal of snapshot data {oid}")));
        }
        self.objects().remove(&oid);
        Ok(())
    }

    async fn vdi_info(&self, name: &str, snapid: u32) -> FsResult<VdiInfo> {
        self.find(name, snapid).map(|i| info(&i.header))
    }

    async fn inode(&self, vid: Vid) -> FsResult<Inode> {
        let objs = self.objects();
        let b = objs
            .get(&vid.inode_oid())
            .ok_or_else(|| eio(format!("inode {vid} missing")))?;
        let mut whole = b.clone();
        whole.resize(whole.len().max(INODE_HEADER_SIZE), 0);
        Inode::decode(&whole).ok_or_else(|| eio("short inode"))
    }

    async fn new_vdi(&self, name: &str, v: NewVdi) -> FsResult<VdiInfo> {
        let vid = {
            let mut n = self.next_vid.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let mut h = InodeHeader {
            name: name.to_string(),
            vdi_size: v.size,
            nr_copies: if v.copies == 0 { 3 } else { v.copies },
            block_size_shift: if v.block_size_shift == 0 {
                DEFAULT_BLOCK_SIZE_SHIFT
            } else {
                v.block_size_shift
            },
            vdi_id: vid,
            snap_id: 1,
            create_time: 1,
            ..InodeHeader::default()
        };
        let mut entries = Vec::new();
        if v.snapid != 0 {
            let mut cur = self.find(name, 0)?;
            h.snap_id = cur.header.snap_id + 1;
            cur.header.snap_ctime = 1;
            self.put_inode(&cur);
        } else if self.find(name, 0).is_ok() {
            return Err(FsError::new(libc::EEXIST, format!("{name} exists")));
        }
        if v.base != 0 {
            let base = self.inode(Vid::new(v.base).ok_or_else(|| eio("bad base"))?).await?;
            h.parent_vdi_id = v.base;
            entries = base.data_vdi_id;
        }
        entries.resize(h.nr_objects() as usize, 0);
        let ino = Inode {
            header: h,
            data_vdi_id: entries,
        };
        self.put_inode(&ino);
        Ok(info(&ino.header))
    }

    async fn snapshot(&self, name: &str, tag: &str) -> FsResult<VdiInfo> {
        let mut cur = self.find(name, 0)?;
        cur.header.tag = tag.to_string();
        self.put_inode(&cur);
        let v = NewVdi {
            size: cur.header.vdi_size,
            base: cur.header.vdi_id,
            snapid: 1,
            copies: cur.header.nr_copies,
            block_size_shift: cur.header.block_size_shift,
        };
        self.new_vdi(name, v).await
    }

    async fn set_vdi_size(&self, vid: Vid, size: u64) -> FsResult<()> {
        self.write_obj(vid.inode_oid(), 536, &size.to_le_bytes()).await
    }

    async fn flush(&self, _vid: Vid) -> FsResult<()> {
        Ok(())
    }
}

impl Backend for MemoryBackend {
    fn gateway(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000))
    }

    /// One client: every lock is granted.
    async fn lock_vdi(&self, _name: &str) -> FsResult<()> {
        Ok(())
    }

    async fn release_vdi(&self, _name: &str) -> FsResult<()> {
        Ok(())
    }

    fn lock_lost(&self, _name: &str) -> bool {
        false
    }

    async fn stat_cache(&self) -> FsResult<CacheStats> {
        Ok(CacheStats::default())
    }

    /// No daemon here, so no counters: an exposition with nothing but its end.
    async fn metrics(&self) -> FsResult<String> {
        Ok("# EOF\n".into())
    }

    /// No cache here: the switch is only remembered.
    fn object_cache(&self) -> bool {
        self.cache_on.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_object_cache(&self, on: bool) {
        self.cache_on.store(on, std::sync::atomic::Ordering::Release);
    }

    async fn vdi_headers(&self) -> FsResult<Vec<InodeHeader>> {
        Ok(self
            .inodes()
            .into_iter()
            .map(|i| i.header)
            .filter(|h| !h.is_deleted())
            .collect())
    }

    async fn delete_vdi(&self, name: &str, snapid: u32) -> FsResult<()> {
        let mut ino = self.find(name, snapid)?;
        ino.header.name.clear();
        ino.data_vdi_id.clear();
        self.put_inode(&ino);
        Ok(())
    }

    async fn cluster_info(&self) -> FsResult<ClusterInfo> {
        Ok(ClusterInfo {
            epoch: 1,
            ctime: 1 << 32,
            nr_copies: 3,
            status: 1,
            block_size_shift: 22,
            ..ClusterInfo::default()
        })
    }

    async fn epoch_log(&self, _epochs: u32, _nodes: u32) -> FsResult<Vec<EpochRecord>> {
        Ok(vec![EpochRecord {
            epoch: 1,
            ..EpochRecord::default()
        }])
    }

    async fn nodes(&self) -> FsResult<Vec<Node>> {
        Ok(self.members.iter().map(|(n, _)| n.clone()).collect())
    }

    async fn stat_recovery(&self, _node: SocketAddr) -> FsResult<RecoveryState> {
        Ok(RecoveryState::default())
    }

    async fn stat_scrub(&self, _node: SocketAddr) -> FsResult<protocol::stats::ScrubStats> {
        Ok(protocol::stats::ScrubStats::default())
    }

    async fn stat_sheep(&self, node: Option<SocketAddr>) -> FsResult<(u64, u64)> {
        let answers = node.is_none_or(|a| self.members.iter().any(|(n, up)| n.addr == a && *up));
        if !answers {
            tokio::time::sleep(NODE_TIMEOUT).await;
            return Err(eio(format!("node stat: {node:?} timed out")));
        }
        Ok((100, 40))
    }
}
