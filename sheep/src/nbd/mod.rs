//! The NBD export (`sheep --nbd`): QEMU, qemu-img, nbd-client and libnbd tools attach VDIs
//! natively. Newstyle fixed handshake with INFO/GO/LIST and structured replies; READ, WRITE,
//! FLUSH (the durability contract of fsync on a sheepfs volume), FUA, TRIM (whole objects
//! dropped), WRITE_ZEROES, BLOCK_STATUS with `base:allocation` (objects without data are
//! holes) and DISC; several connections to one export share it (CAN_MULTI_CONN).
//!
//! The path is the one sheepfs takes, with NBD in place of FUSE: a request becomes volume
//! I/O ([`volume::Volume`]), whose object requests this sheep serves in process as it would
//! a client's (`local.rs`), through the gateway (and its object cache) to the replicas.

mod export;
mod local;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use volume::FsError;

pub use export::Exports;
use export::{Attached, Export};
use wire::{cmd, err, info, opt, rep, tx, Request};

/// The largest READ or WRITE: the spec's default maximum, which every client honours.
const MAX_REQUEST: u32 = 32 << 20;
/// Preferred request size: a page.
const PREFERRED_BLOCK: u32 = 4096;
/// Requests served at once per connection.
const MAX_IN_FLIGHT: usize = 64;
/// Payload and answer bytes a connection may hold at once (two maximal requests), counted in
/// units of [`BUDGET_UNIT`].
const BUDGET: u32 = 2 * MAX_REQUEST;
const BUDGET_UNIT: u32 = 64 << 10;
/// Option data longer than this is refused (export names are at most 4 KiB).
const MAX_OPTION: u32 = 64 << 10;
/// A client must finish the handshake within this.
const HANDSHAKE_TIME: Duration = Duration::from_secs(30);
/// The id of `base:allocation` once selected.
const ALLOCATION_CONTEXT: u32 = 1;
/// The longest extent one BLOCK_STATUS descriptor reports.
const MAX_EXTENT: u64 = 1 << 31;

/// What the options phase settled for the transmission phase.
#[derive(Clone, Copy, Debug, Default)]
struct Negotiated {
    structured: bool,
    /// `base:allocation` selected: BLOCK_STATUS answers which blocks hold data.
    allocation: bool,
}

pub async fn serve(exports: Arc<Exports>, listener: TcpListener) {
    let sheep = exports.sheep().clone();
    crate::access::accept_loop(listener, "NBD connection", &sheep.access, move |stream| {
        let exports = exports.clone();
        async move {
            if let Err(e) = connection(&exports, stream).await {
                tracing::debug!(error = %e, "NBD connection ended");
            }
        }
    })
    .await
}

async fn connection(exports: &Arc<Exports>, mut stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr().ok();
    let negotiated = tokio::time::timeout(HANDSHAKE_TIME, handshake(exports, &mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake took too long"))??;
    let Some((export, mode)) = negotiated else {
        return Ok(());
    };
    tracing::info!(?peer, export = %export.name, structured = mode.structured, block_status = mode.allocation, "NBD client attached");
    let export = Arc::new(export);
    let served = transmission(&export, mode, stream).await;
    tracing::info!(?peer, export = %export.name, "NBD client detached");
    served
}

/// The options phase. `None`: the client left (ABORT, or an export it could not have).
async fn handshake(exports: &Arc<Exports>, s: &mut TcpStream) -> std::io::Result<Option<(Attached, Negotiated)>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&wire::NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    let client_flags = s.read_u32().await?;
    if client_flags & !u32::from(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES) != 0 {
        return Err(bad(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & u32::from(wire::FLAG_NO_ZEROES) != 0;
    let mut mode = Negotiated::default();
    loop {
        if s.read_u64().await? != wire::IHAVEOPT {
            return Err(bad("option without IHAVEOPT".into()));
        }
        let option = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION {
            reply_error(s, option, rep::ERR_TOO_BIG, &format!("{len} bytes of option data")).await?;
            return Err(bad(format!("option {option} with {len} bytes of data")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        match option {
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let export = match exports.open(&name).await {
                    Ok(e) => e,
                    // No error reply exists for this option: the spec says to hang up.
                    Err(e) => return Err(bad(format!("export {name:?}: {e}"))),
                };
                let mut r = export.volume.size().await.to_be_bytes().to_vec();
                r.extend_from_slice(&transmission_flags(&export, mode.structured).await.to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&r).await?;
                return Ok(Some((export, mode)));
            }
            opt::ABORT => {
                s.write_all(&wire::option_reply(option, rep::ACK, &[])).await?;
                return Ok(None);
            }
            opt::LIST if !data.is_empty() => reply_error(s, option, rep::ERR_INVALID, "LIST takes no data").await?,
            opt::LIST => match exports.list().await {
                Ok(all) => {
                    let mut r = Vec::new();
                    for (name, description) in all {
                        let mut d = (name.len() as u32).to_be_bytes().to_vec();
                        d.extend_from_slice(name.as_bytes());
                        d.extend_from_slice(wire::truncated(&description));
                        r.extend_from_slice(&wire::option_reply(option, rep::SERVER, &d));
                    }
                    r.extend_from_slice(&wire::option_reply(option, rep::ACK, &[]));
                    s.write_all(&r).await?;
                }
                Err(e) => reply_error(s, option, rep::ERR_INVALID, &e.to_string()).await?,
            },
            opt::STRUCTURED_REPLY if !data.is_empty() => {
                reply_error(s, option, rep::ERR_INVALID, "STRUCTURED_REPLY takes no data").await?
            }
            opt::STRUCTURED_REPLY => {
                mode.structured = true;
                s.write_all(&wire::option_reply(option, rep::ACK, &[])).await?;
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                meta_context(exports, s, option, &data, &mut mode).await?
            }
            opt::INFO | opt::GO => {
                let Some((name, wanted)) = wire::parse_info_request(&data) else {
                    reply_error(s, option, rep::ERR_INVALID, "malformed INFO/GO request").await?;
                    continue;
                };
                if let Some(export) = info_or_go(exports, s, option, &name, &wanted, mode.structured).await? {
                    return Ok(Some((export, mode)));
                }
            }
            opt::STARTTLS => reply_error(s, option, rep::ERR_UNSUP, "TLS is not supported").await?,
            _ => reply_error(s, option, rep::ERR_UNSUP, &format!("option {option} is not supported")).await?,
        }
    }
}

/// Answers INFO or GO for export `name`; for GO, returns the opened export once the client
/// has its ACK.
async fn info_or_go(
    exports: &Arc<Exports>,
    s: &mut TcpStream,
    option: u32,
    name: &str,
    wanted: &[u16],
    structured: bool,
) -> std::io::Result<Option<Attached>> {
    let refuse = |e: &FsError| {
        let code = match e.errno {
            libc::ENOENT => rep::ERR_UNKNOWN,
            libc::EBUSY => rep::ERR_POLICY,
            _ => rep::ERR_INVALID,
        };
        tracing::info!(export = name, error = %e, "NBD export refused");
        (code, e.to_string())
    };
    let (size, flags, export) = if option == opt::GO {
        match exports.open(name).await {
            Ok(export) => {
                let flags = transmission_flags(&export, structured).await;
                (export.volume.size().await, flags, Some(export))
            }
            Err(e) => {
                let (code, msg) = refuse(&e);
                reply_error(s, option, code, &msg).await?;
                return Ok(None);
            }
        }
    } else {
        match exports.describe(name).await {
            Ok(d) => (d.size, flags_for(d.read_only, structured), None),
            Err(e) => {
                let (code, msg) = refuse(&e);
                reply_error(s, option, code, &msg).await?;
                return Ok(None);
            }
        }
    };
    let mut r = Vec::new();
    let mut export_info = info::EXPORT.to_be_bytes().to_vec();
    export_info.extend_from_slice(&size.to_be_bytes());
    export_info.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&wire::option_reply(option, rep::INFO, &export_info));
    if wanted.contains(&info::NAME) {
        let mut d = info::NAME.to_be_bytes().to_vec();
        d.extend_from_slice(wire::truncated(name));
        r.extend_from_slice(&wire::option_reply(option, rep::INFO, &d));
    }
    if wanted.contains(&info::BLOCK_SIZE) {
        let mut d = info::BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [1, PREFERRED_BLOCK, MAX_REQUEST] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        r.extend_from_slice(&wire::option_reply(option, rep::INFO, &d));
    }
    r.extend_from_slice(&wire::option_reply(option, rep::ACK, &[]));
    s.write_all(&r).await?;
    Ok(export)
}

/// LIST_META_CONTEXT and SET_META_CONTEXT: `base:allocation` is the one context there is.
/// SET replaces the selection, even when it fails.
async fn meta_context(
    exports: &Exports,
    s: &mut TcpStream,
    option: u32,
    data: &[u8],
    mode: &mut Negotiated,
) -> std::io::Result<()> {
    let set = option == opt::SET_META_CONTEXT;
    if set {
        mode.allocation = false;
        if !mode.structured {
            return reply_error(
                s,
                option,
                rep::ERR_INVALID,
                "SET_META_CONTEXT needs structured replies first",
            )
            .await;
        }
    }
    let Some((name, queries)) = wire::parse_meta_request(data) else {
        return reply_error(s, option, rep::ERR_INVALID, "malformed meta context request").await;
    };
    if let Err(e) = exports.describe(&name).await {
        let code = if e.errno == libc::ENOENT {
            rep::ERR_UNKNOWN
        } else {
            rep::ERR_INVALID
        };
        return reply_error(s, option, code, &e.to_string()).await;
    }
    let matches = if set {
        queries.iter().any(|q| q == wire::BASE_ALLOCATION)
    } else {
        queries.is_empty() || queries.iter().any(|q| q == "base:" || q == wire::BASE_ALLOCATION)
    };
    let mut r = Vec::new();
    if matches {
        let id = if set { ALLOCATION_CONTEXT } else { 0 };
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
        r.extend_from_slice(&wire::option_reply(option, rep::META_CONTEXT, &d));
        mode.allocation = set;
    }
    r.extend_from_slice(&wire::option_reply(option, rep::ACK, &[]));
    s.write_all(&r).await
}

async fn transmission_flags(export: &Export, structured: bool) -> u16 {
    flags_for(export.volume.read_only(), structured)
}

fn flags_for(read_only: bool, structured: bool) -> u16 {
    let mut f = tx::HAS_FLAGS | tx::SEND_FLUSH | tx::SEND_FUA | tx::CAN_MULTI_CONN;
    f |= if read_only {
        tx::READ_ONLY
    } else {
        tx::SEND_TRIM | tx::SEND_WRITE_ZEROES
    };
    if structured {
        f |= tx::SEND_DF;
    }
    f
}

async fn reply_error(s: &mut TcpStream, option: u32, code: u32, message: &str) -> std::io::Result<()> {
    s.write_all(&wire::option_reply(option, code, wire::truncated(message)))
        .await
}

fn bad(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// A reply: header bytes, then data (READ only).
type Reply = (Vec<u8>, Vec<u8>);

/// The share of a connection's byte budget a request of `len` bytes holds from before its
/// payload is read until its reply is written.
fn budget_units(len: u32) -> u32 {
    len.div_ceil(BUDGET_UNIT).clamp(1, MAX_REQUEST / BUDGET_UNIT)
}

/// The transmission phase: requests are read in order and served concurrently; replies go
/// out as they complete (NBD matches them by cookie). Ends at DISC (after every request in
/// flight has its reply), at the client's hang-up, or at a request out of step.
async fn transmission(export: &Arc<Attached>, mode: Negotiated, stream: TcpStream) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let (replies, mut outbox) = mpsc::channel::<(Reply, Option<OwnedSemaphorePermit>)>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        // Each reply's budget is given back once it is written.
        while let Some(((head, data), _budget)) = outbox.recv().await {
            wr.write_all(&head).await?;
            if !data.is_empty() {
                wr.write_all(&data).await?;
            }
        }
        wr.shutdown().await
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget = Arc::new(Semaphore::new((BUDGET / BUDGET_UNIT) as usize));
    let read_only = export.volume.read_only();
    let size = export.volume.size().await;
    let ended = loop {
        let mut head = [0u8; wire::REQUEST_SIZE];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e),
        }
        let Some(req) = Request::decode(&head) else {
            break Err(bad("request with a bad magic".into()));
        };
        if req.kind == cmd::DISC {
            break Ok(());
        }
        // Memory for the payload or the answer is reserved before either exists.
        let units = if matches!(req.kind, cmd::READ | cmd::WRITE) {
            budget_units(req.length)
        } else {
            1
        };
        let Ok(reserved) = budget.clone().acquire_many_owned(units).await else {
            break Ok(());
        };
        // A write's payload follows its header whatever becomes of the write.
        let payload = if req.kind == cmd::WRITE {
            match read_payload(&mut rd, req.length).await {
                Ok(p) => p,
                Err(e) => break Err(e),
            }
        } else {
            None
        };
        if let Err(code) = check(&req, read_only, mode, size, payload.is_some()) {
            if replies
                .send((error_reply(&req, mode.structured, code), None))
                .await
                .is_err()
            {
                break Ok(());
            }
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let export = export.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let reply = serve_request(&export, &req, payload.unwrap_or_default(), mode.structured).await;
            drop(permit);
            let _ = replies.send((reply, Some(reserved))).await;
        });
    };
    // Every request in flight holds a sender: the writer ends after their replies.
    drop(replies);
    let written = writer
        .await
        .map_err(|e| std::io::Error::other(format!("NBD reply writer failed: {e}")))?;
    ended.and(written)
}

/// A WRITE's payload: `None` (read and dropped) past [`MAX_REQUEST`].
async fn read_payload<R: AsyncRead + Unpin>(rd: &mut R, len: u32) -> std::io::Result<Option<Vec<u8>>> {
    if len > MAX_REQUEST {
        let copied = tokio::io::copy(&mut rd.take(u64::from(len)), &mut tokio::io::sink()).await?;
        if copied != u64::from(len) {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        return Ok(None);
    }
    let mut data = vec![0u8; len as usize];
    rd.read_exact(&mut data).await?;
    Ok(Some(data))
}

/// The checks the spec asks before a request runs; `Err` is the NBD error to answer.
fn check(req: &Request, read_only: bool, mode: Negotiated, size: u64, has_payload: bool) -> Result<(), u32> {
    let allowed = match req.kind {
        cmd::READ if mode.structured => cmd::FLAG_FUA | cmd::FLAG_DF,
        cmd::BLOCK_STATUS if mode.allocation => cmd::FLAG_FUA | cmd::FLAG_REQ_ONE,
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM => cmd::FLAG_FUA,
        cmd::WRITE_ZEROES => cmd::FLAG_FUA | cmd::FLAG_NO_HOLE,
        _ => return Err(err::EINVAL),
    };
    if req.flags & !allowed != 0 {
        return Err(err::EINVAL);
    }
    let changes = matches!(req.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if changes && read_only {
        return Err(err::EPERM);
    }
    if req.kind == cmd::FLUSH {
        return Ok(());
    }
    if (req.kind == cmd::READ && req.length > MAX_REQUEST) || (req.kind == cmd::WRITE && !has_payload) {
        return Err(err::EINVAL);
    }
    if req
        .offset
        .checked_add(u64::from(req.length))
        .is_none_or(|end| end > size)
    {
        return Err(if matches!(req.kind, cmd::WRITE | cmd::WRITE_ZEROES) {
            err::ENOSPC
        } else {
            err::EINVAL
        });
    }
    Ok(())
}

async fn serve_request(export: &Export, req: &Request, payload: Vec<u8>, structured: bool) -> Reply {
    if req.kind == cmd::BLOCK_STATUS {
        return match block_status(export, req).await {
            Ok(extents) => (
                wire::block_status_chunk(req.cookie, ALLOCATION_CONTEXT, &extents),
                Vec::new(),
            ),
            Err(e) => failed(export, req, structured, &e),
        };
    }
    match run(export, req, payload).await {
        // OFFSET_DATA carries at least one byte; an empty read is answered with NONE.
        Ok(data) if structured && req.kind == cmd::READ && data.is_empty() => (wire::none_chunk(req.cookie), data),
        Ok(data) if structured && req.kind == cmd::READ => (wire::data_chunk(req.cookie, req.offset, data.len()), data),
        Ok(data) => (wire::simple_reply(req.cookie, 0), data),
        Err(e) => failed(export, req, structured, &e),
    }
}

/// The reply to a request that failed with `e`, which is logged.
fn failed(export: &Export, req: &Request, structured: bool, e: &FsError) -> Reply {
    tracing::error!(export = %export.name, kind = req.kind, offset = req.offset, length = req.length, error = %e, "NBD request failed");
    let code = match e.errno {
        libc::EROFS | libc::EPERM => err::EPERM,
        libc::ENOSPC | libc::EFBIG | libc::EDQUOT => err::ENOSPC,
        libc::EINVAL => err::EINVAL,
        libc::ESHUTDOWN => err::ESHUTDOWN,
        _ => err::EIO,
    };
    error_reply(req, structured, code)
}

/// `base:allocation` extents of the request's range: data, or a hole that reads as zeros.
async fn block_status(export: &Export, req: &Request) -> Result<Vec<(u32, u32)>, FsError> {
    let runs = export.volume.allocation(req.offset, req.length.into()).await?;
    let mut extents = Vec::new();
    for (mut n, data) in runs {
        let flags = if data { 0 } else { wire::STATE_HOLE | wire::STATE_ZERO };
        while n > 0 {
            let piece = n.min(MAX_EXTENT);
            extents.push((piece as u32, flags));
            n -= piece;
        }
    }
    if req.flags & cmd::FLAG_REQ_ONE != 0 {
        extents.truncate(1);
    }
    Ok(extents)
}

/// Runs a checked request; a READ's answer is its data, anything else answers no data.
async fn run(export: &Export, req: &Request, payload: Vec<u8>) -> Result<Vec<u8>, FsError> {
    let v = &export.volume;
    let len = u64::from(req.length);
    if matches!(req.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES) {
        export.hold_lock().await?;
    }
    match req.kind {
        cmd::READ => return v.read(req.offset, req.length).await,
        cmd::WRITE => v.write(req.offset, &payload).await.map(|_| ())?,
        cmd::FLUSH => v.flush().await?,
        cmd::TRIM => v.discard(req.offset, len).await?,
        cmd::WRITE_ZEROES => {
            v.write_zeroes(req.offset, len, req.flags & cmd::FLAG_NO_HOLE == 0)
                .await?
        }
        _ => return Err(FsError::invalid("unknown command")),
    }
    // FUA: this request's writes are durable before the reply.
    if req.flags & cmd::FLAG_FUA != 0 {
        v.flush().await?;
    }
    Ok(Vec::new())
}

fn error_reply(req: &Request, structured: bool, code: u32) -> Reply {
    // Structured replies are mandatory for READ once negotiated, errors included.
    if structured && req.kind == cmd::READ {
        let why = match code {
            err::EINVAL => "invalid request",
            err::EPERM => "read-only export",
            _ => "I/O error",
        };
        return (wire::error_chunk(req.cookie, code, why), Vec::new());
    }
    (wire::simple_reply(req.cookie, code), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            kind,
            cookie: 1,
            offset,
            length,
        }
    }

    #[test]
    fn requests_are_checked_as_the_spec_says() {
        let size = 1 << 33;
        let both = Negotiated {
            structured: true,
            allocation: true,
        };
        let ok = |r: Request| check(&r, false, both, size, true);
        assert_eq!(ok(req(cmd::READ, cmd::FLAG_DF, 0, 4096)), Ok(()));
        assert_eq!(ok(req(cmd::WRITE, cmd::FLAG_FUA, size - 4096, 4096)), Ok(()));
        assert_eq!(ok(req(cmd::WRITE_ZEROES, cmd::FLAG_NO_HOLE, 0, u32::MAX)), Ok(()));
        assert_eq!(ok(req(cmd::FLUSH, 0, 0, 0)), Ok(()));
        // Unknown commands and flags, flags on the wrong command.
        assert_eq!(ok(req(9, 0, 0, 0)), Err(err::EINVAL));
        assert_eq!(ok(req(cmd::READ, 1 << 7, 0, 1)), Err(err::EINVAL));
        assert_eq!(ok(req(cmd::WRITE, cmd::FLAG_NO_HOLE, 0, 1)), Err(err::EINVAL));
        assert_eq!(
            check(
                &req(cmd::READ, cmd::FLAG_DF, 0, 1),
                false,
                Negotiated::default(),
                size,
                false
            ),
            Err(err::EINVAL)
        );
        // Past the end: ENOSPC for writes, EINVAL for the rest; overflowing offsets too.
        assert_eq!(ok(req(cmd::WRITE, 0, size - 1, 2)), Err(err::ENOSPC));
        assert_eq!(ok(req(cmd::WRITE_ZEROES, 0, size, 1)), Err(err::ENOSPC));
        assert_eq!(ok(req(cmd::READ, 0, size, 1)), Err(err::EINVAL));
        assert_eq!(ok(req(cmd::TRIM, 0, u64::MAX, 2)), Err(err::EINVAL));
        // Too large, and writes whose payload was dropped.
        assert_eq!(ok(req(cmd::READ, 0, 0, MAX_REQUEST + 1)), Err(err::EINVAL));
        assert_eq!(
            check(&req(cmd::WRITE, 0, 0, MAX_REQUEST + 1), false, both, size, false),
            Err(err::EINVAL)
        );
        // Read-only exports refuse every change.
        for kind in [cmd::WRITE, cmd::TRIM, cmd::WRITE_ZEROES] {
            assert_eq!(check(&req(kind, 0, 0, 1), true, both, size, true), Err(err::EPERM));
        }
        assert_eq!(check(&req(cmd::READ, 0, 0, 1), true, both, size, false), Ok(()));
        // BLOCK_STATUS only once base:allocation is selected, and only inside the export.
        assert_eq!(ok(req(cmd::BLOCK_STATUS, cmd::FLAG_REQ_ONE, 0, u32::MAX)), Ok(()));
        assert_eq!(ok(req(cmd::BLOCK_STATUS, 0, size, 1)), Err(err::EINVAL));
        let no_context = Negotiated {
            structured: true,
            allocation: false,
        };
        assert_eq!(
            check(&req(cmd::BLOCK_STATUS, 0, 0, 1), false, no_context, size, false),
            Err(err::EINVAL)
        );
    }

    #[test]
    fn read_errors_are_structured_once_negotiated() {
        let r = req(cmd::READ, 0, 0, 1);
        let (head, data) = error_reply(&r, true, err::EIO);
        assert_eq!(&head[..4], &wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert!(data.is_empty());
        let (head, _) = error_reply(&r, false, err::EIO);
        assert_eq!(head, wire::simple_reply(1, err::EIO));
        let (head, _) = error_reply(&req(cmd::WRITE, 0, 0, 1), true, err::ENOSPC);
        assert_eq!(head, wire::simple_reply(1, err::ENOSPC));
    }
}
