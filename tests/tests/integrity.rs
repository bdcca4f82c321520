//! End-to-end integrity: every object's copies carry checksums, checked on every read; `dog
//! vdi check` and the background scrub find copies that are missing, fail their checksums
//! or differ, and repair them from one that passes (differing copies: from the majority);
//! without a majority they report and change nothing.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};

use protocol::{op, ObjArgs, Oid, RequestHeader, Vid};
use tests::{pseudo_random, Cluster};

const MIB: usize = 1 << 20;

/// The file of `oid` on node `i`.
fn object_file(c: &Cluster, i: usize, oid: Oid) -> std::path::PathBuf {
    c.node(i).dir().join("obj").join(oid.file_name())
}

/// Every copy of every object of the cluster, by node.
fn snapshot_files(c: &Cluster) -> BTreeMap<(usize, Oid), Vec<u8>> {
    let mut all = BTreeMap::new();
    for i in 0..c.len() {
        for oid in c.node(i).objects() {
            all.insert((i, oid), c.node(i).object_bytes(oid).expect("object bytes"));
        }
    }
    all
}

fn flip(c: &Cluster, i: usize, oid: Oid, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(object_file(c, i, oid))
        .expect("opening a replica");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(b"ROT!").expect("flipping bytes");
    f.sync_all().expect("sync");
}

/// Changes a copy behind its sheep's back and rewrites its checksums to match: a copy that
/// passes its own check yet differs from the others (what a bug, not rot, would leave).
fn diverge(c: &Cluster, i: usize, oid: Oid, at: u64) {
    flip(c, i, oid, at);
    let data = c.node(i).object_bytes(oid).expect("the copy");
    let sums: Vec<u8> = data
        .chunks(4096)
        .flat_map(|b| crc32c::crc32c(b).to_le_bytes())
        .collect();
    let path = c.node(i).dir().join("obj").join(format!("{}.sum", oid.file_name()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("the checksum file");
    f.write_all(&sums).expect("rewriting the checksums");
    f.sync_all().expect("sync");
}

/// `dog vdi check ARGS`: (exit status, stdout).
fn check(c: &Cluster, args: &[&str]) -> (i32, String) {
    let mut full = vec!["vdi", "check"];
    full.extend_from_slice(args);
    let o = c.dog(&full);
    (o.status.code().unwrap_or(-1), o.stdout_str())
}

#[test]
fn vdi_check_repairs_missing_damaged_and_differing_copies() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "v", "32M"]);
    let data = pseudo_random(21, 12 * MIB);
    c.write_vdi("v", 0, &data);
    let vid = Vid::new(c.vid_of("v")).expect("vid");
    let (rot, short, gone) = (vid.data_oid(0), vid.data_oid(1), vid.data_oid(2));

    diverge(&c, 0, rot, 4096);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(object_file(&c, 1, short))
        .expect("open");
    f.set_len(1000).expect("truncating a replica");
    // A lost copy: the node itself removes it, as a failed disk sector would lose it.
    let mut rm = RequestHeader::new(op::REMOVE_PEER);
    rm.epoch = c.cluster_info(0).expect("info").epoch;
    rm.set_obj(&ObjArgs {
        oid: gone.0,
        ..ObjArgs::default()
    });
    c.call(2, rm, &[]).expect("REMOVE_PEER");
    assert!(c.node(2).object_bytes(gone).is_none());

    let before = snapshot_files(&c);
    let (code, out) = check(&c, &["v", "--dry-run"]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "three problems and the summary:\n{out}");
    let a = |i: usize| c.node(i).addr().to_string();
    assert!(
        out.contains(&format!("{:016x} differs on {}: would repair", rot.0, a(0))),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{:016x} fails its checksums on {}: would repair",
            short.0,
            a(1)
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{:016x} missing on {}: would repair", gone.0, a(2))),
        "{out}"
    );
    assert_eq!(lines[3], "v: 4 objects, 1 good, 3 to repair, 0 unrepairable");
    assert_eq!(snapshot_files(&c), before, "--dry-run changes nothing");

    let (code, out) = check(&c, &["v"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.ends_with("v: 4 objects, 1 good, 3 repaired, 0 unrepairable\n"),
        "{out}"
    );
    for oid in [rot, short, gone] {
        let copies: Vec<Vec<u8>> = (0..3).map(|i| c.node(i).object_bytes(oid).expect("a copy")).collect();
        assert!(
            copies.iter().all(|x| *x == copies[0]),
            "{oid}: the copies agree after the repair"
        );
    }
    let (code, out) = check(&c, &["v"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "v: 4 objects, 4 good, 0 repaired, 0 unrepairable\n")
    );
    assert_eq!(c.read_vdi("v", 0, data.len() as u64, None), data);
}

#[test]
fn vdi_check_reports_copies_without_a_majority_and_changes_nothing() {
    let c = Cluster::start_formatted(2, 2);
    c.dog_ok(&["vdi", "create", "w", "8M"]);
    c.write_vdi("w", 0, &pseudo_random(22, 4 * MIB));
    let oid = Vid::new(c.vid_of("w")).expect("vid").data_oid(0);
    diverge(&c, 1, oid, 0);
    let before = snapshot_files(&c);
    let (code, out) = check(&c, &["w"]);
    assert_eq!(code, 2, "{out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with(&format!("{:016x} no majority: ", oid.0)), "{out}");
    assert!(
        out.ends_with("w: 2 objects, 1 good, 0 repaired, 1 unrepairable\n"),
        "{out}"
    );
    assert_eq!(snapshot_files(&c), before, "nothing changes without a majority");

    // A VDI someone writes is not checked (its copies differ for a moment); a dry run is.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let writer = protocol::Client::new(c.node(0).addr());
    rt.block_on(writer.lock_vdi("w")).expect("lock");
    let o = c.dog(&["vdi", "check", "w"]).expect_failure();
    assert!(o.stderr.contains("open for writing"), "{}", o.stderr);
    assert_eq!(check(&c, &["w", "--dry-run"]).0, 2);
}

/// `sheep --scrub-rate`: a node finds its own damaged copy on its own, replaces it from the
/// majority, and says so in `dog cluster scrub` and `/cluster/scrub`.
#[test]
fn scrub_repairs_a_damaged_copy_and_reports_it() {
    let c = Cluster::builder().nodes(3).args(&["--scrub-rate", "500"]).start();
    c.format(3);
    c.dog_ok(&["vdi", "create", "s", "16M"]);
    let data = pseudo_random(23, 8 * MIB);
    c.write_vdi("s", 0, &data);
    let oid = Vid::new(c.vid_of("s")).expect("vid").data_oid(1);
    flip(&c, 1, oid, 12345);
    let agree = || {
        let copies: Vec<Option<Vec<u8>>> = (0..3).map(|i| c.node(i).object_bytes(oid)).collect();
        if copies.iter().all(|x| x.is_some() && *x == copies[0]) {
            Ok(())
        } else {
            Err("the copies still differ".to_string())
        }
    };
    tests::wait_until(
        "the scrub to repair node 1's copy",
        std::time::Duration::from_secs(60),
        agree,
    );
    let raw = c.dog_ok(&["cluster", "scrub", "-r"]).stdout_str();
    let a1 = c.node(1).addr().to_string();
    let row = raw
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(a1.as_str()))
        .unwrap_or_else(|| panic!("no row for {a1}:\n{raw}"));
    let f: Vec<&str> = row.split(' ').collect();
    assert_eq!(f[2], "on", "{row}");
    assert!(f[6].parse::<u64>().expect("repaired") >= 1, "{row}");
    assert!(
        raw.contains(&format!(
            "finding {a1} {:016x} failed its checksums; repaired from",
            oid.0
        )),
        "{raw}"
    );
    assert_eq!(c.read_vdi("s", 0, data.len() as u64, None), data);

    let m = tests::Mount::start(&c, 0);
    let text = std::fs::read_to_string(m.join("cluster/scrub")).expect("reading /cluster/scrub");
    assert!(
        text.starts_with("# addr state passes checked total repaired unrepairable\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{a1} finding {:016x} failed its checksums; repaired from",
            oid.0
        )),
        "{text}"
    );
}

/// Two copies that differ: the scrub reports "no majority" and changes neither.
#[test]
fn scrub_leaves_copies_without_a_majority_alone() {
    let c = Cluster::builder().nodes(2).args(&["--scrub-rate", "500"]).start();
    c.format(2);
    c.dog_ok(&["vdi", "create", "n", "8M"]);
    c.write_vdi("n", 0, &pseudo_random(24, 4 * MIB));
    let oid = Vid::new(c.vid_of("n")).expect("vid").data_oid(0);
    diverge(&c, 0, oid, 0);
    let before = snapshot_files(&c);
    let reported = || {
        let raw = c.dog_ok(&["cluster", "scrub", "-r"]).stdout_str();
        if raw.contains(&format!("{:016x} no majority:", oid.0)) {
            Ok(raw)
        } else {
            Err(raw)
        }
    };
    tests::wait_until(
        "the scrub to report the object",
        std::time::Duration::from_secs(60),
        reported,
    );
    assert_eq!(snapshot_files(&c), before, "without a majority nothing changes");
}

/// A byte flipped in the copy of the gateway a client reads through is never served: the
/// read comes from another replica, the log names the object, node and epoch, and the
/// damaged copy is replaced in the background.
#[test]
fn a_rotten_copy_is_never_served_and_is_repaired() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "r", "16M"]);
    let data = pseudo_random(25, 8 * MIB);
    c.write_vdi("r", 0, &data);
    let oid = Vid::new(c.vid_of("r")).expect("vid").data_oid(1);
    flip(&c, 0, oid, 777);
    // dog reads through node 0, whose own copy it tries first.
    assert_eq!(
        c.read_vdi("r", 0, data.len() as u64, None),
        data,
        "the good bytes, not the flipped ones"
    );
    let log = std::fs::read_to_string(c.node(0).log_path()).expect("log");
    let line = log
        .lines()
        .find(|l| l.contains("checksum mismatch"))
        .unwrap_or_else(|| panic!("no checksum line in node 0's log"));
    assert!(
        line.contains(&oid.to_string()) && line.contains("epoch") && line.contains(&c.node(0).addr().to_string()),
        "{line}"
    );
    let healed = || {
        let copies: Vec<Option<Vec<u8>>> = (0..3).map(|i| c.node(i).object_bytes(oid)).collect();
        if copies.iter().all(|x| *x == copies[0]) {
            Ok(())
        } else {
            Err("node 0's copy is still damaged".to_string())
        }
    };
    tests::wait_until(
        "the damaged copy to be replaced",
        std::time::Duration::from_secs(30),
        healed,
    );
}

/// Every copy rotten: the read fails (EIO), it does not return zeros or bad bytes.
#[test]
fn a_read_whose_every_copy_is_rotten_fails() {
    let c = Cluster::start_formatted(2, 2);
    c.dog_ok(&["vdi", "create", "e", "8M"]);
    c.write_vdi("e", 0, &pseudo_random(26, 4 * MIB));
    let oid = Vid::new(c.vid_of("e")).expect("vid").data_oid(0);
    flip(&c, 0, oid, 100);
    flip(&c, 1, oid, 200);
    let o = c.dog(&["vdi", "read", "e", "0", "4096"]).expect_failure();
    assert!(o.stdout.is_empty(), "no bytes for a block no copy can vouch for");
    // Blocks that are intact on some copy still read.
    assert_eq!(
        c.read_vdi("e", 8192, 4096, None),
        pseudo_random(26, 4 * MIB)[8192..12288]
    );
}

/// A damaged inode on one node: lookups and reads still work, through the others' copies.
#[test]
fn a_damaged_inode_copy_does_not_hide_the_vdi() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "i", "8M"]);
    let data = pseudo_random(27, MIB);
    c.write_vdi("i", 0, &data);
    let inode = Vid::new(c.vid_of("i")).expect("vid").inode_oid();
    flip(&c, 0, inode, 0);
    assert_eq!(c.vdi_list(0).len(), 1, "dog vdi list through node 0");
    assert_eq!(c.read_vdi("i", 0, data.len() as u64, None), data);
}

/// Two copies, one rotten: no majority is needed, the one that passes its checksums wins.
#[test]
fn vdi_check_replaces_a_copy_that_fails_its_checksums_even_without_a_majority() {
    let c = Cluster::start_formatted(2, 2);
    c.dog_ok(&["vdi", "create", "t", "8M"]);
    c.write_vdi("t", 0, &pseudo_random(28, 4 * MIB));
    let oid = Vid::new(c.vid_of("t")).expect("vid").data_oid(0);
    flip(&c, 1, oid, 4242);
    let (code, out) = check(&c, &["t"]);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "{:016x} fails its checksums on {}: repaired from {}",
        oid.0,
        c.node(1).addr(),
        c.node(0).addr()
    );
    assert!(out.contains(&want), "{out}");
    assert_eq!(c.node(1).object_bytes(oid), c.node(0).object_bytes(oid));
    assert_eq!(check(&c, &["t"]).0, 0);
}

/// A node that joins and cannot fetch objects it now owns (every source copy fails its
/// checksums) does not say its epoch is recovered: the nodes holding the only copies keep
/// them, and once those copies are good again its retries recover every object.
#[test]
fn an_epoch_with_objects_not_recovered_stays_unrecovered_and_the_sources_keep_them() {
    let mut c = Cluster::start_formatted(2, 1);
    c.dog_ok(&["vdi", "create", "mu", "128M"]);
    let mut model = vec![0u8; 128 * MIB];
    c.put(0, "mu", &mut model, 0, 301, 128 * MIB as u64);
    let data: BTreeMap<(usize, Oid), Vec<u8>> = snapshot_files(&c)
        .into_iter()
        .filter(|((_, oid), _)| oid.is_data())
        .collect();
    for &(i, oid) in data.keys() {
        flip(&c, i, oid, 0);
    }
    let new = c.add_node(2);
    tests::wait_until(
        "the new node to fail fetching a rotten copy",
        std::time::Duration::from_secs(60),
        || match c.node(new).log_text().contains("cannot recover object") {
            true => Ok(()),
            false => Err(c.node(new).log_tail(5)),
        },
    );
    // Time for the old nodes to drop copies they no longer own, were the epoch said done.
    std::thread::sleep(std::time::Duration::from_secs(3));
    for &(i, oid) in data.keys() {
        assert!(
            object_file(&c, i, oid).exists(),
            "node {i} dropped {oid}, whose new owner has no good copy:\n{}",
            c.node(new).log_tail(20)
        );
    }
    for ((i, oid), bytes) in &data {
        std::fs::write(object_file(&c, *i, *oid), bytes).expect("the copy made good again");
    }
    c.wait_recovered(std::time::Duration::from_secs(60));
    c.check_reads("mu", &model, &[0, 1, new], "after the retries");
}

/// A damaged copy is healed only from a current one. The other replica rejoined with a
/// stale copy that its throttled recovery has not reached yet: the damaged copy is not
/// replaced by it, and reads of the object fail rather than return the old bytes.
#[test]
fn a_damaged_copy_is_not_healed_from_a_replica_that_has_not_recovered_it() {
    let mut c = Cluster::start_formatted(2, 2);
    c.dog_ok(&["vdi", "create", "xi", "64M"]);
    let mut old = vec![0u8; 64 * MIB];
    c.put(0, "xi", &mut old, 0, 501, 64 * MIB as u64);
    c.kill(1);
    c.wait_for_membership();
    let mut new = old.clone();
    let (at, len) = (60 * MIB, 4 * MIB);
    // The last object, the last one node 1's recovery (in oid order) gets to.
    c.put(0, "xi", &mut new, at as u64, 502, len as u64);
    c.node_mut(1).start_with_args(&["--recovery-rate", "1"]);
    c.wait_for_membership();
    let last = Vid::new(c.vid_of("xi")).expect("a vid").data_oid(15);
    flip(&c, 0, last, 0);
    let read = |c: &Cluster| c.dog_at(0, &["vdi", "read", "xi", &at.to_string(), &len.to_string()], None);
    // The first read finds the rot and starts a heal.
    let _ = read(&c);
    tests::wait_until(
        "node 0 to try to heal its copy",
        std::time::Duration::from_secs(30),
        || match c.node(0).log_text().contains("damaged copy") {
            true => Ok(()),
            false => Err(c.node(0).log_tail(5)),
        },
    );
    let again = read(&c);
    assert!(
        again.stdout != old[at..at + len],
        "the damaged copy was replaced by the stale one:\n{}",
        c.node(0).log_tail(20)
    );
    if again.success() {
        assert!(
            again.stdout == new[at..at + len],
            "a read returned bytes never written there"
        );
    }
}
