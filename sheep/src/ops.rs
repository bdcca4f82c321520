//! Request dispatch. Every opcode has one entry in [`kind`], which says how it is served and
//! whether it may run before the cluster is formatted (a "force" op, PROTOCOL.md 1.8).
//!
//! - **Gateway** ops are client object I/O, forwarded to the replicas ([`crate::gateway`]).
//! - **Cluster** ops change shared state and are ordered through the cluster driver.
//! - **Local** ops answer from this node's view.
//! - **Peer** ops are node-to-node object I/O on this node's store ([`crate::peer`]).

use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use protocol::bitmap::BITMAP_BYTES;
use protocol::cluster::{EpochRecord, CLUSTER_INFO_SIZE};
use protocol::frame::{MAX_PAYLOAD, PIECE};
use protocol::inode::{data_vdi_id_offset, DEFAULT_BLOCK_SIZE_SHIFT, MAX_BLOCK_SIZE_SHIFT, MIN_BLOCK_SIZE_SHIFT};
use protocol::node::NODE_SIZE;
use protocol::opcode::{flags, op_name, SD_PROTO_VER, SD_SHEEP_PROTO_VER};
use protocol::{op, Oid, RequestHeader, ResponseHeader, ResultCode};

use crate::cache;
use crate::gateway::{self, Write};
use crate::group::{Event, Format};
use crate::node::Sheep;
use crate::vdi;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Cluster,
    Local,
    Peer,
}

/// How `opcode` is served and whether it works before format. `None`: unknown opcode.
pub fn kind(opcode: u8) -> Option<(Kind, bool)> {
    use Kind::*;
    Some(match opcode {
        op::CREATE_AND_WRITE_OBJ | op::READ_OBJ | op::WRITE_OBJ | op::REMOVE_OBJ | op::DISCARD_OBJ => (Gateway, false),
        op::NEW_VDI | op::DEL_VDI | op::SNAPSHOT_VDIS | op::MAKE_FS | op::SHUTDOWN | op::SET_VNODES => {
            (Cluster, matches!(opcode, op::MAKE_FS | op::SHUTDOWN | op::SET_VNODES))
        }
        op::GET_VDI_INFO
        | op::LOCK_VDI
        | op::RELEASE_VDI
        | op::FLUSH_VDI
        | op::STAT_SHEEP
        | op::STAT_RECOVERY
        | op::GET_HASH
        | op::GET_EPOCH
        | op::GET_VNODES
        | op::STAT
        | op::GET_VDI_ATTR
        | op::GET_VDI_COPIES
        | op::OIDS_EXIST
        | op::STAT_CACHE
        | op::STAT_METRICS
        | op::MD_INFO
        | op::REPAIR_REPLICA
        | op::STAT_SCRUB => (Local, false),
        op::READ_VDIS
        | op::READ_DEL_VDIS
        | op::GET_NODE_LIST
        | op::STAT_CLUSTER
        | op::CLUSTER_INFO
        | op::GET_CLUSTER_DEFAULT
        | op::GET_STORE_LIST
        | op::EXIST => (Local, true),
        o if protocol::opcode::is_peer_op(o) => (Peer, true),
        _ => return None,
    })
}

/// What a handler returns: the reply header's union fields and payload.
#[derive(Default)]
pub struct Answer {
    pub rsp: ResponseHeader,
    pub data: Vec<u8>,
}

impl Answer {
    fn data(data: Vec<u8>) -> Answer {
        Answer {
            data,
            ..Answer::default()
        }
    }
}

type OpResult = Result<Answer, ResultCode>;

/// Serves one request, which came on client connection `conn` of this node, and builds the
/// whole reply.
pub async fn handle(sheep: &Arc<Sheep>, conn: u64, req: &RequestHeader, payload: Bytes) -> (ResponseHeader, Vec<u8>) {
    let in_flight = sheep.metrics.start(req.opcode);
    let received = payload.len();
    let result = match admit(sheep, req) {
        Ok(k) => dispatch(sheep, conn, k, req, payload).await,
        Err(code) => Err(code),
    };
    let (mut rsp, mut data) = match result {
        Ok(a) => (a.rsp, a.data),
        Err(code) => {
            if !matches!(code, ResultCode::NO_OBJ | ResultCode::NO_VDI | ResultCode::NO_TAG) {
                tracing::debug!(op = op_name(req.opcode), result = %code, "request failed");
            }
            (
                ResponseHeader {
                    result: code.0,
                    ..ResponseHeader::default()
                },
                Vec::new(),
            )
        }
    };
    // Never send more than the client will read (PROTOCOL.md 1.5).
    if data.len() > req.reply_capacity() as usize {
        rsp.result = ResultCode::BUFFER_SMALL.0;
        data.clear();
    }
    rsp.opcode = req.opcode;
    rsp.id = req.id;
    rsp.epoch = sheep.state().epoch();
    rsp.data_length = data.len() as u32;
    in_flight.done(ResultCode(rsp.result), received, data.len());
    (rsp, data)
}

/// The checks of PROTOCOL.md 1.8, in order.
fn admit(sheep: &Sheep, req: &RequestHeader) -> Result<Kind, ResultCode> {
    if req.opcode >= 0x80 && req.proto_ver != SD_SHEEP_PROTO_VER {
        return Err(ResultCode::VER_MISMATCH);
    }
    if req.opcode < 0x80 && req.proto_ver > SD_PROTO_VER {
        return Err(ResultCode::VER_MISMATCH);
    }
    let Some((k, force)) = kind(req.opcode) else {
        tracing::warn!(opcode = req.opcode, "unknown opcode");
        return Err(if req.opcode < 0x80 {
            ResultCode::INVALID_PARMS
        } else {
            ResultCode::NO_SUPPORT
        });
    };
    let changes_data = matches!(
        req.opcode,
        op::CREATE_AND_WRITE_OBJ
            | op::WRITE_OBJ
            | op::REMOVE_OBJ
            | op::DISCARD_OBJ
            | op::NEW_VDI
            | op::DEL_VDI
            | op::SNAPSHOT_VDIS
            | op::CREATE_AND_WRITE_PEER
            | op::WRITE_PEER
            | op::REMOVE_PEER
    );
    if changes_data && !sheep.driver.healthy() {
        // Our cluster session lapsed: others may already have moved on without us.
        return Err(ResultCode::HALT);
    }
    let st = sheep.state();
    if st.shutting_down && k != Kind::Peer {
        return Err(ResultCode::SHUTDOWN);
    }
    if st.format.is_none() && !force {
        return Err(ResultCode::WAIT_FOR_FORMAT);
    }
    Ok(k)
}

async fn dispatch(sheep: &Arc<Sheep>, conn: u64, k: Kind, req: &RequestHeader, payload: Bytes) -> OpResult {
    // Every request's task holds the largest of these futures: the rare, large ones are
    // boxed, so that a replica write does not allocate and move kilobytes of VDI-operation
    // state it never uses.
    match k {
        Kind::Peer => crate::peer::serve(sheep, req, payload).await.map(Answer::data),
        Kind::Gateway => gateway_op(sheep, req, payload).await,
        Kind::Cluster => Box::pin(cluster_op(sheep, req, &payload)).await,
        Kind::Local => Box::pin(local_op(sheep, conn, req, &payload)).await,
    }
}

/// Whether a client request would change what a snapshot holds: a write into or removal of
/// its data objects, or a write into its inode's object map (`end`: where the write ends
/// in the object). Such requests are READONLY, so that a client that still writes the VDI
/// it had open when someone else snapshotted it (`dog vdi snapshot` of an attached VDI)
/// learns of the new working VDI and changes nothing of the snapshot. Deleting a snapshot
/// clears its map first, with the DIRECT flag, as the original's dog does; those writes go
/// through, and so do writes into the inode's header (the original's dog writes a tag there
/// just before the snapshot is made, which may race with another snapshot).
fn changes_a_snapshot(sheep: &Sheep, req: &RequestHeader, oid: Oid, end: u64) -> bool {
    let applies = match req.opcode {
        op::WRITE_OBJ if oid.is_data() => true,
        op::WRITE_OBJ => oid.is_inode() && req.flags & flags::DIRECT == 0 && end > u64::from(data_vdi_id_offset(0)),
        op::CREATE_AND_WRITE_OBJ | op::REMOVE_OBJ => oid.is_data(),
        _ => false,
    };
    applies && sheep.state().vdis.get(&oid.vid().get()).is_some_and(|v| v.snapshot)
}

/// The gateway whose client holds the write lock of `oid`'s VDI, when a request would change
/// the VDI's data through another one. A client that lost the lock (an operator's
/// RELEASE_VDI, then another client's LOCK_VDI) may go on writing until it notices; its
/// writes must not land under the new holder's. Clients of the holder's own gateway are not
/// told apart: sheepfs holds the lock on one connection and writes on others.
fn locked_elsewhere(sheep: &Sheep, req: &RequestHeader, oid: Oid) -> Option<std::net::SocketAddr> {
    let writes = matches!(req.opcode, op::WRITE_OBJ | op::CREATE_AND_WRITE_OBJ | op::REMOVE_OBJ);
    if !writes || !oid.is_data() {
        return None;
    }
    sheep.state().lock_owner(oid).filter(|&holder| holder != sheep.me.addr)
}

/// Client object I/O.
async fn gateway_op(sheep: &Arc<Sheep>, req: &RequestHeader, payload: Bytes) -> OpResult {
    let a = req.obj();
    let oid = Oid(a.oid);
    let size = sheep.state().object_size(oid).ok_or(ResultCode::NO_VDI)?;
    let len = if req.flags & flags::WRITE != 0 {
        payload.len() as u64
    } else {
        u64::from(req.data_length)
    };
    if u64::from(a.offset) + len > size {
        tracing::warn!(%oid, offset = a.offset, len, size, "I/O past the object's end refused");
        return Err(ResultCode::INVALID_PARMS);
    }
    if len > u64::from(MAX_PAYLOAD) {
        tracing::warn!(%oid, len, "a read larger than a frame may carry refused");
        return Err(ResultCode::INVALID_PARMS);
    }
    if changes_a_snapshot(sheep, req, oid, u64::from(a.offset) + len) {
        return Err(ResultCode::READONLY);
    }
    if let Some(holder) = locked_elsewhere(sheep, req, oid) {
        tracing::warn!(%oid, %holder, op = op_name(req.opcode), "write refused: the VDI is open for writing through another gateway");
        return Err(ResultCode::VDI_LOCKED);
    }
    // The object cache serves what asks for it; anything else first takes a cached copy's
    // news to the replicas and drops it.
    let written = if req.opcode == op::READ_OBJ { 0 } else { payload.len() };
    let cached = cache::eligible(sheep, oid, req.flags & flags::CACHE != 0, written);
    let empty = if req.opcode == op::READ_OBJ {
        req.data_length == 0
    } else {
        payload.is_empty() && req.opcode == op::WRITE_OBJ
    };
    if empty {
        return Ok(Answer::default());
    }
    match req.opcode {
        op::READ_OBJ if cached => cache::read(sheep, oid, a.offset, req.data_length, a.copies)
            .await
            .map(Answer::data),
        op::WRITE_OBJ if cached => cache::write(sheep, oid, a.offset, payload, a.copies)
            .await
            .map(|()| Answer::default()),
        _ => {
            if req.opcode == op::CREATE_AND_WRITE_OBJ && req.flags & flags::COW != 0 {
                // The base's cached writes (made before it became a snapshot) reach its
                // replicas before they are copied.
                cache::around(sheep, Oid(a.cow_oid), pin!(async { Ok(()) })).await?;
            }
            cache::around(sheep, oid, pin!(uncached(sheep, req, payload, size))).await
        }
    }
}

/// Client object I/O that goes to the replicas (see [`cache::around`]).
async fn uncached(sheep: &Arc<Sheep>, req: &RequestHeader, payload: Bytes, size: u64) -> OpResult {
    let a = req.obj();
    let oid = Oid(a.oid);
    match req.opcode {
        op::READ_OBJ => gateway::read(sheep, oid, a.offset, req.data_length, a.copies)
            .await
            .map(Answer::data),
        op::WRITE_OBJ => {
            let w = Write {
                oid,
                offset: a.offset,
                data: payload,
                create: false,
                copies: a.copies,
            };
            gateway::write(sheep, w).await.map(|()| Answer::default())
        }
        op::CREATE_AND_WRITE_OBJ => {
            let cow = req.flags & flags::COW != 0;
            if cow && payload.len() as u64 != size {
                return Box::pin(copy_on_write(
                    sheep,
                    oid,
                    Oid(a.cow_oid),
                    a.offset,
                    payload,
                    a.copies,
                    size,
                ))
                .await
                .map(|()| Answer::default());
            }
            let w = Write {
                oid,
                offset: a.offset,
                data: payload,
                create: true,
                copies: a.copies,
            };
            gateway::write(sheep, w).await.map(|()| Answer::default())
        }
        op::REMOVE_OBJ => gateway::remove(sheep, oid).await.map(|()| Answer::default()),
        _ => Err(ResultCode::NO_SUPPORT),
    }
}

/// Copy-on-write: `oid` (`size` bytes) is created as `base`'s bytes with `payload` at
/// `offset` laid over them, a piece at a time. The first piece creates the object (zeros
/// elsewhere); later pieces that are all zeros need no write. The client points its inode at
/// `oid` only once this returns, so nobody reads the object half copied.
async fn copy_on_write(
    sheep: &Arc<Sheep>,
    oid: Oid,
    base: Oid,
    offset: u32,
    payload: Bytes,
    copies: u8,
    size: u64,
) -> Result<(), ResultCode> {
    let (lo, hi) = (u64::from(offset), u64::from(offset) + payload.len() as u64);
    for at in (0..size).step_by(PIECE as usize) {
        let end = (at + PIECE).min(size);
        let piece: Bytes = if lo <= at && end <= hi {
            payload.slice((at - lo) as usize..(end - lo) as usize)
        } else {
            let mut p = gateway::read(sheep, base, at as u32, (end - at) as u32, copies).await?;
            if lo < end && at < hi {
                let (from, to) = (lo.max(at), hi.min(end));
                p[(from - at) as usize..(to - at) as usize]
                    .copy_from_slice(&payload[(from - lo) as usize..(to - lo) as usize]);
            }
            p.into()
        };
        let create = at == 0;
        if !create && piece.iter().all(|&b| b == 0) {
            continue;
        }
        let w = Write {
            oid,
            offset: at as u32,
            data: piece,
            create,
            copies,
        };
        gateway::write(sheep, w).await?;
    }
    Ok(())
}

async fn cluster_op(sheep: &Arc<Sheep>, req: &RequestHeader, payload: &[u8]) -> OpResult {
    let mut ans = Answer::default();
    match req.opcode {
        op::NEW_VDI => {
            let c = vdi::new_vdi(sheep, req, payload).await?;
            ans.rsp.set_vdi(c.vid, c.copies, c.block_size_shift);
        }
        op::DEL_VDI => {
            let vid = vdi::del_vdi(sheep, req, payload).await?;
            ans.rsp.set_vdi(vid, 0, 0);
        }
        op::SNAPSHOT_VDIS => {
            let pairs = vdi::snapshot_all(sheep, payload).await?;
            ans.data = pairs
                .iter()
                .flat_map(|&(old, new)| [old.to_le_bytes(), new.to_le_bytes()])
                .flatten()
                .collect();
        }
        op::MAKE_FS => make_fs(sheep, req, payload).await?,
        op::SET_VNODES => set_vnodes(sheep, payload).await?,
        op::SHUTDOWN => {
            sheep.driver.broadcast(Event::Shutdown).await.map_err(|e| {
                tracing::error!(error = %e, "cannot broadcast shutdown");
                ResultCode::CLUSTER_ERROR
            })?;
        }
        _ => return Err(ResultCode::NO_SUPPORT),
    }
    Ok(ans)
}

async fn make_fs(sheep: &Arc<Sheep>, req: &RequestHeader, payload: &[u8]) -> Result<(), ResultCode> {
    let store = protocol::get_cstr(payload);
    if store != "plain" && store != "farm" {
        tracing::warn!(%store, "format with an unknown store refused");
        return Err(ResultCode::NO_STORE);
    }
    let a = req.cluster();
    let copies = if a.copies == 0 { 3 } else { a.copies };
    let bss = if a.block_size_shift == 0 {
        DEFAULT_BLOCK_SIZE_SHIFT
    } else {
        a.block_size_shift
    };
    if copies > vdi::MAX_COPIES || !(MIN_BLOCK_SIZE_SHIFT..=MAX_BLOCK_SIZE_SHIFT).contains(&bss) {
        return Err(ResultCode::INVALID_PARMS);
    }
    let format = Format {
        ctime: a.ctime,
        copies,
        copy_policy: a.copy_policy,
        flags: a.flags,
        block_size_shift: bss,
        store,
    };
    let fail = |e: crate::cluster::DriverError| {
        tracing::error!(error = %e, "format failed in the cluster driver");
        ResultCode::CLUSTER_ERROR
    };
    let (_lock, end) = sheep.driver.lock_ops().await.map_err(fail)?;
    sheep.wait_applied(end).await;
    sheep
        .commit(Event::Format {
            format,
            time: crate::cluster::now_secs(),
        })
        .await
        .map_err(fail)
}

/// SET_VNODES: this node's vnodes become the payload's count (0: its capacity's share, or
/// its `-V` count, again), through a cluster event so every member rebuilds the same ring.
async fn set_vnodes(sheep: &Arc<Sheep>, payload: &[u8]) -> Result<(), ResultCode> {
    let n = <[u8; 4]>::try_from(payload)
        .map(u32::from_le_bytes)
        .map_err(|_| ResultCode::INVALID_PARMS)?;
    let vnodes = match n {
        0 => None,
        n => Some(u16::try_from(n).map_err(|_| ResultCode::INVALID_PARMS)?),
    };
    if sheep.me.is_gateway() {
        return Err(ResultCode::GATEWAY_MODE);
    }
    sheep
        .commit(Event::SetVnodes {
            addr: sheep.me.addr,
            vnodes,
            time: crate::cluster::now_secs(),
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot commit a vnodes change");
            ResultCode::CLUSTER_ERROR
        })?;
    tracing::info!(vnodes = ?vnodes, "this node's vnodes were set (None: by capacity)");
    Ok(())
}

fn bitmap_reply(req: &RequestHeader, bits: &protocol::bitmap::VdiBitmap) -> OpResult {
    if req.data_length as usize != BITMAP_BYTES {
        return Err(ResultCode::INVALID_PARMS);
    }
    Ok(Answer::data(bits.as_bytes().to_vec()))
}

async fn local_op(sheep: &Arc<Sheep>, conn: u64, req: &RequestHeader, payload: &[u8]) -> OpResult {
    let mut ans = Answer::default();
    match req.opcode {
        op::GET_VDI_INFO | op::LOCK_VDI => {
            let (name, tag) = vdi::name_and_tag(payload)?;
            let vid = vdi::lookup(sheep, &name, &tag, req.vdi().snapid).await.found?;
            let v = sheep.state().vdis.get(&vid).copied();
            if req.opcode == op::LOCK_VDI && v.is_some_and(|v| !v.snapshot) {
                // A cache's leftovers from a crash go out under the lock count they were
                // written under: no new lock before they have.
                if let Some(c) = &sheep.cache {
                    cache::ready(c).await?;
                }
                vdi::lock(sheep, vid, conn).await?;
            }
            ans.rsp
                .set_vdi(vid, v.map_or(0, |v| v.copies), v.map_or(0, |v| v.block_size_shift));
        }
        op::RELEASE_VDI => vdi::release(sheep, req.vdi().base_vdi_id).await?,
        op::GET_VDI_ATTR => {
            let f = crate::attr::get_vdi_attr(sheep, req, payload).await?;
            ans.rsp.set_vdi(f.vid, f.copies, 0);
            ans.rsp.set_attr_id(f.attr_id);
        }
        op::READ_VDIS => return bitmap_reply(req, &sheep.state().in_use),
        op::READ_DEL_VDIS => return bitmap_reply(req, &sheep.state().deleted),
        op::FLUSH_VDI => {
            let oid = req.obj().oid;
            cache::push_all(sheep, (oid != 0).then(|| Oid(oid).vid().get())).await?;
            flush_all(sheep, req).await?
        }
        op::STAT_CACHE => {
            let s = sheep.cache.as_ref().map(|c| c.stats()).unwrap_or_default();
            ans.data = [s.limit, s.used, s.dirty, s.hits, s.misses]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
        }
        op::STAT => ans.data = sheep.metrics.node_stat().encode(),
        op::STAT_SCRUB => ans.data = sheep.recovery.scrub_stats().encode(),
        op::REPAIR_REPLICA => {
            let (oid, from) = req.forw();
            crate::recovery::repair(sheep, Oid(oid), from).await?;
        }
        op::MD_INFO => {
            // The original asserts (and dies) on any other length; we refuse it.
            if req.data_length as usize != protocol::stats::MD_INFO_SIZE {
                return Err(ResultCode::INVALID_PARMS);
            }
            ans.data = md_info(sheep).await?;
        }
        op::STAT_METRICS => ans.data = crate::scrape::render(sheep).into_bytes(),
        op::GET_CLUSTER_DEFAULT => {
            let st = sheep.state();
            let f = st.format.as_ref();
            ans.rsp.set_cluster_default(
                f.map_or(0, |f| f.copies),
                f.map_or(0, |f| f.copy_policy),
                f.map_or(0, |f| f.block_size_shift),
            );
        }
        op::GET_NODE_LIST => {
            let st = sheep.state();
            let nodes = st.nodes();
            let fit = (req.data_length as usize / NODE_SIZE).min(nodes.len());
            if fit < nodes.len() {
                return Err(ResultCode::BUFFER_SMALL);
            }
            ans.data = nodes.iter().flat_map(|n| n.encode()).collect();
            ans.rsp.set_node(nodes.len() as u32, 0, 0);
        }
        op::STAT_CLUSTER => return stat_cluster(sheep, req),
        op::CLUSTER_INFO => {
            if (req.data_length as usize) < CLUSTER_INFO_SIZE {
                return Err(ResultCode::BUFFER_SMALL);
            }
            ans.data = sheep.state().cluster_info().encode();
        }
        op::GET_STORE_LIST => ans.data = b"plain farm \0".to_vec(),
        op::STAT_SHEEP => {
            let (size, free) = if sheep.me.is_gateway() {
                (0, 0)
            } else {
                sheep.store.space().map_err(|_| ResultCode::EIO)?
            };
            ans.rsp.set_node(sheep.state().nodes().len() as u32, size, free);
        }
        op::STAT_RECOVERY => {
            let p = sheep.recovery.progress();
            ans.data = vec![0u8; 24];
            ans.data[0] = u8::from(p.running);
            ans.data[4..8].copy_from_slice(&u32::from(p.running).to_le_bytes());
            ans.data[8..16].copy_from_slice(&p.done.to_le_bytes());
            ans.data[16..24].copy_from_slice(&p.total.to_le_bytes());
            ans.rsp.set_recovered_epoch(sheep.recovery.recovered_epoch());
        }
        op::EXIST => {
            if !sheep.store.exists(Oid(req.obj().oid)) {
                return Err(ResultCode::NO_OBJ);
            }
        }
        op::GET_HASH => {
            let oid = Oid(req.obj().oid);
            let size = sheep.state().object_size(oid).ok_or(ResultCode::NO_VDI)? as usize;
            if crate::peer::holds_unrecovered(sheep, oid) {
                return Err(ResultCode::NODE_IN_RECOVERY);
            }
            let s = sheep.clone();
            let h = tokio::task::spawn_blocking(move || s.store.hash(oid, size))
                .await
                .map_err(|_| ResultCode::SYSTEM_ERROR)?
                .map_err(|e| e.code())?;
            ans.rsp.set_hash(&h);
        }
        op::GET_EPOCH => {
            let st = sheep.state();
            let want = req.obj().tgt_epoch;
            let e = st.epochs.iter().find(|e| e.epoch == want).ok_or(ResultCode::NO_TAG)?;
            ans.data = e.nodes.iter().flat_map(|n| n.encode()).collect();
            ans.data.extend_from_slice(&e.time.to_le_bytes());
        }
        op::GET_VNODES => ans.data = u32::from(sheep.me.nr_vnodes).to_le_bytes().to_vec(),
        _ => return Err(ResultCode::NO_SUPPORT),
    }
    Ok(ans)
}

/// MD_INFO: this node's store as its one disk (a gateway has none).
async fn md_info(sheep: &Arc<Sheep>) -> Result<Vec<u8>, ResultCode> {
    if sheep.me.is_gateway() {
        return Ok(protocol::stats::encode_md_info(&[]));
    }
    let s = sheep.clone();
    let (free, used) =
        tokio::task::spawn_blocking(move || Ok::<_, std::io::Error>((s.store.space()?.1, s.store.used())))
            .await
            .map_err(|_| ResultCode::SYSTEM_ERROR)?
            .map_err(|e| {
                tracing::error!(error = %e, "cannot stat the store");
                ResultCode::EIO
            })?;
    let disk = protocol::stats::MdDisk {
        idx: 0,
        free,
        used,
        path: sheep.store.dir().display().to_string(),
    };
    Ok(protocol::stats::encode_md_info(&[disk]))
}

/// FLUSH_VDI: every storage node makes the VDI's writes durable (every write, when the
/// request names no VDI).
async fn flush_all(sheep: &Arc<Sheep>, req: &RequestHeader) -> Result<(), ResultCode> {
    let mut flush = RequestHeader::new(op::FLUSH_PEER);
    flush.set_obj(&protocol::ObjArgs {
        oid: req.obj().oid,
        ..protocol::ObjArgs::default()
    });
    let flush = &flush;
    let nodes: Vec<_> = sheep.state().storage_nodes();
    let results = futures::future::join_all(nodes.iter().map(|n| async move {
        if n.addr == sheep.me.addr {
            crate::peer::serve_local(sheep, flush, Bytes::new()).await.map(|_| ())
        } else {
            sheep
                .peer(n.addr)
                .call(flush.clone(), &[])
                .await
                .map(|_| ())
                .map_err(|e| {
                    tracing::error!(node = %n.addr, error = %e, "flush failed");
                    ResultCode::EIO
                })
        }
    }))
    .await;
    results.into_iter().collect()
}

fn stat_cluster(sheep: &Sheep, req: &RequestHeader) -> OpResult {
    let st = sheep.state();
    if st.format.is_none() {
        return Err(ResultCode::WAIT_FOR_FORMAT);
    }
    let nodes_nr = req.cluster().nodes_nr as usize;
    let stride = EpochRecord::stride(nodes_nr);
    let max = (req.data_length as usize).min(MAX_PAYLOAD as usize) / stride;
    let records = st.epoch_records();
    let records = &records[..records.len().min(max)];
    if nodes_nr > 0 && records.iter().any(|r| r.nodes.len() > nodes_nr) {
        return Err(ResultCode::BUFFER_SMALL);
    }
    let mut data = Vec::with_capacity(records.len() * stride);
    for r in records {
        r.encode_into(&mut data, nodes_nr);
    }
    Ok(Answer::data(data))
}
