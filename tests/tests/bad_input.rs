//! Malformed traffic and bad commands change nothing and do not take a node down.

use std::io::ErrorKind;
use std::time::Duration;

use protocol::node::{Node, NODE_SIZE, SD_MAX_NODES};
use protocol::{flags, op, ObjArgs, RequestHeader, ResultCode, Vid};
use tests::{assert_same_bytes, proc_status_kb, pseudo_random, Cluster, RawConn};

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

fn node_list_req() -> RequestHeader {
    let mut h = RequestHeader::new(op::GET_NODE_LIST);
    h.data_length = (SD_MAX_NODES * NODE_SIZE) as u32;
    h
}

/// A connection that is still usable answers GET_NODE_LIST with every node.
#[track_caller]
fn assert_usable(conn: &mut RawConn, c: &Cluster, after: &str) {
    let (h, data) = conn
        .exchange(&node_list_req(), &[], SD_MAX_NODES * NODE_SIZE)
        .unwrap_or_else(|e| panic!("connection unusable after {after}: {e}"));
    assert_eq!(h.result_code(), ResultCode::SUCCESS, "GET_NODE_LIST after {after}");
    assert_eq!(Node::decode_list(&data).len(), c.len(), "GET_NODE_LIST after {after}");
}

fn write_obj_header(oid: u64, offset: u32, data_length: u32, opcode: u8) -> RequestHeader {
    let mut h = RequestHeader::new(opcode);
    h.flags = flags::WRITE;
    h.data_length = data_length;
    h.set_obj(&ObjArgs {
        oid,
        offset,
        ..ObjArgs::default()
    });
    h
}

#[test]
fn malformed_requests_do_not_hurt_the_node() {
    let mut c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "16M"]);
    let mut model = vec![0u8; (16 * MIB) as usize];
    let data = pseudo_random(31, (8 * MIB) as usize);
    c.write_vdi("alpha", 0, &data);
    model[..data.len()].copy_from_slice(&data);
    let vid = Vid::new(c.vdi_id(0, "alpha", 0).expect("GET_VDI_INFO alpha")).expect("vid");
    let addr = c.node(0).addr();
    let pid = c.node(0).pid().expect("node 0 runs");
    let peak_before = proc_status_kb(pid, "VmPeak").expect("VmPeak of node 0");

    // 1. Garbage, then a half-close; whatever comes back is fine, the node must survive.
    {
        let mut conn = RawConn::connect(addr, TIMEOUT);
        conn.send_bytes(&pseudo_random(32, 4096)).expect("sending garbage");
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        let _ = conn.drain();
    }

    // 2. A truncated header, then close.
    {
        let mut conn = RawConn::connect(addr, TIMEOUT);
        conn.send_bytes(&node_list_req().encode()[..20])
            .expect("sending 20 header bytes");
    }

    // 3. Unknown opcode below 0x80: INVALID_PARMS, id echoed, no payload; connection usable.
    {
        let mut conn = RawConn::connect(addr, TIMEOUT);
        let mut h = RequestHeader::new(0x50);
        h.proto_ver = 2;
        h.id = 0x1234;
        h.data_length = 4096;
        let (r, payload) = conn.exchange(&h, &[], 4096).expect("reply to unknown opcode 0x50");
        assert_eq!(r.result_code(), ResultCode::INVALID_PARMS, "opcode 0x50");
        assert_eq!(r.id, 0x1234, "reply id for opcode 0x50");
        assert!(payload.is_empty(), "opcode 0x50 reply has a payload");
        assert_usable(&mut conn, &c, "opcode 0x50");
    }

    // 4. Unknown opcode at or above 0x80: NO_SUPPORT or INVALID_PARMS; connection usable.
    {
        let mut conn = RawConn::connect(addr, TIMEOUT);
        let mut h = RequestHeader::new(0xf0);
        h.proto_ver = 0x0a;
        let (r, payload) = conn.exchange(&h, &[], 0).expect("reply to unknown opcode 0xf0");
        assert!(
            r.result_code() == ResultCode::NO_SUPPORT || r.result_code() == ResultCode::INVALID_PARMS,
            "opcode 0xf0 got {}",
            r.result_code()
        );
        assert!(payload.is_empty());
        assert_usable(&mut conn, &c, "opcode 0xf0");
    }

    // 5. Wrong proto_ver: 2 or 0 for an opcode >= 0x80, 3 for one below.
    {
        let mut conn = RawConn::connect(addr, TIMEOUT);
        for pv in [2u8, 0] {
            let mut h = node_list_req();
            h.proto_ver = pv;
            let (r, payload) = conn
                .exchange(&h, &[], SD_MAX_NODES * NODE_SIZE)
                .unwrap_or_else(|e| panic!("reply to GET_NODE_LIST with pv {pv}: {e}"));
            assert_eq!(
                r.result_code(),
                ResultCode::VER_MISMATCH,
                "GET_NODE_LIST with proto_ver {pv}"
            );
            assert!(payload.is_empty());
        }
        let mut h = RequestHeader::new(op::READ_VDIS);
        h.proto_ver = 3;
        h.data_length = protocol::bitmap::BITMAP_BYTES as u32;
        let (r, _) = conn
            .exchange(&h, &[], protocol::bitmap::BITMAP_BYTES)
            .expect("reply to READ_VDIS with pv 3");
        assert_eq!(r.result_code(), ResultCode::VER_MISMATCH, "READ_VDIS pv 3");
        assert_usable(&mut conn, &c, "version mismatches");
    }

    // 6. A WRITE announcing 0xFFFFFFFF payload bytes: refused (an error reply or a close)
    //    without waiting for, or allocating, 4 GiB.
    {
        let mut conn = RawConn::connect(addr, TIMEOUT);
        let h = write_obj_header(vid.data_oid(0).0, 0, u32::MAX, op::WRITE_OBJ);
        conn.send(&h, &[]).expect("sending the oversized header");
        match conn.read_reply(1 << 16) {
            Ok((r, _)) => assert_ne!(
                r.result_code(),
                ResultCode::SUCCESS,
                "a WRITE_OBJ announcing 4 GiB was accepted"
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "the node neither answered nor closed within {TIMEOUT:?} after a header \
                 announcing 0xFFFFFFFF payload bytes: it is waiting for them"
            ),
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                panic!("reply to the oversized header is malformed: {e}")
            }
            // EOF or reset: the node dropped the connection, which is a valid refusal.
            Err(_) => {}
        }
    }

    // 7. Promise 1 MiB, send 100 bytes, close: nothing of it may be applied, to an existing
    //    object (index 0) or as a new one (index 3, never written).
    for (idx, opcode) in [(0u32, op::WRITE_OBJ), (3, op::CREATE_AND_WRITE_OBJ)] {
        let mut conn = RawConn::connect(addr, TIMEOUT);
        let h = write_obj_header(vid.data_oid(idx).0, 0, MIB as u32, opcode);
        conn.send(&h, &[0xEE; 100]).expect("sending a truncated payload");
        drop(conn);
    }

    // The node is alive, did not balloon, and serves everyone as before.
    assert!(c.node_mut(0).is_running(), "node 0 died after the malformed requests");
    let peak_after = proc_status_kb(pid, "VmPeak").expect("VmPeak of node 0");
    assert!(
        peak_after.saturating_sub(peak_before) < 3 * 1024 * 1024,
        "node 0's peak virtual memory grew from {peak_before} kB to {peak_after} kB: \
         it allocated for the 4 GiB header"
    );
    for i in 0..c.len() {
        assert!(c.node_mut(i).is_running(), "node {i} died");
        let l = c.node_list(i).expect("GET_NODE_LIST after the malformed requests");
        assert_eq!(l.len(), c.len());
    }
    let got = c.dog_ok(&["vdi", "read", "alpha"]).stdout;
    assert_same_bytes("alpha after the malformed requests", &got, &model);
    let partial_new = vid.data_oid(3);
    let holders = c.object_holders();
    assert!(
        !holders.contains_key(&partial_new),
        "a CREATE_AND_WRITE_OBJ with a truncated payload left {partial_new} on nodes {:?}",
        holders.get(&partial_new)
    );
}

#[test]
fn dog_refuses_bad_commands_and_changes_nothing() {
    let c = Cluster::start_formatted(3, 3);
    c.dog_ok(&["vdi", "create", "alpha", "64M"]);
    let data = pseudo_random(41, (MIB + 3) as usize);
    c.write_vdi("alpha", 5, &data);
    let mut model = vec![0u8; (64 * MIB) as usize];
    model[5..5 + data.len()].copy_from_slice(&data);
    let list_before = c.dog_ok(&["vdi", "list", "-r"]).stdout;

    let check_unchanged = |after: &str| {
        let list = c.dog_ok(&["vdi", "list", "-r"]).stdout;
        assert_same_bytes(&format!("vdi list -r after {after}"), &list, &list_before);
        let got = c.dog_ok(&["vdi", "read", "alpha"]).stdout;
        assert_same_bytes(&format!("alpha after {after}"), &got, &model);
    };

    c.dog(&["vdi", "create", "alpha", "64M"]).expect_failure();
    check_unchanged("creating alpha again");
    c.dog(&["vdi", "create", "alpha", "128M"]).expect_failure();
    check_unchanged("creating alpha again with another size");

    c.dog(&["vdi", "read", "nosuch"]).expect_failure();
    c.dog(&["vdi", "read", "nosuch", "0", "4096"]).expect_failure();
    c.dog(&["vdi", "read", "alpha", "0", "4096", "-s", "7"])
        .expect_failure();
    check_unchanged("reading missing VDIs");

    c.dog(&["vdi", "resize", "alpha", "32M"]).expect_failure();
    check_unchanged("shrinking alpha");
    c.dog(&["vdi", "resize", "nosuch", "128M"]).expect_failure();
    check_unchanged("resizing a missing VDI");

    // Growing works, keeps the data, and the new range reads as zeros.
    c.dog_ok(&["vdi", "resize", "alpha", "128M"]);
    let list = c.vdi_list(0);
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0].size, 128 * MIB, "size after growing: {:?}", list[0].raw);
    model.resize((128 * MIB) as usize, 0);
    let got = c.dog_ok(&["vdi", "read", "alpha"]).stdout;
    assert_same_bytes("alpha after growing", &got, &model);
}

/// Peer writes from the past are refused, even when they claim to be recovery traffic: the
/// recovery flag lets only reads past the epoch check.
#[test]
fn stale_peer_writes_are_refused_even_as_recovery() {
    let c = Cluster::start_formatted(2, 2);
    c.dog_ok(&["vdi", "create", "p", "8M"]);
    let data = pseudo_random(41, 1 << 20);
    c.write_vdi("p", 0, &data);
    let oid = Vid::new(c.vid_of("p")).expect("vid").data_oid(0);
    let before = c.node(1).object_bytes(oid).expect("node 1 holds a copy");
    let epoch = c.cluster_info(0).expect("info").epoch;
    for opcode in [op::WRITE_PEER, op::CREATE_AND_WRITE_PEER, op::REMOVE_PEER] {
        let mut h = RequestHeader::new(opcode);
        h.epoch = epoch - 1;
        h.flags = flags::RECOVERY;
        let payload = if opcode == op::REMOVE_PEER {
            vec![]
        } else {
            vec![0xAB; 4096]
        };
        h.set_obj(&ObjArgs {
            oid: oid.0,
            ..ObjArgs::default()
        });
        let r = c.send(1, h, &payload).expect("a reply");
        assert_eq!(
            r.header.result_code(),
            ResultCode::OLD_NODE_VER,
            "{}",
            protocol::opcode::op_name(opcode)
        );
    }
    assert_eq!(c.node(1).object_bytes(oid), Some(before), "the copy is untouched");
    assert_eq!(c.read_vdi("p", 0, data.len() as u64, None), data);
}
