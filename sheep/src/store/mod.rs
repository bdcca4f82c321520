//! Object stores: where a node keeps its copies of objects. One file per backend: `plain`
//! (one file per object) is the working directory of every node, and [`Store`] is it; `farm`
//! adds, on a `-b farm` cluster, the node's farm of the copies a recovery drops
//! ([`farm::node`]), and holds the farm format that `dog cluster snapshot` uses too.
//!
//! What every backend shares lives here: the errors, the durability contract, and
//! [`write_durably`] for the node's small state files.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::path::Path;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};

use protocol::{Oid, ResultCode};

pub mod aligned;
pub mod farm;
mod fds;
mod plain;
pub mod sums;

pub use plain::{Dirty, NewCopy, Options, Store, Target};

/// Why a store operation failed. Converted to a wire result in one place ([`StoreError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(Oid),
    #[error("no space left for object {0}")]
    NoSpace(Oid),
    #[error("i/o error on object {oid}: {source}")]
    Io { oid: Oid, source: io::Error },
    /// The copy fails its checksums in these blocks.
    #[error("object {oid} fails its checksums in blocks {blocks:?}")]
    Damaged { oid: Oid, blocks: Vec<u64> },
}

impl StoreError {
    fn from_io(oid: Oid, e: io::Error) -> StoreError {
        match e.kind() {
            ErrorKind::NotFound => StoreError::NotFound(oid),
            ErrorKind::StorageFull => StoreError::NoSpace(oid),
            _ => StoreError::Io { oid, source: e },
        }
    }

    pub fn code(&self) -> ResultCode {
        match self {
            StoreError::NotFound(_) => ResultCode::NO_OBJ,
            StoreError::NoSpace(_) => ResultCode::NO_SPACE,
            StoreError::Io { .. } | StoreError::Damaged { .. } => ResultCode::EIO,
        }
    }
}

/// Buffered writes up to this size go into the page cache from the async worker that has
/// them, not through the io_uring. ext4 cannot take a buffered write without possibly
/// blocking (RWF_NOWAIT is EOPNOTSUPP), so the ring hands every such write to a kernel worker
/// thread and wakes the runtime when it is done: two thread switches per write, which cost
/// more than copying a few pages into the page cache here (measured: 4 KiB random writes at
/// depth 16 through sheepfs, 20 to 38% more IOPS, cached or not). The price: when the kernel
/// throttles a writer for too many dirty pages, the worker waits with it (its other tasks
/// are taken by the runtime's other workers). Larger writes, direct ones, and every write
/// under `--sync-writes` (which waits for the disk) still go through the ring.
pub const INLINE_WRITE: usize = 16 << 10;

/// Writes `data` at `offset` of `f` from the calling thread if [`INLINE_WRITE`] says so
/// (`direct`: `f` is open with O_DIRECT; `sync`: the write must be durable); `None` when
/// the caller must use the ring.
pub fn write_inline(f: &File, offset: u64, data: &[u8], direct: bool, sync: bool) -> Option<io::Result<()>> {
    (!direct && !sync && data.len() <= INLINE_WRITE).then(|| std::os::unix::fs::FileExt::write_all_at(f, data, offset))
}

/// What [`Store::read_cached`] found.
pub enum Cached {
    /// The bytes, all from the page cache.
    Hit(Vec<u8>),
    /// Some must come from the disk: the object's file, open for that read.
    Miss(Arc<File>),
}

/// When a created object must be on stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Before `create` returns: the file and the directory entry are fsynced.
    Now,
    /// At the next [`Store::flush`], like any other write (a client's data object).
    OnFlush,
}

/// Replaces the file at `path` with `data` so that a crash leaves either the old or the new
/// content, durable once this returns (temp file, fsync, rename, fsync of the directory).
pub fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
