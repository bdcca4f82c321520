//! The object cache's bookkeeping and files, without the network: which objects are cached,
//! which of their blocks are dirty, least recently used order, the size limit, admission
//! when full, and the cache directory.
//!
//! A full cache admits an object only at its second request within a while: the first is
//! refused (it goes to the replicas) and the object remembered in a bounded list of recent
//! refusals. When the objects in use are many more than the cache holds, each new copy
//! would evict another before either is used again, and that churn (files made and removed,
//! pages fetched and stored, dirty copies of one page pushed) costs more than the
//! replicas: reads ran at 0.4 × and writes at 0.8 × uncached speed with a cache a quarter
//! of the working set. Objects used again soon still get in.
//!
//! On disk, `DIR/<oid>` is an object's cached copy: a sparse file of the object's size that
//! holds only some of its pages (those written, and those read or needed around a partial
//! write, fetched from the replicas). `DIR/<oid>.dirty` says that copy holds writes the
//! replicas do not have yet; it holds the VDI's lock count they were written under.
//! `DIR/<oid>.pages` is written before the marker and says which pages a dirty copy holds
//! (one bit per page, set after the page's bytes are in the copy). A marker is created
//! before the first write into a clean copy and removed only after every write it covers
//! reached the replicas, so a crash of the process never leaves a dirty copy unmarked.
//! After a crash, copies without a marker are dropped (other writers may have changed the
//! object since), and marked ones push the pages they hold (a marker without a page map,
//! left by an earlier version that cached whole objects: the whole copy).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::Oid;
use tokio::sync::{watch, Notify, RwLock};

use super::pages::Pages;

const STRIPES: usize = 256;
const MARKER: &str = ".dirty";
const PAGE_MAP: &str = ".pages";

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

/// A cached copy as a request finds it.
pub struct Found {
    pub file: Arc<File>,
    pub dirty: bool,
    /// Byte runs (offset, length) the copy must fetch from the replicas before it can serve
    /// the request (see [`Pages::missing`]).
    pub missing: Vec<(u64, u64)>,
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
    /// Pages the copy holds.
    present: Pages,
    /// Pages written since the last push; none when clean.
    dirty: Pages,
    /// While dirty: `DIR/<oid>.pages`, kept equal to `present`.
    page_map: Option<File>,
    /// Bumped by every write: a push marks the copy clean only if none came meanwhile.
    gen: u64,
    /// The VDI's lock count when the copy turned dirty.
    lock_gen: u64,
}

impl Entry {
    fn is_dirty(&self) -> bool {
        self.dirty.any()
    }

    /// Marks bytes `[at, at + len)` present, and records newly present pages in the page
    /// map of a dirty copy.
    fn hold(&mut self, at: u64, len: u64) -> io::Result<()> {
        match (self.present.set(at, len), &self.page_map) {
            (Some((first, last)), Some(map)) => {
                map.write_all_at(&self.present.words_bytes(first, last), first as u64 * 8)
            }
            _ => Ok(()),
        }
    }
}

struct Inner {
    entries: HashMap<Oid, Entry>,
    /// Last use → object; the first is the least recently used.
    by_use: BTreeMap<u64, Oid>,
    tick: u64,
    used: u64,
    dirty_bytes: u64,
    /// Objects refused a copy while the cache was full, oldest first, each with the count
    /// of refusals at its own (see the module's documentation).
    refused: VecDeque<(Oid, u64)>,
    /// The same, by object: the latest refusal of each one not admitted since.
    refused_at: HashMap<Oid, u64>,
    refusals: u64,
}

impl Inner {
    /// Whether `oid` was refused a copy lately; it is forgotten either way, so an object is
    /// admitted once per refusal.
    fn was_refused(&mut self, oid: Oid) -> bool {
        self.refused_at.remove(&oid).is_some()
    }

    /// Remembers a refusal of `oid`, forgetting the oldest past `limit`.
    fn refuse(&mut self, oid: Oid, limit: usize) {
        self.refusals += 1;
        self.refused_at.insert(oid, self.refusals);
        self.refused.push_back((oid, self.refusals));
        while self.refused.len() > limit {
            if let Some((o, n)) = self.refused.pop_front() {
                if self.refused_at.get(&o) == Some(&n) {
                    self.refused_at.remove(&o);
                }
            }
        }
    }
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
    /// Cached writes share it; a VDI lock being taken at this gateway holds it exclusively
    /// (see `cache::taking_lock`).
    pub relock: RwLock<()>,
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
            let copy = name.strip_suffix(PAGE_MAP).unwrap_or(&name);
            let dirty = Oid::from_file_name(copy).is_some_and(|o| leftovers.iter().any(|l| l.oid == o));
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
                refused: VecDeque::new(),
                refused_at: HashMap::new(),
                refusals: 0,
            }),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            pushes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            push_now: Notify::new(),
            ready: watch::channel(leftovers.is_empty()).0,
            relock: RwLock::new(()),
        };
        Ok((index, leftovers))
    }

    fn path(&self, oid: Oid) -> PathBuf {
        self.dir.join(oid.file_name())
    }

    fn marker(&self, oid: Oid) -> PathBuf {
        self.dir.join(format!("{}{MARKER}", oid.file_name()))
    }

    fn page_map(&self, oid: Oid) -> PathBuf {
        self.dir.join(format!("{}{PAGE_MAP}", oid.file_name()))
    }

    /// The bytes a leftover copy holds, as (offset, bytes) runs, for the push after a
    /// crash. A page map of the wrong size is an error (nothing of that copy is pushed).
    pub fn read_leftover(&self, oid: Oid) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let f = File::open(self.path(oid))?;
        let size = f.metadata()?.len();
        let pages = match fs::read(self.page_map(oid)) {
            Ok(bytes) => Pages::from_bytes(&bytes, size)
                .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "the page map does not fit the copy"))?,
            Err(e) if e.kind() == ErrorKind::NotFound => Pages::full(size),
            Err(e) => return Err(e),
        };
        pages
            .runs(size)
            .into_iter()
            .map(|(at, len)| {
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, at).map(|()| (at, buf))
            })
            .collect()
    }

    /// Drops a leftover copy once pushed or given up.
    pub fn drop_leftover(&self, oid: Oid) -> io::Result<()> {
        self.remove_files(oid)
    }

    fn remove_files(&self, oid: Oid) -> io::Result<()> {
        remove_if_there(&self.path(oid))?;
        remove_if_there(&self.marker(oid))?;
        remove_if_there(&self.page_map(oid))
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

    /// The cached copy of `oid`, marked as just used, with what it lacks for a read (or a
    /// `write`) of bytes `[at, at + len)`.
    pub fn lookup(&self, oid: Oid, at: u64, len: u64, write: bool) -> Option<Found> {
        let mut g = lock(&self.inner);
        g.tick += 1;
        let tick = g.tick;
        let e = g.entries.get_mut(&oid)?;
        let old = std::mem::replace(&mut e.used, tick);
        let found = Found {
            file: e.file.clone(),
            dirty: e.is_dirty(),
            missing: e.present.missing(at, len, e.size, write),
        };
        g.by_use.remove(&old);
        g.by_use.insert(tick, oid);
        Some(found)
    }

    /// How many refusals a full cache remembers: about as many copies of `size` bytes as it
    /// holds.
    fn remembered(&self, size: u64) -> usize {
        (self.limit / size.max(1)).clamp(64, 1 << 16) as usize
    }

    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a copy of `oid` (`size` bytes) may be made: always while the cache has room;
    /// when it is full, only for an object refused lately (see the module's documentation).
    /// A refusal is remembered. Cheap: asked before [`Index::insert`], so that a refused
    /// request costs no hand-off to a blocking thread.
    pub fn admits(&self, oid: Oid, size: u64) -> bool {
        let mut g = lock(&self.inner);
        if g.used + size <= self.limit || g.was_refused(oid) {
            return true;
        }
        g.refuse(oid, self.remembered(size));
        false
    }

    /// Makes an empty copy of `oid` (`size` bytes, no page held), making room by dropping
    /// least recently used clean copies: a copy counts its whole size, however few pages it
    /// holds. `None` when dirty copies fill the cache (the caller goes around it). Blocks
    /// (creates and removes files): call from a blocking thread. The caller holds `oid`'s
    /// stripe exclusively.
    pub fn insert(&self, oid: Oid, size: u64) -> io::Result<Option<Arc<File>>> {
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
                self.remove_files(*o)?;
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
            f.set_len(size)?;
            Ok(Arc::new(f))
        })();
        let mut g = lock(&self.inner);
        match res {
            Ok(file) => {
                g.tick += 1;
                let tick = g.tick;
                g.entries.insert(
                    oid,
                    Entry {
                        file: file.clone(),
                        size,
                        used: tick,
                        present: Pages::empty(size),
                        dirty: Pages::empty(size),
                        page_map: None,
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

    /// Before the first write into a clean copy: its page map, then the marker that makes
    /// it dirty on disk. The caller holds `oid`'s stripe exclusively.
    pub fn mark_dirty_on_disk(&self, oid: Oid, lock_gen: u64) -> io::Result<()> {
        let Some(present) = lock(&self.inner).entries.get(&oid).map(|e| e.present.to_bytes()) else {
            return Ok(());
        };
        let map = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.page_map(oid))?;
        map.write_all_at(&present, 0)?;
        fs::write(self.marker(oid), format!("{lock_gen}\n"))?;
        if let Some(e) = lock(&self.inner).entries.get_mut(&oid) {
            e.lock_gen = lock_gen;
            e.page_map = Some(map);
        }
        Ok(())
    }

    /// After bytes `[at, at + len)` fetched from the replicas landed in the copy: they are
    /// held. The caller holds `oid`'s stripe exclusively.
    pub fn filled(&self, oid: Oid, at: u64, len: u64) -> io::Result<()> {
        match lock(&self.inner).entries.get_mut(&oid) {
            Some(e) => e.hold(at, len),
            None => Ok(()),
        }
    }

    /// After a write of `len` bytes at `offset` into the copy landed: its pages are held
    /// and dirty. Returns whether dirty data is past the high-water mark (half the cache);
    /// `None` if the copy is gone (it cannot be while the writer holds its stripe).
    pub fn written(&self, oid: Oid, offset: u64, len: u64) -> io::Result<Option<bool>> {
        let mut g = lock(&self.inner);
        let Some(e) = g.entries.get_mut(&oid) else {
            return Ok(None);
        };
        let was_dirty = e.is_dirty();
        e.dirty.set(offset, len);
        e.gen += 1;
        let size = e.size;
        let held = e.hold(offset, len);
        if !was_dirty {
            g.dirty_bytes += size;
        }
        held.map(|()| Some(g.dirty_bytes > self.limit / 2))
    }

    /// The copy's dirty runs and write generation, for a push; `None` when clean or gone.
    pub fn dirty_runs(&self, oid: Oid) -> Option<DirtyRuns> {
        let g = lock(&self.inner);
        let e = g.entries.get(&oid)?;
        if !e.is_dirty() {
            return None;
        }
        Some(DirtyRuns {
            file: e.file.clone(),
            runs: e.dirty.runs(e.size),
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
            e.dirty.clear();
            e.page_map = None;
            let size = e.size;
            g.dirty_bytes -= size;
        }
        remove_if_there(&self.marker(oid))?;
        remove_if_there(&self.page_map(oid))
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
        self.remove_files(oid)
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
    use super::super::pages::PAGE;
    use super::*;

    const SIZE: u64 = 64 * PAGE;

    fn oid(vid: u32, idx: u32) -> Oid {
        protocol::Vid::new(vid).expect("vid").data_oid(idx)
    }

    fn write(c: &Index, o: Oid, at: u64, data: &[u8]) {
        let f = c.lookup(o, at, data.len() as u64, true).expect("cached").file;
        f.write_all_at(data, at).expect("write");
        c.written(o, at, data.len() as u64).expect("page map").expect("cached");
    }

    #[test]
    fn clean_copies_make_room_and_dirty_ones_stay() {
        let t = tempfile::tempdir().expect("tempdir");
        let (c, left) = Index::open(t.path(), 3 * SIZE).expect("open");
        assert!(left.is_empty());
        for i in 0..3 {
            assert!(c.insert(oid(1, i), SIZE).expect("insert").is_some());
        }
        c.mark_dirty_on_disk(oid(1, 0), 5).expect("marker");
        write(&c, oid(1, 0), 10, b"x");
        c.lookup(oid(1, 1), 0, 1, false);
        // Full: the least recently used clean copy (2) goes, the dirty one (0) stays.
        assert!(c.insert(oid(1, 3), SIZE).expect("insert").is_some());
        assert!(c.contains(oid(1, 0)) && c.contains(oid(1, 1)) && !c.contains(oid(1, 2)));
        assert!(!t.path().join(oid(1, 2).file_name()).exists());
        let s = c.stats();
        assert_eq!((s.used, s.dirty), (3 * SIZE, SIZE));
        assert_eq!(c.dirty(Some(1)), vec![oid(1, 0)]);
        assert!(c.dirty(Some(2)).is_empty());
        // Dirty copies fill it: no room, and nothing dropped.
        c.mark_dirty_on_disk(oid(1, 1), 5).expect("marker");
        write(&c, oid(1, 1), 0, b"y");
        c.mark_dirty_on_disk(oid(1, 3), 5).expect("marker");
        write(&c, oid(1, 3), 0, b"z");
        assert!(c.insert(oid(1, 4), SIZE).expect("insert").is_none());
        assert_eq!(c.stats().used, 3 * SIZE);
    }

    /// A full cache admits an object refused lately, but remembers only so many refusals,
    /// and each one admits once.
    #[test]
    fn a_full_cache_admits_objects_asked_for_again_soon() {
        let t = tempfile::tempdir().expect("tempdir");
        let (c, _) = Index::open(t.path(), SIZE).expect("open");
        assert!(c.admits(oid(3, 0), SIZE), "room: no refusal");
        assert!(c.insert(oid(3, 0), SIZE).expect("insert").is_some());
        let remembered = c.remembered(SIZE) as u32;
        for i in 1..=remembered + 1 {
            assert!(!c.admits(oid(3, i), SIZE), "full: {i} refused");
        }
        assert!(c.contains(oid(3, 0)), "a refusal drops nothing");
        // The newest refusal is remembered: admitted, and its copy takes 0's place.
        let (last, before) = (remembered + 1, remembered);
        assert!(c.admits(oid(3, last), SIZE));
        assert!(c.insert(oid(3, last), SIZE).expect("insert").is_some());
        assert!(!c.contains(oid(3, 0)));
        // The oldest was forgotten: refused again.
        assert!(!c.admits(oid(3, 1), SIZE));
        // An admission is used up: asked once more, the same object is refused.
        assert!(c.admits(oid(3, before), SIZE));
        assert!(!c.admits(oid(3, before), SIZE));
        assert!(c.admits(oid(3, before), SIZE));
    }

    #[test]
    fn a_copy_knows_what_it_lacks() {
        let t = tempfile::tempdir().expect("tempdir");
        let (c, _) = Index::open(t.path(), SIZE).expect("open");
        let o = oid(2, 0);
        assert!(c.lookup(o, 0, 1, false).is_none());
        c.insert(o, SIZE).expect("insert").expect("room");
        let found = c.lookup(o, PAGE + 1, 2 * PAGE, true).expect("cached");
        assert_eq!(found.missing, vec![(PAGE, PAGE), (3 * PAGE, PAGE)]);
        assert!(!found.dirty);
        c.filled(o, PAGE, PAGE).expect("filled");
        c.filled(o, 3 * PAGE, PAGE).expect("filled");
        assert!(c
            .lookup(o, PAGE + 1, 2 * PAGE, true)
            .expect("cached")
            .missing
            .is_empty());
        assert_eq!(
            c.lookup(o, 0, 5 * PAGE, false).expect("cached").missing,
            vec![(0, PAGE), (2 * PAGE, PAGE), (4 * PAGE, PAGE)]
        );
    }

    #[test]
    fn dirty_runs_merge_and_a_push_cleans_only_what_it_saw() {
        let t = tempfile::tempdir().expect("tempdir");
        let (c, _) = Index::open(t.path(), SIZE).expect("open");
        let o = oid(3, 0);
        c.insert(o, 4 * PAGE).expect("insert");
        c.mark_dirty_on_disk(o, 2).expect("marker");
        write(&c, o, 1, &[1; PAGE as usize]);
        write(&c, o, 3 * PAGE + 5, b"x");
        let runs = c.dirty_runs(o).expect("dirty");
        assert_eq!(runs.runs, vec![(0, 2 * PAGE), (3 * PAGE, PAGE)]);
        write(&c, o, 0, b"y");
        c.pushed(o, runs.gen).expect("pushed");
        assert!(c.dirty_runs(o).is_some(), "a write came during the push");
        let again = c.dirty_runs(o).expect("dirty");
        c.pushed(o, again.gen).expect("pushed");
        assert!(c.dirty_runs(o).is_none());
        assert!(!t.path().join(format!("{}{MARKER}", o.file_name())).exists());
        assert!(!t.path().join(format!("{}{PAGE_MAP}", o.file_name())).exists());
    }

    /// A restart keeps the marked copies, and pushes only the pages they held: those
    /// written, and those filled, even after the marker was made.
    #[test]
    fn a_restart_keeps_marked_copies_and_their_pages_only() {
        let t = tempfile::tempdir().expect("tempdir");
        {
            let (c, _) = Index::open(t.path(), SIZE).expect("open");
            c.insert(oid(4, 0), 8 * PAGE).expect("insert");
            c.insert(oid(4, 1), 8 * PAGE).expect("insert");
            c.mark_dirty_on_disk(oid(4, 0), 9).expect("marker");
            write(&c, oid(4, 0), 2 * PAGE, b"dirty");
            c.filled(oid(4, 0), 6 * PAGE, PAGE).expect("filled");
            write(&c, oid(4, 1), 0, b"clean");
        }
        let (c, left) = Index::open(t.path(), SIZE).expect("reopen");
        assert_eq!(
            left,
            vec![Leftover {
                oid: oid(4, 0),
                lock_gen: 9
            }]
        );
        let runs = c.read_leftover(oid(4, 0)).expect("read");
        let mut page = vec![0u8; PAGE as usize];
        page[..5].copy_from_slice(b"dirty");
        assert_eq!(runs, vec![(2 * PAGE, page), (6 * PAGE, vec![0; PAGE as usize])]);
        assert!(!t.path().join(oid(4, 1).file_name()).exists(), "clean copies go");
        c.drop_leftover(oid(4, 0)).expect("drop");
        assert_eq!(std::fs::read_dir(t.path()).expect("ls").count(), 0);
    }

    /// A marker without a page map (a whole copy an earlier version left) pushes the whole
    /// copy; a page map that does not fit the copy pushes nothing.
    #[test]
    fn leftovers_without_or_with_a_bad_page_map() {
        let t = tempfile::tempdir().expect("tempdir");
        let (whole, bad) = (oid(6, 0), oid(6, 1));
        for o in [whole, bad] {
            fs::write(t.path().join(o.file_name()), b"whole copy").expect("copy");
            fs::write(t.path().join(format!("{}{MARKER}", o.file_name())), b"3\n").expect("marker");
        }
        fs::write(t.path().join(format!("{}{PAGE_MAP}", bad.file_name())), b"short").expect("map");
        let (c, left) = Index::open(t.path(), SIZE).expect("open");
        assert_eq!(left.len(), 2);
        assert_eq!(c.read_leftover(whole).expect("read"), vec![(0, b"whole copy".to_vec())]);
        let e = c.read_leftover(bad).expect_err("a bad page map");
        assert_eq!(e.kind(), ErrorKind::InvalidData);
    }

    /// Cached I/O waits for a crash's leftovers, but not for ever; an unreadable marker
    /// matches no lock count.
    #[tokio::test]
    async fn leftovers_hold_cached_io_back_for_a_while_only() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::write(t.path().join(oid(5, 0).file_name()), b"x").expect("copy");
        fs::write(t.path().join(format!("{}{MARKER}", oid(5, 0).file_name())), b"garbage").expect("marker");
        let (c, left) = Index::open(t.path(), SIZE).expect("open");
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
        let (fresh, _) = Index::open(&t.path().join("other"), SIZE).expect("open");
        assert!(
            fresh.wait_ready(std::time::Duration::ZERO).await,
            "nothing left: ready at once"
        );
    }
}
