//! Per-block checksums of stored objects: `obj/<oid>.sum` beside each object file holds one
//! little-endian CRC32C per 4 KiB block of the object (the last block may be shorter). They
//! are written after the data (a plain positioned write, synced with the data at flush) and
//! checked on every read; a copy that fails them is never served.
//!
//! An object stored before checksums existed has no `.sum` file: it is read unchecked until
//! it is created again (recovery, a repair, a new write of the whole object).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Bytes covered by one checksum.
pub const BLOCK: u64 = 4096;

/// The blocks `[offset, offset + len)` touches.
pub fn blocks(offset: u64, len: u64) -> Range<u64> {
    if len == 0 {
        return offset / BLOCK..offset / BLOCK;
    }
    offset / BLOCK..(offset + len).div_ceil(BLOCK)
}

/// `[offset, offset + len)` widened to whole blocks, cut at the object's `size`.
pub fn widen(offset: u64, len: u64, size: u64) -> (u64, u64) {
    let b = blocks(offset, len);
    let start = b.start * BLOCK;
    let end = (b.end * BLOCK).min(size).max(offset + len);
    (start, end - start)
}

/// The checksums of `data`, which starts at a block boundary: one per block (the last over
/// whatever is left).
pub fn of(data: &[u8]) -> Vec<u32> {
    data.chunks(BLOCK as usize).map(crc32c::crc32c).collect()
}

/// The checksum of `len` zero bytes (a whole block, or an object's short last one).
fn zero_sum(len: u64) -> u32 {
    crc32c::crc32c(&vec![0u8; len as usize])
}

/// The checksums of the blocks that `data` at `offset` touches in an object of `size` bytes
/// whose other bytes are zero: the first block's number and one sum per block.
pub fn of_piece(size: u64, offset: u64, data: &[u8]) -> (u64, Vec<u32>) {
    let touched = blocks(offset, data.len() as u64);
    let end = offset + data.len() as u64;
    let sums = touched
        .clone()
        .map(|b| {
            let start = b * BLOCK;
            let len = BLOCK.min(size - start);
            if offset <= start && start + len <= end {
                let at = (start - offset) as usize;
                return crc32c::crc32c(&data[at..at + len as usize]);
            }
            let mut block = vec![0u8; len as usize];
            let (lo, hi) = (start.max(offset), (start + len).min(end));
            block[(lo - start) as usize..(hi - start) as usize]
                .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
            crc32c::crc32c(&block)
        })
        .collect();
    (touched.start, sums)
}

/// Writes the checksums of an all-zero object of `size` bytes, a bounded run at a time.
pub fn store_zeros(f: &File, size: u64) -> io::Result<()> {
    const RUN: u64 = 16 << 10;
    let n = size.div_ceil(BLOCK);
    let whole = n - u64::from(!size.is_multiple_of(BLOCK));
    let run = vec![zero_sum(BLOCK); RUN.min(whole) as usize];
    let mut b = 0;
    while b < whole {
        let k = RUN.min(whole - b);
        store(f, b, &run[..k as usize])?;
        b += k;
    }
    if whole < n {
        store(f, whole, &[zero_sum(size - whole * BLOCK)])?;
    }
    Ok(())
}

/// Writes `sums` for blocks starting at `first`.
pub fn store(f: &File, first: u64, sums: &[u32]) -> io::Result<()> {
    let bytes: Vec<u8> = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
    f.write_all_at(&bytes, first * 4)
}

/// The stored checksums of blocks `range`.
pub fn load(f: &File, range: Range<u64>) -> io::Result<Vec<u32>> {
    let mut bytes = vec![0u8; ((range.end - range.start) * 4) as usize];
    f.read_exact_at(&mut bytes, range.start * 4)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The blocks of `data` (read at block boundary `offset`) whose checksum is not `stored`.
pub fn mismatches(offset: u64, data: &[u8], stored: &[u32]) -> Vec<u64> {
    of(data)
        .iter()
        .zip(stored)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| offset / BLOCK + i as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(blocks(0, 4096), 0..1);
        assert_eq!(blocks(4095, 2), 0..2);
        assert_eq!(blocks(8192, 0), 2..2);
        assert_eq!(widen(5000, 10, 1 << 20), (4096, 4096));
        assert_eq!(widen(4000, 200, 1 << 20), (0, 8192));
        // The last, short block of an inode-sized object.
        assert_eq!(widen(12_587_570, 6, 12_587_576), (12_587_008, 568));
    }

    #[test]
    fn a_new_object_sums_like_its_bytes() {
        let size = 3 * BLOCK + 100;
        let data = vec![7u8; 5000];
        let mut whole = vec![0u8; size as usize];
        whole[4000..9000].copy_from_slice(&data);
        let f = tempfile::tempfile().expect("temp file");
        store_zeros(&f, size).expect("zeros");
        assert_eq!(load(&f, 0..4).expect("load"), of(&vec![0u8; size as usize]));
        let (first, piece) = of_piece(size, 4000, &data);
        store(&f, first, &piece).expect("piece");
        assert_eq!(load(&f, 0..4).expect("load"), of(&whole));
        // A piece of whole blocks, ending at the object's short last block.
        let tail = vec![9u8; (BLOCK + 100) as usize];
        let (first, piece) = of_piece(size, 2 * BLOCK, &tail);
        assert_eq!((first, piece), (2, of(&tail)));
        let flipped = {
            let mut w = whole.clone();
            w[BLOCK as usize + 3] ^= 1;
            w
        };
        assert_eq!(mismatches(0, &flipped, &of(&whole)), vec![1]);
    }
}
