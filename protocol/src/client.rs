//! An async client for sheep: a pool of connections to one address, request ids, timeouts.
//!
//! Each connection carries one request at a time; concurrency comes from the pool, which
//! opens another connection when all idle ones are busy and keeps up to `max_idle` for reuse.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::frame::{read_response, read_response_into, write_frame, FrameError};
use crate::header::{RequestHeader, ResponseHeader};
use crate::opcode::{flags, op_name, ResultCode};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("{op} to {addr} failed: {source}")]
    Transport {
        addr: SocketAddr,
        op: &'static str,
        source: FrameError,
    },
    #[error("{op} to {addr} timed out after {after:?}")]
    Timeout {
        addr: SocketAddr,
        op: &'static str,
        after: Duration,
    },
    #[error("{op} to {addr}: {result}")]
    Result {
        addr: SocketAddr,
        op: &'static str,
        result: ResultCode,
    },
}

impl ClientError {
    /// The server's result code, when the failure is one.
    pub fn result(&self) -> Option<ResultCode> {
        match self {
            ClientError::Result { result, .. } => Some(*result),
            _ => None,
        }
    }
}

/// A reply: header plus payload.
#[derive(Debug)]
pub struct Reply {
    pub header: ResponseHeader,
    pub data: Vec<u8>,
}

impl Reply {
    /// The reply, when its result is SUCCESS; else that result, as the error of `op` to `addr`.
    pub(crate) fn succeeded(self, addr: SocketAddr, op: &'static str) -> Result<Reply, ClientError> {
        succeeded(&self.header, addr, op).map(|()| self)
    }
}

/// `Ok` when `header` says SUCCESS; else its result, as the error of `op` to `addr`.
fn succeeded(header: &ResponseHeader, addr: SocketAddr, op: &'static str) -> Result<(), ClientError> {
    match header.result_code() {
        ResultCode::SUCCESS => Ok(()),
        result => Err(ClientError::Result { addr, op, result }),
    }
}

/// Where a reply's payload goes: a new buffer of at most this capacity, or the caller's.
enum Into<'a> {
    Vec(u32),
    Slice(&'a mut [u8]),
}

/// A pooled connection: a reply's header and a small payload come in one read.
type Conn = BufReader<TcpStream>;

/// Read buffer of a pooled connection: a reply header and a 4 KiB block, with room.
const CONN_BUFFER: usize = 8 << 10;

/// Connection pool to one sheep.
pub struct Client {
    addr: SocketAddr,
    idle: Mutex<Vec<Conn>>,
    next_id: AtomicU32,
    timeout: Duration,
    max_idle: usize,
}

impl Client {
    /// A client with a 30 s per-request timeout, the original's receive timeout.
    pub fn new(addr: SocketAddr) -> Client {
        Client::with_timeout(addr, Duration::from_secs(30))
    }

    pub fn with_timeout(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            idle: Mutex::new(Vec::new()),
            next_id: AtomicU32::new(1),
            timeout,
            max_idle: 64,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An idle pooled connection (`true`) or a new one (`false`).
    async fn connection(&self) -> Result<(Conn, bool), ClientError> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok((s, true));
        }
        let s = dial(self.addr, self.timeout).await?;
        Ok((BufReader::with_capacity(CONN_BUFFER, s), false))
    }

    fn put_back(&self, s: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(s);
        }
    }

    /// Sends `req` with `payload` and returns the reply, whatever its result code. When
    /// `payload` is non-empty the WRITE flag is set and `data_length` is its length.
    pub async fn send(&self, req: RequestHeader, payload: &[u8]) -> Result<Reply, ClientError> {
        let capacity = req.reply_capacity();
        let (header, data, _) = self.exchange(req, payload, Into::Vec(capacity)).await?;
        Ok(Reply { header, data })
    }

    /// Sends `req` (no payload) and reads the reply's payload into `out`. A result other than
    /// SUCCESS is an error; returns how many bytes of `out` the reply filled.
    pub async fn call_into(&self, req: RequestHeader, out: &mut [u8]) -> Result<usize, ClientError> {
        let op = op_name(req.opcode);
        let (header, _, n) = self.exchange(req, &[], Into::Slice(out)).await?;
        succeeded(&header, self.addr, op).map(|()| n)
    }

    /// One request and its reply on a pooled connection: a request that failed on an idle
    /// pooled connection (the peer restarted) is sent once more on a fresh one. Returns the
    /// header, the payload when read into a new buffer, and the payload's length.
    async fn exchange(
        &self,
        mut req: RequestHeader,
        payload: &[u8],
        mut into: Into<'_>,
    ) -> Result<(ResponseHeader, Vec<u8>, usize), ClientError> {
        let opname = op_name(req.opcode);
        req.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if !payload.is_empty() {
            req.flags |= flags::WRITE;
            req.data_length = payload.len() as u32;
        }
        loop {
            let (mut s, pooled) = self.connection().await?;
            let exchange = async {
                write_frame(&mut s, &req.encode(), payload).await?;
                match &mut into {
                    Into::Vec(capacity) => read_response(&mut s, *capacity).await.map(|(h, d)| {
                        let n = d.len();
                        (h, d, n)
                    }),
                    Into::Slice(out) => read_response_into(&mut s, out).await.map(|(h, n)| (h, Vec::new(), n)),
                }
            };
            match tokio::time::timeout(self.timeout, exchange).await {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        addr: self.addr,
                        op: opname,
                        after: self.timeout,
                    })
                }
                Ok(Err(source)) => {
                    // The peer went away or restarted: every pooled connection to it is dead
                    // too. A fresh connection's failure is final.
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    if !pooled {
                        return Err(ClientError::Transport {
                            addr: self.addr,
                            op: opname,
                            source,
                        });
                    }
                }
                Ok(Ok(reply)) => {
                    self.put_back(s);
                    return Ok(reply);
                }
            }
        }
    }

    /// Like [`Client::send`], but a result other than SUCCESS is an error.
    pub async fn call(&self, req: RequestHeader, payload: &[u8]) -> Result<Reply, ClientError> {
        let op = op_name(req.opcode);
        self.send(req, payload).await?.succeeded(self.addr, op)
    }
}

/// A new connection to `addr`: no Nagle delay, and through the cluster-secret handshake
/// when a key is installed.
pub(crate) async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    let connect = tokio::time::timeout(timeout, TcpStream::connect(addr));
    let mut s = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
        Err(_) => {
            let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
            return Err(ClientError::Connect { addr, source });
        }
    };
    // Latency matters more than packet count for small control requests.
    let _ = s.set_nodelay(true);
    if let Some(key) = crate::auth::installed() {
        crate::auth::connect(&mut s, key)
            .await
            .map_err(|e| ClientError::Connect {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("authentication failed: {e}"),
                ),
            })?;
    }
    Ok(s)
}

impl From<FrameError> for std::io::Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::read_request;
    use crate::opcode::op;
    use tokio::net::TcpListener;

    /// A tiny server that echoes the request id and answers NO_VDI to GET_VDI_INFO.
    async fn serve(l: TcpListener) {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                while let Ok(Some((h, _p))) = read_request(&mut s, 1 << 20).await {
                    let code = if h.opcode == op::GET_VDI_INFO {
                        ResultCode::NO_VDI
                    } else {
                        ResultCode::SUCCESS
                    };
                    let mut r = ResponseHeader::reply_to(&h, code, 1);
                    let body = vec![9u8; h.reply_capacity().min(3) as usize];
                    r.data_length = body.len() as u32;
                    if write_frame(&mut s, &r.encode(), &body).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn requests_replies_and_errors() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(serve(l));
        let c = Client::new(addr);
        let mut req = RequestHeader::new(op::READ_VDIS);
        req.data_length = 16;
        let r = c.call(req, &[]).await.expect("ok");
        assert_eq!(r.data, vec![9u8; 3]);
        let e = c
            .call(RequestHeader::new(op::GET_VDI_INFO), b"x")
            .await
            .expect_err("no vdi");
        assert_eq!(e.result(), Some(ResultCode::NO_VDI));
        // A reply read into the caller's buffer.
        let mut out = [0u8; 8];
        let mut req = RequestHeader::new(op::READ_VDIS);
        req.data_length = 8;
        assert_eq!(c.call_into(req, &mut out).await.expect("ok"), 3);
        assert_eq!(out, [9, 9, 9, 0, 0, 0, 0, 0]);
        let e = c
            .call_into(RequestHeader::new(op::GET_VDI_INFO), &mut out)
            .await
            .expect_err("no vdi");
        assert_eq!(e.result(), Some(ResultCode::NO_VDI));
        // Many at once share the pool.
        let c = std::sync::Arc::new(c);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.call(RequestHeader::new(op::STAT_SHEEP), &[]).await.is_ok() })
            })
            .collect();
        for t in tasks {
            assert!(t.await.expect("join"));
        }
    }

    #[tokio::test]
    async fn connect_refused_is_clear() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = Client::new(addr)
            .call(RequestHeader::new(op::STAT_SHEEP), &[])
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
}
