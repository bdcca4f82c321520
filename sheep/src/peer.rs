//! Peer operations: what a sheep does with its own store when a gateway (itself included)
//! forwards object I/O to it.

use std::sync::Arc;
use std::time::Duration;

use protocol::{op, Oid, RequestHeader, ResultCode};

use crate::gateway::object_size;
use crate::node::Sheep;
use crate::store::StoreError;

/// How long a peer waits for its own epoch to reach a newer one named in a request.
const EPOCH_WAIT: Duration = Duration::from_secs(2);

/// Answers OLD_NODE_VER to a request from an older epoch; waits a little for a newer one.
pub async fn check_epoch(sheep: &Sheep, req: &RequestHeader) -> Result<(), ResultCode> {
    if matches!(req.opcode, op::GET_OBJ_LIST | op::FLUSH_PEER) {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + EPOCH_WAIT;
    loop {
        let mine = sheep.state().epoch();
        if req.epoch == mine {
            return Ok(());
        }
        if req.epoch < mine {
            return Err(ResultCode::OLD_NODE_VER);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ResultCode::NEW_NODE_VER);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn log_store_error(sheep: &Sheep, e: &StoreError) -> ResultCode {
    if !matches!(e, StoreError::NotFound(_)) {
        tracing::error!(error = %e, epoch = sheep.state().epoch(), "store operation failed");
    }
    e.code()
}

/// Runs a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    sheep: &Arc<Sheep>,
    f: impl FnOnce(&Sheep) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ResultCode> {
    let s = sheep.clone();
    match tokio::task::spawn_blocking(move || f(&s)).await {
        Ok(r) => r.map_err(|e| log_store_error(sheep, &e)),
        Err(e) => {
            tracing::error!(error = %e, "store task panicked");
            Err(ResultCode::SYSTEM_ERROR)
        }
    }
}

/// Executes a peer op against this node's store.
pub async fn serve_local(sheep: &Arc<Sheep>, req: &RequestHeader, payload: &[u8]) -> Result<Vec<u8>, ResultCode> {
    let a = req.obj();
    let oid = Oid(a.oid);
    let offset = u64::from(a.offset);
    match req.opcode {
        op::READ_PEER => {
            let len = req.data_length as usize;
            blocking(sheep, move |s| s.store.read(oid, offset, len)).await
        }
        op::WRITE_PEER | op::CREATE_AND_WRITE_PEER => {
            let size = object_size(sheep, oid).ok_or_else(|| {
                tracing::error!(%oid, "write to an object of a VDI this node does not know");
                ResultCode::NO_VDI
            })?;
            if offset + payload.len() as u64 > size {
                tracing::warn!(%oid, offset, len = payload.len(), size, "write past the object's end refused");
                return Err(ResultCode::INVALID_PARMS);
            }
            let data = payload.to_vec();
            let create = req.opcode == op::CREATE_AND_WRITE_PEER;
            blocking(sheep, move |s| {
                if create {
                    s.store.create(oid, size, offset, &data)
                } else {
                    s.store.write(oid, offset, &data)
                }
            })
            .await
            .map(|()| Vec::new())
        }
        op::REMOVE_PEER => blocking(sheep, move |s| s.store.remove(oid)).await.map(|()| Vec::new()),
        op::FLUSH_PEER => blocking(sheep, |s| {
            s.store.flush().map_err(|e| StoreError::Io { oid: Oid(0), source: e })
        })
        .await
        .map(|()| Vec::new()),
        op::GET_OBJ_LIST => blocking(sheep, |s| {
            s.store.list().map_err(|e| StoreError::Io { oid: Oid(0), source: e })
        })
        .await
        .map(|oids| oids.iter().flat_map(|o| o.0.to_le_bytes()).collect()),
        _ => Err(ResultCode::INVALID_PARMS),
    }
}
