//! VDI operations: name lookup and vid allocation (PROTOCOL.md 3.3), create, snapshot,
//! clone, delete, and removal of data objects nothing refers to any more.
//!
//! Operations that change the VDI set run under the cluster-wide ops lock: the node that
//! received the request reads the shared bitmaps and inodes, writes inode objects through
//! the gateway, then commits one event that every node applies.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::bitmap::VdiBitmap;
use protocol::hash::sd_hash_vdi;
use protocol::inode::{
    sd_time, Inode, InodeHeader, INODE_HEADER_SIZE, MAX_BLOCK_SIZE_SHIFT, MAX_DATA_OBJS, MAX_NAME_LEN,
    MIN_BLOCK_SIZE_SHIFT,
};
use protocol::oid::NR_VIDS;
use protocol::requests::MAX_SNAPSHOT_VDIS;
use protocol::{op, ObjArgs, Oid, RequestHeader, ResultCode, Vid};

use futures::future::join_all;

use crate::gateway::{self, Write};
use crate::group::{Event, NewVid, VdiLock};
use crate::node::Sheep;

/// Most copies a VDI may ask for.
pub const MAX_COPIES: u8 = 31;

/// What a lookup found.
pub struct Lookup {
    /// The matching vid, or why there is none (NO_VDI, NO_TAG, or an I/O failure).
    pub found: Result<u32, ResultCode>,
    /// The vid a new VDI of this name would get.
    pub free: u32,
    /// The snap_id a new working VDI of this name would get.
    pub next_snap_id: u32,
}

/// Parses a NUL-padded name field; `None` if it is empty, unterminated or too long.
pub fn parse_name(field: &[u8]) -> Option<Vec<u8>> {
    let end = field.iter().position(|&b| b == 0)?;
    (end > 0 && end <= MAX_NAME_LEN).then(|| field[..end].to_vec())
}

/// The first clear in-use bit at or after `left`, wrapping to 1. `None` if the bitmap is full.
fn free_slot(in_use: &VdiBitmap, left: u32) -> Option<(u32, bool)> {
    in_use
        .next_clear(left)
        .map(|v| (v, false))
        .or_else(|| in_use.next_clear(1).filter(|&v| v < left).map(|v| (v, true)))
}

pub async fn read_header(sheep: &Arc<Sheep>, vid: u32) -> Result<InodeHeader, ResultCode> {
    let oid = Vid::new(vid).ok_or(ResultCode::INVALID_PARMS)?.inode_oid();
    let b = gateway::read(sheep, oid, 0, INODE_HEADER_SIZE as u32, 0).await?;
    InodeHeader::decode(&b).ok_or(ResultCode::EIO)
}

/// Reads the header and the `data_vdi_id[]` entries in use.
pub async fn read_inode(sheep: &Arc<Sheep>, vid: u32) -> Result<Inode, ResultCode> {
    let h = read_header(sheep, vid).await?;
    let n = h.nr_objects().min(MAX_DATA_OBJS as u32);
    let oid = Vid::new(vid).ok_or(ResultCode::INVALID_PARMS)?.inode_oid();
    let b = gateway::read(sheep, oid, 0, INODE_HEADER_SIZE as u32 + 4 * n, 0).await?;
    Inode::decode(&b).ok_or(ResultCode::EIO)
}

/// Looks `name` up as PROTOCOL.md 3.3 describes: the in-use bitmap is an open-addressing
/// table keyed by the name's hash.
///
/// A snapshot stamps the old working inode only after every member applied the new working
/// vid, but a scan that started from the bitmap before this node applied it can read the
/// stamp and miss both. A miss while events were applied is therefore looked up again.
pub async fn lookup(sheep: &Arc<Sheep>, name: &[u8], tag: &[u8], snapid: u32) -> Lookup {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        let seen = sheep.applied();
        let l = lookup_once(sheep, name, tag, snapid).await;
        if attempt == ATTEMPTS || !matches!(l.found, Err(ResultCode::NO_VDI)) || sheep.applied() == seen {
            return l;
        }
        attempt += 1;
    }
}

async fn lookup_once(sheep: &Arc<Sheep>, name: &[u8], tag: &[u8], snapid: u32) -> Lookup {
    let left = sd_hash_vdi(name).max(1);
    let (in_use, deleted) = {
        let st = sheep.state();
        (st.in_use.clone(), st.deleted.clone())
    };
    let Some((right, wrapped)) = free_slot(&in_use, left) else {
        return Lookup {
            found: Err(ResultCode::FULL_VDI),
            free: 0,
            next_snap_id: 1,
        };
    };
    let mut lookup = Lookup {
        found: Err(ResultCode::NO_VDI),
        free: right,
        next_snap_id: 1,
    };
    let candidates: Box<dyn Iterator<Item = u32> + Send> = if wrapped {
        Box::new((1..right).rev().chain((left..NR_VIDS).rev()))
    } else {
        Box::new((left..right).rev())
    };
    let want_working = tag.is_empty() && snapid == 0;
    let mut saw_working = false;
    for vid in candidates.filter(|&v| in_use.get(v) || deleted.get(v)) {
        let h = match read_header(sheep, vid).await {
            Ok(h) => h,
            Err(code) => {
                lookup.found = Err(code);
                return lookup;
            }
        };
        if h.name.as_bytes() != name {
            continue;
        }
        if want_working {
            lookup.next_snap_id = h.snap_id + 1;
            // The newest inode of this name is a snapshot: the working VDI was deleted.
            lookup.found = if h.is_snapshot() {
                Err(ResultCode::NO_VDI)
            } else {
                Ok(vid)
            };
            return lookup;
        }
        if !h.is_snapshot() {
            saw_working = true;
            continue;
        }
        if (!tag.is_empty() && h.tag.as_bytes() == tag) || (snapid != 0 && h.snap_id == snapid) {
            lookup.found = Ok(vid);
            return lookup;
        }
    }
    if !want_working && saw_working {
        lookup.found = Err(ResultCode::NO_TAG);
    }
    lookup
}

/// Parses the name (+ tag) payload of GET_VDI_INFO, LOCK_VDI and DEL_VDI.
pub fn name_and_tag(payload: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ResultCode> {
    if payload.len() != 256 && payload.len() != 512 {
        return Err(ResultCode::INVALID_PARMS);
    }
    let name = parse_name(&payload[..256]).ok_or(ResultCode::INVALID_PARMS)?;
    let tag = if payload.len() == 512 {
        let t = &payload[256..];
        let end = t.iter().position(|&b| b == 0).ok_or(ResultCode::INVALID_PARMS)?;
        t[..end].to_vec()
    } else {
        Vec::new()
    };
    Ok((name, tag))
}

/// The result of a successful NEW_VDI.
pub struct Created {
    pub vid: u32,
    pub copies: u8,
    pub block_size_shift: u8,
}

async fn create_inode(sheep: &Arc<Sheep>, ino: &Inode) -> Result<(), ResultCode> {
    let oid = Vid::new(ino.header.vdi_id)
        .ok_or(ResultCode::INVALID_PARMS)?
        .inode_oid();
    let data = ino.encode();
    let copies = ino.header.nr_copies;
    gateway::write(
        sheep,
        Write {
            oid,
            offset: 0,
            data: data.into(),
            create: true,
            copies,
        },
    )
    .await
}

/// NEW_VDI: create, clone (base set, snapid 0) or snapshot (snapid set).
pub async fn new_vdi(sheep: &Arc<Sheep>, req: &RequestHeader, payload: &[u8]) -> Result<Created, ResultCode> {
    if payload.len() != 256 {
        return Err(ResultCode::INVALID_PARMS);
    }
    let name = parse_name(payload).ok_or(ResultCode::INVALID_PARMS)?;
    let a = req.vdi();
    let format = sheep.state().format.clone().ok_or(ResultCode::WAIT_FOR_FORMAT)?;
    let copies = if a.copies == 0 { format.copies } else { a.copies };
    let bss = if a.block_size_shift == 0 {
        format.block_size_shift
    } else {
        a.block_size_shift
    };
    if copies > MAX_COPIES || !(MIN_BLOCK_SIZE_SHIFT..=MAX_BLOCK_SIZE_SHIFT).contains(&bss) {
        return Err(ResultCode::INVALID_PARMS);
    }
    if a.vdi_size > (MAX_DATA_OBJS as u64) << bss {
        tracing::warn!(size = a.vdi_size, "VDI size beyond the inode's reach refused");
        return Err(ResultCode::INVALID_PARMS);
    }
    if a.store_policy != 0 {
        return Err(ResultCode::NO_SUPPORT);
    }
    if sheep.state().ring().nr_zones() == 0 {
        tracing::warn!(name = %String::from_utf8_lossy(&name), "VDI creation refused: the cluster has no storage node, only gateways");
        return Err(ResultCode::HALT);
    }
    let (_lock, end) = sheep.driver.lock_ops().await.map_err(driver_failed)?;
    sheep.wait_applied(end).await;
    let found = lookup(sheep, &name, &[], 0).await;
    let now = sd_time(std::time::SystemTime::now());
    let mut header = InodeHeader {
        name: String::from_utf8_lossy(&name).into_owned(),
        create_time: now,
        vdi_size: a.vdi_size,
        copy_policy: a.copy_policy,
        nr_copies: copies,
        block_size_shift: bss,
        vdi_id: found.free,
        ..InodeHeader::default()
    };
    let snapshot_of = if a.snapid == 0 {
        match found.found {
            Ok(_) => return Err(ResultCode::VDI_EXIST),
            Err(ResultCode::NO_VDI) => {}
            Err(code) => return Err(code),
        }
        header.snap_id = found.next_snap_id;
        None
    } else {
        let cur = found.found?;
        // The snapshot holds what this gateway's cache acknowledged so far.
        crate::cache::push_all(sheep, Some(cur)).await?;
        let cur_header = read_header(sheep, cur).await?;
        header.snap_id = cur_header.snap_id + 1;
        header.vdi_size = if a.vdi_size == 0 {
            cur_header.vdi_size
        } else {
            a.vdi_size
        };
        // Unless told otherwise, the new working VDI keeps the layout of the one it follows.
        if a.copies == 0 {
            header.nr_copies = cur_header.nr_copies;
        }
        if a.block_size_shift == 0 {
            header.block_size_shift = cur_header.block_size_shift;
        }
        Some(cur)
    };
    if found.free == 0 {
        return Err(ResultCode::FULL_VDI);
    }
    let mut ino = Inode {
        header,
        data_vdi_id: Vec::new(),
    };
    if a.base_vdi_id != 0 {
        let base = read_inode(sheep, a.base_vdi_id).await.map_err(|code| {
            tracing::warn!(base = a.base_vdi_id, result = %code, "cannot read the base VDI");
            ResultCode::NO_BASE_VDI
        })?;
        ino.header.parent_vdi_id = a.base_vdi_id;
        ino.data_vdi_id = base.data_vdi_id;
    }
    ino.data_vdi_id.resize(ino.header.nr_objects() as usize, 0);
    let h = &ino.header;
    create_inode(sheep, &ino).await?;
    // The new vid becomes visible (and the old working VDI read-only) everywhere before the
    // old inode is marked a snapshot, so a concurrent lookup by name always finds a working
    // VDI: the old one until the bitmap changes, the new one after.
    let add = Event::VdiAdd {
        vid: h.vdi_id,
        copies: h.nr_copies,
        block_size_shift: h.block_size_shift,
        snapshot_of,
    };
    sheep.commit(add).await.map_err(driver_failed)?;
    if let Some(cur) = snapshot_of {
        stamp_snapshot(sheep, cur, now).await?;
    }
    tracing::info!(vid = %format_args!("{:x}", h.vdi_id), name = %h.name, ?snapshot_of, "VDI created");
    Ok(Created {
        vid: h.vdi_id,
        copies: h.nr_copies,
        block_size_shift: h.block_size_shift,
    })
}

/// Writes when inode `vid` became a snapshot (its `snap_ctime`). Called after the event that
/// made it one was committed: until the stamp is there, lookups by name take the inode for
/// a second working VDI, so a failure is retried a few times before it is reported.
async fn stamp_snapshot(sheep: &Arc<Sheep>, vid: u32, now: u64) -> Result<(), ResultCode> {
    const TRIES: u32 = 5;
    let oid = Vid::new(vid).ok_or(ResultCode::INVALID_PARMS)?.inode_oid();
    let mut tries = 0;
    loop {
        let w = Write {
            oid,
            offset: 520,
            data: Bytes::copy_from_slice(&now.to_le_bytes()),
            create: false,
            copies: 0,
        };
        match gateway::write(sheep, w).await {
            Ok(()) => return Ok(()),
            Err(code) => {
                tries += 1;
                tracing::warn!(%oid, result = %code, tries, "cannot stamp a snapshot's time");
                if tries == TRIES {
                    return Err(code);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// SNAPSHOT_VDIS: snapshots the working VDIs named in `payload` (a 256-byte tag, then one
/// 256-byte name each) at one point of the total order: a single event makes every old
/// working VDI read-only (a snapshot carrying the tag) and every new one current, so the
/// snapshots hold the VDIs as they were at one moment. All or nothing: a name that is not
/// a working VDI, or already has a snapshot with this tag, refuses the request before
/// anything is written. Returns (snapshot vid, new working vid) per name.
pub async fn snapshot_all(sheep: &Arc<Sheep>, payload: &[u8]) -> Result<Vec<(u32, u32)>, ResultCode> {
    if payload.len() < 512 || !payload.len().is_multiple_of(256) || payload.len() > 256 * (MAX_SNAPSHOT_VDIS + 1) {
        return Err(ResultCode::INVALID_PARMS);
    }
    let tag = parse_name(&payload[..256]).ok_or(ResultCode::INVALID_PARMS)?;
    let names: Vec<Vec<u8>> = payload[256..]
        .chunks_exact(256)
        .map(parse_name)
        .collect::<Option<_>>()
        .ok_or(ResultCode::INVALID_PARMS)?;
    if names.iter().collect::<HashSet<_>>().len() != names.len() {
        return Err(ResultCode::INVALID_PARMS);
    }
    sheep.state().format.as_ref().ok_or(ResultCode::WAIT_FOR_FORMAT)?;
    let (_lock, end) = sheep.driver.lock_ops().await.map_err(driver_failed)?;
    sheep.wait_applied(end).await;
    // Everything is checked and every vid chosen before anything is written. Each new vid is
    // the first free slot of its name's probe sequence once the ones chosen before it here
    // count as used.
    let mut in_use = sheep.state().in_use.clone();
    let mut current = Vec::with_capacity(names.len());
    for name in &names {
        let vid = lookup(sheep, name, &[], 0).await.found?;
        match lookup(sheep, name, &tag, 0).await.found {
            Ok(_) => return Err(ResultCode::VDI_EXIST),
            Err(ResultCode::NO_TAG | ResultCode::NO_VDI) => {}
            Err(code) => return Err(code),
        }
        let ino = read_inode(sheep, vid).await?;
        if ino.header.store_policy != 0 {
            return Err(ResultCode::NO_SUPPORT);
        }
        let (new_vid, _) = free_slot(&in_use, sd_hash_vdi(name).max(1)).ok_or(ResultCode::FULL_VDI)?;
        in_use.set(new_vid);
        current.push((vid, ino, new_vid));
    }
    let now = sd_time(std::time::SystemTime::now());
    let mut news = Vec::with_capacity(names.len());
    for (cur, old, vid) in current {
        crate::cache::push_all(sheep, Some(cur)).await?;
        let oid = Vid::new(cur).ok_or(ResultCode::INVALID_PARMS)?.inode_oid();
        let mut tag_field = vec![0u8; 256];
        protocol::put_cstr(&mut tag_field, &tag);
        let w = Write {
            oid,
            offset: 256,
            data: tag_field.into(),
            create: false,
            copies: 0,
        };
        gateway::write(sheep, w).await?;
        let h = &old.header;
        let mut ino = Inode {
            header: InodeHeader {
                name: h.name.clone(),
                create_time: now,
                vdi_size: h.vdi_size,
                copy_policy: h.copy_policy,
                nr_copies: h.nr_copies,
                block_size_shift: h.block_size_shift,
                vdi_id: vid,
                snap_id: h.snap_id + 1,
                parent_vdi_id: cur,
                ..InodeHeader::default()
            },
            data_vdi_id: old.data_vdi_id,
        };
        ino.data_vdi_id.resize(ino.header.nr_objects() as usize, 0);
        create_inode(sheep, &ino).await?;
        news.push(NewVid {
            vid,
            copies: h.nr_copies,
            block_size_shift: h.block_size_shift,
            snapshot_of: cur,
        });
    }
    sheep
        .commit(Event::VdiSnapshots { vdis: news.clone() })
        .await
        .map_err(driver_failed)?;
    for n in &news {
        stamp_snapshot(sheep, n.snapshot_of, now).await?;
    }
    tracing::info!(count = news.len(), tag = %String::from_utf8_lossy(&tag), "VDIs snapshotted at one moment");
    Ok(news.iter().map(|n| (n.snapshot_of, n.vid)).collect())
}

/// LOCK_VDI of working VDI `vid` for client connection `conn` of this gateway: one writer at
/// a time. Taking it again on the same connection is a no-op; anyone else gets VDI_LOCKED
/// until the holder releases it, its connection closes, or its gateway leaves the cluster.
pub async fn lock(sheep: &Arc<Sheep>, vid: u32, conn: u64) -> Result<(), ResultCode> {
    let me = VdiLock {
        owner: sheep.me.addr,
        client: conn,
    };
    let held = |sheep: &Sheep| sheep.state().locks.get(&vid).copied();
    match held(sheep) {
        Some(l) if l == me => return Ok(()),
        Some(l) => {
            tracing::info!(vid = %format_args!("{vid:x}"), holder = %l.owner, "VDI lock refused: it is open for writing elsewhere");
            return Err(ResultCode::VDI_LOCKED);
        }
        None => {}
    }
    let commit = sheep.commit(Event::LockVdi {
        vid,
        owner: me.owner,
        client: conn,
    });
    crate::cache::taking_lock(sheep, vid, async { commit.await.map_err(driver_failed) }).await?;
    // The cluster's order decided between lockers that raced.
    if held(sheep) == Some(me) {
        tracing::debug!(vid = %format_args!("{vid:x}"), conn, "VDI locked");
        Ok(())
    } else {
        Err(ResultCode::VDI_LOCKED)
    }
}

/// RELEASE_VDI: whoever holds `vid`'s lock loses it (the client's own release, or an
/// operator's).
pub async fn release(sheep: &Arc<Sheep>, vid: u32) -> Result<(), ResultCode> {
    let Some(l) = sheep.state().locks.get(&vid).copied() else {
        return Ok(());
    };
    release_lock(sheep, vid, l).await
}

async fn release_lock(sheep: &Arc<Sheep>, vid: u32, l: VdiLock) -> Result<(), ResultCode> {
    if l.owner == sheep.me.addr {
        // The next writer may be another gateway: nothing of this VDI may stay behind here.
        crate::cache::drop_vdi(sheep, vid).await?;
    }
    sheep
        .commit(Event::ReleaseVdi {
            vid,
            owner: l.owner,
            client: l.client,
        })
        .await
        .map_err(driver_failed)?;
    tracing::debug!(vid = %format_args!("{vid:x}"), holder = %l.owner, client = l.client, "VDI lock released");
    Ok(())
}

/// Client connection `conn` of this gateway closed: the VDIs it locked are free again.
pub async fn release_connection(sheep: &Arc<Sheep>, conn: u64) {
    let me = VdiLock {
        owner: sheep.me.addr,
        client: conn,
    };
    let held: Vec<u32> = sheep
        .state()
        .locks
        .iter()
        .filter(|(_, l)| **l == me)
        .map(|(v, _)| *v)
        .collect();
    for vid in held {
        if let Err(code) = release_lock(sheep, vid, me).await {
            tracing::error!(vid = %format_args!("{vid:x}"), result = %code, "cannot release the VDI lock of a closed connection");
        }
    }
}

fn driver_failed(e: crate::cluster::DriverError) -> ResultCode {
    tracing::error!(error = %e, "cluster driver failed");
    ResultCode::CLUSTER_ERROR
}

/// DEL_VDI: clears the inode's name and size and marks the vid deleted. The inode itself
/// stays, so lookups keep probing past it. The data objects that no live VDI refers to any
/// more are removed after the reply, by [`collector`].
pub async fn del_vdi(sheep: &Arc<Sheep>, req: &RequestHeader, payload: &[u8]) -> Result<u32, ResultCode> {
    let (name, tag) = name_and_tag(payload)?;
    let (_lock, end) = sheep.driver.lock_ops().await.map_err(driver_failed)?;
    sheep.wait_applied(end).await;
    let vid = lookup(sheep, &name, &tag, req.vdi().snapid).await.found?;
    let h = read_header(sheep, vid).await?;
    if h.is_deleted() {
        return Ok(vid);
    }
    let cleared = Inode {
        header: InodeHeader {
            name: String::new(),
            vdi_size: 0,
            ..h
        },
        data_vdi_id: Vec::new(),
    };
    create_inode(sheep, &cleared).await?;
    sheep.commit(Event::VdiDel { vid }).await.map_err(driver_failed)?;
    tracing::info!(vid = %format_args!("{vid:x}"), "VDI deleted");
    sheep.collect.notify_one();
    Ok(vid)
}

/// A collection starts once no delete has come for this long...
const COLLECT_SETTLE: Duration = Duration::from_millis(300);
/// ...or this long after the first delete it serves, whichever is sooner.
const COLLECT_LATEST: Duration = Duration::from_secs(5);

/// A pass that failed, or left objects it could not remove, is tried again this long after...
const COLLECT_RETRY: Duration = Duration::from_secs(5);
/// ...and then twice as long each time, up to this.
const COLLECT_RETRY_MAX: Duration = Duration::from_secs(300);

/// Collects the garbage of the deletes this node served: one pass for a run of deletes
/// (each pass reads every live inode, so the N deletes of a cluster snapshot's cut must
/// not cost N passes), under the lock of VDI operations, like the deletes themselves. A
/// pass that fails (a member does not answer) is tried again until one succeeds.
pub async fn collector(sheep: Arc<Sheep>) {
    let mut retry: Option<Duration> = None;
    loop {
        match retry {
            None => sheep.collect.notified().await,
            Some(after) => tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = sheep.collect.notified() => {}
            },
        }
        let latest = tokio::time::Instant::now() + COLLECT_LATEST;
        loop {
            let left = latest.saturating_duration_since(tokio::time::Instant::now());
            let settle = tokio::time::sleep(COLLECT_SETTLE.min(left));
            tokio::select! {
                biased;
                () = settle => break,
                () = sheep.collect.notified() => {}
            }
        }
        let pass = match sheep.driver.lock_ops().await {
            Ok((_lock, end)) => {
                sheep.wait_applied(end).await;
                collect_garbage(&sheep).await
            }
            Err(e) => Err(driver_failed(e)),
        };
        let again = retry.map_or(COLLECT_RETRY, |d| (d * 2).min(COLLECT_RETRY_MAX));
        retry = match pass {
            Ok(Pass { removed, missed: 0 }) => {
                tracing::info!(removed, "removed unreferenced data objects");
                None
            }
            Ok(Pass { removed, missed }) => {
                tracing::warn!(
                    removed,
                    missed,
                    retry_secs = again.as_secs(),
                    "garbage collection missed some objects or nodes; trying again"
                );
                Some(again)
            }
            Err(code) => {
                tracing::error!(result = %code, retry_secs = again.as_secs(), "garbage collection failed; trying again");
                Some(again)
            }
        };
    }
}

/// What a garbage collection pass did.
struct Pass {
    removed: usize,
    /// Unreferenced objects a node did not remove, and nodes that did not list theirs.
    missed: usize,
}

/// Removes data objects owned by deleted VDIs that no live VDI (working, snapshot or clone)
/// refers to. Objects of live VDIs are never touched: a write may be between creating an
/// object and recording it in the inode.
async fn collect_garbage(sheep: &Arc<Sheep>) -> Result<Pass, ResultCode> {
    let (live, deleted, nodes, epoch) = {
        let st = sheep.state();
        let live: Vec<u32> = st.in_use.iter().filter(|&v| !st.deleted.get(v)).collect();
        let nodes = st.storage_nodes();
        (live, st.deleted.clone(), nodes, st.epoch())
    };
    let mut referenced: HashSet<(u32, u32)> = HashSet::new();
    for vid in live {
        let ino = read_inode(sheep, vid).await?;
        referenced.extend(
            ino.data_vdi_id
                .iter()
                .enumerate()
                .filter(|(_, &v)| v != 0)
                .map(|(i, &v)| (v, i as u32)),
        );
    }
    let lists = join_all(nodes.iter().map(|n| async move {
        let mut req = RequestHeader::new(op::GET_OBJ_LIST);
        req.data_length = protocol::frame::MAX_PAYLOAD;
        (n, sheep.peer(n.addr).call(req, &[]).await)
    }))
    .await;
    let (mut removed, mut missed) = (0, 0);
    for (node, reply) in lists {
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(node = %node.addr, error = %e, "cannot list a node's objects to collect garbage");
                missed += 1;
                continue;
            }
        };
        for chunk in reply.data.chunks_exact(8) {
            let oid = Oid(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
            let key = (oid.vid().get(), oid.index());
            if oid.is_data() && deleted.get(key.0) && !referenced.contains(&key) {
                let mut req = RequestHeader::new(op::REMOVE_PEER);
                req.epoch = epoch;
                req.set_obj(&ObjArgs {
                    oid: oid.0,
                    ..ObjArgs::default()
                });
                match sheep.peer(node.addr).send(req, &[]).await {
                    Ok(r) if r.header.result_code() == ResultCode::SUCCESS => removed += 1,
                    // Gone meanwhile (the node no longer owned it): nothing missed.
                    Ok(r) if r.header.result_code() == ResultCode::NO_OBJ => {}
                    Ok(r) => {
                        missed += 1;
                        tracing::warn!(%oid, node = %node.addr, result = %r.header.result_code(), "cannot remove unreferenced object")
                    }
                    Err(e) => {
                        missed += 1;
                        tracing::warn!(%oid, node = %node.addr, error = %e, "cannot remove unreferenced object")
                    }
                }
            }
        }
    }
    Ok(Pass { removed, missed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let mut f = [0u8; 256];
        assert_eq!(parse_name(&f), None);
        f[..4].copy_from_slice(b"test");
        assert_eq!(parse_name(&f), Some(b"test".to_vec()));
        assert_eq!(parse_name(&[b'a'; 256]), None);
        let mut both = vec![0u8; 512];
        both[..4].copy_from_slice(b"test");
        both[256..258].copy_from_slice(b"t1");
        assert_eq!(name_and_tag(&both), Ok((b"test".to_vec(), b"t1".to_vec())));
        assert_eq!(name_and_tag(&both[..300]), Err(ResultCode::INVALID_PARMS));
    }

    #[test]
    fn free_slots_wrap() {
        let mut b = VdiBitmap::default();
        assert_eq!(free_slot(&b, 5), Some((5, false)));
        b.set(5);
        b.set(6);
        assert_eq!(free_slot(&b, 5), Some((7, false)));
        for v in (NR_VIDS - 2)..NR_VIDS {
            b.set(v);
        }
        assert_eq!(free_slot(&b, NR_VIDS - 2), Some((1, true)));
    }
}
