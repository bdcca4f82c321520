//! `dog cluster snapshot`: every VDI copied into a farm directory at one cut, listed, checked
//! and loaded back byte for byte after a reformat (all of them or a subset); identical
//! slices stored once; a corrupted farm object named and never loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tests::{assert_same_bytes, pseudo_random, Cluster};

const MIB: u64 = 1 << 20;

/// Writes `data` at `offset` of VDI `name` and of its model.
fn put(c: &Cluster, models: &mut BTreeMap<String, Vec<u8>>, name: &str, offset: u64, data: &[u8]) {
    c.write_vdi(name, offset, data);
    let m = models.get_mut(name).expect("a model");
    m[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

fn create(c: &Cluster, models: &mut BTreeMap<String, Vec<u8>>, name: &str, size: u64) {
    c.dog_ok(&["vdi", "create", name, &size.to_string()]);
    models.insert(name.to_string(), vec![0; size as usize]);
}

/// Each VDI of the cluster reads as its model.
fn assert_vdis(c: &Cluster, models: &BTreeMap<String, Vec<u8>>, when: &str) {
    for (name, m) in models {
        let got = c.read_vdi(name, 0, m.len() as u64, None);
        assert_same_bytes(&format!("VDI {name} {when}"), &got, m);
    }
}

/// The working VDIs as (name, size, copies): what a load must give back.
fn working(c: &Cluster) -> Vec<(String, u64, u32)> {
    let mut v: Vec<_> = c
        .vdi_list(0)
        .into_iter()
        .filter(|l| l.flag != "s")
        .map(|l| (l.name, l.size, l.copies))
        .collect();
    v.sort();
    v
}

fn farm_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("objects")).expect("objects/") {
        for f in std::fs::read_dir(sub.expect("entry").path()).expect("a subdirectory") {
            out.push(f.expect("entry").path());
        }
    }
    out
}

fn farm_bytes(dir: &Path) -> u64 {
    farm_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum()
}

#[test]
fn cluster_snapshots_survive_a_reformat_and_load_all_or_some() {
    let c = Cluster::start_formatted(3, 2);
    let farm = c.root().join("farm");
    let farm_s = farm.to_str().expect("utf-8 path");
    let mut models = BTreeMap::new();
    create(&c, &mut models, "alpha", 24 * MIB);
    create(&c, &mut models, "odd", 9 * MIB + 5000);
    create(&c, &mut models, "empty", 8 * MIB);
    put(&c, &mut models, "alpha", 0, &pseudo_random(1, 6 * MIB as usize));
    put(&c, &mut models, "alpha", 20 * MIB + 99, &pseudo_random(2, 70_000));
    put(&c, &mut models, "odd", 9 * MIB + 1000, &pseudo_random(3, 4000));
    // A VDI with a snapshot: the cluster snapshot holds what its working VDI reads.
    c.dog_ok(&["vdi", "snapshot", "-s", "old", "odd"]);
    put(&c, &mut models, "odd", 4 * MIB - 10, &pseudo_random(4, 20));
    let layout = working(&c);
    let tree = c.dog_ok(&["vdi", "tree"]).stdout_str();

    let out = c.dog_ok(&["cluster", "snapshot", "save", "first", farm_s]);
    assert!(
        out.stdout_str().contains("saved cluster snapshot 1 'first': 3 VDIs"),
        "{}",
        out.all_text()
    );
    assert!(
        out.stderr.is_empty(),
        "nothing but the result when piped: {}",
        out.stderr
    );
    let one = models.clone();
    assert_eq!(working(&c), layout, "the cut snapshots are gone again");
    assert_eq!(
        c.dog_ok(&["vdi", "tree"]).stdout_str(),
        tree,
        "and the tree is as it was"
    );
    assert!(
        c.vdi_list(0).iter().filter(|l| l.flag == "s").count() == 1,
        "only the user's snapshot is left: {:?}",
        c.vdi_list(0)
    );
    assert_vdis(&c, &models, "after the save");
    let o = c
        .dog(&["cluster", "snapshot", "save", "first", farm_s])
        .expect_failure();
    assert!(o.stderr.contains("exists"), "{}", o.stderr);

    put(&c, &mut models, "alpha", 5, b"changed after the first snapshot");
    let out = c.dog_ok(&["cluster", "snapshot", "save", "only alpha", farm_s, "alpha"]);
    assert!(out.stdout_str().contains("1 VDIs"), "{}", out.stdout_str());
    let two_alpha = models["alpha"].clone();
    let o = c
        .dog(&["cluster", "snapshot", "save", "third", farm_s, "nosuch"])
        .expect_failure();
    assert!(o.stderr.contains("No VDI nosuch"), "{}", o.stderr);

    let list = c.dog_ok(&["cluster", "snapshot", "list", "-r", farm_s]).stdout_str();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("1 ") && lines[0].ends_with(" 3 6689672 first"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("2 ") && lines[1].ends_with(" only alpha"),
        "{list}"
    );
    let check = c
        .dog_ok(&["cluster", "snapshot", "check", "first", farm_s])
        .stdout_str();
    assert!(check.contains("every object matches"), "{check}");

    // After a reformat, everything comes back as it was at the cut.
    c.dog_ok(&["cluster", "format", "-c", "2", "-f"]);
    assert!(working(&c).is_empty());
    let out = c.dog_ok(&["cluster", "snapshot", "load", "first", farm_s]);
    assert!(out.stdout_str().contains("loaded 3 VDIs"), "{}", out.stdout_str());
    assert_eq!(working(&c), layout, "names, sizes and redundancy");
    assert_vdis(&c, &one, "loaded from 'first'");

    // A VDI of that name exists: refused, nothing changes.
    let before = c.dog_ok(&["vdi", "list", "-r"]).stdout_str();
    let o = c
        .dog(&["cluster", "snapshot", "load", "only alpha", farm_s])
        .expect_failure();
    assert!(
        o.stderr.contains("VDI alpha exists") && o.stderr.contains("nothing was changed"),
        "{}",
        o.stderr
    );
    assert_eq!(c.dog_ok(&["vdi", "list", "-r"]).stdout_str(), before);
    let o = c
        .dog(&["cluster", "snapshot", "load", "nosuch", farm_s])
        .expect_failure();
    assert!(o.stderr.contains("No cluster snapshot tagged 'nosuch'"), "{}", o.stderr);

    // A subset: only that.
    c.dog_ok(&["cluster", "format", "-c", "2", "-f"]);
    c.dog_ok(&["cluster", "snapshot", "load", "first", farm_s, "odd"]);
    let names: Vec<String> = working(&c).into_iter().map(|w| w.0).collect();
    assert_eq!(names, ["odd"]);
    assert_same_bytes("odd", &c.read_vdi("odd", 0, 9 * MIB + 5000, None), &one["odd"]);
    c.dog_ok(&["cluster", "snapshot", "load", "only alpha", farm_s]);
    assert_same_bytes("alpha", &c.read_vdi("alpha", 0, 24 * MIB, None), &two_alpha);
}

#[test]
fn clones_share_slices_and_a_corrupt_object_is_named_and_never_loaded() {
    let c = Cluster::start_formatted(3, 2);
    let farm = c.root().join("farm");
    let farm_s = farm.to_str().expect("utf-8 path");
    let base_size = 32 * MIB;
    let mut models = BTreeMap::new();
    create(&c, &mut models, "base", base_size);
    put(&c, &mut models, "base", 0, &pseudo_random(10, base_size as usize));
    c.dog_ok(&["vdi", "snapshot", "-s", "golden", "base"]);
    for i in 0..10u64 {
        let name = format!("clone{i}");
        c.dog_ok(&["vdi", "clone", "-s", "golden", "base", &name]);
        let model = models["base"].clone();
        models.insert(name.clone(), model);
        put(&c, &mut models, &name, i * 3 * MIB + 512, &pseudo_random(20 + i, 4096));
    }
    c.dog_ok(&["cluster", "snapshot", "save", "clones", farm_s]);
    let used = farm_bytes(&farm);
    eprintln!(
        "farm space for a {} MiB base and 10 lightly written clones: {used} bytes ({:.3} x the base)",
        base_size / MIB,
        used as f64 / base_size as f64
    );
    assert!(
        used as f64 <= 1.2 * base_size as f64,
        "11 VDIs of 32 MiB that differ in 10 blocks take {used} bytes"
    );

    // Flip one byte of a data slice: check names it, load refuses before changing anything.
    let slice = farm_files(&farm)
        .into_iter()
        .find(|p| std::fs::metadata(p).expect("stat").len() == 128 * 1024)
        .expect("a data slice");
    let mut bytes = std::fs::read(&slice).expect("read");
    bytes[777] ^= 0x20;
    std::fs::write(&slice, &bytes).expect("write");
    let file = slice.file_name().and_then(|n| n.to_str()).expect("name").to_string();
    let o = c
        .dog(&["cluster", "snapshot", "check", "clones", farm_s])
        .expect_failure();
    assert!(
        o.stdout_str().contains(&file) && o.stdout_str().contains("corrupt"),
        "check names the object: {}",
        o.all_text()
    );
    assert!(o.stderr.contains("bad objects"), "{}", o.stderr);
    for name in ["base", "clone7"] {
        let got = c.read_vdi(name, 0, base_size, None);
        assert_same_bytes(
            &format!("VDI {name} after the corrupt farm was checked"),
            &got,
            &models[name],
        );
    }
    // Every VDI uses the base's slices; reformat and try to load one.
    c.dog_ok(&["cluster", "format", "-c", "2", "-f"]);
    let o = c
        .dog(&["cluster", "snapshot", "load", "clones", farm_s, "clone3"])
        .expect_failure();
    assert!(
        o.stderr.contains(&file) && o.stderr.contains("nothing was changed"),
        "{}",
        o.stderr
    );
    assert!(working(&c).is_empty(), "no VDI was created: {:?}", working(&c));
}

#[test]
fn a_farm_must_be_one() {
    let c = Cluster::start_formatted(1, 1);
    let not_farm = c.root().join("stuff");
    std::fs::create_dir_all(&not_farm).expect("mkdir");
    std::fs::write(not_farm.join("precious"), b"x").expect("write");
    let p = not_farm.to_str().expect("utf-8 path");
    let o = c.dog(&["cluster", "snapshot", "save", "t", p]).expect_failure();
    assert!(o.stderr.contains("is not a farm and not empty"), "{}", o.stderr);
    let o = c.dog(&["cluster", "snapshot", "list", p]).expect_failure();
    assert!(o.stderr.contains("is not a farm"), "{}", o.stderr);
    assert_eq!(
        std::fs::read_dir(&not_farm).expect("ls").count(),
        1,
        "nothing was added"
    );
    let empty = c.root().join("empty-farm");
    let o = c
        .dog(&["cluster", "snapshot", "save", "t", empty.to_str().expect("utf-8 path")])
        .expect_failure();
    assert!(o.stderr.contains("no VDI to snapshot"), "{}", o.stderr);
    let o = c.dog(&["cluster", "snapshot", "save", "bad\ntag", p]).expect_failure();
    assert!(o.stderr.contains("control characters"), "{}", o.stderr);
}

/// Runs `dog ARGS > out` on a pseudo-terminal (`script`): what the terminal showed.
fn on_a_terminal(c: &Cluster, args: &str, out: &Path) -> String {
    let typescript = c.root().join("typescript");
    let cmd = format!(
        "{} {args} -p {} > {}",
        tests::dog_bin().display(),
        c.node(0).port(),
        out.display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd])
        .arg(&typescript)
        .output()
        .expect("script (util-linux) runs");
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned()
}

#[test]
fn long_commands_draw_progress_on_a_terminal_only() {
    let c = Cluster::start_formatted(1, 1);
    c.dog_ok(&["vdi", "create", "v", &(16 * MIB).to_string()]);
    c.write_vdi("v", 0, &pseudo_random(7, 16 * MIB as usize));
    c.dog_ok(&["vdi", "snapshot", "-s", "s", "v"]);
    let piped = c.dog_ok(&["vdi", "backup", "-s", "s", "v"]);
    assert!(piped.stderr.is_empty(), "quiet when piped: {}", piped.stderr);
    let file = c.root().join("backup");
    let shown = on_a_terminal(&c, "vdi backup -s s v", &file);
    assert!(shown.contains("backing up"), "a bar on the terminal: {shown:?}");
    assert!(
        std::fs::read(&file).expect("backup") == piped.stdout,
        "the same backup either way"
    );
    let farm = c.root().join("farm");
    let shown = on_a_terminal(
        &c,
        &format!("cluster snapshot save t {}", farm.display()),
        &c.root().join("o"),
    );
    assert!(shown.contains("saving"), "{shown:?}");
}

/// A writer puts the same counter into VDI a, then into VDI b, over and over, while a
/// cluster snapshot is saved: at one moment for both, b holds a's counter or the one before.
#[test]
fn the_cut_is_one_moment_for_every_vdi() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let c = Cluster::start_formatted(2, 2);
    let farm = c.root().join("farm");
    let farm_s = farm.to_str().expect("utf-8 path");
    for v in ["a", "b"] {
        c.dog_ok(&["vdi", "create", v, &(4 * MIB).to_string()]);
    }
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let counter_of = |bytes: &[u8]| u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                for v in ["a", "b"] {
                    // A write that meets the cut is refused (READONLY) and goes to the new
                    // working VDI when tried again.
                    let data = n.to_le_bytes();
                    tests::wait_until("a counter write", std::time::Duration::from_secs(30), || {
                        let o = tests::run_dog(c.node(0).port(), &["vdi", "write", v, "0", "8"], Some(&data));
                        if o.success() {
                            Ok(())
                        } else {
                            Err(o.all_text())
                        }
                    });
                }
                written.store(n, Ordering::Relaxed);
            }
            n
        });
        // The saves start once the writer has been through both VDIs twice.
        tests::wait_until(
            "the writer's first counters",
            std::time::Duration::from_secs(30),
            || {
                if written.load(Ordering::Relaxed) >= 2 {
                    Ok(())
                } else {
                    Err("fewer than 2 rounds written".to_string())
                }
            },
        );
        for i in 0..3 {
            c.dog_ok(&["cluster", "snapshot", "save", &format!("cut{i}"), farm_s]);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(writer.join().expect("the writer") > 3, "the writer ran");
    });
    for i in 0..3 {
        c.dog_ok(&["cluster", "format", "-c", "2", "-f"]);
        c.dog_ok(&["cluster", "snapshot", "load", &format!("cut{i}"), farm_s]);
        let a = counter_of(&c.read_vdi("a", 0, 8, None));
        let b = counter_of(&c.read_vdi("b", 0, 8, None));
        assert!(a == b || a == b + 1, "cut {i}: a holds {a}, b holds {b}");
    }
}

/// SNAPSHOT_VDIS, the request behind the cut: all of its VDIs or none.
#[test]
fn snapshot_vdis_is_all_or_nothing() {
    use protocol::requests::snapshot_vdis_request;
    use protocol::{ClientError, ResultCode};
    let c = Cluster::start_formatted(2, 2);
    for v in ["a", "b"] {
        c.dog_ok(&["vdi", "create", v, &MIB.to_string()]);
    }
    c.dog_ok(&["vdi", "snapshot", "-s", "taken", "a"]);
    let request = |tag: &str, names: &[&str]| {
        let (req, payload) = snapshot_vdis_request(tag, names);
        c.call(1, req, &payload)
    };
    let refused = |r: Result<protocol::Reply, ClientError>| match r {
        Err(e) => e.result(),
        Ok(_) => None,
    };
    let before = c.dog_ok(&["vdi", "list", "-r"]).stdout_str();
    let cases: [(&str, &[&str], ResultCode); 4] = [
        ("t", &["b", "nosuch"], ResultCode::NO_VDI),
        ("t", &["b", "b"], ResultCode::INVALID_PARMS),
        ("taken", &["b", "a"], ResultCode::VDI_EXIST),
        ("", &["b"], ResultCode::INVALID_PARMS),
    ];
    for (tag, names, code) in cases {
        assert_eq!(refused(request(tag, names)), Some(code), "tag {tag:?}, VDIs {names:?}");
    }
    assert_eq!(c.dog_ok(&["vdi", "list", "-r"]).stdout_str(), before, "nothing changed");

    let r = request("both", &["b", "a"]).expect("two snapshots");
    assert_eq!(r.data.len(), 16, "a pair of vids per VDI");
    let tagged: Vec<String> = c
        .vdi_list(0)
        .into_iter()
        .filter(|l| l.flag == "s" && l.tag == "both")
        .map(|l| l.name)
        .collect();
    assert_eq!(tagged, ["a", "b"]);
    assert_eq!(c.vdi_list(0).iter().filter(|l| l.flag == "=").count(), 2);
}

/// Deleting a cluster snapshot frees what only it used; the others still check and load.
#[test]
fn deleting_a_snapshot_frees_only_what_no_other_uses() {
    let c = Cluster::start_formatted(2, 2);
    let farm = c.root().join("farm");
    let farm_s = farm.to_str().expect("utf-8 path");
    let mut models = BTreeMap::new();
    create(&c, &mut models, "v", 8 * MIB);
    put(&c, &mut models, "v", 0, &pseudo_random(30, 4 * MIB as usize));
    c.dog_ok(&["cluster", "snapshot", "save", "one", farm_s]);
    // Overwrite 1 MiB (8 slices only "one" keeps) and add 1 MiB elsewhere.
    put(&c, &mut models, "v", MIB, &pseudo_random(31, MIB as usize));
    put(&c, &mut models, "v", 6 * MIB, &pseudo_random(32, MIB as usize));
    c.dog_ok(&["cluster", "snapshot", "save", "two", farm_s]);
    let before = farm_bytes(&farm);

    let out = c.dog_ok(&["cluster", "snapshot", "delete", "one", farm_s]).stdout_str();
    assert!(
        out.contains("deleted cluster snapshot 'one': 10 objects"),
        "8 slices, a trunk and a snap: {out}"
    );
    let freed = before - farm_bytes(&farm);
    assert!(
        (MIB..MIB + 4096).contains(&freed),
        "only the overwritten MiB and two small objects: {freed}"
    );
    let list = c.dog_ok(&["cluster", "snapshot", "list", "-r", farm_s]).stdout_str();
    assert!(list.lines().count() == 1 && list.starts_with("2 "), "{list}");
    let check = c.dog_ok(&["cluster", "snapshot", "check", "two", farm_s]).stdout_str();
    assert!(check.contains("every object matches"), "{check}");
    c.dog_ok(&["cluster", "format", "-c", "2", "-f"]);
    c.dog_ok(&["cluster", "snapshot", "load", "two", farm_s]);
    assert_vdis(&c, &models, "loaded from 'two' after 'one' was deleted");

    let o = c
        .dog(&["cluster", "snapshot", "delete", "one", farm_s])
        .expect_failure();
    assert!(o.stderr.contains("No cluster snapshot tagged 'one'"), "{}", o.stderr);

    // With the index of another snapshot gone, nothing can be told garbage: refused.
    c.dog_ok(&["cluster", "snapshot", "save", "three", farm_s]);
    let log = std::fs::read_to_string(farm.join("snap.log")).expect("log");
    let snap = log
        .lines()
        .last()
        .and_then(|l| l.split(' ').nth(2))
        .expect("a snap name");
    let path_of = |h: &str| farm.join("objects").join(&h[..2]).join(&h[2..]);
    let snap_text = std::fs::read_to_string(path_of(snap)).expect("the snap object");
    let at = snap_text.find("\"trunk\": \"").expect("a trunk") + 10;
    let trunk = path_of(&snap_text[at..at + 40]);
    std::fs::rename(&trunk, farm.join("aside")).expect("move the trunk away");
    let files = farm_files(&farm).len();
    let o = c
        .dog(&["cluster", "snapshot", "delete", "two", farm_s])
        .expect_failure();
    assert!(o.stderr.contains("nothing was deleted"), "{}", o.stderr);
    assert_eq!(farm_files(&farm).len(), files);
    let list = c.dog_ok(&["cluster", "snapshot", "list", "-r", farm_s]).stdout_str();
    assert_eq!(list.lines().count(), 2, "{list}");
    std::fs::rename(farm.join("aside"), &trunk).expect("put the trunk back");
    c.dog_ok(&["cluster", "snapshot", "delete", "three", farm_s]);
    c.dog_ok(&["cluster", "snapshot", "delete", "two", farm_s]);
    assert!(farm_files(&farm).is_empty(), "nothing left: {:?}", farm_files(&farm));
    assert!(c
        .dog_ok(&["cluster", "snapshot", "list", "-r", farm_s])
        .stdout
        .is_empty());
}
