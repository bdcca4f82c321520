//! Cluster-wide structures: `cluster_info` (CLUSTER_INFO) and epoch-log records
//! (STAT_CLUSTER), PROTOCOL.md sections 2.2-2.3.

use crate::bytes::{get_cstr, get_u16, get_u32, get_u64, put_cstr, put_u16, put_u32, put_u64};
use crate::node::{Node, NODE_SIZE, SD_MAX_NODES};

/// Size of `cluster_info`.
pub const CLUSTER_INFO_SIZE: usize = 48 + SD_MAX_NODES * NODE_SIZE;
/// Size of an epoch-log record header.
pub const EPOCH_LOG_HEADER: usize = 48;

/// `cluster_info.status`.
pub mod status {
    pub const OK: u8 = 1;
    pub const WAIT: u8 = 2;
    pub const SHUTDOWN: u8 = 3;
    pub const KILLED: u8 = 4;
}

/// The CLUSTER_INFO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    pub disable_recovery: bool,
    pub epoch: u32,
    pub ctime: u64,
    pub flags: u16,
    pub nr_copies: u8,
    pub copy_policy: u8,
    pub status: u8,
    pub block_size_shift: u8,
    pub default_store: String,
    pub nodes: Vec<Node>,
}

impl ClusterInfo {
    pub fn encode(&self) -> Vec<u8> {
        let n = self.nodes.len().min(SD_MAX_NODES);
        let mut b = vec![0u8; CLUSTER_INFO_SIZE];
        b[0] = crate::opcode::SD_SHEEP_PROTO_VER;
        b[1] = u8::from(self.disable_recovery);
        put_u16(&mut b, 2, n as u16);
        put_u32(&mut b, 4, self.epoch);
        put_u64(&mut b, 8, self.ctime);
        put_u16(&mut b, 16, self.flags);
        b[18] = self.nr_copies;
        b[19] = self.copy_policy;
        b[20] = self.status;
        b[21] = self.block_size_shift;
        put_cstr(&mut b[25..41], self.default_store.as_bytes());
        for (i, node) in self.nodes.iter().take(n).enumerate() {
            b[48 + i * NODE_SIZE..48 + (i + 1) * NODE_SIZE].copy_from_slice(&node.encode());
        }
        b
    }

    /// Parses a reply; `None` if it is shorter than the fixed part.
    pub fn decode(b: &[u8]) -> Option<ClusterInfo> {
        if b.len() < 48 {
            return None;
        }
        let n = (get_u16(b, 2) as usize).min((b.len() - 48) / NODE_SIZE);
        Some(ClusterInfo {
            disable_recovery: b[1] != 0,
            epoch: get_u32(b, 4),
            ctime: get_u64(b, 8),
            flags: get_u16(b, 16),
            nr_copies: b[18],
            copy_policy: b[19],
            status: b[20],
            block_size_shift: b[21],
            default_store: get_cstr(&b[25..41]),
            nodes: Node::decode_list(&b[48..48 + n * NODE_SIZE]),
        })
    }
}

/// One epoch-log record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochRecord {
    pub ctime: u64,
    pub time: u64,
    pub epoch: u32,
    pub disable_recovery: bool,
    pub nr_copies: u8,
    pub copy_policy: u8,
    pub flags: u16,
    pub drv_name: String,
    pub nodes: Vec<Node>,
}

impl EpochRecord {
    /// Bytes one record takes with room for `nodes_nr` nodes.
    pub fn stride(nodes_nr: usize) -> usize {
        EPOCH_LOG_HEADER + NODE_SIZE * nodes_nr
    }

    /// Appends this record with room for `nodes_nr` nodes. The caller makes sure it fits.
    pub fn encode_into(&self, out: &mut Vec<u8>, nodes_nr: usize) {
        let start = out.len();
        out.resize(start + Self::stride(nodes_nr), 0);
        let b = &mut out[start..];
        put_u64(b, 0, self.ctime);
        put_u64(b, 8, if nodes_nr == 0 { 0 } else { self.time });
        put_u32(b, 16, self.epoch);
        let n = if nodes_nr == 0 {
            0
        } else {
            self.nodes.len().min(nodes_nr)
        };
        put_u32(b, 20, n as u32);
        b[24] = u8::from(self.disable_recovery);
        b[25] = self.nr_copies;
        b[26] = self.copy_policy;
        put_u16(b, 30, self.flags);
        put_cstr(&mut b[32..48], self.drv_name.as_bytes());
        for (i, node) in self.nodes.iter().take(n).enumerate() {
            let off = EPOCH_LOG_HEADER + i * NODE_SIZE;
            b[off..off + NODE_SIZE].copy_from_slice(&node.encode());
        }
    }

    /// Parses consecutive records of stride `stride(nodes_nr)`.
    pub fn decode_all(b: &[u8], nodes_nr: usize) -> Vec<EpochRecord> {
        b.chunks_exact(Self::stride(nodes_nr))
            .map(|r| {
                let n = (get_u32(r, 20) as usize).min(nodes_nr);
                EpochRecord {
                    ctime: get_u64(r, 0),
                    time: get_u64(r, 8),
                    epoch: get_u32(r, 16),
                    disable_recovery: r[24] != 0,
                    nr_copies: r[25],
                    copy_policy: r[26],
                    flags: get_u16(r, 30),
                    drv_name: get_cstr(&r[32..48]),
                    nodes: Node::decode_list(&r[48..48 + n * NODE_SIZE]),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> Node {
        Node {
            addr: format!("127.0.0.1:{port}").parse().expect("a"),
            nr_vnodes: 128,
            zone: 1,
            space: 9,
        }
    }

    #[test]
    fn cluster_info_layout() {
        let ci = ClusterInfo {
            epoch: 1,
            ctime: 77,
            flags: 4,
            nr_copies: 3,
            status: status::OK,
            block_size_shift: 22,
            default_store: "plain".into(),
            nodes: vec![node(7000)],
            ..ClusterInfo::default()
        };
        let b = ci.encode();
        assert_eq!(b.len(), 491_568);
        assert_eq!(b[0], 0x0a);
        assert_eq!(&b[2..4], &[1, 0]);
        assert_eq!(&b[16..18], &[4, 0]);
        assert_eq!((b[18], b[20], b[21]), (3, 1, 22));
        assert_eq!(&b[25..31], b"plain\0");
        assert_eq!(ClusterInfo::decode(&b), Some(ci));
    }

    #[test]
    fn epoch_records() {
        let r = EpochRecord {
            ctime: 5,
            time: 6,
            epoch: 2,
            nr_copies: 3,
            drv_name: "plain".into(),
            nodes: vec![node(7000), node(7001)],
            ..EpochRecord::default()
        };
        let mut out = Vec::new();
        r.encode_into(&mut out, 2);
        assert_eq!(out.len(), 208);
        assert_eq!(EpochRecord::decode_all(&out, 2), vec![r.clone()]);
        let mut bare = Vec::new();
        r.encode_into(&mut bare, 0);
        assert_eq!(bare.len(), 48);
        let d = &EpochRecord::decode_all(&bare, 0)[0];
        assert_eq!((d.time, d.nodes.len(), d.epoch), (0, 0, 2));
    }
}
