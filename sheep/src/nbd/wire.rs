//! The NBD wire format (the NBD project's `doc/proto.md`), newstyle fixed: the numbers, and
//! the messages this server reads and writes. Everything is big-endian.

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags: the same two bits.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    pub const ERR_UNSUP: u32 = ERR + 1;
    pub const ERR_POLICY: u32 = ERR + 2;
    pub const ERR_INVALID: u32 = ERR + 3;
    pub const ERR_UNKNOWN: u32 = ERR + 6;
    pub const ERR_TOO_BIG: u32 = ERR + 9;
}

pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod tx {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;

    pub const FLAG_FUA: u16 = 1 << 0;
    pub const FLAG_NO_HOLE: u16 = 1 << 1;
    pub const FLAG_DF: u16 = 1 << 2;
    pub const FLAG_REQ_ONE: u16 = 1 << 3;
}

/// Errors in replies (errno values, by the spec's choice).
pub mod err {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const ESHUTDOWN: u32 = 108;
}

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// The one metadata context this server knows: which blocks hold data.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Its extent flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

pub const REQUEST_SIZE: usize = 28;
/// Export names and other strings: the spec's limit.
pub const MAX_STRING: usize = 4096;

/// One transmission-phase request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// `None` for a bad magic: the stream is not NBD, or out of step.
    pub fn decode(b: &[u8; REQUEST_SIZE]) -> Option<Request> {
        if u32::from_be_bytes([b[0], b[1], b[2], b[3]]) != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            cookie: u64::from_be_bytes(b[8..16].try_into().ok()?),
            offset: u64::from_be_bytes(b[16..24].try_into().ok()?),
            length: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
        })
    }

    #[cfg(test)]
    pub fn encode(&self) -> [u8; REQUEST_SIZE] {
        let mut b = [0u8; REQUEST_SIZE];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply header (READ data follows it when `error` is 0).
pub fn simple_reply(cookie: u64, error: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header for a payload of `len` bytes.
pub fn chunk_header(cookie: u64, flags: u16, kind: u16, len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// The final OFFSET_DATA chunk's header and offset; `len` bytes of data follow.
pub fn data_chunk(cookie: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut b = chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 8 + len as u32);
    b.extend_from_slice(&offset.to_be_bytes());
    b
}

/// The final chunk of a reply without data.
pub fn none_chunk(cookie: u64) -> Vec<u8> {
    chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)
}

/// The final BLOCK_STATUS chunk: `extents` of (length, flags) for metadata context `context`.
pub fn block_status_chunk(cookie: u64, context: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len() as u32;
    let mut b = chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, len);
    b.extend_from_slice(&context.to_be_bytes());
    for (n, flags) in extents {
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
    }
    b
}

/// The final ERROR chunk, with a message for the client's log.
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let msg = truncated(message);
    let mut b = chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 6 + msg.len() as u32);
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// An option reply.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// `message` cut to the spec's string limit, at a character boundary.
pub fn truncated(message: &str) -> &[u8] {
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message.as_bytes()[..end]
}

/// The name and info requests of an INFO or GO option: u32 name length, name, u16 count,
/// count × u16. `None` if the lengths do not add up.
pub fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(len)?)?;
    let rest = &data[4 + len..];
    let n = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let reqs = rest.get(2..)?;
    if reqs.len() != 2 * n {
        return None;
    }
    let infos = reqs.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    Some((String::from_utf8(name.to_vec()).ok()?, infos))
}

/// The export name and queries of LIST_META_CONTEXT or SET_META_CONTEXT: u32 name length,
/// name, u32 query count, then per query u32 length and the query. `None` if the lengths do
/// not add up.
pub fn parse_meta_request(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut at = 0usize;
    let name = take_string(data, &mut at)?;
    let n = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    let queries = (0..n).map(|_| take_string(data, &mut at)).collect::<Option<Vec<_>>>()?;
    (at == data.len()).then_some((name, queries))
}

/// A u32 length and that many bytes of UTF-8 at `*at`, which moves past them.
fn take_string(data: &[u8], at: &mut usize) -> Option<String> {
    let len = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let s = data.get(*at + 4..(*at + 4).checked_add(len)?)?;
    *at += 4 + len;
    String::from_utf8(s.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request {
            flags: cmd::FLAG_FUA,
            kind: cmd::WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        let b = r.encode();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&b), Some(r));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(Request::decode(&bad), None);
    }

    #[test]
    fn replies_have_the_spec_layout() {
        assert_eq!(
            simple_reply(7, err::EIO),
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        let d = data_chunk(9, 512, 4);
        assert_eq!(d.len(), 28);
        assert_eq!(&d[..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&d[4..8], &[0, 1, 0, 1], "DONE, OFFSET_DATA");
        assert_eq!(&d[16..20], &12u32.to_be_bytes());
        assert_eq!(&d[20..], &512u64.to_be_bytes());
        let e = error_chunk(9, err::EINVAL, "no");
        assert_eq!(&e[4..8], &[0, 1, 0x80, 1]);
        assert_eq!(&e[16..20], &8u32.to_be_bytes());
        assert_eq!(&e[20..], &[0, 0, 0, 22, 0, 2, b'n', b'o']);
        let o = option_reply(opt::GO, rep::ACK, &[]);
        assert_eq!(&o[..8], &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(&o[8..], &[0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn info_requests_parse_or_are_refused() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"web");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&info::NAME.to_be_bytes());
        assert_eq!(
            parse_info_request(&d),
            Some(("web".to_string(), vec![info::BLOCK_SIZE, info::NAME]))
        );
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        let mut long = u32::MAX.to_be_bytes().to_vec();
        long.extend_from_slice(b"web\0\0");
        assert_eq!(parse_info_request(&long), None);
        assert_eq!(parse_info_request(&[]), None);
    }

    #[test]
    fn meta_context_requests_parse_or_are_refused() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"web");
        d.extend_from_slice(&2u32.to_be_bytes());
        for q in [BASE_ALLOCATION, "qemu:dirty-bitmap:x"] {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        assert_eq!(
            parse_meta_request(&d),
            Some(("web".into(), vec![BASE_ALLOCATION.into(), "qemu:dirty-bitmap:x".into()]))
        );
        assert_eq!(parse_meta_request(&d[..d.len() - 1]), None, "short");
        let mut long = d.clone();
        long.push(0);
        assert_eq!(parse_meta_request(&long), None, "trailing bytes");
        let mut many = d[..7].to_vec();
        many.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_request(&many), None, "more queries than bytes");
        let b = block_status_chunk(5, 1, &[(4096, STATE_HOLE | STATE_ZERO), (8192, 0)]);
        assert_eq!(&b[4..8], &[0, 1, 0, 5], "DONE, BLOCK_STATUS");
        assert_eq!(&b[16..20], &20u32.to_be_bytes());
        assert_eq!(
            &b[20..],
            &[0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 3, 0, 0, 32, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn messages_are_cut_at_a_character() {
        let m = "é".repeat(MAX_STRING);
        let t = truncated(&m);
        assert!(t.len() <= MAX_STRING);
        assert!(std::str::from_utf8(t).is_ok());
    }
}
