//! FNV-1a hashing exactly as Sheepdog 1.0 uses it (PROTOCOL.md section 3.1-3.2).

/// FNV-1a 64-bit offset basis.
pub const FNV1A_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV1A_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds `bytes` into `h` with FNV-1a.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV1A_PRIME);
    }
    h
}

/// FNV-1a over the 8 little-endian bytes of `v`, starting from `h`.
pub fn fnv64(v: u64, h: u64) -> u64 {
    fnv1a(&v.to_le_bytes(), h)
}

/// `sd_hash`: FNV-1a of a buffer followed by one finalising round.
pub fn sd_hash(buf: &[u8]) -> u64 {
    let h = fnv1a(buf, FNV1A_BASIS);
    fnv64(h, h)
}

/// `sd_hash_next`: the next hash in a vnode chain.
pub fn sd_hash_next(h: u64) -> u64 {
    fnv64(h, h)
}

/// `sd_hash_oid`: where an object sits on the ring.
pub fn sd_hash_oid(oid: u64) -> u64 {
    let h = fnv64(oid, FNV1A_BASIS);
    fnv64(h, h)
}

/// `sd_hash_vdi`: the first candidate vid for a VDI name (no finaliser, 24 bits).
pub fn sd_hash_vdi(name: &[u8]) -> u32 {
    (fnv1a(name, FNV1A_BASIS) & 0x00ff_ffff) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_from_protocol_md() {
        assert_eq!(fnv1a(b"test", FNV1A_BASIS), 0xf9e6_e6ef_197c_2b25);
        assert_eq!(sd_hash_vdi(b"test"), 0x7c2b25);
        assert_eq!(fnv1a(b"test2", FNV1A_BASIS), 0x1f85_7f48_4dfd_3815);
        assert_eq!(sd_hash_vdi(b"test2"), 0xfd3815);
        assert_eq!(fnv1a(b"alice", FNV1A_BASIS), 0x508b_2abb_65a0_3907);
        assert_eq!(sd_hash_vdi(b"alice"), 0xa03907);
        assert_eq!(sd_hash_vdi(b"vdi0"), 0x85ba7e);
        assert_eq!(sd_hash_vdi(b""), 0x222325);
        assert_eq!(sd_hash_oid(0x007c_2b25_0000_0005), 0x422f_3c8a_f3f8_de1c);
        assert_eq!(sd_hash_oid(0x807c_2b25_0000_0000), 0x8b4b_18c2_43be_fa1a);
        assert_eq!(sd_hash_oid(0x007c_2b26_0000_0000), 0x3203_f833_26f7_76e3);
        assert_eq!(sd_hash_oid(0x807c_2b26_0000_0000), 0x8e53_e7ca_6d28_b10b);
        assert_eq!(sd_hash_oid(0), 0xcb72_0bf5_8a2c_29ec);
    }

    #[test]
    fn sd_hash_oid_is_sd_hash_of_le_bytes() {
        for oid in [0u64, 1, 0x807c_2b25_0000_0000, u64::MAX] {
            assert_eq!(sd_hash_oid(oid), sd_hash(&oid.to_le_bytes()));
        }
    }
}
