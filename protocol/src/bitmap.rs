//! VDI bitmaps: 2^24 bits, LSB first (PROTOCOL.md section 2.5).

use crate::oid::NR_VIDS;

/// Size of a bitmap on the wire.
pub const BITMAP_BYTES: usize = (NR_VIDS / 8) as usize;

/// A set of vids.
#[derive(Clone, PartialEq, Eq)]
pub struct VdiBitmap(Vec<u8>);

impl Default for VdiBitmap {
    fn default() -> Self {
        VdiBitmap(vec![0; BITMAP_BYTES])
    }
}

impl std::fmt::Debug for VdiBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl VdiBitmap {
    /// Wraps wire bytes; `None` unless exactly [`BITMAP_BYTES`] long.
    pub fn from_bytes(b: Vec<u8>) -> Option<VdiBitmap> {
        (b.len() == BITMAP_BYTES).then_some(VdiBitmap(b))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn get(&self, vid: u32) -> bool {
        vid < NR_VIDS && self.0[(vid >> 3) as usize] & (1 << (vid & 7)) != 0
    }

    pub fn set(&mut self, vid: u32) {
        if vid < NR_VIDS {
            self.0[(vid >> 3) as usize] |= 1 << (vid & 7);
        }
    }

    /// First clear bit in `[from, NR_VIDS)`.
    pub fn next_clear(&self, from: u32) -> Option<u32> {
        (from..NR_VIDS).find(|&v| !self.get(v))
    }

    /// Set bits in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().filter(|(_, &b)| b != 0).flat_map(|(i, &b)| {
            (0..8)
                .filter(move |k| b & (1 << k) != 0)
                .map(move |k| (i as u32) * 8 + k)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_vector() {
        let mut b = VdiBitmap::default();
        b.set(0x7c2b25);
        assert_eq!(b.as_bytes()[0xF8564], 1 << 5);
        assert!(b.get(0x7c2b25));
        assert_eq!(b.iter().collect::<Vec<_>>(), [0x7c2b25]);
        assert_eq!(b.next_clear(0x7c2b25), Some(0x7c2b26));
        assert!(VdiBitmap::from_bytes(vec![0; 10]).is_none());
    }
}
