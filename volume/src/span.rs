//! Splits a byte range of a volume into pieces: never across an object, and never across a
//! `chunk` boundary inside one, so that a large request becomes several smaller ones that the
//! gateway and the replicas work on at the same time.

/// One piece of a request, inside one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Data object index.
    pub idx: u32,
    /// Offset inside the object.
    pub offset: u32,
    pub len: u32,
    /// Offset of this piece in the caller's buffer.
    pub buf: usize,
}

/// Pieces covering `[offset, offset + len)` with objects of `obj_size` bytes, each inside one
/// `chunk`-aligned span of its object.
pub fn pieces(offset: u64, len: u64, obj_size: u64, chunk: u64) -> impl Iterator<Item = Piece> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let idx = pos / obj_size;
        let inner = pos % obj_size;
        let n = (obj_size - inner).min(chunk - inner % chunk).min(end - pos);
        let p = Piece {
            idx: idx as u32,
            offset: inner as u32,
            len: n as u32,
            buf: (pos - offset) as usize,
        };
        pos += n;
        Some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_head_and_tail() {
        let v: Vec<Piece> = pieces(10, 30, 16, 64).collect();
        assert_eq!(
            v,
            vec![
                Piece {
                    idx: 0,
                    offset: 10,
                    len: 6,
                    buf: 0
                },
                Piece {
                    idx: 1,
                    offset: 0,
                    len: 16,
                    buf: 6
                },
                Piece {
                    idx: 2,
                    offset: 0,
                    len: 8,
                    buf: 22
                },
            ]
        );
        assert_eq!(pieces(0, 0, 16, 16).count(), 0);
        assert_eq!(
            pieces(16, 16, 16, 8).collect::<Vec<_>>(),
            vec![
                Piece {
                    idx: 1,
                    offset: 0,
                    len: 8,
                    buf: 0
                },
                Piece {
                    idx: 1,
                    offset: 8,
                    len: 8,
                    buf: 8
                }
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn pieces_tile_the_range(offset in 0u64..1000, len in 0u64..1000, obj in 1u64..64, chunk in 1u64..80) {
            let v: Vec<Piece> = pieces(offset, len, obj, chunk).collect();
            let total: u64 = v.iter().map(|p| u64::from(p.len)).sum();
            proptest::prop_assert_eq!(total, len);
            let mut at = offset;
            for p in v {
                proptest::prop_assert_eq!(u64::from(p.idx) * obj + u64::from(p.offset), at);
                proptest::prop_assert!(p.len > 0 && u64::from(p.offset) + u64::from(p.len) <= obj);
                let last = u64::from(p.offset + p.len - 1);
                proptest::prop_assert_eq!(u64::from(p.offset) / chunk, last / chunk, "crosses a chunk");
                proptest::prop_assert_eq!(p.buf as u64, at - offset);
                at += u64::from(p.len);
            }
        }
    }
}
