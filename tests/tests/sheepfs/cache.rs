//! The gateway's object cache (`sheep -w`) under a real mount: the `/config/object_cache`
//! switch and its bad inputs, write-back that a flush pushes to every replica, eviction
//! under a small cache, a flush during recovery, a gateway killed with dirty data, cold
//! writes that fetch only the pages they cover in part, and copies that outlive neither a
//! write around them nor a lock released elsewhere.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use tests::{assert_same_bytes, pseudo_random, signal, wait_until, Cluster, Mount};

use super::{bash, cat, dd_read, dd_write, dog_read, expect_errno, local_file, put, s, Parked, MIB};

/// Three sheep, each a gateway with an object cache of `size`, formatted with 3 copies.
fn cached_cluster(size: &str) -> Cluster {
    let c = Cluster::builder().nodes(3).args(&["-w", size]).start();
    c.format(3);
    c
}

/// `/node/info` as key → number (the cache figures among them).
fn node_info(m: &Mount) -> BTreeMap<String, f64> {
    cat(&m.join("node/info"))
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Writes `data` at `off` of the volume with plain `pwrite`s and no flush, as a program that
/// has not called fsync yet would.
fn write_unflushed(vol: &Path, off: u64, data: &[u8]) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(vol)
        .unwrap_or_else(|e| panic!("opening {}: {e}", vol.display()));
    f.write_all_at(data, off)
        .unwrap_or_else(|e| panic!("writing {}: {e}", vol.display()));
}

#[test]
fn the_switch_flushes_when_turned_off_and_refuses_garbage() {
    let c = cached_cluster("64M");
    c.dog_ok(&["vdi", "create", "zeta", "16M"]);
    let m = Mount::start(&c, 0);
    let (vol, ctl) = (m.volume("zeta"), m.join("config/object_cache"));
    assert_eq!(cat(&ctl), "1\n", "a mount starts with the cache on");

    let mut model = vec![0u8; (16 * MIB) as usize];
    // The first write creates the objects (on the replicas); the second, into objects that
    // exist, stays in the gateway's cache until a flush.
    let first = pseudo_random(60, (6 * MIB) as usize);
    dd_write(&local_file(&c, "first", &first), &vol, MIB).expect_ok();
    put(&mut model, MIB, &first);
    let second = pseudo_random(61, 3 * 4096 + 100);
    write_unflushed(&vol, 2 * MIB + 4000, &second);
    put(&mut model, 2 * MIB + 4000, &second);
    let info = node_info(&m);
    assert!(info["cache_dirty"] > 0.0, "the write is dirty in the cache: {info:?}");
    assert!(
        info["cache_used"] > 0.0 && info["cache_size"] == 64.0 * MIB as f64,
        "{info:?}"
    );
    assert_same_bytes(
        "zeta through the mount before any flush",
        &dd_read(&c, &vol, 0, 16 * MIB),
        &model,
    );

    for bad in ["2", "on", " ", "1 1", "01", "-1", "yes\\n"] {
        expect_errno(bash(&format!("printf -- '{bad}' > {}", s(&ctl))), "Invalid argument");
        assert_eq!(cat(&ctl), "1\n", "{bad:?} changed nothing");
    }
    bash(&format!("echo 0 > {}", s(&ctl))).expect_ok();
    assert_eq!(cat(&ctl), "0\n");
    assert_eq!(node_info(&m)["cache_dirty"], 0.0, "turning the cache off flushed it");
    assert_same_bytes(
        "zeta through node 1 after the switch to uncached I/O",
        &dog_read(&c, 1, "zeta", 0, 16 * MIB, None),
        &model,
    );

    // Uncached writes, then cached ones again: the copies the cache still held are not
    // served stale.
    let third = pseudo_random(62, 70_000);
    write_unflushed(&vol, 2 * MIB + 1, &third);
    put(&mut model, 2 * MIB + 1, &third);
    bash(&format!("echo 1 > {}", s(&ctl))).expect_ok();
    assert_eq!(cat(&ctl), "1\n");
    assert_same_bytes(
        "zeta through the mount after uncached writes",
        &dd_read(&c, &vol, 0, 16 * MIB),
        &model,
    );
    let fourth = pseudo_random(63, 5000);
    write_unflushed(&vol, 2 * MIB + 3, &fourth);
    put(&mut model, 2 * MIB + 3, &fourth);
    // Into pages the copy now holds: a hit.
    let fifth = pseudo_random(64, 100);
    write_unflushed(&vol, 2 * MIB + 4090, &fifth);
    put(&mut model, 2 * MIB + 4090, &fifth);
    dd_write(&local_file(&c, "none", b""), &vol, 0).expect_ok();
    assert_same_bytes(
        "zeta through node 2 after an fsync",
        &dog_read(&c, 2, "zeta", 0, 16 * MIB, None),
        &model,
    );
    let info = node_info(&m);
    assert!(info["cache_hits"] > 0.0 && info["cache_hit_ratio"] > 0.0, "{info:?}");
    // dog shows the same figures: size used dirty hits misses ratio.
    let raw = c.dog_at(0, &["node", "info", "-r"], None).expect_ok().stdout_str();
    let line = raw
        .lines()
        .find(|l| l.starts_with("Cache "))
        .unwrap_or_else(|| panic!("{raw}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 7, "{line}");
    assert_eq!(f[1], (64 * MIB).to_string(), "{line}");
    assert!(f[4].parse::<u64>().expect("hits") > 0 && f[6].ends_with('%'), "{line}");
    m.unmount();
}

/// A 16 MiB cache under 64 MiB of random writes keeps every byte: clean copies make room,
/// dirty data past half the cache is pushed in the background, and a full cache slows
/// writers down rather than failing them.
#[test]
fn eviction_under_a_small_cache_keeps_every_byte() {
    let c = cached_cluster("16M");
    c.dog_ok(&["vdi", "create", "eta", "64M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("eta");
    let mut model = pseudo_random(70, (64 * MIB) as usize);
    dd_write(&local_file(&c, "base", &model), &vol, 0).expect_ok();
    let f = fs::OpenOptions::new().write(true).open(&vol).expect("open the volume");
    let mut seed = 71u64;
    for i in 0..600u64 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let off = (seed >> 20) % (64 * MIB - 70_000);
        let len = 1 + (seed >> 8) % 65_536;
        let data = pseudo_random(1000 + i, len as usize);
        f.write_all_at(&data, off).expect("a write through the cache");
        put(&mut model, off, &data);
    }
    drop(f);
    let info = node_info(&m);
    assert!(
        info["cache_used"] <= 16.0 * MIB as f64,
        "the cache keeps to its size: {info:?}"
    );
    assert!(info["cache_misses"] > 16.0, "objects came and went: {info:?}");
    assert_same_bytes("eta through the mount", &dd_read(&c, &vol, 0, 64 * MIB), &model);
    dd_write(&local_file(&c, "none", b""), &vol, 0).expect_ok();
    assert_same_bytes(
        "eta through node 1 after an fsync",
        &dog_read(&c, 1, "eta", 0, 64 * MIB, None),
        &model,
    );
    m.unmount();
}

/// An fsync while the cluster recovers from a lost node still pushes the cache's dirty
/// data to every replica of the new epoch.
#[test]
fn a_flush_during_recovery_pushes() {
    let mut c = Cluster::builder().nodes(4).args(&["-w", "64M"]).start();
    c.format(3);
    c.dog_ok(&["vdi", "create", "theta", "32M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("theta");
    let mut model = pseudo_random(80, (32 * MIB) as usize);
    dd_write(&local_file(&c, "base", &model), &vol, 0).expect_ok();
    let dirty = pseudo_random(81, (3 * MIB) as usize);
    write_unflushed(&vol, 5 * MIB + 7, &dirty);
    put(&mut model, 5 * MIB + 7, &dirty);
    c.kill(3);
    c.wait_for_membership();
    dd_write(&local_file(&c, "none", b""), &vol, 0).expect_ok();
    assert_eq!(node_info(&m)["cache_dirty"], 0.0, "the flush pushed everything");
    for node in [1, 2] {
        assert_same_bytes(
            &format!("theta through node {node} after a flush during recovery"),
            &dog_read(&c, node, "theta", 0, 32 * MIB, None),
            &model,
        );
    }
    m.unmount();
}

/// `kill -9` of the caching gateway after a flush and more (unflushed) writes: restarted,
/// it pushes what its cache held before it serves the VDI again, and every flushed byte
/// (and, since nobody else took the VDI meanwhile, every acknowledged one) reads back
/// through another gateway.
#[test]
fn a_killed_gateway_loses_nothing_flushed() {
    let mut c = cached_cluster("64M");
    c.dog_ok(&["vdi", "create", "iota", "32M"]);
    let m = Mount::start_with(&c, 0, &["--retry-secs", "2"]);
    let vol = m.volume("iota");
    let mut model = pseudo_random(90, (32 * MIB) as usize);
    dd_write(&local_file(&c, "base", &model), &vol, 0).expect_ok();
    let flushed = pseudo_random(91, (2 * MIB) as usize);
    write_unflushed(&vol, 9 * MIB + 5, &flushed);
    dd_write(&local_file(&c, "none", b""), &vol, 0).expect_ok();
    put(&mut model, 9 * MIB + 5, &flushed);
    let unflushed = pseudo_random(92, 300_000);
    write_unflushed(&vol, 20 * MIB + 11, &unflushed);
    put(&mut model, 20 * MIB + 11, &unflushed);
    assert!(node_info(&m)["cache_dirty"] > 0.0);

    c.kill(0);
    c.wait_for_membership();
    c.start_all();
    c.wait_running();
    wait_until(
        "the restarted gateway to push its cache",
        Duration::from_secs(30),
        || {
            let got = dog_read(&c, 1, "iota", 0, 32 * MIB, None);
            if got == model {
                Ok(())
            } else {
                Err("iota through node 1 differs from what was written".to_string())
            }
        },
    );
    assert!(
        c.node(0).log_tail(400).contains("pushed a copy left by a crash"),
        "{}",
        c.node(0).log_tail(40)
    );
    drop(m);
}

/// A write into pages the cache does not hold fetches nothing from the replicas when it
/// covers whole 4 KiB pages, and only the pages it covers in part otherwise; the replicas'
/// bytes around it survive the push.
#[test]
fn cold_writes_fetch_only_the_pages_they_cover_in_part() {
    let c = cached_cluster("64M");
    c.dog_ok(&["vdi", "create", "kappa", "16M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("kappa");
    let mut model = pseudo_random(100, (16 * MIB) as usize);
    dd_write(&local_file(&c, "base", &model), &vol, 0).expect_ok();
    let before = node_info(&m);
    for (i, off) in [0, 5 * MIB + 8192, 9 * MIB + 16384, 15 * MIB].into_iter().enumerate() {
        let data = pseudo_random(101 + i as u64, 8192);
        write_unflushed(&vol, off, &data);
        put(&mut model, off, &data);
    }
    let aligned = node_info(&m);
    assert_eq!(
        aligned["cache_misses"], before["cache_misses"],
        "aligned writes into objects the cache had not seen fetched something: {aligned:?}"
    );
    assert!(aligned["cache_dirty"] > 0.0, "{aligned:?}");
    // 100 bytes inside a page: that page is fetched, one miss.
    let odd = pseudo_random(110, 100);
    write_unflushed(&vol, 3 * MIB + 1000, &odd);
    put(&mut model, 3 * MIB + 1000, &odd);
    let after = node_info(&m);
    assert_eq!(after["cache_misses"], aligned["cache_misses"] + 1.0, "{after:?}");
    dd_write(&local_file(&c, "none", b""), &vol, 0).expect_ok();
    assert_eq!(node_info(&m)["cache_dirty"], 0.0, "the fsync pushed everything");
    assert_same_bytes(
        "kappa through node 1 after an fsync",
        &dog_read(&c, 1, "kappa", 0, 16 * MIB, None),
        &model,
    );
    m.unmount();
}

/// Writes the cache holds unflushed when another gateway snapshots the VDI are not lost:
/// both the snapshot and the working VDI that goes on from it have them, also when the
/// mount's next write into that object copies it into the working VDI.
#[test]
fn unflushed_cached_writes_survive_a_snapshot_made_through_another_gateway() {
    let c = cached_cluster("64M");
    c.dog_ok(&["vdi", "create", "nu", "16M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("nu");
    let mut model = pseudo_random(400, (16 * MIB) as usize);
    dd_write(&local_file(&c, "base", &model), &vol, 0).expect_ok();
    let data = pseudo_random(401, 8192);
    write_unflushed(&vol, 5 * MIB + 4096, &data);
    put(&mut model, 5 * MIB + 4096, &data);
    assert!(node_info(&m)["cache_dirty"] > 0.0, "the write waits in the cache");
    c.dog_at(1, &["vdi", "snapshot", "-s", "before", "nu"], None)
        .expect_ok();
    let mut working = model.clone();
    let more = pseudo_random(402, 4096);
    dd_write(&local_file(&c, "more", &more), &vol, 5 * MIB + 65536).expect_ok();
    put(&mut working, 5 * MIB + 65536, &more);
    assert_same_bytes(
        "nu through the mount after the snapshot",
        &dd_read(&c, &vol, 0, 16 * MIB),
        &working,
    );
    assert_same_bytes(
        "the snapshot through node 1",
        &dog_read(&c, 1, "nu", 0, 16 * MIB, Some("before")),
        &model,
    );
    assert_same_bytes(
        "the working VDI through node 2",
        &dog_read(&c, 2, "nu", 0, 16 * MIB, None),
        &working,
    );
    m.unmount();
}

/// `len` bytes of 4 KiB-aligned memory (for O_DIRECT), as a range of `buf`.
fn aligned(buf: &mut Vec<u8>, len: usize) -> std::ops::Range<usize> {
    buf.resize(len + 4096, 0);
    let at = buf.as_ptr().align_offset(4096);
    at..at + len
}

fn open_direct(vol: &Path, write: bool) -> fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(vol)
        .unwrap_or_else(|e| panic!("opening {} for direct I/O: {e}", vol.display()))
}

/// 1 MiB direct writes go around the cache (the mount sends them in 256 KiB pieces, a
/// stream) while 4 KiB direct reads of the same MiB go through it, each miss filling a
/// 64 KiB window: once a write is done, no cached copy may hold bytes from before it.
#[test]
fn reads_that_fill_the_cache_keep_no_bytes_from_before_a_write_around_it() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let c = cached_cluster("64M");
    c.dog_ok(&["vdi", "create", "lambda", "16M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("lambda");
    const DONE: u64 = u64::MAX;
    let writing = AtomicU64::new(0);
    /// Ends the reader however the writer ends (a failed check included).
    struct Stop<'a>(&'a AtomicU64);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(DONE, Ordering::Relaxed);
        }
    }
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let f = open_direct(&vol, false);
            let (mut buf, mut seed) = (Vec::new(), 3u64);
            let r = aligned(&mut buf, 4096);
            loop {
                let at = writing.load(Ordering::Relaxed);
                if at == DONE {
                    break;
                }
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let off = at + (seed >> 20) % (MIB / 4096) * 4096;
                f.read_exact_at(&mut buf[r.clone()], off).expect("a cached read");
            }
        });
        let _stop = Stop(&writing);
        let (f, back_f) = (open_direct(&vol, true), open_direct(&vol, false));
        let (mut buf, mut page) = (Vec::new(), Vec::new());
        let r = aligned(&mut buf, MIB as usize);
        let p = aligned(&mut page, 4096);
        for i in 0..48u64 {
            let off = i * 5 % 16 * MIB;
            writing.store(off, Ordering::Relaxed);
            let data = pseudo_random(200 + i, MIB as usize);
            buf[r.clone()].copy_from_slice(&data);
            f.write_all_at(&buf[r.clone()], off).expect("a write around the cache");
            // Page by page through the cache: 4 KiB direct reads are cached ones.
            let mut back = Vec::with_capacity(data.len());
            for at in (off..off + MIB).step_by(4096) {
                back_f.read_exact_at(&mut page[p.clone()], at).expect("a read back");
                back.extend_from_slice(&page[p.clone()]);
            }
            assert_same_bytes(&format!("MiB {} after write {i}", off / MIB), &back, &data);
        }
    });
    m.unmount();
}

/// An operator's RELEASE_VDI through another gateway ends the mount's lock; another client
/// writes the VDI there; the mount takes its lock again (it asserts it every second). Its
/// gateway's copies from before must not answer its reads: they miss that client's bytes.
#[test]
fn copies_from_before_a_lock_released_elsewhere_are_not_served_under_the_next_one() {
    use protocol::{op, requests::name_payload, RequestHeader, ResultCode, VdiArgs};
    let c = cached_cluster("64M");
    c.dog_ok(&["vdi", "create", "xi", "16M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("xi");
    let mut model = pseudo_random(500, (16 * MIB) as usize);
    dd_write(&local_file(&c, "base", &model), &vol, 0).expect_ok();
    // A page written and read back through the cache: a clean copy of it stays there.
    let at = 7 * MIB + 8192;
    let (mut buf, mut page) = (Vec::new(), Vec::new());
    let (w, p) = (aligned(&mut buf, 4096), aligned(&mut page, 4096));
    let before = pseudo_random(501, 4096);
    buf[w.clone()].copy_from_slice(&before);
    let f = open_direct(&vol, true);
    f.write_all_at(&buf[w.clone()], at).expect("a cached write");
    f.sync_all().expect("a flush");
    let back = open_direct(&vol, false);
    back.read_exact_at(&mut page[p.clone()], at).expect("a cached read");
    assert_same_bytes("the page through the cache", &page[p.clone()], &before);

    let vid = c.vid_of("xi");
    let after = pseudo_random(502, 4096);
    put(&mut model, at, &after);
    let release = || {
        let mut req = RequestHeader::new(op::RELEASE_VDI);
        req.set_vdi(&VdiArgs {
            base_vdi_id: vid,
            ..VdiArgs::default()
        });
        c.call(1, req, &[]).expect("RELEASE_VDI through node 1");
    };
    // The mount's keeper may take the lock back between the release and dog's lock: again.
    let off = at.to_string();
    let written = (0..30).any(|_| {
        release();
        c.dog_at(1, &["vdi", "write", "xi", &off], Some(&after)).success()
    });
    assert!(written, "dog never got the lock of xi between the mount's assertions");
    // The mount holds it again once a lock attempt elsewhere is refused (a probe that gets
    // it lets go as its connection closes).
    wait_until("the mount to take its lock again", Duration::from_secs(20), || {
        let req = RequestHeader::new(op::LOCK_VDI);
        match c.send(2, req, &name_payload("xi", Some(""))) {
            Ok(r) if r.header.result_code() == ResultCode::VDI_LOCKED => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    back.read_exact_at(&mut page[p.clone()], at).expect("a cached read");
    assert_same_bytes("the page dog wrote, through the mount", &page[p.clone()], &after);
    assert_same_bytes("xi through the mount", &dd_read(&c, &vol, 0, 16 * MIB), &model);
    drop((f, back));
    m.unmount();
}

/// A flush that waits on a hung replica holds no FUSE thread: on a one-thread mount, a read
/// runs while an fsync pushing dirty data to the stopped node is parked, and the fsync
/// succeeds once the node goes on.
#[test]
fn a_flush_waiting_on_a_hung_replica_holds_up_no_read() {
    let c = cached_cluster("64M");
    c.dog_ok(&["vdi", "create", "omicron", "16M"]);
    let m = Mount::start_with(&c, 0, &["--threads", "1"]);
    let vol = m.volume("omicron");
    let clean = pseudo_random(95, (4 * MIB) as usize);
    dd_write(&local_file(&c, "clean", &clean), &vol, 4 * MIB).expect_ok();
    let dirty = pseudo_random(96, 300_000);
    write_unflushed(&vol, 11, &dirty);
    assert!(node_info(&m)["cache_dirty"] > 0.0, "the write stayed in the cache");

    let hung = c.node(2).pid().expect("node 2 runs");
    signal(hung, libc::SIGSTOP);
    // The push to node 2 waits up to the 30 s peer timeout: the read below has that long.
    let flush = Parked::start(
        std::process::Command::new("dd").args([
            "if=/dev/null",
            &format!("of={}", s(&vol)),
            "conv=notrunc,fsync",
            "status=none",
        ]),
        libc::SYS_fsync,
    );

    let f = open_direct(&vol, false);
    let mut buf = Vec::new();
    let r = aligned(&mut buf, MIB as usize);
    f.read_exact_at(&mut buf[r.clone()], 4 * MIB)
        .expect("a direct read beside the flush");
    assert_same_bytes(
        "the clean object, read while the flush waits",
        &buf[r],
        &clean[..MIB as usize],
    );
    assert!(
        flush.is_in(libc::SYS_fsync),
        "the flush should still wait for node 2, or this proved nothing"
    );

    signal(hung, libc::SIGCONT);
    flush.finish("the flush after node 2 went on");
    assert_same_bytes(
        "the flushed write, through node 1",
        &dog_read(&c, 1, "omicron", 11, dirty.len() as u64, None),
        &dirty,
    );
    drop(f);
    m.unmount();
}
