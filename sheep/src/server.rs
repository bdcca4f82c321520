//! The TCP server: one task reads requests from a connection, each request is served on its
//! own task, and one writer task sends the replies (in completion order, ids echoed, as the
//! original server does; clients that pipeline match replies by id).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use protocol::frame::{read_payload_with, read_request_header, write_frames, FrameError, MAX_PAYLOAD};
use protocol::opcode::op_name;
use protocol::{ResponseHeader, ResultCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::node::Sheep;
use crate::store::aligned::Aligned;

/// Requests served at once per connection; a client that pipelines more waits.
const MAX_IN_FLIGHT: usize = 64;

/// Read buffer per connection: several small requests (a header and a 4 KiB payload each)
/// in one read when the client pipelines. Larger payloads are read past it, straight into
/// their own buffer.
const READ_BUFFER: usize = 64 << 10;

pub async fn serve(sheep: Arc<Sheep>, listener: TcpListener) {
    let s = sheep.clone();
    crate::access::accept_loop(listener, "connection", &sheep.access, move |stream| {
        connection(s.clone(), stream)
    })
    .await
}

/// Client connections so far: each one's id names it as the holder of the VDI locks it takes.
static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// A new lock holder id, unique among this node's client connections (the NBD exports hold
/// their VDI locks under ids of their own).
pub fn next_connection() -> u64 {
    CONNECTIONS.fetch_add(1, Ordering::Relaxed)
}

async fn connection(sheep: Arc<Sheep>, mut stream: TcpStream) {
    let conn = next_connection();
    let peer = stream.peer_addr().ok();
    if !sheep.access.authenticate(&mut stream, peer).await {
        return;
    }
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
    let (tx, mut rx) = mpsc::channel::<(ResponseHeader, Vec<u8>)>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            // The replies queued behind the first go with it: a client that pipelines (the
            // gateway's `protocol::mux`) reads them in one go. The requests that are ready
            // finish first, so that theirs are among them.
            tokio::task::yield_now().await;
            let mut first = Some(first);
            let next = || {
                first
                    .take()
                    .or_else(|| rx.try_recv().ok())
                    .map(|(rsp, data)| (rsp.encode(), data))
            };
            if let Err(e) = write_frames(&mut wr, &mut batch, next).await {
                tracing::debug!(error = %e, "cannot send a reply; client gone");
                return;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let req = match read_request_header(&mut rd).await {
            Ok(Some(req)) => req,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(?peer, error = %e, "bad request header; closing the connection");
                break;
            }
        };
        // Payloads land in aligned memory, so that a direct write takes them as they are.
        let payload = match read_payload_with(&mut rd, req.payload_len(), MAX_PAYLOAD, Aligned::with_capacity).await {
            Ok(p) if p.is_empty() => Bytes::new(),
            Ok(p) => p.freeze(),
            Err(e) => {
                tracing::warn!(?peer, op = op_name(req.opcode), error = %e, "bad request payload; closing the connection");
                if let FrameError::TooLarge { .. } = e {
                    // The stream cannot be resynchronised, but the client hears why.
                    let mut rsp = ResponseHeader::reply_to(&req, ResultCode::INVALID_PARMS, sheep.state().epoch());
                    rsp.data_length = 0;
                    let _ = tx.send((rsp, Vec::new())).await;
                }
                break;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let sheep = sheep.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = crate::ops::handle(&sheep, conn, &req, payload).await;
            let _ = tx.send(reply).await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
    // A client that goes (unmounted, killed) no longer writes: its VDIs are free again.
    crate::vdi::release_connection(&sheep, conn).await;
}
