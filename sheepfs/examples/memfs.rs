//! An in-memory FUSE filesystem holding one fixed-size file, `/volume`: the ceiling that the
//! FUSE layer alone allows, for benchmarks to compare sheepfs against (contrib/bench/).
//!
//! It mounts with the settings sheepfs uses for a volume file (max_write and max_readahead
//! 1 MiB, max_background 64, page cache on, no direct_io), so the gap
//! between the two is the cost of the cluster. The file is backed by sparse memory: 1 MiB
//! chunks allocated on first write; unwritten chunks read as zeros. fsync is a no-op.
//!
//! ```text
//! cargo build --release -p sheepfs --example memfs
//! target/release/examples/memfs MOUNTPOINT --size 1G    # foreground; SIGTERM/SIGINT unmount
//! ```

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use clap::Parser;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, Session, SessionACL, TimeOrNow, WriteFlags,
};
use tokio::signal::unix::{signal, SignalKind};

/// Mounts an in-memory filesystem with one file, `/volume`, of a fixed size.
#[derive(Parser, Debug)]
#[command(name = "memfs")]
struct Args {
    /// Where to mount.
    mountpoint: PathBuf,
    /// Size of /volume: bytes or a number with a K, M, G or T suffix (powers of 1024).
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// FUSE worker threads. memfs answers every request on the thread that took it, so it
    /// wants more than sheepfs, which hands requests under load to its runtime: 8 ran 42k
    /// random 4 KiB writes at depth 16 where 2 ran 36k to 39k.
    #[arg(long, default_value_t = 8)]
    threads: usize,
}

/// Memory is allocated in chunks of this size, and FUSE requests carry at most this much.
const CHUNK: u64 = 1 << 20;
const VOLUME: INodeNo = INodeNo(2);
const VOLUME_NAME: &str = "volume";
const TTL: Duration = Duration::from_secs(1);

fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        Some(b'T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("size out of range: {s:?}"))
}

struct MemFs {
    size: u64,
    /// One slot per 1 MiB of the volume; `None` until first written.
    chunks: Vec<Mutex<Option<Box<[u8]>>>>,
    mounted_at: SystemTime,
}

impl MemFs {
    fn new(size: u64) -> MemFs {
        MemFs {
            size,
            chunks: (0..size.div_ceil(CHUNK)).map(|_| Mutex::new(None)).collect(),
            mounted_at: SystemTime::now(),
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, size, perm, nlink, blksize) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0, 0o755, 2, 4096),
            VOLUME => (FileType::RegularFile, self.size, 0o644, 1, CHUNK as u32),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize,
            flags: 0,
        })
    }

    /// Calls `f(chunk index, offset in chunk, offset in the request, length)` for each piece
    /// of `[offset, end)` that lies in one chunk.
    fn for_each_piece(offset: u64, end: u64, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut pos = offset;
        while pos < end {
            let within = pos % CHUNK;
            let n = (CHUNK - within).min(end - pos);
            f(
                (pos / CHUNK) as usize,
                within as usize,
                (pos - offset) as usize,
                n as usize,
            );
            pos += n;
        }
    }
}

impl Filesystem for MemFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The same settings as sheepfs (sheepfs/src/fuse.rs).
        let _ = config.set_max_write(CHUNK as u32);
        let _ = config.set_max_readahead(CHUNK as u32);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(VOLUME) {
            Some(a) if parent == INodeNo::ROOT && name == VOLUME_NAME => reply.entry(&TTL, &a, Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
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
        // The size is fixed, like a disk's; modes and times are accepted and ignored.
        match self.attr(ino) {
            Some(a) if size.is_some_and(|s| s != a.size) => reply.error(Errno::EPERM),
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino {
            // Through the page cache, as sheepfs opens volume files.
            VOLUME => reply.opened(FileHandle(0), FopenFlags::empty()),
            INodeNo::ROOT => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != VOLUME {
            return reply.error(Errno::EISDIR);
        }
        let end = offset.saturating_add(size.into()).min(self.size);
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        Self::for_each_piece(offset, end, |i, within, at, n| {
            let chunk = self.chunks[i].lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = chunk.as_ref() {
                buf[at..at + n].copy_from_slice(&c[within..within + n]);
            }
        });
        reply.data(&buf);
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
        if ino != VOLUME {
            return reply.error(Errno::EISDIR);
        }
        if offset >= self.size {
            return reply.error(Errno::EFBIG);
        }
        let end = offset.saturating_add(data.len() as u64).min(self.size);
        Self::for_each_piece(offset, end, |i, within, at, n| {
            let mut chunk = self.chunks[i].lock().unwrap_or_else(PoisonError::into_inner);
            let c = chunk.get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            c[within..within + n].copy_from_slice(&data[at..at + n]);
        });
        reply.written((end - offset) as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Memory is as durable as it gets; answering (rather than ENOSYS, after which the
        // kernel stops asking) keeps the round trip in the measurement, as with sheepfs.
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (VOLUME, FileType::RegularFile, VOLUME_NAME),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.size.div_ceil(4096);
        reply.statfs(blocks, blocks, blocks, 2, 0, 4096, 255, 4096);
    }
}

/// Unmounts `path`; when it is busy, detaches it so the kernel finishes once the last user
/// lets go. Either way the FUSE session then ends and `main` returns.
fn unmount(path: &Path) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path that outlives both calls.
    unsafe {
        if libc::umount2(c.as_ptr(), 0) != 0 {
            eprintln!(
                "memfs: umount {}: {}; detaching",
                path.display(),
                std::io::Error::last_os_error()
            );
            if libc::umount2(c.as_ptr(), libc::MNT_DETACH) != 0 {
                eprintln!(
                    "memfs: umount -l {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();

    // Catch the signals before mounting, so that one arriving early is held until the
    // mount exists and can be undone, rather than killing us with the mount left behind.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the signal runtime");
    let (mut term, mut int) = {
        let _in_rt = rt.enter();
        (
            signal(SignalKind::terminate()).expect("cannot handle SIGTERM"),
            signal(SignalKind::interrupt()).expect("cannot handle SIGINT"),
        )
    };

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("memfs".into()),
        MountOption::Subtype("memfs".into()),
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(args.threads.max(1));
    let session = match Session::new(MemFs::new(args.size), &args.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("memfs: cannot mount at {}: {e}", args.mountpoint.display());
            return ExitCode::FAILURE;
        }
    };

    let mountpoint = args.mountpoint.clone();
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        eprintln!("memfs: signal received: unmounting");
        unmount(&mountpoint);
    });

    eprintln!(
        "memfs: mounted {} bytes at {}/{VOLUME_NAME}",
        args.size,
        args.mountpoint.display()
    );
    let served = session.spawn().and_then(|bg| bg.join());
    match served {
        Ok(()) => {
            eprintln!("memfs: unmounted");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("memfs: FUSE session failed: {e}");
            ExitCode::FAILURE
        }
    }
}
