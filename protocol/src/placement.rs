//! Virtual nodes, zones and replica selection (PROTOCOL.md sections 3.4-3.5).

use std::collections::HashSet;

use crate::hash::{sd_hash, sd_hash_next, sd_hash_oid};
use crate::node::{Node, DEFAULT_VNODES};

/// A hash ring built from one membership. Nodes are referred to by their index in `nodes`.
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<Node>,
    /// (hash, node index), sorted by hash.
    vnodes: Vec<(u64, usize)>,
    nr_zones: usize,
}

/// Recomputes vnode counts in AUTO_VNODES mode: `rint(128 * space / average space)` over nodes
/// that have both vnodes and space and are not `fixed` (a count set by hand). Others keep
/// their count.
pub fn auto_vnodes(nodes: &mut [Node], fixed: impl Fn(&Node) -> bool) {
    let weighted = |n: &Node| n.nr_vnodes > 0 && n.space > 0 && !fixed(n);
    let spaces: Vec<u64> = nodes.iter().filter(|n| weighted(n)).map(|n| n.space).collect();
    if spaces.is_empty() {
        return;
    }
    let avg = spaces.iter().map(|&s| s as f64).sum::<f64>() / spaces.len() as f64;
    for n in nodes.iter_mut().filter(|n| weighted(n)) {
        let v = (f32::from(DEFAULT_VNODES) * (n.space as f32) / (avg as f32)).round_ties_even();
        n.nr_vnodes = v.clamp(1.0, f32::from(u16::MAX)) as u16;
    }
}

impl Ring {
    pub fn new(nodes: Vec<Node>) -> Ring {
        let mut vnodes = Vec::with_capacity(nodes.iter().map(|n| n.nr_vnodes as usize).sum());
        for (i, n) in nodes.iter().enumerate() {
            let mut h = sd_hash(&n.id_bytes());
            for _ in 0..n.nr_vnodes {
                h = sd_hash_next(h);
                vnodes.push((h, i));
            }
        }
        vnodes.sort_unstable();
        let nr_zones = nodes
            .iter()
            .filter(|n| n.nr_vnodes > 0)
            .map(|n| n.zone)
            .collect::<HashSet<_>>()
            .len();
        Ring {
            nodes,
            vnodes,
            nr_zones,
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Distinct zones among storage nodes.
    pub fn nr_zones(&self) -> usize {
        self.nr_zones
    }

    /// The nodes that hold `copies` replicas of `oid`, primary first. Fewer when the cluster
    /// has fewer zones; empty when it has no storage node.
    pub fn replicas(&self, oid: u64, copies: usize) -> Vec<&Node> {
        let want = copies.min(self.nr_zones);
        let mut chosen: Vec<usize> = Vec::with_capacity(want);
        if want == 0 {
            return Vec::new();
        }
        let key = sd_hash_oid(oid);
        let start = self.vnodes.partition_point(|&(h, _)| h < key) % self.vnodes.len();
        for step in 0..self.vnodes.len() {
            if chosen.len() == want {
                break;
            }
            let (_, ni) = self.vnodes[(start + step) % self.vnodes.len()];
            let zone = self.nodes[ni].zone;
            if chosen.iter().all(|&c| self.nodes[c].zone != zone) {
                chosen.push(ni);
            }
        }
        chosen.into_iter().map(|i| &self.nodes[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16, zone: u32) -> Node {
        Node {
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            nr_vnodes: 128,
            zone,
            space: 0,
        }
    }

    fn ports(r: &Ring, oid: u64, copies: usize) -> Vec<u16> {
        r.replicas(oid, copies).iter().map(|n| n.addr.port()).collect()
    }

    #[test]
    fn vnode_vectors() {
        let n = node(7000, 0);
        let h = sd_hash(&n.id_bytes());
        assert_eq!(h, 0x9cb3_d6dd_0a4c_0f9f);
        let v1 = sd_hash_next(h);
        let v2 = sd_hash_next(v1);
        let v3 = sd_hash_next(v2);
        assert_eq!(
            [v1, v2, v3],
            [0x3af2_cba6_e538_cdf3, 0xfd38_432f_d111_924b, 0x2ad2_bef8_f506_e35d]
        );
        let m = node(7201, 0);
        let h = sd_hash(&m.id_bytes());
        assert_eq!(h, 0x07f5_2375_1136_d38f);
        assert_eq!(sd_hash_next(h), 0xd70a_d43d_82d0_d208);
        assert_eq!(sd_hash_next(sd_hash_next(h)), 0xe4db_1dd8_5beb_045a);
    }

    #[test]
    fn placement_vectors() {
        let r = Ring::new(vec![node(7201, 0), node(7202, 1), node(7203, 2)]);
        assert_eq!(ports(&r, 0x007c_2b26_0000_0000, 3), [7203, 7201, 7202]);
        assert_eq!(ports(&r, 0x807c_2b26_0000_0000, 3), [7202, 7201, 7203]);
        let r = Ring::new(vec![node(7201, 0), node(7202, 0), node(7203, 2)]);
        assert_eq!(r.nr_zones(), 2);
        assert_eq!(ports(&r, 0x007c_2b26_0000_0000, 2), [7203, 7201]);
        assert_eq!(ports(&r, 0x807c_2b26_0000_0000, 2), [7202, 7203]);
        // Asking for more copies than zones gives one per zone.
        assert_eq!(ports(&r, 0x007c_2b26_0000_0000, 3), [7203, 7201]);
    }

    #[test]
    fn gateways_hold_nothing() {
        let mut g = node(7300, 9);
        g.nr_vnodes = 0;
        let r = Ring::new(vec![g.clone()]);
        assert!(r.replicas(1, 3).is_empty());
        let r = Ring::new(vec![g, node(7201, 0)]);
        assert_eq!(ports(&r, 1, 3), [7201]);
    }

    #[test]
    fn auto_vnodes_weights_by_space() {
        let mut v = vec![node(1, 0), node(2, 1), node(3, 2)];
        v[0].space = 100;
        v[1].space = 100;
        v[2].space = 200;
        auto_vnodes(&mut v, |_| false);
        assert_eq!(v.iter().map(|n| n.nr_vnodes).collect::<Vec<_>>(), [96, 96, 192]);
        // A fixed node keeps its count and is left out of the average.
        let mut v = vec![node(1, 0), node(2, 1), node(3, 2)];
        v[0].space = 100;
        v[1].space = 300;
        v[2].space = 10_000;
        v[2].nr_vnodes = 7;
        auto_vnodes(&mut v, |n| n.addr.port() == 3);
        assert_eq!(v.iter().map(|n| n.nr_vnodes).collect::<Vec<_>>(), [64, 192, 7]);
    }

    proptest::proptest! {
        /// Against a brute-force reference: walk every vnode in ring order from the key.
        #[test]
        fn matches_reference(nodes in 1usize..8, zones in 1u32..5, oid: u64, copies in 1usize..5) {
            let list: Vec<Node> = (0..nodes).map(|i| node(7000 + i as u16, i as u32 % zones)).collect();
            let r = Ring::new(list.clone());
            let mut all: Vec<(u64, usize)> = Vec::new();
            for (i, n) in list.iter().enumerate() {
                let mut h = sd_hash(&n.id_bytes());
                for _ in 0..n.nr_vnodes { h = sd_hash_next(h); all.push((h, i)); }
            }
            all.sort();
            let key = sd_hash_oid(oid);
            let mut order: Vec<usize> = all.iter().filter(|v| v.0 >= key).map(|v| v.1).collect();
            order.extend(all.iter().filter(|v| v.0 < key).map(|v| v.1));
            let mut want: Vec<u16> = Vec::new();
            let mut zs: Vec<u32> = Vec::new();
            for i in order {
                if want.len() == copies { break; }
                if !zs.contains(&list[i].zone) { zs.push(list[i].zone); want.push(list[i].addr.port()); }
            }
            proptest::prop_assert_eq!(ports(&r, oid, copies), want);
        }
    }
}
