//! Talking to sheep: the connection to the configured node, the NODELIST prefix, and one
//! helper per request shape that `dog` sends (PROTOCOL.md sections 4 and 5).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::cluster::{ClusterInfo, EpochRecord, CLUSTER_INFO_SIZE};
use protocol::inode::{InodeHeader, INODE_HEADER_SIZE, INODE_SIZE};
use protocol::node::{Node, NODE_SIZE, SD_MAX_NODES};
use protocol::opcode::cluster_flags;
pub use protocol::requests::name_payload;
use protocol::{flags, op, Client, ClientError, ClusterArgs, ObjArgs, Reply, RequestHeader, ResultCode, VdiArgs};

use crate::error::{fail, Failure};

/// How long the liveness probe waits for a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a TCP connection to `addr` and closes it at once, as the original does before it
/// talks to a node; a node that is down is reported here with a clear message.
pub async fn probe(addr: SocketAddr) -> Result<(), Failure> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            drop(s);
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::new(format!("Failed to connect to {addr}: {e}"))),
        Err(_) => Err(Failure::new(format!(
            "Failed to connect to {addr}: no answer within {PROBE_TIMEOUT:?}"
        ))),
    }
}

/// A probed connection pool to one sheep.
pub async fn connect(addr: SocketAddr) -> Result<Arc<Client>, Failure> {
    probe(addr).await?;
    Ok(Arc::new(Client::new(addr)))
}

/// What the NODELIST prefix learns.
pub struct NodeList {
    /// The members, in the order the server sent them (sorted by address).
    pub nodes: Vec<Node>,
    /// The server's current epoch (`rsp.epoch` of STAT_CLUSTER).
    pub epoch: u32,
}

/// NODELIST: GET_NODE_LIST for the whole table, then STAT_CLUSTER with room for no nodes
/// to learn the epoch and check the cluster flags.
pub async fn node_list(c: &Client) -> Result<NodeList, Failure> {
    let mut req = RequestHeader::new(op::GET_NODE_LIST);
    req.data_length = (SD_MAX_NODES * NODE_SIZE) as u32;
    let r = c
        .call(req, &[])
        .await
        .map_err(|e| fail("Failed to get node list", &e))?;
    // The count comes from the payload length, as in the original.
    let nodes = Node::decode_list(&r.data);
    if nodes.is_empty() {
        return Err(Failure::new("There are no active sheep daemons"));
    }
    let mut req = RequestHeader::new(op::STAT_CLUSTER);
    req.data_length = EpochRecord::stride(0) as u32;
    let r = c
        .send(req, &[])
        .await
        .map_err(|e| fail("Failed to get node list", &e))?;
    if r.header.result_code() == ResultCode::SUCCESS {
        let records = EpochRecord::decode_all(&r.data, 0);
        if let Some(first) = records.first() {
            if first.flags & cluster_flags::DISKMODE != 0 {
                return Err(Failure::new(
                    "The cluster runs in disk vnode mode, which this dog does not support",
                ));
            }
        }
    }
    Ok(NodeList {
        nodes,
        epoch: r.header.epoch,
    })
}

/// STAT_CLUSTER with room for `epoch` records of `nodes_nr` nodes each, doubling the node
/// room while the server answers BUFFER_SMALL (PROTOCOL.md 5.10). Returns the reply with the
/// node room its records were laid out with.
pub async fn stat_cluster(c: &Client, epoch: u32, nodes: usize) -> Result<(Reply, usize), Failure> {
    let mut nodes_nr = nodes.max(1);
    loop {
        let len = (epoch as usize).saturating_mul(EpochRecord::stride(nodes_nr));
        let mut req = RequestHeader::new(op::STAT_CLUSTER);
        req.data_length = u32::try_from(len).map_err(|_| Failure::new("The epoch log is too large to fetch"))?;
        req.set_cluster(&ClusterArgs {
            nodes_nr: nodes_nr as u32,
            ..ClusterArgs::default()
        });
        let r = c
            .send(req, &[])
            .await
            .map_err(|e| fail("Failed to get cluster status", &e))?;
        if r.header.result_code() != ResultCode::BUFFER_SMALL {
            return Ok((r, nodes_nr));
        }
        if nodes_nr >= SD_MAX_NODES {
            return Err(Failure::new(format!(
                "Failed to get cluster status: the server still answers '{}' with room for {} \
                 nodes per epoch",
                ResultCode::BUFFER_SMALL.message(),
                nodes_nr
            )));
        }
        nodes_nr = (nodes_nr * 2).min(SD_MAX_NODES);
    }
}

/// CLUSTER_INFO: the reply whatever its result, decoded.
pub async fn cluster_info(c: &Client) -> Result<(ResultCode, ClusterInfo), ClientError> {
    let mut req = RequestHeader::new(op::CLUSTER_INFO);
    req.data_length = CLUSTER_INFO_SIZE as u32;
    let r = c.send(req, &[]).await?;
    let info = ClusterInfo::decode(&r.data).unwrap_or_default();
    Ok((r.header.result_code(), info))
}

/// GET_VDI_INFO (512-byte name + tag) → the vid.
pub async fn find_vdi(c: &Client, name: &str, snapid: u32, tag: &str) -> Result<u32, ClientError> {
    let mut req = RequestHeader::new(op::GET_VDI_INFO);
    req.set_vdi(&VdiArgs {
        snapid,
        ..VdiArgs::default()
    });
    let r = c.call(req, &name_payload(name, Some(tag))).await?;
    Ok(r.header.vdi_id())
}

/// Arguments of a NEW_VDI request.
pub struct NewVdi<'a> {
    pub name: &'a str,
    pub size: u64,
    pub base: u32,
    pub copies: u8,
    pub copy_policy: u8,
    pub store_policy: u8,
    pub block_size_shift: u8,
    pub snapshot: bool,
}

impl<'a> NewVdi<'a> {
    /// A VDI `name` shaped as `h` (size, copies, policies, object size), based on `base`.
    pub fn like(name: &'a str, h: &InodeHeader, base: u32, snapshot: bool) -> NewVdi<'a> {
        NewVdi {
            name,
            size: h.vdi_size,
            base,
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            store_policy: h.store_policy,
            block_size_shift: h.block_size_shift,
            snapshot,
        }
    }
}

/// NEW_VDI → the new vid.
pub async fn new_vdi(c: &Client, v: &NewVdi<'_>) -> Result<u32, ClientError> {
    let mut req = RequestHeader::new(op::NEW_VDI);
    req.set_vdi(&VdiArgs {
        vdi_size: v.size,
        base_vdi_id: v.base,
        copies: v.copies,
        copy_policy: v.copy_policy,
        store_policy: v.store_policy,
        block_size_shift: v.block_size_shift,
        snapid: u32::from(v.snapshot),
        ..VdiArgs::default()
    });
    let r = c.call(req, &name_payload(v.name, None)).await?;
    Ok(r.header.vdi_id())
}

/// READ_OBJ of `len` bytes at `offset`. A reply of another length is an error: `dog` never
/// makes up bytes the server did not send.
pub async fn read_obj(c: &Client, oid: u64, offset: u32, len: u32, direct: bool) -> Result<Vec<u8>, ClientError> {
    let mut req = RequestHeader::new(op::READ_OBJ);
    req.data_length = len;
    if direct {
        req.flags |= flags::DIRECT;
    }
    req.set_obj(&ObjArgs {
        oid,
        offset,
        ..ObjArgs::default()
    });
    let r = c.call(req, &[]).await?;
    if r.data.len() != len as usize {
        return Err(short_reply(c, r.data.len(), len));
    }
    Ok(r.data)
}

fn short_reply(c: &Client, got: usize, want: u32) -> ClientError {
    ClientError::Transport {
        addr: c.addr(),
        op: "READ_OBJ",
        source: protocol::frame::FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the reply carries {got} bytes instead of the {want} asked for"),
        )),
    }
}

/// One object write: WRITE_OBJ, or CREATE_AND_WRITE_OBJ when `create` (with COW from
/// `cow_oid` when that is not 0). An empty `data` still sends WRITE with `data_length` 0.
pub struct ObjWrite<'a> {
    pub oid: u64,
    pub cow_oid: u64,
    pub data: &'a [u8],
    pub offset: u32,
    pub flags: u16,
    pub copies: u8,
    pub copy_policy: u8,
    pub create: bool,
}

pub async fn write_obj(c: &Client, w: &ObjWrite<'_>) -> Result<(), ClientError> {
    let opcode = if w.create {
        op::CREATE_AND_WRITE_OBJ
    } else {
        op::WRITE_OBJ
    };
    let mut req = RequestHeader::new(opcode);
    req.flags = w.flags | flags::WRITE;
    if w.cow_oid != 0 {
        req.flags |= flags::COW;
    }
    req.data_length = w.data.len() as u32;
    req.set_obj(&ObjArgs {
        oid: w.oid,
        cow_oid: w.cow_oid,
        copies: w.copies,
        copy_policy: w.copy_policy,
        offset: w.offset,
        ..ObjArgs::default()
    });
    c.call(req, w.data).await.map(|_| ())
}

/// Reads an inode: the header alone (`INODE_HEADER_SIZE`) or the whole object.
pub async fn read_inode_bytes(c: &Client, vid: u32, whole: bool, direct: bool) -> Result<Vec<u8>, ClientError> {
    let len = if whole { INODE_SIZE } else { INODE_HEADER_SIZE };
    read_obj(c, vdi_oid(vid), 0, len as u32, direct).await
}

/// Decodes an inode header read by [`read_inode_bytes`].
pub fn header_of(b: &[u8]) -> Result<InodeHeader, Failure> {
    InodeHeader::decode(b).ok_or_else(|| Failure::new("the inode object is too short"))
}

pub fn vdi_oid(vid: u32) -> u64 {
    (1 << 63) | (u64::from(vid) << 32)
}

pub fn data_oid(vid: u32, idx: u32) -> u64 {
    (u64::from(vid) << 32) | u64::from(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_oids() {
        let p = name_payload("test", Some("snap"));
        assert_eq!(p.len(), 512);
        assert_eq!(&p[..5], b"test\0");
        assert_eq!(&p[256..261], b"snap\0");
        assert_eq!(name_payload("test", None).len(), 256);
        assert_eq!(vdi_oid(0x7c2b25), 0x807c_2b25_0000_0000);
        assert_eq!(data_oid(0x7c2b25, 5), 0x007c_2b25_0000_0005);
    }
}
