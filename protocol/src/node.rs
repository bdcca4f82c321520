//! Node records (`sd_node`, 80 bytes; PROTOCOL.md section 2.1).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::bytes::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Size of `sd_node` on the wire.
pub const NODE_SIZE: usize = 80;
/// Largest node list a GET_NODE_LIST reply can carry.
pub const SD_MAX_NODES: usize = 6144;
/// Default vnodes per storage node.
pub const DEFAULT_VNODES: u16 = 128;

/// One cluster member as the protocol describes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub addr: SocketAddr,
    /// Vnodes on the ring; 0 = gateway only.
    pub nr_vnodes: u16,
    pub zone: u32,
    /// Store capacity in bytes (used for automatic vnode weighting).
    pub space: u64,
}

/// The 16 address bytes as Sheepdog stores them: IPv4 is 12 zero bytes then the address.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[12..].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a 16-byte field holds (IPv4 as `::a.b.c.d`, as `addr_bytes` writes it).
pub fn addr_from_bytes(b: &[u8]) -> IpAddr {
    if b[..12].iter().all(|&x| x == 0) && b[12] != 0 {
        IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// The default zone: the last four address bytes read as a little-endian u32.
pub fn default_zone(ip: IpAddr) -> u32 {
    let b = addr_bytes(ip);
    u32::from_le_bytes([b[12], b[13], b[14], b[15]])
}

impl Node {
    /// The 18 bytes (address + LE port) that seed this node's vnode hashes.
    pub fn id_bytes(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[..16].copy_from_slice(&addr_bytes(self.addr.ip()));
        b[16..].copy_from_slice(&self.addr.port().to_le_bytes());
        b
    }

    pub fn encode(&self) -> [u8; NODE_SIZE] {
        let mut b = [0u8; NODE_SIZE];
        b[24..42].copy_from_slice(&self.id_bytes());
        put_u16(&mut b, 64, self.nr_vnodes);
        put_u32(&mut b, 68, self.zone);
        put_u64(&mut b, 72, self.space);
        b
    }

    /// Decodes one record; `None` if `b` is not exactly [`NODE_SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Option<Node> {
        if b.len() != NODE_SIZE {
            return None;
        }
        let mut ip = addr_from_bytes(&b[24..40]);
        let mut port = get_u16(b, 40);
        // A non-zero io_port redirects client traffic (PROTOCOL.md 2.1).
        let io_port = get_u16(b, 58);
        if io_port != 0 {
            ip = addr_from_bytes(&b[42..58]);
            port = io_port;
        }
        Some(Node {
            addr: SocketAddr::new(ip, port),
            nr_vnodes: get_u16(b, 64),
            zone: get_u32(b, 68),
            space: get_u64(b, 72),
        })
    }

    /// Decodes a packed array of records; trailing partial records are ignored.
    pub fn decode_list(b: &[u8]) -> Vec<Node> {
        b.chunks_exact(NODE_SIZE).filter_map(Node::decode).collect()
    }

    pub fn is_gateway(&self) -> bool {
        self.nr_vnodes == 0
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// Sorts nodes as GET_NODE_LIST returns them: by address bytes, then port.
pub fn sort_nodes(nodes: &mut [Node]) {
    nodes.sort_by_key(|n| (addr_bytes(n.addr.ip()), n.addr.port()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_live_node() {
        // PROTOCOL.md 2.1: 127.0.0.1:7100, 128 vnodes, zone 0x0100007f, space 0x12a6e32000.
        let n = Node {
            addr: "127.0.0.1:7100".parse().expect("addr"),
            nr_vnodes: 128,
            zone: default_zone("127.0.0.1".parse().expect("ip")),
            space: 0x0000_0012_a6e3_2000,
        };
        assert_eq!(n.zone, 16_777_343);
        let b = n.encode();
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let want = format!(
            "{}{}7f000001bc1b{}0000000000008000{}7f0000010020e3a612000000",
            "00".repeat(24),
            "00".repeat(12),
            "00".repeat(16),
            "0000"
        );
        assert_eq!(hex, want);
        assert_eq!(Node::decode(&b), Some(n));
    }

    #[test]
    fn ipv6_and_sort() {
        let a = Node {
            addr: "[::2]:7000".parse().expect("addr"),
            nr_vnodes: 0,
            zone: 1,
            space: 0,
        };
        assert_eq!(Node::decode(&a.encode()), Some(a.clone()));
        let mut v = vec![
            Node {
                addr: "127.0.0.2:7000".parse().expect("a"),
                ..a.clone()
            },
            Node {
                addr: "127.0.0.1:7001".parse().expect("a"),
                ..a.clone()
            },
            Node {
                addr: "127.0.0.1:7000".parse().expect("a"),
                ..a.clone()
            },
        ];
        sort_nodes(&mut v);
        let order: Vec<String> = v.iter().map(|n| n.addr.to_string()).collect();
        assert_eq!(order, ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.2:7000"]);
        assert!(Node::decode(&[0u8; 79]).is_none());
    }
}
