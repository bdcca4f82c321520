//! A bitmap over a cached copy's 4 KiB pages: which of them the copy holds, and which of
//! those hold writes the replicas do not have yet.

/// Presence and dirtiness are kept per page of this size: a 4 KiB-aligned write into an
/// object the cache does not hold yet needs nothing from the replicas, and a push sends the
/// dirty pages only.
pub const PAGE: u64 = 4 << 10;

/// One bit per [`PAGE`] of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pages(Vec<u64>);

/// The pages that bytes `[at, at + len)` touch, as an inclusive range of page numbers.
fn touched(at: u64, len: u64) -> (u64, u64) {
    (at / PAGE, (at + len.max(1) - 1) / PAGE)
}

impl Pages {
    /// No page set, for an object of `size` bytes.
    pub fn empty(size: u64) -> Pages {
        Pages(vec![0; size.div_ceil(PAGE).div_ceil(64) as usize])
    }

    /// Every page set, for an object of `size` bytes.
    pub fn full(size: u64) -> Pages {
        let mut p = Pages::empty(size);
        p.set(0, size);
        p
    }

    /// The bitmap [`Pages::to_bytes`] wrote for an object of `size` bytes; `None` if
    /// `bytes` is not one.
    pub fn from_bytes(bytes: &[u8], size: u64) -> Option<Pages> {
        let p = Pages::empty(size);
        if bytes.len() != p.0.len() * 8 {
            return None;
        }
        let words = bytes.chunks_exact(8).map(|w| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            u64::from_le_bytes(a)
        });
        Some(Pages(words.collect()))
    }

    /// Words `first..=last` as stored (little-endian), found at byte `first * 8`.
    pub fn words_bytes(&self, first: usize, last: usize) -> Vec<u8> {
        self.0[first..=last].iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.words_bytes(0, self.0.len() - 1)
    }

    fn has(&self, page: u64) -> bool {
        self.0
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    pub fn any(&self) -> bool {
        self.0.iter().any(|w| *w != 0)
    }

    pub fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }

    /// Sets every page that bytes `[at, at + len)` touch. Returns the range of words that
    /// changed, if any did.
    pub fn set(&mut self, at: u64, len: u64) -> Option<(usize, usize)> {
        let (first, last) = touched(at, len);
        let mut changed: Option<(usize, usize)> = None;
        for p in first..=last {
            let i = (p / 64) as usize;
            let Some(w) = self.0.get_mut(i) else { break };
            let bit = 1 << (p % 64);
            if *w & bit == 0 {
                *w |= bit;
                changed = Some(changed.map_or((i, i), |(a, _)| (a, i)));
            }
        }
        changed
    }

    /// The set pages as byte runs (offset, length) within an object of `size` bytes.
    pub fn runs(&self, size: u64) -> Vec<(u64, u64)> {
        merge((0..size.div_ceil(PAGE)).filter(|&p| self.has(p)), size)
    }

    /// What a copy lacks before it can serve bytes `[at, at + len)` of an object of `size`
    /// bytes, as byte runs: every page of the range that is not set, or for a write
    /// (`edges_only`) only the first and last page when the write covers them in part.
    pub fn missing(&self, at: u64, len: u64, size: u64, edges_only: bool) -> Vec<(u64, u64)> {
        let (first, last) = touched(at, len);
        let last = last.min(size.div_ceil(PAGE).saturating_sub(1));
        let lacking = |p: &u64| !self.has(*p);
        if !edges_only {
            return merge((first..=last).filter(lacking), size);
        }
        let head = (!at.is_multiple_of(PAGE)).then_some(first);
        let tail = (!(at + len).is_multiple_of(PAGE)).then_some(last);
        let edges = head.into_iter().chain(tail.filter(|&t| Some(t) != head));
        merge(edges.filter(lacking), size)
    }
}

/// Ascending page numbers as merged byte runs, the last one cut at `size`.
fn merge(pages: impl Iterator<Item = u64>, size: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in pages {
        let (at, len) = (p * PAGE, PAGE.min(size - p * PAGE));
        match runs.last_mut() {
            Some(r) if r.0 + r.1 == at => r.1 += len,
            _ => runs.push((at, len)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 4 << 20;

    #[test]
    fn set_reports_the_words_it_changed_and_runs_merge() {
        let mut p = Pages::empty(SIZE);
        assert!(!p.any());
        assert_eq!(p.set(PAGE + 1, 1), Some((0, 0)));
        assert_eq!(p.set(PAGE, PAGE), None, "already set");
        assert_eq!(p.set(63 * PAGE, 2 * PAGE), Some((0, 1)));
        assert_eq!(p.runs(SIZE), vec![(PAGE, PAGE), (63 * PAGE, 2 * PAGE)]);
        let back = Pages::from_bytes(&p.to_bytes(), SIZE).expect("same size");
        assert_eq!(back, p);
        assert_eq!(Pages::from_bytes(&p.to_bytes(), 2 * SIZE), None, "another size");
        assert_eq!(p.words_bytes(1, 1), 1u64.to_le_bytes());
        p.clear();
        assert!(!p.any());
        assert_eq!(Pages::full(SIZE).runs(SIZE), vec![(0, SIZE)]);
    }

    #[test]
    fn a_read_lacks_every_unset_page_a_write_only_its_partial_edges() {
        let mut p = Pages::empty(SIZE);
        p.set(2 * PAGE, PAGE);
        // Bytes from the middle of page 1 to the middle of page 4.
        let (at, len) = (PAGE + 100, 3 * PAGE);
        assert_eq!(
            p.missing(at, len, SIZE, false),
            vec![(PAGE, PAGE), (3 * PAGE, 2 * PAGE)]
        );
        assert_eq!(p.missing(at, len, SIZE, true), vec![(PAGE, PAGE), (4 * PAGE, PAGE)]);
        assert!(p.missing(8 * PAGE, 2 * PAGE, SIZE, true).is_empty(), "aligned: nothing");
        assert_eq!(
            p.missing(9 * PAGE + 1, 10, SIZE, true),
            vec![(9 * PAGE, PAGE)],
            "one page, once"
        );
        assert_eq!(
            p.missing(SIZE - PAGE, 4 * PAGE, SIZE, false),
            vec![(SIZE - PAGE, PAGE)],
            "cut at the end"
        );
        p.set(PAGE, PAGE);
        assert_eq!(p.missing(at, len, SIZE, true), vec![(4 * PAGE, PAGE)]);
    }
}
