//! The `local` driver: sheep on one host share a rendezvous directory.
//!
//! - `log`: the total order, one JSON event per line, appended under an exclusive `flock` on
//!   `log.lock` and fsynced. A line's position is the byte offset of its end, counted from
//!   the first event ever logged: a trimmed log starts with a line `{"trimmed_to":N}`, the
//!   position its first remaining event starts at.
//! - `checkpoint`: the cluster state at some position (the [`ClusterState`] JSON), written
//!   every [`CHECKPOINT_EVERY`](super::CHECKPOINT_EVERY) events by the live member with the
//!   lowest address. After writing it, that member rewrites the log without the events that
//!   the checkpoint covers and every member has applied. A reader whose position lies before
//!   the log's start begins at the checkpoint.
//! - `members/ADDR`: each live sheep holds an exclusive `flock` on its own file. The kernel
//!   drops it when the process dies, however it dies, so a peer that can take that lock knows
//!   the sheep is gone and appends its `Leave` (while holding the lock, so a restart of the
//!   same sheep is ordered after it).
//! - `ops.lock`: the cluster-wide lock for VDI operations.
//!
//! A reader task tails the log (every [`POLL`]) and checks members' liveness (every
//! [`LIVENESS`]), well inside the 2 s in which a crash must be noticed.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::node::Node;
use tokio::sync::mpsc::UnboundedSender;

use super::{now_secs, Cadence, Delivered, Delivery, DriverError, OpsLock};
use crate::group::{ClusterState, Event};
use crate::store::write_durably;

const POLL: Duration = Duration::from_millis(20);
const LIVENESS: Duration = Duration::from_millis(500);

/// A log line and the position of its end.
type Line = (u64, Vec<u8>);

/// What a read of the log found.
enum Tail {
    /// Complete lines after the position asked for, and the position after them.
    Lines(Vec<Line>, u64),
    /// The position asked for was trimmed away: start from the checkpoint.
    Trimmed,
}

/// The first line of a trimmed log.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    trimmed_to: u64,
}

/// Where a log's events begin: (position of its first event line, file offset of it).
fn origin(f: &File) -> io::Result<(u64, u64)> {
    let mut head = [0u8; 64];
    let n = f.read_at(&mut head, 0)?;
    let first = head[..n].iter().position(|&b| b == b'\n');
    Ok(first
        .and_then(|nl| {
            serde_json::from_slice::<Start>(&head[..nl])
                .ok()
                .map(|s| (s.trimmed_to, nl as u64 + 1))
        })
        .unwrap_or((0, 0)))
}

struct Paths {
    checkpoint: PathBuf,
    log: PathBuf,
    log_lock: PathBuf,
    ops_lock: PathBuf,
    members: PathBuf,
    applied: PathBuf,
}

pub struct LocalDriver {
    paths: Arc<Paths>,
    cadence: Arc<Cadence>,
    me: SocketAddr,
    /// Our own member lock, held from join until leave or exit.
    member_lock: Mutex<Option<File>>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DriverError + '_ {
    move |source| DriverError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on an open descriptor has no memory-safety preconditions.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn open_rw(path: &Path) -> Result<File, DriverError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))
}

impl Paths {
    fn member(&self, addr: SocketAddr) -> PathBuf {
        self.members.join(addr.to_string())
    }

    /// Appends one event line; returns its end position.
    fn append(&self, ev: &Event) -> Result<u64, DriverError> {
        let lock = open_rw(&self.log_lock)?;
        flock(&lock, libc::LOCK_EX).map_err(io_err(&self.log_lock))?;
        let mut line = serde_json::to_vec(ev).map_err(|e| DriverError::Task(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.log)
            .map_err(io_err(&self.log))?;
        f.write_all(&line).map_err(io_err(&self.log))?;
        f.sync_data().map_err(io_err(&self.log))?;
        self.end_of(&f)
    }

    /// The position after the last line of the open log `f`.
    fn end_of(&self, f: &File) -> Result<u64, DriverError> {
        let (start, at) = origin(f).map_err(io_err(&self.log))?;
        let len = f.metadata().map_err(io_err(&self.log))?.len();
        Ok(start + len.saturating_sub(at))
    }

    /// The position after the last logged event (0 before any).
    fn end(&self) -> Result<u64, DriverError> {
        let lock = open_rw(&self.log_lock)?;
        flock(&lock, libc::LOCK_SH).map_err(io_err(&self.log_lock))?;
        match File::open(&self.log) {
            Ok(f) => self.end_of(&f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&self.log)(e)),
        }
    }

    /// Reads the complete lines after position `from`.
    fn read_from(&self, from: u64) -> Result<Tail, DriverError> {
        let lock = open_rw(&self.log_lock)?;
        flock(&lock, libc::LOCK_SH).map_err(io_err(&self.log_lock))?;
        let mut f = match File::open(&self.log) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Tail::Lines(Vec::new(), from)),
            Err(e) => return Err(io_err(&self.log)(e)),
        };
        let (start, at) = origin(&f).map_err(io_err(&self.log))?;
        if from < start {
            return Ok(Tail::Trimmed);
        }
        f.seek(SeekFrom::Start(at + (from - start)))
            .map_err(io_err(&self.log))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io_err(&self.log))?;
        drop(lock);
        let mut out = Vec::new();
        let mut pos = from;
        let mut rest = &buf[..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            pos += nl as u64 + 1;
            out.push((pos, rest[..nl].to_vec()));
            rest = &rest[nl + 1..];
        }
        Ok(Tail::Lines(out, pos))
    }

    fn load_checkpoint(&self) -> Result<ClusterState, DriverError> {
        let bytes = fs::read(&self.checkpoint).map_err(io_err(&self.checkpoint))?;
        ClusterState::from_checkpoint(&bytes)
            .map_err(|e| DriverError::Task(format!("{}: {e}", self.checkpoint.display())))
    }

    /// Stores the checkpoint at `pos` (unless a newer one is there) and trims the log to
    /// what it and every member in it have applied. Returns the events trimmed.
    fn write_checkpoint(&self, pos: u64, image: &[u8]) -> Result<usize, DriverError> {
        #[derive(serde::Deserialize)]
        struct At {
            pos: u64,
        }
        let stored = fs::read(&self.checkpoint)
            .ok()
            .and_then(|b| serde_json::from_slice::<At>(&b).ok());
        if stored.is_some_and(|at| at.pos >= pos) {
            return Ok(0);
        }
        write_durably(&self.checkpoint, image).map_err(io_err(&self.checkpoint))?;
        let state = ClusterState::from_checkpoint(image).map_err(|e| DriverError::Task(e.to_string()))?;
        let mut limit = pos;
        for addr in state.lives().keys() {
            limit = limit.min(self.applied_by(*addr)?);
        }
        self.trim(limit)
    }

    /// How far `addr` has applied the log (0 if it never said).
    fn applied_by(&self, addr: SocketAddr) -> Result<u64, DriverError> {
        let path = self.applied.join(addr.to_string());
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Rewrites the log without the lines that end at or before `limit`.
    fn trim(&self, limit: u64) -> Result<usize, DriverError> {
        let lock = open_rw(&self.log_lock)?;
        flock(&lock, libc::LOCK_EX).map_err(io_err(&self.log_lock))?;
        let mut f = File::open(&self.log).map_err(io_err(&self.log))?;
        let (start, at) = origin(&f).map_err(io_err(&self.log))?;
        if limit <= start {
            return Ok(0);
        }
        f.seek(SeekFrom::Start(at)).map_err(io_err(&self.log))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io_err(&self.log))?;
        let (mut cut, mut lines) = (0usize, 0usize);
        for (i, _) in buf.iter().enumerate().filter(|(_, &b)| b == b'\n') {
            if start + i as u64 + 1 > limit {
                break;
            }
            cut = i + 1;
            lines += 1;
        }
        if lines == 0 {
            return Ok(0);
        }
        let mut out = serde_json::to_vec(&Start {
            trimmed_to: start + cut as u64,
        })
        .map_err(|e| DriverError::Task(e.to_string()))?;
        out.push(b'\n');
        out.extend_from_slice(&buf[cut..]);
        write_durably(&self.log, &out).map_err(io_err(&self.log))?;
        Ok(lines)
    }

    /// If `addr`'s member lock is free, that sheep is gone: append its `Leave`.
    fn reap_if_dead(&self, addr: SocketAddr) -> Result<bool, DriverError> {
        let path = self.member(addr);
        let f = open_rw(&path)?;
        // SAFETY: as in `flock`.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Ok(false);
        }
        self.append(&Event::Leave {
            addr,
            time: now_secs(),
            incarnation: None,
        })?;
        Ok(true)
    }
}

impl LocalDriver {
    pub fn start(dir: &Path, me: SocketAddr, tx: UnboundedSender<Delivery>) -> Result<LocalDriver, DriverError> {
        let paths = Arc::new(Paths {
            checkpoint: dir.join("checkpoint"),
            log: dir.join("log"),
            log_lock: dir.join("log.lock"),
            ops_lock: dir.join("ops.lock"),
            members: dir.join("members"),
            applied: dir.join("applied"),
        });
        fs::create_dir_all(&paths.members).map_err(io_err(&paths.members))?;
        fs::create_dir_all(&paths.applied).map_err(io_err(&paths.applied))?;
        let p = paths.clone();
        let cadence = Arc::new(Cadence::default());
        let c = cadence.clone();
        std::thread::Builder::new()
            .name("local-driver".into())
            .spawn(move || tail(&p, me, &c, &tx))
            .map_err(|e| DriverError::Task(e.to_string()))?;
        Ok(LocalDriver {
            paths,
            cadence,
            me,
            member_lock: Mutex::new(None),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Paths) -> Result<T, DriverError> + Send + 'static,
    ) -> Result<T, DriverError> {
        let p = self.paths.clone();
        tokio::task::spawn_blocking(move || f(&p))
            .await
            .map_err(|e| DriverError::Task(e.to_string()))?
    }

    /// Every sheep that ever joined through this rendezvous (live or not).
    pub fn listed_members(&self) -> Vec<SocketAddr> {
        fs::read_dir(&self.paths.members)
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default()
    }

    pub async fn join(&self, node: Node, fixed_vnodes: bool) -> Result<u64, DriverError> {
        let me = self.me;
        let (lock, pos) = self
            .blocking(move |p| {
                let path = p.member(me);
                let f = open_rw(&path)?;
                flock(&f, libc::LOCK_EX).map_err(io_err(&path))?;
                let pos = p.append(&Event::Join {
                    node,
                    time: now_secs(),
                    incarnation: 0,
                    fixed_vnodes,
                })?;
                Ok((f, pos))
            })
            .await?;
        *self.member_lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
        Ok(pos)
    }

    pub async fn leave(&self) -> Result<(), DriverError> {
        let me = self.me;
        self.blocking(move |p| {
            p.append(&Event::Leave {
                addr: me,
                time: now_secs(),
                incarnation: None,
            })
        })
        .await?;
        self.member_lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    pub async fn broadcast(&self, ev: Event) -> Result<u64, DriverError> {
        self.blocking(move |p| p.append(&ev)).await
    }

    pub async fn lock_ops(&self) -> Result<(OpsLock, u64), DriverError> {
        self.blocking(|p| {
            let f = open_rw(&p.ops_lock)?;
            flock(&f, libc::LOCK_EX).map_err(io_err(&p.ops_lock))?;
            Ok((OpsLock::Local(f), p.end()?))
        })
        .await
    }

    pub fn cadence(&self) -> &Cadence {
        &self.cadence
    }

    /// Writes the checkpoint at `pos` and trims the log behind it, in the background.
    pub fn checkpoint(&self, pos: u64, image: Vec<u8>) {
        if !self.cadence.begin() {
            return;
        }
        let (p, cadence) = (self.paths.clone(), self.cadence.clone());
        tokio::task::spawn_blocking(move || {
            match p.write_checkpoint(pos, &image) {
                Ok(trimmed) => tracing::info!(pos, bytes = image.len(), trimmed, "cluster checkpoint written"),
                Err(e) => {
                    tracing::warn!(pos, error = %e, "cannot write the cluster checkpoint; the next one tries again")
                }
            }
            cadence.end();
        });
    }
}

impl LocalDriver {
    /// Records that this node has applied every event up to `pos`.
    pub async fn report_applied(&self, pos: u64) -> Result<(), DriverError> {
        let me = self.me;
        self.blocking(move |p| {
            let path = p.applied.join(me.to_string());
            let tmp = p.applied.join(format!(".{me}.tmp"));
            fs::write(&tmp, pos.to_string()).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))
        })
        .await
    }

    /// How far `addr` has applied the log (0 if it never said).
    pub async fn applied_by(&self, addr: SocketAddr) -> Result<u64, DriverError> {
        self.blocking(move |p| p.applied_by(addr)).await
    }
}

/// The reader thread: delivers every event in log order (from the checkpoint when the log
/// no longer holds the events after this node's position) and reaps dead members.
fn tail(p: &Paths, me: SocketAddr, cadence: &Cadence, tx: &UnboundedSender<Delivery>) {
    let mut offset = 0u64;
    let mut members: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut last_check = Instant::now();
    loop {
        match p.read_from(offset) {
            Ok(Tail::Lines(lines, next)) => {
                offset = next;
                for (pos, line) in lines {
                    match serde_json::from_slice::<Event>(&line) {
                        Ok(event) => {
                            match &event {
                                Event::Join { node, .. } => {
                                    members.insert(node.addr);
                                }
                                Event::Leave { addr, .. } => {
                                    members.remove(addr);
                                }
                                Event::Shutdown => members.clear(),
                                _ => {}
                            }
                            cadence.delivered();
                            let what = Delivered::Event(event);
                            if tx.send(Delivery { pos, what }).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::error!(pos, error = %e, "skipping unreadable cluster log line")
                        }
                    }
                }
            }
            Ok(Tail::Trimmed) => match p.load_checkpoint() {
                Ok(image) if image.pos > offset => {
                    offset = image.pos;
                    members = image.lives().into_keys().collect();
                    cadence.restart();
                    let what = Delivered::Checkpoint(Box::new(image));
                    if tx.send(Delivery { pos: offset, what }).is_err() {
                        return;
                    }
                }
                Ok(image) => tracing::error!(
                    pos = offset,
                    checkpoint = image.pos,
                    "the cluster log is trimmed past this node's position but the checkpoint is older"
                ),
                Err(e) => tracing::error!(error = %e, "cannot read the cluster checkpoint"),
            },
            Err(e) => tracing::error!(error = %e, "cannot read the cluster log"),
        }
        cadence.set_writer(members.iter().next() == Some(&me));
        if last_check.elapsed() >= LIVENESS {
            last_check = Instant::now();
            for addr in members.iter().filter(|a| **a != me) {
                match p.reap_if_dead(*addr) {
                    Ok(true) => {
                        tracing::warn!(node = %addr, "node is gone (its member lock is free); announced its leave")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(node = %addr, error = %e, "liveness check failed"),
                }
            }
        }
        std::thread::sleep(POLL);
    }
}
