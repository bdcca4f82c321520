//! Pure arithmetic over object boundaries: splitting a byte range of a VDI into per-object
//! pieces, and the runs of inode entries that `vdi delete` clears (PROTOCOL.md 5.6-5.8).

/// The part of one data object that a byte range of the VDI covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index of the data object in the VDI.
    pub idx: u32,
    /// Byte offset inside the object.
    pub offset: u32,
    /// Bytes in this piece; never 0.
    pub len: u32,
}

/// Splits `[offset, offset + len)` into pieces that each stay inside one object of
/// `obj_size` bytes: an unaligned head, whole objects, then an unaligned tail.
/// `obj_size` must be a power of two no larger than 2^31 (it always is: `1 << bss`).
pub fn split(offset: u64, len: u64, obj_size: u64) -> impl Iterator<Item = Piece> {
    let end = offset.saturating_add(len);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let in_obj = pos % obj_size;
        let n = (obj_size - in_obj).min(end - pos);
        let p = Piece {
            idx: (pos / obj_size) as u32,
            offset: in_obj as u32,
            len: n as u32,
        };
        pos += n;
        Some(p)
    })
}

/// The most one request moves: objects bigger than this (shift 23 to 31) are read and written
/// in pieces of it, so dog never holds a whole 2 GiB object.
pub use protocol::frame::PIECE as MAX_PIECE;

/// Like [`split`], with pieces of at most [`MAX_PIECE`] bytes (cut at multiples of it inside
/// the object).
pub fn split_bounded(offset: u64, len: u64, obj_size: u64) -> impl Iterator<Item = Piece> {
    let step = obj_size.min(MAX_PIECE);
    split(offset, len, step).map(move |p| {
        let pos = u64::from(p.idx) * step + u64::from(p.offset);
        Piece {
            idx: (pos / obj_size) as u32,
            offset: (pos % obj_size) as u32,
            len: p.len,
        }
    })
}

/// How many inode entries `vdi delete` clears per WRITE_OBJ (`NR_BATCHED_DISCARD`).
pub const DELETE_BATCH: usize = 128;

/// The (start, count) runs of `data_vdi_id` entries that `vdi delete` zeroes, exactly as the
/// original walks them: skip zeros to the next used entry, then extend the run until it holds
/// `batch` used entries or reaches the end (zeros inside the run are included). When the walk
/// ends on zeros it still yields a final empty run at `entries.len()`, which the original
/// sends as a zero-length write. No runs at all for a VDI without entries.
pub fn delete_runs(entries: &[u32], batch: usize) -> Vec<(usize, usize)> {
    let n = entries.len();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < n {
        while i < n && entries[i] == 0 {
            i += 1;
        }
        let start = i;
        let mut filled = 0;
        while i < n && filled < batch {
            if entries[i] != 0 {
                filled += 1;
            }
            i += 1;
        }
        runs.push((start, i - start));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB4: u64 = 4 << 20;

    fn pieces(offset: u64, len: u64, obj: u64) -> Vec<(u32, u32, u32)> {
        split(offset, len, obj).map(|p| (p.idx, p.offset, p.len)).collect()
    }

    #[test]
    fn split_small_objects() {
        assert_eq!(pieces(5, 10, 4), [(1, 1, 3), (2, 0, 4), (3, 0, 3)]);
        assert_eq!(pieces(0, 8, 4), [(0, 0, 4), (1, 0, 4)]);
        assert_eq!(pieces(3, 1, 4), [(0, 3, 1)]);
        assert_eq!(pieces(4, 0, 4), []);
    }

    #[test]
    fn split_real_sizes() {
        // 4096 bytes at 0: one piece (PROTOCOL.md 5.6).
        assert_eq!(pieces(0, 4096, MIB4), [(0, 0, 4096)]);
        // 64 MiB at an unaligned offset: head, 15 whole objects, tail.
        let off = 12_345;
        let v = pieces(off, 64 << 20, MIB4);
        assert_eq!(v.len(), 17);
        assert_eq!(v[0], (0, off as u32, (MIB4 - off) as u32));
        assert!(v[1..16]
            .iter()
            .enumerate()
            .all(|(i, p)| *p == (i as u32 + 1, 0, MIB4 as u32)));
        assert_eq!(v[16], (16, 0, off as u32));
        let total: u64 = v.iter().map(|p| u64::from(p.2)).sum();
        assert_eq!(total, 64 << 20);
    }

    #[test]
    fn split_covers_range_exactly() {
        // Against a byte-by-byte model for many shapes.
        for obj in [1u64, 2, 4, 16] {
            for off in 0..40u64 {
                for len in 0..40u64 {
                    let mut next = off;
                    for p in split(off, len, obj) {
                        let start = u64::from(p.idx) * obj + u64::from(p.offset);
                        assert_eq!(start, next);
                        assert!(p.len > 0);
                        assert!(u64::from(p.offset) + u64::from(p.len) <= obj);
                        next += u64::from(p.len);
                    }
                    assert_eq!(next, off + len);
                }
            }
        }
    }

    #[test]
    fn bounded_pieces_of_big_objects() {
        let gib2 = 1u64 << 31;
        let v: Vec<Piece> = split_bounded(gib2 - 100, 10 << 20, gib2).collect();
        assert_eq!(
            v[0],
            Piece {
                idx: 0,
                offset: (gib2 - 100) as u32,
                len: 100
            }
        );
        assert_eq!(
            v[1],
            Piece {
                idx: 1,
                offset: 0,
                len: MAX_PIECE as u32
            }
        );
        assert_eq!(
            v[2],
            Piece {
                idx: 1,
                offset: MAX_PIECE as u32,
                len: MAX_PIECE as u32
            }
        );
        assert_eq!(v[3].len as u64 + 100 + 2 * MAX_PIECE, 10 << 20);
        assert!(v.iter().all(|p| u64::from(p.len) <= MAX_PIECE));
        // Small objects split exactly as before.
        assert!(split_bounded(12_345, 64 << 20, MIB4).eq(split(12_345, 64 << 20, MIB4)));
    }

    #[test]
    fn delete_runs_like_the_original() {
        // Nothing to walk.
        assert_eq!(delete_runs(&[], 128), []);
        // Nothing used: one zero-length run at the end (100 MiB → 25 entries → offset 4764).
        assert_eq!(delete_runs(&[0; 25], 128), [(25, 0)]);
        // 1 GiB with object 0 used: one 1024-byte write at 4664.
        let mut e = vec![0u32; 256];
        e[0] = 7;
        assert_eq!(delete_runs(&e, 128), [(0, 256)]);
        // The run starts at the first used entry.
        let mut e = vec![0u32; 256];
        e[5] = 7;
        assert_eq!(delete_runs(&e, 128), [(5, 251)]);
        // Full batches, then the rest.
        assert_eq!(delete_runs(&[7; 300], 128), [(0, 128), (128, 128), (256, 44)]);
        // A full batch followed only by zeros ends with an empty run.
        let mut e = vec![7u32; 128];
        e.extend([0; 10]);
        assert_eq!(delete_runs(&e, 128), [(0, 128), (138, 0)]);
        // Zeros inside a run are part of it.
        let e = [0, 1, 0, 1, 0, 0, 1, 1, 0];
        assert_eq!(delete_runs(&e, 2), [(1, 3), (6, 2), (9, 0)]);
    }
}
