//! A live fuzz of the wire: several connections send random, truncated and mutated frames to
//! a running sheep for a bounded time (valid headers with wrong lengths, oversized
//! data_length, unknown opcodes and flags, peer ops with stale epochs). Afterwards the sheep
//! still serves, every object it stored is byte for byte what it was, and its memory stayed
//! bounded.
//!
//! Frames that would be valid requests to change data (a write with the right epoch, a
//! format, a shutdown) are turned into harmless ones before they are sent, at every place
//! the server will read a header, so "nothing changed" is what the sheep owes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::frame::MAX_PAYLOAD;
use protocol::header::HEADER_SIZE;
use protocol::{op, ObjArgs, Oid, RequestHeader, Vid};
use tests::{proc_status_kb, pseudo_random, Cluster};

/// How long the connections keep sending.
const RUN: Duration = Duration::from_secs(12);
const CONNECTIONS: usize = 6;
/// How much the sheep's resident memory may grow over the run.
const RSS_GROWTH_KB: u64 = 128 * 1024;

/// Ops that change stored data or the cluster when they are valid.
const CHANGES: &[u8] = &[
    op::CREATE_AND_WRITE_OBJ,
    op::WRITE_OBJ,
    op::REMOVE_OBJ,
    op::DISCARD_OBJ,
    op::NEW_VDI,
    op::LOCK_VDI,
    op::RELEASE_VDI,
    op::DEL_VDI,
    op::MAKE_FS,
    op::SHUTDOWN,
    op::GET_VDI_ATTR,
    op::REPAIR_REPLICA,
];
/// Peer ops that write: sent with a stale epoch (the recovery flag, if a mutation sets it,
/// must not get them past the epoch check).
const PEER_WRITES: &[u8] = &[op::CREATE_AND_WRITE_PEER, op::WRITE_PEER, op::REMOVE_PEER];
/// What a changing op becomes.
const HARMLESS: &[u8] = &[
    op::READ_OBJ,
    op::GET_VDI_INFO,
    op::GET_NODE_LIST,
    op::STAT_CLUSTER,
    op::GET_HASH,
    op::STAT,
    op::READ_PEER,
    op::GET_EPOCH,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Makes the header at `h` harmless (see the module comment).
fn defuse(h: &mut [u8]) {
    if PEER_WRITES.contains(&h[1]) {
        h[4..8].copy_from_slice(&0u32.to_le_bytes());
    } else if CHANGES.contains(&h[1]) {
        h[1] = HARMLESS[usize::from(h[0]) % HARMLESS.len()];
    }
}

/// Walks `stream` as the server will (header, then the payload it announces) and defuses
/// every header. Past an oversized announcement the server closes: nothing more is read.
fn defuse_stream(stream: &mut [u8]) {
    let mut at = 0;
    while at + HEADER_SIZE <= stream.len() {
        defuse(&mut stream[at..at + HEADER_SIZE]);
        let h = RequestHeader::decode(stream[at..at + HEADER_SIZE].try_into().expect("48 bytes"));
        if h.payload_len() > MAX_PAYLOAD {
            return;
        }
        at += HEADER_SIZE + h.payload_len() as usize;
    }
}

/// Requests a client might send, as starting points for mutation.
fn templates(oids: &[Oid], epoch: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut node_list = RequestHeader::new(op::GET_NODE_LIST);
    node_list.data_length = 4096;
    out.push(node_list.encode().to_vec());
    for &oid in oids {
        let mut read = RequestHeader::new(op::READ_OBJ);
        read.data_length = 4096;
        read.set_obj(&ObjArgs {
            oid: oid.0,
            offset: 512,
            ..ObjArgs::default()
        });
        out.push(read.encode().to_vec());
        let mut peer = RequestHeader::new(op::WRITE_PEER);
        peer.epoch = epoch;
        peer.flags = protocol::flags::WRITE;
        peer.data_length = 16;
        peer.set_obj(&ObjArgs {
            oid: oid.0,
            ..ObjArgs::default()
        });
        let mut f = peer.encode().to_vec();
        f.extend_from_slice(&[0xEE; 16]);
        out.push(f);
    }
    let mut info = RequestHeader::new(op::GET_VDI_INFO);
    info.flags = protocol::flags::WRITE;
    info.data_length = 256;
    let mut f = info.encode().to_vec();
    let mut name = vec![0u8; 256];
    name[..4].copy_from_slice(b"keep");
    f.extend_from_slice(&name);
    out.push(f);
    out
}

/// One batch of frames for one connection.
fn batch(rng: &mut Rng, templates: &[Vec<u8>]) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..1 + rng.below(6) {
        match rng.below(6) {
            // Random bytes.
            0 => s.extend(pseudo_random(rng.next(), 1 + rng.below(300) as usize)),
            // A valid header whose data_length disagrees with what follows.
            1 => {
                let mut f = templates[rng.below(templates.len() as u64) as usize].clone();
                let len = rng.below(8192) as u32;
                f[12..16].copy_from_slice(&len.to_le_bytes());
                f[2] |= 1;
                f.extend(pseudo_random(rng.next(), rng.below(u64::from(len) + 64) as usize));
                s.extend(f);
            }
            // An oversized announcement.
            2 => {
                let mut f = templates[rng.below(templates.len() as u64) as usize].clone();
                let len = MAX_PAYLOAD + 1 + rng.below(u64::from(u32::MAX - MAX_PAYLOAD - 1)) as u32;
                f[12..16].copy_from_slice(&len.to_le_bytes());
                f[2] |= 1;
                s.extend(&f[..HEADER_SIZE]);
                s.extend(pseudo_random(rng.next(), 100));
            }
            // Unknown opcodes and flags.
            3 => {
                let mut f = templates[0][..HEADER_SIZE].to_vec();
                f[1] = 0xd0 + rng.below(0x30) as u8;
                f[2..4].copy_from_slice(&(rng.next() as u16 & !1).to_le_bytes());
                s.extend(f);
            }
            // A truncated request.
            4 => {
                let f = &templates[rng.below(templates.len() as u64) as usize];
                s.extend(&f[..rng.below(f.len() as u64) as usize]);
            }
            // A mutated request: a few bytes flipped anywhere.
            _ => {
                let mut f = templates[rng.below(templates.len() as u64) as usize].clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(f.len() as u64) as usize;
                    f[i] ^= 1 << rng.below(8);
                }
                s.extend(f);
            }
        }
    }
    defuse_stream(&mut s);
    s
}

fn stored(c: &Cluster) -> BTreeMap<Oid, Vec<u8>> {
    let n = c.node(0);
    n.objects()
        .into_iter()
        .map(|o| (o, n.object_bytes(o).expect("object bytes")))
        .collect()
}

#[test]
fn random_truncated_and_mutated_frames_change_nothing() {
    let mut c = Cluster::start_formatted(1, 1);
    c.dog_ok(&["vdi", "create", "keep", "16M"]);
    c.write_vdi("keep", 0, &pseudo_random(31, 6 << 20));
    let vid = Vid::new(c.vid_of("keep")).expect("vid");
    let oids = [vid.inode_oid(), vid.data_oid(0), vid.data_oid(1)];
    let epoch = c.cluster_info(0).expect("info").epoch;
    let templates = templates(&oids, epoch);
    let before = stored(&c);
    let pid = c.node(0).pid().expect("running");
    let rss_before = proc_status_kb(pid, "VmRSS").expect("VmRSS");
    let addr: SocketAddr = c.node(0).addr();

    let sent = AtomicU64::new(0);
    let deadline = Instant::now() + RUN;
    let mut rss_peak = rss_before;
    std::thread::scope(|s| {
        for t in 0..CONNECTIONS {
            let (templates, sent) = (&templates, &sent);
            s.spawn(move || {
                let mut rng = Rng(0x5eed_0000 + t as u64);
                while Instant::now() < deadline {
                    let Ok(mut conn) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
                    let frames = batch(&mut rng, templates);
                    if conn.write_all(&frames).is_ok() {
                        sent.fetch_add(frames.len() as u64, Ordering::Relaxed);
                    }
                    let mut sink = [0u8; 65536];
                    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                }
            });
        }
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            rss_peak = rss_peak.max(proc_status_kb(pid, "VmRSS").unwrap_or(0));
        }
    });

    assert!(c.node_mut(0).is_running(), "the sheep died under the fuzz");
    assert_eq!(c.node_list(0).expect("still serving").len(), 1);
    assert_eq!(c.vdi_list(0).len(), 1, "no VDI appeared or vanished");
    assert!(stored(&c) == before, "what the sheep stored changed");
    assert!(
        rss_peak < rss_before + RSS_GROWTH_KB,
        "resident memory grew from {rss_before} kB to {rss_peak} kB"
    );
    println!(
        "sent {} bytes of fuzzed frames over {RUN:?}; RSS {rss_before} kB -> peak {rss_peak} kB",
        sent.load(Ordering::Relaxed)
    );
}
