//! Gateway: turns client object I/O into peer requests on the object's replica set.
//!
//! Writes go to every replica in parallel and succeed only when all do. Reads try this node
//! first when it is a replica, then the others in placement order; a replica whose copy
//! recovery has not reached yet declines at first (a current one serves at once), and is
//! asked again, to recover the object and serve it, only when no replica could. When a
//! replica cannot be reached or answers with an epoch mismatch, the gateway waits for the
//! membership to settle (the driver notices a dead node within a second) and retries with
//! the new placement.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use protocol::node::Node;
use protocol::{op, ObjArgs, Oid, RequestHeader, ResultCode};

use crate::node::Sheep;

/// Attempts per request across epoch changes.
const ATTEMPTS: usize = 20;
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// A write to one object.
pub struct Write {
    pub oid: Oid,
    pub offset: u32,
    /// Shared with the local replica's store write, which runs on the blocking pool.
    pub data: Bytes,
    /// Create (or replace) the object rather than write into an existing one.
    pub create: bool,
    /// Copies requested by the client; 0 = the VDI's.
    pub copies: u8,
}

/// A failure that the next epoch may cure.
fn retriable(code: ResultCode) -> bool {
    matches!(
        code,
        ResultCode::OLD_NODE_VER | ResultCode::NEW_NODE_VER | ResultCode::NETWORK_ERROR | ResultCode::NODE_IN_RECOVERY
    )
}

/// The replica set for `oid` now, and the epoch it belongs to. In strict mode (format -t) a
/// write needs all its copies: with fewer zones than copies, the set is empty (HALT).
fn write_placement(sheep: &Sheep, oid: Oid, copies: u8) -> (Vec<Node>, u32) {
    let (nodes, epoch) = placement(sheep, oid, copies);
    let st = sheep.state();
    let want = if copies == 0 {
        st.copies_for(oid.vid().get())
    } else {
        copies
    };
    let strict = st
        .format
        .as_ref()
        .is_some_and(|f| f.flags & protocol::opcode::cluster_flags::STRICT != 0);
    if strict && nodes.len() < usize::from(want) {
        tracing::warn!(%oid, zones = nodes.len(), copies = want, "write halted: fewer zones than copies (strict mode)");
        return (Vec::new(), epoch);
    }
    (nodes, epoch)
}

fn placement(sheep: &Sheep, oid: Oid, copies: u8) -> (Vec<Node>, u32) {
    let st = sheep.state();
    let copies = if copies == 0 {
        st.copies_for(oid.vid().get())
    } else {
        copies
    };
    let ring = st.ring();
    let nodes = ring.replicas(oid.0, usize::from(copies)).into_iter().cloned().collect();
    (nodes, st.epoch())
}

async fn wait_for_new_epoch(sheep: &Sheep, epoch: u32) {
    let deadline = tokio::time::Instant::now() + RETRY_PAUSE * 4;
    while sheep.state().epoch() == epoch && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one peer request (or serves it from the local store when `node` is this sheep).
async fn to_replica(
    sheep: &Arc<Sheep>,
    node: &Node,
    mut req: RequestHeader,
    payload: &Bytes,
) -> Result<Vec<u8>, ResultCode> {
    if node.addr == sheep.me.addr {
        return crate::peer::serve(sheep, &req, payload.clone()).await;
    }
    req.proto_ver = protocol::opcode::SD_SHEEP_PROTO_VER;
    match sheep.replica(node.addr).send(req, payload).await {
        Ok(r) if r.header.result_code() == ResultCode::SUCCESS => Ok(r.data),
        Ok(r) => Err(r.header.result_code()),
        Err(e) => {
            tracing::warn!(node = %node.addr, error = %e, "peer request failed");
            Err(ResultCode::NETWORK_ERROR)
        }
    }
}

fn peer_req(opcode: u8, epoch: u32, oid: Oid, offset: u32, len: u32) -> RequestHeader {
    let mut req = RequestHeader::new(opcode);
    req.epoch = epoch;
    req.data_length = len;
    req.set_obj(&ObjArgs {
        oid: oid.0,
        offset,
        ..ObjArgs::default()
    });
    req
}

/// Reads `len` bytes of `oid` at `offset` from one replica.
pub async fn read(sheep: &Arc<Sheep>, oid: Oid, offset: u32, len: u32, copies: u8) -> Result<Vec<u8>, ResultCode> {
    let mut errors = Vec::new();
    for _ in 0..ATTEMPTS {
        let (mut nodes, epoch) = placement(sheep, oid, copies);
        if nodes.is_empty() {
            return Err(ResultCode::HALT);
        }
        // Our own copy first: no network hop.
        if let Some(i) = nodes.iter().position(|n| n.addr == sheep.me.addr) {
            nodes.swap(0, i);
        }
        errors.clear();
        let req = |current_only: bool| {
            let mut req = peer_req(op::READ_PEER, epoch, oid, offset, len);
            if current_only {
                req.flags |= protocol::flags::CURRENT_ONLY;
            }
            req
        };
        let mut failed = |node: &Node, code: ResultCode| {
            if code != ResultCode::NO_OBJ {
                tracing::warn!(%oid, node = %node.addr, epoch, result = %code, "replica read failed; trying the next copy");
            }
            errors.push(code);
        };
        // A replica whose copy is behind declines; it is asked again, to recover the object
        // and serve it, only when no other could serve it.
        let mut declined = Vec::new();
        for node in &nodes {
            match to_replica(sheep, node, req(true), &Bytes::new()).await {
                Ok(data) => return Ok(data),
                Err(ResultCode::NODE_IN_RECOVERY) => declined.push(node),
                Err(code) => failed(node, code),
            }
        }
        for node in declined {
            match to_replica(sheep, node, req(false), &Bytes::new()).await {
                Ok(data) => return Ok(data),
                Err(code) => failed(node, code),
            }
        }
        if !errors.iter().copied().any(retriable) {
            break;
        }
        wait_for_new_epoch(sheep, epoch).await;
    }
    if errors.iter().all(|&c| c == ResultCode::NO_OBJ) {
        return Err(ResultCode::NO_OBJ);
    }
    tracing::error!(%oid, ?errors, epoch = sheep.state().epoch(), "no replica could serve the read");
    Err(ResultCode::EIO)
}

/// Writes to every replica; succeeds only when all of them have the bytes.
pub async fn write(sheep: &Arc<Sheep>, w: Write) -> Result<(), ResultCode> {
    let opcode = if w.create {
        op::CREATE_AND_WRITE_PEER
    } else {
        op::WRITE_PEER
    };
    let mut last = ResultCode::EIO;
    // A write accepted by one life of this node must not land in a later one: once the
    // cluster has dropped us, others may have written the same blocks since.
    let life = sheep.driver.incarnation();
    for _ in 0..ATTEMPTS {
        if !sheep.driver.healthy() || sheep.driver.incarnation() != life {
            tracing::warn!(oid = %w.oid, "write abandoned: this node left the cluster while it was in flight");
            return Err(ResultCode::HALT);
        }
        let (nodes, epoch) = write_placement(sheep, w.oid, w.copies);
        if nodes.is_empty() {
            return Err(ResultCode::HALT);
        }
        let sends = nodes.iter().map(|node| {
            let req = peer_req(opcode, epoch, w.oid, w.offset, w.data.len() as u32);
            let data = &w.data;
            async move { (node, to_replica(sheep, node, req, data).await) }
        });
        let results = join_all(sends).await;
        let failed: Vec<(&Node, ResultCode)> = results
            .into_iter()
            .filter_map(|(n, r)| r.err().map(|c| (n, c)))
            .collect();
        let Some(&(node, code)) = failed.first() else {
            return Ok(());
        };
        last = code;
        if !failed.iter().all(|(_, c)| retriable(*c)) {
            tracing::error!(oid = %w.oid, node = %node.addr, epoch, result = %code, "replica write failed");
            break;
        }
        wait_for_new_epoch(sheep, epoch).await;
    }
    Err(if last == ResultCode::NETWORK_ERROR {
        ResultCode::EIO
    } else {
        last
    })
}

/// Removes `oid` from every replica. Missing copies are not an error.
pub async fn remove(sheep: &Arc<Sheep>, oid: Oid) -> Result<(), ResultCode> {
    let (nodes, epoch) = placement(sheep, oid, 0);
    for node in &nodes {
        match to_replica(sheep, node, peer_req(op::REMOVE_PEER, epoch, oid, 0, 0), &Bytes::new()).await {
            Ok(_) | Err(ResultCode::NO_OBJ) => {}
            Err(code) => return Err(code),
        }
    }
    Ok(())
}
