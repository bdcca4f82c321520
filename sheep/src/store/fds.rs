//! A bounded cache of open object files, so that object I/O does not pay an `open(2)` (a path
//! walk, a dentry lookup, a descriptor) per request. Least recently used files are closed
//! first. The store drops an object's entry whenever it removes or replaces the object's
//! file, so a cached descriptor never outlives the file it names.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::{Arc, Mutex};

use protocol::Oid;

use super::lock;

/// The open files of one object.
#[derive(Clone)]
pub struct Open {
    /// Read and write, through the page cache.
    pub file: Arc<File>,
    /// Write with O_DIRECT, opened at the first aligned write of a data object.
    pub direct: Option<Arc<File>>,
    /// The object's checksums (`<oid>.sum`), if it has them.
    pub sums: Option<Arc<File>>,
}

pub struct Fds {
    inner: Mutex<Inner>,
    cap: usize,
}

struct Inner {
    by_oid: HashMap<Oid, (Open, u64)>,
    /// Last use → object: the first entry is the least recently used.
    by_use: BTreeMap<u64, Oid>,
    tick: u64,
    /// Bumped by a [`Fds::forget`] of an object of the stripe: a file opened before it may
    /// name a replaced object. Striped, so that a stream of creates (each forgets what was
    /// open under the object's name) does not keep every other object out of the cache.
    generations: [u64; STRIPES],
}

const STRIPES: usize = 64;

fn stripe(oid: Oid) -> usize {
    (protocol::hash::sd_hash_oid(oid.0) as usize) % STRIPES
}

impl Fds {
    /// A cache of at most `cap` objects' files.
    pub fn new(cap: usize) -> Fds {
        Fds {
            inner: Mutex::new(Inner {
                by_oid: HashMap::new(),
                by_use: BTreeMap::new(),
                tick: 0,
                generations: [0; STRIPES],
            }),
            cap: cap.max(1),
        }
    }

    /// The cached files of `oid`, marked as just used.
    pub fn get(&self, oid: Oid) -> Option<Open> {
        let mut g = lock(&self.inner);
        g.tick += 1;
        let tick = g.tick;
        let (open, used) = g.by_oid.get_mut(&oid)?;
        let (open, old) = (open.clone(), std::mem::replace(used, tick));
        g.by_use.remove(&old);
        g.by_use.insert(tick, oid);
        Some(open)
    }

    /// The generation to pass to [`Fds::put`] for a file of `oid` about to be opened.
    pub fn generation(&self, oid: Oid) -> u64 {
        lock(&self.inner).generations[stripe(oid)]
    }

    /// Caches `open` for `oid`, unless an object of its stripe was forgotten since
    /// `generation` was read (the file opened may be one that was replaced meanwhile). Closes
    /// the least recently used objects' files beyond the cap.
    pub fn put(&self, oid: Oid, open: Open, generation: u64) {
        let mut g = lock(&self.inner);
        if g.generations[stripe(oid)] == generation {
            self.insert(&mut g, oid, open);
        }
    }

    /// Caches `open`, the files of a copy that has just replaced `oid`'s, in place of
    /// whatever was cached: files of `oid` opened meanwhile may be the old copy's.
    pub fn replace(&self, oid: Oid, open: Open) {
        let mut g = lock(&self.inner);
        g.generations[stripe(oid)] += 1;
        self.insert(&mut g, oid, open);
    }

    fn insert(&self, g: &mut Inner, oid: Oid, open: Open) {
        g.tick += 1;
        let tick = g.tick;
        if let Some((_, old)) = g.by_oid.insert(oid, (open, tick)) {
            g.by_use.remove(&old);
        }
        g.by_use.insert(tick, oid);
        while g.by_oid.len() > self.cap {
            let Some((_, victim)) = g.by_use.pop_first() else {
                break;
            };
            g.by_oid.remove(&victim);
        }
    }

    /// Closes `oid`'s files (it is being removed or replaced). Readers and writers still
    /// holding them finish on the file they had.
    pub fn forget(&self, oid: Oid) {
        let mut g = lock(&self.inner);
        g.generations[stripe(oid)] += 1;
        if let Some((_, used)) = g.by_oid.remove(&oid) {
            g.by_use.remove(&used);
        }
    }

    /// Closes every cached file.
    pub fn clear(&self) {
        let mut g = lock(&self.inner);
        g.generations.iter_mut().for_each(|n| *n += 1);
        g.by_oid.clear();
        g.by_use.clear();
    }

    #[cfg(test)]
    fn cached(&self) -> Vec<Oid> {
        lock(&self.inner).by_use.values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Open {
        Open {
            file: Arc::new(File::open("/dev/null").expect("open /dev/null")),
            direct: None,
            sums: None,
        }
    }

    #[test]
    fn least_recently_used_is_closed_first() {
        let fds = Fds::new(2);
        fds.put(Oid(1), open(), fds.generation(Oid(1)));
        fds.put(Oid(2), open(), fds.generation(Oid(2)));
        assert!(fds.get(Oid(1)).is_some());
        fds.put(Oid(3), open(), fds.generation(Oid(3)));
        assert_eq!(fds.cached(), vec![Oid(1), Oid(3)], "2 was the least recently used");
        assert!(fds.get(Oid(2)).is_none());
        fds.forget(Oid(1));
        assert_eq!(fds.cached(), vec![Oid(3)]);
        fds.clear();
        assert!(fds.cached().is_empty());
    }

    #[test]
    fn a_file_opened_across_a_forget_is_not_cached() {
        let fds = Fds::new(4);
        let g = fds.generation(Oid(7));
        fds.forget(Oid(7));
        fds.put(Oid(7), open(), g);
        assert!(
            fds.get(Oid(7)).is_none(),
            "the object may have been replaced after the open"
        );
        fds.put(Oid(7), open(), fds.generation(Oid(7)));
        assert!(fds.get(Oid(7)).is_some());
    }

    #[test]
    fn a_replace_caches_the_new_copy_and_keeps_out_files_opened_before_it() {
        let fds = Fds::new(4);
        let g = fds.generation(Oid(7));
        fds.replace(Oid(7), open());
        let new = fds.get(Oid(7)).expect("the new copy's files are cached");
        fds.put(Oid(7), open(), g);
        let still = fds.get(Oid(7)).expect("cached");
        assert!(
            Arc::ptr_eq(&still.file, &new.file),
            "a file opened before the replace may be the old copy's"
        );
    }

    #[test]
    fn a_forget_keeps_out_only_files_of_its_stripe() {
        let fds = Fds::new(4);
        let other = (8..)
            .map(Oid)
            .find(|&o| stripe(o) != stripe(Oid(7)))
            .expect("an object of another stripe");
        let g = fds.generation(Oid(7));
        fds.forget(other);
        fds.put(Oid(7), open(), g);
        assert!(
            fds.get(Oid(7)).is_some(),
            "a create elsewhere does not keep 7 out of the cache"
        );
    }
}
