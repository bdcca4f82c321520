//! The NBD export (`sheep --nbd`) with the clients people use: qemu-io, qemu-img, nbdinfo,
//! nbdcopy; and a raw client for the protocol's corners and bad input.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use protocol::Vid;
use tests::{assert_same_bytes, pseudo_random, tool, tool_ok, wait_until, Cluster, ToolOutput};

const MIB: u64 = 1 << 20;
const OBJ: u64 = 4 * MIB;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// qemu-io with `cmds` against `url`; panics unless it succeeds and no pattern failed.
#[track_caller]
fn qemu_io(url: &str, cmds: &[&str]) -> ToolOutput {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(url);
    let out = tool_ok("qemu-io", &args);
    let text = out.stdout_str();
    assert!(
        !text.contains("failed") && !text.contains("error"),
        "qemu-io {cmds:?} on {url}: {}",
        out.describe()
    );
    out
}

#[test]
fn qemu_io_patterns_at_unaligned_offsets_and_zeroes() {
    let c = Cluster::builder().nodes(3).nbd().start();
    c.format(3);
    c.dog_ok(&["vdi", "create", "web", "24M"]);
    let url = c.node(0).nbd_url("web");
    // Unaligned, across object boundaries, overlapping.
    qemu_io(
        &url,
        &[
            "write -P 0x5a 4190000 10000",
            "write -P 0xa5 1000 5000000",
            "write -P 0x3c 12582911 4194306",
            "read -P 0xa5 1000 5000000",
            "read -P 0x5a 5001000 0",
            "read -P 0x3c 12582911 4194306",
            "read -P 0 0 1000",
            "flush",
        ],
    );
    let mut model = vec![0u8; 24 * MIB as usize];
    for (off, len, byte) in [
        (4190000usize, 10000usize, 0x5a),
        (1000, 5000000, 0xa5),
        (12582911, 4194306, 0x3c),
    ] {
        model[off..off + len].fill(byte);
    }
    // Another gateway, another client: the same bytes.
    assert_same_bytes(
        "web through dog on node 1",
        &c.dog_at(1, &["vdi", "read", "web"], None).expect_ok().stdout,
        &model,
    );

    // WRITE_ZEROES inside an object writes zeros; over whole objects with unmap allowed (no
    // NO_HOLE), and TRIM, drops them.
    qemu_io(
        &url,
        &[
            "write -z 2000 3000",
            "write -z -u 8388608 8388608",
            "discard 0 4194304",
            "read -P 0 0 4194304",
            "read -P 0 8388608 8388608",
        ],
    );
    model[..4 * MIB as usize].fill(0);
    model[8 * MIB as usize..16 * MIB as usize].fill(0);
    assert_same_bytes(
        "web after zeroes and discards",
        &c.dog_at(2, &["vdi", "read", "web"], None).expect_ok().stdout,
        &model,
    );
    let vid = Vid::new(c.vid_of("web")).expect("vid");
    let holders = c.object_holders();
    for idx in [0u32, 2, 3] {
        assert!(
            !holders.contains_key(&vid.data_oid(idx)),
            "object {idx} was discarded whole, yet replicas still hold it: {:?}",
            holders.get(&vid.data_oid(idx))
        );
    }
    assert!(holders.contains_key(&vid.data_oid(1)), "object 1 keeps its data");
}

#[test]
fn images_go_in_and_out_with_qemu_img_and_nbdcopy() {
    let c = Cluster::builder().nodes(3).nbd().start();
    c.format(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = tmp.path().join("in.raw");
    let data = pseudo_random(11, 256 * MIB as usize);
    std::fs::write(&img, &data).expect("write the image");
    c.dog_ok(&["vdi", "create", "big", "256M"]);
    c.dog_ok(&["vdi", "create", "small", "40M"]);
    let big = c.node(1).nbd_url("big");

    // nbdcopy in, nbdcopy out.
    tool_ok("nbdcopy", &[s(&img), &big]);
    let out = tmp.path().join("out.raw");
    tool_ok("nbdcopy", &[&big, s(&out)]);
    assert_same_bytes("nbdcopy round trip", &std::fs::read(&out).expect("read out"), &data);

    // qemu-img convert in (a 40 MiB piece), compare, and out again.
    let piece = tmp.path().join("piece.raw");
    std::fs::write(&piece, &data[..40 * MIB as usize]).expect("write the piece");
    let small = c.node(2).nbd_url("small");
    tool_ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", s(&piece), &small],
    );
    tool_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", s(&piece), &small]);
    let back = tmp.path().join("back.raw");
    tool_ok("qemu-img", &["convert", "-f", "raw", "-O", "raw", &small, s(&back)]);
    assert_same_bytes(
        "qemu-img convert out",
        &std::fs::read(&back).expect("read back"),
        &data[..40 * MIB as usize],
    );
    let info = tool_ok("qemu-img", &["info", "--output=json", &small]).stdout_str();
    assert!(info.contains(&format!("\"virtual-size\": {}", 40 * MIB)), "{info}");

    // Every VDI is listed, snapshots by NAME@ID.
    c.dog_ok(&["vdi", "snapshot", "-s", "monday", "small"]);
    let list = tool_ok("nbdinfo", &["--list", &c.node(0).nbd_url("")]).stdout_str();
    for name in ["export=\"big\"", "export=\"small\"", "export=\"small@1\""] {
        assert!(list.contains(name), "nbdinfo --list lacks {name}: {list}");
    }
}

#[test]
fn snapshot_exports_read_the_snapshot_and_refuse_writes() {
    let c = Cluster::builder().nodes(2).nbd().start();
    c.format(2);
    c.dog_ok(&["vdi", "create", "db", "8M"]);
    let url = c.node(0).nbd_url("db");
    qemu_io(&url, &["write -P 0x11 0 6M"]);
    c.dog_ok(&["vdi", "snapshot", "-s", "before", "db"]);
    qemu_io(&url, &["write -P 0x22 1M 1M"]);
    for snap in ["db@1", "db@before"] {
        let out = tool_ok(
            "qemu-io",
            &["-r", "-f", "raw", "-c", "read -P 0x11 0 6M", &c.node(1).nbd_url(snap)],
        );
        assert!(!out.stdout_str().contains("failed"), "{snap}: {}", out.describe());
    }
    qemu_io(&url, &["read -P 0x11 0 1M", "read -P 0x22 1M 1M"]);
    let w = tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x33 0 4k", &c.node(1).nbd_url("db@1")],
    );
    assert!(!w.success(), "a write to a snapshot export succeeded: {}", w.describe());
    let mut raw = Nbd::go(c.node(1).nbd_addr(), "db@before", false).expect("GO db@before");
    assert_eq!(
        raw.write(0, &[0x44; 512], 0),
        EPERM,
        "the server itself refuses writes to a snapshot"
    );
    assert_eq!(raw.read(0, 4096).expect("read"), vec![0x11; 4096]);
    for bad in ["db@7", "db@nosuch", "nosuch"] {
        let i = tool("qemu-img", &["info", &c.node(0).nbd_url(bad)]);
        assert!(
            !i.success() && i.describe().contains("not available"),
            "{bad}: {}",
            i.describe()
        );
    }
}

/// A qemu-io session that stays open, fed commands one at a time.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn open(url: &str) -> Session {
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", "-t", "writeback", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-io");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                if tx.send(String::from_utf8_lossy(&l).into_owned()).is_err() {
                    return;
                }
            }
        });
        Session { child, stdin, lines }
    }

    /// Runs one command and waits for the line that says it completed.
    fn run(&mut self, cmd: &str, done: &str) {
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{cmd}").expect("send to qemu-io");
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains(done) => return,
                Ok(l) => seen.push(l),
                Err(_) => panic!("qemu-io `{cmd}` did not print {done:?}; printed {seen:?}"),
            }
        }
    }

    fn close(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for qemu-io");
        assert!(status.success(), "qemu-io session exited with {status}");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_writable_export_holds_the_vdi_lock_for_all_its_connections() {
    let mut c = Cluster::builder().nodes(3).nbd().start();
    c.format(3);
    c.dog_ok(&["vdi", "create", "vm", "8M"]);
    let mut first = Session::open(&c.node(0).nbd_url("vm"));
    first.run("write -P 0x61 0 64k", "wrote 65536/65536");
    // Another connection to the same export on the same gateway writes too (multi-conn).
    qemu_io(
        &c.node(0).nbd_url("vm"),
        &["write -P 0x62 64k 64k", "read -P 0x61 0 64k"],
    );
    // Any other writer is refused, and nothing it meant to write lands.
    let dog = c.dog_with_input(&["vdi", "write", "vm", "0", "3"], b"bad");
    assert!(
        !dog.success() && dog.all_text().contains("open for writing"),
        "{}",
        dog.all_text()
    );
    let other = tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x63 0 4k", &c.node(1).nbd_url("vm")],
    );
    assert!(
        !other.success() && other.describe().contains("open for writing by another client"),
        "a second gateway's export of vm: {}",
        other.describe()
    );
    first.close();
    // The last connection gone, the VDI is free (once the gateway has seen the hang-up);
    // and a killed gateway frees it too.
    wait_until("vm to be free for another gateway", Duration::from_secs(20), || {
        let out = tool(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0x64 128k 4k", &c.node(1).nbd_url("vm")],
        );
        out.success().then_some(()).ok_or_else(|| out.describe())
    });
    let mut second = Session::open(&c.node(1).nbd_url("vm"));
    second.run("read -P 0x64 128k 4k", "read 4096/4096");
    c.kill(1);
    c.wait_for_membership();
    qemu_io(
        &c.node(2).nbd_url("vm"),
        &["read -P 0x61 0 64k", "read -P 0x62 64k 64k", "write -P 0x65 0 4k"],
    );
    drop(second);
}

#[test]
fn a_snapshot_taken_while_attached_keeps_its_bytes_and_writes_go_on() {
    let c = Cluster::builder().nodes(2).nbd().start();
    c.format(2);
    c.dog_ok(&["vdi", "create", "live", "12M"]);
    let mut s = Session::open(&c.node(0).nbd_url("live"));
    s.run("write -P 0x31 0 8M", "wrote 8388608/8388608");
    // dog snapshots the VDI under the attached client, which then writes, discards and
    // zeroes: all of it lands in the new working VDI, none in the snapshot.
    c.dog_ok(&["vdi", "snapshot", "-s", "under", "live"]);
    s.run("write -P 0x32 0 4k", "wrote 4096/4096");
    s.run("discard 4M 4M", "discard 4194304/4194304");
    s.run("write -z -u 8M 4M", "wrote 4194304/4194304");
    s.close();
    let snap = c.read_vdi("live", 0, 8 * MIB, Some("under"));
    assert_same_bytes(
        "the snapshot taken under the client",
        &snap,
        &vec![0x31; 8 * MIB as usize],
    );
    let mut want = vec![0x31; 12 * MIB as usize];
    want[..4096].fill(0x32);
    want[4 * MIB as usize..].fill(0);
    assert_same_bytes("the working VDI", &c.read_vdi("live", 0, 12 * MIB, None), &want);
}

#[test]
fn a_flush_on_one_connection_covers_the_writes_of_another() {
    // With the object cache, an acknowledged write lives on the gateway only until a flush.
    let mut c = Cluster::builder().nodes(3).nbd().args(&["-w", "64M"]).start();
    c.format(3);
    c.dog_ok(&["vdi", "create", "mc", "8M"]);
    let url = c.node(0).nbd_url("mc");
    // The first write creates the object on the replicas; the overwrite is the cache's.
    qemu_io(&url, &["write -P 0x01 0 64k", "flush"]);
    let mut writer = Session::open(&url);
    writer.run("write -P 0x7e 4096 8k", "wrote 8192/8192");
    // A second writer on another connection to the export; its flush covers both.
    qemu_io(&url, &["write -P 0x7f 65536 4k", "flush"]);
    // The gateway dies before the writer flushes anything itself: its bytes must be on the
    // replicas already, because the other connection's flush covered them.
    c.kill(0);
    c.wait_for_membership();
    let got = c
        .dog_at(1, &["vdi", "read", "mc", "4096", "8192"], None)
        .expect_ok()
        .stdout;
    assert_same_bytes(
        "the writer's bytes after the other connection's flush",
        &got,
        &[0x7e; 8192],
    );
    let second = c
        .dog_at(1, &["vdi", "read", "mc", "65536", "4096"], None)
        .expect_ok()
        .stdout;
    assert_same_bytes("the flushing connection's own write", &second, &[0x7f; 4096]);
    drop(writer);
}

#[test]
fn a_replica_killed_mid_convert_loses_nothing() {
    let mut c = Cluster::builder().nodes(4).nbd().start();
    c.format(3);
    c.dog_ok(&["vdi", "create", "mig", "128M"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = tmp.path().join("img.raw");
    std::fs::write(&img, pseudo_random(5, 128 * MIB as usize)).expect("write image");
    let url = c.node(0).nbd_url("mig");
    let convert = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw", s(&img), &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-img");
    std::thread::sleep(Duration::from_millis(400));
    c.kill(3);
    let out = convert.wait_with_output().expect("qemu-img convert");
    assert!(
        out.status.success(),
        "qemu-img convert failed after a replica died: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_for_membership();
    tool_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", s(&img), &url]);
    // Through another gateway, once the first has seen its client go and freed the VDI.
    wait_until("a compare through node 2", Duration::from_secs(20), || {
        let out = tool(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "raw", s(&img), &c.node(2).nbd_url("mig")],
        );
        match out.success() {
            true => Ok(()),
            false if out.describe().contains("open for writing by another client") => Err(out.describe()),
            false => panic!("compare through node 2: {}", out.describe()),
        }
    });
}

#[test]
fn bad_input_gets_the_spec_errors_and_changes_nothing() {
    let c = Cluster::builder().nodes(2).nbd().start();
    c.format(2);
    c.dog_ok(&["vdi", "create", "t", "8M"]);
    let data = pseudo_random(3, 8 * MIB as usize);
    c.write_vdi("t", 0, &data);
    c.dog_ok(&["vdi", "snapshot", "t"]);
    let addr = c.node(0).nbd_addr();

    // Options: unknown ones, malformed ones, unknown exports; the session goes on after each.
    let mut n = Nbd::hello(addr, 3).expect("handshake");
    assert_eq!(n.option(99, &[]).0, ERR_UNSUP);
    assert_eq!(n.option(OPT_STRUCTURED_REPLY, b"x").0, ERR_INVALID);
    assert_eq!(n.option(OPT_LIST, b"x").0, ERR_INVALID);
    assert_eq!(n.option(OPT_GO, b"\0\0\0\x10ab").0, ERR_INVALID);
    let (code, msg) = n.option(OPT_GO, &go_data("nosuch"));
    assert_eq!(code, ERR_UNKNOWN, "{msg}");
    assert_eq!(n.option(OPT_ABORT, &[]).0, ACK);

    // Far too much option data: refused, then the server hangs up.
    let mut n = Nbd::hello(addr, 3).expect("handshake");
    n.send_option_header(OPT_GO, 1 << 20);
    assert_eq!(n.reply().0, ERR_TOO_BIG);
    assert!(n.closed(), "the connection stays open after a 1 MiB option");
    // Unknown client flags: the server hangs up at once.
    let mut n = Nbd::hello(addr, 1 << 9).expect("handshake");
    assert!(n.closed(), "unknown client flags accepted");

    // Transmission, simple replies (no structured replies negotiated).
    let mut n = Nbd::go(addr, "t", false).expect("GO t");
    assert_eq!(n.read(8 * MIB - 4096, 4097).err(), Some(EINVAL), "read past the end");
    assert_eq!(n.read(0, 33 * MIB as u32).err(), Some(EINVAL), "read over the maximum");
    assert_eq!(n.request(42, 0, 0, 0, &[]), EINVAL, "unknown command");
    assert_eq!(
        n.request(CMD_WRITE, 1 << 1, 0, 4096, &[0xee; 4096]),
        EINVAL,
        "NO_HOLE on a write"
    );
    assert_eq!(
        n.request(CMD_READ, 1 << 2, 0, 4096, &[]),
        EINVAL,
        "DF without structured replies"
    );
    assert_eq!(n.write(8 * MIB - 1, &[0xee; 2], 0), ENOSPC, "write past the end");
    assert_eq!(
        n.request(CMD_WRITE, 0, 0, (33 * MIB) as u32, &vec![0xee; (33 * MIB) as usize]),
        EINVAL,
        "write over the maximum"
    );
    // Still in step after all of that.
    assert_eq!(n.read(0, 4096).expect("read after bad requests"), &data[..4096]);
    // A snapshot refuses writes.
    let mut snap = Nbd::go(addr, "t@1", true).expect("GO t@1");
    assert_eq!(snap.write(0, &[0xee; 4096], 0), EPERM);
    assert_eq!(snap.request(CMD_TRIM, 0, 0, 4 * MIB as u32, &[]), EPERM);
    drop(snap);
    // Out of step: garbage instead of a request ends that connection only.
    n.sock.write_all(&[0xff; 28]).expect("send garbage");
    assert!(n.closed(), "the server kept a connection that sent garbage");
    // A client that vanishes in the middle of a write's payload.
    let mut gone = Nbd::go(addr, "t", true).expect("GO t");
    let mut head = request_header(CMD_WRITE, 0, 7, 0, 1 << 20);
    head.extend_from_slice(&[0xee; 1000]);
    gone.sock.write_all(&head).expect("send half a write");
    drop(gone);

    // The daemon still serves, and nothing stored changed.
    let mut n = Nbd::go(addr, "t", true).expect("GO t after the bad clients");
    assert_eq!(n.read(0, 4096).expect("structured read"), &data[..4096]);
    drop(n);
    let now = c.dog_at(1, &["vdi", "read", "t"], None).expect_ok().stdout;
    assert_same_bytes("t after the bad input", &now, &data);
}

// ---------------------------------------------------------------------------------------------
// A raw NBD client, for what the real clients never send.

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const ACK: u32 = 1;
const REP_INFO: u32 = 3;
const ERR_UNSUP: u32 = 0x8000_0001;
const ERR_INVALID: u32 = 0x8000_0003;
const ERR_UNKNOWN: u32 = 0x8000_0006;
const ERR_TOO_BIG: u32 = 0x8000_0009;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_TRIM: u16 = 4;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

struct Nbd {
    sock: TcpStream,
    structured: bool,
    cookie: u64,
}

fn go_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

fn request_header(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

impl Nbd {
    /// Connects and sends `client_flags` after the server's greeting.
    fn hello(addr: SocketAddr, client_flags: u32) -> std::io::Result<Nbd> {
        let mut sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut greeting = [0u8; 18];
        sock.read_exact(&mut greeting)?;
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(u64::from_be_bytes(greeting[8..16].try_into().expect("8")), IHAVEOPT);
        assert_eq!(
            u16::from_be_bytes([greeting[16], greeting[17]]),
            3,
            "FIXED_NEWSTYLE | NO_ZEROES"
        );
        sock.write_all(&client_flags.to_be_bytes())?;
        Ok(Nbd {
            sock,
            structured: false,
            cookie: 0,
        })
    }

    /// A session on export `name`, with structured replies or not.
    fn go(addr: SocketAddr, name: &str, structured: bool) -> Result<Nbd, String> {
        let mut n = Nbd::hello(addr, 3).map_err(|e| e.to_string())?;
        if structured {
            let (code, _) = n.option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(code, ACK);
            n.structured = true;
        }
        n.send_option_header(OPT_GO, go_data(name).len() as u32);
        n.sock.write_all(&go_data(name)).map_err(|e| e.to_string())?;
        loop {
            match n.reply() {
                (REP_INFO, _) => continue,
                (ACK, _) => return Ok(n),
                (code, msg) => return Err(format!("GO {name}: {code:#x} {msg}")),
            }
        }
    }

    fn send_option_header(&mut self, option: u32, len: u32) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        self.sock.write_all(&b).expect("send an option");
    }

    /// Sends an option, returns the type and text of its (first) reply.
    fn option(&mut self, option: u32, data: &[u8]) -> (u32, String) {
        self.send_option_header(option, data.len() as u32);
        self.sock.write_all(data).expect("send option data");
        self.reply()
    }

    fn reply(&mut self) -> (u32, String) {
        let mut h = [0u8; 20];
        self.sock.read_exact(&mut h).expect("option reply");
        assert_eq!(u64::from_be_bytes(h[..8].try_into().expect("8")), 0x0003_e889_0455_65a9);
        let kind = u32::from_be_bytes(h[12..16].try_into().expect("4"));
        let len = u32::from_be_bytes(h[16..20].try_into().expect("4"));
        let mut d = vec![0u8; len as usize];
        self.sock.read_exact(&mut d).expect("option reply data");
        (kind, String::from_utf8_lossy(&d).into_owned())
    }

    /// True once the server has closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Sends a request and returns the error of its reply (0: success), reading READ data.
    fn request(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u32 {
        self.exchange(kind, flags, offset, len, payload).0
    }

    fn exchange(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        self.cookie += 1;
        let mut b = request_header(kind, flags, self.cookie, offset, len);
        b.extend_from_slice(payload);
        self.sock.write_all(&b).expect("send a request");
        let mut magic = [0u8; 4];
        self.sock.read_exact(&mut magic).expect("reply magic");
        match u32::from_be_bytes(magic) {
            0x6744_6698 => {
                let mut h = [0u8; 12];
                self.sock.read_exact(&mut h).expect("simple reply");
                assert_eq!(u64::from_be_bytes(h[4..].try_into().expect("8")), self.cookie);
                let error = u32::from_be_bytes(h[..4].try_into().expect("4"));
                let mut data = Vec::new();
                if kind == CMD_READ && error == 0 {
                    data = vec![0u8; len as usize];
                    self.sock.read_exact(&mut data).expect("read data");
                }
                (error, data)
            }
            0x668e_33ef => {
                assert!(self.structured, "a structured reply without negotiation");
                let mut h = [0u8; 16];
                self.sock.read_exact(&mut h).expect("chunk header");
                assert_eq!(u16::from_be_bytes([h[0], h[1]]) & 1, 1, "one chunk, DONE");
                let ty = u16::from_be_bytes([h[2], h[3]]);
                assert_eq!(u64::from_be_bytes(h[4..12].try_into().expect("8")), self.cookie);
                let n = u32::from_be_bytes(h[12..16].try_into().expect("4"));
                let mut body = vec![0u8; n as usize];
                self.sock.read_exact(&mut body).expect("chunk body");
                match ty {
                    1 => {
                        assert_eq!(u64::from_be_bytes(body[..8].try_into().expect("8")), offset);
                        (0, body[8..].to_vec())
                    }
                    0 => (0, Vec::new()),
                    0x8001 => (u32::from_be_bytes(body[..4].try_into().expect("4")), Vec::new()),
                    other => panic!("unexpected chunk type {other}"),
                }
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        match self.exchange(CMD_READ, 0, offset, len, &[]) {
            (0, d) => Ok(d),
            (e, _) => Err(e),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> u32 {
        self.request(CMD_WRITE, flags, offset, data.len() as u32, data)
    }
}

#[test]
fn raw_client_round_trip_with_fua_and_structured_reads() {
    let c = Cluster::builder().nodes(1).nbd().start();
    c.format(1);
    c.dog_ok(&["vdi", "create", "r", "12M"]);
    let mut n = Nbd::go(c.node(0).nbd_addr(), "r", true).expect("GO r");
    let d = pseudo_random(9, 3 * MIB as usize);
    assert_eq!(n.write(OBJ - MIB, &d, 1), 0, "a FUA write across an object boundary");
    assert_eq!(n.read(OBJ - MIB, d.len() as u32).expect("read back"), d);
    assert_eq!(n.read(0, 4096).expect("a hole"), vec![0u8; 4096]);
    assert_eq!(n.read(OBJ - MIB, 0).expect("an empty read"), Vec::<u8>::new());
}
