//! VDIs whose objects are not 4 MiB, side by side with the default: shift 20 (1 MiB) and 26
//! (64 MiB). Writes at unaligned offsets across object boundaries through dog and sheepfs,
//! a snapshot and a clone (which keeps its base's object size), and a recovery after a node
//! is killed all read back exactly.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use tests::{pseudo_random, Cluster, Mount};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 160 * MIB;

/// One write of the test: where, and its bytes.
struct Piece {
    offset: u64,
    data: Vec<u8>,
}

/// Writes that straddle object boundaries for objects of `1 << shift` bytes, within SIZE.
fn pieces(shift: u32, seed: u64) -> Vec<Piece> {
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
    if 3 * obj + obj / 2 + 3 < SIZE {
        out.push(Piece {
            offset: 2 * obj + 3,
            data: pseudo_random(seed + 2, (obj + obj / 2) as usize),
        });
    }
    // The VDI's last bytes.
    out.push(Piece {
        offset: SIZE - 4099,
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
    let sizes = [("s20", 20u32), ("s22", 22), ("s26", 26)];
    for (name, shift) in sizes {
        c.dog_ok(&["vdi", "create", "-z", &shift.to_string(), name, &SIZE.to_string()]);
    }
    let mut written = Vec::new();
    for (i, (name, shift)) in sizes.iter().enumerate() {
        let ps = pieces(*shift, 100 * i as u64);
        for p in &ps {
            c.write_vdi(name, p.offset, &p.data);
        }
        check(&c, name, None, &ps, "after dog writes");
        written.push(ps);
    }

    // A snapshot keeps the old bytes while the working VDI changes; a clone of it keeps its
    // object size and reads like the snapshot.
    for (i, (name, shift)) in sizes.iter().enumerate() {
        c.dog_ok(&["vdi", "snapshot", "-s", "before", name]);
        let newer = pieces(*shift, 1000 + 100 * i as u64);
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
        for (i, (name, shift)) in sizes.iter().enumerate() {
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
            let at = if 5 * obj + 20_000 < SIZE - 4099 {
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

    // A node dies: once the others recovered, everything reads back through them.
    c.kill(2);
    c.wait_recovered(Duration::from_secs(120));
    for (i, (name, _)) in sizes.iter().enumerate() {
        check(&c, name, None, &written[i], "after node 2 died and recovery ran");
    }
}

/// A shift outside 20..=26 is refused with the range in the message, and nothing is made.
#[test]
fn an_object_size_out_of_range_is_refused() {
    let c = Cluster::start_formatted(1, 1);
    for bad in ["19", "27", "31"] {
        let o = c.dog(&["vdi", "create", "-z", bad, "x", "1G"]).expect_failure();
        assert!(o.stderr.contains("20 (1 MiB) to 26 (64 MiB)"), "{bad}: {}", o.stderr);
    }
    assert!(c.vdi_list(0).is_empty(), "nothing was created");
}
