//! Entry points for the fuzzers in `fuzz/` (cargo-fuzz, nightly) and for the stable test
//! that replays their committed corpora (`tests/tests/fuzz_corpora.rs`). Each takes any
//! bytes and must neither panic nor loop; where a parse succeeds, what it built must encode
//! back to what it came from.

use protocol::attr::VdiAttr;
use protocol::cluster::{ClusterInfo, EpochRecord};
use protocol::header::HEADER_SIZE;
use protocol::inode::{Inode, InodeHeader};
use protocol::node::Node;
use protocol::stats::{decode_md_info, NodeStat};
use protocol::{RequestHeader, ResponseHeader};

/// A fuzz target: any bytes in, a panic out only for a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("headers", headers),
    ("records", records),
    ("inode", inode),
    ("vdi_payloads", vdi_payloads),
    ("nbd_options", nbd_options),
    ("control_files", control_files),
    ("backup_stream", backup_stream),
];

/// Request and response headers, with every typed view of the union.
pub fn headers(data: &[u8]) {
    let Some(b) = data
        .get(..HEADER_SIZE)
        .and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok())
    else {
        return;
    };
    let req = RequestHeader::decode(b);
    assert_eq!(&req.encode()[..], &b[..], "a request header encodes back to its bytes");
    let _ = (
        req.obj(),
        req.vdi(),
        req.cluster(),
        req.forw(),
        req.payload_len(),
        req.reply_capacity(),
    );
    let rsp = ResponseHeader::decode(b);
    assert_eq!(&rsp.encode()[..], &b[..], "a response header encodes back to its bytes");
    let _ = (
        rsp.vdi_id(),
        rsp.attr_id(),
        rsp.hash(),
        rsp.store_size(),
        rsp.result_code(),
    );
}

/// Node and epoch records, cluster info, the statistics replies, attribute records.
pub fn records(data: &[u8]) {
    for n in Node::decode_list(data) {
        assert_eq!(Node::decode(&n.encode()), Some(n.clone()), "a node record round-trips");
    }
    let nodes_nr = data.first().map_or(0, |&n| usize::from(n) % 8);
    let _ = EpochRecord::decode_all(data, nodes_nr);
    let _ = ClusterInfo::decode(data);
    if let Some(s) = NodeStat::decode(data) {
        assert_eq!(NodeStat::decode(&s.encode()), Some(s));
    }
    let _ = decode_md_info(data);
    if let Some(a) = VdiAttr::decode(data) {
        assert_eq!(VdiAttr::decode(&a.encode()), Some(a), "an attribute record round-trips");
    }
}

/// Inode objects: the header and the object map.
pub fn inode(data: &[u8]) {
    if let Some(h) = InodeHeader::decode(data) {
        let _ = (h.object_size(), h.nr_objects(), h.is_snapshot());
    }
    let _ = Inode::decode(data);
}

/// The name (and tag) payloads of the VDI ops a sheep serves.
pub fn vdi_payloads(data: &[u8]) {
    if let Ok((name, tag)) = sheep::vdi::name_and_tag(data) {
        assert!(!name.is_empty() && name.len() <= 256 && tag.len() <= 256);
    }
    let _ = sheep::vdi::parse_name(data);
}

/// The option payloads of the NBD handshake.
pub fn nbd_options(data: &[u8]) {
    let _ = sheep::nbd::wire::parse_info_request(data);
    let _ = sheep::nbd::wire::parse_meta_request(data);
    if let Some(b) = data
        .get(..sheep::nbd::wire::REQUEST_SIZE)
        .and_then(|b| b.try_into().ok())
    {
        let _ = sheep::nbd::wire::Request::decode(b);
    }
}

/// What may be written to sheepfs's control files.
pub fn control_files(data: &[u8]) {
    if let Ok(tag) = sheepfs::control::parse_snapshot(data) {
        assert!(tag.len() <= 256);
    }
    let _ = sheepfs::control::parse_switch(data);
    if let Ok(name) = sheepfs::control::parse_clone(data) {
        assert!(sheepfs::control::check_name(&name).is_ok());
    }
}

/// `dog vdi restore`'s check of a backup stream, for VDIs of a few shapes: what it accepts
/// really is a header, well-formed records and an end record.
pub fn backup_stream(data: &[u8]) {
    use protocol::backup::{check, Record, END, HEADER_SIZE, RECORD_SIZE};
    for (nr, obj) in [(16u64, 4u64 << 20), (1, 1 << 20), (1 << 20, 1 << 31)] {
        let Ok(sum) = check(&mut &data[..], nr, obj) else {
            continue;
        };
        // Accepted: walking it by hand lands exactly on its end record.
        let mut at = HEADER_SIZE;
        for _ in 0..sum.records {
            let (r, _) = Record::decode(data[at..at + RECORD_SIZE].try_into().expect("a record"));
            assert!(r.idx != END && u64::from(r.idx) < nr);
            at += RECORD_SIZE + r.length as usize;
        }
        assert_eq!(
            Record::decode(data[at..].try_into().expect("the end record")).0,
            Record::END
        );
    }
}
