//! Block-device and image tools on a sheepfs volume: losetup + mkfs.ext4 + mount + e2fsck,
//! qemu-img, qemu-io and fio.

use std::fs;
use std::path::{Path, PathBuf};

use tests::{assert_same_bytes, pseudo_random, read_file, tool, tool_ok, Cluster, Mount};

use super::{bash, dog_read, put, s, scratch, MIB, OBJ};

/// A loop device over a file; detached on drop, so a failing test leaks none.
struct LoopDev {
    dev: String,
    attached: bool,
}

impl LoopDev {
    #[track_caller]
    fn attach(file: &Path) -> LoopDev {
        let out = tool_ok("losetup", &["-f", "--show", s(file)]);
        let dev = out.stdout_str().trim().to_string();
        assert!(
            dev.starts_with("/dev/loop"),
            "`losetup -f --show {}` printed {dev:?}, not a loop device",
            file.display()
        );
        LoopDev { dev, attached: true }
    }

    #[track_caller]
    fn detach(mut self) {
        self.attached = false;
        tool_ok("losetup", &["-d", &self.dev]);
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if self.attached {
            let out = tool("losetup", &["-d", &self.dev]);
            if !out.success() {
                eprintln!("cleaning up {}: {}", self.dev, out.describe());
            }
        }
    }
}

/// A filesystem mounted on a directory; unmounted on drop (`umount -l` if need be).
struct Mounted {
    dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    #[track_caller]
    fn mount(dev: &str, dir: &Path) -> Mounted {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        tool_ok("mount", &[dev, s(dir)]);
        Mounted {
            dir: dir.to_path_buf(),
            mounted: true,
        }
    }

    #[track_caller]
    fn unmount(mut self) {
        self.mounted = false;
        tool_ok("umount", &[s(&self.dir)]);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted && !tool("umount", &[s(&self.dir)]).success() {
            let out = tool("umount", &["-l", s(&self.dir)]);
            if !out.success() {
                eprintln!("cleaning up {}: {}", self.dir.display(), out.describe());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. ext4 on a loop device

#[test]
fn ext4_on_a_loop_device_over_a_volume_passes_fsck_and_keeps_its_files() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "disk", "64M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("disk");
    let work = scratch(&c);
    let files: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| (format!("f{i}"), pseudo_random(100 + i, MIB as usize)))
        .collect();
    let src = work.join("files");
    fs::create_dir_all(&src).expect("creating the source directory");
    for (name, data) in &files {
        fs::write(src.join(name), data).expect("writing a source file");
    }
    let ext4 = work.join("ext4");

    let lo = LoopDev::attach(&vol);
    tool_ok("mkfs.ext4", &["-q", &lo.dev]);
    let mnt = Mounted::mount(&lo.dev, &ext4);
    for (name, _) in &files {
        tool_ok("cp", &[s(&src.join(name)), s(&ext4.join(name))]);
    }
    bash(&format!("cd {} && sha256sum f* > SUMS", s(&ext4))).expect_ok();
    tool_ok("sync", &[]);
    mnt.unmount();
    let fsck = tool("e2fsck", &["-fn", &lo.dev]);
    assert!(fsck.success(), "e2fsck -fn after unmounting: {}", fsck.describe());
    lo.detach();

    // The ext4 superblock magic (0xEF53 at byte 1080) went through to the cluster.
    assert_eq!(
        dog_read(&c, 1, "disk", 1080, 2, None),
        [0x53, 0xef],
        "ext4 magic read through node 1 with dog"
    );

    // A fresh loop device: what it reads comes through sheepfs, not an old device's cache.
    let lo = LoopDev::attach(&vol);
    let fsck = tool("e2fsck", &["-fn", &lo.dev]);
    assert!(fsck.success(), "e2fsck -fn on a fresh loop device: {}", fsck.describe());
    let mnt = Mounted::mount(&lo.dev, &ext4);
    let check = bash(&format!("cd {} && sha256sum -c SUMS", s(&ext4)));
    assert!(check.success(), "sha256sum -c after the remount: {}", check.describe());
    for (name, data) in &files {
        assert_same_bytes(&format!("{name} after the remount"), &read_file(&ext4.join(name)), data);
    }
    mnt.unmount();
    lo.detach();
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 8. qemu-img convert and compare

#[test]
fn qemu_img_converts_a_qcow2_image_onto_a_volume_and_compares_equal() {
    let c = Cluster::start_formatted(3, 3);
    let size = 32 * MIB;
    c.dog_ok(&["vdi", "create", "img", "32M"]);
    // Junk where the image holds zeros: `convert -n` must overwrite it, not assume zeros.
    c.write_vdi("img", 2 * MIB, &vec![0x77u8; MIB as usize]);
    c.write_vdi("img", 20 * MIB + 5, &[0x77u8; 4096]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("img");
    let q = scratch(&c).join("small.qcow2");

    tool_ok("qemu-img", &["create", "-f", "qcow2", s(&q), "32M"]);
    tool_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 4M 512k",
            s(&q),
        ],
    );
    tool_ok("qemu-img", &["convert", "-n", "-O", "raw", s(&q), s(&vol)]);
    let cmp = tool("qemu-img", &["compare", "-f", "qcow2", "-F", "raw", s(&q), s(&vol)]);
    assert!(cmp.success(), "qemu-img compare after the convert: {}", cmp.describe());

    let mut want = vec![0u8; size as usize];
    put(&mut want, 0, &vec![0xab; MIB as usize]);
    put(&mut want, 4 * MIB, &vec![0xcd; (MIB / 2) as usize]);
    assert_same_bytes(
        "the converted volume through node 1 with dog",
        &dog_read(&c, 1, "img", 0, size, None),
        &want,
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 9. qemu-io patterns

#[test]
fn qemu_io_writes_and_verifies_patterns_and_reports_a_wrong_one() {
    let c = Cluster::start_formatted(3, 3);
    let size = 16 * MIB;
    c.dog_ok(&["vdi", "create", "io", "16M"]);
    let m = Mount::start(&c, 0);
    let vol = m.volume("io");

    let out = tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 4M",
            "-c",
            "read -P 0x5a 0 4M",
            s(&vol),
        ],
    );
    let text = out.stdout_str();
    assert!(
        text.contains("wrote 4194304/4194304 bytes at offset 0")
            && text.contains("read 4194304/4194304 bytes at offset 0")
            && !text.contains("Pattern verification failed"),
        "qemu-io write + read of 0x5a: {}",
        out.describe()
    );

    let bad = tool("qemu-io", &["-f", "raw", "-c", "read -P 0x5b 0 4M", s(&vol)]);
    assert!(
        !bad.success()
            && !bad.timed_out()
            && format!("{}{}", bad.stdout_str(), bad.stderr).contains("Pattern verification failed"),
        "reading 0x5a bytes with pattern 0x5b must fail verification: {}",
        bad.describe()
    );

    // Unaligned, across the boundary of objects 0 and 1, and the rest untouched.
    let off = 3 * MIB + 11;
    let out = tool_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P 0x3c {off} 2M"),
            "-c",
            &format!("read -P 0x3c {off} 2M"),
            "-c",
            &format!("read -P 0x5a 0 {off}"),
            "-c",
            &format!("read -P 0x0 {} 8M", off + 2 * MIB),
            s(&vol),
        ],
    );
    assert!(
        !out.stdout_str().contains("Pattern verification failed"),
        "qemu-io unaligned write and reads: {}",
        out.describe()
    );
    let mut want = vec![0u8; size as usize];
    put(&mut want, 0, &vec![0x5a; (4 * MIB) as usize]);
    put(&mut want, off, &vec![0x3c; (2 * MIB) as usize]);
    assert!(off < OBJ && off + 2 * MIB > OBJ, "the write crosses an object boundary");
    assert_same_bytes(
        "the volume through node 2 with dog",
        &dog_read(&c, 2, "io", 0, size, None),
        &want,
    );
    m.unmount();
}

// ---------------------------------------------------------------------------------------------
// 10. fio

#[test]
fn fio_random_writes_verify_with_crc32c() {
    fio_verify(&Cluster::start_formatted(3, 3));
}

/// The same through gateways with an object cache smaller than the volume.
#[test]
fn fio_random_writes_verify_with_crc32c_through_the_object_cache() {
    let c = Cluster::builder().nodes(3).args(&["-w", "24M"]).start();
    c.format(3);
    fio_verify(&c);
}

fn fio_verify(c: &Cluster) {
    c.dog_ok(&["vdi", "create", "bench", "64M"]);
    let m = Mount::start(c, 0);
    let vol = m.volume("bench");
    fio_check("fio randwrite with crc32c verification", &vol, &[]);
    // A second process, on a fresh descriptor, re-reads and verifies what the first wrote.
    fio_check("fio --verify_only of the same job", &vol, &["--verify_only"]);
    m.unmount();
}

/// Requests in flight together share the mount's pipelined connection to its gateway: after
/// the gateway restarts, that connection is made again and nothing written is lost.
#[test]
fn fio_verifies_across_a_restart_of_the_gateway() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "bench", "64M"]);
    let m = Mount::start_with(&c, 0, &["--retry-secs", "30"]);
    let vol = m.volume("bench");
    fio_check("fio randwrite with crc32c verification", &vol, &[]);
    c.kill(0);
    c.restart(0);
    fio_check(
        "fio --verify_only after the gateway's restart",
        &vol,
        &["--verify_only"],
    );
    fio_check(
        "fio randwrite of other blocks after the restart",
        &vol,
        &["--randseed=4321"],
    );
    fio_check(
        "fio --verify_only of the second job",
        &vol,
        &["--randseed=4321", "--verify_only"],
    );
    m.unmount();
}

/// Runs fio on `vol`: 8192 random 4 KiB writes over 64 MiB (all 64 MiB take ~13 s alone on
/// 2 cores, too long next to the other tests), 8 in flight through libaio with O_DIRECT,
/// then a read of each block back with a check of its crc32c; `extra` arguments last.
fn fio_check(what: &str, vol: &Path, extra: &[&str]) {
    let mut args: Vec<String> = [
        "--name=v",
        "--size=64M",
        "--io_size=32M",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        "--ioengine=libaio",
        "--direct=1",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--randseed=1234",
        // No `local-v-0-verify.state` left in the working directory.
        "--verify_state_save=0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push(format!("--filename={}", s(vol)));
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tool("fio", &args);
    let text = format!("{}{}", out.stdout_str(), out.stderr);
    // The job line says `err= 0`; the verify phase shows up as reads.
    assert!(
        out.success() && text.contains("err= 0") && text.contains("read: IOPS=") && !text.contains("verify:"),
        "{what}: {}",
        out.describe()
    );
}
