//! A multiplexed client: every request to one sheep shares one connection, pipelined, and
//! replies are matched to their requests by id (servers answer in completion order).
//!
//! [`Client`](crate::Client) gives each request in flight a connection of its own, so at a
//! depth of 16 a peer reads 16 sockets and wakes for each request and each reply alone. Here
//! the requests that queue while the connection is busy leave in one write, and the replies
//! that a busy server finished together arrive in one read: the busier the peer, the fewer
//! system calls and wake-ups each request costs. A large payload still delays the small
//! requests behind it by its own transfer, which is why the gateway's replica I/O uses this
//! and the bulk transfers of recovery keep their pooled connections.
//!
//! A connection that fails fails every request in flight on it; each is sent once more on a
//! new connection when the failed one was not made for it (the peer restarted), as
//! [`Client`](crate::Client) does with an idle pooled connection. One request connects at a
//! time; when its attempt fails, the requests that waited for it fail with it, so a peer
//! that does not answer costs the requests queued for it one connect timeout together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::client::{dial, ClientError, Reply};
use crate::frame::{read_payload, read_response_header, skip_payload, write_frames, FrameError, MAX_PAYLOAD};
use crate::header::{RequestHeader, HEADER_SIZE};
use crate::opcode::{flags, op_name};

/// Requests queued for the writer; a caller that finds it full waits.
const QUEUE: usize = 256;

/// Read buffer of the connection: many small replies per read.
const READ_BUFFER: usize = 64 << 10;

/// A multiplexed connection to one sheep, made when first needed and again after a failure.
pub struct Mux {
    addr: SocketAddr,
    timeout: Duration,
    next_id: AtomicU32,
    lane: Mutex<Option<Arc<Lane>>>,
    /// Held while connecting, so that requests arriving meanwhile share the new connection.
    connecting: tokio::sync::Mutex<()>,
    /// Connect attempts that failed so far, and how the last one did: a request that waited
    /// through a failed attempt fails with it instead of trying again, so that requests
    /// queued behind an unreachable peer wait for one connect timeout, not one each.
    failed: Mutex<(u64, Option<(std::io::ErrorKind, String)>)>,
    /// Where the connection's reader and writer run: the caller's runtime when `None`.
    runtime: Option<Handle>,
}

/// One connection: the writer task's queue and the requests awaiting replies.
struct Lane {
    out: mpsc::Sender<Frame>,
    waiting: Arc<Waiting>,
}

struct Frame {
    header: [u8; HEADER_SIZE],
    payload: Bytes,
}

/// Requests sent on a connection and not yet answered; `None` once the connection failed.
#[derive(Default)]
struct Waiting(Mutex<Option<HashMap<u32, Waiter>>>);

struct Waiter {
    capacity: u32,
    tx: oneshot::Sender<Result<Reply, FrameError>>,
}

/// Forgets a request when its caller stops waiting (timed out or dropped), so that the book
/// holds only requests someone still waits for.
struct Forget<'a> {
    waiting: &'a Waiting,
    id: u32,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting.take(self.id);
    }
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u32, Waiter>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers request `id`; `None` when the connection has failed already.
    fn register(&self, id: u32, capacity: u32) -> Option<oneshot::Receiver<Result<Reply, FrameError>>> {
        let (tx, rx) = oneshot::channel();
        self.lock().as_mut()?.insert(id, Waiter { capacity, tx });
        Some(rx)
    }

    fn take(&self, id: u32) -> Option<Waiter> {
        self.lock().as_mut()?.remove(&id)
    }

    fn is_open(&self) -> bool {
        self.lock().is_some()
    }

    /// Closes the connection's book: every request waiting fails with `e`, and no new one
    /// is taken.
    fn fail(&self, e: &FrameError) {
        let Some(waiters) = self.lock().take() else {
            return;
        };
        for (_, w) in waiters {
            let _ = w.tx.send(Err(copy_error(e)));
        }
    }
}

/// The same failure for another request (`FrameError` holds an `io::Error`, which is not
/// `Clone`).
fn copy_error(e: &FrameError) -> FrameError {
    match e {
        FrameError::Truncated => FrameError::Truncated,
        FrameError::TooLarge { len, limit } => FrameError::TooLarge {
            len: *len,
            limit: *limit,
        },
        FrameError::Io(io) => FrameError::Io(std::io::Error::new(io.kind(), io.to_string())),
    }
}

impl Mux {
    /// A multiplexed client with a 30 s per-request timeout, as [`Client::new`](crate::Client::new).
    pub fn new(addr: SocketAddr) -> Mux {
        Mux::with_timeout(addr, Duration::from_secs(30))
    }

    /// A multiplexed client whose connects and requests each time out after `timeout`.
    pub fn with_timeout(addr: SocketAddr, timeout: Duration) -> Mux {
        Mux {
            addr,
            timeout,
            next_id: AtomicU32::new(1),
            lane: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            failed: Mutex::new((0, None)),
            runtime: None,
        }
    }

    /// Runs the connection's reader and writer on `runtime`, so that callers on any runtime
    /// (sheepfs's FUSE threads each run their own, only while a request of theirs is in
    /// flight) share one connection that is always served.
    pub fn serving_on(mut self, runtime: Handle) -> Mux {
        self.runtime = Some(runtime);
        self
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, (u64, Option<(std::io::ErrorKind, String)>)> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_lane(&self) -> Option<Arc<Lane>> {
        let lane = self.lane.lock().unwrap_or_else(|p| p.into_inner());
        lane.as_ref().filter(|l| l.waiting.is_open()).cloned()
    }

    /// The open connection (`true` when this call made it).
    async fn lane(&self) -> Result<(Arc<Lane>, bool), ClientError> {
        if let Some(lane) = self.open_lane() {
            return Ok((lane, false));
        }
        let seen = self.failed().0;
        let _connecting = self.connecting.lock().await;
        if let Some(lane) = self.open_lane() {
            return Ok((lane, false));
        }
        if let (n, Some((kind, why))) = &*self.failed() {
            if *n != seen {
                return Err(ClientError::Connect {
                    addr: self.addr,
                    source: std::io::Error::new(*kind, why.clone()),
                });
            }
        }
        // A socket belongs to the reactor of the runtime that opened it: the one that serves it.
        let rt = self.runtime.clone().unwrap_or_else(Handle::current);
        let dialled = rt.spawn(dial(self.addr, self.timeout)).await.unwrap_or_else(|e| {
            Err(ClientError::Connect {
                addr: self.addr,
                source: std::io::Error::other(format!("connect task failed: {e}")),
            })
        });
        let stream = match dialled {
            Ok(s) => s,
            Err(e) => {
                let mut failed = self.failed();
                failed.0 += 1;
                failed.1 = match &e {
                    ClientError::Connect { source, .. } => Some((source.kind(), source.to_string())),
                    other => Some((std::io::ErrorKind::Other, other.to_string())),
                };
                return Err(e);
            }
        };
        let (rd, wr) = stream.into_split();
        let (out, queue) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Waiting(Mutex::new(Some(HashMap::new()))));
        rt.spawn(write_loop(wr, queue, waiting.clone()));
        rt.spawn(read_loop(BufReader::with_capacity(READ_BUFFER, rd), waiting.clone()));
        let lane = Arc::new(Lane { out, waiting });
        *self.lane.lock().unwrap_or_else(|p| p.into_inner()) = Some(lane.clone());
        Ok((lane, true))
    }

    /// Sends `req` with `payload` and returns the reply, whatever its result code: the same
    /// contract as [`Client::send`](crate::Client::send).
    pub async fn send(&self, mut req: RequestHeader, payload: &Bytes) -> Result<Reply, ClientError> {
        let op = op_name(req.opcode);
        let capacity = req.reply_capacity();
        req.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if !payload.is_empty() {
            req.flags |= flags::WRITE;
            req.data_length = payload.len() as u32;
        }
        let header = req.encode();
        let gone = || FrameError::Io(std::io::ErrorKind::ConnectionReset.into());
        let mut again = false;
        loop {
            let (lane, fresh) = self.lane().await?;
            let _forget = Forget {
                waiting: &lane.waiting,
                id: req.id,
            };
            let exchange = async {
                let reply = lane.waiting.register(req.id, capacity).ok_or_else(gone)?;
                let frame = Frame {
                    header,
                    payload: payload.clone(),
                };
                lane.out.send(frame).await.map_err(|_| gone())?;
                reply.await.map_err(|_| gone())?
            };
            let source = match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(ClientError::Timeout {
                        addr: self.addr,
                        op,
                        after: self.timeout,
                    })
                }
            };
            // A reply too large for this request leaves the connection intact; a connection
            // made for this request, or a second one, failing is final.
            if fresh || again || matches!(source, FrameError::TooLarge { .. }) {
                return Err(ClientError::Transport {
                    addr: self.addr,
                    op,
                    source,
                });
            }
            tracing::debug!(addr = %self.addr, op, error = %source, "connection lost; sending once more on a new one");
            again = true;
        }
    }

    /// Like [`Mux::send`], but a result other than SUCCESS is an error, as
    /// [`Client::call`](crate::Client::call).
    pub async fn call(&self, req: RequestHeader, payload: &Bytes) -> Result<Reply, ClientError> {
        let op = op_name(req.opcode);
        self.send(req, payload).await?.succeeded(self.addr, op)
    }
}

/// Writes the queued requests, as many in one write as are waiting.
async fn write_loop(mut wr: OwnedWriteHalf, mut queue: mpsc::Receiver<Frame>, waiting: Arc<Waiting>) {
    let mut batch = Vec::new();
    while let Some(first) = queue.recv().await {
        // The callers that are ready queue their requests first, so that they go in this
        // write.
        tokio::task::yield_now().await;
        let mut first = Some(first);
        let mut closed = false;
        let next = || {
            // Once the reader has failed, the requests still queued were failed too and are
            // sent again on a new connection, so this one takes no further batch: a copy
            // sent here as well could land after a later write to the same block. (A batch
            // already being written as the reader fails still goes out, as a request that
            // timed out on a pooled connection may still be served.)
            if first.is_some() && !waiting.is_open() {
                closed = true;
                return None;
            }
            first
                .take()
                .or_else(|| queue.try_recv().ok())
                .map(|f| (f.header, f.payload))
        };
        let written = write_frames(&mut wr, &mut batch, next).await;
        if closed {
            return;
        }
        if let Err(e) = written {
            waiting.fail(&FrameError::Io(e));
            return;
        }
    }
    // Every sender is gone: the client was dropped. Dropping the write half tells the
    // server, which answers what it has and closes; the reader then ends.
}

/// Reads replies and hands each to the request with its id.
async fn read_loop(mut rd: BufReader<OwnedReadHalf>, waiting: Arc<Waiting>) {
    let e = loop {
        let h = match read_response_header(&mut rd).await {
            Ok(Some(h)) => h,
            Ok(None) => break FrameError::Io(std::io::ErrorKind::ConnectionReset.into()),
            Err(e) => break e,
        };
        let Some(w) = waiting.take(h.id) else {
            // Its request timed out; the reply still has to be read past.
            if let Err(e) = skip_payload(&mut rd, h.data_length, MAX_PAYLOAD).await {
                break e;
            }
            continue;
        };
        let result = if h.data_length > w.capacity.min(MAX_PAYLOAD) {
            match skip_payload(&mut rd, h.data_length, MAX_PAYLOAD).await {
                Ok(()) => Err(FrameError::TooLarge {
                    len: h.data_length,
                    limit: w.capacity,
                }),
                Err(e) => break e,
            }
        } else {
            match read_payload(&mut rd, h.data_length, MAX_PAYLOAD).await {
                Ok(data) => Ok(Reply { header: h, data }),
                Err(e) => break e,
            }
        };
        let _ = w.tx.send(result);
    };
    waiting.fail(&e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_request, write_frame};
    use crate::header::ResponseHeader;
    use crate::opcode::{op, ResultCode};
    use tokio::net::TcpListener;

    /// Answers each connection's requests in reverse order of arrival, in pairs, with the
    /// request's offset as the payload; closes a connection after `close_after` requests.
    async fn serve(l: TcpListener, close_after: usize) {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut served = 0;
                while let Ok(Some((h, _))) = read_request(&mut s, 1 << 20).await {
                    served += 1;
                    if served > close_after {
                        return;
                    }
                    held.push(h);
                    if held.len() < 2 {
                        continue;
                    }
                    while let Some(h) = held.pop() {
                        let mut r = ResponseHeader::reply_to(&h, ResultCode::SUCCESS, 1);
                        let body = h.obj().offset.to_le_bytes();
                        r.data_length = body.len() as u32;
                        if write_frame(&mut s, &r.encode(), &body).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }

    static NONE: Bytes = Bytes::new();

    fn read_at(offset: u32) -> RequestHeader {
        let mut req = RequestHeader::new(op::READ_PEER);
        req.data_length = 4;
        req.set_obj(&crate::ObjArgs {
            offset,
            ..crate::ObjArgs::default()
        });
        req
    }

    async fn listen(close_after: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(serve(l, close_after));
        addr
    }

    #[tokio::test]
    async fn replies_out_of_order_reach_their_requests() {
        let m = Arc::new(Mux::new(listen(usize::MAX).await));
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let m = m.clone();
                tokio::spawn(async move { m.send(read_at(i), &NONE).await.map(|r| (i, r.data)) })
            })
            .collect();
        for t in tasks {
            let (i, data) = t.await.expect("join").expect("reply");
            assert_eq!(data, i.to_le_bytes());
        }
    }

    #[test]
    fn callers_on_runtimes_that_come_and_go_are_served_by_the_one_named() {
        // As sheepfs's FUSE threads: each request runs on a runtime of its own, which is
        // gone by the time the next one comes.
        let serving = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("serving runtime");
        let addr = serving.block_on(listen(usize::MAX));
        let m = Mux::with_timeout(addr, Duration::from_secs(5)).serving_on(serving.handle().clone());
        for base in [10u32, 20, 30] {
            let caller = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("caller runtime");
            let (a, b) =
                caller.block_on(async { tokio::join!(m.send(read_at(base), &NONE), m.send(read_at(base + 1), &NONE)) });
            assert_eq!(a.expect("first").data, base.to_le_bytes());
            assert_eq!(b.expect("second").data, (base + 1).to_le_bytes());
        }
    }

    #[tokio::test]
    async fn a_lost_connection_is_replaced_and_its_requests_sent_again() {
        // Every connection serves two requests and drops the next: the requests in flight
        // on a connection that is not new are sent again on a new one.
        let m = Arc::new(Mux::new(listen(2).await));
        let pair = |base: u32| {
            let m = m.clone();
            async move {
                let (a, b) = tokio::join!(m.send(read_at(base), &NONE), m.send(read_at(base + 1), &NONE));
                (a.expect("first").data, b.expect("second").data)
            }
        };
        assert_eq!(
            pair(10).await,
            (10u32.to_le_bytes().to_vec(), 11u32.to_le_bytes().to_vec())
        );
        // The third request goes on the used connection, which the server drops: it is
        // sent once more on a new connection, where it waits for a partner.
        assert_eq!(
            pair(20).await,
            (20u32.to_le_bytes().to_vec(), 21u32.to_le_bytes().to_vec())
        );
    }

    #[tokio::test]
    async fn a_reply_larger_than_asked_fails_that_request_only() {
        let m = Mux::new(listen(usize::MAX).await);
        let mut small = read_at(1);
        small.data_length = 2;
        let (too_big, fine) = tokio::join!(m.send(small, &NONE), m.send(read_at(2), &NONE));
        let e = too_big.expect_err("4 bytes into 2");
        assert!(
            matches!(
                e,
                ClientError::Transport {
                    source: FrameError::TooLarge { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(fine.expect("the other request").data, 2u32.to_le_bytes());
    }

    #[tokio::test]
    async fn requests_queued_behind_an_unreachable_peer_share_one_connect_timeout() {
        // A listener that never accepts, its queue full: further connects get no answer.
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = sock.local_addr().expect("addr");
        let _l = sock.listen(0).expect("listen");
        let mut fill = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
            {
                fill.push(s);
            } else {
                break;
            }
        }
        let timeout = Duration::from_millis(500);
        let m = Arc::new(Mux::with_timeout(addr, timeout));
        let started = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..8u32)
            .map(|i| {
                let m = m.clone();
                tokio::spawn(async move { m.send(read_at(i), &NONE).await })
            })
            .collect();
        for t in tasks {
            let e = t.await.expect("join").expect_err("unreachable");
            assert!(e.to_string().contains("cannot connect"), "{e}");
        }
        // One connect attempt each would take eight timeouts.
        assert!(started.elapsed() < timeout * 4, "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn connect_refused_is_clear() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = Mux::new(addr).send(read_at(0), &NONE).await.expect_err("refused");
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
}
