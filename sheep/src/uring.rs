//! Disk I/O without a thread per request: the async worker submits reads, writes and
//! fdatasyncs to an io_uring, and the ring's completions arrive through an eventfd that the
//! runtime watches like a socket. Through the blocking pool, a cold 4 KiB read or a 4 KiB
//! write costs two thread hand-offs (wake a pool thread, then wake the worker again), which
//! on a busy node cost more CPU than the I/O itself.
//!
//! An operation owns its file and buffer until the kernel has completed it, even if the
//! caller gives up waiting: they live in the in-flight table, never in the caller's future.
//! A write's bytes are the request's shared payload (`Bytes`), handed to the kernel as they
//! are.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

/// Submission queue entries; more operations at once wait for the kernel to take some.
const ENTRIES: u32 = 256;
/// Completion queue entries. More completions than this at once wait in the kernel until
/// the queue is drained and the kernel entered again (see `Inner::complete`).
const COMPLETIONS: u32 = 1024;

pub struct Ring {
    inner: Mutex<Inner>,
    /// Signalled by the kernel whenever completions are posted.
    event: AsyncFd<OwnedFd>,
}

struct Inner {
    ring: IoUring,
    next_id: u64,
    inflight: HashMap<u64, Op>,
    /// Completions are no longer collected: new operations are refused.
    stopped: bool,
}

/// What an operation does, with the memory the kernel uses for it.
enum Work {
    /// `buf` holds the bytes read so far, up to `want`.
    Read { buf: Vec<u8>, want: usize },
    /// `data[done..]` is still to be written; `flags` are RWF_* flags.
    Write { data: Bytes, done: usize, flags: i32 },
    /// fdatasync.
    Sync,
}

/// One operation in flight.
struct Op {
    file: Arc<File>,
    offset: u64,
    work: Work,
    done: Option<oneshot::Sender<io::Result<Vec<u8>>>>,
}

impl Op {
    /// The submission for the part still to do.
    fn entry(&mut self, id: u64) -> squeue::Entry {
        let fd = types::Fd(self.file.as_raw_fd());
        let e = match &mut self.work {
            Work::Read { buf, want } => {
                let have = buf.len();
                let rest = &mut buf.spare_capacity_mut()[..*want - have];
                opcode::Read::new(fd, rest.as_mut_ptr().cast(), rest.len() as u32)
                    .offset(self.offset + have as u64)
                    .build()
            }
            Work::Write { data, done, flags } => {
                let rest = &data[*done..];
                opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32)
                    .offset(self.offset + *done as u64)
                    .rw_flags(*flags)
                    .build()
            }
            Work::Sync => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        };
        e.user_data(id)
    }

    /// Counts `n` more bytes done; `Some` when the operation is over.
    fn progress(&mut self, n: usize) -> Option<io::Result<()>> {
        match &mut self.work {
            Work::Read { buf, want } => {
                if n == 0 {
                    // The end of the file: the rest reads as zeros.
                    buf.resize(*want, 0);
                    return Some(Ok(()));
                }
                // SAFETY: the kernel wrote `n` more bytes after the first `len`.
                unsafe { buf.set_len(buf.len() + n) };
                (buf.len() == *want).then_some(Ok(()))
            }
            Work::Write { data, done, .. } => {
                if n == 0 {
                    return Some(Err(io::Error::new(io::ErrorKind::WriteZero, "the disk took no bytes")));
                }
                *done += n;
                (*done == data.len()).then_some(Ok(()))
            }
            Work::Sync => Some(Ok(())),
        }
    }

    fn into_result(self) -> Vec<u8> {
        match self.work {
            Work::Read { buf, .. } => buf,
            Work::Write { .. } | Work::Sync => Vec::new(),
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("the disk ring stopped")
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ring {
    /// A ring and the task that completes its operations. Must run inside the tokio
    /// runtime. Fails where io_uring is missing or forbidden (old kernels, seccomp, sysctl).
    pub fn start() -> io::Result<Arc<Ring>> {
        let ring = IoUring::builder().setup_cqsize(COMPLETIONS).build(ENTRIES)?;
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        // SAFETY: the AsyncFd owns the descriptor, so it stays open and the same for its life.
        let event = unsafe { AsyncFd::register_with_interest(event, Interest::READABLE) }?;
        let ring = Arc::new(Ring {
            inner: Mutex::new(Inner {
                ring,
                next_id: 0,
                inflight: HashMap::new(),
                stopped: false,
            }),
            event,
        });
        tokio::spawn(ring.clone().complete_loop());
        Ok(ring)
    }

    /// Reads `len` bytes of `file` at `offset`; bytes past the end of the file read as zeros.
    pub async fn read(&self, file: Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let buf = Vec::with_capacity(len);
        self.run(file, offset, Work::Read { buf, want: len }).await
    }

    /// Writes all of `data` at `offset` of `file`; `dsync`: durable before it returns. On a
    /// file opened with O_DIRECT, `data` must be aligned as the file needs.
    pub async fn write(&self, file: Arc<File>, offset: u64, data: Bytes, dsync: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        let work = Work::Write { data, done: 0, flags };
        self.run(file, offset, work).await.map(drop)
    }

    /// fdatasync of `file`: every write into it so far is durable.
    pub async fn sync(&self, file: Arc<File>) -> io::Result<()> {
        self.run(file, 0, Work::Sync).await.map(drop)
    }

    async fn run(&self, file: Arc<File>, offset: u64, work: Work) -> io::Result<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut g = lock(&self.inner);
            if g.stopped {
                return Err(stopped());
            }
            let id = g.next_id;
            g.next_id += 1;
            let mut op = Op {
                file,
                offset,
                work,
                done: Some(tx),
            };
            let entry = op.entry(id);
            g.inflight.insert(id, op);
            if let Err(e) = g.push(&entry) {
                g.inflight.remove(&id);
                return Err(e);
            }
            // On failure the entry stays queued (and its operation in flight) for the next
            // submission; this caller is told and does its I/O another way.
            g.ring.submit()?;
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    async fn complete_loop(self: Arc<Self>) {
        loop {
            let mut ready = match self.event.readable().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the disk ring's eventfd failed; disk I/O uses threads");
                    lock(&self.inner).stop();
                    return;
                }
            };
            // Cleared before the queue is drained: a completion posted after the drain
            // signals the eventfd again.
            ready.clear_ready();
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a local buffer of 8 bytes.
            unsafe { libc::read(self.event.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
            lock(&self.inner).complete();
        }
    }
}

impl Inner {
    /// Queues `entry`, making room by handing queued entries to the kernel when full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: the entry points into a buffer and a file owned by `inflight`, which
            // keeps them until the entry's completion has been reaped.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
        Err(io::Error::other("the disk ring's submission queue stays full"))
    }

    /// Finishes every completed operation, or submits the rest of a short one.
    fn complete(&mut self) {
        loop {
            self.complete_queued();
            // Completions that found the queue full wait in the kernel, which signalled the
            // eventfd for them already: they come out only on the next enter.
            if !self.ring.submission().cq_overflow() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "cannot collect overflowed completions");
                return;
            }
        }
    }

    fn complete_queued(&mut self) {
        let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        let mut resubmitted = false;
        for (id, res) in done {
            let Some(op) = self.inflight.get_mut(&id) else {
                continue;
            };
            let outcome = match usize::try_from(res) {
                Err(_) => Some(Err(io::Error::from_raw_os_error(-res))),
                Ok(n) => op.progress(n),
            };
            match outcome {
                None => {
                    let entry = op.entry(id);
                    match self.push(&entry) {
                        Ok(()) => resubmitted = true,
                        Err(e) => self.finish(id, Err(e)),
                    }
                }
                Some(r) => self.finish(id, r),
            }
        }
        if resubmitted {
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "cannot submit the rest of a short read or write");
            }
        }
    }

    /// Refuses new operations and fails the waiting ones (their callers do their I/O
    /// another way). The operations stay in the table: the kernel may still use their
    /// buffers.
    fn stop(&mut self) {
        self.stopped = true;
        for op in self.inflight.values_mut() {
            if let Some(tx) = op.done.take() {
                let _ = tx.send(Err(stopped()));
            }
        }
    }

    fn finish(&mut self, id: u64, r: io::Result<()>) {
        if let Some(mut op) = self.inflight.remove(&id) {
            if let Some(tx) = op.done.take() {
                let _ = tx.send(r.map(|()| op.into_result()));
            }
        }
    }
}

impl Drop for Inner {
    /// The kernel may still be using in-flight buffers: wait for it first.
    fn drop(&mut self) {
        while !self.inflight.is_empty() {
            if self.ring.submit_and_wait(1).is_err() {
                // Cannot tell when the kernel is done with them: never free them.
                for (_, op) in self.inflight.drain() {
                    std::mem::forget(op);
                }
                return;
            }
            // A completion, even of a short read, ends the kernel's use of that buffer.
            for c in self.ring.completion() {
                self.inflight.remove(&c.user_data());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A started ring and a file of `len` patterned bytes (the directory lives as long as
    /// the returned guard).
    fn fixture(len: usize) -> (Arc<Ring>, tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let reads = Ring::start().expect("io_uring on this kernel");
        let t = tempfile::tempdir().expect("tempdir");
        let path = t.path().join("obj");
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        File::create(&path).and_then(|mut f| f.write_all(&data)).expect("write");
        (reads, t, path, data)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_match_the_file_and_zero_fill_past_its_end() {
        let (reads, _dir, path, data) = fixture(1 << 20);
        let open = || Arc::new(File::open(&path).expect("open"));
        let got = reads.read(open(), 4096, 256 << 10).await.expect("read");
        assert_eq!(got, data[4096..4096 + (256 << 10)]);
        let tail = reads.read(open(), (1 << 20) - 10, 30).await.expect("read");
        assert_eq!(tail[..10], data[(1 << 20) - 10..]);
        assert_eq!(tail[10..], [0u8; 20]);
        assert_eq!(reads.read(open(), 2 << 20, 8).await.expect("read"), [0u8; 8]);
        assert!(reads.read(open(), 0, 0).await.expect("read").is_empty());
    }

    /// More reads at once than the completion queue holds, and some abandoned by their
    /// callers: each read that is waited for gets its own bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_reads_at_once_and_abandoned_ones() {
        let (reads, _dir, path, data) = fixture(4 << 20);
        let n = COMPLETIONS as usize + 3;
        let all = (0..n).map(|i| {
            let reads = reads.clone();
            let file = Arc::new(File::open(&path).expect("open"));
            async move {
                let at = (i * 4096 * 3) % (4 << 20);
                let got = reads.read(file, at as u64, 4096).await.expect("read");
                (at, got)
            }
        });
        for (at, got) in futures::future::join_all(all).await {
            assert_eq!(got, data[at..at + 4096], "read at {at}");
        }
        for _ in 0..50 {
            let file = Arc::new(File::open(&path).expect("open"));
            // Polled once, which submits it, then dropped while the kernel may still work.
            let mut abandoned = Box::pin(reads.read(file, 0, 64 << 10));
            let _ = futures::poll!(abandoned.as_mut());
        }
        let got = reads
            .read(Arc::new(File::open(&path).expect("open")), 8192, 100)
            .await
            .expect("read");
        assert_eq!(got, data[8192..8292]);
    }

    /// A stopped ring answers at once, with an error, rather than leaving a reader waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_ring_refuses_reads() {
        let (reads, _dir, path, _) = fixture(4096);
        lock(&reads.inner).stop();
        let r = reads.read(Arc::new(File::open(&path).expect("open")), 0, 4096).await;
        assert!(r.is_err(), "a read on a stopped ring fails");
    }

    /// Buffered and direct writes through the ring land where they were aimed, in order,
    /// and a sync of the file succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_land_and_sync() {
        use std::os::unix::fs::OpenOptionsExt;
        let (ring, _dir, path, mut data) = fixture(1 << 20);
        let rw = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open"),
        );
        let at = 12_345;
        ring.write(rw.clone(), at as u64, Bytes::from(vec![0xAB; 70_000]), false)
            .await
            .expect("write");
        data[at..at + 70_000].fill(0xAB);
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path);
        // A filesystem without O_DIRECT (tmpfs) refuses the open: nothing to test there.
        if let Ok(direct) = direct {
            let block = crate::store::aligned::Aligned::copy_of(&[0xCD; 8192]).freeze();
            ring.write(Arc::new(direct), 8192, block, true)
                .await
                .expect("direct write");
            data[8192..16384].fill(0xCD);
        }
        let many = (0..300u64).map(|i| {
            let (ring, rw) = (ring.clone(), rw.clone());
            async move {
                ring.write(rw, 200_000 + i * 100, Bytes::from(vec![i as u8; 100]), false)
                    .await
            }
        });
        for r in futures::future::join_all(many).await {
            r.expect("one of many writes");
        }
        for i in 0..300usize {
            data[200_000 + i * 100..200_000 + (i + 1) * 100].fill(i as u8);
        }
        ring.sync(rw.clone()).await.expect("sync");
        assert_eq!(std::fs::read(&path).expect("read back"), data);
    }
}
