//! The FUSE adapter: converts fuser callbacks into calls on [`Fs`] and results back. Each
//! FUSE worker thread runs one call at a time to completion on a single-threaded tokio
//! runtime of its own, so several requests are in flight at once, and a reply from the
//! gateway wakes the thread waiting for it directly (a shared runtime's worker would take
//! the event and then wake that thread). A read or write (of a volume, mostly) that arrives
//! while others are in flight is the exception: it runs on the main runtime, which serves
//! the mount's pipelined connection to the gateway and answers the kernel from there, and
//! the thread goes back for the next request at once. Under load that spares each request
//! a wake-up of its thread; alone, a request keeps the direct path. fsync and open always
//! run on the main runtime: a flush may take long, and so may an open (a monitoring file asks
//! every node, up to `--node-timeout-secs` for a hung one; a volume opened for writing takes
//! its VDI's lock), and the threads are wanted for the requests meanwhile. The threads are
//! few (two by default): under load a thread that comes back finds the next request queued,
//! where with many the kernel would wake a sleeping one for each.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::{Builder, Handle, Runtime};

use crate::backend::Backend;
use crate::fs::{Access, Attr, Fs, Kind};
use volume::{FsError, FsResult};

/// Attribute and entry lifetime for entries whose content does not change behind our back.
const TTL: Duration = Duration::from_secs(1);
/// FUSE requests carry at most this much data.
pub const MAX_WRITE: u32 = 1 << 20;

/// Whether this kernel drops the pages other opens cached of a range that a direct-I/O open
/// (FOPEN_DIRECT_IO) writes, as Linux does since 6.6. Before that, a reader holding the
/// volume open could go on reading the old bytes from its cache.
pub fn direct_writes_are_coherent() -> bool {
    match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => release_at_least(&release, (6, 6)),
        Err(e) => {
            tracing::warn!("cannot read the kernel's release ({e}); writes go through the page cache");
            false
        }
    }
}

/// Whether a kernel release such as `6.18.44-fc-v1300` is `want` (major, minor) or later.
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (number(), number()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

pub struct SheepFuse<B: Backend> {
    fs: Arc<Fs<B>>,
    /// The main runtime: a read or write that arrives while others are in flight runs and
    /// is answered there.
    rt: Handle,
    /// Reads and writes in flight.
    busy: Arc<AtomicUsize>,
    mounted_at: SystemTime,
    /// Everything belongs to whoever mounted it.
    owner: (u32, u32),
}

/// A read or write in flight (of a volume, mostly). Alone, it runs on its FUSE thread;
/// with others, on the main runtime (see the module's comment).
struct VolumeIo {
    busy: Arc<AtomicUsize>,
    alone: bool,
}

impl Drop for VolumeIo {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The errno for a failed call, logged unless the failure is a missing name.
fn errno(what: &str, e: FsError) -> Errno {
    if e.errno != libc::ENOENT {
        tracing::warn!("{what}: {e}");
    }
    Errno::from_i32(e.errno)
}

/// Runs `f` to completion on this thread's own runtime (made at its first call).
fn on_this_thread<T>(f: impl std::future::Future<Output = FsResult<T>>) -> FsResult<T> {
    thread_local! {
        static RUNTIME: std::cell::OnceCell<Option<Runtime>> = const { std::cell::OnceCell::new() };
    }
    RUNTIME.with(|rt| {
        let rt = rt.get_or_init(|| {
            Builder::new_current_thread()
                .enable_all()
                .build()
                .inspect_err(|e| tracing::error!("cannot start a runtime for a FUSE thread: {e}"))
                .ok()
        });
        match rt {
            Some(rt) => rt.block_on(f),
            None => Err(FsError::new(libc::EIO, "no runtime on this FUSE thread")),
        }
    })
}

impl<B: Backend> SheepFuse<B> {
    pub fn new(fs: Arc<Fs<B>>, rt: Handle) -> SheepFuse<B> {
        SheepFuse {
            fs,
            rt,
            busy: Arc::new(AtomicUsize::new(0)),
            mounted_at: SystemTime::now(),
            // SAFETY: getuid and getgid cannot fail and touch no memory of ours.
            owner: unsafe { (libc::getuid(), libc::getgid()) },
        }
    }

    fn run<T>(&self, what: &str, f: impl std::future::Future<Output = FsResult<T>>) -> Result<T, Errno> {
        on_this_thread(f).map_err(|e| errno(what, e))
    }

    /// Runs a read or write and gives its result to `answer`: alone in flight, `here` on
    /// this thread; with others, the future `there` makes, on the main runtime, answered
    /// from there (see the module's comment).
    fn volume_io<T, Fut>(
        &self,
        what: &'static str,
        here: impl std::future::Future<Output = FsResult<T>>,
        there: impl FnOnce(Arc<Fs<B>>) -> Fut,
        answer: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) where
        Fut: std::future::Future<Output = FsResult<T>> + Send + 'static,
    {
        let io = VolumeIo {
            alone: self.busy.fetch_add(1, Ordering::AcqRel) == 0,
            busy: self.busy.clone(),
        };
        if io.alone {
            let r = self.run(what, here);
            drop(io);
            return answer(r);
        }
        let f = there(self.fs.clone());
        self.on_main(
            what,
            async move {
                let r = f.await;
                drop(io);
                r
            },
            answer,
        );
    }

    /// Runs `f` on the main runtime and gives its result to `answer` from there.
    fn on_main<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = FsResult<T>> + Send + 'static,
        answer: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        self.rt
            .spawn(async move { answer(f.await.map_err(|e| errno(what, e))) });
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let volume = a.kind == Kind::File && !a.volatile;
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: if a.kind == Kind::Dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: a.perm,
            nlink: if a.kind == Kind::Dir { 2 } else { 1 },
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: if volume { MAX_WRITE } else { 4096 },
            flags: 0,
        }
    }

    fn ttl(a: &Attr) -> Duration {
        if a.volatile {
            Duration::ZERO
        } else {
            TTL
        }
    }
}

impl<B: Backend> Filesystem for SheepFuse<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Let the kernel keep several O_DIRECT requests of one file in flight (fio, qemu).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = on_this_thread(self.fs.unmount()) {
            tracing::error!("flush or lock release at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.run("lookup", self.fs.lookup(parent.0, name)) {
            Ok(a) => reply.entry(&Self::ttl(&a), &self.attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run("getattr", self.fs.getattr(ino.0)) {
            Ok(a) => reply.attr(&Self::ttl(&a), &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = match size {
            Some(s) => self.run("truncate", self.fs.set_size(ino.0, s)),
            // Modes, owners and times are fixed; accept the request so tools that set them
            // (cp -p, touch) do not fail.
            None => self.run("setattr", self.fs.getattr(ino.0)),
        };
        match r {
            Ok(a) => reply.attr(&Self::ttl(&a), &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::EINVAL);
        };
        match self.run("mkdir", self.fs.mkdir(parent.0, name)) {
            Ok(a) => reply.entry(&Self::ttl(&a), &self.attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.run("rmdir", self.fs.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// On the main runtime, like fsync: a monitoring file is rendered at open, asking every
    /// node, and a hung one makes that wait.
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let access = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => Access::Read,
            OpenAccMode::O_WRONLY => Access::Write,
            OpenAccMode::O_RDWR => Access::ReadWrite,
        };
        let fs = self.fs.clone();
        self.on_main("open", async move { fs.open(ino.0, access).await }, move |r| match r {
            Ok((fh, direct)) => {
                let f = if direct {
                    FopenFlags::FOPEN_DIRECT_IO
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), f)
            }
            Err(e) => reply.error(e),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.volume_io(
            "read",
            self.fs.read(ino.0, fh.0, offset, size),
            |fs| async move { fs.read(ino.0, fh.0, offset, size).await },
            move |r| match r {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.volume_io(
            "write",
            self.fs.write(ino.0, offset, data),
            // Handed off, the bytes are copied out of the request.
            |fs| {
                let data = data.to_vec();
                async move { fs.write(ino.0, offset, &data).await }
            },
            move |r| match r {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(e),
            },
        );
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        // Writes are on every replica when write() returns; durability is fsync's job.
        reply.ok();
    }

    /// On the main runtime: a flush can take long (with the object cache, it pushes every
    /// dirty block), and the few FUSE threads are wanted for the requests meanwhile.
    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.on_main("fsync", async move { fs.fsync(ino.0).await }, move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.run("readdir", self.fs.readdir(ino.0)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let all = [
            (ino.0, Kind::Dir, ".".to_string()),
            (ino.0, Kind::Dir, "..".to_string()),
        ]
        .into_iter()
        .chain(entries);
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            let t = if kind == Kind::Dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(child), (i + 1) as u64, t, name) {
                break;
            }
        }
        reply.ok();
    }

    /// No extended attributes. ENOSYS (not ENODATA) tells the kernel to stop asking for good
    /// (it looks `security.capability` up when a file is written), and answered here it is
    /// not logged as a missing operation.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // An unreachable gateway is an error, not an empty filesystem.
        let (size, free) = match self.run("statfs", self.fs.backend().stat_sheep(None)) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let bsize = 4096u64;
        reply.statfs(
            size / bsize,
            free / bsize,
            free / bsize,
            0,
            0,
            bsize as u32,
            255,
            bsize as u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert!(release_at_least("6.18.44-fc-v1300\n", (6, 6)));
        assert!(release_at_least("6.6.0", (6, 6)));
        assert!(release_at_least("7.0-rc1", (6, 6)));
        assert!(!release_at_least("6.1.0-28-amd64", (6, 6)));
        assert!(!release_at_least("5.15.0", (6, 6)));
        assert!(!release_at_least("", (6, 6)));
        assert!(!release_at_least("six.six", (6, 6)));
    }
}
