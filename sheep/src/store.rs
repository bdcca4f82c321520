//! The `plain` object store: one file per object under `DIR/obj/`, named by its 16-hex-digit
//! oid so an operator can inspect it.
//!
//! New objects are written to a temporary file and renamed into place, so a created object is
//! never seen half-written. Writes into an existing object are positioned writes. Durability
//! follows the disk-with-a-volatile-cache contract: [`Store::flush`] (syncfs) makes everything
//! durable; a create asked for [`Durability::Now`] (metadata objects, recovered copies) also
//! fsyncs the file and the directory before it returns. Other calls block: the server runs them
//! on tokio's blocking pool.
//!
//! Writes into data objects whose offset and length are multiples of 4 KiB go around the page
//! cache (O_DIRECT) unless the store was opened buffered, through a small pool of aligned
//! bounce buffers; other writes, and every read, use the page cache, which the kernel keeps
//! coherent with direct writes. [`Store::read_cached`] serves a read only from the page cache
//! (RWF_NOWAIT), so an async worker may call it without blocking. New objects get their whole
//! size allocated at once (fallocate), so a full disk fails the create, not a later write into
//! the object.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use protocol::{Oid, ResultCode};

/// Why a store operation failed. Converted to a wire result in one place ([`StoreError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(Oid),
    #[error("no space left for object {0}")]
    NoSpace(Oid),
    #[error("i/o error on object {oid}: {source}")]
    Io { oid: Oid, source: io::Error },
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
            StoreError::Io { .. } => ResultCode::EIO,
        }
    }
}

/// What [`Store::read_cached`] found.
pub enum Cached {
    /// The bytes, all from the page cache.
    Hit(Vec<u8>),
    /// Some must come from the disk: the object's file, open for that read.
    Miss(File),
}

/// When a created object must be on stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Before `create` returns: the file and the directory entry are fsynced.
    Now,
    /// At the next [`Store::flush`], like any other write (a client's data object).
    OnFlush,
}

const STRIPES: usize = 64;
const TMP_PREFIX: &str = ".tmp-";
/// Alignment of direct writes (offset, length and memory): a 4 KiB-sector disk's too.
const DIO_ALIGN: usize = 4096;
/// Larger writes go through the page cache (an object is 4 MiB by default).
const DIO_MAX: usize = 4 << 20;
/// Bounce buffers kept for reuse; writes beyond this many at once allocate their own.
const SPARE_BOUNCES: usize = 8;

pub struct Store {
    dir: PathBuf,
    /// The object list cache: every stored oid, read from disk once at open.
    oids: Mutex<BTreeSet<Oid>>,
    /// Serialises create/write/remove of the same object (striped by oid).
    stripes: Vec<Mutex<()>>,
    /// Direct writes are on (cleared for good if the filesystem refuses O_DIRECT).
    direct: AtomicBool,
    /// Spare bounce buffers of `DIO_MAX + DIO_ALIGN` bytes.
    bounces: Mutex<Vec<Vec<u8>>>,
    /// Page-cache-only reads (RWF_NOWAIT) work here (cleared if the filesystem refuses them).
    nowait: AtomicBool,
}

impl Store {
    /// Opens (creating if needed) the store under `base/obj`, removing temporary files left by
    /// a crash in the middle of a create. `direct`: write aligned data through O_DIRECT.
    pub fn open(base: &Path, direct: bool) -> io::Result<Store> {
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
            direct: AtomicBool::new(direct),
            bounces: Mutex::new(Vec::new()),
            nowait: AtomicBool::new(true),
        })
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, BTreeSet<Oid>> {
        lock(&self.oids)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, oid: Oid) -> PathBuf {
        self.dir.join(oid.file_name())
    }

    fn lock(&self, oid: Oid) -> std::sync::MutexGuard<'_, ()> {
        let i = (protocol::hash::sd_hash_oid(oid.0) as usize) % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn exists(&self, oid: Oid) -> bool {
        self.cached().contains(&oid)
    }

    /// Reads `len` bytes at `offset`. Bytes past the end of the file read as zeros.
    pub fn read(&self, oid: Oid, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.read_from(&self.open_object(oid)?, oid, offset, len)
    }

    /// Like [`Store::read`], from the object's file already open (a [`Cached::Miss`]).
    pub fn read_from(&self, f: &File, oid: Oid, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        // Without RWF_NOWAIT the kernel waits for the disk instead of answering "not yet".
        self.read_with(f, oid, offset, len, 0)?.ok_or_else(|| StoreError::Io {
            oid,
            source: io::ErrorKind::WouldBlock.into(),
        })
    }

    /// The object's file, for reading.
    pub fn open_object(&self, oid: Oid) -> Result<File, StoreError> {
        File::open(self.path(oid)).map_err(|e| StoreError::from_io(oid, e))
    }

    /// Like [`Store::read`], but only from the page cache: [`Cached::Miss`] when some of
    /// the bytes would have to come from the disk (or the filesystem cannot tell), with the
    /// object's open file for a read that may wait. Cheap enough for an async worker.
    pub fn read_cached(&self, oid: Oid, offset: u64, len: usize) -> Result<Cached, StoreError> {
        let f = self.open_object(oid)?;
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

    /// Writes into an existing object.
    pub fn write(&self, oid: Oid, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let _g = self.lock(oid);
        let path = self.path(oid);
        let (f, direct) = self
            .open_for_write(&path, self.wants_direct(oid, offset, data.len()), false)
            .map_err(|e| StoreError::from_io(oid, e))?;
        self.write_at(&f, direct, offset, data)
            .map_err(|e| StoreError::from_io(oid, e))
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
        let _g = self.lock(oid);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}", oid.file_name()));
        let res = (|| {
            let (f, direct) = self.open_for_write(&tmp, self.wants_direct(oid, offset, data.len()), true)?;
            allocate(&f, size)?;
            self.write_at(&f, direct, offset, data)?;
            if durability == Durability::Now {
                f.sync_all()?;
            }
            fs::rename(&tmp, self.path(oid))?;
            if durability == Durability::Now {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::from_io(oid, e));
        }
        self.cached().insert(oid);
        Ok(())
    }

    fn wants_direct(&self, oid: Oid, offset: u64, len: usize) -> bool {
        oid.is_data()
            && len > 0
            && len <= DIO_MAX
            && offset.is_multiple_of(DIO_ALIGN as u64)
            && len.is_multiple_of(DIO_ALIGN)
            && self.direct.load(Ordering::Relaxed)
    }

    /// Opens `path` for writing (`create`: a new, empty file), with O_DIRECT if `direct` and
    /// the filesystem takes it. Returns the file and whether it is direct.
    fn open_for_write(&self, path: &Path, direct: bool, create: bool) -> io::Result<(File, bool)> {
        let mut o = OpenOptions::new();
        o.write(true).create(create).truncate(create);
        if direct {
            match o.clone().custom_flags(libc::O_DIRECT).open(path) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.no_direct(),
                r => return r.map(|f| (f, true)),
            }
        }
        o.open(path).map(|f| (f, false))
    }

    fn no_direct(&self) {
        if self.direct.swap(false, Ordering::Relaxed) {
            tracing::warn!(dir = %self.dir.display(), "the store's filesystem refuses direct I/O; writing through the page cache");
        }
    }

    /// Writes `data` at `offset` of `f`, through an aligned bounce buffer when `f` is direct.
    /// A filesystem that refuses O_DIRECT turns direct writes off and gets a buffered one.
    fn write_at(&self, f: &File, direct: bool, offset: u64, data: &[u8]) -> io::Result<()> {
        if !direct {
            return f.write_all_at(data, offset);
        }
        let mut buf = lock(&self.bounces)
            .pop()
            .unwrap_or_else(|| vec![0u8; DIO_MAX + DIO_ALIGN]);
        let at = buf.as_ptr().align_offset(DIO_ALIGN);
        let res = match buf.get_mut(at..at + data.len()) {
            Some(aligned) => {
                aligned.copy_from_slice(data);
                f.write_all_at(aligned, offset)
            }
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let mut spare = lock(&self.bounces);
        if spare.len() < SPARE_BOUNCES {
            spare.push(buf);
        }
        drop(spare);
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
        self.cached().remove(&oid);
        Ok(())
    }

    /// Every stored oid, from the object list cache (no directory scan).
    pub fn list(&self) -> Vec<Oid> {
        self.cached().iter().copied().collect()
    }

    /// Removes every object (cluster format).
    pub fn wipe(&self) -> io::Result<usize> {
        let all = self.list();
        for oid in &all {
            match fs::remove_file(self.path(*oid)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.cached().remove(oid);
        }
        Ok(all.len())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> io::Result<()> {
        let d = File::open(&self.dir)?;
        // SAFETY: syncfs on a valid, open descriptor has no memory-safety preconditions.
        let rc = unsafe { libc::syncfs(d.as_raw_fd()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SHA-1 of the object's first `size` bytes (zeros past its end).
    pub fn hash(&self, oid: Oid, size: usize) -> Result<[u8; 20], StoreError> {
        use sha1::Digest;
        let data = self.read(oid, 0, size)?;
        Ok(sha1::Sha1::digest(&data).into())
    }

    /// (capacity, free) of the filesystem holding the store, in bytes.
    pub fn space(&self) -> io::Result<(u64, u64)> {
        statvfs(&self.dir)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    #[test]
    fn create_write_read_remove() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Store::open(t.path(), true).expect("open");
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
            Store::open(t.path(), true).expect("reopen").list(),
            vec![oid],
            "the cache is rebuilt from disk"
        );
        assert!(t.path().join("obj/007c2b2500000001").exists());
        s.remove(oid).expect("remove");
        assert!(!s.exists(oid));
        assert_eq!(s.remove(oid).map_err(|e| e.code()), Err(ResultCode::NO_OBJ));
    }

    /// Direct (aligned) and buffered (unaligned) writes into the same object, in both orders,
    /// read back as a model says, on a direct store and on a buffered one.
    #[test]
    fn direct_and_buffered_writes_agree() {
        for direct in [true, false] {
            let t = tempfile::tempdir().expect("tempdir");
            let s = Store::open(t.path(), direct).expect("open");
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
            put(&s, &mut model, 4096, 16 << 10, 3, false);
            assert_eq!(s.read(oid, 0, size).expect("read"), model, "aligned over cached bytes");
            put(&s, &mut model, 100_000, 3000, 4, false);
            put(&s, &mut model, (1 << 20) - 4096, 4096, 5, false);
            s.flush().expect("flush");
            assert_eq!(s.read(oid, 0, size).expect("read"), model, "after flush");
            assert_eq!(
                Store::open(t.path(), direct)
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
        let s = Store::open(t.path(), true).expect("open");
        assert!(!t.path().join("obj/.tmp-0000000000000001").exists());
        s.create(Oid(1), 10, 0, b"", Durability::Now).expect("create");
        s.create(Oid(2), 10, 0, b"", Durability::OnFlush).expect("create");
        assert_eq!(s.wipe().expect("wipe"), 2);
        assert!(s.list().is_empty());
        s.flush().expect("flush");
        let (cap, free) = s.space().expect("space");
        assert!(cap >= free && cap > 0);
    }
}
