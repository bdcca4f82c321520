//! The farm store (`dog cluster format -b farm`): after a recovery, each node keeps the copies
//! it drops in its farm (DIR/farm) as a system snapshot of that epoch; `dog node farm` lists
//! them, reads them back checked against their SHA-1, and names a corrupt farm object, which
//! is never served and leaves the working directory alone. A format wipes the farm.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::Oid;
use tests::{Cluster, ScratchFs};

const MIB: u64 = 1 << 20;
/// Object size of the VDI here (the cluster default).
const OBJ: u64 = 4 * MIB;
/// Bytes a farm data object holds at most (a slice of a copy).
const SLICE: u64 = 128 << 10;
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every file under `d`.
fn files(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d)
        .unwrap_or_else(|e| panic!("listing {}: {e}", d.display()))
        .map(|e| e.expect("a directory entry").path())
        .flat_map(|p| if p.is_dir() { files(&p) } else { vec![p] })
        .collect()
}

/// The farm object name of `path`: its subdirectory and file name, 40 hex digits.
fn object_name(path: &Path) -> String {
    let part = |p: Option<&std::ffi::OsStr>| p.and_then(|s| s.to_str()).unwrap_or_default().to_string();
    part(path.parent().and_then(Path::file_name)) + &part(path.file_name())
}

/// A fourth node joins a 3-node, 2-copy farm cluster: each old node that dropped copies
/// lists one system snapshot of epoch 2 with exactly those copies, each of which reads back
/// equal to the copy the new placement holds. A data object of the farm flipped by one bit
/// is named by `check` and by `read` of the one copy that uses it (which prints nothing),
/// while the VDI still reads back whole. A format wipes every farm.
#[test]
fn copies_dropped_after_a_join_are_kept_checked_and_read_back() {
    let mut c = Cluster::start(3);
    c.format_with(&["-c", "2", "-b", "farm"]);
    let info = c.dog_ok(&["cluster", "info", "-v"]).stdout_str();
    assert!(info.contains("farm"), "cluster info names the store:\n{info}");
    c.dog_ok(&["vdi", "create", "alpha", "96M"]);
    let mut model = vec![0u8; (96 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, 11, 96 * MIB);
    let all: BTreeSet<Oid> = c.object_holders().keys().copied().collect();
    c.wait_placement(&c.ring(), 2, &all, RECOVERY_TIMEOUT);
    let before: Vec<BTreeSet<Oid>> = (0..3).map(|i| c.node(i).objects()).collect();

    c.add_node(4);
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.wait_placement(&c.ring(), 2, &all, RECOVERY_TIMEOUT);
    let members: BTreeSet<String> = c.nodes().iter().map(|n| n.addr().to_string()).collect();
    let mut dropped_anywhere = Vec::new();
    for (i, had) in before.iter().enumerate() {
        let dropped: Vec<Oid> = had.difference(&c.node(i).objects()).copied().collect();
        let dir = c.node(i).dir().to_str().expect("utf-8 path").to_string();
        if dropped.is_empty() {
            assert!(!c.node(i).dir().join("farm").exists(), "node {i} dropped nothing");
            continue;
        }
        let list = c.dog_ok(&["node", "farm", "list", "-r", &dir]).stdout_str();
        let lines: Vec<Vec<&str>> = list.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(lines.len(), 1, "node {i}: one system snapshot:\n{list}");
        let f = &lines[0];
        assert_eq!(f.len(), 6, "node {i}: index time epoch copies bytes members:\n{list}");
        assert_eq!(
            (f[2], f[3]),
            ("2", dropped.len().to_string().as_str()),
            "node {i}:\n{list}"
        );
        let listed: BTreeSet<String> = f[5].split(',').map(str::to_string).collect();
        assert_eq!(listed, members, "node {i}: the members of epoch 2");
        let table = c.dog_ok(&["node", "farm", "list", &dir]).stdout_str();
        assert!(
            table.contains("system snapshots: 1; the farm takes"),
            "node {i}: the table ends with the farm's size:\n{table}"
        );
        for &oid in &dropped {
            let got = c.dog_ok(&["node", "farm", "read", &dir, &oid.to_string()]).stdout;
            let holder = *c.replica_nodes(oid, 2).first().expect("a holder");
            let now = c.node(holder).object_bytes(oid).expect("the copy of the new placement");
            assert!(
                got == now,
                "node {i}: the farm's copy of {oid} differs from node {holder}'s"
            );
            if oid.is_data() {
                let at = (u64::from(oid.index()) * OBJ) as usize;
                assert!(got == model[at..at + OBJ as usize], "{oid}: not the bytes written");
            }
            dropped_anywhere.push((i, dir.clone(), oid));
        }
    }
    assert!(
        !dropped_anywhere.is_empty(),
        "the join moved no copy off the first three nodes"
    );

    // Flip one bit of a data slice in the farm of a node that archived a data object.
    let (i, dir, _) = dropped_anywhere
        .iter()
        .find(|(_, _, oid)| oid.is_data())
        .cloned()
        .expect("a dropped data object");
    let slice = files(&c.node(i).dir().join("farm/objects"))
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == SLICE))
        .expect("a data slice in the farm");
    let mut b = std::fs::read(&slice).expect("the slice");
    b[4096] ^= 0x10;
    std::fs::write(&slice, &b).expect("corrupt the slice");
    let name = object_name(&slice);
    let check = c.dog(&["node", "farm", "check", &dir]).expect_failure();
    assert!(
        check.stderr.contains(&name) && check.stderr.contains("corrupt"),
        "check names the corrupt object {name}:\n{}",
        check.stderr
    );
    let mut refused = 0;
    for (_, _, oid) in dropped_anywhere.iter().filter(|(n, _, _)| *n == i) {
        let out = c.dog(&["node", "farm", "read", &dir, &oid.to_string()]);
        if !out.success() {
            assert!(out.stderr.contains(&name), "{oid}: names {name}:\n{}", out.stderr);
            assert!(out.stdout.is_empty(), "{oid}: nothing printed from a corrupt copy");
            refused += 1;
        }
    }
    assert_eq!(refused, 1, "exactly the copy holding the slice is refused");
    c.check_reads("alpha", &model, &[0, 1, 2, 3], "after a farm object was corrupted");

    let bogus = c.dog(&["cluster", "format", "-b", "git", "-f"]).expect_failure();
    assert!(
        bogus.all_text().contains("plain farm"),
        "the stores offered:\n{}",
        bogus.all_text()
    );
    c.check_reads("alpha", &model, &[0], "after a refused format");
    assert!(
        c.dog_ok(&["cluster", "info", "-v"]).stdout_str().contains("farm"),
        "still a farm store"
    );

    c.format_with(&["-c", "2", "-f"]);
    for n in c.nodes() {
        assert!(
            !n.dir().join("farm").exists(),
            "node {}: a format wipes the farm",
            n.addr()
        );
    }
}

/// A node whose disk a snapshot would fill past four fifths stores none: it drops the copies
/// as a plain store does and says why, while the nodes with room archive theirs; the data
/// reads back whole.
#[test]
fn a_node_short_of_space_drops_copies_without_archiving() {
    let small = ScratchFs::tmpfs("64m");
    // Fixed vnodes: weighted by capacity, the small node would own next to nothing.
    let mut c = Cluster::builder().nodes(3).args(&["-V", "128"]).start();
    let tight = 0;
    c.put_node_on(tight, &small);
    c.format_with(&["-c", "3", "-b", "farm"]);
    // Every node holds every object: the 12 MiB inode and 44 MiB of data leave node 0's
    // 64 MiB with about 7 MiB free, and the join moves about a quarter of the 45 objects
    // (1 MiB each, so that node 0 surely loses several) away.
    c.dog_ok(&["vdi", "create", "-z", "20", "alpha", "44M"]);
    let mut model = vec![0u8; (44 * MIB) as usize];
    c.put(1, "alpha", &mut model, 0, 12, 44 * MIB);
    let all: BTreeSet<Oid> = c.object_holders().keys().copied().collect();
    c.wait_placement(&c.ring(), 3, &all, RECOVERY_TIMEOUT);

    c.add_node(4);
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.wait_placement(&c.ring(), 3, &all, RECOVERY_TIMEOUT);
    let d = |i: usize| c.node(i).dir().to_str().expect("utf-8 path").to_string();
    // The farm is made before the space check: it exists, and is empty.
    let listed = c.dog_ok(&["node", "farm", "list", "-r", &d(tight)]).stdout_str();
    assert!(listed.is_empty(), "node {tight} stored a snapshot:\n{listed}");
    let log = c.node(tight).log_text();
    assert!(
        log.contains("not archiving the copies this node no longer owns"),
        "node {tight} says why it archived nothing:\n{}",
        c.node(tight).log_tail(30)
    );
    for i in [1, 2] {
        let list = c.dog_ok(&["node", "farm", "list", "-r", &d(i)]).stdout_str();
        assert_eq!(list.lines().count(), 1, "node {i} archived its dropped copies:\n{list}");
    }
    c.check_reads("alpha", &model, &[0, 3], "after the join");
}

/// With `sheep --farm-keep 1`, after two joins each node's farm holds one system snapshot:
/// that of the last epoch in which it dropped copies, and nothing of the one before on disk.
#[test]
fn farm_keep_bounds_the_snapshots_a_node_keeps() {
    let mut c = Cluster::builder().nodes(3).args(&["--farm-keep", "1"]).start();
    c.format_with(&["-c", "2", "-b", "farm"]);
    c.dog_ok(&["vdi", "create", "alpha", "192M"]);
    let mut model = vec![0u8; (192 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, 13, 192 * MIB);
    let all: BTreeSet<Oid> = c.object_holders().keys().copied().collect();
    c.wait_placement(&c.ring(), 2, &all, RECOVERY_TIMEOUT);

    // The epochs in which each of the first three nodes dropped copies.
    let mut drops: [Vec<u32>; 3] = Default::default();
    for (epoch, zone) in [(2, 4), (3, 5)] {
        let before: Vec<BTreeSet<Oid>> = (0..3).map(|i| c.node(i).objects()).collect();
        c.add_node(zone);
        c.wait_recovered(RECOVERY_TIMEOUT);
        c.wait_placement(&c.ring(), 2, &all, RECOVERY_TIMEOUT);
        for (i, had) in before.iter().enumerate() {
            if had.difference(&c.node(i).objects()).next().is_some() {
                drops[i].push(epoch);
            }
        }
    }
    // With 49 objects, some node surely drops copies in both epochs (each node fails to in
    // well under 1 placement in 100), so that keeping one snapshot drops one.
    assert!(
        drops.iter().any(|d| d.len() == 2),
        "no node dropped copies twice: {drops:?}"
    );
    for (i, epochs) in drops.iter().enumerate() {
        let Some(epoch) = epochs.last() else { continue };
        let dir = c.node(i).dir().to_str().expect("utf-8 path").to_string();
        let list = c.dog_ok(&["node", "farm", "list", "-r", &dir]).stdout_str();
        let snaps: Vec<Vec<&str>> = list.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(snaps.len(), 1, "node {i} keeps one snapshot:\n{list}");
        assert_eq!(snaps[0][2], epoch.to_string(), "node {i} keeps its newest:\n{list}");
        let kept: u64 = snaps[0][4].parse().expect("the snapshot's bytes");
        let on_disk: u64 = files(&c.node(i).dir().join("farm/objects"))
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        assert!(
            on_disk <= kept + (1 << 20),
            "node {i}: the farm takes {on_disk} bytes for a snapshot of {kept}"
        );
    }
    c.check_reads("alpha", &model, &[0, 4], "after two joins");
}

/// Lowered to `--farm-keep 0`, a node's next recovery that drops copies empties its farm of
/// what the earlier setting kept, instead of keeping it for ever.
#[test]
fn farm_keep_0_empties_a_farm_kept_before() {
    let mut c = Cluster::builder().nodes(3).start();
    c.format_with(&["-c", "2", "-b", "farm"]);
    c.dog_ok(&["vdi", "create", "alpha", "96M"]);
    let mut model = vec![0u8; (96 * MIB) as usize];
    c.put(0, "alpha", &mut model, 0, 14, 96 * MIB);
    let all: BTreeSet<Oid> = c.object_holders().keys().copied().collect();
    c.wait_placement(&c.ring(), 2, &all, RECOVERY_TIMEOUT);
    let before: Vec<BTreeSet<Oid>> = (0..3).map(|i| c.node(i).objects()).collect();
    c.add_node(4);
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.wait_placement(&c.ring(), 2, &all, RECOVERY_TIMEOUT);
    let dir = |c: &Cluster, i: usize| c.node(i).dir().to_str().expect("utf-8 path").to_string();
    let snapshots = |c: &Cluster, i: usize| {
        let list = c.dog_ok(&["node", "farm", "list", "-r", &dir(c, i)]).stdout_str();
        list.lines().count()
    };
    // A node that dropped copies at the first join keeps one snapshot; one that dropped
    // none has no farm at all.
    let kept: Vec<usize> = before
        .iter()
        .enumerate()
        .map(|(i, had)| {
            if had.difference(&c.node(i).objects()).next().is_none() {
                assert!(!c.node(i).dir().join("farm").exists(), "node {i} dropped nothing");
                return 0;
            }
            let n = snapshots(&c, i);
            assert_eq!(n, 1, "node {i} archived what it dropped at the first join");
            n
        })
        .collect();
    assert!(
        kept.iter().any(|&n| n > 0),
        "no node archived at the first join: {kept:?}"
    );

    // The first three nodes come back with --farm-keep 0, one at a time.
    for i in 0..3 {
        c.kill(i);
        c.wait_for_membership();
        c.node_mut(i).start_with_args(&["--farm-keep", "0"]);
        c.wait_for_membership();
        c.wait_recovered(RECOVERY_TIMEOUT);
    }
    c.wait_placement(&c.ring(), 2, &all, RECOVERY_TIMEOUT);
    let before: Vec<BTreeSet<Oid>> = (0..3).map(|i| c.node(i).objects()).collect();
    c.add_node(5);
    c.wait_recovered(RECOVERY_TIMEOUT);
    c.wait_placement(&c.ring(), 2, &all, RECOVERY_TIMEOUT);
    let mut emptied = 0;
    for (i, had) in before.iter().enumerate() {
        if kept[i] == 0 {
            continue;
        }
        let now = snapshots(&c, i);
        let left = files(&c.node(i).dir().join("farm/objects"));
        if had.difference(&c.node(i).objects()).next().is_some() {
            // It had a snapshot and dropped copies again: its farm is empty now.
            assert_eq!(now, 0, "node {i} still keeps snapshots");
        }
        if now == 0 {
            // Emptied at this join or at a drop while the others came back.
            assert!(left.is_empty(), "node {i}'s farm still holds {} objects", left.len());
            emptied += 1;
        }
    }
    // Some node with a snapshot surely dropped copies again, at the restarts of the others
    // or at the second join (25 objects).
    assert!(emptied > 0, "no node with a snapshot dropped copies again: {kept:?}");
    c.check_reads("alpha", &model, &[0, 4], "after the joins");
}
