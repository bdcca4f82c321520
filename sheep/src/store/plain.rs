//! The `plain` object store: one file per object under `DIR/obj/`, named by its 16-hex-digit
//! oid so an operator can inspect it.
//!
//! New objects are written to a temporary file and renamed into place, so a created object is
//! never seen half-written. Writes into an existing object are positioned writes into its
//! file, which stays open in a bounded cache ([`super::fds`]) between requests.
//!
//! Durability follows the contract of a disk with a volatile write cache: a write is not
//! durable when it returns, and [`Store::flush`] (or [`Store::take_dirty`] and an fdatasync of
//! each file it names) makes every write before it durable. The store remembers which objects
//! were written since their last flush, per VDI, so a flush syncs those files and nothing else.
//! Opened with `sync_writes`, every write and create is durable before it returns instead. A
//! create asked for [`Durability::Now`] (metadata objects, recovered copies) fsyncs the file
//! and the directory before it returns.
//!
//! Writes of 64 KiB or more into data objects whose offset and length are multiples of 4 KiB
//! go around the page cache (O_DIRECT) unless the store was opened buffered; other writes, and
//! every read, use the page cache, which the kernel keeps coherent with direct writes. [`Store::read_cached`]
//! serves a read only from the page cache (RWF_NOWAIT), so an async worker may call it without
//! blocking. New objects up to 64 MiB get their whole size allocated at once (fallocate), so
//! a full disk fails the create, not a later write into the object; bigger ones (to 2 GiB)
//! are created sparse and take disk as they are written. The calls that do I/O themselves
//! block: the node runs them on the blocking pool, or hands the file to its io_uring.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use protocol::Oid;
#[cfg(test)]
use protocol::ResultCode;

use super::aligned::{self, Aligned};
use super::fds::{Fds, Open};
use super::{lock, sums, Cached, Durability, StoreError};

const STRIPES: usize = 64;
/// Striped locks over 64 KiB regions of objects: a checked read holds its regions shared,
/// a write (data, then checksums) exclusive, so no read sees data and checksum out of step
/// and two writers into one block do not leave the checksum of the other's bytes.
const REGIONS: usize = 4096;
const REGION: u64 = 64 << 10;
const TMP_PREFIX: &str = ".tmp-";
/// Larger writes go through the page cache (an object is 4 MiB by default).
const DIO_MAX: usize = 4 << 20;
/// Smaller writes go through the page cache too: a small direct write waits for the disk
/// (three replicas on one host wait for it three times), a buffered one does not, and the
/// flush makes it durable like any other write. Large writes (sequential streams) go
/// around the cache, which they would otherwise fill three times over.
const DIO_MIN: usize = 64 << 10;
/// Objects up to this size get their disk at create; bigger ones are sparse.
const PREALLOC_MAX: u64 = 64 << 20;
/// Objects whose files stay open between requests (each holds one or two descriptors).
const OPEN_OBJECTS: usize = 512;

/// How a store is opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Write aligned data through O_DIRECT.
    pub direct: bool,
    /// Every write is durable before it returns (no write-back at all).
    pub sync_writes: bool,
}

/// Writes not yet known durable, as [`Store::take_dirty`] hands them to a flush.
#[derive(Debug, Default)]
pub struct Dirty {
    pub oids: Vec<Oid>,
    /// Objects were created or removed: the directory must be synced too.
    pub dir: bool,
    /// Objects of the flush's VDIs whose earlier sync failed: their writes may be lost.
    pub poisoned: Vec<Oid>,
}

/// Where a write goes: the object's file, and whether it is open with O_DIRECT (the bytes
/// must then lie in aligned memory, see [`super::aligned`]).
pub struct Target {
    pub file: Arc<File>,
    pub direct: bool,
}

pub struct Store {
    dir: PathBuf,
    /// The object list cache: every stored oid, read from disk once at open.
    oids: Mutex<BTreeSet<Oid>>,
    /// Serialises creates and removes of the same object (striped by oid). Opening files
    /// takes no lock: the fd cache's generation keeps a replaced file out of it.
    stripes: Vec<Mutex<()>>,
    /// Direct writes are on (cleared for good if the filesystem refuses O_DIRECT).
    direct: AtomicBool,
    /// Page-cache-only reads (RWF_NOWAIT) work here (cleared if the filesystem refuses them).
    nowait: AtomicBool,
    sync_writes: bool,
    fds: Fds,
    /// Objects written since their last flush, by VDI id.
    dirty: Mutex<HashMap<u32, HashSet<Oid>>>,
    /// The directory changed (objects created or removed) since the last flush.
    dir_dirty: AtomicBool,
    /// Objects whose fdatasync failed. The kernel may have dropped their unwritten pages, so
    /// a later sync that succeeds proves nothing: every flush of their VDI fails until the
    /// object is replaced whole (recovery) or removed.
    poisoned: Mutex<HashSet<Oid>>,
    regions: Vec<tokio::sync::RwLock<()>>,
}

impl Store {
    /// Opens (creating if needed) the store under `base/obj`, removing temporary files left by
    /// a crash in the middle of a create.
    pub fn open(base: &Path, opts: Options) -> io::Result<Store> {
        let dir = base.join("obj");
        fs::create_dir_all(&dir)?;
        let mut oids = BTreeSet::new();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) {
                fs::remove_file(e.path())?;
            } else if let Some(oid) = Oid::from_file_name(&name) {
                oids.insert(oid);
            }
        }
        Ok(Store {
            dir,
            oids: Mutex::new(oids),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            direct: AtomicBool::new(opts.direct),
            nowait: AtomicBool::new(true),
            sync_writes: opts.sync_writes,
            fds: Fds::new(OPEN_OBJECTS),
            dirty: Mutex::new(HashMap::new()),
            dir_dirty: AtomicBool::new(false),
            poisoned: Mutex::new(HashSet::new()),
            regions: (0..REGIONS).map(|_| tokio::sync::RwLock::new(())).collect(),
        })
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, BTreeSet<Oid>> {
        lock(&self.oids)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every write is durable before it returns.
    pub fn sync_writes(&self) -> bool {
        self.sync_writes
    }

    fn path(&self, oid: Oid) -> PathBuf {
        self.dir.join(oid.file_name())
    }

    /// The region locks covering `[offset, offset + len)` of `oid`, in the one order every
    /// caller takes them.
    fn region_locks(&self, oid: Oid, offset: u64, len: u64) -> Vec<&tokio::sync::RwLock<()>> {
        let last = (offset + len.max(1) - 1) / REGION;
        let mut ids: Vec<usize> = (offset / REGION..=last)
            .map(|r| (protocol::hash::fnv64(r, oid.0) as usize) % REGIONS)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|i| &self.regions[i]).collect()
    }

    /// Holds `[offset, offset + len)` of `oid` for a checked read.
    pub async fn share_regions(&self, oid: Oid, offset: u64, len: u64) -> Vec<tokio::sync::RwLockReadGuard<'_, ()>> {
        let mut g = Vec::new();
        for l in self.region_locks(oid, offset, len) {
            g.push(l.read().await);
        }
        g
    }

    /// Holds `[offset, offset + len)` of `oid` for a write and its checksums.
    pub async fn own_regions(&self, oid: Oid, offset: u64, len: u64) -> Vec<tokio::sync::RwLockWriteGuard<'_, ()>> {
        let mut g = Vec::new();
        for l in self.region_locks(oid, offset, len) {
            g.push(l.write().await);
        }
        g
    }

    fn sum_path(&self, oid: Oid) -> PathBuf {
        self.dir.join(format!("{}.sum", oid.file_name()))
    }

    /// The object's checksum file, if it has one.
    pub fn sums_file(&self, oid: Oid) -> Result<Option<Arc<File>>, StoreError> {
        self.open_files(oid, false).map(|o| o.sums)
    }

    /// The blocks of `data`, read at block boundary `offset` of the object (`size` bytes),
    /// whose checksums do not match. Empty for an object without checksums.
    pub fn verify(&self, oid: Oid, size: u64, offset: u64, data: &[u8]) -> Result<Vec<u64>, StoreError> {
        let Some(f) = self.sums_file(oid)? else {
            return Ok(Vec::new());
        };
        let range = sums::blocks(offset, data.len() as u64);
        let want = (range.end * sums::BLOCK).min(size) - offset;
        if want != data.len() as u64 {
            return Err(StoreError::from_io(
                oid,
                io::Error::other("a checked read must cover whole blocks"),
            ));
        }
        let stored = sums::load(&f, range).map_err(|e| StoreError::from_io(oid, e))?;
        Ok(sums::mismatches(offset, data, &stored))
    }

    /// Brings the checksums of the blocks `[offset, offset + len)` of the object (`size`
    /// bytes) up to date after a write of `data` there: whole blocks from `data`, the partial
    /// blocks at either end from the file. The caller holds those blocks' regions.
    pub fn update_sums(&self, oid: Oid, size: u64, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let Some(f) = self.sums_file(oid)? else {
            return Ok(());
        };
        let range = sums::blocks(offset, data.len() as u64);
        let mut new = Vec::with_capacity((range.end - range.start) as usize);
        for b in range.clone() {
            let start = b * sums::BLOCK;
            let len = sums::BLOCK.min(size - start);
            let crc = if start >= offset && start + len <= offset + data.len() as u64 {
                let at = (start - offset) as usize;
                crc32c::crc32c(&data[at..at + len as usize])
            } else {
                crc32c::crc32c(&self.read(oid, start, len as usize)?)
            };
            new.push(crc);
        }
        sums::store(&f, range.start, &new).map_err(|e| StoreError::from_io(oid, e))
    }

    fn lock(&self, oid: Oid) -> std::sync::MutexGuard<'_, ()> {
        let i = (protocol::hash::sd_hash_oid(oid.0) as usize) % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn exists(&self, oid: Oid) -> bool {
        self.cached().contains(&oid)
    }

    /// The object's open files, from the cache or opened now (`direct`: with the O_DIRECT
    /// one). Cheap when cached; an open walks the directory and may wait for the disk once.
    fn open_files(&self, oid: Oid, direct: bool) -> Result<Open, StoreError> {
        if let Some(o) = self.fds.get(oid) {
            if o.direct.is_some() || !direct {
                return Ok(o);
            }
        }
        let generation = self.fds.generation(oid);
        let path = self.path(oid);
        let io = |e| StoreError::from_io(oid, e);
        let mut open = match self.fds.get(oid) {
            Some(o) => o,
            None => Open {
                file: Arc::new(OpenOptions::new().read(true).write(true).open(&path).map_err(io)?),
                direct: None,
                sums: match OpenOptions::new().read(true).write(true).open(self.sum_path(oid)) {
                    Ok(f) => Some(Arc::new(f)),
                    Err(e) if e.kind() == ErrorKind::NotFound => None,
                    Err(e) => return Err(io(e)),
                },
            },
        };
        if direct {
            open.direct = self.open_direct(&path).map_err(io)?;
        }
        self.fds.put(oid, open.clone(), generation);
        Ok(open)
    }

    /// The object's file, open for reading and writing through the page cache.
    pub fn file(&self, oid: Oid) -> Result<Arc<File>, StoreError> {
        self.open_files(oid, false).map(|o| o.file)
    }

    /// Reads `len` bytes at `offset`. Bytes past the end of the file read as zeros.
    pub fn read(&self, oid: Oid, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.read_from(&*self.file(oid)?, oid, offset, len)
    }

    /// Like [`Store::read`], from the object's file already open (a [`Cached::Miss`]).
    pub fn read_from(&self, f: &File, oid: Oid, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        // Without RWF_NOWAIT the kernel waits for the disk instead of answering "not yet".
        self.read_with(f, oid, offset, len, 0)?.ok_or_else(|| StoreError::Io {
            oid,
            source: io::ErrorKind::WouldBlock.into(),
        })
    }

    /// Like [`Store::read`], but only from the page cache: [`Cached::Miss`] when some of
    /// the bytes would have to come from the disk (or the filesystem cannot tell), with the
    /// object's open file for a read that may wait. Cheap enough for an async worker.
    pub fn read_cached(&self, oid: Oid, offset: u64, len: usize) -> Result<Cached, StoreError> {
        let f = self.file(oid)?;
        if !self.nowait.load(Ordering::Relaxed) {
            return Ok(Cached::Miss(f));
        }
        Ok(match self.read_with(&f, oid, offset, len, libc::RWF_NOWAIT)? {
            Some(data) => Cached::Hit(data),
            None => Cached::Miss(f),
        })
    }

    /// Positioned reads of `f` with `preadv2` flags into spare capacity (the buffer is not
    /// zero-filled first). `None` when a RWF_NOWAIT read would have blocked.
    fn read_with(
        &self,
        f: &File,
        oid: Oid,
        offset: u64,
        len: usize,
        flags: libc::c_int,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut buf = Vec::<u8>::with_capacity(len);
        while buf.len() < len {
            let done = buf.len();
            let spare = buf.spare_capacity_mut();
            let iov = libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: spare.len(),
            };
            // SAFETY: one iovec over the vector's spare capacity, which outlives the call.
            let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, (offset + done as u64) as libc::off_t, flags) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) if flags != 0 => return Ok(None),
                    Some(libc::EOPNOTSUPP) if flags != 0 => {
                        self.nowait.store(false, Ordering::Relaxed);
                        return Ok(None);
                    }
                    _ => return Err(StoreError::from_io(oid, e)),
                }
            }
            if n == 0 {
                break;
            }
            // SAFETY: the kernel initialised the next `n` bytes.
            unsafe { buf.set_len(done + n as usize) };
        }
        buf.resize(len, 0);
        Ok(Some(buf))
    }

    /// Where a write of `len` bytes at `offset` into the existing object `oid` goes. The
    /// caller writes, then calls [`Store::written`].
    pub fn target(&self, oid: Oid, offset: u64, len: usize) -> Result<Target, StoreError> {
        let direct = self.wants_direct(oid, offset, len);
        let open = self.open_files(oid, direct)?;
        Ok(match open.direct {
            Some(file) if direct => Target { file, direct: true },
            _ => Target {
                file: open.file,
                direct: false,
            },
        })
    }

    /// Records a write into `oid` for the next flush (nothing to do with `sync_writes`).
    pub fn written(&self, oid: Oid) {
        if !self.sync_writes {
            lock(&self.dirty).entry(oid.vid().get()).or_default().insert(oid);
        }
    }

    /// Writes into an existing object, on this thread.
    pub fn write(&self, oid: Oid, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let t = self.target(oid, offset, data.len())?;
        self.write_at(&t.file, t.direct, offset, data)
            .map_err(|e| StoreError::from_io(oid, e))?;
        if self.sync_writes {
            t.file.sync_data().map_err(|e| StoreError::from_io(oid, e))?;
        }
        self.written(oid);
        Ok(())
    }

    /// Creates (or replaces) an object of `size` bytes, zero-filled, with `data` at `offset`.
    pub fn create(
        &self,
        oid: Oid,
        size: u64,
        offset: u64,
        data: &[u8],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let copy = self.begin_new(oid, size, self.wants_direct(oid, offset, data.len()))?;
        copy.write(self, offset, data)?;
        self.commit_new(copy, durability)
    }

    /// Starts a new copy of `oid`: `size` zero bytes (checksums to match) under a temporary
    /// name, invisible to readers until [`Store::commit_new`]; dropped unfinished, it is
    /// removed.
    pub fn begin_new(&self, oid: Oid, size: u64, direct: bool) -> Result<NewCopy, StoreError> {
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}", oid.file_name()));
        let tmp_sums = self.dir.join(format!("{TMP_PREFIX}{}.sum", oid.file_name()));
        let res = (|| {
            let f = new_file(&tmp)?;
            if size <= PREALLOC_MAX {
                allocate(&f, size)?;
            } else {
                f.set_len(size)?;
            }
            let s = new_file(&tmp_sums)?;
            sums::store_zeros(&s, size)?;
            let direct = if direct { self.open_direct(&tmp)? } else { None };
            Ok((Arc::new(f), direct, Arc::new(s)))
        })();
        match res {
            Ok((file, direct, sums)) => Ok(NewCopy {
                oid,
                size,
                tmp,
                tmp_sums,
                file,
                direct,
                sums,
                committed: false,
            }),
            Err(e) => {
                remove_temporary(&tmp, &tmp_sums);
                Err(StoreError::from_io(oid, e))
            }
        }
    }

    /// Puts the finished `copy` in place of the object (and its checksums), durable at once
    /// with [`Durability::Now`] or `--sync-writes`, else at the next flush.
    pub fn commit_new(&self, mut copy: NewCopy, durability: Durability) -> Result<(), StoreError> {
        let oid = copy.oid;
        let now = durability == Durability::Now || self.sync_writes;
        let _g = self.lock(oid);
        let res = (|| {
            if now {
                copy.sync_files()?;
            }
            fs::rename(&copy.tmp_sums, self.sum_path(oid))?;
            fs::rename(&copy.tmp, self.path(oid))?;
            copy.committed = true;
            // Whatever was open under the old name is the replaced file; the new copy's
            // files are the object's now, so its next writes open nothing.
            let open = Open {
                file: copy.file.clone(),
                direct: copy.direct.clone(),
                sums: Some(copy.sums.clone()),
            };
            self.fds.replace(oid, open);
            if now {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            // One of the renames may have happened: no file open before it is kept.
            self.fds.forget(oid);
            return Err(StoreError::from_io(oid, e));
        }
        self.cached().insert(oid);
        lock(&self.poisoned).remove(&oid);
        if !now {
            self.dir_dirty.store(true, Ordering::Release);
            self.written(oid);
        }
        Ok(())
    }

    /// Whether a write of `len` bytes at `offset` goes around the page cache.
    pub fn wants_direct(&self, oid: Oid, offset: u64, len: usize) -> bool {
        oid.is_data()
            && (DIO_MIN..=DIO_MAX).contains(&len)
            && offset.is_multiple_of(aligned::ALIGN as u64)
            && len.is_multiple_of(aligned::ALIGN)
            && self.direct.load(Ordering::Relaxed)
    }

    /// `path` opened again for O_DIRECT writes; `None` if the filesystem refuses them.
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<File>>> {
        match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => Ok(Some(Arc::new(f))),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.no_direct();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The filesystem refused a direct write: write through the page cache from now on.
    pub fn no_direct(&self) {
        if self.direct.swap(false, Ordering::Relaxed) {
            tracing::warn!(dir = %self.dir.display(), "the store's filesystem refuses direct I/O; writing through the page cache");
        }
        self.fds.clear();
    }

    /// Writes `data` at `offset` of `f`, through an aligned copy when `f` is direct and the
    /// bytes are not aligned. A filesystem that refuses O_DIRECT turns direct writes off and
    /// gets a buffered one.
    fn write_at(&self, f: &File, direct: bool, offset: u64, data: &[u8]) -> io::Result<()> {
        if !direct {
            return f.write_all_at(data, offset);
        }
        let res = if aligned::is_aligned(data) {
            f.write_all_at(data, offset)
        } else {
            f.write_all_at(Aligned::copy_of(data).as_ref(), offset)
        };
        match res {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.no_direct();
                clear_direct(f)?;
                f.write_all_at(data, offset)
            }
            r => r,
        }
    }

    pub fn remove(&self, oid: Oid) -> Result<(), StoreError> {
        let _g = self.lock(oid);
        fs::remove_file(self.path(oid)).map_err(|e| StoreError::from_io(oid, e))?;
        match fs::remove_file(self.sum_path(oid)) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(StoreError::from_io(oid, e)),
            _ => {}
        }
        self.fds.forget(oid);
        self.cached().remove(&oid);
        lock(&self.poisoned).remove(&oid);
        if let Some(set) = lock(&self.dirty).get_mut(&oid.vid().get()) {
            set.remove(&oid);
        }
        self.dir_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Every stored oid, from the object list cache (no directory scan).
    pub fn list(&self) -> Vec<Oid> {
        self.cached().iter().copied().collect()
    }

    /// Removes every object (cluster format).
    pub fn wipe(&self) -> io::Result<usize> {
        let all = self.list();
        lock(&self.dirty).clear();
        lock(&self.poisoned).clear();
        let removed = all.iter().try_for_each(|oid| {
            for p in [self.path(*oid), self.sum_path(*oid)] {
                match fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            self.cached().remove(oid);
            Ok(())
        });
        // After the files went: a file opened while they were going is not kept either.
        self.fds.clear();
        self.dir_dirty.store(true, Ordering::Release);
        removed.map(|()| all.len())
    }

    /// Takes the writes a flush must make durable: those into objects of `vid`, or every
    /// one (`None`). The caller syncs them and gives them back with [`Store::restore_dirty`]
    /// if it could not.
    pub fn take_dirty(&self, vid: Option<u32>) -> Dirty {
        let mut dirty = lock(&self.dirty);
        let oids = match vid {
            Some(v) => dirty.remove(&v).map(|s| s.into_iter().collect()).unwrap_or_default(),
            None => dirty.drain().flat_map(|(_, s)| s).collect(),
        };
        let poisoned = lock(&self.poisoned)
            .iter()
            .filter(|o| vid.is_none_or(|v| o.vid().get() == v))
            .copied()
            .collect();
        Dirty {
            oids,
            dir: self.dir_dirty.swap(false, Ordering::AcqRel),
            poisoned,
        }
    }

    /// Records that syncing `oid` failed (see [`Dirty::poisoned`]).
    pub fn poison(&self, oid: Oid) {
        lock(&self.poisoned).insert(oid);
    }

    /// Gives back writes that a failed flush did not make durable.
    pub fn restore_dirty(&self, d: Dirty) {
        let mut dirty = lock(&self.dirty);
        for oid in d.oids {
            dirty.entry(oid.vid().get()).or_default().insert(oid);
        }
        if d.dir {
            self.dir_dirty.store(true, Ordering::Release);
        }
    }

    /// The store's directory, to fsync after creates and removes.
    pub fn dir_file(&self) -> io::Result<File> {
        File::open(&self.dir)
    }

    /// Makes every write so far durable, on this thread.
    pub fn flush(&self) -> io::Result<()> {
        let d = self.take_dirty(None);
        if let Some(oid) = d.poisoned.first() {
            return Err(io::Error::other(format!("an earlier sync of object {oid} failed")));
        }
        let res = (|| {
            for &oid in &d.oids {
                match self.open_files(oid, false) {
                    Ok(o) => {
                        o.file.sync_data().inspect_err(|_| self.poison(oid))?;
                        if let Some(s) = o.sums {
                            s.sync_data().inspect_err(|_| self.poison(oid))?;
                        }
                    }
                    // Removed since it was written: nothing left to make durable.
                    Err(StoreError::NotFound(_)) => {}
                    Err(StoreError::Io { source, .. }) => return Err(source),
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
            }
            if d.dir {
                self.dir_file()?.sync_all()?;
            }
            Ok(())
        })();
        if res.is_err() {
            self.restore_dirty(d);
        }
        res
    }

    /// SHA-1 of the object's first `size` bytes (zeros past its end), of a copy that passes
    /// its checksums ([`StoreError::Damaged`] otherwise). Read in pieces: memory stays
    /// bounded whatever the object's size. Each piece is read and checked holding its
    /// regions, like a checked read, so that a write between its data and its checksums is
    /// not taken for damage; it waits for such writes, so it runs on a thread.
    pub fn hash(&self, oid: Oid, size: usize) -> Result<[u8; 20], StoreError> {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        let piece = protocol::frame::PIECE as usize;
        for at in (0..size).step_by(piece) {
            let len = piece.min(size - at);
            let _r: Vec<_> = self
                .region_locks(oid, at as u64, len as u64)
                .into_iter()
                .map(|l| l.blocking_read())
                .collect();
            let data = self.read(oid, at as u64, len)?;
            let blocks = self.verify(oid, size as u64, at as u64, &data)?;
            if !blocks.is_empty() {
                return Err(StoreError::Damaged { oid, blocks });
            }
            h.update(&data);
        }
        Ok(h.finalize().into())
    }

    /// Bytes the stored objects take (their sizes, as the original's `md info` counts, and
    /// their checksum files).
    pub fn used(&self) -> u64 {
        self.bytes_of(&self.list())
    }

    /// Bytes the objects `oids` take here, checksums included (from their files' sizes; no
    /// file is opened).
    pub fn bytes_of(&self, oids: &[Oid]) -> u64 {
        oids.iter()
            .flat_map(|&oid| [self.path(oid), self.sum_path(oid)])
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// (capacity, free) of the filesystem holding the store, in bytes.
    pub fn space(&self) -> io::Result<(u64, u64)> {
        statvfs(&self.dir)
    }
}

/// A copy of an object being built under a temporary name ([`Store::begin_new`]).
pub struct NewCopy {
    oid: Oid,
    size: u64,
    tmp: PathBuf,
    tmp_sums: PathBuf,
    file: Arc<File>,
    /// The same file for O_DIRECT writes, if asked for and the filesystem takes them.
    direct: Option<Arc<File>>,
    sums: Arc<File>,
    /// In place: nothing to clean up.
    committed: bool,
}

impl NewCopy {
    /// Makes the new copy's data and checksums durable (before [`Store::commit_new`], so
    /// that the commit itself is only renames).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.sync_files().map_err(|e| StoreError::from_io(self.oid, e))
    }

    fn sync_files(&self) -> io::Result<()> {
        self.file.sync_all()?;
        self.sums.sync_all()
    }

    /// Writes `data` at `offset` of the new copy, with its checksums. Pieces must not share a
    /// checksum block (each block is summed as the piece's bytes and zeros).
    pub fn write(&self, store: &Store, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let res = (|| {
            if offset + data.len() as u64 > self.size {
                return Err(io::Error::new(ErrorKind::InvalidInput, "write past the object's end"));
            }
            match &self.direct {
                Some(d) => store.write_at(d, true, offset, data)?,
                None => store.write_at(&self.file, false, offset, data)?,
            }
            let (first, piece_sums) = sums::of_piece(self.size, offset, data);
            sums::store(&self.sums, first, &piece_sums)
        })();
        res.map_err(|e| StoreError::from_io(self.oid, e))
    }
}

impl Drop for NewCopy {
    fn drop(&mut self) {
        if !self.committed {
            remove_temporary(&self.tmp, &self.tmp_sums);
        }
    }
}

/// Removes the files of a new copy that will not be committed (best effort: a leftover is
/// removed when the store opens next).
fn remove_temporary(tmp: &Path, tmp_sums: &Path) {
    let _ = fs::remove_file(tmp);
    let _ = fs::remove_file(tmp_sums);
}

/// Creates `path` empty, for reading and writing through the page cache.
fn new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Gives `f` (a new, empty file) its `size` bytes of disk at once; where the filesystem cannot
/// preallocate, the file is only sized (sparse).
fn allocate(f: &File, size: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(size).map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
    // SAFETY: fallocate on a valid, open descriptor has no memory-safety preconditions.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EOPNOTSUPP) => f.set_len(size),
        e => Err(e),
    }
}

/// Clears O_DIRECT on an open file.
fn clear_direct(f: &File) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a valid, open descriptor have no memory-safety preconditions.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn statvfs(p: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
    // SAFETY: `st` is plain old data that statvfs fills; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(direct: bool) -> Options {
        Options {
            direct,
            sync_writes: false,
        }
    }

    fn direct() -> Options {
        opts(true)
    }

    #[test]
    fn create_write_read_remove() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Store::open(t.path(), direct()).expect("open");
        let oid = Oid(0x007c_2b25_0000_0001);
        assert!(matches!(s.read(oid, 0, 1), Err(StoreError::NotFound(_))));
        assert!(matches!(s.write(oid, 0, b"x"), Err(StoreError::NotFound(_))));
        s.create(oid, 4096, 10, b"abc", Durability::OnFlush).expect("create");
        assert_eq!(s.read(oid, 8, 6).expect("read"), b"\0\0abc\0");
        s.write(oid, 11, b"ZZ").expect("write");
        assert_eq!(s.read(oid, 10, 3).expect("read"), b"aZZ");
        // Past the end reads as zeros.
        assert_eq!(s.read(oid, 4095, 3).expect("read"), b"\0\0\0");
        // The object's one page was written through the page cache, so a read that
        // must not wait for the disk is served too, with the same bytes.
        let hit = |at, len| match s.read_cached(oid, at, len).expect("read") {
            Cached::Hit(data) => data,
            Cached::Miss(_) => panic!("bytes just written through the page cache were not found there"),
        };
        assert_eq!(hit(8, 6), b"\0\0aZZ\0");
        assert_eq!(hit(4095, 3), b"\0\0\0");
        assert!(matches!(s.read_cached(Oid(1), 0, 1), Err(StoreError::NotFound(_))));
        assert_eq!(s.list(), vec![oid]);
        assert_eq!(
            Store::open(t.path(), direct()).expect("reopen").list(),
            vec![oid],
            "the cache is rebuilt from disk"
        );
        assert!(t.path().join("obj/007c2b2500000001").exists());
        s.remove(oid).expect("remove");
        assert!(!s.exists(oid));
        assert_eq!(s.remove(oid).map_err(|e| e.code()), Err(ResultCode::NO_OBJ));
    }

    /// A create hands its files to the fd cache, and the writes after it land in the file
    /// under the object's name, also when the create replaced the object.
    #[test]
    fn a_new_copy_keeps_its_files_open_for_the_writes_after_it() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Store::open(t.path(), direct()).expect("open");
        let oid = Oid(0x007c_2b25_0000_0002);
        let chunk = 64 << 10;
        for (round, fill) in [(0, 1u8), (1, 2u8)] {
            // The second round replaces the object: its files are the new copy's.
            s.create(oid, 1 << 20, 0, &vec![fill; chunk], Durability::OnFlush)
                .expect("create");
            let open = s.fds.get(oid).expect("the new copy's files are cached");
            assert_eq!(open.direct.is_some(), s.direct.load(Ordering::Relaxed), "round {round}");
            s.write(oid, chunk as u64, &vec![fill + 10; chunk]).expect("write");
            let back = s.read(oid, 0, 2 * chunk).expect("read");
            assert!(back[..chunk].iter().all(|&b| b == fill), "round {round}");
            assert!(back[chunk..].iter().all(|&b| b == fill + 10), "round {round}");
            assert_eq!(
                std::fs::read(t.path().join("obj").join(oid.file_name())).expect("read the file")[chunk],
                fill + 10,
                "round {round}: the write went to the file under the object's name"
            );
        }
    }

    /// A commit that fails between its two renames keeps none of the files that were open
    /// before it: the old checksums are no longer the object's.
    #[test]
    fn a_commit_cut_between_its_renames_keeps_no_old_file_open() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Store::open(t.path(), opts(false)).expect("open");
        let oid = Oid(0x007c_2b25_0000_0004);
        s.create(oid, 1 << 20, 0, &[1; 4096], Durability::OnFlush)
            .expect("create");
        assert!(s.fds.get(oid).is_some(), "the object's files are cached");
        let copy = s.begin_new(oid, 1 << 20, false).expect("a new copy");
        std::fs::remove_file(&copy.tmp).expect("take the new data file away");
        assert!(
            s.commit_new(copy, Durability::OnFlush).is_err(),
            "the data rename fails"
        );
        assert!(
            s.fds.get(oid).is_none(),
            "files open before the cut commit are not kept"
        );
    }

    /// A digest taken while a write is between its data and its checksums waits for it, and
    /// is the digest of the written bytes, not a report of damage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_digest_waits_for_a_write_between_its_data_and_its_checksums() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(Store::open(t.path(), opts(false)).expect("open"));
        let oid = Oid(0x007c_2b25_0000_0003);
        let size = 1 << 20;
        s.create(oid, size, 0, &[1; 4096], Durability::OnFlush).expect("create");
        let new = vec![2u8; 4096];
        let owned = s.own_regions(oid, 0, new.len() as u64).await;
        s.write(oid, 0, &new).expect("the data, its checksums not yet");
        let hashing = {
            let s = s.clone();
            tokio::task::spawn_blocking(move || s.hash(oid, size as usize))
        };
        // Time for a digest that does not wait to read the new bytes against the old sums.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        s.update_sums(oid, size, 0, &new).expect("the checksums");
        drop(owned);
        let got = hashing.await.expect("the hashing thread");
        let mut want = vec![0u8; size as usize];
        want[..new.len()].copy_from_slice(&new);
        use sha1::Digest;
        let want: [u8; 20] = sha1::Sha1::digest(&want).into();
        assert_eq!(got.expect("a digest, not damage"), want);
    }

    /// Direct (aligned) and buffered (unaligned) writes into the same object, in both orders,
    /// read back as a model says, on a direct store and on a buffered one.
    #[test]
    fn direct_and_buffered_writes_agree() {
        for direct in [true, false] {
            let t = tempfile::tempdir().expect("tempdir");
            let s = Store::open(t.path(), opts(direct)).expect("open");
            let oid = Oid(0x007c_2b25_0000_0002);
            assert!(oid.is_data());
            let size = 1 << 20;
            let mut model = vec![0u8; size];
            let put = |s: &Store, model: &mut Vec<u8>, at: usize, len: usize, seed: u8, create: bool| {
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect();
                if create {
                    s.create(oid, size as u64, at as u64, &data, Durability::OnFlush)
                        .expect("create");
                } else {
                    s.write(oid, at as u64, &data).expect("write");
                }
                model[at..at + len].copy_from_slice(&data);
            };
            put(&s, &mut model, 8192, 64 << 10, 1, true);
            assert_eq!(s.read(oid, 0, size).expect("read"), model, "after an aligned create");
            put(&s, &mut model, 8190, 5, 2, false);
            put(&s, &mut model, 4096, 128 << 10, 3, false);
            assert_eq!(s.read(oid, 0, size).expect("read"), model, "aligned over cached bytes");
            put(&s, &mut model, 100_000, 3000, 4, false);
            put(&s, &mut model, (1 << 20) - (64 << 10), 64 << 10, 5, false);
            s.flush().expect("flush");
            assert_eq!(s.read(oid, 0, size).expect("read"), model, "after flush");
            assert_eq!(
                Store::open(t.path(), opts(direct))
                    .expect("reopen")
                    .read(oid, 0, size)
                    .expect("read"),
                model
            );
            let on_disk = fs::metadata(t.path().join("obj").join(oid.file_name())).expect("stat");
            assert_eq!(on_disk.len(), size as u64);
        }
    }

    #[test]
    fn open_removes_crash_leftovers_and_wipe() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(t.path().join("obj")).expect("mkdir");
        fs::write(t.path().join("obj/.tmp-0000000000000001"), b"half").expect("write");
        let s = Store::open(t.path(), direct()).expect("open");
        assert!(!t.path().join("obj/.tmp-0000000000000001").exists());
        s.create(Oid(1), 10, 0, b"", Durability::Now).expect("create");
        s.create(Oid(2), 10, 0, b"", Durability::OnFlush).expect("create");
        assert_eq!(s.wipe().expect("wipe"), 2);
        assert!(s.list().is_empty());
        s.flush().expect("flush");
        let (cap, free) = s.space().expect("space");
        assert!(cap >= free && cap > 0);
    }

    /// A flush takes the objects written since the last one, of the VDI it names only; a
    /// replaced object is written through its new file, not a cached descriptor of the old.
    #[test]
    fn dirty_objects_by_vdi_and_replaced_files() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Store::open(t.path(), direct()).expect("open");
        let (v1, v2) = (protocol::Vid::new(7).expect("vid"), protocol::Vid::new(9).expect("vid"));
        let (a, b, c) = (v1.data_oid(0), v1.data_oid(1), v2.data_oid(0));
        for oid in [a, b, c] {
            s.create(oid, 1 << 16, 0, &[1u8; 4096], Durability::OnFlush)
                .expect("create");
        }
        let d = s.take_dirty(Some(v1.get()));
        let mut got = d.oids.clone();
        got.sort();
        assert_eq!((got, d.dir), (vec![a, b], true));
        assert!(s.take_dirty(Some(v1.get())).oids.is_empty(), "taken once");
        s.restore_dirty(d);
        assert_eq!(
            s.take_dirty(Some(v1.get())).oids.len(),
            2,
            "a failed flush gives them back"
        );
        s.write(a, 4096, &[2u8; 4096]).expect("write");
        s.create(a, 1 << 16, 0, &[3u8; 4096], Durability::OnFlush)
            .expect("replace");
        s.write(a, 8192, &[4u8; 4096]).expect("write after replace");
        let mut want = vec![0u8; 3 * 4096];
        want[..4096].fill(3);
        want[8192..].fill(4);
        assert_eq!(s.read(a, 0, 3 * 4096).expect("read"), want);
        s.flush().expect("flush");
        let rest = s.take_dirty(None);
        assert!(rest.oids.is_empty() && !rest.dir, "a flush leaves nothing dirty");
        s.poison(c);
        assert_eq!(s.take_dirty(Some(v2.get())).poisoned, vec![c]);
        assert!(s.flush().is_err(), "a poisoned object fails every flush");
        s.create(c, 1 << 16, 0, b"", Durability::Now).expect("replace whole");
        s.flush().expect("a replaced object is clean again");
    }
}
