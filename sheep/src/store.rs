//! The `plain` object store: one file per object under `DIR/obj/`, named by its 16-hex-digit
//! oid so an operator can inspect it.
//!
//! New objects are written to a temporary file, fsynced, renamed into place and the directory
//! fsynced, so a created object is never seen half-written. Writes into an existing object are
//! positioned writes; [`Store::flush`] makes everything durable. All calls block: the server
//! runs them on tokio's blocking pool.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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

const STRIPES: usize = 64;
const TMP_PREFIX: &str = ".tmp-";

pub struct Store {
    dir: PathBuf,
    /// The object list cache: every stored oid, read from disk once at open.
    oids: Mutex<BTreeSet<Oid>>,
    /// Serialises create/write/remove of the same object (striped by oid).
    stripes: Vec<Mutex<()>>,
}

impl Store {
    /// Opens (creating if needed) the store under `base/obj`, removing temporary files left by
    /// a crash in the middle of a create.
    pub fn open(base: &Path) -> io::Result<Store> {
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
        })
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, BTreeSet<Oid>> {
        self.oids.lock().unwrap_or_else(|p| p.into_inner())
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
        let f = File::open(self.path(oid)).map_err(|e| StoreError::from_io(oid, e))?;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::from_io(oid, e)),
            }
        }
        Ok(buf)
    }

    /// Writes into an existing object.
    pub fn write(&self, oid: Oid, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let _g = self.lock(oid);
        let f = OpenOptions::new()
            .write(true)
            .open(self.path(oid))
            .map_err(|e| StoreError::from_io(oid, e))?;
        f.write_all_at(data, offset).map_err(|e| StoreError::from_io(oid, e))
    }

    /// Creates (or replaces) an object of `size` bytes, zero-filled, with `data` at `offset`.
    pub fn create(&self, oid: Oid, size: u64, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let _g = self.lock(oid);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}", oid.file_name()));
        let res = (|| {
            let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            f.set_len(size)?;
            f.write_all_at(data, offset)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path(oid))?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::from_io(oid, e));
        }
        self.cached().insert(oid);
        Ok(())
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
        let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) };
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
        let s = Store::open(t.path()).expect("open");
        let oid = Oid(0x007c_2b25_0000_0001);
        assert!(matches!(s.read(oid, 0, 1), Err(StoreError::NotFound(_))));
        assert!(matches!(s.write(oid, 0, b"x"), Err(StoreError::NotFound(_))));
        s.create(oid, 4096, 10, b"abc").expect("create");
        assert_eq!(s.read(oid, 8, 6).expect("read"), b"\0\0abc\0");
        s.write(oid, 11, b"ZZ").expect("write");
        assert_eq!(s.read(oid, 10, 3).expect("read"), b"aZZ");
        // Past the end reads as zeros.
        assert_eq!(s.read(oid, 4095, 3).expect("read"), b"\0\0\0");
        assert_eq!(s.list(), vec![oid]);
        assert_eq!(
            Store::open(t.path()).expect("reopen").list(),
            vec![oid],
            "the cache is rebuilt from disk"
        );
        assert!(t.path().join("obj/007c2b2500000001").exists());
        s.remove(oid).expect("remove");
        assert!(!s.exists(oid));
        assert_eq!(s.remove(oid).map_err(|e| e.code()), Err(ResultCode::NO_OBJ));
    }

    #[test]
    fn open_removes_crash_leftovers_and_wipe() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(t.path().join("obj")).expect("mkdir");
        fs::write(t.path().join("obj/.tmp-0000000000000001"), b"half").expect("write");
        let s = Store::open(t.path()).expect("open");
        assert!(!t.path().join("obj/.tmp-0000000000000001").exists());
        s.create(Oid(1), 10, 0, b"").expect("create");
        s.create(Oid(2), 10, 0, b"").expect("create");
        assert_eq!(s.wipe().expect("wipe"), 2);
        assert!(s.list().is_empty());
        s.flush().expect("flush");
        let (cap, free) = s.space().expect("space");
        assert!(cap >= free && cap > 0);
    }
}
