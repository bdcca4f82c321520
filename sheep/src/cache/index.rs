//! The object cache's bookkeeping and files, without the network: which objects are cached,
//! which of their blocks are dirty, least recently used order, the size limit, and the
//! cache directory.
//!
//! On disk, `DIR/<oid>` is an object's cached copy and `DIR/<oid>.dirty` says that copy
//! holds writes the replicas do not have yet; it holds the VDI's lock count they were
//! written under. A marker is created before the first write into a clean copy and removed
//! only after every write it covers reached the replicas, so a crash of the process never
//! leaves a dirty copy unmarked. After a crash, copies without a marker are dropped (other
//! writers may have changed the object since), and marked ones are pushed whole.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::Oid;
use tokio::sync::{watch, Notify, RwLock};

/// Dirty state is kept per block of this size: a push sends the dirty blocks, not the
/// whole object.
pub const BLOCK: u64 = 64 << 10;
const STRIPES: usize = 256;
const MARKER: &str = ".dirty";

/// A cached copy that holds unpushed writes, found at start-up.
#[derive(Debug, PartialEq, Eq)]
pub struct Leftover {
    pub oid: Oid,
    /// The VDI's lock count the writes were made under.
    pub lock_gen: u64,
}

/// Figures for `dog node info` and `/node/info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub limit: u64,
    pub used: u64,
    pub dirty: u64,
    pub hits: u64,
    pub misses: u64,
}

/// What a push must send: the copy's dirty runs as (offset, length), and the write
/// generation they were taken at.
pub struct DirtyRuns {
    pub file: Arc<File>,
    pub runs: Vec<(u64, u64)>,
    pub gen: u64,
    /// The VDI's lock count the writes were made under.
    pub lock_gen: u64,
}

struct Entry {
    file: Arc<File>,
    size: u64,
    used: u64,
    /// Dirty blocks (one bit per [`BLOCK`]); empty when clean.
    dirty: Vec<u64>,
    /// Bumped by every write: a push marks the copy clean only if none came meanwhile.
    gen: u64,
    /// The VDI's lock count when the copy turned dirty.
    lock_gen: u64,
}

impl Entry {
    fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|w| *w != 0)
    }
}

struct Inner {
    entries: HashMap<Oid, Entry>,
    /// Last use → object; the first is the least recently used.
    by_use: BTreeMap<u64, Oid>,
    tick: u64,
    used: u64,
    dirty_bytes: u64,
}

pub struct Index {
    dir: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
    /// Per object (striped): loads, the end of a push and removal hold it exclusively;
    /// cached reads and writes into dirty copies share it.
    stripes: Vec<RwLock<()>>,
    /// Per object (striped): one push at a time, so an older push never lands after a
    /// newer one.
    pushes: Vec<tokio::sync::Mutex<()>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Wakes the background pusher when dirty data passes the high-water mark.
    pub push_now: Notify,
    /// False until the dirty copies left by a crash have been pushed.
    ready: watch::Sender<bool>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Index {
    /// Opens the cache in `dir` (created if needed) with room for `limit` bytes. Returns the
    /// dirty copies a crash left (still on disk, to push with [`Index::read_leftover`]);
    /// every clean copy is removed.
    pub fn open(dir: &Path, limit: u64) -> io::Result<(Index, Vec<Leftover>)> {
        fs::create_dir_all(dir)?;
        let mut leftovers = Vec::new();
        let mut files = Vec::new();
        for e in fs::read_dir(dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(MARKER).and_then(Oid::from_file_name) {
                Some(oid) => {
                    let text = fs::read_to_string(dir.join(&name))?;
                    // An unreadable count matches no lock: the copy is dropped, and said so.
                    let lock_gen = text.trim().parse().unwrap_or_else(|_| {
                        tracing::error!(%oid, marker = %text.trim(), "object cache: unreadable dirty marker");
                        u64::MAX
                    });
                    leftovers.push(Leftover { oid, lock_gen });
                }
                None => files.push(name),
            }
        }
        for name in files {
            let dirty = Oid::from_file_name(&name).is_some_and(|o| leftovers.iter().any(|l| l.oid == o));
            if !dirty {
                fs::remove_file(dir.join(&name))?;
            }
        }
        leftovers.sort_by_key(|l| l.oid);
        let index = Index {
            dir: dir.to_path_buf(),
            limit,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                by_use: BTreeMap::new(),
                tick: 0,
                used: 0,
                dirty_bytes: 0,
            }),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            pushes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            push_now: Notify::new(),
            ready: watch::channel(leftovers.is_empty()).0,
        };
        Ok((index, leftovers))
    }

    fn path(&self, oid: Oid) -> PathBuf {
        self.dir.join(oid.file_name())
    }

    fn marker(&self, oid: Oid) -> PathBuf {
        self.dir.join(format!("{}{MARKER}", oid.file_name()))
    }

    /// A leftover copy's bytes, for the push after a crash.
    pub fn read_leftover(&self, oid: Oid) -> io::Result<Vec<u8>> {
        fs::read(self.path(oid))
    }

    /// Drops a leftover copy once pushed or given up.
    pub fn drop_leftover(&self, oid: Oid) -> io::Result<()> {
        remove_if_there(&self.path(oid))?;
        remove_if_there(&self.marker(oid))
    }

    /// Every leftover is dealt with: cached I/O may start.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Waits up to `limit` until the leftovers of a crash have been dealt with; false if
    /// they still are not (their replicas keep refusing the push).
    pub async fn wait_ready(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.ready.subscribe();
        let done = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
        matches!(done, Ok(Ok(_)))
    }

    pub fn stripe(&self, oid: Oid) -> &RwLock<()> {
        &self.stripes[self.stripe_index(oid)]
    }

    /// Held for the whole of a push of `oid`.
    pub fn push_lock(&self, oid: Oid) -> &tokio::sync::Mutex<()> {
        &self.pushes[self.stripe_index(oid)]
    }

    fn stripe_index(&self, oid: Oid) -> usize {
        (protocol::hash::sd_hash_oid(oid.0) as usize) % STRIPES
    }

    pub fn contains(&self, oid: Oid) -> bool {
        lock(&self.inner).entries.contains_key(&oid)
    }

    /// The cached copy of `oid` and whether it is dirty, marked as just used.
    pub fn lookup(&self, oid: Oid) -> Option<(Arc<File>, bool)> {
        let mut g = lock(&self.inner);
        g.tick += 1;
        let tick = g.tick;
        let e = g.entries.get_mut(&oid)?;
        let old = std::mem::replace(&mut e.used, tick);
        let found = (e.file.clone(), e.is_dirty());
        g.by_use.remove(&old);
        g.by_use.insert(tick, oid);
        Some(found)
    }

    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Caches `data` as `oid`'s copy, making room by dropping least recently used clean
    /// copies. `None` when dirty copies fill the cache (the caller goes around it). Blocks
    /// (writes the file): call from a blocking thread. The caller holds `oid`'s stripe
    /// exclusively.
    pub fn insert(&self, oid: Oid, data: &[u8]) -> io::Result<Option<Arc<File>>> {
        let size = data.len() as u64;
        let victims = {
            let mut g = lock(&self.inner);
            let mut victims = Vec::new();
            // A victim's stripe stays held until it is out of the table: a reader or writer
            // that holds it keeps its copy, and one that comes after finds it gone.
            let mut held = Vec::new();
            let mut freed = 0;
            for (_, o) in g.by_use.iter() {
                if g.used - freed + size <= self.limit {
                    break;
                }
                let Some(e) = g.entries.get(o) else {
                    continue;
                };
                if e.is_dirty() {
                    continue;
                }
                let stripe = self.stripe_index(*o);
                if held.iter().any(|(i, _)| *i == stripe) {
                    victims.push(*o);
                    freed += e.size;
                } else if let Ok(guard) = self.stripes[stripe].try_write() {
                    held.push((stripe, guard));
                    victims.push(*o);
                    freed += e.size;
                }
            }
            if g.used - freed + size > self.limit {
                return Ok(None);
            }
            for o in &victims {
                if let Some(e) = g.entries.remove(o) {
                    g.by_use.remove(&e.used);
                    g.used -= e.size;
                }
            }
            g.used += size;
            drop(g);
            // Still under the victims' stripes: a new copy of one cannot be made (and then
            // unlinked here) before its old file is gone.
            for o in &victims {
                remove_if_there(&self.path(*o))?;
            }
            drop(held);
            victims
        };
        debug_assert!(!victims.contains(&oid));
        let res = (|| {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.path(oid))?;
            // In pieces: a copy written at once sits in large page-cache folios, and every
            // small write into one then walks the whole folio (several times slower).
            for (i, piece) in data.chunks(BLOCK as usize).enumerate() {
                f.write_all_at(piece, i as u64 * BLOCK)?;
            }
            Ok(Arc::new(f))
        })();
        let mut g = lock(&self.inner);
        match res {
            Ok(file) => {
                g.tick += 1;
                let tick = g.tick;
                let words = size.div_ceil(BLOCK).div_ceil(64) as usize;
                g.entries.insert(
                    oid,
                    Entry {
                        file: file.clone(),
                        size,
                        used: tick,
                        dirty: vec![0; words],
                        gen: 0,
                        lock_gen: 0,
                    },
                );
                g.by_use.insert(tick, oid);
                Ok(Some(file))
            }
            Err(e) => {
                g.used -= size;
                Err(e)
            }
        }
    }

    /// Before the first write into a clean copy: the marker that makes it dirty on disk.
    /// The caller holds `oid`'s stripe exclusively.
    pub fn mark_dirty_on_disk(&self, oid: Oid, lock_gen: u64) -> io::Result<()> {
        fs::write(self.marker(oid), format!("{lock_gen}\n"))?;
        if let Some(e) = lock(&self.inner).entries.get_mut(&oid) {
            e.lock_gen = lock_gen;
        }
        Ok(())
    }

    /// After a write of `len` bytes at `offset` into the copy landed: its blocks are dirty.
    /// Returns whether dirty data is past the high-water mark (half the cache); `None` if
    /// the copy is gone (it cannot be while the writer holds its stripe).
    pub fn written(&self, oid: Oid, offset: u64, len: u64) -> Option<bool> {
        let mut g = lock(&self.inner);
        let e = g.entries.get_mut(&oid)?;
        let was_dirty = e.is_dirty();
        let (first, last) = (offset / BLOCK, (offset + len.max(1) - 1) / BLOCK);
        for b in first..=last {
            if let Some(w) = e.dirty.get_mut((b / 64) as usize) {
                *w |= 1 << (b % 64);
            }
        }
        e.gen += 1;
        let size = e.size;
        if !was_dirty {
            g.dirty_bytes += size;
        }
        Some(g.dirty_bytes > self.limit / 2)
    }

    /// The copy's dirty runs and write generation, for a push; `None` when clean or gone.
    pub fn dirty_runs(&self, oid: Oid) -> Option<DirtyRuns> {
        let g = lock(&self.inner);
        let e = g.entries.get(&oid)?;
        if !e.is_dirty() {
            return None;
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let blocks = e.size.div_ceil(BLOCK);
        for b in (0..blocks).filter(|b| e.dirty[(b / 64) as usize] & (1 << (b % 64)) != 0) {
            let (at, len) = (b * BLOCK, BLOCK.min(e.size - b * BLOCK));
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == at => r.1 += len,
                _ => runs.push((at, len)),
            }
        }
        Some(DirtyRuns {
            file: e.file.clone(),
            runs,
            gen: e.gen,
            lock_gen: e.lock_gen,
        })
    }

    /// A push of the runs taken at `gen` reached every replica: the copy is clean unless a
    /// write came since. The caller holds `oid`'s stripe exclusively.
    pub fn pushed(&self, oid: Oid, gen: u64) -> io::Result<()> {
        {
            let mut g = lock(&self.inner);
            let Some(e) = g.entries.get_mut(&oid) else {
                return Ok(());
            };
            if e.gen != gen || !e.is_dirty() {
                return Ok(());
            }
            e.dirty.iter_mut().for_each(|w| *w = 0);
            let size = e.size;
            g.dirty_bytes -= size;
        }
        remove_if_there(&self.marker(oid))
    }

    /// Drops `oid`'s copy, dirty or not. The caller holds `oid`'s stripe exclusively.
    pub fn remove(&self, oid: Oid) -> io::Result<()> {
        {
            let mut g = lock(&self.inner);
            let Some(e) = g.entries.remove(&oid) else {
                return Ok(());
            };
            g.by_use.remove(&e.used);
            g.used -= e.size;
            if e.is_dirty() {
                g.dirty_bytes -= e.size;
            }
        }
        remove_if_there(&self.path(oid))?;
        remove_if_there(&self.marker(oid))
    }

    /// Dirty copies of objects of `vid` (of every VDI: `None`).
    pub fn dirty(&self, vid: Option<u32>) -> Vec<Oid> {
        let g = lock(&self.inner);
        g.entries
            .iter()
            .filter(|(o, e)| e.is_dirty() && vid.is_none_or(|v| o.vid().get() == v))
            .map(|(o, _)| *o)
            .collect()
    }

    /// Every cached copy of an object of `vid`.
    pub fn cached(&self, vid: u32) -> Vec<Oid> {
        lock(&self.inner)
            .entries
            .keys()
            .filter(|o| o.vid().get() == vid)
            .copied()
            .collect()
    }

    /// The least recently used dirty copy, while dirty data is past the high-water mark.
    pub fn push_candidate(&self) -> Option<Oid> {
        let g = lock(&self.inner);
        if g.dirty_bytes <= self.limit / 2 {
            return None;
        }
        g.by_use
            .values()
            .find(|o| g.entries.get(o).is_some_and(Entry::is_dirty))
            .copied()
    }

    pub fn stats(&self) -> Stats {
        let g = lock(&self.inner);
        Stats {
            limit: self.limit,
            used: g.used,
            dirty: g.dirty_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

fn remove_if_there(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(vid: u32, idx: u32) -> Oid {
        protocol::Vid::new(vid).expect("vid").data_oid(idx)
    }

    #[test]
    fn clean_copies_make_room_and_dirty_ones_stay() {
        let t = tempfile::tempdir().expect("tempdir");
        let (c, left) = Index::open(t.path(), 3 * BLOCK).expect("open");
        assert!(left.is_empty());
        let data = vec![7u8; BLOCK as usize];
        for i in 0..3 {
            assert!(c.insert(oid(1, i), &data).expect("insert").is_some());
        }
        c.mark_dirty_on_disk(oid(1, 0), 5).expect("marker");
        c.written(oid(1, 0), 10, 1).expect("cached");
        c.lookup(oid(1, 1));
        // Full: the least recently used clean copy (2) goes, the dirty one (0) stays.
        assert!(c.insert(oid(1, 3), &data).expect("insert").is_some());
        assert!(c.contains(oid(1, 0)) && c.contains(oid(1, 1)) && !c.contains(oid(1, 2)));
        assert!(!t.path().join(oid(1, 2).file_name()).exists());
        let s = c.stats();
        assert_eq!((s.used, s.dirty), (3 * BLOCK, BLOCK));
        assert_eq!(c.dirty(Some(1)), vec![oid(1, 0)]);
        assert!(c.dirty(Some(2)).is_empty());
    }

    #[test]
    fn dirty_runs_merge_and_a_push_cleans_only_what_it_saw() {
        let t = tempfile::tempdir().expect("tempdir");
        let (c, _) = Index::open(t.path(), 64 * BLOCK).expect("open");
        let o = oid(3, 0);
        c.insert(o, &vec![0u8; (4 * BLOCK) as usize]).expect("insert");
        c.mark_dirty_on_disk(o, 2).expect("marker");
        c.written(o, 1, BLOCK).expect("cached");
        c.written(o, 3 * BLOCK + 5, 1).expect("cached");
        let runs = c.dirty_runs(o).expect("dirty");
        assert_eq!(runs.runs, vec![(0, 2 * BLOCK), (3 * BLOCK, BLOCK)]);
        c.written(o, 0, 1).expect("cached");
        c.pushed(o, runs.gen).expect("pushed");
        assert!(c.dirty_runs(o).is_some(), "a write came during the push");
        let again = c.dirty_runs(o).expect("dirty");
        c.pushed(o, again.gen).expect("pushed");
        assert!(c.dirty_runs(o).is_none());
        assert!(!t.path().join(format!("{}{MARKER}", o.file_name())).exists());
    }

    #[test]
    fn a_restart_keeps_marked_copies_only() {
        let t = tempfile::tempdir().expect("tempdir");
        {
            let (c, _) = Index::open(t.path(), 64 * BLOCK).expect("open");
            c.insert(oid(4, 0), b"dirty").expect("insert");
            c.insert(oid(4, 1), b"clean").expect("insert");
            c.mark_dirty_on_disk(oid(4, 0), 9).expect("marker");
            c.written(oid(4, 0), 0, 5).expect("cached");
        }
        let (c, left) = Index::open(t.path(), 64 * BLOCK).expect("reopen");
        assert_eq!(
            left,
            vec![Leftover {
                oid: oid(4, 0),
                lock_gen: 9
            }]
        );
        assert_eq!(c.read_leftover(oid(4, 0)).expect("read"), b"dirty");
        assert!(!t.path().join(oid(4, 1).file_name()).exists(), "clean copies go");
        c.drop_leftover(oid(4, 0)).expect("drop");
        assert_eq!(std::fs::read_dir(t.path()).expect("ls").count(), 0);
    }

    /// Cached I/O waits for a crash's leftovers, but not for ever; an unreadable marker
    /// matches no lock count.
    #[tokio::test]
    async fn leftovers_hold_cached_io_back_for_a_while_only() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::write(t.path().join(oid(5, 0).file_name()), b"x").expect("copy");
        fs::write(t.path().join(format!("{}{MARKER}", oid(5, 0).file_name())), b"garbage").expect("marker");
        let (c, left) = Index::open(t.path(), BLOCK).expect("open");
        assert_eq!(
            left,
            vec![Leftover {
                oid: oid(5, 0),
                lock_gen: u64::MAX
            }]
        );
        assert!(!c.wait_ready(std::time::Duration::from_millis(50)).await);
        c.set_ready();
        assert!(c.wait_ready(std::time::Duration::from_millis(50)).await);
        let (fresh, _) = Index::open(&t.path().join("other"), BLOCK).expect("open");
        assert!(
            fresh.wait_ready(std::time::Duration::ZERO).await,
            "nothing left: ready at once"
        );
    }
}
