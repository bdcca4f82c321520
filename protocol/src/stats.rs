//! Reply layouts of the original's node statistics ops, which PROTOCOL.md does not cover;
//! taken from Sheepdog 1.0's `struct sd_stat` and `struct sd_md_info`.

use crate::bytes::put_cstr;

/// One side of `struct sd_stat`: client (gateway) requests or peer requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatSide {
    /// Requests being served now.
    pub active: u64,
    /// Requests received.
    pub total: u64,
    /// Payload bytes received.
    pub rx: u64,
    /// Payload bytes sent.
    pub tx: u64,
    pub remove: u64,
    pub read: u64,
    pub write: u64,
    /// Flushes (client side only; the peer side's is always 0).
    pub flush: u64,
}

/// STAT (0xB8): `struct sd_stat`, fifteen little-endian u64 in this order: gateway active,
/// peer active, gateway total, peer total, gateway rx, gateway tx, peer rx, peer tx, gateway
/// remove, read, write, flush, peer remove, read, write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStat {
    pub gateway: StatSide,
    pub peer: StatSide,
}

impl NodeStat {
    pub const SIZE: usize = 120;

    fn fields(&self) -> [u64; 15] {
        let (g, p) = (&self.gateway, &self.peer);
        [
            g.active, p.active, g.total, p.total, g.rx, g.tx, p.rx, p.tx, g.remove, g.read, g.write, g.flush, p.remove,
            p.read, p.write,
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        self.fields().iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// `None` unless `b` holds the whole struct.
    pub fn decode(b: &[u8]) -> Option<NodeStat> {
        if b.len() < Self::SIZE {
            return None;
        }
        let v: Vec<u64> = b[..Self::SIZE]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let side = |active, total, rx, tx, remove, read, write, flush| StatSide {
            active,
            total,
            rx,
            tx,
            remove,
            read,
            write,
            flush,
        };
        Some(NodeStat {
            gateway: side(v[0], v[2], v[4], v[5], v[8], v[9], v[10], v[11]),
            peer: side(v[1], v[3], v[6], v[7], v[12], v[13], v[14], 0),
        })
    }
}

/// Longest disk path `struct md_info` holds (Linux's PATH_MAX, with its NUL).
const PATH_MAX: usize = 4096;
/// Bytes of one `struct md_info`: idx i32 @0, free u64 @8, used u64 @16, path @24.
const MD_DISK_SIZE: usize = 24 + PATH_MAX;
/// Entries of `struct sd_md_info`'s disk array.
pub const MD_MAX_DISK: usize = 64;

/// One disk of a node's store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MdDisk {
    pub idx: u32,
    pub free: u64,
    pub used: u64,
    pub path: String,
}

/// MD_INFO (0xB1): `struct sd_md_info`, 64 `md_info` entries of 4,120 bytes, then the
/// number of disks (i32 @263,680), padded to 263,688 bytes.
pub const MD_INFO_SIZE: usize = MD_DISK_SIZE * MD_MAX_DISK + 8;

pub fn encode_md_info(disks: &[MdDisk]) -> Vec<u8> {
    let mut b = vec![0u8; MD_INFO_SIZE];
    let disks = &disks[..disks.len().min(MD_MAX_DISK)];
    for (d, at) in disks.iter().zip((0..).step_by(MD_DISK_SIZE)) {
        b[at..at + 4].copy_from_slice(&d.idx.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&d.free.to_le_bytes());
        b[at + 16..at + 24].copy_from_slice(&d.used.to_le_bytes());
        put_cstr(&mut b[at + 24..at + MD_DISK_SIZE], d.path.as_bytes());
    }
    let nr = MD_DISK_SIZE * MD_MAX_DISK;
    b[nr..nr + 4].copy_from_slice(&(disks.len() as u32).to_le_bytes());
    b
}

/// `None` unless `b` holds the whole struct with a sane count.
pub fn decode_md_info(b: &[u8]) -> Option<Vec<MdDisk>> {
    if b.len() < MD_INFO_SIZE {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    let nr = u32_at(MD_DISK_SIZE * MD_MAX_DISK) as usize;
    if nr > MD_MAX_DISK {
        return None;
    }
    Some(
        (0..nr)
            .map(|i| {
                let at = i * MD_DISK_SIZE;
                MdDisk {
                    idx: u32_at(at),
                    free: u64_at(at + 8),
                    used: u64_at(at + 16),
                    path: crate::get_cstr(&b[at + 24..at + MD_DISK_SIZE]),
                }
            })
            .collect(),
    )
}

/// A node's background scrub (STAT_SCRUB, this implementation's own 0xE2): six u64 (on,
/// passes finished, objects checked in this pass, objects in this pass, copies of this node
/// repaired, objects that could not be judged or repaired, all since start), then the latest
/// findings as UTF-8 lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubStats {
    pub enabled: bool,
    pub passes: u64,
    pub checked: u64,
    pub total: u64,
    pub repaired: u64,
    pub unrepairable: u64,
    pub findings: Vec<String>,
}

impl ScrubStats {
    const FIXED: usize = 48;
    /// Findings kept (the newest).
    pub const FINDINGS: usize = 32;
    /// Room a client gives the reply.
    pub const MAX_SIZE: usize = 64 * 1024;

    pub fn encode(&self) -> Vec<u8> {
        let fixed = [
            u64::from(self.enabled),
            self.passes,
            self.checked,
            self.total,
            self.repaired,
            self.unrepairable,
        ];
        let mut b: Vec<u8> = fixed.iter().flat_map(|v| v.to_le_bytes()).collect();
        for f in &self.findings {
            if b.len() + f.len() + 1 > Self::MAX_SIZE {
                break;
            }
            b.extend_from_slice(f.as_bytes());
            b.push(b'\n');
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<ScrubStats> {
        let v: Vec<u64> = b
            .get(..Self::FIXED)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let text = std::str::from_utf8(&b[Self::FIXED..]).ok()?;
        Some(ScrubStats {
            enabled: v[0] != 0,
            passes: v[1],
            checked: v[2],
            total: v[3],
            repaired: v[4],
            unrepairable: v[5],
            findings: text.lines().map(str::to_string).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scrub_stats_round_trip() {
        let s = ScrubStats {
            enabled: true,
            passes: 2,
            checked: 3,
            total: 4,
            repaired: 5,
            unrepairable: 6,
            findings: vec!["a".into(), "b c".into()],
        };
        let b = s.encode();
        assert_eq!(&b[..8], &1u64.to_le_bytes());
        assert_eq!(&b[48..], b"a\nb c\n");
        assert_eq!(ScrubStats::decode(&b), Some(s));
        assert_eq!(ScrubStats::decode(&b[..47]), None);
    }

    use super::*;

    #[test]
    fn sd_stat_field_order() {
        let s = NodeStat {
            gateway: StatSide {
                active: 1,
                total: 3,
                rx: 5,
                tx: 6,
                remove: 9,
                read: 10,
                write: 11,
                flush: 12,
            },
            peer: StatSide {
                active: 2,
                total: 4,
                rx: 7,
                tx: 8,
                remove: 13,
                read: 14,
                write: 15,
                flush: 0,
            },
        };
        let b = s.encode();
        assert_eq!(b.len(), 120);
        for (i, c) in b.chunks_exact(8).enumerate() {
            assert_eq!(u64::from_le_bytes(c.try_into().expect("8")), i as u64 + 1, "field {i}");
        }
        assert_eq!(NodeStat::decode(&b), Some(s));
        assert_eq!(NodeStat::decode(&b[..119]), None);
    }

    #[test]
    fn md_info_layout() {
        assert_eq!(MD_INFO_SIZE, 263_688);
        let d = MdDisk {
            idx: 0,
            free: 0x1122,
            used: 0x3344,
            path: "/var/lib/sheepdog/0/obj".into(),
        };
        let b = encode_md_info(std::slice::from_ref(&d));
        assert_eq!(b.len(), 263_688);
        assert_eq!(&b[8..16], &0x1122u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x3344u64.to_le_bytes());
        assert_eq!(&b[24..24 + d.path.len()], d.path.as_bytes());
        assert_eq!(b[24 + d.path.len()], 0);
        assert_eq!(&b[263_680..263_684], &1u32.to_le_bytes());
        assert_eq!(decode_md_info(&b), Some(vec![d]));
        let mut bad = b.clone();
        bad[263_680] = 65;
        assert_eq!(decode_md_info(&bad), None);
    }
}
