//! A VDI's bytes as a file: reads and writes at any offset, split at object boundaries,
//! with copy-on-write after a snapshot (PROTOCOL.md 5.12).
//!
//! The inode's `data_vdi_id[]` is held in memory (4 bytes per object). Object I/O of one
//! request runs concurrently. Creating an object (first write, or copy-on-write) is
//! serialised per object, so two writers never both create it; writes into objects this VDI
//! already owns go straight through. Snapshot and resize take the volume exclusively.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::future::join_all;
use protocol::inode::{Inode, MAX_DATA_OBJS};
use protocol::requests::NewVdi;
use protocol::Vid;
use tokio::sync::{Mutex, RwLock};

use crate::error::{FsError, FsResult};
use crate::span::{pieces, Piece};
use crate::ObjectIo;

const CREATE_STRIPES: usize = 256;
/// The largest run of zeros one write of [`Volume::write_zeroes`] sends.
const ZERO_CHUNK: usize = 1 << 20;

/// The largest object request one volume request is cut into. A 1 MiB FUSE write becomes
/// four requests in flight at once, which the gateway, the replicas and the disks overlap
/// (one 1 MiB request at a time leaves most of the path idle). Configurable per mount
/// (`--chunk-kib`).
pub const DEFAULT_CHUNK: u32 = 256 << 10;

struct Layout {
    vid: Vid,
    size: u64,
    block_size_shift: u8,
    /// `data_vdi_id[]`, one entry per object of the current size.
    entries: Vec<AtomicU32>,
}

impl Layout {
    fn from_inode(ino: Inode) -> FsResult<Layout> {
        let vid = Vid::new(ino.header.vdi_id).ok_or_else(|| FsError::new(libc::EIO, "inode with a bad vid"))?;
        Ok(Layout {
            vid,
            size: ino.header.vdi_size,
            block_size_shift: ino.header.block_size_shift,
            entries: ino.data_vdi_id.into_iter().map(AtomicU32::new).collect(),
        })
    }

    fn object_size(&self) -> u64 {
        1 << self.block_size_shift
    }
}

pub struct Volume<B> {
    backend: Arc<B>,
    name: String,
    /// Set for a snapshot's volume, which is read-only.
    snap_id: Option<u32>,
    layout: RwLock<Layout>,
    creating: Vec<Mutex<()>>,
    /// Largest object request (see [`DEFAULT_CHUNK`]).
    chunk: u32,
}

impl<B: ObjectIo> Volume<B> {
    /// Loads the working VDI `name` (`snap_id` None) or one of its snapshots.
    /// Requests to the gateway are at most `chunk` bytes.
    pub async fn open(backend: Arc<B>, name: &str, snap_id: Option<u32>, chunk: u32) -> FsResult<Volume<B>> {
        let layout = Self::load(&backend, name, snap_id).await?;
        Ok(Volume {
            backend,
            name: name.to_string(),
            snap_id,
            layout: RwLock::new(layout),
            creating: (0..CREATE_STRIPES).map(|_| Mutex::new(())).collect(),
            chunk: chunk.max(1),
        })
    }

    async fn load(backend: &B, name: &str, snap_id: Option<u32>) -> FsResult<Layout> {
        let info = backend.vdi_info(name, snap_id.unwrap_or(0)).await?;
        let vid = Vid::new(info.vid).ok_or_else(|| FsError::new(libc::EIO, "lookup returned a bad vid"))?;
        Layout::from_inode(backend.inode(vid).await?)
    }

    pub fn read_only(&self) -> bool {
        self.snap_id.is_some()
    }

    pub async fn size(&self) -> u64 {
        self.layout.read().await.size
    }

    pub async fn vid(&self) -> Vid {
        self.layout.read().await.vid
    }

    /// Before a working volume answers zeros for objects its map shows unallocated, reads
    /// those entries of the inode again (one request for the range): another client may
    /// have written them since this map was loaded, and answering zeros then would invent
    /// data. A snapshot's map never changes.
    async fn refresh_holes(&self, l: &Layout, ps: &[Piece]) -> FsResult<()> {
        if self.read_only() {
            return Ok(());
        }
        let hole = |p: &&Piece| {
            l.entries
                .get(p.idx as usize)
                .is_some_and(|e| e.load(Ordering::Acquire) == 0)
        };
        let (Some(lo), Some(hi)) = (
            ps.iter().filter(hole).map(|p| p.idx).min(),
            ps.iter().filter(hole).map(|p| p.idx).max(),
        ) else {
            return Ok(());
        };
        let mut raw = vec![0u8; 4 * (hi - lo + 1) as usize];
        let at = protocol::inode::data_vdi_id_offset(lo);
        let n = self.backend.read_obj(l.vid.inode_oid(), at, &mut raw).await?;
        if n != raw.len() {
            return Err(FsError::new(
                libc::EIO,
                format!("inode of {} answered {n} bytes of its map", self.name),
            ));
        }
        for (i, b) in raw.chunks_exact(4).enumerate() {
            let owner = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if let Some(e) = l.entries.get(lo as usize + i) {
                if owner != 0
                    && e.compare_exchange(0, owner, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    tracing::debug!(volume = %self.name, idx = lo as usize + i, owner, "object allocated by another client");
                }
            }
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`; short at the end of the volume. Never-written
    /// blocks read as zeros; a block that cannot be read fails the whole read with EIO.
    /// Every piece lands straight in its place in the answer.
    pub async fn read(&self, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        let l = self.layout.read().await;
        let end = (offset + u64::from(len)).min(l.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let ps: Vec<Piece> = pieces(offset, end - offset, l.object_size(), self.chunk.into()).collect();
        self.refresh_holes(&l, &ps).await?;
        // Zeroed: a hole is already in place.
        let mut buf = vec![0u8; (end - offset) as usize];
        let mut rest = buf.as_mut_slice();
        let mut reads = Vec::new();
        for p in ps {
            let (out, tail) = std::mem::take(&mut rest).split_at_mut(p.len as usize);
            rest = tail;
            let owner = l.entries.get(p.idx as usize).map_or(0, |e| e.load(Ordering::Acquire));
            if owner == 0 {
                continue;
            }
            reads.push(async move {
                let oid = Vid::new(owner)
                    .ok_or_else(|| FsError::new(libc::EIO, "bad owner vid"))?
                    .data_oid(p.idx);
                let n = self.backend.read_obj(oid, p.offset, out).await.inspect_err(|e| {
                    tracing::error!(volume = %self.name, %oid, error = %e, "volume read failed");
                })?;
                if n != out.len() {
                    tracing::error!(volume = %self.name, %oid, answered = n, asked = out.len(), "short read from the gateway");
                    return Err(FsError::new(
                        libc::EIO,
                        format!("object {oid} answered {n} bytes for a read of {}", out.len()),
                    ));
                }
                Ok::<_, FsError>(())
            });
        }
        for r in join_all(reads).await {
            r?;
        }
        Ok(buf)
    }

    /// What backs `[offset, offset + len)` (clipped to the volume): runs of (bytes, holds
    /// data), in order. A run without data has no object behind it and reads as zeros; the
    /// inode's entries for such runs are read again first, as for a read.
    pub async fn allocation(&self, offset: u64, len: u64) -> FsResult<Vec<(u64, bool)>> {
        let l = self.layout.read().await;
        let end = offset.saturating_add(len).min(l.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let obj = l.object_size();
        let ps: Vec<Piece> = pieces(offset, end - offset, obj, obj).collect();
        self.refresh_holes(&l, &ps).await?;
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for p in ps {
            let data = l
                .entries
                .get(p.idx as usize)
                .is_some_and(|e| e.load(Ordering::Acquire) != 0);
            match runs.last_mut() {
                Some((n, d)) if *d == data => *n += u64::from(p.len),
                _ => runs.push((u64::from(p.len), data)),
            }
        }
        Ok(runs)
    }

    /// Writes `data` at `offset`. Returns when every replica has the bytes.
    pub async fn write(&self, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.changing(|| self.write_once(offset, data)).await
    }

    async fn write_once(&self, offset: u64, data: &[u8]) -> FsResult<usize> {
        let l = self.writable(offset, data.len() as u64).await?;
        let all: Vec<Piece> = pieces(offset, data.len() as u64, l.object_size(), self.chunk.into()).collect();
        let writes = all
            .chunk_by(|a, b| a.idx == b.idx)
            .map(|group| self.write_object(&l, group, data));
        for r in join_all(writes).await {
            r?;
        }
        Ok(data.len())
    }

    /// Writes the pieces of one object (`group`, all with the same index; `data` is the whole
    /// request's buffer). If this VDI does not own the object yet, the first piece creates it
    /// (copying the snapshot's object, if any), then the inode is pointed at it while the other
    /// pieces land; other writers of the object wait until then.
    async fn write_object(&self, l: &Layout, group: &[Piece], data: &[u8]) -> FsResult<()> {
        let Some((first, rest)) = group.split_first() else {
            return Ok(());
        };
        let idx = first.idx;
        let entry = l
            .entries
            .get(idx as usize)
            .ok_or_else(|| FsError::invalid("index past the volume"))?;
        let oid = l.vid.data_oid(idx);
        let log = |e: FsError| {
            tracing::error!(volume = %self.name, %oid, error = %e, "volume write failed");
            e
        };
        if entry.load(Ordering::Acquire) == l.vid.get() {
            return self.write_pieces(oid, group, data).await.map_err(log);
        }
        let creating = self.creating[idx as usize % CREATE_STRIPES].lock().await;
        let owner = entry.load(Ordering::Acquire);
        if owner == l.vid.get() {
            drop(creating);
            return self.write_pieces(oid, group, data).await.map_err(log);
        }
        let cow = Vid::new(owner).filter(|v| v.get() != 0).map(|v| v.data_oid(idx));
        let body = &data[first.buf..first.buf + first.len as usize];
        self.backend
            .create_obj(oid, cow, first.offset, body)
            .await
            .map_err(log)?;
        let vid = l.vid.get().to_le_bytes();
        let point_inode = self
            .backend
            .write_obj(l.vid.inode_oid(), protocol::inode::data_vdi_id_offset(idx), &vid);
        let (pointed, landed) = futures::future::join(point_inode, self.write_pieces(oid, rest, data)).await;
        pointed.map_err(log)?;
        landed.map_err(log)?;
        entry.store(l.vid.get(), Ordering::Release);
        Ok(())
    }

    async fn write_pieces(&self, oid: protocol::Oid, ps: &[Piece], data: &[u8]) -> FsResult<()> {
        let writes = ps.iter().map(|p| {
            self.backend
                .write_obj(oid, p.offset, &data[p.buf..p.buf + p.len as usize])
        });
        for r in join_all(writes).await {
            r?;
        }
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeros. Objects the range covers whole are
    /// dropped from the map when `punch` allows it (and removed, when this VDI owns them);
    /// the rest is written with zeros, except objects that hold none of this VDI's data yet
    /// and read as zeros already.
    pub async fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> FsResult<()> {
        self.changing(|| self.write_zeroes_once(offset, len, punch)).await
    }

    async fn write_zeroes_once(&self, offset: u64, len: u64, punch: bool) -> FsResult<()> {
        let l = self.writable(offset, len).await?;
        let obj = l.object_size();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let idx = pos / obj;
            let stop = ((idx + 1) * obj).min(end);
            if punch && stop - pos == obj {
                self.drop_object(&l, idx as u32).await?;
            } else if self.owner(&l, idx as u32).await? != 0 {
                self.write_zeros_in(&l, pos, stop).await?;
            }
            pos = stop;
        }
        Ok(())
    }

    /// A discard: objects the range covers whole are dropped; partial ones keep their bytes
    /// (a discard only says the client no longer needs them).
    pub async fn discard(&self, offset: u64, len: u64) -> FsResult<()> {
        self.changing(|| self.discard_once(offset, len)).await
    }

    async fn discard_once(&self, offset: u64, len: u64) -> FsResult<()> {
        let l = self.writable(offset, len).await?;
        let obj = l.object_size();
        let first = offset.div_ceil(obj);
        let last = (offset + len) / obj;
        for idx in first..last {
            self.drop_object(&l, idx as u32).await?;
        }
        Ok(())
    }

    /// Runs change `f`. If it met a snapshot's read-only objects because another client
    /// snapshotted this VDI meanwhile (`dog vdi snapshot` of an attached VDI), loads the new
    /// working VDI, as the original's QEMU driver did, and runs `f` once more there.
    async fn changing<T, F, Fut>(&self, f: F) -> FsResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = FsResult<T>>,
    {
        let before = self.vid().await;
        match f().await {
            Err(e) if e.errno == libc::EROFS && !self.read_only() => {
                if self.follow_snapshot(before).await? {
                    f().await
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    /// After a change to working VDI `failed` met read-only objects: true if this volume
    /// now writes another working VDI of its name (loaded here, or by a concurrent change).
    async fn follow_snapshot(&self, failed: Vid) -> FsResult<bool> {
        let mut l = self.layout.write().await;
        if l.vid != failed {
            return Ok(true);
        }
        let fresh = Self::load(&self.backend, &self.name, None).await?;
        if fresh.vid == l.vid {
            return Ok(false);
        }
        tracing::info!(volume = %self.name, old = %l.vid, new = %fresh.vid, "snapshotted by another client; writing the new working VDI");
        *l = fresh;
        Ok(true)
    }

    /// The layout, for a change of `[offset, offset + len)`: EROFS for a snapshot, ENOSPC
    /// past the end.
    async fn writable(&self, offset: u64, len: u64) -> FsResult<tokio::sync::RwLockReadGuard<'_, Layout>> {
        if self.read_only() {
            return Err(FsError::new(
                libc::EROFS,
                format!("{}: snapshots are read-only", self.name),
            ));
        }
        let l = self.layout.read().await;
        if offset.checked_add(len).is_none_or(|end| end > l.size) {
            return Err(FsError::new(
                libc::ENOSPC,
                format!("{}: write past the end of the volume", self.name),
            ));
        }
        Ok(l)
    }

    /// Who owns object `idx` now, the inode's entry read again if the map shows a hole.
    async fn owner(&self, l: &Layout, idx: u32) -> FsResult<u32> {
        let piece = Piece {
            idx,
            offset: 0,
            len: 0,
            buf: 0,
        };
        self.refresh_holes(l, &[piece]).await?;
        Ok(l.entries.get(idx as usize).map_or(0, |e| e.load(Ordering::Acquire)))
    }

    /// Writes zeros over `[pos, end)`, inside one object, a bounded buffer at a time.
    async fn write_zeros_in(&self, l: &Layout, mut pos: u64, end: u64) -> FsResult<()> {
        static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
        while pos < end {
            let n = (end - pos).min(ZERO_CHUNK as u64) as usize;
            let group: Vec<Piece> = pieces(pos, n as u64, l.object_size(), self.chunk.into()).collect();
            self.write_object(l, &group, &ZEROS[..n]).await?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Points entry `idx` at nothing, so the object reads as zeros, then removes the object
    /// if this VDI owned it (a snapshot's object stays: the snapshot still refers to it).
    /// The map changes first: a crash in between leaves an unreferenced object, never a
    /// reference to a missing one.
    async fn drop_object(&self, l: &Layout, idx: u32) -> FsResult<()> {
        let entry = l
            .entries
            .get(idx as usize)
            .ok_or_else(|| FsError::invalid("index past the volume"))?;
        let _creating = self.creating[idx as usize % CREATE_STRIPES].lock().await;
        let owner = self.owner(l, idx).await?;
        if owner == 0 {
            return Ok(());
        }
        self.backend
            .write_obj(
                l.vid.inode_oid(),
                protocol::inode::data_vdi_id_offset(idx),
                &0u32.to_le_bytes(),
            )
            .await?;
        entry.store(0, Ordering::Release);
        if owner == l.vid.get() {
            self.backend.remove_obj(l.vid.data_oid(idx)).await?;
        }
        Ok(())
    }

    /// Grows the volume. Shrinking is refused: it would silently drop data.
    pub async fn resize(&self, size: u64) -> FsResult<()> {
        if self.read_only() {
            return Err(FsError::new(
                libc::EROFS,
                format!("{}: snapshots are read-only", self.name),
            ));
        }
        let mut l = self.layout.write().await;
        if size < l.size {
            return Err(FsError::invalid(format!(
                "{}: shrinking from {} to {size} bytes is refused (it would drop data)",
                self.name, l.size
            )));
        }
        if size > (MAX_DATA_OBJS as u64) << l.block_size_shift {
            return Err(FsError::new(
                libc::EFBIG,
                format!("{}: {size} bytes is beyond the largest VDI", self.name),
            ));
        }
        if size == l.size {
            return Ok(());
        }
        self.backend.set_vdi_size(l.vid, size).await?;
        l.size = size;
        let n = size.div_ceil(l.object_size()) as usize;
        l.entries.resize_with(n, || AtomicU32::new(0));
        Ok(())
    }

    /// Takes a snapshot (tag may be empty) and carries on writing into the new working VDI.
    pub async fn snapshot(&self, tag: &str) -> FsResult<()> {
        if self.read_only() {
            return Err(FsError::invalid(format!("{}: cannot snapshot a snapshot", self.name)));
        }
        let mut l = self.layout.write().await;
        self.backend.flush(l.vid).await?;
        self.backend.snapshot(&self.name, tag).await?;
        *l = Self::load(&self.backend, &self.name, None).await?;
        tracing::info!(volume = %self.name, vid = %l.vid, tag, "snapshot taken");
        Ok(())
    }

    /// Makes every write so far durable on every replica.
    pub async fn flush(&self) -> FsResult<()> {
        let vid = self.layout.read().await.vid;
        self.backend.flush(vid).await
    }

    /// Creates a new VDI `name` from this snapshot.
    pub async fn clone_to(&self, name: &str) -> FsResult<()> {
        let l = self.layout.read().await;
        let v = NewVdi {
            size: l.size,
            base: l.vid.get(),
            block_size_shift: l.block_size_shift,
            ..NewVdi::default()
        };
        self.backend.new_vdi(name, v).await.map(|_| ())
    }
}
