//! sheepfs mounted for real, driven with the tools people use on it: dd, cp, cat, truncate,
//! mkdir and rmdir, echo into control files, and (in `sheepfs/tools.rs`) losetup + ext4,
//! qemu-img, qemu-io and fio. Every test starts its own 3-node, 3-copy cluster, mounts
//! sheepfs inside the cluster's temporary directory, and checks bytes through the mount and
//! independently through `dog` on another gateway.

#[path = "sheepfs/cache.rs"]
mod cache;
#[path = "sheepfs/tools.rs"]
mod tools;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{
    assert_same_bytes, pseudo_random, run_command, run_command_with_stdin, sheepfs_bin, signal, tool, tool_ok,
    wait_until, Cluster, Mount, ToolOutput,
};

const MIB: u64 = 1 << 20;
/// Objects are 4 MiB (block_size_shift 22, the cluster default).
const OBJ: u64 = 4 * MIB;

// ---------------------------------------------------------------------------------------------
// Helpers shared with `tools.rs`

/// A path as a string for a command line (the harness's temporary paths are plain ASCII).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// A scratch directory for source files and read-back copies, beside the nodes' directories.
pub fn scratch(c: &Cluster) -> PathBuf {
    let d = c.root().join("scratch");
    fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

/// Writes `data` to a new local file (a source for dd or cp) and returns its path.
pub fn local_file(c: &Cluster, name: &str, data: &[u8]) -> PathBuf {
    let p = scratch(c).join(name);
    fs::write(&p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    p
}

/// `bash -c SCRIPT`, for redirections such as `echo 1 > snapshot`.
pub fn bash(script: &str) -> ToolOutput {
    tool("bash", &["-c", script])
}

/// `dd if=SRC of=DST bs=1M oflag=seek_bytes seek=OFF conv=fsync,notrunc`.
pub fn dd_write(src: &Path, dst: &Path, off: u64) -> ToolOutput {
    tool(
        "dd",
        &[
            &format!("if={}", s(src)),
            &format!("of={}", s(dst)),
            "bs=1M",
            "oflag=seek_bytes",
            &format!("seek={off}"),
            "conv=fsync,notrunc",
            "status=none",
        ],
    )
}

/// Reads `len` bytes at `off` of `src` with dd into a local file, and returns them.
#[track_caller]
pub fn dd_read(c: &Cluster, src: &Path, off: u64, len: u64) -> Vec<u8> {
    let out = scratch(c).join("readback");
    tool(
        "dd",
        &[
            &format!("if={}", s(src)),
            &format!("of={}", s(&out)),
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            &format!("skip={off}"),
            &format!("count={len}"),
            "status=none",
        ],
    )
    .expect_ok();
    let b = fs::read(&out).unwrap_or_else(|e| panic!("reading {}: {e}", out.display()));
    let _ = fs::remove_file(&out);
    b
}

/// `ls -1A DIR`, sorted.
#[track_caller]
pub fn ls(dir: &Path) -> Vec<String> {
    let out = tool_ok("ls", &["-1A", s(dir)]);
    let mut v: Vec<String> = out.stdout_str().lines().map(str::to_string).collect();
    v.sort();
    v
}

/// `stat -c %s PATH`.
#[track_caller]
pub fn stat_size(path: &Path) -> u64 {
    let out = tool_ok("stat", &["-c", "%s", s(path)]);
    let t = out.stdout_str();
    t.trim()
        .parse()
        .unwrap_or_else(|e| panic!("`stat -c %s {}` printed {t:?}: {e}", path.display()))
}

/// `cat PATH` as text.
#[track_caller]
pub fn cat(path: &Path) -> String {
    tool_ok("cat", &[s(path)]).stdout_str()
}

/// Panics unless the command failed on its own (non-zero exit) and its stderr carries the
/// errno's message (e.g. "Invalid argument" for EINVAL).
#[track_caller]
pub fn expect_errno(out: ToolOutput, message: &str) {
    let out = out.expect_failure();
    assert!(
        out.stderr.contains(message),
        "expected the failure to be {message:?}, got: {}",
        out.describe()
    );
}

/// `dog vdi read NAME OFF LEN` through node `i`.
#[track_caller]
pub fn dog_read(c: &Cluster, i: usize, name: &str, off: u64, len: u64, snap: Option<&str>) -> Vec<u8> {
    let (o, l) = (off.to_string(), len.to_string());
    let mut args = vec!["vdi", "read", name, o.as_str(), l.as_str()];
    if let Some(sn) = snap {
        args.extend(["-s", sn]);
    }
    c.dog_at(i, &args, None).expect_ok().stdout
}

/// Names in `dog vdi list -r` through node `i` as `(flag, name, snap_id)`.
pub fn dog_names(c: &Cluster, i: usize) -> BTreeSet<(String, String, u32)> {
    c.vdi_list(i).into_iter().map(|l| (l.flag, l.name, l.snap_id)).collect()
}

/// Copies `data` into `model` at `off`.
pub fn put(model: &mut [u8], off: u64, data: &[u8]) {
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

// ---------------------------------------------------------------------------------------------
// 1. dd, large and unaligned

#[test]
fn dd_256_mib_at_an_unaligned_offset_reads_back_through_the_mount_and_another_gateway() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "300M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("alpha");
    assert_eq!(
        stat_size(&vol),
        300 * MIB,
        "st_size of {} is the VDI size",
        vol.display()
    );

    let len = 256 * MIB;
    // Not object-, page- or even sector-aligned: 7 MiB + 12345 bytes.
    let off = 7 * MIB + 12_345;
    let data = pseudo_random(1, len as usize);
    let src = local_file(&c, "src.bin", &data);
    dd_write(&src, &vol, off).expect_ok();

    let back = scratch(&c).join("back.bin");
    tool_ok(
        "dd",
        &[
            &format!("if={}", s(&vol)),
            &format!("of={}", s(&back)),
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            &format!("skip={off}"),
            &format!("count={len}"),
            "status=none",
        ],
    );
    let cmp = tool("cmp", &[s(&src), s(&back)]);
    assert!(
        cmp.success(),
        "dd read-back differs from what dd wrote: {}",
        cmp.describe()
    );
    let sums = tool_ok("sha256sum", &[s(&src), s(&back)]).stdout_str();
    let hashes: Vec<&str> = sums.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(
        hashes.len() == 2 && hashes[0] == hashes[1],
        "sha256 of source and read-back differ: {sums}"
    );

    // Around the written range the volume was never written: zeros on both sides.
    assert_same_bytes(
        "the 1 MiB before the written range",
        &dd_read(&c, &vol, off - MIB, MIB),
        &vec![0u8; MIB as usize],
    );
    assert_same_bytes(
        "the 1 MiB after the written range",
        &dd_read(&c, &vol, off + len, MIB),
        &vec![0u8; MIB as usize],
    );

    // The same bytes through node 1 with dog, in 32 MiB pieces.
    let piece = 32 * MIB;
    for k in 0..len / piece {
        let got = dog_read(&c, 1, "alpha", off + k * piece, piece, None);
        assert_same_bytes(
            &format!(
                "dog vdi read through node 1, bytes {}..{} of the dd",
                k * piece,
                (k + 1) * piece
            ),
            &got,
            &data[(k * piece) as usize..((k + 1) * piece) as usize],
        );
    }
    m.unmount();
}

/// The tuning options do what they say: the mount's kernel read-ahead is the one asked for,
/// and a small chunk (many requests in flight per FUSE request, the first write to each object
/// racing its other pieces) still writes and reads back every byte.
#[test]
fn read_ahead_and_chunk_options_take_effect_and_keep_the_bytes() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "tuned", "64M"]);
    let m = Mount::start_with(&c, 0, &["--read-ahead-kib", "2048", "--chunk-kib", "12"]);
    let dev = tool_ok("mountpoint", &["-d", s(m.path())]).stdout_str();
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", dev.trim());
    let ra = std::fs::read_to_string(&knob).unwrap_or_else(|e| panic!("{knob}: {e}"));
    assert_eq!(ra.trim(), "2048", "read-ahead of the mount ({knob})");

    let vol = m.volume("tuned");
    let len = 20 * MIB;
    let off = 3 * MIB + 777;
    let data = pseudo_random(7, len as usize);
    let src = local_file(&c, "tuned.bin", &data);
    dd_write(&src, &vol, off).expect_ok();
    assert_same_bytes("read back with 12 KiB chunks", &dd_read(&c, &vol, off, len), &data);
    let piece = 4 * MIB;
    assert_same_bytes(
        "the same bytes through node 1 with dog",
        &dog_read(&c, 1, "tuned", off, piece, None),
        &data[..piece as usize],
    );
    let bad = tool(s(&sheepfs_bin()), &["--chunk-kib", "1", s(m.path())]);
    assert!(!bad.success(), "--chunk-kib 1 is refused: {}", bad.describe());
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 2. cp

#[test]
fn cp_onto_a_volume_then_sync_keeps_the_bytes_and_the_size() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "beta", "32M"]);
    // A marker past the end of what cp writes: cp opens with O_TRUNC, which a volume ignores.
    let marker = pseudo_random(20, 4096);
    c.write_vdi("beta", 30 * MIB, &marker);
    let m = Mount::start(&c, 0);
    let vol = m.volume("beta");

    // 20 MiB and a bit, so the last write is a partial page.
    let data = pseudo_random(2, (20 * MIB + 4097) as usize);
    let src = local_file(&c, "image.raw", &data);
    tool_ok("cp", &[s(&src), s(&vol)]);
    tool_ok("sync", &[]);

    let cmp = tool("cmp", &["-n", &data.len().to_string(), s(&src), s(&vol)]);
    assert!(cmp.success(), "volume differs from the copied file: {}", cmp.describe());
    assert_eq!(
        stat_size(&vol),
        32 * MIB,
        "cp's O_TRUNC must not change the volume's size"
    );
    assert_same_bytes(
        "the copy read through node 2 with dog",
        &dog_read(&c, 2, "beta", 0, data.len() as u64, None),
        &data,
    );
    assert_same_bytes(
        "the marker at 30 MiB (cp must not have truncated the volume)",
        &dog_read(&c, 2, "beta", 30 * MIB, marker.len() as u64, None),
        &marker,
    );
    m.unmount();
}

#[test]
fn a_reader_sees_what_a_write_only_open_wrote_over_pages_it_had_read() {
    // dd and cp open volumes write-only, and such writes skip the kernel's page cache: the
    // pages a reader cached of that range must not keep the old bytes.
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "gamma", "16M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("gamma");
    let reader = fs::File::open(&vol).expect("opening the volume for reading");
    // Across an object boundary, with unaligned ends.
    let (at, len) = (OBJ - MIB + 5, 2 * MIB + 100);
    let mut seen = vec![1u8; len as usize];
    reader
        .read_exact_at(&mut seen, at)
        .expect("reading the range before the write");
    assert_same_bytes("the range before any write", &seen, &vec![0u8; len as usize]);

    let data = pseudo_random(9, len as usize);
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(&vol)
        .expect("opening the volume write-only");
    writer
        .write_all_at(&data, at)
        .expect("writing through the write-only open");
    writer.sync_all().expect("fsync of the write-only open");
    drop(writer);

    reader.read_exact_at(&mut seen, at).expect("reading the range again");
    assert_same_bytes("the range read again through the earlier open", &seen, &data);
    assert_same_bytes(
        "the range read through node 2 with dog",
        &dog_read(&c, 2, "gamma", at, len, None),
        &data,
    );
    drop(reader);
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 3. Monitoring files

/// `key: value` lines; the first occurrence of a key wins.
fn key_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[track_caller]
fn value<'a>(kv: &'a [(String, String)], key: &str, text: &str) -> &'a str {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no `{key}:` line in:\n{text}"))
}

fn is_utc_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &ch)| match i {
            4 | 7 => ch == b'-',
            10 => ch == b'T',
            13 | 16 => ch == b':',
            19 => ch == b'Z',
            _ => ch.is_ascii_digit(),
        })
}

/// `/vdi/list` parsed: the header's column names, and one map per line.
#[track_caller]
fn parse_vdi_list_file(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_else(|| panic!("/vdi/list is empty"));
    let cols: Vec<&str> = header
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("/vdi/list header {header:?} does not start with '#'"))
        .split_whitespace()
        .collect();
    assert_eq!(
        cols,
        [
            "name",
            "snap_id",
            "size",
            "used",
            "shared",
            "created",
            "vdi_id",
            "copies",
            "tag",
            "block_size_shift"
        ],
        "/vdi/list header columns"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), cols.len(), "/vdi/list line {l:?} has {} fields", f.len());
            cols.iter()
                .map(|c| c.to_string())
                .zip(f.iter().map(|v| v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn monitoring_files_describe_the_cluster_and_are_fresh() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "64M"]);
    // Two objects' worth of data, so `used` is not trivially zero.
    c.write_vdi("alpha", OBJ - 10, &pseudo_random(3, 20));
    let m = Mount::start(&c, 0);

    // /cluster/info
    let text = cat(&m.join("cluster/info"));
    let kv = key_values(&text);
    assert_eq!(value(&kv, "status", &text), "running", "{text}");
    assert_eq!(value(&kv, "epoch", &text), "1", "{text}");
    assert_eq!(value(&kv, "copies", &text), "3", "{text}");
    assert_eq!(value(&kv, "nodes", &text), "3", "{text}");
    assert_eq!(value(&kv, "block_size_shift", &text), "22", "{text}");
    assert!(is_utc_time(value(&kv, "created", &text)), "created: {text}");
    let epoch_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("epoch: ") && l.split_whitespace().count() == 4)
        .collect();
    assert_eq!(epoch_lines.len(), 1, "one epoch-history line in /cluster/info:\n{text}");
    let f: Vec<&str> = epoch_lines[0].split_whitespace().collect();
    let members: BTreeSet<String> = f[3].split(',').map(str::to_string).collect();
    let all: BTreeSet<String> = c.nodes().iter().map(|n| n.addr().to_string()).collect();
    assert_eq!((f[1], &members), ("1", &all), "epoch line {:?}", epoch_lines[0]);

    // /node/list
    let text = cat(&m.join("node/list"));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("# addr zone vnodes size free used"),
        "/node/list header:\n{text}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "3 node lines in /node/list:\n{text}");
    let want = c.expected_nodes();
    let listed: BTreeSet<String> = rows.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(listed, all, "/node/list addresses:\n{text}");
    for r in &rows {
        assert_eq!(r.len(), 6, "/node/list line {r:?}");
        let n = want
            .iter()
            .find(|n| n.addr.to_string() == r[0])
            .expect("listed address is a node");
        assert_eq!(r[1], n.zone.to_string(), "zone of {}: {text}", r[0]);
        assert_eq!(r[2], n.nr_vnodes.to_string(), "vnodes of {}: {text}", r[0]);
        let (size, free): (u64, u64) = (
            r[3].parse()
                .unwrap_or_else(|_| panic!("size of {} is {:?}:\n{text}", r[0], r[3])),
            r[4].parse()
                .unwrap_or_else(|_| panic!("free of {} is {:?}:\n{text}", r[0], r[4])),
        );
        assert!(size > 0 && free <= size, "size {size}, free {free} of {}", r[0]);
        assert_eq!(r[5], (size - free).to_string(), "used of {}: {text}", r[0]);
    }

    // /node/info: the gateway, node 0.
    let text = cat(&m.join("node/info"));
    let kv = key_values(&text);
    assert_eq!(value(&kv, "addr", &text), c.node(0).addr().to_string(), "{text}");
    let gw = c.node(0).protocol_node();
    assert_eq!(value(&kv, "zone", &text), gw.zone.to_string(), "{text}");
    assert_eq!(value(&kv, "vnodes", &text), gw.nr_vnodes.to_string(), "{text}");
    let num = |k: &str| -> u64 {
        value(&kv, k, &text)
            .parse()
            .unwrap_or_else(|e| panic!("{k} in /node/info: {e}\n{text}"))
    };
    assert_eq!(num("used"), num("size") - num("free"), "used = size - free:\n{text}");

    // /vdi/list
    let text = cat(&m.join("vdi/list"));
    let rows = parse_vdi_list_file(&text);
    assert_eq!(rows.len(), 1, "one VDI in /vdi/list:\n{text}");
    let r = &rows[0];
    let vid = c.vdi_id(0, "alpha", 0).expect("vid of alpha");
    let dog = c.vdi_list(1);
    assert_eq!(dog.len(), 1, "dog vdi list -r: {dog:#?}");
    assert_eq!(r["name"], "alpha", "{text}");
    assert_eq!(r["snap_id"], "0", "{text}");
    assert_eq!(r["size"], (64 * MIB).to_string(), "{text}");
    assert_eq!(r["used"], (2 * OBJ).to_string(), "two objects written:\n{text}");
    assert_eq!(r["used"], dog[0].used.to_string(), "used as dog sees it:\n{text}");
    assert_eq!(r["shared"], "0", "{text}");
    assert!(is_utc_time(&r["created"]), "{text}");
    assert_eq!(r["vdi_id"], format!("{vid:x}"), "{text}");
    assert_eq!(r["copies"], "3", "{text}");
    assert_eq!(r["tag"], "-", "{text}");
    assert_eq!(r["block_size_shift"], "22", "{text}");

    // /vdi/alpha/info
    let text = cat(&m.join("vdi/alpha/info"));
    let kv = key_values(&text);
    assert_eq!(value(&kv, "name", &text), "alpha", "{text}");
    assert_eq!(value(&kv, "vid", &text), format!("{vid:x}"), "{text}");
    assert_eq!(value(&kv, "size", &text), (64 * MIB).to_string(), "{text}");
    assert_eq!(value(&kv, "copies", &text), "3", "{text}");
    assert_eq!(value(&kv, "object_size", &text), OBJ.to_string(), "{text}");
    assert_eq!(value(&kv, "snapshots", &text), "-", "{text}");

    // Freshness: a VDI created through another node shows at once.
    c.dog_at(1, &["vdi", "create", "gamma", "16M"], None).expect_ok();
    let text = cat(&m.join("vdi/list"));
    let rows = parse_vdi_list_file(&text);
    let gamma: Vec<_> = rows.iter().filter(|r| r["name"] == "gamma").collect();
    assert_eq!(gamma.len(), 1, "gamma in /vdi/list right after dog created it:\n{text}");
    assert_eq!(gamma[0]["size"], (16 * MIB).to_string(), "{text}");
    assert!(
        ls(&m.join("vdi")).contains(&"gamma".to_string()),
        "ls /vdi right after the create: {:?}",
        ls(&m.join("vdi"))
    );
    assert_eq!(
        cat(&m.join("vdi/gamma/info")).lines().find(|l| l.starts_with("size: ")),
        Some(format!("size: {}", 16 * MIB).as_str()),
        "/vdi/gamma/info"
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 4. Snapshot control file

#[test]
fn echo_into_snapshot_takes_snapshots_and_bad_input_changes_nothing() {
    let c = Cluster::start_formatted(3, 3);
    let size = 32 * MIB;
    c.dog_ok(&["vdi", "create", "alpha", "32M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("alpha");
    let ctl = m.vdi_dir("alpha").join("snapshot");
    let snaps_dir = m.vdi_dir("alpha").join("snapshots");

    let mut model_a = vec![0u8; size as usize];
    let d = pseudo_random(4, (6 * MIB) as usize);
    dd_write(&local_file(&c, "a.bin", &d), &vol, MIB + 7).expect_ok();
    put(&mut model_a, MIB + 7, &d);
    assert_eq!(ls(&snaps_dir), Vec::<String>::new(), "no snapshots yet");

    bash(&format!("echo 1 > {}", s(&ctl))).expect_ok();
    assert_eq!(ls(&snaps_dir), ["1"], "ls snapshots after `echo 1 > snapshot`");

    // Further writes, across the boundary of objects 0 and 1.
    let mut model_b = model_a.clone();
    let d = pseudo_random(5, (3 * MIB) as usize);
    dd_write(&local_file(&c, "b.bin", &d), &vol, OBJ - 5).expect_ok();
    put(&mut model_b, OBJ - 5, &d);

    let snap1 = snaps_dir.join("1/volume");
    assert_eq!(stat_size(&snap1), size, "st_size of snapshot 1");
    assert_same_bytes("snapshots/1/volume", &dd_read(&c, &snap1, 0, size), &model_a);
    assert_same_bytes("alpha volume after the snapshot", &dd_read(&c, &vol, 0, size), &model_b);
    assert_same_bytes(
        "dog vdi read -s 1 through node 1",
        &dog_read(&c, 1, "alpha", 0, size, Some("1")),
        &model_a,
    );
    // A snapshot's volume is read-only.
    expect_errno(
        dd_write(&local_file(&c, "x.bin", b"x"), &snap1, 0),
        "Read-only file system",
    );

    bash(&format!("echo tag=before > {}", s(&ctl))).expect_ok();
    assert_eq!(ls(&snaps_dir), ["1", "2"], "ls snapshots after `echo tag=before`");
    let list = c.vdi_list(1);
    let tagged: Vec<_> = list.iter().filter(|l| l.flag == "s" && l.tag == "before").collect();
    assert_eq!(tagged.len(), 1, "one snapshot tagged `before`: {list:#?}");
    assert_eq!(tagged[0].snap_id, 2, "{list:#?}");
    let mut model_c = model_b.clone();
    let d = pseudo_random(6, 1000);
    dd_write(&local_file(&c, "c.bin", &d), &vol, 0).expect_ok();
    put(&mut model_c, 0, &d);
    assert_same_bytes(
        "snapshots/2/volume",
        &dd_read(&c, &snaps_dir.join("2/volume"), 0, size),
        &model_b,
    );
    assert_same_bytes("alpha volume after snapshot 2", &dd_read(&c, &vol, 0, size), &model_c);
    let info = cat(&m.vdi_dir("alpha").join("info"));
    assert!(
        info.contains("snapshots: 1,2\n"),
        "/vdi/alpha/info lists both snapshots:\n{info}"
    );

    // Bad input: EINVAL, and no snapshot.
    let before = dog_names(&c, 0);
    for bad in ["banana", "0", "tag="] {
        expect_errno(bash(&format!("echo {bad} > {}", s(&ctl))), "Invalid argument");
        assert_eq!(ls(&snaps_dir), ["1", "2"], "ls snapshots after `echo {bad}`");
    }
    assert_eq!(dog_names(&c, 0), before, "dog vdi list after the refused inputs");
    assert_same_bytes(
        "alpha volume after the refused inputs",
        &dd_read(&c, &vol, 0, size),
        &model_c,
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 5. Clone control file

#[test]
fn echo_into_clone_creates_a_writable_copy_and_refuses_bad_names() {
    let c = Cluster::start_formatted(3, 3);
    let size = 32 * MIB;
    c.dog_ok(&["vdi", "create", "alpha", "32M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("alpha");

    let mut snap = vec![0u8; size as usize];
    let d = pseudo_random(7, (9 * MIB) as usize);
    dd_write(&local_file(&c, "a.bin", &d), &vol, 3 * MIB).expect_ok();
    put(&mut snap, 3 * MIB, &d);
    bash(&format!("echo 1 > {}", s(&m.vdi_dir("alpha").join("snapshot")))).expect_ok();
    let mut alpha = snap.clone();
    let d = pseudo_random(8, MIB as usize);
    dd_write(&local_file(&c, "b.bin", &d), &vol, 5 * MIB).expect_ok();
    put(&mut alpha, 5 * MIB, &d);

    let clone_ctl = m.vdi_dir("alpha").join("snapshots/1/clone");
    bash(&format!("echo web02 > {}", s(&clone_ctl))).expect_ok();
    assert_eq!(
        ls(&m.join("vdi")),
        ["alpha", "list", "web02"],
        "ls /vdi after the clone"
    );
    let web = m.volume("web02");
    assert_eq!(stat_size(&web), size, "st_size of the clone");
    assert_same_bytes("web02 right after the clone", &dd_read(&c, &web, 0, size), &snap);
    let list = c.vdi_list(1);
    assert!(
        list.iter().any(|l| l.name == "web02" && l.flag == "c"),
        "dog vdi list -r shows web02 as a clone: {list:#?}"
    );

    // Writing the clone changes neither the snapshot nor alpha.
    let mut web_model = snap.clone();
    let d = pseudo_random(9, (2 * MIB) as usize);
    dd_write(&local_file(&c, "w.bin", &d), &web, 2 * OBJ - MIB).expect_ok();
    put(&mut web_model, 2 * OBJ - MIB, &d);
    assert_same_bytes("web02 after writing it", &dd_read(&c, &web, 0, size), &web_model);
    assert_same_bytes(
        "snapshot 1 of alpha after writing the clone",
        &dd_read(&c, &m.vdi_dir("alpha").join("snapshots/1/volume"), 0, size),
        &snap,
    );
    assert_same_bytes("alpha after writing the clone", &dd_read(&c, &vol, 0, size), &alpha);
    assert_same_bytes(
        "web02 through node 2 with dog",
        &dog_read(&c, 2, "web02", 0, size, None),
        &web_model,
    );

    // Refused: existing names (EEXIST), a 256-byte name and a '/' (EINVAL).
    let vdis_before = ls(&m.join("vdi"));
    let dog_before = dog_names(&c, 0);
    for existing in ["web02", "alpha"] {
        expect_errno(bash(&format!("echo {existing} > {}", s(&clone_ctl))), "File exists");
    }
    let long = "x".repeat(256);
    for bad in [long.as_str(), "a/b"] {
        expect_errno(bash(&format!("echo {bad} > {}", s(&clone_ctl))), "Invalid argument");
    }
    assert_eq!(ls(&m.join("vdi")), vdis_before, "ls /vdi after the refused clones");
    assert_eq!(dog_names(&c, 0), dog_before, "dog vdi list after the refused clones");
    assert_same_bytes(
        "web02 after the refused clones",
        &dd_read(&c, &web, 0, size),
        &web_model,
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 6. mkdir, truncate, rmdir

#[test]
fn mkdir_truncate_rmdir_create_grow_and_delete_vdis() {
    let c = Cluster::start_formatted(3, 3);
    let m = Mount::start(&c, 0);
    let dir = m.vdi_dir("beta");
    let vol = m.volume("beta");

    tool_ok("mkdir", &[s(&dir)]);
    assert_eq!(ls(&m.join("vdi")), ["beta", "list"], "ls /vdi after mkdir");
    assert!(
        c.vdi_list(1).iter().any(|l| l.name == "beta" && l.flag == "="),
        "dog vdi list -r after mkdir: {:#?}",
        c.vdi_list(1)
    );
    assert_eq!(ls(&dir), ["info", "snapshot", "snapshots", "volume"], "ls /vdi/beta");

    tool_ok("truncate", &["-s", "64M", s(&vol)]);
    assert_eq!(stat_size(&vol), 64 * MIB, "st_size after truncate -s 64M");
    let sizes = |c: &Cluster| -> Vec<u64> {
        c.vdi_list(2)
            .iter()
            .filter(|l| l.name == "beta" && l.flag == "=")
            .map(|l| l.size)
            .collect()
    };
    assert_eq!(sizes(&c), [64 * MIB], "beta's size in dog vdi list -r after truncate");

    // Past the end is ENOSPC and the size stays. (A write straddling the end behaves as on a
    // block device: the kernel splits it at st_size, the part that fits lands, write(2)
    // returns short and dd's retry of the rest fails with ENOSPC.)
    let e = local_file(&c, "e.bin", &[7u8; 20]);
    expect_errno(dd_write(&e, &vol, 64 * MIB), "No space left on device");
    expect_errno(dd_write(&e, &vol, 64 * MIB - 10), "No space left on device");
    assert_eq!(stat_size(&vol), 64 * MIB, "st_size after the writes past the end");
    // Writes land right up to the end.
    let d = pseudo_random(10, (MIB + 3) as usize);
    let end = 64 * MIB - d.len() as u64;
    dd_write(&local_file(&c, "d.bin", &d), &vol, end).expect_ok();
    assert_same_bytes("the last MiB of beta", &dd_read(&c, &vol, end, d.len() as u64), &d);

    expect_errno(tool("truncate", &["-s", "32M", s(&vol)]), "Invalid argument");
    assert_eq!(stat_size(&vol), 64 * MIB, "st_size after the refused shrink");
    assert_eq!(
        sizes(&c),
        [64 * MIB],
        "beta's size in dog vdi list -r after the refused shrink"
    );
    let info = cat(&dir.join("info"));
    assert!(
        info.contains(&format!("size: {}\n", 64 * MIB)),
        "/vdi/beta/info:\n{info}"
    );
    assert_same_bytes(
        "the last MiB of beta after the refused shrink",
        &dog_read(&c, 1, "beta", end, d.len() as u64, None),
        &d,
    );

    // With a snapshot, rmdir is ENOTEMPTY; removing the snapshot first lets it go.
    bash(&format!("echo 1 > {}", s(&dir.join("snapshot")))).expect_ok();
    expect_errno(tool("rmdir", &[s(&dir)]), "Directory not empty");
    assert_eq!(ls(&m.join("vdi")), ["beta", "list"], "ls /vdi after the refused rmdir");
    tool_ok("rmdir", &[s(&dir.join("snapshots/1"))]);
    assert_eq!(
        ls(&dir.join("snapshots")),
        Vec::<String>::new(),
        "snapshots after rmdir of 1"
    );
    tool_ok("rmdir", &[s(&dir)]);
    assert_eq!(ls(&m.join("vdi")), ["list"], "ls /vdi after rmdir beta");
    let left: Vec<_> = c.vdi_list(1).into_iter().filter(|l| l.name == "beta").collect();
    assert!(left.is_empty(), "dog vdi list -r still shows beta: {left:#?}");
    tool("stat", &[s(&vol)]).expect_failure();
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 11. The gateway dies and comes back under a mounted sheepfs

/// `dd iflag=direct` of `len` bytes at 0 with a deadline: the page cache cannot answer.
fn direct_read(c: &Cluster, vol: &Path, len: u64, timeout: Duration) -> (ToolOutput, PathBuf) {
    let out = scratch(c).join("direct");
    let _ = fs::remove_file(&out);
    let mut cmd = Command::new("dd");
    cmd.args([
        format!("if={}", s(vol)),
        format!("of={}", s(&out)),
        "bs=1M".to_string(),
        "iflag=direct,count_bytes".to_string(),
        format!("count={len}"),
        "status=none".to_string(),
    ]);
    (run_command(cmd, timeout), out)
}

#[test]
fn reads_fail_with_eio_while_the_gateway_is_down_and_recover_after_its_restart() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "16M"]);
    let data = pseudo_random(11, (9 * MIB) as usize);
    c.write_vdi("alpha", 0, &data);
    let m = Mount::start_with(&c, 0, &["--retry-secs", "3"]);
    let vol = m.volume("alpha");
    let len = data.len() as u64;

    let (out, file) = direct_read(&c, &vol, len, Duration::from_secs(30));
    let out = out.expect_ok();
    assert_same_bytes(
        &format!("read before the kill ({})", out.cmdline),
        &tests::read_file(&file),
        &data,
    );
    // Opened while the gateway is up, with O_DIRECT: a read through it after the kill must
    // reach sheepfs's volume read path, not the page cache nor the lookup at open.
    let held = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&vol)
        .unwrap_or_else(|e| panic!("opening {} with O_DIRECT: {e}", vol.display()));

    c.kill(0);
    let mut cmd = Command::new("dd");
    cmd.args([
        "bs=1M",
        "iflag=count_bytes",
        &format!("count={len}"),
        "of=/dev/null",
        "status=none",
    ]);
    let out = run_command_with_stdin(cmd, Stdio::from(held), Duration::from_secs(30));
    assert!(
        !out.timed_out(),
        "a read (on a descriptor opened before the kill) with the gateway down must fail, not hang: {}",
        out.describe()
    );
    expect_errno(out, "Input/output error");
    let log = m.log_text();
    assert!(
        log.contains("volume read failed"),
        "sheepfs must log the failed volume read (object and error); its log:\n{}",
        m.log_tail(40)
    );
    let (out, _) = direct_read(&c, &vol, len, Duration::from_secs(30));
    assert!(
        !out.timed_out(),
        "a fresh open and read with the gateway down must fail, not hang: {}",
        out.describe()
    );
    expect_errno(out, "Input/output error");
    assert!(m.process_alive(), "sheepfs must survive its gateway's death");

    c.restart(0);
    let restarted = Instant::now();
    let got = wait_until("reads through the mount to work again", Duration::from_secs(20), || {
        let (out, file) = direct_read(&c, &vol, len, Duration::from_secs(20));
        if out.success() {
            Ok(tests::read_file(&file))
        } else {
            Err(out.describe())
        }
    });
    assert_same_bytes(
        &format!("read {:?} after node 0 came back", restarted.elapsed()),
        &got,
        &data,
    );
    // And writes work again too.
    let d = pseudo_random(12, 5000);
    dd_write(&local_file(&c, "w.bin", &d), &vol, OBJ - 2500).expect_ok();
    assert_same_bytes(
        "write after the restart, read through node 2",
        &dog_read(&c, 2, "alpha", OBJ - 2500, d.len() as u64, None),
        &d,
    );
    m.unmount();
}

/// A child blocked in a system call on the mount (a `cat` of a monitoring file in open, a
/// `dd` in fsync), killed if the test ends before it does.
struct Parked(Option<std::process::Child>);

impl Parked {
    /// Starts `cmd` with its output captured and waits until it is inside system call `nr`
    /// (`libc::SYS_*`).
    fn start(cmd: &mut Command, nr: libc::c_long) -> Parked {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let parked = Parked(Some(child));
        wait_until(
            &format!("{cmd:?} to wait in system call {nr}"),
            Duration::from_secs(20),
            || {
                if parked.is_in(nr) {
                    Ok(())
                } else {
                    Err("not there yet".to_string())
                }
            },
        );
        parked
    }

    /// Whether it is inside system call `nr` now (/proc/PID/syscall starts with the number).
    fn is_in(&self, nr: libc::c_long) -> bool {
        self.0.as_ref().is_some_and(|c| {
            fs::read_to_string(format!("/proc/{}/syscall", c.id()))
                .is_ok_and(|s| s.split_whitespace().next() == Some(&nr.to_string()))
        })
    }

    /// Waits for it to end, requires that it succeeded (`what` names it), and returns its
    /// standard output.
    fn finish(mut self, what: &str) -> String {
        let out = self
            .0
            .take()
            .expect("started")
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {:?}, {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        tests::kill_and_reap(&mut self.0);
    }
}

#[test]
fn a_hung_node_holds_up_its_monitoring_rows_but_not_the_volumes() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "8M"]);
    let data = pseudo_random(21, (2 * MIB) as usize);
    c.write_vdi("alpha", 0, &data);
    // One FUSE thread: an open that waited on it for the hung node would hold up every
    // request behind it. The node timeout is far longer than any read below can take.
    let m = Mount::start_with(&c, 0, &["--threads", "1", "--node-timeout-secs", "60"]);
    let vol = m.volume("alpha");
    let list = m.join("node/list");

    let hung = c.node(2).pid().expect("node 2 runs");
    signal(hung, libc::SIGSTOP);
    let cats: Vec<Parked> = (0..2)
        .map(|_| Parked::start(Command::new("cat").arg(&list), libc::SYS_openat))
        .collect();

    let (out, file) = direct_read(&c, &vol, data.len() as u64, Duration::from_secs(30));
    out.expect_ok();
    assert_same_bytes("volume read while node 2 hangs", &tests::read_file(&file), &data);
    assert!(
        cats.iter().all(|c| c.is_in(libc::SYS_openat)),
        "the cats' opens should still be waiting for node 2, or this proved nothing"
    );

    signal(hung, libc::SIGCONT);
    for (i, cat) in cats.into_iter().enumerate() {
        let text = cat.finish(&format!("cat {i} of /node/list"));
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), 3, "cat {i} of /node/list after node 2 went on:\n{text}");
        assert!(
            rows.iter().all(|r| !r.ends_with(" - - -")),
            "node 2 answered once it went on, within the timeout; cat {i}:\n{text}"
        );
    }
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 12. Concurrent writers

#[test]
fn concurrent_dd_writers_to_adjacent_ranges_all_land() {
    let c = Cluster::start_formatted(3, 3);
    let size = 40 * MIB;
    c.dog_ok(&["vdi", "create", "alpha", "40M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("alpha");

    // Four adjacent 8 MiB ranges from an unaligned start: each crosses object boundaries and
    // neighbours share objects 2, 4 and 6, which none of them has created yet.
    let start = MIB + 12_345;
    let len = 8 * MIB;
    let mut model = vec![0u8; size as usize];
    let mut children = Vec::new();
    for i in 0..4u64 {
        let d = pseudo_random(30 + i, len as usize);
        let off = start + i * len;
        let src = local_file(&c, &format!("w{i}.bin"), &d);
        put(&mut model, off, &d);
        let mut cmd = Command::new("dd");
        cmd.args([
            format!("if={}", s(&src)),
            format!("of={}", s(&vol)),
            "bs=1M".to_string(),
            "oflag=seek_bytes".to_string(),
            format!("seek={off}"),
            "conv=fsync,notrunc".to_string(),
            "status=none".to_string(),
        ]);
        children.push(std::thread::spawn(move || run_command(cmd, Duration::from_secs(60))));
    }
    for (i, h) in children.into_iter().enumerate() {
        let out = h.join().expect("writer thread");
        assert!(out.success(), "writer {i}: {}", out.describe());
    }
    assert_same_bytes(
        "the whole volume after 4 concurrent writers",
        &dd_read(&c, &vol, 0, size),
        &model,
    );
    assert_same_bytes(
        "the whole volume through node 1 with dog",
        &dog_read(&c, 1, "alpha", 0, size, None),
        &model,
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// Durability: the replicas' write-back contract (a disk with a volatile write cache)

/// What a flush acknowledged (dd's `conv=fsync` on the volume) survives `kill -9` of every
/// sheep: restarted on the same directories, the cluster serves every byte through another
/// gateway, and the bytes around the write are still zeros.
#[test]
fn flushed_writes_survive_kill_9_of_every_sheep() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "24M"]);
    let m = Mount::start(&c, 0);
    let data = pseudo_random(41, (9 * MIB + 3 * 4096 + 5) as usize);
    let off = 3 * MIB + 512;
    let src = local_file(&c, "pattern", &data);
    dd_write(&src, &m.volume("alpha"), off).expect_ok();
    c.kill_all();
    c.start_all();
    c.wait_running();
    let mut want = vec![0u8; (24 * MIB) as usize];
    put(&mut want, off, &data);
    assert_same_bytes(
        "alpha through node 1 after kill -9 of every sheep",
        &dog_read(&c, 1, "alpha", 0, 24 * MIB, None),
        &want,
    );
    drop(m);
}

/// With `--sync-writes` every acknowledged write is durable without a flush: dog writes
/// without flushing (`-w`), every sheep is killed with `-9`, and every byte is back.
#[test]
fn sync_writes_are_durable_without_a_flush() {
    let mut c = Cluster::builder().nodes(3).args(&["--sync-writes"]).start();
    c.format(3);
    c.dog_ok(&["vdi", "create", "beta", "12M"]);
    let data = pseudo_random(42, (5 * MIB + 100) as usize);
    c.dog_at(0, &["vdi", "write", "-w", "beta", "4095"], Some(&data))
        .expect_ok();
    let small = pseudo_random(43, 4096);
    c.dog_at(2, &["vdi", "write", "-w", "beta", "8192", "4096"], Some(&small))
        .expect_ok();
    c.kill_all();
    c.start_all();
    c.wait_running();
    let mut want = vec![0u8; (12 * MIB) as usize];
    put(&mut want, 4095, &data);
    put(&mut want, 8192, &small);
    assert_same_bytes(
        "beta through node 1 after kill -9 of every sheep",
        &dog_read(&c, 1, "beta", 0, 12 * MIB, None),
        &want,
    );
}

/// A block that another client allocates after the mount loaded the volume's map reads as
/// that client wrote it, never as zeros from the stale map.
#[test]
fn blocks_another_client_allocates_are_read_not_zeros() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "gamma", "16M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("gamma");
    let off = 5 * MIB + 4096;
    assert_eq!(
        dd_read(&c, &vol, off, 3 * 4096),
        vec![0u8; 3 * 4096],
        "never written: zeros"
    );
    let data = pseudo_random(44, 3 * 4096);
    c.dog_at(1, &["vdi", "write", "gamma", &off.to_string()], Some(&data))
        .expect_ok();
    assert_same_bytes(
        "gamma through the mount after dog wrote through node 1",
        &dd_read(&c, &vol, off, data.len() as u64),
        &data,
    );
    // Read-only opens see it too; the rest of the object is still zeros.
    let around = dd_read(&c, &vol, 4 * MIB, 4 * MIB);
    let mut want = vec![0u8; (4 * MIB) as usize];
    put(&mut want, MIB + 4096, &data);
    assert_same_bytes("the object around it", &around, &want);
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// One writer per VDI (LOCK_VDI held for the mount's lifetime)

/// While a mount has a volume open for writing, a second mount (through another gateway)
/// gets EBUSY and `dog vdi write` is refused with a message, and neither changes a byte;
/// reads stay free. Once the first mount ends, the others write.
#[test]
fn a_vdi_is_written_by_one_client_at_a_time() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "delta", "8M"]);
    let m1 = Mount::start(&c, 0);
    let mut want = pseudo_random(50, (2 * MIB) as usize);
    dd_write(&local_file(&c, "first", &want), &m1.volume("delta"), 0).expect_ok();
    let other = pseudo_random(51, 4096);
    let other_src = local_file(&c, "other", &other);

    let m2 = Mount::start(&c, 1);
    expect_errno(dd_write(&other_src, &m2.volume("delta"), 0), "Device or resource busy");
    let refused = c
        .dog_at(2, &["vdi", "write", "delta", "0", "4096"], Some(&other))
        .expect_failure();
    assert!(
        refused.stderr.contains("open for writing"),
        "dog says why: {}",
        refused.stderr
    );
    assert_same_bytes(
        "delta read through the second mount while the first writes",
        &dd_read(&c, &m2.volume("delta"), 0, 2 * MIB),
        &want,
    );

    m1.unmount();
    dd_write(&other_src, &m2.volume("delta"), 0).expect_ok();
    put(&mut want, 0, &other);
    m2.unmount();
    c.dog_at(2, &["vdi", "write", "delta", "8192", "4096"], Some(&other))
        .expect_ok();
    put(&mut want, 8192, &other);
    assert_same_bytes(
        "delta through node 2 after each writer in turn",
        &dog_read(&c, 2, "delta", 0, 2 * MIB, None),
        &want,
    );
}

/// The lock ends with the gateway that holds it: once it is killed, another mount writes.
/// A killed mount frees the VDI too (its connection to the gateway closes).
#[test]
fn a_vdi_lock_ends_with_its_gateway_or_its_mount() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "eps", "8M"]);
    let data = pseudo_random(52, MIB as usize);
    let src = local_file(&c, "data", &data);

    // A mount killed with -9.
    let m0 = Mount::start(&c, 2);
    dd_write(&src, &m0.volume("eps"), 0).expect_ok();
    c.dog_at(1, &["vdi", "write", "eps", "0", "4096"], Some(&data[..4096]))
        .expect_failure();
    let pid = m0.pid().expect("sheepfs pid");
    tool_ok("kill", &["-9", &pid.to_string()]);
    wait_until("the killed mount's lock to go", Duration::from_secs(20), || {
        let out = c.dog_at(1, &["vdi", "write", "eps", "0", "4096"], Some(&data[..4096]));
        if out.success() {
            Ok(())
        } else {
            Err(out.stderr)
        }
    });
    drop(m0);

    // A gateway killed with -9.
    let m1 = Mount::start_with(&c, 0, &["--retry-secs", "1"]);
    dd_write(&src, &m1.volume("eps"), 0).expect_ok();
    let m2 = Mount::start(&c, 1);
    let other = pseudo_random(53, 4096);
    let other_src = local_file(&c, "other", &other);
    expect_errno(dd_write(&other_src, &m2.volume("eps"), MIB), "Device or resource busy");
    c.kill(0);
    c.wait_for_membership();
    wait_until("the killed gateway's lock to go", Duration::from_secs(20), || {
        let out = dd_write(&other_src, &m2.volume("eps"), MIB);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    let mut want = data.clone();
    want.extend_from_slice(&other);
    assert_same_bytes(
        "eps through node 2 after its first writer's gateway died",
        &dog_read(&c, 2, "eps", 0, MIB + 4096, None),
        &want,
    );
    m2.unmount();
    drop(m1);
}

/// An operator's RELEASE_VDI ends a mount's lock and a client of another gateway takes it.
/// Until the mount notices, it may go on writing; its gateway must refuse those writes, so
/// that they never land under the new holder's. Once the holder lets go, the mount takes
/// the lock back and writes again.
#[test]
fn writes_of_a_mount_that_lost_its_lock_to_another_gateway_are_refused() {
    use protocol::{op, requests::name_payload, RequestHeader, ResultCode, VdiArgs};
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "zeta", "8M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("zeta");
    let mut want = pseudo_random(54, MIB as usize);
    dd_write(&local_file(&c, "base", &want), &vol, 0).expect_ok();
    let late = local_file(&c, "late", &pseudo_random(55, 4096));

    let vid = c.vid_of("zeta");
    let mut release = RequestHeader::new(op::RELEASE_VDI);
    release.set_vdi(&VdiArgs {
        base_vdi_id: vid,
        ..VdiArgs::default()
    });
    // The holder's connection stays open (pooled) as long as it lives, and its lock with it.
    let holder = tests::BlockingClient::new(c.node(1).addr());
    // The mount's keeper may take the lock back between the release and ours: again.
    let taken = (0..30).any(|_| {
        c.call(1, release.clone(), &[]).expect("RELEASE_VDI through node 1");
        let r = holder
            .send(RequestHeader::new(op::LOCK_VDI), &name_payload("zeta", Some("")))
            .expect("LOCK_VDI through node 1");
        r.header.result_code() == ResultCode::SUCCESS
    });
    assert!(
        taken,
        "node 1 never got the lock of zeta between the mount's assertions"
    );
    // Node 0 applies cluster events in order, a moment after node 1: once it lists a VDI
    // made after the lock, it knows the lock's new holder.
    c.dog_at(1, &["vdi", "create", "zeta-after", "4M"], None).expect_ok();
    wait_until("node 0 to apply node 1's lock", Duration::from_secs(20), || {
        let list = c.dog_at(0, &["vdi", "list", "-r"], None).stdout_str();
        if list.contains("zeta-after") {
            Ok(())
        } else {
            Err(list)
        }
    });

    expect_errno(dd_write(&late, &vol, 0), "Input/output error");
    assert_same_bytes(
        "zeta through node 2 after the refused write",
        &dog_read(&c, 2, "zeta", 0, MIB, None),
        &want,
    );

    drop(holder);
    wait_until("the mount to write again", Duration::from_secs(20), || {
        let out = dd_write(&late, &vol, 0);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    put(&mut want, 0, &pseudo_random(55, 4096));
    assert_same_bytes(
        "zeta through node 2 once the mount has its lock back",
        &dog_read(&c, 2, "zeta", 0, MIB, None),
        &want,
    );
    m.unmount();
}
