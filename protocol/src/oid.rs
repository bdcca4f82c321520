//! Object ids and VDI ids (PROTOCOL.md section 2.6).

use std::fmt;

/// Number of bits in a vid.
pub const VID_BITS: u32 = 24;
/// One past the largest vid.
pub const NR_VIDS: u32 = 1 << VID_BITS;

const VDI_BIT: u64 = 1 << 63;
const VMSTATE_BIT: u64 = 1 << 62;
const VDI_ATTR_BIT: u64 = 1 << 61;
const VDI_BTREE_BIT: u64 = 1 << 60;
const LEDGER_BIT: u64 = 1 << 59;
const TYPE_BITS: u64 = VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT;

/// A 24-bit VDI id. The constructor refuses anything wider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vid(u32);

impl Vid {
    /// Returns `None` when `v` does not fit in 24 bits.
    pub fn new(v: u32) -> Option<Vid> {
        (v < NR_VIDS).then_some(Vid(v))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The oid of this VDI's inode object.
    pub fn inode_oid(self) -> Oid {
        Oid(VDI_BIT | (u64::from(self.0) << 32))
    }

    /// The oid of data object `idx` owned by this vid.
    pub fn data_oid(self, idx: u32) -> Oid {
        Oid((u64::from(self.0) << 32) | u64::from(idx))
    }
}

impl fmt::Display for Vid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// What an object holds, from its type bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Inode,
    VmState,
    Attr,
    Btree,
    Ledger,
    Data,
}

/// A 64-bit object id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub u64);

impl Oid {
    pub fn vid(self) -> Vid {
        Vid(((self.0 & 0x00ff_ffff_0000_0000) >> 32) as u32)
    }

    /// The data index (or attr id) in the low 32 bits.
    pub fn index(self) -> u32 {
        (self.0 & 0xffff_ffff) as u32
    }

    pub fn kind(self) -> ObjectKind {
        if self.0 & VDI_BIT != 0 {
            ObjectKind::Inode
        } else if self.0 & VMSTATE_BIT != 0 {
            ObjectKind::VmState
        } else if self.0 & VDI_ATTR_BIT != 0 {
            ObjectKind::Attr
        } else if self.0 & VDI_BTREE_BIT != 0 {
            ObjectKind::Btree
        } else if self.0 & LEDGER_BIT != 0 {
            ObjectKind::Ledger
        } else {
            ObjectKind::Data
        }
    }

    pub fn is_data(self) -> bool {
        self.0 & TYPE_BITS == 0
    }

    pub fn is_inode(self) -> bool {
        self.kind() == ObjectKind::Inode
    }

    /// The on-disk file name: 16 lower-case hex digits.
    pub fn file_name(self) -> String {
        format!("{:016x}", self.0)
    }

    /// Parses a file name written by [`Oid::file_name`].
    pub fn from_file_name(name: &str) -> Option<Oid> {
        if name.len() != 16 {
            return None;
        }
        u64::from_str_radix(name, 16).ok().map(Oid)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_from_protocol_md() {
        let v = Vid::new(0x7c2b25).expect("fits");
        assert_eq!(v.inode_oid().0, 0x807c_2b25_0000_0000);
        assert_eq!(v.data_oid(5).0, 0x007c_2b25_0000_0005);
        assert_eq!(Oid(0x807c_2b25_0000_0000).vid(), v);
        assert_eq!(Oid(0x007c_2b25_0000_0005).index(), 5);
    }

    #[test]
    fn vid_must_fit_24_bits() {
        assert!(Vid::new(NR_VIDS - 1).is_some());
        assert!(Vid::new(NR_VIDS).is_none());
    }

    #[test]
    fn kinds() {
        assert_eq!(Oid(0x807c_2b25_0000_0000).kind(), ObjectKind::Inode);
        assert_eq!(Oid(0x007c_2b25_0000_0005).kind(), ObjectKind::Data);
        assert_eq!(Oid(1 << 62).kind(), ObjectKind::VmState);
        assert_eq!(Oid(1 << 61).kind(), ObjectKind::Attr);
        assert_eq!(Oid(1 << 60).kind(), ObjectKind::Btree);
        assert_eq!(Oid(1 << 59).kind(), ObjectKind::Ledger);
        assert!(Oid(5).is_data());
        assert!(!Oid(1 << 59).is_data());
    }

    #[test]
    fn file_names_round_trip() {
        let o = Oid(0x007c_2b25_0000_0005);
        assert_eq!(o.file_name(), "007c2b2500000005");
        assert_eq!(Oid::from_file_name(&o.file_name()), Some(o));
        assert_eq!(Oid::from_file_name("xyz"), None);
        assert_eq!(Oid::from_file_name(".tmp-0000000000000"), None);
    }
}
