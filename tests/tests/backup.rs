//! `dog vdi backup` and `dog vdi restore`: Sheepdog 1.0.1's stream format, differential
//! backups that hold only what changed, restores that rebuild the snapshot byte for byte, and
//! broken backups refused before anything changes.

use std::process::{Command, Stdio};
use std::time::Duration;

use protocol::backup::{self, Record};
use tests::{dog_bin, pseudo_random, run_command_with_stdin, Cluster, VdiLine};

const MIB: u64 = 1 << 20;
const OBJ: u64 = 4 * MIB;
const SIZE: u64 = 64 * MIB;

/// Writes `data` at `offset` of VDI `v` and of its model.
fn put(c: &Cluster, model: &mut [u8], offset: u64, data: &[u8]) {
    c.write_vdi("v", offset, data);
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// The records of a stream: (record, its data).
fn records(s: &[u8]) -> Vec<(Record, Vec<u8>)> {
    assert_eq!(&s[..8], &backup::header(), "the stream starts with the 1.0.1 header");
    let mut at = 8;
    let mut out = Vec::new();
    loop {
        let (r, reserved) = Record::decode(s[at..at + 16].try_into().expect("16 bytes"));
        assert_eq!(reserved, 0);
        at += 16;
        if r.idx == backup::END {
            assert_eq!(at, s.len(), "the end record ends the stream");
            return out;
        }
        let data = s[at..at + r.length as usize].to_vec();
        at += r.length as usize;
        out.push((r, data));
    }
}

/// What a backup from `old` to `new` must hold: per differing object, its first to last
/// differing 512-byte sector.
fn expected(old: &[u8], new: &[u8]) -> Vec<(Record, Vec<u8>)> {
    let mut out = Vec::new();
    for idx in 0..(SIZE / OBJ) as usize {
        let range = idx * OBJ as usize..(idx + 1) * OBJ as usize;
        let (a, b) = (&new[range.clone()], &old[range.clone()]);
        let diff: Vec<usize> = (0..OBJ as usize / 512)
            .filter(|s| a[s * 512..(s + 1) * 512] != b[s * 512..(s + 1) * 512])
            .collect();
        if let (Some(&f), Some(&l)) = (diff.first(), diff.last()) {
            let (off, end) = (f * 512, (l + 1) * 512);
            let r = Record {
                idx: idx as u32,
                offset: off as u32,
                length: (end - off) as u32,
            };
            out.push((r, a[off..end].to_vec()));
        }
    }
    out
}

fn newest_snapshot(c: &Cluster) -> VdiLine {
    c.vdi_list(0)
        .into_iter()
        .filter(|l| l.name == "v" && l.flag == "s")
        .max_by_key(|l| l.snap_id)
        .expect("a snapshot of v")
}

/// A VDI with two snapshots: the model of each, and the cluster.
fn two_snapshots() -> (Cluster, Vec<u8>, Vec<u8>) {
    let c = Cluster::start_formatted(3, 2);
    c.dog_ok(&["vdi", "create", "v", &SIZE.to_string()]);
    let mut model = vec![0u8; SIZE as usize];
    put(&c, &mut model, 0, &pseudo_random(1, 6 * MIB as usize));
    put(&c, &mut model, 40 * MIB + 777, &pseudo_random(2, 5000));
    c.dog_ok(&["vdi", "snapshot", "-s", "a", "v"]);
    let a = model.clone();
    // Changes: one sector inside object 0, a run across objects 1 and 2, a new object 9,
    // bytes rewritten with the same values (no change), and the last bytes of the VDI.
    put(&c, &mut model, 100_000, &pseudo_random(3, 100));
    put(&c, &mut model, 2 * OBJ - 3000, &pseudo_random(4, 9000));
    put(&c, &mut model, 9 * OBJ + 12_345, &pseudo_random(5, 70_000));
    let same = a[5 * MIB as usize..5 * MIB as usize + 4096].to_vec();
    put(&c, &mut model, 5 * MIB, &same);
    put(&c, &mut model, SIZE - 10, b"0123456789");
    c.dog_ok(&["vdi", "snapshot", "-s", "b", "v"]);
    (c, a, model)
}

#[test]
fn backups_hold_what_changed_and_restore_it_exactly() {
    let (c, a, b) = two_snapshots();
    let full = c.dog_ok(&["vdi", "backup", "-s", "a", "v"]).stdout;
    assert_eq!(
        records(&full),
        expected(&vec![0u8; SIZE as usize], &a),
        "a full backup of a"
    );
    let diff = c.dog_ok(&["vdi", "backup", "-F", "a", "-s", "b", "v"]).stdout;
    assert_eq!(records(&diff), expected(&a, &b), "the backup from a to b");
    assert!(
        diff.len() < 200_000,
        "the differential backup holds only changes: {} bytes",
        diff.len()
    );

    // Restore from a pipe: the newest snapshot is a plus the changes, that is b.
    let out = c.dog_with_input(&["vdi", "restore", "-s", "a", "v"], &diff).expect_ok();
    assert!(out.stderr.contains("restored 5 objects"), "{}", out.stderr);
    let restored = newest_snapshot(&c);
    assert!(
        c.read_vdi("v", 0, SIZE, Some(&restored.snap_id.to_string())) == b,
        "the restored snapshot reads as b"
    );
    assert!(c.read_vdi("v", 0, SIZE, Some("a")) == a, "snapshot a is untouched");
    assert!(c.read_vdi("v", 0, SIZE, Some("b")) == b, "snapshot b is untouched");
    assert!(
        c.read_vdi("v", 0, SIZE, None) == b,
        "the working VDI starts again from b"
    );

    // Restore from a file: the full backup on top of a gives a again.
    let file = c.root().join("full.backup");
    std::fs::write(&file, &full).expect("writing the backup file");
    let mut cmd = Command::new(dog_bin());
    cmd.args(["vdi", "restore", "-s", "a", "v", "-p", &c.node(1).port().to_string()]);
    let input = Stdio::from(std::fs::File::open(&file).expect("open"));
    let o = run_command_with_stdin(cmd, input, Duration::from_secs(120));
    assert!(o.success(), "{}", o.describe());
    let restored = newest_snapshot(&c);
    assert!(
        c.read_vdi("v", 0, SIZE, Some(&restored.snap_id.to_string())) == a,
        "the full backup restores a"
    );
    let check = c.dog_ok(&["vdi", "check", "-s", &restored.snap_id.to_string(), "v"]);
    assert!(
        check.stdout_str().contains("0 repaired, 0 unrepairable"),
        "{}",
        check.stdout_str()
    );
}

#[test]
fn broken_backups_and_unsafe_restores_change_nothing() {
    let (c, a, b) = two_snapshots();
    let diff = c.dog_ok(&["vdi", "backup", "-F", "a", "-s", "b", "v"]).stdout;
    let list = c.dog_ok(&["vdi", "list", "-r"]).stdout_str();
    let mut beyond = diff.clone();
    beyond[8..12].copy_from_slice(&1000u32.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "inside the header"),
        (
            "not a backup",
            b"hello, this is not a backup".to_vec(),
            "not a VDI backup",
        ),
        (
            "cut in its data",
            diff[..diff.len() / 2].to_vec(),
            "the stream ends after",
        ),
        ("without its end", diff[..diff.len() - 16].to_vec(), "no end record"),
        (
            "with bytes after its end",
            [diff.clone(), b"x".to_vec()].concat(),
            "bytes follow the end record",
        ),
        ("for an object the VDI has not", beyond, "the VDI has only 16 objects"),
    ];
    for (what, bytes, why) in cases {
        let o = c
            .dog_with_input(&["vdi", "restore", "-s", "a", "v"], &bytes)
            .expect_failure();
        assert!(
            o.stderr.contains("nothing was changed") && o.stderr.contains(why),
            "a backup {what}: {}",
            o.stderr
        );
    }
    // A snapshot that is not there, of a VDI or of one that is not there either.
    for (snap, vdi) in [("nosuch", "v"), ("a", "novdi")] {
        let o = c
            .dog_with_input(&["vdi", "restore", "-s", snap, vdi], &diff)
            .expect_failure();
        assert!(
            o.stderr.contains(vdi) && o.stderr.contains(snap),
            "restore -s {snap} {vdi}: {}",
            o.stderr
        );
    }
    assert_eq!(
        c.dog_ok(&["vdi", "list", "-r"]).stdout_str(),
        list,
        "no broken backup or missing snapshot changed anything"
    );
    // Writes since the last snapshot would be lost: refused too.
    c.write_vdi("v", 0, b"unsaved");
    let list_after_write = c.dog_ok(&["vdi", "list", "-r"]).stdout_str();
    let o = c
        .dog_with_input(&["vdi", "restore", "-s", "a", "v"], &diff)
        .expect_failure();
    assert!(o.stderr.contains("take a snapshot first"), "{}", o.stderr);
    assert_eq!(c.dog_ok(&["vdi", "list", "-r"]).stdout_str(), list_after_write);
    assert_ne!(
        list, list_after_write,
        "the write allocated an object of the working VDI"
    );
    assert!(c.read_vdi("v", 0, SIZE, Some("a")) == a && c.read_vdi("v", 0, SIZE, Some("b")) == b);
    assert_eq!(c.read_vdi("v", 0, 7, None), b"unsaved");
}

/// Three snapshots backed up (one full, two differential) and restored in order on another
/// cluster: every restored snapshot reads as its original; backing up changed nothing.
#[test]
fn three_snapshots_restore_on_another_cluster() {
    let src = Cluster::start_formatted(2, 2);
    src.dog_ok(&["vdi", "create", "v", &SIZE.to_string()]);
    let mut model = vec![0u8; SIZE as usize];
    let mut snaps = Vec::new();
    let writes: [&[(u64, usize)]; 3] = [
        &[(0, 3 * MIB as usize), (30 * MIB, 100_000)],
        &[(MIB + 3, 5000), (50 * MIB, MIB as usize)],
        &[(0, 512), (SIZE - 4096, 4096)],
    ];
    for (i, ws) in writes.iter().enumerate() {
        for (j, &(at, len)) in ws.iter().enumerate() {
            put(
                &src,
                &mut model,
                at,
                &pseudo_random(100 + 10 * i as u64 + j as u64, len),
            );
        }
        src.dog_ok(&["vdi", "snapshot", "-s", &format!("s{}", i + 1), "v"]);
        snaps.push(model.clone());
    }
    let list = src.dog_ok(&["vdi", "list", "-r"]).stdout_str();
    let tree = src.dog_ok(&["vdi", "tree"]).stdout_str();
    let backups = [
        src.dog_ok(&["vdi", "backup", "-s", "s1", "v"]).stdout,
        src.dog_ok(&["vdi", "backup", "-F", "s1", "-s", "s2", "v"]).stdout,
        src.dog_ok(&["vdi", "backup", "-F", "s2", "-s", "s3", "v"]).stdout,
    ];
    assert_eq!(src.dog_ok(&["vdi", "list", "-r"]).stdout_str(), list);
    assert_eq!(src.dog_ok(&["vdi", "tree"]).stdout_str(), tree);
    assert!(
        backups[2].len() < 200_000,
        "the last backup holds two changed sectors' objects: {} bytes",
        backups[2].len()
    );

    let dst = Cluster::start_formatted(2, 2);
    dst.dog_ok(&["vdi", "create", "v", &SIZE.to_string()]);
    dst.dog_ok(&["vdi", "snapshot", "-s", "empty", "v"]);
    let mut on = "empty".to_string();
    for (i, b) in backups.iter().enumerate() {
        dst.dog_with_input(&["vdi", "restore", "-s", &on, "v"], b).expect_ok();
        on = newest_snapshot(&dst).snap_id.to_string();
        let got = dst.read_vdi("v", 0, SIZE, Some(&on));
        tests::assert_same_bytes(&format!("snapshot s{} restored", i + 1), &got, &snaps[i]);
    }
    // The restored chain: each restore became the newest snapshot, on top of the one before;
    // the working VDI restarts from the empty snapshot each time (Sheepdog 1.0.1's rebase).
    let tree = dst.dog_ok(&["vdi", "tree"]).stdout_str();
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 2, "{tree}");
    assert!(
        lines[0].starts_with("v [1 ") && lines[0].contains(" empty]-+-[2 "),
        "{tree}"
    );
    assert_eq!(
        lines[0].matches("]---[").count(),
        2,
        "three restored snapshots in a row: {tree}"
    );
    assert!(lines[1].trim_start().starts_with("`-(you are here)"), "{tree}");
    let list = dst.vdi_list(0);
    assert_eq!(list.iter().filter(|l| l.flag == "s").count(), 4);
    assert!(list.iter().all(|l| l.size == SIZE));
}
