//! Data written with `dog` reads back byte for byte, and every object lies on exactly the nodes
//! the placement ring names (PROTOCOL.md sections 3.4-3.5), with identical bytes on each.

use std::collections::BTreeSet;

use protocol::hash::sd_hash_vdi;
use protocol::{Oid, Vid};
use tests::{assert_same_bytes, pseudo_random, Cluster};

const MIB: u64 = 1 << 20;
const OBJ: u64 = 4 * MIB;

/// The first VDI created under `name` in a fresh cluster gets this vid (PROTOCOL.md 3.3).
fn fresh_vid(name: &str) -> u32 {
    match sd_hash_vdi(name.as_bytes()) {
        0 => 1,
        v => v,
    }
}

/// Object indices a byte range touches.
fn indices(offset: u64, len: u64) -> impl Iterator<Item = u32> {
    let first = offset / OBJ;
    let last = (offset + len - 1) / OBJ;
    (first..=last).map(|i| i as u32)
}

/// Checks that every object of `vid` sits on exactly its replica nodes, that replicas hold
/// identical bytes equal to `model` (for data objects), and that nothing else is stored.
fn check_placement(c: &Cluster, vid: u32, copies: usize, model: &[u8], touched: &BTreeSet<u32>) {
    let v = Vid::new(vid).expect("vid fits in 24 bits");
    let holders = c.object_holders();
    let mut problems = Vec::new();

    let mut expected: Vec<Oid> = touched.iter().map(|&i| v.data_oid(i)).collect();
    expected.push(v.inode_oid());
    for oid in &expected {
        let want = c.replica_nodes(*oid, copies);
        assert_eq!(
            want.len(),
            copies,
            "the ring names {} nodes for {oid}, want {copies}: the harness's zones are wrong",
            want.len()
        );
        let got = holders.get(oid).cloned().unwrap_or_default();
        if got != want {
            problems.push(format!(
                "{oid}: held by nodes {got:?}, ring says {want:?} (ports {:?})",
                want.iter().map(|&i| c.node(i).port()).collect::<Vec<_>>()
            ));
        }
        if oid.is_data() {
            let start = u64::from(oid.index()) * OBJ;
            let end = (start + OBJ).min(model.len() as u64);
            let want_bytes = &model[start as usize..end as usize];
            for &n in &got {
                let Some(mut b) = c.node(n).object_bytes(*oid) else {
                    problems.push(format!("{oid}: vanished from node {n}"));
                    continue;
                };
                if b.len() as u64 > OBJ {
                    problems.push(format!(
                        "{oid} on node {n}: file is {} bytes, larger than the object size",
                        b.len()
                    ));
                    continue;
                }
                b.resize(want_bytes.len(), 0);
                if b != want_bytes {
                    let at = b.iter().zip(want_bytes).position(|(x, y)| x != y);
                    problems.push(format!(
                        "{oid} on node {n}: content differs from the data written \
                         (first difference at object offset {at:?})"
                    ));
                }
            }
        }
    }
    for (oid, nodes) in &holders {
        if !expected.contains(oid) {
            problems.push(format!(
                "unexpected object {oid} (vid {:x}, index {}) on nodes {nodes:?}",
                oid.vid().get(),
                oid.index()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "placement problems ({}):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every node's GET_NODE_LIST names the nodes with the zones and vnode counts the harness
/// gave them, sorted by address then port: the placement below depends on exactly this.
fn check_node_lists(c: &Cluster) {
    let want: Vec<(std::net::SocketAddr, u16, u32)> = c
        .expected_nodes()
        .iter()
        .map(|n| (n.addr, n.nr_vnodes, n.zone))
        .collect();
    for i in 0..c.len() {
        let got: Vec<_> = c
            .node_list(i)
            .unwrap_or_else(|e| panic!("GET_NODE_LIST to node {i}: {e}"))
            .iter()
            .map(|n| (n.addr, n.nr_vnodes, n.zone))
            .collect();
        assert_eq!(got, want, "node {i}'s node list as (addr, vnodes, zone)");
    }
}

/// Writes ~60 MiB at aligned and unaligned offsets, reads it back whole and in unaligned
/// pieces, then checks the placement of every object.
fn write_read_and_place(nodes: usize, copies: usize, seed: u64) {
    let c = Cluster::start_formatted(nodes, copies);
    check_node_lists(&c);
    let size = 256 * MIB;
    c.dog_ok(&["vdi", "create", "alpha", "256M"]);

    let writes: [(u64, u64); 7] = [
        (0, 8 * MIB),                   // two whole objects
        (4 * MIB - 1000, 3 * MIB + 77), // unaligned, crosses the 4 MiB boundary
        (20 * MIB + 12345, 9 * MIB + 1),
        (100 * MIB - 1, 2), // two bytes straddling objects 24 and 25
        (128 * MIB + 4096, 4096),
        (150 * MIB + 777, 40 * MIB),
        (size - 1000, 1000), // the last bytes of the VDI
    ];
    let mut model = vec![0u8; size as usize];
    let mut touched = BTreeSet::new();
    for (k, &(off, len)) in writes.iter().enumerate() {
        let data = pseudo_random(seed * 100 + k as u64, len as usize);
        c.write_vdi("alpha", off, &data);
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        touched.extend(indices(off, len));
    }

    let all = c.read_vdi("alpha", 0, size, None);
    assert_same_bytes("whole VDI read back", &all, &model);
    drop(all);
    let pieces: [(u64, u64); 6] = [
        (4 * MIB - 1005, 10),
        (8 * MIB - 3, 4 * MIB + 6),
        (50 * MIB, MIB), // never written: zeros
        (100 * MIB - 4, 8),
        (size - 1500, 1500),
        (149 * MIB, 3 * MIB),
    ];
    for (off, len) in pieces {
        let got = c.read_vdi("alpha", off, len, None);
        assert_same_bytes(
            &format!("read of {len} bytes at {off}"),
            &got,
            &model[off as usize..(off + len) as usize],
        );
    }

    let vid = c.vdi_id(0, "alpha", 0).expect("GET_VDI_INFO alpha");
    assert_eq!(vid, fresh_vid("alpha"), "vid of the first VDI named alpha");
    let list = c.vdi_list(0);
    assert_eq!(list.len(), 1, "vdi list: {list:#?}");
    assert_eq!(
        (list[0].name.as_str(), list[0].vid, list[0].size, list[0].copies),
        ("alpha", vid, size, copies as u32),
        "vdi list line {:?}",
        list[0].raw
    );
    check_placement(&c, vid, copies, &model, &touched);
}

#[test]
fn three_copies_on_three_nodes() {
    write_read_and_place(3, 3, 1);
}

#[test]
fn two_copies_on_four_nodes() {
    write_read_and_place(4, 2, 2);
}

/// A gateway (`-g`) serves I/O but stores nothing; objects go to the storage nodes only.
#[test]
fn gateway_stores_nothing() {
    let c = Cluster::builder().nodes(2).gateways(1).start();
    c.format(2);
    check_node_lists(&c);
    let gw = 2;
    assert!(c.node(gw).is_gateway());
    c.dog_at(gw, &["vdi", "create", "gamma", "32M"], None).expect_ok();
    let data = pseudo_random(77, (6 * MIB + 333) as usize);
    let off = 3 * MIB + 5;
    c.dog_at(
        gw,
        &["vdi", "write", "gamma", &off.to_string(), &data.len().to_string()],
        Some(&data),
    )
    .expect_ok();
    let mut model = vec![0u8; (32 * MIB) as usize];
    model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    for n in [0, gw] {
        let got = c.dog_at(n, &["vdi", "read", "gamma"], None).expect_ok().stdout;
        assert_same_bytes(&format!("gamma read through node {n}"), &got, &model);
    }
    assert!(
        c.node(gw).objects().is_empty(),
        "the gateway stores objects: {:?}",
        c.node(gw).objects()
    );
    let vid = c.vdi_id(gw, "gamma", 0).expect("GET_VDI_INFO gamma");
    let touched: BTreeSet<u32> = indices(off, data.len() as u64).collect();
    check_placement(&c, vid, 2, &model, &touched);
}
