//! VDIs whose objects are not 4 MiB, side by side with the default: shift 20 (1 MiB), 26
//! (64 MiB) and 31 (2 GiB, the largest). Writes at unaligned offsets across object
//! boundaries through dog and sheepfs, a snapshot and a clone (which keeps its base's object
//! size), and a recovery after a node is killed all read back exactly, and no sheep's memory
//! ever grows to the size of a 2 GiB object.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use tests::{proc_status_kb, pseudo_random, Cluster, Mount};

const MIB: u64 = 1 << 20;

/// The VDIs of the test: name, object size shift, VDI size. The shift-31 VDI spans three
/// objects (the last one half used); objects are sparse, so it costs little disk.
const VDIS: [(&str, u32, u64); 4] = [
    ("s20", 20, 160 * MIB),
    ("s22", 22, 160 * MIB),
    ("s26", 26, 160 * MIB),
    ("s31", 31, 5 << 30),
];

/// One write of the test: where, and its bytes.
struct Piece {
    offset: u64,
    data: Vec<u8>,
}

/// Writes that straddle object boundaries for objects of `1 << shift` bytes, within `size`.
fn pieces(shift: u32, size: u64, seed: u64) -> Vec<Piece> {
    let obj = 1u64 << shift;
    let mut out = vec![
        // The end of object 0 and the start of object 1.
        Piece {
            offset: obj - 1000,
            data: pseudo_random(seed, 5000),
        },
        // A short write inside one object, odd offset.
        Piece {
            offset: obj + 12_345,
            data: pseudo_random(seed + 1, 777),
        },
    ];
    // Several whole objects at once, where they fit.
    if 3 * obj + obj / 2 + 3 < size {
        out.push(Piece {
            offset: 2 * obj + 3,
            data: pseudo_random(seed + 2, (obj + obj / 2) as usize),
        });
    }
    // The VDI's last bytes.
    out.push(Piece {
        offset: size - 4099,
        data: pseudo_random(seed + 3, 4099),
    });
    out
}

/// Reads each piece back and compares (no two pieces of one list overlap).
fn check(c: &Cluster, name: &str, snap: Option<&str>, pieces: &[Piece], what: &str) {
    for p in pieces {
        let got = c.read_vdi(name, p.offset, p.data.len() as u64, snap);
        assert!(
            got == p.data,
            "{what}: {name} at {} ({} bytes) reads back wrong",
            p.offset,
            p.data.len()
        );
    }
}

#[test]
fn vdis_of_several_object_sizes_side_by_side() {
    let mut c = Cluster::start_formatted(3, 2);
    for (name, shift, size) in VDIS {
        c.dog_ok(&["vdi", "create", "-z", &shift.to_string(), name, &size.to_string()]);
    }
    let mut written = Vec::new();
    for (i, (name, shift, size)) in VDIS.iter().enumerate() {
        let ps = pieces(*shift, *size, 100 * i as u64);
        for p in &ps {
            c.write_vdi(name, p.offset, &p.data);
        }
        check(&c, name, None, &ps, "after dog writes");
        written.push(ps);
    }

    // A snapshot keeps the old bytes while the working VDI changes; a clone of it keeps its
    // object size and reads like the snapshot.
    for (i, (name, shift, size)) in VDIS.iter().enumerate() {
        c.dog_ok(&["vdi", "snapshot", "-s", "before", name]);
        let newer = pieces(*shift, *size, 1000 + 100 * i as u64);
        for p in &newer {
            c.write_vdi(name, p.offset, &p.data);
        }
        check(&c, name, Some("before"), &written[i], "the snapshot");
        check(&c, name, None, &newer, "the working VDI after the snapshot");
        let clone = format!("{name}-clone");
        c.dog_ok(&["vdi", "clone", "-s", "before", name, &clone]);
        check(&c, &clone, None, &written[i], "the clone");
        let info = c.dog_ok(&["vdi", "list", "-r", &clone]).stdout_str();
        let shift_field = info.split_whitespace().last().unwrap_or_default().to_string();
        assert_eq!(shift_field, shift.to_string(), "the clone's object size: {info}");
        written[i] = newer;
    }

    // Through sheepfs: unaligned pwrite across a boundary, read back by dog; pread of what
    // dog wrote.
    {
        let m = Mount::start(&c, 1);
        for (i, (name, shift, size)) in VDIS.iter().enumerate() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.join(&format!("vdi/{name}/volume")))
                .expect("opening the volume");
            let p = &written[i][0];
            let mut buf = vec![0u8; p.data.len()];
            f.read_exact_at(&mut buf, p.offset).expect("pread");
            assert!(buf == p.data, "{name}: sheepfs reads what dog wrote");
            // Across a boundary no earlier piece touches.
            let obj = 1u64 << shift;
            let at = if 5 * obj + 20_000 < size - 4099 {
                5 * obj - 333
            } else {
                2 * obj - 333
            };
            let fresh = pseudo_random(5000 + i as u64, 10_000);
            f.write_all_at(&fresh, at).expect("pwrite");
            f.sync_all().expect("fsync");
            assert_eq!(
                c.read_vdi(name, at, fresh.len() as u64, None),
                fresh,
                "{name}: dog reads what sheepfs wrote"
            );
            written[i].push(Piece {
                offset: at,
                data: fresh,
            });
        }
    }

    // A node dies: once the others recovered, everything reads back through them. The
    // 2 GiB objects were copied on write and recovered in pieces: no sheep ever held one.
    c.kill(2);
    c.wait_recovered(Duration::from_secs(300));
    for (i, (name, ..)) in VDIS.iter().enumerate() {
        check(&c, name, None, &written[i], "after node 2 died and recovery ran");
    }
    for i in [0, 1] {
        let pid = c.node(i).pid().expect("a running sheep");
        let peak = proc_status_kb(pid, "VmHWM").expect("VmHWM") * 1024;
        eprintln!("node {i}: peak RSS {} MiB", peak / MIB);
        assert!(peak < 512 * MIB, "node {i}'s peak RSS is {} MiB", peak / MIB);
    }
}

/// A shift outside 20..=31 is refused with the range in the message, a size beyond what the
/// inode can map with the chosen object size is refused with the limit, and nothing is made.
#[test]
fn an_object_size_out_of_range_is_refused() {
    let c = Cluster::start_formatted(1, 1);
    for bad in ["19", "32", "40"] {
        let o = c.dog(&["vdi", "create", "-z", bad, "x", "1G"]).expect_failure();
        assert!(o.stderr.contains("20 (1 MiB) to 31 (2 GiB)"), "{bad}: {}", o.stderr);
    }
    // 2^20 objects of 1 MiB: 1 TiB is the most a shift-20 VDI can hold.
    let o = c.dog(&["vdi", "create", "-z", "20", "x", "2T"]).expect_failure();
    assert!(o.stderr.contains("larger than 1.0 TB"), "{}", o.stderr);
    assert!(c.vdi_list(0).is_empty(), "nothing was created");
}

/// `mkdir` in sheepfs creates a VDI with the cluster's default object size, which
/// `/vdi/<name>/info` and `/vdi/list` show.
#[test]
fn mkdir_takes_the_cluster_default_object_size() {
    let c = Cluster::start(1);
    c.dog_ok(&["cluster", "format", "-c", "1", "-z", "31"]);
    let m = Mount::start(&c, 0);
    std::fs::create_dir(m.join("vdi/big")).expect("mkdir /vdi/big");
    let info = std::fs::read_to_string(m.join("vdi/big/info")).expect("info");
    assert!(info.lines().any(|l| l == "object_size: 2147483648"), "{info}");
    let list = std::fs::read_to_string(m.join("vdi/list")).expect("list");
    let line = list.lines().find(|l| l.starts_with("big ")).expect("big is listed");
    assert_eq!(line.split_whitespace().last(), Some("31"), "{list}");
    // It takes bytes across its first object boundary like any volume.
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("vdi/big/volume"))
        .and_then(|f| f.set_len(3 << 30))
        .expect("truncate to 3 GiB");
    let data = pseudo_random(31, 9000);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("vdi/big/volume"))
        .expect("open the volume");
    f.write_all_at(&data, (2 << 30) - 4500).expect("pwrite across 2 GiB");
    f.sync_all().expect("fsync");
    assert_eq!(c.read_vdi("big", (2 << 30) - 4500, 9000, None), data);
}
