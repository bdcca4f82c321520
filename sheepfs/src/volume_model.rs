//! The volume core against a model: random writes, reads, snapshots and clones over the
//! in-memory backend must read back exactly what a plain byte vector holds.

use std::sync::Arc;

use protocol::requests::NewVdi;
use protocol::Vid;
use volume::{ObjectIo, Volume, DEFAULT_CHUNK};

use crate::memory::MemoryBackend;
use proptest::prelude::*;

const SIZE: u64 = 5 << 20;
/// Not a divisor of the 1 MiB objects' unaligned pieces: requests are cut often.
const TEST_CHUNK: u32 = 192 << 10;

#[derive(Debug, Clone)]
enum Op {
    Write {
        vol: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Read {
        vol: usize,
        offset: u64,
        len: u32,
    },
    /// WRITE_ZEROES (punch) or a discard.
    Zero {
        vol: usize,
        offset: u64,
        len: u64,
        punch: bool,
        discard: bool,
    },
    /// Through the volume, or by another client (`external`), which the volume notices at
    /// its next change.
    Snapshot {
        vol: usize,
        external: bool,
    },
    Clone {
        snap: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..4, 0..SIZE, 1usize..(3 << 20), any::<u8>()).prop_map(|(vol, offset, len, seed)| Op::Write { vol, offset, len, seed }),
        3 => (0usize..4, 0..SIZE + 10, 0u32..(3 << 20)).prop_map(|(vol, offset, len)| Op::Read { vol, offset, len }),
        2 => (0usize..4, 0..SIZE, 1u64..(3 << 20), any::<bool>(), any::<bool>()).prop_map(|(vol, offset, len, punch, discard)| Op::Zero { vol, offset, len, punch, discard }),
        1 => (0usize..4, any::<bool>()).prop_map(|(vol, external)| Op::Snapshot { vol, external }),
        1 => (0usize..4).prop_map(|snap| Op::Clone { snap }),
    ]
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn run(ops: Vec<Op>) {
    let b = Arc::new(MemoryBackend::default());
    b.new_vdi(
        "v0",
        NewVdi {
            size: SIZE,
            block_size_shift: 20,
            ..NewVdi::default()
        },
    )
    .await
    .expect("create");
    // Working volumes with their models; snapshots with theirs (frozen).
    let mut vols = vec![(
        Volume::open(b.clone(), "v0", None, TEST_CHUNK).await.expect("open"),
        vec![0u8; SIZE as usize],
    )];
    let mut snaps: Vec<(Volume<MemoryBackend>, Vec<u8>, String, u32)> = Vec::new();
    for op in ops {
        match op {
            Op::Write { vol, offset, len, seed } => {
                let n = vols.len();
                let (v, model) = &mut vols[vol % n];
                let data = bytes(len, seed);
                let r = v.write(offset, &data).await;
                if offset + len as u64 > SIZE {
                    assert_eq!(r.map_err(|e| e.errno).err(), Some(libc::ENOSPC));
                } else {
                    assert_eq!(r.expect("write"), len);
                    model[offset as usize..offset as usize + len].copy_from_slice(&data);
                }
            }
            Op::Zero {
                vol,
                offset,
                len,
                punch,
                discard,
            } => {
                let n = vols.len();
                let (v, model) = &mut vols[vol % n];
                let r = if discard {
                    v.discard(offset, len).await
                } else {
                    v.write_zeroes(offset, len, punch).await
                };
                if offset + len > SIZE {
                    assert_eq!(r.map_err(|e| e.errno).err(), Some(libc::ENOSPC));
                    continue;
                }
                r.expect("zero");
                // A discard clears the objects it covers whole and leaves the rest alone.
                let obj = 1u64 << 20;
                let (lo, hi) = if discard {
                    (offset.div_ceil(obj) * obj, (offset + len) / obj * obj)
                } else {
                    (offset, offset + len)
                };
                if lo < hi {
                    model[lo as usize..hi as usize].fill(0);
                }
            }
            Op::Read { vol, offset, len } => {
                let (v, model) = &vols[vol % vols.len()];
                let got = v.read(offset, len).await.expect("read");
                // What the map says has no data reads as zeros, and the runs cover the read.
                let runs = v.allocation(offset, len.into()).await.expect("allocation");
                assert_eq!(runs.iter().map(|r| r.0).sum::<u64>(), got.len() as u64);
                let mut at = 0usize;
                for (n, data) in runs {
                    let n = n as usize;
                    assert!(
                        data || got[at..at + n].iter().all(|&b| b == 0),
                        "a hole with data at {offset}+{at}"
                    );
                    at += n;
                }
                let start = (offset as usize).min(model.len());
                let end = (offset as usize + len as usize).min(model.len());
                assert_eq!(got, &model[start..end]);
            }
            Op::Snapshot { vol, external } => {
                let i = vol % vols.len();
                let name = v_name(i);
                if external {
                    b.snapshot(&name, "").await.expect("snapshot by another client");
                } else {
                    vols[i].0.snapshot("").await.expect("snapshot");
                }
                // The new working VDI's snap_id is one past the snapshot's.
                let working = b.vdi_info(&name, 0).await.expect("working").vid;
                let sid = b
                    .inode(Vid::new(working).expect("vid"))
                    .await
                    .expect("inode")
                    .header
                    .snap_id
                    - 1;
                let s = Volume::open(b.clone(), &name, Some(sid), TEST_CHUNK)
                    .await
                    .expect("open snapshot");
                snaps.push((s, vols[i].1.clone(), name, sid));
            }
            Op::Clone { snap } => {
                if snaps.is_empty() || vols.len() >= 4 {
                    continue;
                }
                let (s, model, _, _) = &snaps[snap % snaps.len()];
                let name = v_name(vols.len());
                s.clone_to(&name).await.expect("clone");
                let model = model.clone();
                vols.push((
                    Volume::open(b.clone(), &name, None, TEST_CHUNK)
                        .await
                        .expect("open clone"),
                    model,
                ));
            }
        }
    }
    // Every snapshot still reads what it held when it was taken, and refuses writes.
    for (s, model, name, sid) in &snaps {
        assert_eq!(
            &s.read(0, SIZE as u32).await.expect("read snapshot"),
            model,
            "{name} snapshot {sid}"
        );
        assert_eq!(s.write(0, b"x").await.map_err(|e| e.errno).err(), Some(libc::EROFS));
    }
    for (v, model) in &vols {
        assert_eq!(&v.read(0, SIZE as u32).await.expect("read"), model);
    }
}

fn v_name(i: usize) -> String {
    format!("v{i}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn volume_matches_a_vec_model(ops in proptest::collection::vec(op(), 1..24)) {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(run(ops));
    }
}

#[tokio::test]
async fn resize_grows_and_refuses_to_shrink() {
    let b = Arc::new(MemoryBackend::default());
    b.new_vdi(
        "g",
        NewVdi {
            size: 1 << 20,
            block_size_shift: 20,
            ..NewVdi::default()
        },
    )
    .await
    .expect("create");
    let v = Volume::open(b.clone(), "g", None, DEFAULT_CHUNK).await.expect("open");
    v.write(0, b"keep").await.expect("write");
    assert_eq!(v.resize(1 << 19).await.map_err(|e| e.errno).err(), Some(libc::EINVAL));
    assert_eq!(v.size().await, 1 << 20);
    v.resize(3 << 20).await.expect("grow");
    v.write((3 << 20) - 4, b"tail").await.expect("write at the new end");
    let reopened = Volume::open(b, "g", None, DEFAULT_CHUNK).await.expect("reopen");
    assert_eq!(reopened.size().await, 3 << 20);
    assert_eq!(reopened.read(0, 4).await.expect("read"), b"keep");
    assert_eq!(reopened.read((3 << 20) - 4, 4).await.expect("read"), b"tail");
}
