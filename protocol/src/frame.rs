//! Reading and writing whole frames (header + payload) with a size limit that is checked
//! before any payload buffer is allocated.

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::header::{RequestHeader, ResponseHeader, HEADER_SIZE};
use crate::inode::INODE_SIZE;

/// The largest payload any legal request or reply carries: 64 MiB, which holds a whole inode
/// and a whole object up to shift 26. Bigger objects (to 2 GiB) are read, written, copied and
/// recovered in pieces, so neither end ever holds one whole in memory.
pub const MAX_PAYLOAD: u32 = 64 << 20;
const _: () = assert!(INODE_SIZE as u32 <= MAX_PAYLOAD);

/// The most one request moves when an object is handled in pieces (recovery fetch,
/// copy-on-write, hashing a copy, dog's transfers and backups): 4 MiB, a default object.
pub const PIECE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame announces {len} payload bytes, more than the limit of {limit}")]
    TooLarge { len: u32, limit: u32 },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

fn eof_is_truncation(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// Reads the 48-byte header. `Ok(None)` on a clean close (EOF or reset) before its first byte.
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<[u8; HEADER_SIZE]>, FrameError> {
    let mut b = [0u8; HEADER_SIZE];
    let mut got = 0;
    while got < HEADER_SIZE {
        match r.read(&mut b[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if got == 0 && e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(Some(b))
}

pub async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: u32, limit: u32) -> Result<Vec<u8>, FrameError> {
    read_payload_with(r, len, limit, Vec::with_capacity).await
}

/// Like [`read_payload`], into a buffer that `alloc` makes with room for the payload (an
/// aligned one, say). The size is checked before anything is allocated.
pub async fn read_payload_with<R, B, F>(r: &mut R, len: u32, limit: u32, alloc: F) -> Result<B, FrameError>
where
    R: AsyncRead + Unpin,
    B: BufMut,
    F: FnOnce(usize) -> B,
{
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    // Read into spare capacity: no zero-filling of a buffer about to be overwritten.
    let len = len as usize;
    let mut buf = alloc(len);
    let mut got = 0;
    while got < len {
        let rest = (len - got) as u64;
        let n = (&mut *r)
            .take(rest)
            .read_buf(&mut buf)
            .await
            .map_err(eof_is_truncation)?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
        got += n;
    }
    Ok(buf)
}

/// Reads one request header. `Ok(None)` when the peer closed at a request boundary.
pub async fn read_request_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<RequestHeader>, FrameError> {
    Ok(read_header(r).await?.map(|b| RequestHeader::decode(&b)))
}

/// Reads one request and its payload (only when WRITE is set, PROTOCOL.md 1.5).
/// `Ok(None)` when the peer closed at a request boundary.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<Option<(RequestHeader, Vec<u8>)>, FrameError> {
    let Some(h) = read_request_header(r).await? else {
        return Ok(None);
    };
    let payload = read_payload(r, h.payload_len(), limit).await?;
    Ok(Some((h, payload)))
}

/// Reads one reply header. `Ok(None)` when the server closed at a reply boundary.
pub async fn read_response_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<ResponseHeader>, FrameError> {
    Ok(read_header(r).await?.map(|b| ResponseHeader::decode(&b)))
}

/// Reads `len` payload bytes past, without keeping them (a reply nobody waits for any more).
pub async fn skip_payload<R: AsyncRead + Unpin>(r: &mut R, len: u32, limit: u32) -> Result<(), FrameError> {
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let n = tokio::io::copy(&mut (&mut *r).take(u64::from(len)), &mut tokio::io::sink()).await?;
    if n < u64::from(len) {
        return Err(FrameError::Truncated);
    }
    Ok(())
}

/// Reads one reply; at most `min(capacity, data_length)` payload bytes are kept, the rest
/// (which a correct server never sends) is an error.
pub async fn read_response<R: AsyncRead + Unpin>(
    r: &mut R,
    capacity: u32,
) -> Result<(ResponseHeader, Vec<u8>), FrameError> {
    let h = read_response_header(r).await?.ok_or(FrameError::Truncated)?;
    let payload = read_payload(r, h.data_length, capacity.min(MAX_PAYLOAD)).await?;
    Ok((h, payload))
}

/// Reads one reply whose payload lands in `out`; a payload longer than `out` is an error.
/// Returns the header and how many bytes of `out` were filled.
pub async fn read_response_into<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &mut [u8],
) -> Result<(ResponseHeader, usize), FrameError> {
    let h = read_response_header(r).await?.ok_or(FrameError::Truncated)?;
    let len = h.data_length as usize;
    let Some(dest) = out.get_mut(..len) else {
        return Err(FrameError::TooLarge {
            len: h.data_length,
            limit: out.len() as u32,
        });
    };
    r.read_exact(dest).await.map_err(eof_is_truncation)?;
    Ok((h, len))
}

/// Writes a header and payload as one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    header: &[u8; HEADER_SIZE],
    payload: &[u8],
) -> std::io::Result<()> {
    let mut once = Some((*header, payload));
    write_frames(w, &mut Vec::new(), || once.take()).await
}

/// Frames with payloads under this size are copied together and go in one write; a larger
/// payload is written from its own buffer, after its header.
const GATHER_LIMIT: usize = 64 << 10;

/// A gathered write goes once it reaches this size, even if more frames are waiting.
const GATHER: usize = 64 << 10;

/// Writes the frames that `next` yields, as few writes as it takes: the writer task of a
/// pipelined connection drains its queue here, so that a peer reading the other end gets
/// several frames per read and both ends wake once for them. Frames with small payloads are
/// gathered in `buf`; a larger payload is written from its own buffer. Returns when `next`
/// has no more frames or the gathered bytes reached [`GATHER`].
pub async fn write_frames<W, P>(
    w: &mut W,
    buf: &mut Vec<u8>,
    mut next: impl FnMut() -> Option<([u8; HEADER_SIZE], P)>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    P: AsRef<[u8]>,
{
    buf.clear();
    while let Some((header, payload)) = next() {
        let payload = payload.as_ref();
        if payload.len() < GATHER_LIMIT {
            buf.reserve(HEADER_SIZE + payload.len());
            buf.extend_from_slice(&header);
            buf.extend_from_slice(payload);
        } else {
            buf.extend_from_slice(&header);
            w.write_all(buf).await?;
            buf.clear();
            w.write_all(payload).await?;
        }
        if buf.len() >= GATHER {
            break;
        }
    }
    w.write_all(buf).await?;
    buf.clear();
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opcode::{flags, op};

    #[tokio::test]
    async fn gathered_frames_read_back_in_order() {
        // Small and large payloads mixed: the large one goes from its own buffer between
        // the gathered ones, and the order holds.
        let sizes = [5usize, GATHER_LIMIT + 1, 0, 4096];
        let mut frames = sizes.iter().enumerate().map(|(i, &n)| {
            let mut h = RequestHeader::new(op::WRITE_OBJ);
            h.flags = flags::WRITE;
            h.id = i as u32;
            h.data_length = n as u32;
            (h.encode(), vec![i as u8; n])
        });
        let (mut wire, mut buf) = (Vec::new(), Vec::new());
        write_frames(&mut wire, &mut buf, || frames.next())
            .await
            .expect("write");
        let mut r = wire.as_slice();
        for (i, &n) in sizes.iter().enumerate() {
            let (h, p) = read_request(&mut r, 1 << 20).await.expect("read").expect("frame");
            assert_eq!((h.id, p), (i as u32, vec![i as u8; n]));
        }
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn round_trip_and_limits() {
        let mut h = RequestHeader::new(op::WRITE_OBJ);
        h.flags = flags::WRITE;
        h.data_length = 5;
        let mut wire = Vec::new();
        write_frame(&mut wire, &h.encode(), b"hello").await.expect("write");
        let (got, p) = read_request(&mut wire.as_slice(), 1024)
            .await
            .expect("ok")
            .expect("frame");
        assert_eq!((got, p.as_slice()), (h.clone(), &b"hello"[..]));

        // Truncated header and truncated payload.
        assert!(matches!(
            read_request(&mut &wire[..20], 1024).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_request(&mut &wire[..50], 1024).await,
            Err(FrameError::Truncated)
        ));
        // Clean close.
        assert!(read_request(&mut &wire[..0], 1024).await.expect("ok").is_none());

        // Oversized: refused before reading (nothing follows the header here).
        h.data_length = u32::MAX;
        let big = h.encode();
        assert!(matches!(
            read_request(&mut &big[..], MAX_PAYLOAD).await,
            Err(FrameError::TooLarge { len: u32::MAX, .. })
        ));

        // Without WRITE a large data_length carries no payload.
        let mut r = RequestHeader::new(op::GET_NODE_LIST);
        r.data_length = 491_520;
        let enc = r.encode();
        let (got, p) = read_request(&mut &enc[..], 16).await.expect("ok").expect("frame");
        assert_eq!((got.opcode, p.len()), (op::GET_NODE_LIST, 0));
    }

    #[tokio::test]
    async fn reply_longer_than_capacity_is_an_error() {
        let rsp = ResponseHeader {
            data_length: 10,
            ..ResponseHeader::default()
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &rsp.encode(), &[7u8; 10]).await.expect("write");
        assert!(read_response(&mut wire.as_slice(), 4).await.is_err());
        let (h, p) = read_response(&mut wire.as_slice(), 10).await.expect("fits");
        assert_eq!((h.data_length, p.len()), (10, 10));

        // Into the caller's buffer: too small is refused, larger is filled in part.
        let mut small = [0u8; 4];
        assert!(matches!(
            read_response_into(&mut wire.as_slice(), &mut small).await,
            Err(FrameError::TooLarge { len: 10, limit: 4 })
        ));
        assert_eq!(small, [0u8; 4], "nothing read into a buffer that was too small");
        let mut big = [1u8; 12];
        let (_, n) = read_response_into(&mut wire.as_slice(), &mut big).await.expect("fits");
        assert_eq!((n, &big[..]), (10, &[7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 1, 1][..]));
        assert!(matches!(
            read_response_into(&mut &wire[..52], &mut big).await,
            Err(FrameError::Truncated)
        ));
    }
}
