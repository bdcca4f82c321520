//! Command sequences against the in-memory mock sheep: the traffic of PROTOCOL.md section 5
//! and the data that comes back.

use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use protocol::{flags, op};

use crate::cluster::{self, FormatOpts};
use crate::error::EXIT_USAGE;
use crate::mock::{Logged, Mock};
use crate::net::{self, data_oid, vdi_oid};
use crate::transfer::{self, WriteTarget};
use crate::vdi::{self, CreateOpts};
use sheep::dogcli::Snap;

const MIB4: u64 = 4 << 20;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn create_opts(name: &str, size: u64) -> CreateOpts {
    CreateOpts {
        name: name.into(),
        size,
        copies: None,
        block_size_shift: None,
        prealloc: false,
        verbose: false,
        raw: false,
    }
}

async fn format(m: &Mock) {
    let o = FormatOpts {
        copies: Some((1, 0)),
        block_size_shift: None,
        store: "plain".into(),
        force: true,
        strict: false,
        fixed_vnodes: false,
    };
    cluster::format(m.addr, &o).await.expect("format");
}

async fn write(m: &Mock, name: &str, offset: u64, bytes: &[u8]) -> u64 {
    let c = net::connect(m.addr).await.expect("connect");
    let (vid, inode) = vdi::open_vdi(&c, name, None).await.expect("open");
    let h = &inode.header;
    let t = WriteTarget {
        client: Arc::clone(&c),
        name: name.into(),
        vid,
        copies: h.nr_copies,
        copy_policy: h.copy_policy,
        extra_flags: 0,
    };
    let len = h.vdi_size - offset;
    transfer::write_range(
        &t,
        &inode.data_vdi_id,
        h.object_size(),
        offset,
        len,
        &mut Cursor::new(bytes),
    )
    .await
    .expect("write")
}

async fn read(m: &Mock, name: &str, snap: Option<&Snap>, offset: u64, len: u64) -> Vec<u8> {
    let c = net::connect(m.addr).await.expect("connect");
    let (_, inode) = vdi::open_vdi(&c, name, snap).await.expect("open");
    let mut out = Vec::new();
    transfer::read_range(
        &c,
        name,
        &inode.data_vdi_id,
        inode.header.object_size(),
        offset,
        len,
        &mut out,
    )
    .await
    .expect("read");
    out
}

fn ops(log: &[Logged]) -> Vec<u8> {
    log.iter().map(|l| l.opcode).collect()
}

/// Every create of a data object is followed (later) by the 4-byte update of its entry.
fn check_creates_then_entries(log: &[Logged], vid: u32) -> usize {
    let creates: Vec<(usize, u32)> = log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.opcode == op::CREATE_AND_WRITE_OBJ)
        .map(|(i, l)| (i, (l.oid & 0xffff_ffff) as u32))
        .collect();
    for &(at, idx) in &creates {
        let entry = log.iter().position(|l| {
            l.opcode == op::WRITE_OBJ
                && l.oid == vdi_oid(vid)
                && l.offset == 4664 + 4 * idx
                && l.data_length == 4
                && l.small == vid.to_le_bytes()
        });
        let entry = entry.unwrap_or_else(|| panic!("no entry update for index {idx}"));
        assert!(entry > at, "entry {idx} updated before its object was created");
    }
    creates.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_snapshot_clone_delete() {
    let m = Mock::start().await;
    format(&m).await;
    vdi::create(m.addr, &create_opts("test", 64 << 20))
        .await
        .expect("create");
    let e = vdi::create(m.addr, &create_opts("test", 64 << 20))
        .await
        .expect_err("exists");
    assert_eq!(e.msg, "Failed to create VDI test: VDI exists already");

    // 20 MiB + 123 bytes at an unaligned offset: objects 0 to 5, all new.
    let first = data((20 << 20) + 123, 1);
    let off = 1_000_003u64;
    m.clear_log();
    assert_eq!(write(&m, "test", off, &first).await, first.len() as u64);
    let log = m.log();
    assert_eq!(&ops(&log)[..2], &[op::GET_VDI_INFO, op::READ_OBJ]);
    assert_eq!(log[1].oid, vdi_oid(0x7c2b25));
    assert_eq!(log[1].data_length, 12_587_576);
    assert_eq!(log[1].flags, flags::DIRECT);
    assert_eq!(check_creates_then_entries(&log, 0x7c2b25), 6);
    let first_create = &log[2..]
        .iter()
        .find(|l| l.opcode == op::CREATE_AND_WRITE_OBJ && l.oid == data_oid(0x7c2b25, 0))
        .expect("create of object 0");
    assert_eq!(first_create.offset, off as u32);
    assert_eq!(first_create.data_length, (MIB4 - off) as u32);
    assert_eq!(first_create.flags, flags::WRITE);
    assert!(
        m.max_in_flight.load(Ordering::SeqCst) >= 2,
        "object requests were not concurrent"
    );

    // Read back, including the zeros before the data in object 0.
    assert_eq!(read(&m, "test", None, off, first.len() as u64).await, first);
    m.clear_log();
    let head = read(&m, "test", None, 0, off + 10).await;
    assert!(head[..off as usize].iter().all(|&b| b == 0));
    assert_eq!(&head[off as usize..], &first[..10]);
    let reads: Vec<_> = m
        .log()
        .into_iter()
        .filter(|l| l.opcode == op::READ_OBJ && l.oid >> 63 == 0)
        .collect();
    assert_eq!(reads.len(), 1);
    assert_eq!((reads[0].offset, reads[0].data_length), (0, off as u32 + 10));
    m.clear_log();
    let unwritten = read(&m, "test", None, 40 << 20, 8 << 20).await;
    assert!(unwritten.len() == 8 << 20 && unwritten.iter().all(|&b| b == 0));
    assert!(
        !m.log().iter().any(|l| l.opcode == op::READ_OBJ && l.oid >> 63 == 0),
        "unwritten objects are read without requests"
    );

    // Snapshot with a tag: NO_TAG, then the working VDI, the tag, NEW_VDI(snapid 1).
    m.clear_log();
    vdi::snapshot(m.addr, "test", Some("s1"), false, false)
        .await
        .expect("snapshot");
    let log = m.log();
    assert_eq!(
        ops(&log),
        [
            op::GET_VDI_INFO,
            op::GET_VDI_INFO,
            op::READ_OBJ,
            op::WRITE_OBJ,
            op::NEW_VDI
        ]
    );
    assert_eq!((log[2].offset, log[2].data_length), (0, 4664));
    assert_eq!((log[3].offset, log[3].data_length), (256, 256));
    assert_eq!(log[4].snapid, 1);
    let e = vdi::snapshot(m.addr, "test", Some("s1"), false, false)
        .await
        .expect_err("tag taken");
    assert!(e.msg.contains("is existed"), "{}", e.msg);

    // Copy-on-write into the new working VDI, then an in-place write.
    m.clear_log();
    write(&m, "test", off + 10, b"hello").await;
    let log = m.log();
    let cow = log
        .iter()
        .find(|l| l.opcode == op::CREATE_AND_WRITE_OBJ)
        .expect("cow create");
    assert_eq!(cow.flags, flags::WRITE | flags::COW);
    assert_eq!(cow.oid, data_oid(0x7c2b26, 0));
    assert_eq!(cow.cow_oid, data_oid(0x7c2b25, 0));
    assert_eq!(check_creates_then_entries(&log, 0x7c2b26), 1);
    m.clear_log();
    write(&m, "test", off + 20, b"again").await;
    let log = m.log();
    assert_eq!(ops(&log), [op::GET_VDI_INFO, op::READ_OBJ, op::WRITE_OBJ]);
    assert_eq!(log[2].oid, data_oid(0x7c2b26, 0));

    let now = read(&m, "test", None, off, 30).await;
    assert_eq!(&now[10..15], b"hello");
    assert_eq!(&now[20..25], b"again");
    let tag = Snap::Tag("s1".into());
    let then = read(&m, "test", Some(&tag), off, first.len() as u64).await;
    assert_eq!(then, first);
    let by_id = read(&m, "test", Some(&Snap::Id(1)), off, 30).await;
    assert_eq!(by_id, first[..30]);

    // Clone the snapshot; the clone reads as the snapshot.
    vdi::clone(m.addr, "test", &tag, "test2", false, false)
        .await
        .expect("clone");
    let c = net::connect(m.addr).await.expect("connect");
    let (vid2, _) = vdi::open_vdi(&c, "test2", None).await.expect("open clone");
    assert_eq!(vid2, 0xfd3815);
    assert_eq!(read(&m, "test2", None, off, 100).await, first[..100]);

    // Delete the clone: one run of 16 entries (objects 0-5 used), then DEL_VDI.
    m.clear_log();
    vdi::delete(m.addr, "test2", None).await.expect("delete");
    let log = m.log();
    assert_eq!(ops(&log), [op::GET_VDI_INFO, op::READ_OBJ, op::WRITE_OBJ, op::DEL_VDI]);
    assert_eq!(log[1].flags, 0, "the delete reads the inode without DIRECT");
    assert_eq!((log[2].offset, log[2].data_length), (4664, 64));
    assert_eq!(log[2].flags, flags::WRITE | flags::DIRECT);
    let e = vdi::delete(m.addr, "test2", None).await.expect_err("gone");
    assert_eq!(
        e.msg,
        "Failed to open VDI test2 (snapshot id: 0 snapshot tag: ): No VDI found"
    );
    // The snapshot's objects are still there.
    assert!(m.object(data_oid(0x7c2b25, 5)).is_some());

    // An empty VDI is deleted with one zero-length write after its last entry.
    vdi::create(m.addr, &create_opts("empty", 100 << 20))
        .await
        .expect("create");
    m.clear_log();
    vdi::delete(m.addr, "empty", None).await.expect("delete");
    let log = m.log();
    assert_eq!((log[2].offset, log[2].data_length), (4764, 0));
    assert_eq!(log[2].flags, flags::WRITE | flags::DIRECT);

    // Resize grows, never shrinks.
    vdi::resize(m.addr, "test", 128 << 20).await.expect("grow");
    let c = net::connect(m.addr).await.expect("connect");
    let (_, inode) = vdi::open_vdi(&c, "test", None).await.expect("open");
    assert_eq!(inode.header.vdi_size, 128 << 20);
    assert_eq!(inode.header.name, "test");
    let e = vdi::resize(m.addr, "test", 1 << 20).await.expect_err("shrink");
    assert_eq!(e.code, EXIT_USAGE);

    // Missing VDIs fail clearly.
    let c = net::connect(m.addr).await.expect("connect");
    let e = vdi::open_vdi(&c, "nope", None).await.expect_err("missing");
    assert_eq!(
        e.msg,
        "Failed to open VDI nope (snapshot id: 0 snapshot tag: ): No VDI found"
    );
    let e = vdi::open_vdi(&c, "test", Some(&Snap::Tag("nope".into())))
        .await
        .expect_err("missing tag");
    assert!(e.msg.ends_with("Failed to find requested tag"), "{}", e.msg);

    // `vdi list` walks only live VDIs: test, its snapshot, not the deleted ones.
    let mut seen = Vec::new();
    vdi::for_each_vdi(&c, true, |h, entries| {
        seen.push((h.name.clone(), h.vdi_id, h.is_snapshot(), entries.len()))
    })
    .await
    .expect("walk");
    assert_eq!(
        seen,
        [
            ("test".to_string(), 0x7c2b25, true, 16),
            ("test".to_string(), 0x7c2b26, false, 32)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_waits_for_format_and_preallocates() {
    let m = Mock::start().await;
    let e = vdi::create(m.addr, &create_opts("alpha", 1 << 30))
        .await
        .expect_err("not formatted");
    assert_eq!(e.msg, "Failed to create VDI alpha: Waiting for cluster to be formatted");
    format(&m).await;
    let e = vdi::create(m.addr, &create_opts("big", 5 << 40))
        .await
        .expect_err("too big");
    assert_eq!(e.code, EXIT_USAGE);

    m.clear_log();
    let o = CreateOpts {
        prealloc: true,
        block_size_shift: Some(20),
        ..create_opts("alpha", 10 << 20)
    };
    vdi::create(m.addr, &o).await.expect("create -P");
    let log = m.log();
    let vid = protocol::hash::sd_hash_vdi(b"alpha");
    // With -z the cluster info is not needed.
    assert!(!ops(&log).contains(&op::CLUSTER_INFO));
    let creates: Vec<_> = log.iter().filter(|l| l.opcode == op::CREATE_AND_WRITE_OBJ).collect();
    assert_eq!(creates.len(), 10);
    assert!(creates
        .iter()
        .all(|l| l.data_length == 0 && l.flags == flags::WRITE | flags::DIRECT));
    assert_eq!(check_creates_then_entries(&log, vid), 10);
    assert_eq!(m.object(data_oid(vid, 9)).map(|b| b.len()), Some(1 << 20));
    let back = read(&m, "alpha", None, 0, 10 << 20).await;
    assert!(back.iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_clear() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    let e = vdi::list(addr, None, false).await.expect_err("refused");
    assert!(
        e.msg.starts_with(&format!("Failed to connect to {addr}: ")),
        "{}",
        e.msg
    );
    assert_eq!(e.code, 1);
}
