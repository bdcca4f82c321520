//! Peer operations: what a sheep does with its own store when a gateway (itself included)
//! forwards object I/O to it.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::{flags, op, Oid, RequestHeader, ResultCode};

use crate::node::Sheep;
use crate::recovery;
use crate::store::aligned::{self, Aligned};
use crate::store::{self, sums, Cached, Durability, StoreError};

/// Reads up to this size are tried on the calling worker, from the page cache only.
const SMALL_READ: usize = 128 * 1024;

/// How long a peer waits for its own epoch to reach a newer one named in a request.
const EPOCH_WAIT: Duration = Duration::from_secs(2);

/// A peer request from a gateway (this node's own included): checked against this node's
/// epoch and served. A write counts as in flight at its epoch until it has landed, and a
/// recovery read waits for those of older epochs (see [`recovery::landing`]).
pub async fn serve(sheep: &Arc<Sheep>, req: &RequestHeader, payload: Bytes) -> Result<Vec<u8>, ResultCode> {
    let oid = Oid(req.obj().oid);
    let writes = matches!(req.opcode, op::WRITE_PEER | op::CREATE_AND_WRITE_PEER | op::REMOVE_PEER);
    let _in_flight = writes.then(|| sheep.recovery.landing.enter(oid, req.epoch));
    check_epoch(sheep, req).await?;
    if is_recovery_read(req) && !sheep.recovery.landing.drained_before(oid, req.epoch, EPOCH_WAIT).await {
        tracing::warn!(%oid, epoch = req.epoch, "a recovery read waits for writes of older epochs longer than allowed; refused for now");
        return Err(ResultCode::NODE_IN_RECOVERY);
    }
    serve_local(sheep, req, payload).await
}

fn is_recovery_read(req: &RequestHeader) -> bool {
    req.opcode == op::READ_PEER && req.flags & flags::RECOVERY != 0
}

/// Answers OLD_NODE_VER to a request from an older epoch; waits a little for a newer one. A
/// recovery read is served at any epoch from its own on: what matters is that this node
/// accepts no write of an older one any more.
async fn check_epoch(sheep: &Sheep, req: &RequestHeader) -> Result<(), ResultCode> {
    if matches!(req.opcode, op::GET_OBJ_LIST | op::FLUSH_PEER | op::GET_OBJ_EPOCH) {
        return Ok(());
    }
    let recovery_read = is_recovery_read(req);
    let deadline = tokio::time::Instant::now() + EPOCH_WAIT;
    loop {
        let mine = sheep.state().epoch();
        if req.epoch == mine || (recovery_read && req.epoch < mine) {
            return Ok(());
        }
        if req.epoch < mine {
            return Err(ResultCode::OLD_NODE_VER);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ResultCode::NEW_NODE_VER);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether this node holds a copy of `oid` that it owns and has not recovered yet: no
/// witness for a digest (a scrub or `dog vdi check` that counted it could replace a current
/// copy with it). A node without a copy says so as usual.
pub fn holds_unrecovered(sheep: &Sheep, oid: Oid) -> bool {
    sheep.store.exists(oid) && !is_current(sheep, oid, sheep.state().epoch())
}

/// Whether this node's copy of `oid` can serve I/O at `epoch` as it is: current, or not
/// this node's to keep current.
fn is_current(sheep: &Sheep, oid: Oid, epoch: u32) -> bool {
    recovery::effective_good(sheep, oid) == Some(epoch) || !recovery::owns_at(sheep, oid, epoch)
}

/// Makes this node's copy of `oid` current before a gateway's I/O touches it, when this
/// node owns the object now (recovery may not have reached it yet). Holds the object's
/// stripe only on that slow path.
async fn current_for_io(sheep: &Arc<Sheep>, oid: Oid, epoch: u32) -> Result<(), ResultCode> {
    let rec = &sheep.recovery;
    if is_current(sheep, oid, epoch) {
        return Ok(());
    }
    let _g = rec.stripe(oid).write().await;
    recovery::ensure_current(sheep, oid).await
}

/// Executes a peer op against this node's store.
pub async fn serve_local(sheep: &Arc<Sheep>, req: &RequestHeader, payload: Bytes) -> Result<Vec<u8>, ResultCode> {
    let a = req.obj();
    let oid = Oid(a.oid);
    let offset = u64::from(a.offset);
    let epoch = sheep.state().epoch();
    match req.opcode {
        op::READ_PEER => {
            if req.data_length > protocol::frame::MAX_PAYLOAD {
                tracing::warn!(%oid, len = req.data_length, "a read larger than a frame may carry refused");
                return Err(ResultCode::INVALID_PARMS);
            }
            if !is_recovery_read(req) {
                // While this epoch's recovery runs, a copy it has not reached yet would first
                // be fetched whole (a 2 GiB object takes seconds): a gateway that can ask a
                // current replica instead says so. Once recovery is done, an object with no
                // copy here does not exist, and the usual path says so.
                if req.flags & flags::CURRENT_ONLY != 0
                    && sheep.recovery.recovered_epoch() < epoch
                    && !is_current(sheep, oid, epoch)
                {
                    // It jumps the recovery queue all the same.
                    sheep.recovery.want(oid);
                    return Err(ResultCode::NODE_IN_RECOVERY);
                }
                current_for_io(sheep, oid, epoch).await?;
            }
            checked_read(sheep, oid, offset, req.data_length as usize).await
        }
        op::WRITE_PEER | op::CREATE_AND_WRITE_PEER => {
            let size = sheep.state().object_size(oid).ok_or_else(|| {
                tracing::error!(%oid, "write to an object of a VDI this node does not know");
                ResultCode::NO_VDI
            })?;
            if offset + payload.len() as u64 > size {
                tracing::warn!(%oid, offset, len = payload.len(), size, "write past the object's end refused");
                return Err(ResultCode::INVALID_PARMS);
            }
            if req.opcode == op::CREATE_AND_WRITE_PEER {
                // A create replaces the whole object.
                let _g = sheep.recovery.stripe(oid).write().await;
                let _r = sheep.store.own_regions(oid, 0, size).await;
                sheep
                    .blocking(move |s| {
                        // A client's data object is durable at its next flush, like any write;
                        // the VDI's inode is metadata and is made durable at once.
                        let durability = if oid.is_data() {
                            Durability::OnFlush
                        } else {
                            Durability::Now
                        };
                        s.store.create(oid, size, offset, &payload, durability)
                    })
                    .await?;
            } else {
                // A write needs the current bytes around it.
                current_for_io(sheep, oid, epoch).await?;
                let _g = sheep.recovery.stripe(oid).read().await;
                let _r = sheep.store.own_regions(oid, offset, payload.len() as u64).await;
                write(sheep, oid, offset, payload.clone()).await?;
                sheep
                    .store
                    .update_sums(oid, size, offset, &payload)
                    .map_err(|e| sheep.store_failed(&e))?;
            }
            sheep.recovery.mark(oid, epoch);
            Ok(Vec::new())
        }
        op::REMOVE_PEER => {
            // After any fetch of the object under way: a copy committed later would bring
            // the removed object back as an orphan.
            let _g = sheep.recovery.stripe(oid).write().await;
            sheep.blocking(move |s| s.store.remove(oid)).await?;
            sheep.recovery.forget(oid);
            Ok(Vec::new())
        }
        op::FLUSH_PEER => {
            // A flush names the VDI whose writes it wants durable (its inode's oid); one
            // without makes every write durable.
            let vid = (oid.0 != 0).then(|| oid.vid().get());
            flush(sheep, vid).await.map(|()| Vec::new())
        }
        op::GET_OBJ_LIST => Ok(sheep.store.list().iter().flat_map(|o| o.0.to_le_bytes()).collect()),
        op::GET_OBJ_EPOCH => match recovery::effective_good(sheep, oid) {
            Some(g) => Ok(g.to_le_bytes().to_vec()),
            None => Err(ResultCode::NO_OBJ),
        },
        _ => Err(ResultCode::INVALID_PARMS),
    }
}

/// Reads `len` bytes at `offset` of this node's copy, checked against its checksums (the
/// read widened to whole blocks). A copy that fails them is not served: EIO, a log line
/// naming the object, node and epoch, and a repair from another replica in the background.
async fn checked_read(sheep: &Arc<Sheep>, oid: Oid, offset: u64, len: usize) -> Result<Vec<u8>, ResultCode> {
    let Some(size) = sheep.state().object_size(oid) else {
        return read(sheep, oid, offset, len).await;
    };
    let (at, wide) = sums::widen(offset, len as u64, size);
    let _r = sheep.store.share_regions(oid, at, wide).await;
    let mut data = read(sheep, oid, at, wide as usize).await?;
    let bad = sheep
        .store
        .verify(oid, size, at, &data)
        .map_err(|e| sheep.store_failed(&e))?;
    if !bad.is_empty() {
        let epoch = sheep.state().epoch();
        tracing::error!(%oid, node = %sheep.me.addr, epoch, blocks = ?bad, "checksum mismatch: this copy is damaged and is not served; repairing it from another replica");
        tokio::spawn(recovery::heal(sheep.clone(), oid));
        return Err(ResultCode::EIO);
    }
    let skip = (offset - at) as usize;
    data.drain(..skip);
    data.truncate(len);
    Ok(data)
}

/// Reads from this node's copy: on the worker when the page cache holds a small read,
/// through the ring when it must wait for the disk, on a thread where there is no ring.
async fn read(sheep: &Arc<Sheep>, oid: Oid, offset: u64, len: usize) -> Result<Vec<u8>, ResultCode> {
    // A small read that the page cache can serve costs less than a hand-off, so it is done
    // here; one that needs the disk is not.
    let mut file = if len <= SMALL_READ {
        match sheep.store.read_cached(oid, offset, len) {
            Ok(Cached::Hit(data)) => return Ok(data),
            Ok(Cached::Miss(file)) => Some(file),
            Err(e) => return Err(sheep.store_failed(&e)),
        }
    } else {
        None
    };
    if let Some(ring) = sheep.disk() {
        let file = match file.take() {
            Some(f) => f,
            None => sheep.store.file(oid).map_err(|e| sheep.store_failed(&e))?,
        };
        match ring.read(file, offset, len).await {
            Ok(data) => return Ok(data),
            // A thread's read tells a full or stopped ring from a failing disk.
            Err(e) => tracing::warn!(%oid, error = %e, "ring read failed; reading on a thread"),
        }
    }
    sheep
        .blocking(move |s| match file {
            Some(f) => s.store.read_from(&f, oid, offset, len),
            None => s.store.read(oid, offset, len),
        })
        .await
}

/// Writes into this node's existing copy: a small buffered write from this thread
/// ([`store::write_inline`]), others through the ring with the payload's own memory (copied
/// only when a direct write needs it aligned and it is not), else on a thread.
async fn write(sheep: &Arc<Sheep>, oid: Oid, offset: u64, data: Bytes) -> Result<(), ResultCode> {
    let t = sheep
        .store
        .target(oid, offset, data.len())
        .map_err(|e| sheep.store_failed(&e))?;
    let sync = sheep.store.sync_writes();
    let done = match (
        store::write_inline(&t.file, offset, &data, t.direct, sync),
        sheep.disk(),
    ) {
        (Some(done), _) => done,
        (None, Some(ring)) => {
            let bytes = if t.direct && !aligned::is_aligned(&data) {
                Aligned::copy_of(&data).freeze()
            } else {
                data.clone()
            };
            ring.write(t.file, offset, bytes, sync).await
        }
        (None, None) => return sheep.blocking(move |s| s.store.write(oid, offset, &data)).await,
    };
    match done {
        Ok(()) => {
            sheep.store.written(oid);
            return Ok(());
        }
        Err(e) if t.direct && e.raw_os_error() == Some(libc::EINVAL) => sheep.store.no_direct(),
        // The same write on a thread tells a stopped ring from a failing disk.
        Err(e) => tracing::warn!(%oid, error = %e, "write failed; writing on a thread"),
    }
    sheep.blocking(move |s| s.store.write(oid, offset, &data)).await
}

/// Makes the writes into objects of `vid` (every write: `None`) durable: an fdatasync of
/// each object written since its last flush, all at once, and of the directory if objects
/// were created or removed. An object whose sync fails is poisoned: every later flush of
/// its VDI fails too, since the writes the kernel dropped are not coming back.
async fn flush(sheep: &Arc<Sheep>, vid: Option<u32>) -> Result<(), ResultCode> {
    let dirty = sheep.store.take_dirty(vid);
    let mut files = Vec::with_capacity(dirty.oids.len() + 1);
    let mut failed = None;
    for oid in &dirty.poisoned {
        tracing::error!(%oid, epoch = sheep.state().epoch(), "flush refused: an earlier sync of this object failed, writes may be lost");
        failed = Some(ResultCode::EIO);
    }
    for &oid in &dirty.oids {
        match sheep.store.file(oid) {
            Ok(f) => {
                files.push((oid, f));
                match sheep.store.sums_file(oid) {
                    Ok(Some(s)) => files.push((oid, s)),
                    Ok(None) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => failed = Some(sheep.store_failed(&e)),
                }
            }
            // Removed since it was written: nothing left to make durable.
            Err(StoreError::NotFound(_)) => {}
            Err(e) => failed = Some(sheep.store_failed(&e)),
        }
    }
    if dirty.dir {
        match sheep.store.dir_file() {
            Ok(f) => files.push((Oid(0), Arc::new(f))),
            Err(e) => failed = Some(sheep.store_failed(&StoreError::Io { oid: Oid(0), source: e })),
        }
    }
    let syncs = files
        .into_iter()
        .map(|(oid, f)| async move { (oid, sync(sheep, f).await) });
    for (oid, r) in futures::future::join_all(syncs).await {
        if let Err(e) = r {
            tracing::error!(%oid, error = %e, epoch = sheep.state().epoch(), "cannot make a write durable");
            if oid.0 != 0 {
                sheep.store.poison(oid);
            }
            failed = Some(ResultCode::EIO);
        }
    }
    match failed {
        None => Ok(()),
        Some(code) => {
            sheep.store.restore_dirty(dirty);
            Err(code)
        }
    }
}

/// fdatasync of one file: through the ring, or on a thread where there is none (or it
/// stopped). An error from the disk itself is final: a second fdatasync after a failed one
/// may succeed without the lost writes.
async fn sync(sheep: &Arc<Sheep>, f: Arc<File>) -> std::io::Result<()> {
    if let Some(ring) = sheep.disk() {
        match ring.sync(f.clone()).await {
            Err(e) if e.raw_os_error().is_none() => {
                tracing::warn!(error = %e, "ring sync failed; syncing on a thread")
            }
            r => return r,
        }
    }
    tokio::task::spawn_blocking(move || f.sync_data())
        .await
        .map_err(std::io::Error::other)?
}
