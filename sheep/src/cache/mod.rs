//! The object cache (`sheep -w SIZE`): a gateway keeps copies of the data objects its
//! clients read and write in a directory of its own, and acknowledges a write once it is in
//! that copy (write-back). A copy holds only the 4 KiB pages that were written or read
//! through it (a write that covers a page it lacks only in part fetches that page first), so
//! a random write into an object it has not seen costs no fetch of the whole object. A
//! flush (FLUSH_VDI) pushes every dirty page of the VDI to all replicas and makes them
//! durable there before it answers; a background pusher keeps dirty data under half the
//! cache.
//!
//! Only requests that ask for it (the CACHE flag, which sheepfs sets while
//! `/config/object_cache` is 1) and only VDIs whose write lock a client of this gateway
//! holds are cached, so no other gateway can write (or cache) the same VDI meanwhile; a
//! lock taken here first drops the VDI's copies left from an earlier one ([`taking_lock`]). Any
//! other request for a data object first pushes and drops its copy, and no copy of it is made
//! until that request is done ([`around`]), so uncached I/O never sees stale bytes and no
//! cached read keeps bytes from before it. Creates go to the replicas directly: an object exists on them before
//! anyone can refer to it; so do writes of [`STREAM`] bytes or more, and all I/O to objects
//! over [`MAX_OBJECT`]. When dirty copies fill the cache, writes go around it (slower, never
//! refused).

pub mod index;
pub mod pages;

use std::fs::File;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use protocol::{Oid, ResultCode};

use crate::gateway::{self, Write};
use crate::node::Sheep;
use index::{DirtyRuns, Found, Index, Leftover};
use tokio::sync::RwLockWriteGuard;

/// Pushes at once during a flush.
const PUSHES: usize = 8;
/// How long cached I/O and new locks wait for the push of a crash's leftovers before they
/// are refused (the client sees an error, never a hang).
const READY_WAIT: Duration = Duration::from_secs(30);

/// Waits for the push of a crash's leftovers; NODE_IN_RECOVERY if it does not end in time.
pub async fn ready(c: &Index) -> Result<(), ResultCode> {
    if c.wait_ready(READY_WAIT).await {
        return Ok(());
    }
    tracing::error!("object cache: dirty copies left by a crash cannot be pushed yet; refusing cached I/O");
    Err(ResultCode::NODE_IN_RECOVERY)
}

/// Writes this large go around the cache, and reads this large do not fill it: a sequential
/// stream would only pass through it (fetch, copy, push) at several times the disk traffic
/// of using the replicas directly.
pub const STREAM: usize = 256 << 10;

/// A read that misses fetches the pages the copy lacks in the aligned windows of this size
/// around it.
const READ_WINDOW: u64 = 64 << 10;

/// Objects bigger than this (VDIs of shift 27 to 31) are never cached: a copy counts its
/// whole size against the cache and is evicted whole, which only pays for objects of a few
/// MiB.
pub const MAX_OBJECT: u64 = 64 << 20;

/// Whether a request for `oid` (writing `write_len` bytes, 0 for a read) may use this
/// gateway's cache: it asked (`flagged`), the cache is on, it is not part of a stream, the
/// object is not too big, and a client of this gateway holds the VDI's write lock.
pub fn eligible(sheep: &Sheep, oid: Oid, flagged: bool, write_len: usize) -> bool {
    let st = sheep.state();
    flagged
        && write_len < STREAM
        && oid.is_data()
        && sheep.cache.is_some()
        && st.object_size(oid).is_some_and(|size| size <= MAX_OBJECT)
        && st.lock_owner(oid) == Some(sheep.me.addr)
}

/// Whether a client of this gateway holds the write lock of `oid`'s VDI now.
fn locked_here(sheep: &Sheep, oid: Oid) -> bool {
    sheep.state().lock_owner(oid) == Some(sheep.me.addr)
}

/// Takes a VDI's lock at this gateway through `commit`. The copies this gateway kept under
/// an earlier lock may be older than what another client wrote since an operator's
/// RELEASE_VDI ended that lock: they are dropped first (dirty ones still of that lock are
/// pushed), and no cached write runs meanwhile, so none is marked dirty under the old lock
/// and then dropped as not ours once the new one counts.
pub async fn taking_lock(
    sheep: &Arc<Sheep>,
    vid: u32,
    commit: impl std::future::Future<Output = Result<(), ResultCode>>,
) -> Result<(), ResultCode> {
    let Some(c) = sheep.cache.clone() else {
        return commit.await;
    };
    let _no_writes = c.relock.write().await;
    drop_vdi(sheep, vid).await?;
    commit.await
}

/// The VDI's current lock count, recorded with dirty data.
fn lock_gen(sheep: &Sheep, oid: Oid) -> u64 {
    sheep.state().lock_gens.get(&oid.vid().get()).copied().unwrap_or(0)
}

fn io_failed(oid: Oid, what: &str, e: &std::io::Error) -> ResultCode {
    tracing::error!(%oid, error = %e, "object cache: {what} failed");
    ResultCode::EIO
}

async fn file_read(sheep: &Sheep, f: Arc<File>, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    if let Some(ring) = sheep.disk() {
        return ring.read(f, offset, len).await;
    }
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, offset).map(|()| buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn file_write(sheep: &Sheep, f: Arc<File>, offset: u64, data: Bytes) -> std::io::Result<()> {
    // A copy is never open with O_DIRECT, and the replicas make it durable, not this file.
    if let Some(done) = crate::store::write_inline(&f, offset, &data, false, false) {
        return done;
    }
    if let Some(ring) = sheep.disk() {
        return ring.write(f, offset, data, false).await;
    }
    tokio::task::spawn_blocking(move || std::os::unix::fs::FileExt::write_all_at(&*f, &data, offset))
        .await
        .map_err(std::io::Error::other)?
}

/// Under `oid`'s stripe held exclusively: makes sure the cache holds a copy of `oid` with
/// what a read (or a `write`) of bytes `[at, at + len)` needs from the replicas, fetching
/// only that. `None` when the cache makes no new copy (dirty copies fill it, or it is full
/// and admits `oid` only at its next request): the caller goes around the cache.
async fn fill(
    sheep: &Arc<Sheep>,
    c: &Arc<Index>,
    oid: Oid,
    (at, len): (u64, u64),
    copies: u8,
    write: bool,
) -> Result<Option<Found>, ResultCode> {
    if c.lookup(oid, at, len, write).is_none() {
        let size = sheep.state().object_size(oid).ok_or(ResultCode::NO_VDI)?;
        if !c.admits(oid, size) {
            c.miss();
            return Ok(None);
        }
        let c2 = c.clone();
        let made = tokio::task::spawn_blocking(move || c2.insert(oid, size))
            .await
            .map_err(|_| ResultCode::SYSTEM_ERROR)?;
        match made {
            Ok(Some(_)) => {}
            Ok(None) => {
                c.miss();
                c.push_now.notify_one();
                return Ok(None);
            }
            Err(e) => {
                io_failed(oid, "making a copy", &e);
                return Ok(None);
            }
        }
    }
    let Some(found) = c.lookup(oid, at, len, write) else {
        return Ok(None);
    };
    if found.missing.is_empty() {
        c.hit();
        return Ok(Some(found));
    }
    c.miss();
    // A write lacks at most its two edge pages, which may lie far apart: one read each. A
    // read's missing runs lie within its window: one read for them all.
    let spans = match (write, found.missing.first(), found.missing.last()) {
        (false, Some(&(from, _)), Some(&(to, n))) => vec![(from, to + n - from)],
        _ => found.missing.clone(),
    };
    for (from, n) in spans {
        let data = Bytes::from(gateway::read(sheep, oid, from as u32, n as u32, copies).await?);
        for &(at, len) in found.missing.iter().filter(|r| r.0 >= from && r.0 + r.1 <= from + n) {
            let piece = data.slice((at - from) as usize..(at - from + len) as usize);
            file_write(sheep, found.file.clone(), at, piece)
                .await
                .map_err(|e| io_failed(oid, "storing fetched pages", &e))?;
            c.filled(oid, at, len)
                .map_err(|e| io_failed(oid, "recording fetched pages", &e))?;
        }
    }
    Ok(Some(found))
}

/// A cached read of `len` bytes of `oid` at `offset`. A read of [`STREAM`] bytes or more
/// (a sequential stream) is served from a copy the cache holds, but does not make one.
pub async fn read(sheep: &Arc<Sheep>, oid: Oid, offset: u32, len: u32, copies: u8) -> Result<Vec<u8>, ResultCode> {
    let Some(c) = sheep.cache.clone() else {
        return gateway::read(sheep, oid, offset, len, copies).await;
    };
    ready(&c).await?;
    if len as usize >= STREAM && !c.contains(oid) {
        return gateway::read(sheep, oid, offset, len, copies).await;
    }
    let range = (u64::from(offset), u64::from(len));
    let serve = |f: Arc<File>| async move {
        file_read(sheep, f, range.0, range.1 as usize)
            .await
            .map_err(|e| io_failed(oid, "a read", &e))
    };
    {
        let _g = c.stripe(oid).read().await;
        if let Some(found) = c.lookup(oid, range.0, range.1, false).filter(|f| f.missing.is_empty()) {
            c.hit();
            return serve(found.file).await;
        }
    }
    // A miss fetches the whole window around the read: reads near it are likely.
    let start = range.0 / READ_WINDOW * READ_WINDOW;
    let window = (start, (range.0 + range.1).div_ceil(READ_WINDOW) * READ_WINDOW - start);
    let _g = c.stripe(oid).write().await;
    match fill(sheep, &c, oid, window, copies, false).await? {
        Some(found) => serve(found.file).await,
        None => gateway::read(sheep, oid, offset, len, copies).await,
    }
}

/// A cached write into the existing object `oid`: acknowledged once in the copy. Only a
/// first, partial write into a page the copy does not hold waits for the replicas.
pub async fn write(sheep: &Arc<Sheep>, oid: Oid, offset: u32, data: Bytes, copies: u8) -> Result<(), ResultCode> {
    let Some(c) = sheep.cache.clone() else {
        return write_around(sheep, oid, offset, data, copies).await;
    };
    ready(&c).await?;
    // The lock may have ended since the request was found eligible: checked again where no
    // lock can be taken here until the write is done.
    let _relock = c.relock.read().await;
    if !locked_here(sheep, oid) {
        return around(sheep, oid, pin!(write_around(sheep, oid, offset, data, copies))).await;
    }
    let range = (u64::from(offset), data.len() as u64);
    {
        let _g = c.stripe(oid).read().await;
        if let Some(found) = c.lookup(oid, range.0, range.1, true) {
            if found.dirty && found.missing.is_empty() {
                c.hit();
                return land(sheep, &c, oid, found.file, range.0, data).await;
            }
        }
    }
    // A clean copy gets its dirty marker first, with the stripe held exclusively so no push
    // can end (and remove the marker) in between. With no room, the write goes to the
    // replicas while the stripe is still held, so no copy made meanwhile misses it.
    let _g = c.stripe(oid).write().await;
    let Some(found) = fill(sheep, &c, oid, range, copies, true).await? else {
        return write_around(sheep, oid, offset, data, copies).await;
    };
    if !found.dirty {
        c.mark_dirty_on_disk(oid, lock_gen(sheep, oid))
            .map_err(|e| io_failed(oid, "marking a copy dirty", &e))?;
    }
    land(sheep, &c, oid, found.file, range.0, data).await
}

/// Writes into the copy, then records its pages held and dirty (after the bytes are there,
/// so a push that read the copy before them cannot mark them clean, and a crash never
/// pushes a page whose bytes are not there).
async fn land(sheep: &Arc<Sheep>, c: &Index, oid: Oid, f: Arc<File>, at: u64, data: Bytes) -> Result<(), ResultCode> {
    let len = data.len() as u64;
    file_write(sheep, f, at, data)
        .await
        .map_err(|e| io_failed(oid, "a write", &e))?;
    match c.written(oid, at, len) {
        Ok(Some(high)) => {
            if high {
                c.push_now.notify_one();
            }
            Ok(())
        }
        Ok(None) => {
            tracing::error!(%oid, "object cache: a copy went away under a write");
            Err(ResultCode::EIO)
        }
        Err(e) => Err(io_failed(oid, "recording written pages", &e)),
    }
}

async fn write_around(sheep: &Arc<Sheep>, oid: Oid, offset: u32, data: Bytes, copies: u8) -> Result<(), ResultCode> {
    let w = Write {
        oid,
        offset,
        data,
        create: false,
        copies,
    };
    gateway::write(sheep, w).await
}

/// Sends `oid`'s dirty blocks to every replica; the copy is clean afterwards unless a write
/// came meanwhile.
async fn push(sheep: &Arc<Sheep>, c: &Index, oid: Oid) -> Result<(), ResultCode> {
    let _one = c.push_lock(oid).lock().await;
    let Some(d) = c.dirty_runs(oid) else {
        return Ok(());
    };
    if !still_ours(sheep, oid, d.lock_gen) {
        let _g = c.stripe(oid).write().await;
        return c.remove(oid).map_err(|e| io_failed(oid, "dropping a copy", &e));
    }
    {
        let _g = c.stripe(oid).read().await;
        send_runs(sheep, oid, &d).await?;
    }
    let _g = c.stripe(oid).write().await;
    c.pushed(oid, d.gen).map_err(|e| io_failed(oid, "cleaning a copy", &e))
}

/// Whether dirty blocks written under the VDI's lock count `written_under` may still go to
/// the replicas: not when another client took the VDI since (this gateway left the cluster
/// or crashed meanwhile), since they must not land over newer bytes, nor once it was
/// deleted. A VDI snapshotted since takes them: they were acknowledged before the snapshot
/// was made (later writes into it are refused), so they are part of it, and of the working
/// VDI that goes on from it (a copy-on-write pushes its base first).
fn still_ours(sheep: &Sheep, oid: Oid, written_under: u64) -> bool {
    let vid = oid.vid().get();
    let live = sheep.state().vdis.get(&vid).is_some_and(|v| !v.deleted);
    if live && lock_gen(sheep, oid) == written_under {
        return true;
    }
    tracing::error!(%oid, "object cache: unflushed writes dropped: the VDI was taken or deleted since");
    false
}

async fn send_runs(sheep: &Arc<Sheep>, oid: Oid, d: &DirtyRuns) -> Result<(), ResultCode> {
    for &(at, len) in &d.runs {
        let data = file_read(sheep, d.file.clone(), at, len as usize)
            .await
            .map_err(|e| io_failed(oid, "reading a dirty copy", &e))?;
        write_around(sheep, oid, at as u32, data.into(), 0)
            .await
            .inspect_err(|code| tracing::error!(%oid, result = %code, "object cache: push failed"))?;
    }
    Ok(())
}

/// Pushes `oid`'s dirty blocks and drops its copy with the stripe held exclusively
/// throughout, so that no cached write or fetch comes in between; the stripe stays held.
async fn drop_copy<'a>(sheep: &Arc<Sheep>, c: &'a Index, oid: Oid) -> Result<RwLockWriteGuard<'a, ()>, ResultCode> {
    let _one = c.push_lock(oid).lock().await;
    let g = c.stripe(oid).write().await;
    if let Some(d) = c.dirty_runs(oid).filter(|d| still_ours(sheep, oid, d.lock_gen)) {
        send_runs(sheep, oid, &d).await?;
    }
    c.remove(oid).map_err(|e| io_failed(oid, "dropping a copy", &e))?;
    Ok(g)
}

/// Runs `op`, a request that goes around the cache, on the current bytes: a cached copy of
/// `oid` first takes its news to the replicas and is dropped, and none is made (no fetch
/// runs) until `op` is done, so that no copy holds bytes from before it. `op` comes pinned
/// where the caller keeps it: taken by value, it would sit twice in this future (as the
/// argument and as the awaited value), and every uncached request's task would carry both.
pub async fn around<T>(
    sheep: &Arc<Sheep>,
    oid: Oid,
    op: Pin<&mut impl Future<Output = Result<T, ResultCode>>>,
) -> Result<T, ResultCode> {
    let Some(c) = sheep.cache.clone().filter(|_| oid.is_data()) else {
        return op.await;
    };
    // Copies left by a crash push first: they are older than this request.
    ready(&c).await?;
    let held = c.stripe(oid).read().await;
    let _held = if c.contains(oid) {
        drop(held);
        // Boxed: every uncached request's future would otherwise carry a push's state.
        Box::pin(drop_copy(sheep, &c, oid)).await?.downgrade()
    } else {
        held
    };
    op.await
}

/// Pushes every dirty block of `vid`'s objects (of every VDI: `None`) to the replicas.
/// The caller then makes the replicas sync (FLUSH_PEER).
pub async fn push_all(sheep: &Arc<Sheep>, vid: Option<u32>) -> Result<(), ResultCode> {
    let Some(c) = sheep.cache.clone() else {
        return Ok(());
    };
    ready(&c).await?;
    let oids = c.dirty(vid);
    let results: Vec<_> = futures::stream::iter(oids)
        .map(|oid| {
            let c = c.clone();
            async move { push(sheep, &c, oid).await }
        })
        .buffer_unordered(PUSHES)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The VDI's lock ends here: its dirty blocks go to the replicas and its copies are dropped,
/// since the next writer may use another gateway.
pub async fn drop_vdi(sheep: &Arc<Sheep>, vid: u32) -> Result<(), ResultCode> {
    let Some(c) = sheep.cache.clone() else {
        return Ok(());
    };
    push_all(sheep, Some(vid)).await?;
    for oid in c.cached(vid) {
        drop(drop_copy(sheep, &c, oid).await?);
    }
    Ok(())
}

/// Keeps dirty data under the high-water mark (half the cache), oldest first.
pub async fn pusher(sheep: Arc<Sheep>) {
    let Some(c) = sheep.cache.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = c.push_now.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        while let Some(oid) = c.push_candidate() {
            if push(&sheep, &c, oid).await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            }
        }
    }
}

/// After a crash: each dirty copy left behind pushes the pages it holds, unless another
/// client took the VDI's write lock since (its writes are newer; the unflushed ones here are
/// dropped, as a disk drops its cache at a power cut). Cached I/O waits until this is done.
pub async fn recover(sheep: Arc<Sheep>, leftovers: Vec<Leftover>) {
    let Some(c) = sheep.cache.clone() else {
        return;
    };
    for l in leftovers {
        if still_ours(&sheep, l.oid, l.lock_gen) {
            match c.read_leftover(l.oid) {
                Ok(runs) => push_leftover(&sheep, &l, runs).await,
                Err(e) => {
                    io_failed(l.oid, "reading a copy left by a crash", &e);
                }
            }
        }
        if let Err(e) = c.drop_leftover(l.oid) {
            io_failed(l.oid, "dropping a copy left by a crash", &e);
        }
    }
    c.set_ready();
}

/// Sends a leftover copy's runs to the replicas, retrying until they take them, the
/// object has nowhere to go, or another client took the VDI meanwhile.
async fn push_leftover(sheep: &Arc<Sheep>, l: &Leftover, runs: Vec<(u64, Vec<u8>)>) {
    let oid = l.oid;
    let mut pause = Duration::from_millis(200);
    for (at, bytes) in runs {
        let data = Bytes::from(bytes);
        while let Err(code) = write_around(sheep, oid, at as u32, data.clone(), 0).await {
            if matches!(code, ResultCode::NO_OBJ | ResultCode::NO_VDI | ResultCode::READONLY) {
                tracing::error!(%oid, result = %code, "object cache: a copy left by a crash has nowhere to go; dropped");
                return;
            }
            if !still_ours(sheep, oid, l.lock_gen) {
                return;
            }
            tracing::error!(%oid, result = %code, "object cache: cannot push a copy left by a crash; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
    tracing::info!(%oid, "object cache: pushed a copy left by a crash");
}
