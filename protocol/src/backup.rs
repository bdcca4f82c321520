//! The `dog vdi backup` stream of Sheepdog 1.0.1 (PROTOCOL.md 5.11): a header {version 1,
//! magic 0x11921192}, then one record per changed object {idx, offset, length, reserved:
//! u32 LE each} followed by `length` bytes of the object from `offset`, then an end record
//! whose idx is 0xFFFFFFFF. The format carries no checksum: a flipped data byte cannot be
//! told apart; everything else that is wrong with a stream can, and [`check`] says what.

use std::collections::HashSet;
use std::io::{self, Read};

pub const VERSION: u32 = 1;
pub const MAGIC: u32 = 0x1192_1192;
/// The idx of the end record.
pub const END: u32 = u32::MAX;
/// Bytes of the header and of a record header.
pub const HEADER_SIZE: usize = 8;
pub const RECORD_SIZE: usize = 16;

/// The stream's header bytes.
pub fn header() -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    b[..4].copy_from_slice(&VERSION.to_le_bytes());
    b[4..].copy_from_slice(&MAGIC.to_le_bytes());
    b
}

/// One record: `length` bytes of data object `idx` from `offset` follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub idx: u32,
    pub offset: u32,
    pub length: u32,
}

impl Record {
    pub const END: Record = Record {
        idx: END,
        offset: 0,
        length: 0,
    };

    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[..4].copy_from_slice(&self.idx.to_le_bytes());
        b[4..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.length.to_le_bytes());
        b
    }

    /// The record and its reserved word.
    pub fn decode(b: &[u8; RECORD_SIZE]) -> (Record, u32) {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let r = Record {
            idx: word(0),
            offset: word(4),
            length: word(8),
        };
        (r, word(12))
    }
}

/// What a well-formed stream holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub data_bytes: u64,
}

/// Reads a whole stream meant for a VDI of `nr_objects` objects of `object_size` bytes and
/// checks everything but the data bytes themselves: the header, each record (an object
/// that exists, a range inside it, not empty, no object twice, reserved 0), the data being
/// all there, the end record, and nothing after it. The error says what is wrong and at
/// which byte of the stream.
pub fn check(r: &mut impl Read, nr_objects: u64, object_size: u64) -> Result<Summary, String> {
    let mut at = 0u64;
    let mut h = [0u8; HEADER_SIZE];
    read_exact(r, &mut h, &mut at, "the header")?;
    if h != header() {
        return Err("not a VDI backup: the header is not {version 1, magic 0x11921192}".into());
    }
    let mut sum = Summary::default();
    let mut seen = HashSet::new();
    loop {
        let start = at;
        let mut b = [0u8; RECORD_SIZE];
        read_exact(r, &mut b, &mut at, "a record header (no end record)")?;
        let (rec, reserved) = Record::decode(&b);
        if rec.idx == END {
            if rec.offset != 0 || rec.length != 0 || reserved != 0 {
                return Err(format!("the end record at byte {start} is damaged"));
            }
            break;
        }
        let bad = |what: &str| format!("record {} at byte {start} (object {}): {what}", sum.records, rec.idx);
        if u64::from(rec.idx) >= nr_objects {
            return Err(bad(&format!("the VDI has only {nr_objects} objects")));
        }
        if rec.length == 0 || u64::from(rec.offset) + u64::from(rec.length) > object_size {
            return Err(bad(&format!(
                "{} bytes at {} do not fit an object of {object_size} bytes",
                rec.length, rec.offset
            )));
        }
        if reserved != 0 {
            return Err(bad("its reserved word is not 0"));
        }
        if !seen.insert(rec.idx) {
            return Err(bad("the object has a record already"));
        }
        let got = io::copy(&mut r.by_ref().take(u64::from(rec.length)), &mut io::sink())
            .map_err(|e| format!("reading the backup: {e}"))?;
        at += got;
        if got != u64::from(rec.length) {
            return Err(bad(&format!("the stream ends after {got} of its {} bytes", rec.length)));
        }
        sum.records += 1;
        sum.data_bytes += got;
    }
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => Ok(sum),
        Ok(_) => Err(format!("bytes follow the end record at byte {at}")),
        Err(e) => Err(format!("reading the backup: {e}")),
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], at: &mut u64, what: &str) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(format!("the stream ends at byte {} inside {what}", *at + got as u64)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the backup: {e}")),
        }
    }
    *at += got as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(records: &[(Record, &[u8])], end: bool) -> Vec<u8> {
        let mut s = header().to_vec();
        for (r, data) in records {
            s.extend_from_slice(&r.encode());
            s.extend_from_slice(data);
        }
        if end {
            s.extend_from_slice(&Record::END.encode());
        }
        s
    }

    #[test]
    fn golden_bytes() {
        // PROTOCOL.md 5.11: version 1 then the magic, little-endian.
        assert_eq!(header(), [1, 0, 0, 0, 0x92, 0x11, 0x92, 0x11]);
        assert_eq!(
            Record::END.encode(),
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let r = Record {
            idx: 2,
            offset: 512,
            length: 1024,
        };
        assert_eq!(Record::decode(&r.encode()), (r, 0));
    }

    #[test]
    fn well_formed_and_broken_streams() {
        let r = |idx, offset, length| Record { idx, offset, length };
        let good = stream(&[(r(0, 0, 4), b"abcd"), (r(3, 8, 2), b"xy")], true);
        let s = check(&mut &good[..], 4, 16).expect("good stream");
        assert_eq!(
            s,
            Summary {
                records: 2,
                data_bytes: 6
            }
        );
        assert_eq!(check(&mut &stream(&[], true)[..], 4, 16), Ok(Summary::default()));
        let refused = |s: Vec<u8>, want: &str| {
            let e = check(&mut &s[..], 4, 16).expect_err(want);
            assert!(e.contains(want), "{e}");
        };
        refused(b"junk".to_vec(), "ends at byte 4 inside the header");
        refused(vec![0u8; 8], "not a VDI backup");
        refused(good[..good.len() - 16].to_vec(), "no end record");
        refused(good[..26].to_vec(), "ends after 2 of its 4 bytes");
        refused([good.clone(), vec![0]].concat(), "bytes follow the end record");
        refused(stream(&[(r(4, 0, 1), b"a")], true), "only 4 objects");
        refused(stream(&[(r(1, 15, 2), b"ab")], true), "do not fit");
        refused(stream(&[(r(1, 0, 0), b"")], true), "do not fit");
        refused(
            stream(&[(r(1, 0, 1), b"a"), (r(1, 4, 1), b"b")], true),
            "has a record already",
        );
        let mut reserved = stream(&[(r(1, 0, 1), b"a")], true);
        reserved[20] = 1;
        refused(reserved, "reserved word");
    }
}
