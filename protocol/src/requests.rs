//! Typed requests: one method per request shape that clients (`dog`, `sheepfs`) send, so the
//! byte-level sequences of PROTOCOL.md sections 4-5 are written once.

use crate::bitmap::{VdiBitmap, BITMAP_BYTES};
use crate::bytes::put_cstr;
use crate::client::{Client, ClientError};
use crate::cluster::{ClusterInfo, EpochRecord, CLUSTER_INFO_SIZE};
use crate::header::{ObjArgs, RequestHeader, VdiArgs};
use crate::inode::{data_vdi_id_offset, Inode, InodeHeader, INODE_HEADER_SIZE};
use crate::node::{Node, NODE_SIZE, SD_MAX_NODES};
use crate::oid::{Oid, Vid};
use crate::opcode::{flags, op, ResultCode};

/// A name (and optional tag) as the 256- or 512-byte payload of VDI requests.
pub fn name_payload(name: &str, tag: Option<&str>) -> Vec<u8> {
    let mut b = vec![0u8; if tag.is_some() { 512 } else { 256 }];
    put_cstr(&mut b[..256], name.as_bytes());
    if let Some(t) = tag {
        put_cstr(&mut b[256..], t.as_bytes());
    }
    b
}

/// Most VDIs one SNAPSHOT_VDIS may name.
pub const MAX_SNAPSHOT_VDIS: usize = 1024;

/// A SNAPSHOT_VDIS request: the header and its payload (the tag, then each name, in
/// 256-byte fields).
pub fn snapshot_vdis_request<S: AsRef<str>>(tag: &str, names: &[S]) -> (RequestHeader, Vec<u8>) {
    let mut payload = name_payload(tag, None);
    for n in names {
        payload.extend_from_slice(&name_payload(n.as_ref(), None));
    }
    let mut req = RequestHeader::new(op::SNAPSHOT_VDIS);
    req.flags = flags::WRITE | flags::PIGGYBACK;
    req.data_length = payload.len() as u32;
    (req, payload)
}

/// How a new VDI comes to be.
#[derive(Clone, Copy, Debug, Default)]
pub struct NewVdi {
    pub size: u64,
    /// Parent to clone or snapshot from (0 = a fresh VDI).
    pub base: u32,
    /// Non-zero: take a snapshot of the working VDI of this name.
    pub snapid: u32,
    /// 0 = the cluster default.
    pub copies: u8,
    /// 0 = the cluster default.
    pub block_size_shift: u8,
}

/// One node's recovery progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryState {
    pub running: bool,
    pub done: u64,
    pub total: u64,
    pub recovered_epoch: u32,
}

/// A gateway's object cache (STAT_CACHE, this implementation's own opcode): bytes it may
/// hold (0: no cache), holds, and holds dirty; reads and writes it served from a copy (hits)
/// and those that had to fetch the object first (misses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub limit: u64,
    pub used: u64,
    pub dirty: u64,
    pub hits: u64,
    pub misses: u64,
}

impl CacheStats {
    pub const SIZE: usize = 40;

    /// Hits per request served, in percent (0 before any).
    pub fn hit_ratio(&self) -> f64 {
        let all = self.hits + self.misses;
        if all == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / all as f64
        }
    }
}

/// Longest metrics text a client accepts (STAT_METRICS).
pub const METRICS_MAX: usize = 1 << 20;

/// A VDI located by name: its vid and layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VdiInfo {
    pub vid: u32,
    pub copies: u8,
    pub block_size_shift: u8,
}

fn obj_req(opcode: u8, oid: Oid, offset: u32) -> RequestHeader {
    let mut req = RequestHeader::new(opcode);
    req.set_obj(&ObjArgs {
        oid: oid.0,
        offset,
        ..ObjArgs::default()
    });
    req
}

/// The headers of object I/O, for whoever carries them: [`Client`] over TCP, or a gateway's
/// own exports in process.
pub mod object {
    use super::*;

    /// READ_OBJ of `len` bytes at `offset`, with extra flags (`flags::CACHE`).
    pub fn read(oid: Oid, offset: u32, len: u32, extra: u16) -> RequestHeader {
        let mut req = obj_req(op::READ_OBJ, oid, offset);
        req.flags |= extra;
        req.data_length = len;
        req
    }

    /// WRITE_OBJ of `len` bytes at `offset` into an existing object, with extra flags.
    pub fn write(oid: Oid, offset: u32, len: u32, extra: u16) -> RequestHeader {
        let mut req = obj_req(op::WRITE_OBJ, oid, offset);
        req.flags |= flags::WRITE | extra;
        req.data_length = len;
        req
    }

    /// CREATE_AND_WRITE_OBJ of `len` bytes; with `cow` the object starts as a copy of that one.
    pub fn create(oid: Oid, cow: Option<Oid>, offset: u32, len: u32) -> RequestHeader {
        let mut req = obj_req(op::CREATE_AND_WRITE_OBJ, oid, offset);
        req.flags |= flags::WRITE;
        req.data_length = len;
        if let Some(src) = cow {
            req.flags |= flags::COW;
            let mut a = req.obj();
            a.cow_oid = src.0;
            req.set_obj(&a);
        }
        req
    }

    /// REMOVE_OBJ of `oid` on every replica.
    pub fn remove(oid: Oid) -> RequestHeader {
        obj_req(op::REMOVE_OBJ, oid, 0)
    }

    /// FLUSH_VDI: every write of `vid` so far becomes durable on every replica.
    pub fn flush(vid: Vid) -> RequestHeader {
        obj_req(op::FLUSH_VDI, vid.inode_oid(), 0)
    }
}

impl Client {
    /// READ_OBJ of `len` bytes at `offset`.
    pub async fn read_obj(&self, oid: Oid, offset: u32, len: u32) -> Result<Vec<u8>, ClientError> {
        Ok(self.call(object::read(oid, offset, len, 0), &[]).await?.data)
    }

    /// READ_OBJ into `out` (as many bytes as it is long); returns how many the reply filled.
    pub async fn read_obj_into(&self, oid: Oid, offset: u32, out: &mut [u8]) -> Result<usize, ClientError> {
        self.read_obj_into_with(oid, offset, out, 0).await
    }

    /// [`Client::read_obj_into`] with extra request flags (`flags::CACHE`).
    pub async fn read_obj_into_with(
        &self,
        oid: Oid,
        offset: u32,
        out: &mut [u8],
        extra: u16,
    ) -> Result<usize, ClientError> {
        self.call_into(object::read(oid, offset, out.len() as u32, extra), out)
            .await
    }

    /// WRITE_OBJ into an existing object. A zero-length write is sent as such.
    pub async fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> Result<(), ClientError> {
        self.write_obj_with(oid, offset, data, 0).await
    }

    /// [`Client::write_obj`] with extra request flags (`flags::CACHE`).
    pub async fn write_obj_with(&self, oid: Oid, offset: u32, data: &[u8], extra: u16) -> Result<(), ClientError> {
        let req = object::write(oid, offset, data.len() as u32, extra);
        self.call(req, data).await.map(|_| ())
    }

    /// CREATE_AND_WRITE_OBJ; with `cow` the new object starts as a copy of that one.
    pub async fn create_obj(&self, oid: Oid, cow: Option<Oid>, offset: u32, data: &[u8]) -> Result<(), ClientError> {
        let req = object::create(oid, cow, offset, data.len() as u32);
        self.call(req, data).await.map(|_| ())
    }

    /// REMOVE_OBJ: deletes `oid` on every replica; a missing object is not an error.
    pub async fn remove_obj(&self, oid: Oid) -> Result<(), ClientError> {
        match self.call(object::remove(oid), &[]).await {
            Err(e) if e.result() == Some(ResultCode::NO_OBJ) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Points entry `idx` of `vid`'s inode at `owner`.
    pub async fn set_data_vdi_id(&self, vid: Vid, idx: u32, owner: u32) -> Result<(), ClientError> {
        self.write_obj(vid.inode_oid(), data_vdi_id_offset(idx), &owner.to_le_bytes())
            .await
    }

    /// GET_VDI_INFO: the vid of a working VDI (`snapid` 0, no tag) or of a snapshot.
    pub async fn vdi_info(&self, name: &str, tag: Option<&str>, snapid: u32) -> Result<VdiInfo, ClientError> {
        self.lookup(op::GET_VDI_INFO, name, tag, snapid).await
    }

    /// LOCK_VDI: opens working VDI `name` for writing on this connection (VDI_LOCKED while
    /// another client has it); its vid like [`Client::vdi_info`]. The lock lasts until
    /// [`Client::release_vdi`] or until the connection closes: send it on a client that
    /// keeps one connection open for as long as the writer writes.
    pub async fn lock_vdi(&self, name: &str) -> Result<VdiInfo, ClientError> {
        self.lookup(op::LOCK_VDI, name, None, 0).await
    }

    /// RELEASE_VDI: the lock on `vid` ends, whoever holds it.
    pub async fn release_vdi(&self, vid: Vid) -> Result<(), ClientError> {
        let mut req = RequestHeader::new(op::RELEASE_VDI);
        req.set_vdi(&VdiArgs {
            base_vdi_id: vid.get(),
            ..VdiArgs::default()
        });
        self.call(req, &[]).await.map(|_| ())
    }

    async fn lookup(&self, opcode: u8, name: &str, tag: Option<&str>, snapid: u32) -> Result<VdiInfo, ClientError> {
        let mut req = RequestHeader::new(opcode);
        req.set_vdi(&VdiArgs {
            snapid,
            ..VdiArgs::default()
        });
        let r = self.call(req, &name_payload(name, Some(tag.unwrap_or("")))).await?;
        Ok(VdiInfo {
            vid: r.header.vdi_id(),
            copies: r.header.vdi_copies(),
            block_size_shift: r.header.vdi_block_size_shift(),
        })
    }

    /// The inode header.
    pub async fn inode_header(&self, vid: Vid) -> Result<InodeHeader, ClientError> {
        let b = self.read_obj(vid.inode_oid(), 0, INODE_HEADER_SIZE as u32).await?;
        InodeHeader::decode(&b).ok_or_else(|| self.short_reply(op::READ_OBJ))
    }

    /// The inode header and every `data_vdi_id` entry in use.
    pub async fn inode(&self, vid: Vid) -> Result<Inode, ClientError> {
        let h = self.inode_header(vid).await?;
        let n = h.nr_objects();
        let entries = if n == 0 {
            Vec::new()
        } else {
            self.read_obj(vid.inode_oid(), INODE_HEADER_SIZE as u32, 4 * n).await?
        };
        let mut whole = vec![0u8; INODE_HEADER_SIZE];
        h.encode_into(&mut whole);
        whole.extend_from_slice(&entries);
        Inode::decode(&whole).ok_or_else(|| self.short_reply(op::READ_OBJ))
    }

    fn short_reply(&self, opcode: u8) -> ClientError {
        ClientError::Result {
            addr: self.addr(),
            op: crate::opcode::op_name(opcode),
            result: ResultCode::EIO,
        }
    }

    /// NEW_VDI. Returns the new vid.
    pub async fn new_vdi(&self, name: &str, v: NewVdi) -> Result<VdiInfo, ClientError> {
        let mut req = RequestHeader::new(op::NEW_VDI);
        req.set_vdi(&VdiArgs {
            vdi_size: v.size,
            base_vdi_id: v.base,
            copies: v.copies,
            block_size_shift: v.block_size_shift,
            snapid: v.snapid,
            ..VdiArgs::default()
        });
        let r = self.call(req, &name_payload(name, None)).await?;
        Ok(VdiInfo {
            vid: r.header.vdi_id(),
            copies: r.header.vdi_copies(),
            block_size_shift: r.header.vdi_block_size_shift(),
        })
    }

    /// Snapshots the working VDI `name` (PROTOCOL.md 5.4): the tag goes into the current inode,
    /// then NEW_VDI makes a new working VDI. Returns the new working VDI.
    pub async fn snapshot(&self, name: &str, tag: &str) -> Result<VdiInfo, ClientError> {
        let cur = self.vdi_info(name, None, 0).await?;
        let vid = Vid::new(cur.vid).ok_or_else(|| self.short_reply(op::GET_VDI_INFO))?;
        let h = self.inode_header(vid).await?;
        let mut t = [0u8; 256];
        put_cstr(&mut t, tag.as_bytes());
        self.write_obj(vid.inode_oid(), 256, &t).await?;
        let v = NewVdi {
            size: h.vdi_size,
            base: cur.vid,
            snapid: 1,
            copies: h.nr_copies,
            block_size_shift: h.block_size_shift,
        };
        self.new_vdi(name, v).await
    }

    /// SNAPSHOT_VDIS (this implementation's own), at most [`MAX_SNAPSHOT_VDIS`] names: snapshots of every VDI in `names`, tagged
    /// `tag`, at one moment. Returns (snapshot vid, new working vid) per name, in order.
    pub async fn snapshot_vdis(&self, tag: &str, names: &[String]) -> Result<Vec<(u32, u32)>, ClientError> {
        let (req, payload) = snapshot_vdis_request(tag, names);
        let r = self.call(req, &payload).await?;
        if r.data.len() != 8 * names.len() {
            return Err(self.short_reply(op::SNAPSHOT_VDIS));
        }
        let word = |p: &[u8]| u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        Ok(r.data.chunks_exact(8).map(|p| (word(p), word(&p[4..]))).collect())
    }

    /// Deletes a VDI as `dog vdi delete` does (PROTOCOL.md 5.8): its `data_vdi_id` entries
    /// are cleared in runs, then DEL_VDI.
    pub async fn delete_vdi(&self, name: &str, snapid: u32, tag: Option<&str>) -> Result<u32, ClientError> {
        let info = self.vdi_info(name, tag, snapid).await?;
        let vid = Vid::new(info.vid).ok_or_else(|| self.short_reply(op::GET_VDI_INFO))?;
        let ino = self.inode(vid).await?;
        let runs = zero_runs(&ino.data_vdi_id);
        // DIRECT, as the original's dog sends them: the gateway takes no other write into a
        // snapshot's inode.
        let end = data_vdi_id_offset(ino.data_vdi_id.len() as u32);
        if runs.is_empty() {
            self.write_obj_with(vid.inode_oid(), end, &[], flags::DIRECT).await?;
        }
        for (start, len) in runs {
            let zeros = vec![0u8; 4 * len as usize];
            self.write_obj_with(vid.inode_oid(), data_vdi_id_offset(start), &zeros, flags::DIRECT)
                .await?;
        }
        let mut req = RequestHeader::new(op::DEL_VDI);
        req.set_vdi(&VdiArgs {
            snapid,
            ..VdiArgs::default()
        });
        let r = self.call(req, &name_payload(name, Some(tag.unwrap_or("")))).await?;
        Ok(r.header.vdi_id())
    }

    /// Sets a VDI's size (PROTOCOL.md 5.11 `vdi resize`).
    pub async fn set_vdi_size(&self, vid: Vid, size: u64) -> Result<(), ClientError> {
        self.write_obj(vid.inode_oid(), 536, &size.to_le_bytes()).await
    }

    /// READ_VDIS or READ_DEL_VDIS.
    pub async fn vdi_bitmap(&self, deleted: bool) -> Result<VdiBitmap, ClientError> {
        let mut req = RequestHeader::new(if deleted { op::READ_DEL_VDIS } else { op::READ_VDIS });
        req.data_length = BITMAP_BYTES as u32;
        let r = self.call(req, &[]).await?;
        VdiBitmap::from_bytes(r.data).ok_or_else(|| self.short_reply(req_op(deleted)))
    }

    /// Headers of every VDI in use and not deleted, in vid order.
    pub async fn vdi_headers(&self) -> Result<Vec<InodeHeader>, ClientError> {
        let in_use = self.vdi_bitmap(false).await?;
        let deleted = self.vdi_bitmap(true).await?;
        let mut out = Vec::new();
        for vid in in_use.iter().filter(|&v| !deleted.get(v)).filter_map(Vid::new) {
            let h = self.inode_header(vid).await?;
            if !h.is_deleted() {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// GET_NODE_LIST.
    pub async fn nodes(&self) -> Result<Vec<Node>, ClientError> {
        let mut req = RequestHeader::new(op::GET_NODE_LIST);
        req.data_length = (SD_MAX_NODES * NODE_SIZE) as u32;
        Ok(Node::decode_list(&self.call(req, &[]).await?.data))
    }

    /// CLUSTER_INFO.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, ClientError> {
        let mut req = RequestHeader::new(op::CLUSTER_INFO);
        req.data_length = CLUSTER_INFO_SIZE as u32;
        let r = self.call(req, &[]).await?;
        ClusterInfo::decode(&r.data).ok_or_else(|| self.short_reply(op::CLUSTER_INFO))
    }

    /// STAT_CLUSTER with room for `nodes_nr` nodes per record; doubles on BUFFER_SMALL.
    pub async fn epoch_log(&self, epochs: u32, mut nodes_nr: u32) -> Result<Vec<EpochRecord>, ClientError> {
        loop {
            let mut req = RequestHeader::new(op::STAT_CLUSTER);
            req.data_length = epochs.max(1) * EpochRecord::stride(nodes_nr as usize) as u32;
            let mut a = req.cluster();
            a.nodes_nr = nodes_nr;
            req.set_cluster(&a);
            match self.call(req, &[]).await {
                Ok(r) => return Ok(EpochRecord::decode_all(&r.data, nodes_nr as usize)),
                Err(e) if e.result() == Some(ResultCode::BUFFER_SMALL) && nodes_nr < SD_MAX_NODES as u32 => {
                    nodes_nr = (nodes_nr * 2).max(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// STAT_SHEEP: (store size, store free) of the node this client talks to.
    pub async fn stat_sheep(&self) -> Result<(u64, u64), ClientError> {
        let r = self.call(RequestHeader::new(op::STAT_SHEEP), &[]).await?;
        Ok((r.header.store_size(), r.header.store_free()))
    }

    /// SET_VNODES: fixes the vnodes of the node this client talks to (`0`: back to its
    /// capacity's share). The cluster agrees on it as an event: a new epoch and a recovery.
    pub async fn set_vnodes(&self, vnodes: u16) -> Result<(), ClientError> {
        let mut req = RequestHeader::new(op::SET_VNODES);
        req.flags = flags::WRITE;
        req.data_length = 4;
        self.call(req, &u32::from(vnodes).to_le_bytes()).await.map(drop)
    }

    /// GET_VDI_ATTR: finds (with `flags` CREAT, EXCL, DEL: sets or deletes) the attribute
    /// `a` names. Returns the oid of its object.
    pub async fn get_vdi_attr(&self, a: &crate::attr::VdiAttr, flags: u16) -> Result<Oid, ClientError> {
        let payload = a.encode();
        let mut req = RequestHeader::new(op::GET_VDI_ATTR);
        req.flags = flags | flags::WRITE;
        req.data_length = payload.len() as u32;
        req.set_vdi(&VdiArgs {
            snapid: a.snap_id,
            ..VdiArgs::default()
        });
        let r = self.call(req, &payload).await?;
        Ok(Oid(crate::attr::attr_oid(r.header.vdi_id(), r.header.attr_id())))
    }

    /// STAT_SCRUB: the node's background scrub.
    pub async fn stat_scrub(&self) -> Result<crate::stats::ScrubStats, ClientError> {
        let mut req = RequestHeader::new(op::STAT_SCRUB);
        req.data_length = crate::stats::ScrubStats::MAX_SIZE as u32;
        let r = self.call(req, &[]).await?;
        crate::stats::ScrubStats::decode(&r.data).ok_or_else(|| self.short_reply(op::STAT_SCRUB))
    }

    /// STAT: the node's request counters.
    pub async fn stat(&self) -> Result<crate::stats::NodeStat, ClientError> {
        let mut req = RequestHeader::new(op::STAT);
        req.data_length = crate::stats::NodeStat::SIZE as u32;
        let r = self.call(req, &[]).await?;
        crate::stats::NodeStat::decode(&r.data).ok_or_else(|| self.short_reply(op::STAT))
    }

    /// MD_INFO: the disks of the node's store.
    pub async fn md_info(&self) -> Result<Vec<crate::stats::MdDisk>, ClientError> {
        let mut req = RequestHeader::new(op::MD_INFO);
        req.data_length = crate::stats::MD_INFO_SIZE as u32;
        let r = self.call(req, &[]).await?;
        crate::stats::decode_md_info(&r.data).ok_or_else(|| self.short_reply(op::MD_INFO))
    }

    /// STAT_METRICS: the node's metrics as Prometheus/OpenMetrics text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let mut req = RequestHeader::new(op::STAT_METRICS);
        req.data_length = METRICS_MAX as u32;
        let r = self.call(req, &[]).await?;
        String::from_utf8(r.data).map_err(|_| self.short_reply(op::STAT_METRICS))
    }

    /// STAT_CACHE: the figures of this gateway's object cache.
    pub async fn stat_cache(&self) -> Result<CacheStats, ClientError> {
        let mut req = RequestHeader::new(op::STAT_CACHE);
        req.data_length = CacheStats::SIZE as u32;
        let r = self.call(req, &[]).await?;
        let v: Vec<u64> = r
            .data
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        match v[..] {
            [limit, used, dirty, hits, misses] => Ok(CacheStats {
                limit,
                used,
                dirty,
                hits,
                misses,
            }),
            _ => Err(self.short_reply(op::STAT_CACHE)),
        }
    }

    /// STAT_RECOVERY: the node's recovery progress (PROTOCOL.md 2.7), plus the last epoch
    /// whose recovery finished there.
    pub async fn stat_recovery(&self) -> Result<RecoveryState, ClientError> {
        let mut req = RequestHeader::new(op::STAT_RECOVERY);
        req.data_length = 24;
        let r = self.call(req, &[]).await?;
        if r.data.len() < 24 {
            return Err(self.short_reply(op::STAT_RECOVERY));
        }
        let u64_at = |o: usize| u64::from_le_bytes(r.data[o..o + 8].try_into().unwrap_or_default());
        Ok(RecoveryState {
            running: r.data[0] != 0,
            done: u64_at(8),
            total: u64_at(16),
            recovered_epoch: r.header.recovered_epoch(),
        })
    }

    /// FLUSH_VDI: every write so far becomes durable on every replica.
    pub async fn flush_vdi(&self, vid: Vid) -> Result<(), ClientError> {
        self.call(object::flush(vid), &[]).await.map(|_| ())
    }
}

fn req_op(deleted: bool) -> u8 {
    if deleted {
        op::READ_DEL_VDIS
    } else {
        op::READ_VDIS
    }
}

/// The inode-entry runs `dog vdi delete` clears: from each non-zero entry, a run that holds
/// up to 128 non-zero entries (zeros inside included) or reaches the end.
pub fn zero_runs(entries: &[u32]) -> Vec<(u32, u32)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        if entries[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut used = 0;
        while i < entries.len() && used < 128 {
            used += usize::from(entries[i] != 0);
            i += 1;
        }
        runs.push((start as u32, (i - start) as u32));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_runs() {
        assert!(zero_runs(&[0, 0, 0]).is_empty());
        assert_eq!(zero_runs(&[0, 5, 0, 5, 0]), vec![(1, 4)]);
        let mut v = vec![7u32; 300];
        v[0] = 0;
        assert_eq!(zero_runs(&v), vec![(1, 128), (129, 128), (257, 43)]);
    }

    #[test]
    fn name_payloads() {
        let p = name_payload("test", Some("t"));
        assert_eq!(p.len(), 512);
        assert_eq!(&p[..5], b"test\0");
        assert_eq!(&p[256..258], b"t\0");
        assert_eq!(name_payload("x", None).len(), 256);
    }
}
