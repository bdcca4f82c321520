//! Moving VDI data between stdin/stdout and objects with several object requests in flight
//! (PROTOCOL.md 5.6, 5.7 and the preallocation of 5.2).
//!
//! Reads keep their output in order with a FIFO of pending requests; writes finish in any
//! order, but each object's inode-entry update is sent only after its create succeeded.
//! At most [`WINDOW`] pieces (each at most [`MAX_PIECE`]) are held in memory at once.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use protocol::inode::data_vdi_id_offset;
use protocol::{flags, Client};
use tokio::task::{block_in_place, JoinError, JoinHandle, JoinSet};

use crate::error::{fail, Failure};
use crate::net::{self, data_oid, vdi_oid, ObjWrite};
use crate::span::{split_bounded, Piece, MAX_PIECE};

/// How many object requests may be in flight: 8 pieces of at most [`MAX_PIECE`] bytes.
const WINDOW: usize = 8;

fn joined<T>(r: Result<Result<T, Failure>, JoinError>) -> Result<T, Failure> {
    r.map_err(|e| Failure::new(format!("internal error: an I/O task failed: {e}")))?
}

/// Reads `len` bytes at `offset` of a VDI whose index table is `entries` and writes them to
/// `out` in order. Objects never written read as zeros without a request.
pub async fn read_range(
    c: &Arc<Client>,
    name: &str,
    entries: &[u32],
    obj_size: u64,
    offset: u64,
    len: u64,
    out: &mut impl Write,
) -> Result<(), Failure> {
    enum Slot {
        Zeros(u32),
        Pending(JoinHandle<Result<Vec<u8>, Failure>>),
    }
    let mut queue: VecDeque<Slot> = VecDeque::with_capacity(WINDOW);
    let mut pieces = split_bounded(offset, len, obj_size);
    let mut zeros: Vec<u8> = Vec::new();
    let result = loop {
        while queue.len() < WINDOW {
            let Some(Piece { idx, offset, len }) = pieces.next() else {
                break;
            };
            let owner = entries.get(idx as usize).copied().unwrap_or(0);
            if owner == 0 {
                queue.push_back(Slot::Zeros(len));
                continue;
            }
            let c = Arc::clone(c);
            let name = name.to_string();
            let oid = data_oid(owner, idx);
            queue.push_back(Slot::Pending(tokio::spawn(async move {
                net::read_obj(&c, oid, offset, len, false)
                    .await
                    .map_err(|e| fail(format!("Failed to read VDI {name} (object {oid:016x})"), &e))
            })));
        }
        let Some(slot) = queue.pop_front() else {
            break Ok(());
        };
        let written = match slot {
            Slot::Zeros(n) => {
                let n = n as usize;
                if zeros.len() < n {
                    zeros.resize(n, 0);
                }
                block_in_place(|| out.write_all(&zeros[..n]))
            }
            Slot::Pending(h) => match joined(h.await) {
                Ok(buf) => block_in_place(|| out.write_all(&buf)),
                Err(f) => break Err(f),
            },
        };
        if let Err(e) = written {
            break Err(Failure::new(format!("Failed to write to stdout: {e}")));
        }
    };
    for slot in queue {
        if let Slot::Pending(h) = slot {
            h.abort();
        }
    }
    result?;
    block_in_place(|| out.flush()).map_err(|e| Failure::new(format!("Failed to write to stdout: {e}")))
}

/// Reads from `r` until `buf` is full or the input ends; returns the bytes read.
pub fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The VDI a write goes to.
#[derive(Clone)]
pub struct WriteTarget {
    pub client: Arc<Client>,
    pub name: String,
    pub vid: u32,
    pub copies: u8,
    pub copy_policy: u8,
    /// CACHE with `-w`, else 0.
    pub extra_flags: u16,
}

impl WriteTarget {
    /// FLUSH_VDI: what was written is durable on every replica once this returns.
    pub async fn flush(&self) -> Result<(), Failure> {
        let vid = protocol::Vid::new(self.vid)
            .ok_or_else(|| Failure::new(format!("VDI {} has a bad id {:#x}", self.name, self.vid)))?;
        self.client
            .flush_vdi(vid)
            .await
            .map_err(|e| fail(format!("Failed to flush VDI {}", self.name), &e))
    }

    /// Writes one piece: in place if the object is the VDI's own, otherwise creates it (as a
    /// copy of the owner's object when there is one) and then points the inode entry at it.
    async fn write_piece(&self, p: Piece, owner: u32, data: Vec<u8>) -> Result<(), Failure> {
        let oid = data_oid(self.vid, p.idx);
        let own = owner == self.vid;
        let w = ObjWrite {
            oid,
            cow_oid: if own || owner == 0 { 0 } else { data_oid(owner, p.idx) },
            data: &data,
            offset: p.offset,
            flags: self.extra_flags,
            copies: self.copies,
            copy_policy: self.copy_policy,
            create: !own,
        };
        let context = || format!("Failed to write VDI {} (object {oid:016x})", self.name);
        net::write_obj(&self.client, &w)
            .await
            .map_err(|e| fail(context(), &e))?;
        if !own {
            self.set_entry(p.idx, self.extra_flags).await?;
        }
        Ok(())
    }

    /// Points inode entry `idx` at this VDI: WRITE_OBJ of 4 bytes at `4664 + 4 * idx`.
    async fn set_entry(&self, idx: u32, flags: u16) -> Result<(), Failure> {
        let vid = self.vid.to_le_bytes();
        let w = ObjWrite {
            oid: vdi_oid(self.vid),
            cow_oid: 0,
            data: &vid,
            offset: data_vdi_id_offset(idx),
            flags,
            copies: self.copies,
            copy_policy: self.copy_policy,
            create: false,
        };
        net::write_obj(&self.client, &w).await.map_err(|e| {
            fail(
                format!("Failed to update the inode of VDI {} (entry {idx})", self.name),
                &e,
            )
        })
    }
}

/// Keeps the first failure and ignores the rest.
fn keep_first(first: &mut Option<Failure>, r: Result<(), Failure>) {
    if let Err(f) = r {
        first.get_or_insert(f);
    }
}

/// Writes up to `len` bytes from `input` at `offset`. Stops early, without padding, when
/// the input ends. Returns the bytes written. On a failure the requests already in flight
/// are let finish before the first failure is returned.
pub async fn write_range(
    t: &WriteTarget,
    entries: &[u32],
    obj_size: u64,
    offset: u64,
    len: u64,
    input: &mut impl Read,
) -> Result<u64, Failure> {
    let mut set: JoinSet<Result<(), Failure>> = JoinSet::new();
    let mut first: Option<Failure> = None;
    let mut written = 0u64;
    // Objects this run created: their later pieces are plain writes.
    let mut created = std::collections::HashSet::new();
    for p in split_bounded(offset, len, obj_size) {
        while set.len() >= WINDOW {
            if let Some(r) = set.join_next().await {
                keep_first(&mut first, joined(r));
            }
        }
        if first.is_some() {
            break;
        }
        let mut buf = vec![0u8; p.len as usize];
        let n = match block_in_place(|| fill(input, &mut buf)) {
            Ok(n) => n,
            Err(e) => {
                first = Some(Failure::new(format!("Failed to read from stdin: {e}")));
                break;
            }
        };
        if n == 0 {
            break;
        }
        let last = n < buf.len();
        buf.truncate(n);
        let piece = Piece { len: n as u32, ..p };
        let owner = if created.contains(&p.idx) {
            t.vid
        } else {
            entries.get(p.idx as usize).copied().unwrap_or(0)
        };
        if owner != t.vid && obj_size > MAX_PIECE {
            // A big object is created (or copied on write) by its first piece here; its
            // other pieces may only follow once it exists.
            keep_first(&mut first, t.write_piece(piece, owner, buf).await);
            created.insert(p.idx);
        } else {
            let t = t.clone();
            set.spawn(async move { t.write_piece(piece, owner, buf).await });
        }
        written += n as u64;
        if last {
            break;
        }
    }
    while let Some(r) = set.join_next().await {
        keep_first(&mut first, joined(r));
    }
    first.map_or(Ok(written), Err)
}

/// `vdi create -P`: creates every data object of a new VDI, all zeros, and points its inode
/// entries at them.
pub async fn preallocate(t: &WriteTarget, nr_objects: u32) -> Result<(), Failure> {
    let mut set: JoinSet<Result<(), Failure>> = JoinSet::new();
    let mut first: Option<Failure> = None;
    for idx in 0..nr_objects {
        while set.len() >= WINDOW {
            if let Some(r) = set.join_next().await {
                keep_first(&mut first, joined(r));
            }
        }
        if first.is_some() {
            break;
        }
        let t = t.clone();
        set.spawn(async move {
            let oid = data_oid(t.vid, idx);
            let w = ObjWrite {
                oid,
                cow_oid: 0,
                data: &[],
                offset: 0,
                flags: flags::DIRECT,
                copies: t.copies,
                copy_policy: t.copy_policy,
                create: true,
            };
            net::write_obj(&t.client, &w)
                .await
                .map_err(|e| fail(format!("Failed to preallocate VDI {} (object {oid:016x})", t.name), &e))?;
            t.set_entry(idx, flags::DIRECT).await
        });
    }
    while let Some(r) = set.join_next().await {
        keep_first(&mut first, joined(r));
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most 3 bytes per call and is interrupted once.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        interrupted: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(std::io::Error::new(ErrorKind::Interrupted, "signal"));
            }
            let n = buf.len().min(3).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn fill_reads_until_full_or_eof() {
        let mut r = Trickle {
            data: (0..10).collect(),
            pos: 0,
            interrupted: false,
        };
        let mut buf = [0u8; 8];
        assert_eq!(fill(&mut r, &mut buf).expect("read"), 8);
        assert_eq!(buf, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(fill(&mut r, &mut buf).expect("read"), 2);
        assert_eq!(&buf[..2], &[8, 9]);
        assert_eq!(fill(&mut r, &mut buf).expect("read"), 0);
    }
}
