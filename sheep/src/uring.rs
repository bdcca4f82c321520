//! Reads that must wait for the disk, without a thread per read: the async worker submits
//! them to an io_uring, and the ring's completions arrive through an eventfd that the
//! runtime watches like a socket. Through the blocking pool, a cold 4 KiB read costs two
//! thread hand-offs (wake a pool thread, then wake the worker again), which on a busy node
//! cost more CPU than the read itself.
//!
//! A read owns its file and buffer until the kernel has completed it, even if the caller
//! gives up waiting: they live in the in-flight table, never in the caller's future.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::{opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

/// Submission queue entries; more reads at once wait for the kernel to take some.
const ENTRIES: u32 = 256;
/// Completion queue entries. More completions than this at once wait in the kernel until
/// the queue is drained and the kernel entered again (see `Inner::complete`).
const COMPLETIONS: u32 = 1024;

pub struct Reads {
    inner: Mutex<Inner>,
    /// Signalled by the kernel whenever completions are posted.
    event: AsyncFd<OwnedFd>,
}

struct Inner {
    ring: IoUring,
    next_id: u64,
    inflight: HashMap<u64, Read>,
    /// Completions are no longer collected: new reads are refused.
    stopped: bool,
}

/// One read in flight: `buf` holds the bytes done so far, up to `want`.
struct Read {
    file: File,
    offset: u64,
    buf: Vec<u8>,
    want: usize,
    done: Option<oneshot::Sender<io::Result<Vec<u8>>>>,
}

impl Read {
    /// The submission for the part still missing.
    fn entry(&mut self, id: u64) -> squeue::Entry {
        let have = self.buf.len();
        let rest = &mut self.buf.spare_capacity_mut()[..self.want - have];
        opcode::Read::new(
            types::Fd(self.file.as_raw_fd()),
            rest.as_mut_ptr().cast(),
            rest.len() as u32,
        )
        .offset(self.offset + have as u64)
        .build()
        .user_data(id)
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reads {
    /// A ring and the task that completes its reads. Must run inside the tokio runtime.
    /// Fails where io_uring is missing or forbidden (old kernels, seccomp, sysctl).
    pub fn start() -> io::Result<Arc<Reads>> {
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
        let reads = Arc::new(Reads {
            inner: Mutex::new(Inner {
                ring,
                next_id: 0,
                inflight: HashMap::new(),
                stopped: false,
            }),
            event,
        });
        tokio::spawn(reads.clone().complete_loop());
        Ok(reads)
    }

    /// Reads `len` bytes of `file` at `offset`; bytes past the end of the file read as zeros.
    pub async fn read(&self, file: File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut g = lock(&self.inner);
            if g.stopped {
                return Err(io::Error::other("the read ring stopped"));
            }
            let id = g.next_id;
            g.next_id += 1;
            let mut read = Read {
                file,
                offset,
                buf: Vec::with_capacity(len),
                want: len,
                done: Some(tx),
            };
            let entry = read.entry(id);
            g.inflight.insert(id, read);
            if let Err(e) = g.push(&entry) {
                g.inflight.remove(&id);
                return Err(e);
            }
            // On failure the entry stays queued (and its read in flight) for the next
            // submission; this caller is told and reads another way.
            g.ring.submit()?;
        }
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the read ring stopped")))
    }

    async fn complete_loop(self: Arc<Self>) {
        loop {
            let mut ready = match self.event.readable().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the read ring's eventfd failed; disk reads use threads");
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
        Err(io::Error::other("the read ring's submission queue stays full"))
    }

    /// Finishes every completed read: sends its bytes, or submits the rest of a short one.
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
            let Some(read) = self.inflight.get_mut(&id) else {
                continue;
            };
            let outcome = match usize::try_from(res) {
                Err(_) => Some(Err(io::Error::from_raw_os_error(-res))),
                Ok(0) => {
                    read.buf.resize(read.want, 0);
                    Some(Ok(()))
                }
                Ok(n) => {
                    // SAFETY: the kernel wrote `n` more bytes after the first `len`.
                    unsafe { read.buf.set_len(read.buf.len() + n) };
                    (read.buf.len() == read.want).then_some(Ok(()))
                }
            };
            match outcome {
                None => {
                    let entry = read.entry(id);
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
                tracing::error!(error = %e, "cannot submit the rest of a short read");
            }
        }
    }

    /// Refuses new reads and fails the waiting ones (their callers read another way). The
    /// reads stay in the table: the kernel may still be writing into their buffers.
    fn stop(&mut self) {
        self.stopped = true;
        for read in self.inflight.values_mut() {
            if let Some(tx) = read.done.take() {
                let _ = tx.send(Err(io::Error::other("the read ring stopped")));
            }
        }
    }

    fn finish(&mut self, id: u64, r: io::Result<()>) {
        if let Some(mut read) = self.inflight.remove(&id) {
            if let Some(tx) = read.done.take() {
                let _ = tx.send(r.map(|()| read.buf));
            }
        }
    }
}

impl Drop for Inner {
    /// The kernel may still be writing into in-flight buffers: wait for it first.
    fn drop(&mut self) {
        while !self.inflight.is_empty() {
            if self.ring.submit_and_wait(1).is_err() {
                // Cannot tell when the kernel is done with them: never free them.
                for (_, read) in self.inflight.drain() {
                    std::mem::forget(read);
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
    fn fixture(len: usize) -> (Arc<Reads>, tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let reads = Reads::start().expect("io_uring on this kernel");
        let t = tempfile::tempdir().expect("tempdir");
        let path = t.path().join("obj");
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        File::create(&path).and_then(|mut f| f.write_all(&data)).expect("write");
        (reads, t, path, data)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_match_the_file_and_zero_fill_past_its_end() {
        let (reads, _dir, path, data) = fixture(1 << 20);
        let open = || File::open(&path).expect("open");
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
            let file = File::open(&path).expect("open");
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
            let file = File::open(&path).expect("open");
            // Polled once, which submits it, then dropped while the kernel may still work.
            let mut abandoned = Box::pin(reads.read(file, 0, 64 << 10));
            let _ = futures::poll!(abandoned.as_mut());
        }
        let got = reads
            .read(File::open(&path).expect("open"), 8192, 100)
            .await
            .expect("read");
        assert_eq!(got, data[8192..8292]);
    }

    /// A stopped ring answers at once, with an error, rather than leaving a reader waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_ring_refuses_reads() {
        let (reads, _dir, path, _) = fixture(4096);
        lock(&reads.inner).stop();
        let r = reads.read(File::open(&path).expect("open"), 0, 4096).await;
        assert!(r.is_err(), "a read on a stopped ring fails");
    }
}
