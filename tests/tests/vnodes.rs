//! Virtual nodes: by default a node's count follows its store's capacity, `sheep -V` fixes
//! it, `dog node vnodes set` changes it on a running cluster, and the data follows the ring.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use protocol::node::Node;
use protocol::placement::Ring;
use protocol::{op, Oid, RequestHeader};
use tests::{pseudo_random, Cluster, ScratchFs};

const MIB: u64 = 1 << 20;
const RECOVERY: Duration = Duration::from_secs(180);

/// Each node's share of the key space: the fraction of many pseudo-random oids whose first
/// copy the ring puts on it.
fn ring_shares(ring: &Ring) -> BTreeMap<SocketAddr, f64> {
    const SAMPLES: u32 = 200_000;
    let mut shares = BTreeMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..SAMPLES {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let first = ring.replicas(x, 1)[0].addr;
        *shares.entry(first).or_insert(0.0) += 1.0 / f64::from(SAMPLES);
    }
    shares
}

/// The live ring, as node `i` lists the members.
fn live_ring(c: &Cluster, i: usize) -> Ring {
    Ring::new(c.node_list(i).expect("node list"))
}

fn vnodes_of(c: &Cluster, asked: usize, node: usize) -> u16 {
    let addr = c.node(node).addr();
    c.node_list(asked)
        .expect("node list")
        .iter()
        .find(|n| n.addr == addr)
        .map(|n| n.nr_vnodes)
        .unwrap_or_else(|| panic!("node {node} is not listed"))
}

fn epoch(c: &Cluster) -> u32 {
    c.cluster_info(0).expect("cluster info").epoch
}

/// Every object in `expected` ends up exactly on the nodes the daemons' ring names for
/// `copies` copies (and nowhere else), and all its copies hold the same bytes.
#[track_caller]
fn assert_placed(c: &Cluster, copies: usize, expected: &BTreeSet<Oid>, when: &str) {
    c.wait_placement(&live_ring(c, 0), copies, expected, RECOVERY);
    for (oid, on) in &c.object_holders() {
        let copies: BTreeSet<Vec<u8>> = on
            .iter()
            .map(|&i| c.node(i).object_bytes(*oid).expect("listed object is readable"))
            .collect();
        assert_eq!(copies.len(), 1, "{when}: the copies of {oid} differ");
    }
}

/// Three stores of 2, 4 and 8 GiB: their vnodes follow the capacity (128 for the average
/// store, PROTOCOL.md 3.4), and 2,800 objects land where the ring says, each node holding its
/// share of them within five binomial standard deviations and the bigger stores
/// proportionally more.
#[test]
fn vnodes_follow_capacity_and_objects_follow_vnodes() {
    let stores: Vec<ScratchFs> = [1u64, 2, 4].iter().map(|k| ScratchFs::ext4(k * 2048 * MIB)).collect();
    let c = Cluster::builder()
        .nodes(3)
        .dirs(stores.iter().map(|s| s.path().join("store")).collect())
        .start();
    c.format(1);
    let listed = c.node_list(0).expect("node list");
    let by_index: BTreeMap<usize, &Node> = listed.iter().map(|n| (c.index_of(n.addr), n)).collect();
    let (small, mid, big) = (by_index[&0], by_index[&1], by_index[&2]);
    let ratio = |a: &Node, b: &Node| a.space as f64 / b.space as f64;
    assert!(
        (ratio(mid, small) - 2.0).abs() < 0.1 && (ratio(big, small) - 4.0).abs() < 0.2,
        "the stores report capacities {} {} {}",
        small.space,
        mid.space,
        big.space
    );
    let avg = (small.space + mid.space + big.space) as f64 / 3.0;
    for n in [small, mid, big] {
        let want = 128.0 * n.space as f64 / avg;
        assert!(
            (f64::from(n.nr_vnodes) - want).abs() <= 1.0,
            "{} has {} vnodes for {} bytes; capacity says {want:.1}",
            n.addr,
            n.nr_vnodes,
            n.space
        );
    }

    const OBJECTS: u64 = 2800;
    c.dog_ok(&["vdi", "create", "-P", "-z", "20", "spread", &format!("{OBJECTS}M")]);
    let vid = c.vdi_id(0, "spread", 0).expect("vid");
    let ring = live_ring(&c, 0);
    let mut counts = [0u64; 3];
    for (oid, on) in c.object_holders() {
        let want: BTreeSet<usize> = ring.replicas(oid.0, 1).iter().map(|n| c.index_of(n.addr)).collect();
        assert_eq!(on, want, "object {oid} is on {on:?}, the ring says {want:?}");
        if oid.is_data() && oid.vid().get() == vid {
            counts[*on.iter().next().expect("one holder")] += 1;
        }
    }
    assert_eq!(counts.iter().sum::<u64>(), OBJECTS, "every data object exists once");
    let shares = ring_shares(&ring);
    for (i, n) in [small, mid, big].iter().enumerate() {
        let share = shares[&n.addr];
        let expect = share * OBJECTS as f64;
        // Each object lands on the node with probability `share`: allow five standard
        // deviations of that binomial count (about 1 run in 1.7 million falls outside).
        let spread = 5.0 * (expect * (1.0 - share)).sqrt();
        let got = counts[i] as f64;
        assert!(
            (got - expect).abs() <= spread,
            "node {i} ({} vnodes) holds {got} objects, its ring share is {expect:.0} ± {spread:.0}: {counts:?}",
            n.nr_vnodes
        );
    }
    // A node's ring share varies around its capacity's share (with 55 vnodes, by about 13%),
    // never so much that a smaller store gets more than a bigger one.
    assert!(
        counts[0] < counts[1] && counts[1] < counts[2],
        "objects per node {counts:?} do not follow capacities 1:2:4"
    );
    // What a script reads: vnodes, capacity and use per node.
    let text = c.dog_ok(&["node", "list", "-r"]).stdout_str();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 7, "dog node list -r line {line:?}");
        let n = listed
            .iter()
            .find(|n| n.addr.to_string() == f[1])
            .unwrap_or_else(|| panic!("unknown node in {line:?}"));
        assert_eq!(f[2], n.nr_vnodes.to_string(), "{line}");
        let (size, used): (u64, u64) = (f[4].parse().expect("size"), f[5].parse().expect("used"));
        assert!(size > 0 && used > 0 && used < size, "{line}");
        let mut stat = RequestHeader::new(op::STAT_SHEEP);
        stat.data_length = 0;
        let r = c.call(c.index_of(n.addr), stat, &[]).expect("STAT_SHEEP");
        assert_eq!(size, r.header.store_size(), "{line}");
    }
}

/// `dog node vnodes set` on a running cluster: a new epoch, data moves to where the new ring
/// says while client I/O goes on, every copy intact; `auto` goes back; a `-V` node keeps its
/// count; a gateway-only node and bad counts are refused with nothing changed.
#[test]
fn vnodes_set_on_a_running_cluster_moves_data_where_the_ring_says() {
    let mut c = Cluster::builder()
        .nodes(3)
        .gateways(1)
        .args(&["--recovery-rate", "200"])
        .start();
    c.format(2);
    c.dog_ok(&["vdi", "create", "-z", "20", "v", "48M"]);
    let mut model = pseudo_random(16, 48 * MIB as usize);
    c.write_vdi("v", 0, &model);
    let objects: BTreeSet<Oid> = c.object_holders().into_keys().collect();
    assert_eq!(objects.len(), 49, "the inode and 48 data objects");
    assert_placed(&c, 2, &objects, "after the first write");
    let e0 = epoch(&c);

    let out = c.dog_at(0, &["node", "vnodes", "set", "384"], None).expect_ok();
    assert!(out.stdout_str().is_empty(), "{}", out.all_text());
    assert_eq!(
        (vnodes_of(&c, 1, 0), epoch(&c)),
        (384, e0 + 1),
        "every node sees the change"
    );
    // Client I/O goes on while objects move.
    let fresh = pseudo_random(17, 4 * MIB as usize);
    c.write_vdi("v", 44 * MIB, &fresh);
    model[44 * MIB as usize..].copy_from_slice(&fresh);
    assert!(
        c.read_vdi("v", 0, 48 * MIB, None) == model,
        "bytes read during the rebalance"
    );
    c.wait_recovered(RECOVERY);
    assert_placed(&c, 2, &objects, "after vnodes set 384");
    let check = c.dog_ok(&["vdi", "check", "v"]);
    assert!(check.all_text().contains("0 repaired"), "{}", check.all_text());

    // Refused, and nothing changes: a gateway, and counts out of range.
    let gw = 3;
    let out = c.dog_at(gw, &["node", "vnodes", "set", "10"], None).expect_failure();
    assert!(out.all_text().contains("gateway"), "{}", out.all_text());
    for bad in ["0", "65536", "many"] {
        let out = c.dog_at(0, &["node", "vnodes", "set", bad], None).expect_failure();
        assert!(out.all_text().contains("invalid vnodes"), "{bad}: {}", out.all_text());
    }
    assert_eq!((vnodes_of(&c, 0, gw), vnodes_of(&c, 0, 0), epoch(&c)), (0, 384, e0 + 1));

    // Back to the capacity's share (equal stores here: 128).
    c.dog_at(0, &["node", "vnodes", "set", "auto"], None).expect_ok();
    assert_eq!((vnodes_of(&c, 2, 0), epoch(&c)), (128, e0 + 2));
    c.wait_recovered(RECOVERY);
    assert_placed(&c, 2, &objects, "after vnodes set auto");

    // A node started with -V keeps that count; `auto` returns it there, not to capacity.
    // Seen gone first: a restart the others never noticed would leave them listing the old
    // count under the same address.
    c.kill(2);
    c.wait_for_membership();
    c.node_mut(2).start_with_args(&["-V", "64"]);
    c.wait_for_membership();
    assert_eq!(vnodes_of(&c, 0, 2), 64);
    let e = epoch(&c);
    c.dog_at(2, &["node", "vnodes", "set", "auto"], None).expect_ok();
    assert_eq!(
        (vnodes_of(&c, 1, 2), epoch(&c)),
        (64, e),
        "auto keeps a -V count: no new epoch"
    );
    c.wait_recovered(RECOVERY);
    assert_placed(&c, 2, &objects, "after a -V 64 restart");
    assert!(c.read_vdi("v", 0, 48 * MIB, None) == model, "bytes after every move");
    let check = c.dog_ok(&["vdi", "check", "v"]);
    assert!(check.all_text().contains("0 repaired"), "{}", check.all_text());
}
