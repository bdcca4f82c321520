//! The inode object layout (PROTOCOL.md section 2.4).

use crate::bytes::{get_cstr, get_u32, get_u64, put_cstr, put_u32, put_u64};
use crate::oid::Vid;

/// Size of the inode header; `data_vdi_id[]` starts here.
pub const INODE_HEADER_SIZE: usize = 4664;
/// Entries in `data_vdi_id[]`.
pub const MAX_DATA_OBJS: usize = 1 << 20;
/// Offset of `gref[]`.
pub const GREF_OFFSET: usize = INODE_HEADER_SIZE + 4 * MAX_DATA_OBJS;
/// Size of a whole inode object.
pub const INODE_SIZE: usize = GREF_OFFSET + 8 * MAX_DATA_OBJS;
/// Size of a VDI attribute object.
pub const ATTR_OBJ_SIZE: usize = 66_320;
/// Longest VDI name or tag, in bytes, without the NUL.
pub const MAX_NAME_LEN: usize = 255;
/// Default object size shift (4 MiB).
pub const DEFAULT_BLOCK_SIZE_SHIFT: u8 = 22;
/// Smallest and largest object size shift this implementation accepts.
pub const MIN_BLOCK_SIZE_SHIFT: u8 = 20;
pub const MAX_BLOCK_SIZE_SHIFT: u8 = 31;

/// Byte offset, inside the inode object, of `data_vdi_id[idx]`.
pub fn data_vdi_id_offset(idx: u32) -> u32 {
    INODE_HEADER_SIZE as u32 + 4 * idx
}

/// Converts a wall-clock time into Sheepdog's `(sec << 32) | (usec * 1000)` format.
pub fn sd_time(now: std::time::SystemTime) -> u64 {
    let d = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() << 32) | u64::from(d.subsec_micros() * 1000)
}

/// The inode header fields (everything before `data_vdi_id[]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InodeHeader {
    pub name: String,
    pub tag: String,
    pub create_time: u64,
    pub snap_ctime: u64,
    pub vdi_size: u64,
    pub copy_policy: u8,
    pub store_policy: u8,
    pub nr_copies: u8,
    pub block_size_shift: u8,
    pub snap_id: u32,
    pub vdi_id: u32,
    pub parent_vdi_id: u32,
}

impl InodeHeader {
    /// Parses the first [`INODE_HEADER_SIZE`] bytes of an inode. `None` if `b` is shorter.
    pub fn decode(b: &[u8]) -> Option<InodeHeader> {
        if b.len() < INODE_HEADER_SIZE {
            return None;
        }
        Some(InodeHeader {
            name: get_cstr(&b[0..256]),
            tag: get_cstr(&b[256..512]),
            create_time: get_u64(b, 512),
            snap_ctime: get_u64(b, 520),
            vdi_size: get_u64(b, 536),
            copy_policy: b[552],
            store_policy: b[553],
            nr_copies: b[554],
            block_size_shift: b[555],
            snap_id: get_u32(b, 556),
            vdi_id: get_u32(b, 560),
            parent_vdi_id: get_u32(b, 564),
        })
    }

    /// Writes the header into the first [`INODE_HEADER_SIZE`] bytes of `b`.
    pub fn encode_into(&self, b: &mut [u8]) {
        b[..INODE_HEADER_SIZE].fill(0);
        put_cstr(&mut b[0..256], self.name.as_bytes());
        put_cstr(&mut b[256..512], self.tag.as_bytes());
        put_u64(b, 512, self.create_time);
        put_u64(b, 520, self.snap_ctime);
        put_u64(b, 536, self.vdi_size);
        b[552] = self.copy_policy;
        b[553] = self.store_policy;
        b[554] = self.nr_copies;
        b[555] = self.block_size_shift;
        put_u32(b, 556, self.snap_id);
        put_u32(b, 560, self.vdi_id);
        put_u32(b, 564, self.parent_vdi_id);
    }

    pub fn is_snapshot(&self) -> bool {
        self.snap_ctime != 0
    }

    pub fn is_deleted(&self) -> bool {
        self.name.is_empty()
    }

    pub fn object_size(&self) -> u64 {
        1u64 << self.block_size_shift
    }

    /// Entries of `data_vdi_id[]` in use for this size.
    pub fn nr_objects(&self) -> u32 {
        self.vdi_size.div_ceil(self.object_size()) as u32
    }
}

/// A whole inode held in memory: the header plus `data_vdi_id[]`. `gref[]` is not kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub header: InodeHeader,
    pub data_vdi_id: Vec<u32>,
}

impl Inode {
    /// Parses an inode read from offset 0 with at least the header; entries beyond `b` are 0.
    pub fn decode(b: &[u8]) -> Option<Inode> {
        let header = InodeHeader::decode(b)?;
        let n = header.nr_objects().min(MAX_DATA_OBJS as u32) as usize;
        // Zeroed memory is not touched until written: a big map read short costs what the
        // read carried, not 4 MiB of stores.
        let mut data_vdi_id = vec![0u32; n];
        let present = b.get(INODE_HEADER_SIZE..).unwrap_or_default().chunks_exact(4);
        for (slot, c) in data_vdi_id.iter_mut().zip(present) {
            *slot = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Some(Inode { header, data_vdi_id })
    }

    /// Serialises the header and the entries in use: the prefix of the inode object that
    /// holds anything but zeros (`gref[]` is not kept). Creating an object of [`INODE_SIZE`]
    /// from it zero-fills the rest.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; INODE_HEADER_SIZE + 4 * self.data_vdi_id.len()];
        self.header.encode_into(&mut b);
        for (i, v) in self.data_vdi_id.iter().enumerate() {
            put_u32(&mut b, INODE_HEADER_SIZE + 4 * i, *v);
        }
        b
    }

    /// The vid that owns data object `idx`, if it was ever written.
    pub fn owner(&self, idx: u32) -> Option<Vid> {
        match self.data_vdi_id.get(idx as usize) {
            Some(&v) if v != 0 => Vid::new(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_constants() {
        assert_eq!(INODE_SIZE, 12_587_576);
        assert_eq!(GREF_OFFSET, 4_198_968);
        assert_eq!(data_vdi_id_offset(5), 4684);
    }

    #[test]
    fn round_trip() {
        let mut ino = Inode {
            header: InodeHeader {
                name: "test".into(),
                tag: "snap1".into(),
                create_time: 0x1234_0000_0000,
                snap_ctime: 0,
                vdi_size: 10 << 22,
                nr_copies: 3,
                block_size_shift: 22,
                snap_id: 1,
                vdi_id: 0x7c2b25,
                ..InodeHeader::default()
            },
            data_vdi_id: vec![0; 10],
        };
        ino.data_vdi_id[5] = 0x7c2b25;
        let b = ino.encode();
        assert_eq!(b.len(), INODE_HEADER_SIZE + 40);
        assert_eq!(&b[4684..4688], &[0x25, 0x2b, 0x7c, 0]);
        assert_eq!(&b[560..564], &[0x25, 0x2b, 0x7c, 0]);
        assert_eq!(Inode::decode(&b), Some(ino.clone()));
        assert_eq!(ino.owner(5), Vid::new(0x7c2b25));
        assert_eq!(ino.owner(4), None);
        assert_eq!(ino.owner(99), None);
        assert_eq!(ino.header.nr_objects(), 10);
    }

    #[test]
    fn short_buffers() {
        assert!(InodeHeader::decode(&[0u8; 100]).is_none());
        let h = InodeHeader {
            vdi_size: 1,
            block_size_shift: 22,
            ..Default::default()
        };
        let mut b = vec![0u8; INODE_HEADER_SIZE];
        h.encode_into(&mut b);
        let ino = Inode::decode(&b).expect("header is there");
        assert_eq!(ino.data_vdi_id, vec![0]);
        assert!(ino.header.is_deleted());
    }
}
