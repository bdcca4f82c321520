//! `dog vdi backup` and `dog vdi restore` (PROTOCOL.md 5.11) in Sheepdog 1.0.1's stream
//! format (`protocol::backup`). Objects are read and written in pieces of at most
//! [`MAX_PIECE`], so memory stays bounded whatever their size.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use protocol::backup::{self as stream, Record};
use protocol::inode::Inode;
use protocol::Client;
use tokio::task::block_in_place;

use crate::error::{fail, Failure};
use crate::net::{self, data_oid, NewVdi};
use crate::progress::Progress;
use crate::span::MAX_PIECE;
use crate::transfer::{self, WriteTarget};
use crate::vdi::{self, object_size, open_vdi};
use sheep::dogcli::Snap;

/// The unit in which backups compare objects (the original's SECTOR_SIZE).
const SECTOR: usize = 512;

/// Bytes `[at, at + len)` of data object `idx` of a VDI with index table `entries`: zeros
/// where no object is allocated.
async fn read_piece(c: &Client, entries: &[u32], idx: u32, at: u64, len: u64) -> Result<Vec<u8>, Failure> {
    match entries.get(idx as usize).copied().unwrap_or(0) {
        0 => Ok(vec![0; len as usize]),
        vid => {
            let oid = data_oid(vid, idx);
            net::read_obj(c, oid, at as u32, len as u32, true)
                .await
                .map_err(|e| fail(format!("Failed to read object {oid:016x}"), &e))
        }
    }
}

/// Where object `idx` of `to` differs from that of `from`: from its first to its last
/// differing sector, as (offset, length); `None` when they are equal.
async fn changed(c: &Client, from: &[u32], to: &[u32], idx: u32, obj: u64) -> Result<Option<(u64, u64)>, Failure> {
    let (mut first, mut end) = (None, 0);
    for at in (0..obj).step_by(MAX_PIECE as usize) {
        let len = MAX_PIECE.min(obj - at);
        let (new, old) = (
            read_piece(c, to, idx, at, len).await?,
            read_piece(c, from, idx, at, len).await?,
        );
        for (i, (a, b)) in new.chunks(SECTOR).zip(old.chunks(SECTOR)).enumerate() {
            if a != b {
                let s = at + (i * SECTOR) as u64;
                first.get_or_insert(s);
                end = s + a.len() as u64;
            }
        }
    }
    Ok(first.map(|f| (f, end - f)))
}

fn out(bytes: &[u8]) -> Result<(), Failure> {
    block_in_place(|| io::stdout().write_all(bytes))
        .map_err(|e| Failure::new(format!("Failed to write the backup to stdout: {e}")))
}

/// `dog vdi backup [-F FROM] -s TO NAME`: the stream of what changed from FROM (nothing,
/// without -F) to TO, on stdout.
pub async fn backup(addr: SocketAddr, name: &str, from: Option<&Snap>, to: &Snap) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let (_, to_ino) = open_vdi(&c, name, Some(to)).await?;
    let obj = object_size(&to_ino.header)?;
    let nr = vdi::nr_objects(&to_ino.header)?;
    let from_entries = match from {
        None => Vec::new(),
        Some(f) => {
            let (_, ino) = open_vdi(&c, name, Some(f)).await?;
            if ino.header.block_size_shift != to_ino.header.block_size_shift {
                return Err(Failure::new("the two snapshots have different object sizes"));
            }
            ino.data_vdi_id
        }
    };
    let to_entries = &to_ino.data_vdi_id;
    out(&stream::header())?;
    let progress = Progress::bytes("backing up", nr * obj);
    for idx in 0..nr as u32 {
        progress.add(obj);
        let entry = |e: &[u32]| e.get(idx as usize).copied().unwrap_or(0);
        if entry(&from_entries) == entry(to_entries) {
            // The same object (or none) in both: nothing changed.
            continue;
        }
        let Some((offset, length)) = changed(&c, &from_entries, to_entries, idx, obj).await? else {
            continue;
        };
        let rec = Record {
            idx,
            offset: offset as u32,
            length: length as u32,
        };
        out(&rec.encode())?;
        let at = u64::from(idx) * obj + offset;
        transfer::read_range(&c, name, to_entries, obj, at, length, &mut io::stdout()).await?;
    }
    out(&Record::END.encode())?;
    block_in_place(|| io::stdout().flush())
        .map_err(|e| Failure::new(format!("Failed to write the backup to stdout: {e}")))
}

/// Standard input as a file that can be read twice: itself when it is one, else a copy in
/// an unnamed temporary file (gone when closed).
fn rereadable_stdin() -> Result<File, Failure> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } == 1 {
        return Err(Failure::usage(
            "the backup comes on standard input: redirect a file or a pipe",
        ));
    }
    let failed = |e: io::Error| Failure::new(format!("Failed to read the backup from stdin: {e}"));
    let mut input = File::open("/dev/stdin").map_err(failed)?;
    if input.metadata().map_err(failed)?.is_file() {
        return Ok(input);
    }
    let mut copy = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
        .map_err(|e| Failure::new(format!("Failed to make a temporary file for the backup: {e}")))?;
    io::copy(&mut input, &mut copy).map_err(failed)?;
    copy.seek(SeekFrom::Start(0)).map_err(failed)?;
    Ok(copy)
}

/// `dog vdi restore -s SNAP NAME < BACKUP`: checks the whole stream, then restores it the
/// way Sheepdog 1.0.1 does (PROTOCOL.md 5.11).
pub async fn restore(addr: SocketAddr, name: &str, snap: &Snap) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let (snap_vid, base) = open_vdi(&c, name, Some(snap)).await?;
    let obj = object_size(&base.header)?;
    let nr = vdi::nr_objects(&base.header)?;
    let mut input = block_in_place(rereadable_stdin)?;
    let summary = block_in_place(|| stream::check(&mut BufReader::new(&input), nr, obj))
        .map_err(|e| Failure::new(format!("The backup is refused, nothing was changed: {e}")))?;
    let (cur_vid, cur) = open_vdi(&c, name, None).await?;
    if cur.data_vdi_id.contains(&cur_vid) {
        return Err(Failure::new(format!(
            "VDI {name} has writes since its last snapshot, which a restore would discard: \
             take a snapshot first; nothing was changed"
        )));
    }
    // Nobody may be writing the VDI; the lock goes with the working VDI's deletion.
    let _locker = vdi::write_lock(addr, name).await?;
    vdi::delete(addr, name, None).await?;
    let created = net::new_vdi(&c, &NewVdi::like(name, &base.header, snap_vid, false))
        .await
        .map_err(|e| fail(format!("Failed to create VDI {name} from snapshot {snap_vid:x}"), &e));
    let applied = match created {
        Ok(vid) => {
            input
                .seek(SeekFrom::Start(stream::HEADER_SIZE as u64))
                .map_err(|e| Failure::new(format!("Failed to read the backup again: {e}")))?;
            let progress = Progress::bytes("restoring", summary.data_bytes);
            apply(&c, &mut BufReader::new(&input), vid, &base, obj, &progress).await
        }
        Err(f) => Err(f),
    };
    // As the original: the restored VDI becomes the newest snapshot, and the working VDI
    // starts again from the snapshot the deleted one was based on.
    let rebased = net::new_vdi(&c, &NewVdi::like(name, &cur.header, cur.header.parent_vdi_id, true))
        .await
        .map_err(|e| fail(format!("Failed to resume the working VDI {name}"), &e));
    applied?;
    rebased?;
    eprintln!(
        "restored {} objects ({} bytes) of VDI {name} on snapshot {snap_vid:x}: the result is its newest snapshot",
        summary.records, summary.data_bytes
    );
    Ok(())
}

/// Writes every record of a checked stream (positioned after its header) into VDI `vid`, a
/// clone of `base`, as `dog vdi write` would: each object is created as a copy of the
/// base's with the record's bytes over it, then the inode points at it; all flushed at the
/// end.
async fn apply(
    c: &Arc<Client>,
    input: &mut impl Read,
    vid: u32,
    base: &Inode,
    obj: u64,
    progress: &Progress,
) -> Result<(), Failure> {
    let t = WriteTarget {
        client: c.clone(),
        name: base.header.name.clone(),
        vid,
        copies: base.header.nr_copies,
        copy_policy: base.header.copy_policy,
        extra_flags: 0,
    };
    loop {
        let mut rb = [0u8; stream::RECORD_SIZE];
        block_in_place(|| input.read_exact(&mut rb))
            .map_err(|e| Failure::new(format!("Failed to read the backup again: {e}")))?;
        let (rec, _) = Record::decode(&rb);
        if rec.idx == stream::END {
            break;
        }
        let (at, len) = (u64::from(rec.idx) * obj + u64::from(rec.offset), u64::from(rec.length));
        if transfer::write_range(&t, &base.data_vdi_id, obj, at, len, input).await? != len {
            return Err(Failure::new("the backup changed while it was restored"));
        }
        progress.add(len);
    }
    t.flush().await
}
