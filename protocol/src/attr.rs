//! VDI attributes: the 66,320-byte `sheepdog_vdi_attr` record of GET_VDI_ATTR (PROTOCOL.md)
//! and the hash that picks its first slot.

use std::ops::Range;

use crate::bytes::{get_cstr, put_cstr};
use crate::hash::{fnv1a, FNV1A_BASIS};
use crate::inode::ATTR_OBJ_SIZE;

const NAME: Range<usize> = 0..256;
const TAG: Range<usize> = 256..512;
const CTIME: Range<usize> = 512..520;
const SNAP_ID: Range<usize> = 520..524;
const VALUE_LEN: Range<usize> = 524..528;
const KEY: Range<usize> = 528..784;
const VALUE_AT: usize = 784;
/// Longest attribute value.
pub const MAX_VALUE: usize = ATTR_OBJ_SIZE - VALUE_AT;
/// Longest key (the field holds its NUL too).
pub const MAX_KEY: usize = 255;

const ATTR_BIT: u64 = 1 << 61;

/// `vid_to_attr_oid`: the object of attribute slot `attr_id` of (hashed) vid `vid`.
pub fn attr_oid(vid: u32, attr_id: u32) -> u64 {
    ATTR_BIT | u64::from(vid) << 32 | u64::from(attr_id)
}

/// One attribute record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VdiAttr {
    pub name: String,
    pub tag: String,
    pub ctime: u64,
    pub snap_id: u32,
    pub key: String,
    pub value: Vec<u8>,
}

impl VdiAttr {
    /// The whole record; `value` is cut at [`MAX_VALUE`], name, tag and key at 255 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; ATTR_OBJ_SIZE];
        put_cstr(&mut b[NAME], self.name.as_bytes());
        put_cstr(&mut b[TAG], self.tag.as_bytes());
        b[CTIME].copy_from_slice(&self.ctime.to_le_bytes());
        b[SNAP_ID].copy_from_slice(&self.snap_id.to_le_bytes());
        let v = &self.value[..self.value.len().min(MAX_VALUE)];
        b[VALUE_LEN].copy_from_slice(&(v.len() as u32).to_le_bytes());
        put_cstr(&mut b[KEY], self.key.as_bytes());
        b[VALUE_AT..VALUE_AT + v.len()].copy_from_slice(v);
        b
    }

    /// `None` unless `b` is a whole record with a sane value length.
    pub fn decode(b: &[u8]) -> Option<VdiAttr> {
        if b.len() != ATTR_OBJ_SIZE {
            return None;
        }
        let u32_at = |r: Range<usize>| u32::from_le_bytes(b[r].try_into().unwrap_or_default());
        let len = u32_at(VALUE_LEN) as usize;
        if len > MAX_VALUE {
            return None;
        }
        Some(VdiAttr {
            name: get_cstr(&b[NAME]),
            tag: get_cstr(&b[TAG]),
            ctime: u64::from_le_bytes(b[CTIME].try_into().unwrap_or_default()),
            snap_id: u32_at(SNAP_ID),
            key: get_cstr(&b[KEY]),
            value: b[VALUE_AT..VALUE_AT + len].to_vec(),
        })
    }

    /// The first slot to probe: FNV-1a chained over the name, tag, snap_id and key fields
    /// (772 bytes with their NUL padding), low 32 bits.
    pub fn first_id(&self) -> u32 {
        let b = self.encode();
        [NAME, TAG, SNAP_ID, KEY]
            .into_iter()
            .fold(FNV1A_BASIS, |h, r| fnv1a(&b[r], h)) as u32
    }

    /// Whether `other` is the same attribute (its value aside). A deleted record, whose
    /// name was cleared, is the same as nothing.
    pub fn same_key(&self, other: &VdiAttr) -> bool {
        !self.name.is_empty()
            && self.name == other.name
            && self.tag == other.tag
            && self.snap_id == other.snap_id
            && self.key == other.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str, key: &str, value: &[u8]) -> VdiAttr {
        VdiAttr {
            name: name.into(),
            key: key.into(),
            value: value.to_vec(),
            ..VdiAttr::default()
        }
    }

    #[test]
    fn layout() {
        let a = VdiAttr {
            name: "vm".into(),
            tag: "t".into(),
            ctime: 0x0102,
            snap_id: 3,
            key: "k".into(),
            value: b"hello".to_vec(),
        };
        let b = a.encode();
        assert_eq!(b.len(), 66_320);
        assert_eq!(&b[0..3], b"vm\0");
        assert_eq!(&b[256..258], b"t\0");
        assert_eq!(&b[512..520], &0x0102u64.to_le_bytes());
        assert_eq!(&b[520..524], &3u32.to_le_bytes());
        assert_eq!(&b[524..528], &5u32.to_le_bytes());
        assert_eq!(&b[528..530], b"k\0");
        assert_eq!(&b[784..789], b"hello");
        assert_eq!(VdiAttr::decode(&b), Some(a));
        let mut bad = b.clone();
        bad[524..528].copy_from_slice(&65_537u32.to_le_bytes());
        assert_eq!(VdiAttr::decode(&bad), None);
        assert_eq!(attr_oid(0x7c2b25, 9), 0x2000_0000_0000_0000 | 0x7c2b25 << 32 | 9);
    }

    #[test]
    fn the_first_slot_hashes_the_key_fields_only() {
        let a = attr("vm", "k", b"one");
        let mut b = attr("vm", "k", b"two, longer");
        b.ctime = 7;
        assert_eq!(a.first_id(), b.first_id(), "value and ctime are not hashed");
        assert_ne!(a.first_id(), attr("vm", "l", b"one").first_id());
        assert_ne!(a.first_id(), attr("vn", "k", b"one").first_id());
        let enc = a.encode();
        let mut flat = enc[0..512].to_vec();
        flat.extend_from_slice(&enc[520..524]);
        flat.extend_from_slice(&enc[528..784]);
        assert_eq!(a.first_id(), fnv1a(&flat, FNV1A_BASIS) as u32);
    }

    #[test]
    fn a_deleted_record_matches_nothing() {
        let a = attr("vm", "k", b"v");
        assert!(a.same_key(&attr("vm", "k", b"other value")));
        let gone = attr("", "k", b"v");
        assert!(!gone.same_key(&a) && !gone.same_key(&gone));
    }
}
