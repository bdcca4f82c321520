//! A small in-memory sheep for tests: one node, the ops `dog` sends, VID lookup as in
//! PROTOCOL.md 3.3 (without wrap-around), and a log of every request so that tests can check
//! the exact traffic. Each object request sleeps a little outside the state lock so that
//! concurrent requests overlap; the largest overlap seen is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::bitmap::{VdiBitmap, BITMAP_BYTES};
use protocol::cluster::{status, ClusterInfo, EpochRecord, CLUSTER_INFO_SIZE};
use protocol::frame::{read_request, write_frame};
use protocol::hash::sd_hash_vdi;
use protocol::inode::{sd_time, InodeHeader, INODE_HEADER_SIZE, INODE_SIZE};
use protocol::node::{default_zone, Node};
use protocol::{flags, get_cstr, op, RequestHeader, ResponseHeader, ResultCode};
use tokio::net::{TcpListener, TcpStream};

/// One logged request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub opcode: u8,
    pub flags: u16,
    pub oid: u64,
    pub cow_oid: u64,
    pub offset: u32,
    pub data_length: u32,
    /// Set for GET_VDI_INFO, NEW_VDI and DEL_VDI.
    pub snapid: u32,
    /// The payload when it is at most 16 bytes.
    pub small: Vec<u8>,
}

#[derive(Default)]
struct State {
    ctime: u64,
    copies: u8,
    bss: u8,
    epoch: u32,
    in_use: VdiBitmap,
    deleted: VdiBitmap,
    objects: HashMap<u64, Vec<u8>>,
    log: Vec<Logged>,
}

pub struct Mock {
    pub addr: SocketAddr,
    state: Mutex<State>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

fn vid_of(oid: u64) -> u32 {
    ((oid >> 32) & 0x00ff_ffff) as u32
}

fn vdi_oid(vid: u32) -> u64 {
    (1 << 63) | (u64::from(vid) << 32)
}

impl Mock {
    pub async fn start() -> Arc<Mock> {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let m = Arc::new(Mock {
            addr: l.local_addr().expect("addr"),
            state: Mutex::new(State::default()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let server = Arc::clone(&m);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(Arc::clone(&server).serve(s));
            }
        });
        m
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    pub fn object(&self, oid: u64) -> Option<Vec<u8>> {
        self.lock().objects.get(&oid).cloned()
    }

    async fn serve(self: Arc<Self>, mut s: TcpStream) {
        while let Ok(Some((h, payload))) = read_request(&mut s, 1 << 27).await {
            let is_obj = matches!(h.opcode, op::READ_OBJ | op::WRITE_OBJ | op::CREATE_AND_WRITE_OBJ);
            if is_obj {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let (code, data, vdi) = self.handle(&h, &payload);
            if is_obj {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            let epoch = self.lock().epoch;
            let mut r = ResponseHeader::reply_to(&h, code, epoch);
            if let Some((vid, copies, bss)) = vdi {
                r.set_vdi(vid, copies, bss);
            }
            r.data_length = data.len() as u32;
            if write_frame(&mut s, &r.encode(), &data).await.is_err() {
                return;
            }
        }
    }

    fn object_size(st: &State, oid: u64) -> usize {
        if oid >> 63 == 1 {
            return INODE_SIZE;
        }
        let bss = st
            .objects
            .get(&vdi_oid(vid_of(oid)))
            .and_then(|b| InodeHeader::decode(b))
            .map_or(22, |h| h.block_size_shift);
        1 << bss
    }

    /// VID lookup (PROTOCOL.md 3.3): Ok(vid) or Err(code), plus the free slot.
    fn lookup(st: &State, name: &str, tag: &str, snapid: u32) -> (Result<u32, ResultCode>, u32) {
        let left = sd_hash_vdi(name.as_bytes()).max(1);
        let right = st.in_use.next_clear(left).unwrap_or(left);
        let mut working_seen = false;
        for vid in (left..right).rev() {
            if !st.in_use.get(vid) && !st.deleted.get(vid) {
                continue;
            }
            let Some(h) = st.objects.get(&vdi_oid(vid)).and_then(|b| InodeHeader::decode(b)) else {
                continue;
            };
            if h.name != name {
                continue;
            }
            if tag.is_empty() && snapid == 0 {
                if h.is_snapshot() {
                    return (Err(ResultCode::NO_VDI), right);
                }
                return (Ok(vid), right);
            }
            if !h.is_snapshot() {
                working_seen = true;
                continue;
            }
            if (!tag.is_empty() && h.tag == tag) || (snapid != 0 && h.snap_id == snapid) {
                return (Ok(vid), right);
            }
        }
        let miss = if (!tag.is_empty() || snapid != 0) && working_seen {
            ResultCode::NO_TAG
        } else {
            ResultCode::NO_VDI
        };
        (Err(miss), right)
    }

    #[allow(clippy::type_complexity)]
    fn handle(&self, h: &RequestHeader, p: &[u8]) -> (ResultCode, Vec<u8>, Option<(u32, u8, u8)>) {
        let mut st = self.lock();
        let o = h.obj();
        st.log.push(Logged {
            opcode: h.opcode,
            flags: h.flags,
            oid: o.oid,
            cow_oid: o.cow_oid,
            offset: o.offset,
            data_length: h.data_length,
            snapid: h.vdi().snapid,
            small: if p.len() <= 16 { p.to_vec() } else { Vec::new() },
        });
        let ok = ResultCode::SUCCESS;
        match h.opcode {
            op::GET_NODE_LIST => {
                let ip = self.addr.ip();
                let n = Node {
                    addr: self.addr,
                    nr_vnodes: 128,
                    zone: default_zone(ip),
                    space: 1 << 30,
                };
                (ok, n.encode().to_vec(), None)
            }
            op::STAT_CLUSTER => {
                if st.ctime == 0 {
                    return (ResultCode::WAIT_FOR_FORMAT, Vec::new(), None);
                }
                let nodes_nr = h.cluster().nodes_nr as usize;
                let rec = EpochRecord {
                    ctime: st.ctime,
                    time: st.ctime >> 32,
                    epoch: 1,
                    nr_copies: st.copies,
                    flags: 4,
                    drv_name: "plain".into(),
                    nodes: vec![Node {
                        addr: self.addr,
                        nr_vnodes: 128,
                        zone: 1,
                        space: 0,
                    }],
                    ..EpochRecord::default()
                };
                if nodes_nr == 0 {
                    let mut out = Vec::new();
                    rec.encode_into(&mut out, 0);
                    return (ok, out, None);
                }
                let mut out = Vec::new();
                if EpochRecord::stride(nodes_nr) <= h.data_length as usize {
                    rec.encode_into(&mut out, nodes_nr);
                }
                (ok, out, None)
            }
            op::CLUSTER_INFO => {
                let ci = ClusterInfo {
                    epoch: st.epoch,
                    ctime: st.ctime,
                    flags: 4,
                    nr_copies: st.copies,
                    status: if st.ctime == 0 { status::WAIT } else { status::OK },
                    block_size_shift: st.bss,
                    default_store: "plain".into(),
                    ..ClusterInfo::default()
                };
                let mut b = ci.encode();
                b.truncate(CLUSTER_INFO_SIZE.min(h.data_length as usize));
                (ok, b, None)
            }
            op::MAKE_FS => {
                let c = h.cluster();
                st.ctime = c.ctime;
                st.copies = if c.copies == 0 { 3 } else { c.copies };
                st.bss = if c.block_size_shift == 0 {
                    22
                } else {
                    c.block_size_shift
                };
                st.epoch = 1;
                st.objects.clear();
                st.in_use = VdiBitmap::default();
                st.deleted = VdiBitmap::default();
                (ok, Vec::new(), None)
            }
            op::READ_VDIS | op::READ_DEL_VDIS => {
                if h.data_length as usize != BITMAP_BYTES {
                    return (ResultCode::INVALID_PARMS, Vec::new(), None);
                }
                let b = if h.opcode == op::READ_VDIS {
                    &st.in_use
                } else {
                    &st.deleted
                };
                (ok, b.as_bytes().to_vec(), None)
            }
            op::GET_VDI_INFO => {
                let (name, tag) = (get_cstr(&p[..256]), get_cstr(&p[256..]));
                match Self::lookup(&st, &name, &tag, h.vdi().snapid).0 {
                    Ok(vid) => (ok, Vec::new(), Some((vid, st.copies, st.bss))),
                    Err(c) => (c, Vec::new(), None),
                }
            }
            op::NEW_VDI => {
                if p.len() != 256 {
                    return (ResultCode::INVALID_PARMS, Vec::new(), None);
                }
                let name = get_cstr(p);
                let a = h.vdi();
                let (found, slot) = Self::lookup(&st, &name, "", 0);
                let copies = if a.copies == 0 { st.copies } else { a.copies };
                let bss = if a.block_size_shift == 0 {
                    st.bss
                } else {
                    a.block_size_shift
                };
                let mut snap_id = 1;
                if a.snapid == 0 {
                    if found.is_ok() {
                        return (ResultCode::VDI_EXIST, Vec::new(), None);
                    }
                } else {
                    let cur = match found {
                        Ok(cur) => cur,
                        Err(c) => return (c, Vec::new(), None),
                    };
                    let oid = vdi_oid(cur);
                    let Some(b) = st.objects.get_mut(&oid) else {
                        return (ResultCode::NO_VDI, Vec::new(), None);
                    };
                    let mut ch = InodeHeader::decode(b).unwrap_or_default();
                    snap_id = ch.snap_id + 1;
                    ch.snap_ctime = sd_time(std::time::SystemTime::now());
                    ch.encode_into(b);
                }
                let mut inode = match st.objects.get(&vdi_oid(a.base_vdi_id)) {
                    Some(b) if a.base_vdi_id != 0 => b.clone(),
                    _ => vec![0u8; INODE_SIZE],
                };
                let nh = InodeHeader {
                    name,
                    create_time: sd_time(std::time::SystemTime::now()),
                    vdi_size: a.vdi_size,
                    nr_copies: copies,
                    copy_policy: a.copy_policy,
                    block_size_shift: bss,
                    snap_id,
                    vdi_id: slot,
                    parent_vdi_id: a.base_vdi_id,
                    ..InodeHeader::default()
                };
                nh.encode_into(&mut inode);
                st.objects.insert(vdi_oid(slot), inode);
                st.in_use.set(slot);
                (ok, Vec::new(), Some((slot, copies, bss)))
            }
            op::DEL_VDI => {
                let (name, tag) = (get_cstr(&p[..256]), get_cstr(&p[256..]));
                match Self::lookup(&st, &name, &tag, h.vdi().snapid).0 {
                    Ok(vid) => {
                        if let Some(b) = st.objects.get_mut(&vdi_oid(vid)) {
                            b[..256].fill(0);
                            b[536..544].fill(0);
                            b[INODE_HEADER_SIZE..].fill(0);
                        }
                        st.deleted.set(vid);
                        (ok, Vec::new(), Some((vid, 0, 0)))
                    }
                    Err(c) => (c, Vec::new(), None),
                }
            }
            op::READ_OBJ => {
                let Some(b) = st.objects.get(&o.oid) else {
                    return (ResultCode::NO_OBJ, Vec::new(), None);
                };
                let start = o.offset as usize;
                let mut out = vec![0u8; h.data_length as usize];
                if start < b.len() {
                    let n = out.len().min(b.len() - start);
                    out[..n].copy_from_slice(&b[start..start + n]);
                }
                (ok, out, None)
            }
            op::WRITE_OBJ | op::CREATE_AND_WRITE_OBJ => {
                let create = h.opcode == op::CREATE_AND_WRITE_OBJ;
                if o.oid >> 63 == 0 {
                    let owner = st
                        .objects
                        .get(&vdi_oid(vid_of(o.oid)))
                        .and_then(|b| InodeHeader::decode(b));
                    if owner.is_some_and(|h| h.is_snapshot()) {
                        return (ResultCode::READONLY, Vec::new(), None);
                    }
                }
                let size = Self::object_size(&st, o.oid);
                let mut obj = if create {
                    if h.flags & flags::COW != 0 {
                        match st.objects.get(&o.cow_oid) {
                            Some(b) => b.clone(),
                            None => return (ResultCode::NO_OBJ, Vec::new(), None),
                        }
                    } else {
                        vec![0u8; size]
                    }
                } else {
                    match st.objects.remove(&o.oid) {
                        Some(b) => b,
                        None => return (ResultCode::NO_OBJ, Vec::new(), None),
                    }
                };
                let start = o.offset as usize;
                if obj.len() < start + p.len() {
                    obj.resize(start + p.len(), 0);
                }
                obj[start..start + p.len()].copy_from_slice(p);
                st.objects.insert(o.oid, obj);
                (ok, Vec::new(), None)
            }
            op::STAT_SHEEP => {
                if st.ctime == 0 {
                    return (ResultCode::WAIT_FOR_FORMAT, Vec::new(), None);
                }
                (ok, Vec::new(), None)
            }
            _ => (ResultCode::INVALID_PARMS, Vec::new(), None),
        }
    }
}
