//! The `local` driver: sheep on one host share a rendezvous directory.
//!
//! - `log`: the total order, one JSON event per line, appended under an exclusive `flock` on
//!   `log.lock` and fsynced. A line's position is the byte offset of its end.
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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::node::Node;
use tokio::sync::mpsc::UnboundedSender;

use super::{now_secs, Delivery, DriverError, OpsLock};
use crate::group::Event;

const POLL: Duration = Duration::from_millis(20);
const LIVENESS: Duration = Duration::from_millis(500);

/// A log line and the position of its end.
type Line = (u64, Vec<u8>);

struct Paths {
    log: PathBuf,
    log_lock: PathBuf,
    ops_lock: PathBuf,
    members: PathBuf,
    applied: PathBuf,
}

pub struct LocalDriver {
    paths: Arc<Paths>,
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
            .append(true)
            .create(true)
            .open(&self.log)
            .map_err(io_err(&self.log))?;
        f.write_all(&line).map_err(io_err(&self.log))?;
        f.sync_data().map_err(io_err(&self.log))?;
        f.metadata().map(|m| m.len()).map_err(io_err(&self.log))
    }

    /// Reads complete lines after `from`. Returns (events with end positions, new offset).
    fn read_from(&self, from: u64) -> Result<(Vec<Line>, u64), DriverError> {
        let len = match fs::metadata(&self.log) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), from)),
            Err(e) => return Err(io_err(&self.log)(e)),
        };
        if len <= from {
            return Ok((Vec::new(), from));
        }
        let lock = open_rw(&self.log_lock)?;
        flock(&lock, libc::LOCK_SH).map_err(io_err(&self.log_lock))?;
        let mut f = File::open(&self.log).map_err(io_err(&self.log))?;
        f.seek(SeekFrom::Start(from)).map_err(io_err(&self.log))?;
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
        Ok((out, pos))
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
            log: dir.join("log"),
            log_lock: dir.join("log.lock"),
            ops_lock: dir.join("ops.lock"),
            members: dir.join("members"),
            applied: dir.join("applied"),
        });
        fs::create_dir_all(&paths.members).map_err(io_err(&paths.members))?;
        fs::create_dir_all(&paths.applied).map_err(io_err(&paths.applied))?;
        let p = paths.clone();
        std::thread::Builder::new()
            .name("local-driver".into())
            .spawn(move || tail(&p, me, &tx))
            .map_err(|e| DriverError::Task(e.to_string()))?;
        Ok(LocalDriver {
            paths,
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
            let end = match fs::metadata(&p.log) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                Err(e) => return Err(io_err(&p.log)(e)),
            };
            Ok((OpsLock::Local(f), end))
        })
        .await
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
        self.blocking(move |p| {
            let path = p.applied.join(addr.to_string());
            match fs::read_to_string(&path) {
                Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(io_err(&path)(e)),
            }
        })
        .await
    }
}

/// The reader thread: delivers every event in log order and reaps dead members.
fn tail(p: &Paths, me: SocketAddr, tx: &UnboundedSender<Delivery>) {
    let mut offset = 0u64;
    let mut members: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut last_check = Instant::now();
    loop {
        match p.read_from(offset) {
            Ok((lines, next)) => {
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
                            if tx
                                .send(Delivery {
                                    pos,
                                    event: Some(event),
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::error!(pos, error = %e, "skipping unreadable cluster log line")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the cluster log"),
        }
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
