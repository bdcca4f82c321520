//! `dog vdi ...` (PROTOCOL.md 5.2-5.8, 5.11).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use protocol::bitmap::{VdiBitmap, BITMAP_BYTES};
use protocol::inode::{data_vdi_id_offset, Inode, InodeHeader, INODE_HEADER_SIZE, MAX_DATA_OBJS};
use protocol::{flags, op, Client, RequestHeader, ResultCode, VdiArgs};

use crate::error::{fail, warn, why, Failure};
use crate::fmt::{escape_name, local_time, redundancy, size_str};
use crate::net::{self, vdi_oid, NewVdi, ObjWrite};
use crate::span::{delete_runs, DELETE_BATCH};
use crate::transfer::{self, WriteTarget};
use crate::Out;
use sheep::dogcli::Snap;

/// The object size of a VDI, refusing block size shifts no VDI can have.
pub fn object_size(h: &InodeHeader) -> Result<u64, Failure> {
    if (1..=31).contains(&h.block_size_shift) {
        Ok(1u64 << h.block_size_shift)
    } else {
        Err(Failure::new(format!(
            "VDI {} ({:x}) has an invalid block size shift {}",
            h.name, h.vdi_id, h.block_size_shift
        )))
    }
}

/// Number of index entries a VDI uses: `ceil(vdi_size / object size)`.
pub fn nr_objects(h: &InodeHeader) -> Result<u64, Failure> {
    let n = h.vdi_size.div_ceil(object_size(h)?);
    if n > MAX_DATA_OBJS as u64 {
        return Err(Failure::new(format!(
            "VDI {} ({:x}) is larger than its inode can index",
            h.name, h.vdi_id
        )));
    }
    Ok(n)
}

/// The bytes of the index table as entries.
fn entries_of(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

/// Reads a bitmap op (READ_VDIS or READ_DEL_VDIS).
async fn bitmap(c: &Client, opcode: u8) -> Result<VdiBitmap, Failure> {
    let mut req = RequestHeader::new(opcode);
    req.data_length = BITMAP_BYTES as u32;
    let r = c
        .call(req, &[])
        .await
        .map_err(|e| fail("Failed to read the VDI list", &e))?;
    VdiBitmap::from_bytes(r.data)
        .ok_or_else(|| Failure::new("Failed to read the VDI list: the bitmap has a wrong size"))
}

/// Walks every live VDI as `vdi list` does (PROTOCOL.md 5.3): both bitmaps, then for each
/// vid in use and not deleted, in ascending order, the inode header (4672 bytes) and, when
/// `with_entries`, its index table. Inodes that cannot be read are reported and skipped.
pub async fn for_each_vdi(
    c: &Client,
    with_entries: bool,
    mut f: impl FnMut(&InodeHeader, &[u32]),
) -> Result<(), Failure> {
    let in_use = bitmap(c, op::READ_VDIS).await?;
    let deleted = bitmap(c, op::READ_DEL_VDIS).await?;
    for vid in in_use.iter().filter(|&v| !deleted.get(v)) {
        let oid = vdi_oid(vid);
        let head = match net::read_obj(c, oid, 0, INODE_HEADER_SIZE as u32 + 8, true).await {
            Ok(b) => b,
            Err(e) => {
                warn(format!("Failed to read the inode header of VDI {vid:x}: {}", why(&e)));
                continue;
            }
        };
        let Some(h) = InodeHeader::decode(&head) else {
            continue;
        };
        if h.name.is_empty() {
            continue;
        }
        let mut entries = Vec::new();
        if with_entries {
            let n = match nr_objects(&h) {
                Ok(n) => n,
                Err(e) => {
                    warn(e);
                    continue;
                }
            };
            match net::read_obj(c, oid, INODE_HEADER_SIZE as u32, 4 * n as u32, true).await {
                Ok(b) => entries = entries_of(&b),
                Err(e) => {
                    warn(format!("Failed to read the inode of VDI {vid:x}: {}", why(&e)));
                    continue;
                }
            }
        }
        f(&h, &entries);
    }
    Ok(())
}

/// The parent of each deleted VDI whose inode can still be read, so that `vdi tree` can
/// draw a VDI whose parent was deleted under its nearest live ancestor.
pub async fn deleted_parents(c: &Client) -> Result<BTreeMap<u32, u32>, Failure> {
    let deleted = bitmap(c, op::READ_DEL_VDIS).await?;
    let mut parents = BTreeMap::new();
    for vid in deleted.iter() {
        let head = net::read_obj(c, vdi_oid(vid), 0, INODE_HEADER_SIZE as u32, true).await;
        if let Some(h) = head.ok().as_deref().and_then(InodeHeader::decode) {
            parents.insert(vid, h.parent_vdi_id);
        }
    }
    Ok(parents)
}

/// One line of `vdi list`.
fn list_line(h: &InodeHeader, entries: &[u32], raw: bool) -> String {
    let obj = object_size(h).unwrap_or(0);
    let mine = entries.iter().filter(|&&e| e == h.vdi_id).count() as u64;
    let shared = entries.iter().filter(|&&e| e != 0 && e != h.vdi_id).count() as u64;
    let is_clone = h.snap_id == 1 && h.parent_vdi_id != 0;
    let snapid = if h.is_snapshot() { h.snap_id } else { 0 };
    let created = h.create_time >> 32;
    let copies = redundancy(h.nr_copies, h.copy_policy);
    if raw {
        let flag = if h.is_snapshot() {
            's'
        } else if is_clone {
            'c'
        } else {
            '='
        };
        format!(
            "{flag} {} {snapid} {} {} {} {created} {:x} {copies} {} {}",
            escape_name(&h.name),
            h.vdi_size,
            mine * obj,
            shared * obj,
            h.vdi_id,
            h.tag,
            h.block_size_shift
        )
    } else {
        let flag = if h.is_snapshot() {
            's'
        } else if is_clone {
            'c'
        } else {
            ' '
        };
        format!(
            "{flag} {:<8} {snapid:5} {:>7} {:>7} {:>7} {}  {:7x} {copies:>6} {:>13} {:3}",
            h.name,
            size_str(h.vdi_size, false),
            size_str(mine * obj, false),
            size_str(shared * obj, false),
            local_time(created, "%Y-%m-%d %H:%M"),
            h.vdi_id,
            h.tag,
            h.block_size_shift
        )
    }
}

pub async fn list(addr: SocketAddr, name: Option<&str>, raw: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let mut out = Out::new();
    if !raw {
        out.line(
            "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   \
             Block Size Shift",
        );
    }
    for_each_vdi(&c, true, |h, entries| {
        if !matches!(name, Some(n) if n != h.name) {
            out.line(list_line(h, entries, raw));
        }
    })
    .await?;
    out.print()
}

/// Options of `vdi create`.
pub struct CreateOpts {
    pub name: String,
    pub size: u64,
    pub copies: Option<(u8, u8)>,
    pub block_size_shift: Option<u8>,
    pub prealloc: bool,
    pub verbose: bool,
    pub raw: bool,
}

pub async fn create(addr: SocketAddr, o: &CreateOpts) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    net::node_list(&c).await?;
    let failed = format!("Failed to create VDI {}", o.name);

    let bss = match o.block_size_shift {
        Some(bss) => bss,
        None => {
            let (code, info) = net::cluster_info(&c).await.map_err(|e| fail(&failed, &e))?;
            // Like the original, a cluster that was never formatted is reported as such
            // before the result code is looked at.
            if info.ctime == 0 {
                return Err(Failure::new(format!(
                    "{failed}: {}",
                    ResultCode::WAIT_FOR_FORMAT.message()
                )));
            }
            if code != ResultCode::SUCCESS {
                return Err(Failure::new(format!("{failed}: {}", code.message())));
            }
            info.block_size_shift
        }
    };
    if !(1..=31).contains(&bss) {
        return Err(Failure::new(format!(
            "{failed}: the cluster reports an invalid block size shift {bss}"
        )));
    }
    let obj = 1u64 << bss;
    let limit = obj * MAX_DATA_OBJS as u64;
    if o.size > limit {
        return Err(Failure::usage(format!(
            "VDI size {} is larger than {} ({} objects of {}); use -z to create a VDI with \
             larger objects",
            o.size,
            size_str(limit, false),
            MAX_DATA_OBJS,
            size_str(obj, false)
        )));
    }

    let (copies, copy_policy) = o.copies.unwrap_or((0, 0));
    let vid = net::new_vdi(
        &c,
        &NewVdi {
            name: &o.name,
            size: o.size,
            base: 0,
            copies,
            copy_policy,
            store_policy: 0,
            block_size_shift: o.block_size_shift.unwrap_or(0),
            snapshot: false,
        },
    )
    .await
    .map_err(|e| fail(&failed, &e))?;

    if o.prealloc {
        let b = net::read_inode_bytes(&c, vid, true, true)
            .await
            .map_err(|e| fail("Failed to read the newly created VDI object", &e))?;
        let h = net::header_of(&b)?;
        let t = WriteTarget {
            client: Arc::clone(&c),
            name: o.name.clone(),
            vid,
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            extra_flags: 0,
        };
        transfer::preallocate(&t, nr_objects(&h)? as u32).await?;
    }

    if o.verbose {
        if o.raw {
            crate::emit(&format!("{vid:x}\n"))?;
        } else {
            crate::emit(&format!("VDI ID of newly created VDI: {vid:x}\n"))?;
        }
    }
    Ok(())
}

/// The message for a failed lookup, as the original words it.
fn open_failed(name: &str, snap: Option<&Snap>, e: &protocol::ClientError) -> Failure {
    let (id, tag) = Snap::id_and_tag(snap);
    fail(
        format!("Failed to open VDI {name} (snapshot id: {id} snapshot tag: {tag})"),
        e,
    )
}

/// GET_VDI_INFO then READ_OBJ of the whole inode (DIRECT).
pub async fn open_vdi(c: &Client, name: &str, snap: Option<&Snap>) -> Result<(u32, Inode), Failure> {
    let (id, tag) = Snap::id_and_tag(snap);
    let vid = net::find_vdi(c, name, id, tag)
        .await
        .map_err(|e| open_failed(name, snap, &e))?;
    Ok((vid, read_inode(c, vid, &format!("VDI {name}")).await?))
}

/// READ_OBJ of the whole inode of `vid` (DIRECT), checked; `what` names it in errors.
pub async fn read_inode(c: &Client, vid: u32, what: &str) -> Result<Inode, Failure> {
    let b = net::read_inode_bytes(c, vid, true, true)
        .await
        .map_err(|e| fail(format!("Failed to read the inode of {what}"), &e))?;
    let h = net::header_of(&b)?;
    nr_objects(&h)?;
    Inode::decode(&b).ok_or_else(|| Failure::new(format!("The inode of {what} is too short")))
}

pub async fn delete(addr: SocketAddr, name: &str, snap: Option<&Snap>) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let (id, tag) = Snap::id_and_tag(snap);
    let vid = net::find_vdi(&c, name, id, tag)
        .await
        .map_err(|e| open_failed(name, snap, &e))?;
    let oid = vdi_oid(vid);
    let b = net::read_inode_bytes(&c, vid, true, false)
        .await
        .map_err(|e| fail(format!("Failed to read the inode object {oid:016x}"), &e))?;
    let h = net::header_of(&b)?;
    nr_objects(&h)?;
    let inode = Inode::decode(&b).ok_or_else(|| Failure::new("the inode object is too short"))?;

    for (start, len) in delete_runs(&inode.data_vdi_id, DELETE_BATCH) {
        let zeros = vec![0u8; 4 * len];
        let w = ObjWrite {
            oid,
            cow_oid: 0,
            data: &zeros,
            offset: data_vdi_id_offset(start as u32),
            flags: flags::DIRECT,
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            create: false,
        };
        net::write_obj(&c, &w).await.map_err(|e| {
            fail(
                format!("Failed to update the inode {oid:016x} to discard its objects"),
                &e,
            )
        })?;
    }

    let mut req = RequestHeader::new(op::DEL_VDI);
    req.set_vdi(&VdiArgs {
        snapid: id,
        ..VdiArgs::default()
    });
    c.call(req, &net::name_payload(name, Some(tag)))
        .await
        .map_err(|e| fail(format!("Failed to delete {name}"), &e))?;
    Ok(())
}

pub async fn snapshot(
    addr: SocketAddr,
    name: &str,
    tag: Option<&str>,
    verbose: bool,
    raw: bool,
) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let failed = format!("Failed to create snapshot for {name}");
    let tag = tag.unwrap_or("");

    // Another client may snapshot the same VDI between the lookup and the read of its inode:
    // the working VDI found has then just become a snapshot, and looking again finds the new one.
    const LOOKUPS: usize = 5;
    let mut lookups = 0;
    let found = loop {
        lookups += 1;
        let vid = match net::find_vdi(&c, name, 0, tag).await {
            Ok(vid) => vid,
            Err(e) => break Err(e),
        };
        let b = net::read_inode_bytes(&c, vid, false, true)
            .await
            .map_err(|e| fail(&failed, &e))?;
        let h = net::header_of(&b)?;
        if !h.is_snapshot() {
            break Ok((vid, h));
        }
        if !tag.is_empty() || lookups == LOOKUPS {
            return Err(Failure::new(format!(
                "{failed}, maybe snapshot id (0) or tag ({tag}) is existed"
            )));
        }
    };
    let (vid, h) = match found {
        Ok(found) => found,
        Err(e) if e.result() == Some(ResultCode::NO_TAG) => {
            let vid = net::find_vdi(&c, name, 0, "")
                .await
                .map_err(|e| open_failed(name, None, &e))?;
            let b = net::read_inode_bytes(&c, vid, false, true)
                .await
                .map_err(|e| fail(&failed, &e))?;
            (vid, net::header_of(&b)?)
        }
        Err(e) => return Err(fail(&failed, &e)),
    };
    if h.store_policy != 0 {
        return Err(Failure::new("creating a snapshot of hypervolume is not supported"));
    }

    let mut tag_field = vec![0u8; protocol::inode::MAX_NAME_LEN + 1];
    protocol::put_cstr(&mut tag_field, tag.as_bytes());
    let w = ObjWrite {
        oid: vdi_oid(vid),
        cow_oid: 0,
        data: &tag_field,
        offset: 256,
        flags: 0,
        copies: h.nr_copies,
        copy_policy: h.copy_policy,
        create: false,
    };
    net::write_obj(&c, &w)
        .await
        .map_err(|e| fail(format!("{failed}: cannot write the tag"), &e))?;

    let new_vid = net::new_vdi(
        &c,
        &NewVdi {
            name,
            size: h.vdi_size,
            base: vid,
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            store_policy: h.store_policy,
            block_size_shift: h.block_size_shift,
            snapshot: true,
        },
    )
    .await
    .map_err(|e| fail(&failed, &e))?;

    if verbose {
        if raw {
            crate::emit(&format!("{new_vid:x} {vid:x}\n"))?;
        } else {
            crate::emit(&format!(
                "new VID of original VDI: {new_vid:x}, VDI ID of newly created snapshot: {vid:x}\n"
            ))?;
        }
    }
    Ok(())
}

pub async fn clone(
    addr: SocketAddr,
    src: &str,
    snap: &Snap,
    dst: &str,
    verbose: bool,
    raw: bool,
) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let (base, inode) = open_vdi(&c, src, Some(snap)).await?;
    let h = &inode.header;
    let new_vid = net::new_vdi(&c, &NewVdi::like(dst, h, base, false))
        .await
        .map_err(|e| fail(format!("Failed to create VDI {dst}"), &e))?;
    if verbose {
        if raw {
            crate::emit(&format!("{new_vid:x}\n"))?;
        } else {
            crate::emit(&format!("VDI ID of newly created clone: {new_vid:x}\n"))?;
        }
    }
    Ok(())
}

/// How many bytes `vdi read`/`vdi write` move: LEN, or up to the end of the VDI, never past
/// it. `None` when OFFSET is beyond the end.
fn range_len(vdi_size: u64, offset: u64, len: Option<u64>) -> Option<u64> {
    let room = vdi_size.checked_sub(offset)?;
    Some(len.map_or(room, |l| l.min(room)))
}

pub async fn read(
    addr: SocketAddr,
    name: &str,
    snap: Option<&Snap>,
    offset: u64,
    len: Option<u64>,
) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let (_, inode) = open_vdi(&c, name, snap).await?;
    let h = &inode.header;
    let total = range_len(h.vdi_size, offset, len).ok_or_else(|| {
        Failure::new(format!(
            "Read offset {offset} is beyond the end of the VDI {name} ({} bytes)",
            h.vdi_size
        ))
    })?;
    let mut out = std::io::stdout().lock();
    transfer::read_range(&c, name, &inode.data_vdi_id, object_size(h)?, offset, total, &mut out).await
}

/// Takes working VDI `name`'s write lock (one writer per VDI) on a connection of its own,
/// held until dog releases it or exits (which closes the connection and frees the VDI).
pub async fn write_lock(addr: SocketAddr, name: &str) -> Result<Client, Failure> {
    let locker = Client::new(addr);
    locker.lock_vdi(name).await.map_err(|e| match e.result() {
        Some(ResultCode::VDI_LOCKED) => Failure::new(format!(
            "Failed to open VDI {name} for writing: another client (a sheepfs mount, a VM, \
             another dog) has it open for writing"
        )),
        _ => open_failed(name, None, &e),
    })?;
    Ok(locker)
}

pub async fn write(
    addr: SocketAddr,
    name: &str,
    offset: u64,
    len: Option<u64>,
    writeback: bool,
) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let locker = write_lock(addr, name).await?;
    let (vid, inode) = open_vdi(&c, name, None).await?;
    let h = &inode.header;
    let total = range_len(h.vdi_size, offset, len).ok_or_else(|| {
        Failure::new(format!(
            "Write offset {offset} is beyond the end of the VDI {name} ({} bytes)",
            h.vdi_size
        ))
    })?;
    let t = WriteTarget {
        client: Arc::clone(&c),
        name: name.to_string(),
        vid,
        copies: h.nr_copies,
        copy_policy: h.copy_policy,
        extra_flags: if writeback { flags::CACHE } else { 0 },
    };
    let mut input = std::io::stdin().lock();
    transfer::write_range(&t, &inode.data_vdi_id, object_size(h)?, offset, total, &mut input).await?;
    if !writeback {
        // Sheep acknowledge a write once the replicas have it, durable at the next flush:
        // dog returns only when what it wrote would survive a power cut.
        t.flush().await?;
    }
    let vid = protocol::Vid::new(vid).ok_or_else(|| Failure::new(format!("VDI {name} has a bad id {vid:#x}")))?;
    locker
        .release_vdi(vid)
        .await
        .map_err(|e| fail(format!("Failed to release VDI {name}"), &e))
}

pub async fn resize(addr: SocketAddr, name: &str, new_size: u64) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let vid = net::find_vdi(&c, name, 0, "")
        .await
        .map_err(|e| open_failed(name, None, &e))?;
    let mut b = net::read_inode_bytes(&c, vid, false, true)
        .await
        .map_err(|e| fail(format!("Failed to read the inode of VDI {name}"), &e))?;
    let h = net::header_of(&b)?;
    let limit = object_size(&h)? * MAX_DATA_OBJS as u64;
    if new_size > limit && h.store_policy == 0 {
        return Err(Failure::usage(format!(
            "New VDI size {new_size} is too large: VDI {name} can hold at most {} ({limit} bytes)",
            size_str(limit, false)
        )));
    }
    if new_size < h.vdi_size {
        return Err(Failure::usage(format!(
            "Shrinking VDIs is not implemented: VDI {name} has {} bytes, {new_size} asked for",
            h.vdi_size
        )));
    }
    // Only vdi_size changes; every other header byte goes back as it was read.
    b[536..544].copy_from_slice(&new_size.to_le_bytes());
    let w = ObjWrite {
        oid: vdi_oid(vid),
        cow_oid: 0,
        data: &b,
        offset: 0,
        flags: flags::DIRECT,
        copies: h.nr_copies,
        copy_policy: h.copy_policy,
        create: false,
    };
    net::write_obj(&c, &w)
        .await
        .map_err(|e| fail(format!("Failed to update the inode header of VDI {name}"), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(vid: u32) -> InodeHeader {
        InodeHeader {
            name: "test".into(),
            create_time: 1_434_618_296 << 32,
            vdi_size: 1 << 30,
            nr_copies: 3,
            block_size_shift: 22,
            snap_id: 1,
            vdi_id: vid,
            ..InodeHeader::default()
        }
    }

    #[test]
    fn raw_list_lines() {
        let h = header(0x7c2b25);
        let mut e = vec![0u32; 256];
        e[0] = 0x7c2b25;
        e[1] = 0x7c2b24;
        assert_eq!(
            list_line(&h, &e, true),
            "= test 0 1073741824 4194304 4194304 1434618296 7c2b25 3  22"
        );
        let snap = InodeHeader {
            snap_ctime: 1,
            tag: "t1".into(),
            name: "my disk".into(),
            ..header(0x7c2b25)
        };
        assert_eq!(
            list_line(&snap, &[], true),
            "s my\\ disk 1 1073741824 0 0 1434618296 7c2b25 3 t1 22"
        );
        let clone = InodeHeader {
            parent_vdi_id: 0x7c2b25,
            ..header(0xfd3815)
        };
        assert!(list_line(&clone, &[], true).starts_with("c test 0 "));
    }

    #[test]
    fn human_list_line() {
        let l = list_line(&header(0x7c2b25), &[0x7c2b25], false);
        assert!(l.starts_with("  test         0  1.0 GB  4.0 MB  0.0 MB "), "{l}");
        assert!(l.ends_with("  7c2b25      3                22"), "{l}");
    }

    #[test]
    fn ranges_stop_at_the_end() {
        assert_eq!(range_len(100, 0, None), Some(100));
        assert_eq!(range_len(100, 40, None), Some(60));
        assert_eq!(range_len(100, 40, Some(10)), Some(10));
        assert_eq!(range_len(100, 40, Some(1000)), Some(60));
        assert_eq!(range_len(100, 100, None), Some(0));
        assert_eq!(range_len(100, 101, Some(1)), None);
    }

    #[test]
    fn sizes_and_entries() {
        let mut h = header(1);
        assert_eq!(nr_objects(&h), Ok(256));
        h.vdi_size = 0;
        assert_eq!(nr_objects(&h), Ok(0));
        h.block_size_shift = 0;
        assert!(object_size(&h).is_err());
        h.block_size_shift = 20;
        h.vdi_size = u64::MAX;
        assert!(nr_objects(&h).is_err());
        assert_eq!(entries_of(&[1, 0, 0, 0, 0x25, 0x2b, 0x7c, 0]), [1, 0x7c2b25]);
    }
}
