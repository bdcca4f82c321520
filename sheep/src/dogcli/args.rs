//! Value parsers of `dog`'s arguments, as the original reads them: sizes with binary
//! suffixes, redundancy schemes, snapshot selectors, names and object sizes.

/// Most copies a VDI or a cluster can have (`SD_MAX_COPIES`).
pub const MAX_COPIES: u8 = 31;

/// Parses a size: a number (decimals allowed, as `strtod` reads them) followed by at most one
/// suffix letter: B (bytes), K, M, G, T or P (powers of 1024), in either case.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "Invalid size '{s}': use a number of bytes, optionally followed by B, K, M, G, T \
             or P (powers of 1024), e.g. 512, 64M, 1G"
        )
    };
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        _ => return Err(bad()),
    };
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(bad());
    }
    if !num.contains('.') {
        let n: u64 = num.parse().map_err(|_| bad())?;
        return n.checked_mul(1u64 << shift).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * (1u64 << shift) as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// A `-c` value: `N` copies (1 to 31), or `D:P` erasure coding (D in 2, 4, 8, 16; P in 1 to
/// 15). Returns (copies, copy policy) as NEW_VDI and MAKE_FS take them.
pub fn parse_copies(s: &str) -> Result<(u8, u8), String> {
    let bad = || {
        format!(
            "Invalid copies '{s}': use N (1 to {MAX_COPIES}) replicated copies, or D:P erasure \
             coding with D in 2, 4, 8, 16 data strips and P in 1 to 15 parity strips"
        )
    };
    match s.split_once(':') {
        None => {
            let n: u8 = s.parse().map_err(|_| bad())?;
            if n == 0 || n > MAX_COPIES {
                return Err(bad());
            }
            Ok((n, 0))
        }
        Some((d, p)) => {
            let d: u8 = d.parse().map_err(|_| bad())?;
            let p: u8 = p.parse().map_err(|_| bad())?;
            if !matches!(d, 2 | 4 | 8 | 16) || p == 0 || p > 15 {
                return Err(bad());
            }
            Ok((d + p, ((d / 2) << 4) | p))
        }
    }
}

/// Which snapshot `-s` names: a positive id or a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Snap {
    Id(u32),
    Tag(String),
}

impl Snap {
    /// (snapid, tag) as GET_VDI_INFO and DEL_VDI take them.
    pub fn id_and_tag(snap: Option<&Snap>) -> (u32, &str) {
        match snap {
            None => (0, ""),
            Some(Snap::Id(n)) => (*n, ""),
            Some(Snap::Tag(t)) => (0, t.as_str()),
        }
    }
}

/// Parses `-s`: all digits is a snapshot id (which must not be 0), anything else a tag.
pub fn parse_snap(s: &str) -> Result<Snap, String> {
    if s.is_empty() {
        return Err("the snapshot id or tag must not be empty".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u32>() {
            Ok(0) => Err("The snapshot id must be larger than zero".into()),
            Ok(n) => Ok(Snap::Id(n)),
            Err(_) => Err(format!("snapshot id '{s}' is too large")),
        };
    }
    check_name_len(s, "snapshot tag")?;
    Ok(Snap::Tag(s.to_string()))
}

/// Names and tags travel in 256-byte NUL-padded fields.
pub fn check_name_len(s: &str, what: &str) -> Result<(), String> {
    if s.len() > protocol::inode::MAX_NAME_LEN {
        Err(format!(
            "{what} '{s}' is too long ({} bytes; at most {})",
            s.len(),
            protocol::inode::MAX_NAME_LEN
        ))
    } else {
        Ok(())
    }
}

/// clap value parser for cluster snapshot tags: one line of printable text.
pub fn parse_farm_tag(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the snapshot tag must not be empty".into());
    }
    if s.chars().any(char::is_control) {
        return Err("the snapshot tag must not contain control characters".into());
    }
    check_name_len(s, "snapshot tag")?;
    Ok(s.to_string())
}

/// clap value parser for object ids: up to 16 hex digits (a `0x` prefix allowed).
pub fn parse_oid(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    let hex = (1..=16).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit());
    match u64::from_str_radix(digits, 16) {
        Ok(oid) if hex => Ok(oid),
        _ => Err(format!("'{s}' is not an object id: give up to 16 hex digits")),
    }
}

/// clap value parser for VDI names.
pub fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the VDI name must not be empty".into());
    }
    check_name_len(s, "VDI name")?;
    Ok(s.to_string())
}

/// A `-z` value: the object size as a power of two, within what this implementation carries.
pub fn parse_block_size_shift(s: &str) -> Result<u8, String> {
    use protocol::inode::{MAX_BLOCK_SIZE_SHIFT as MAX, MIN_BLOCK_SIZE_SHIFT as MIN};
    match s.parse::<u8>() {
        Ok(n) if (MIN..=MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "block size shift '{s}' is out of range: the object size is 2^shift bytes with \
             shift from {MIN} (1 MiB) to {MAX} (2 GiB)"
        )),
    }
}

/// A `dog node vnodes set` count: fixed, or `None` for "follow the capacity" (`auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vnodes(pub Option<u16>);

pub fn parse_vnodes(s: &str) -> Result<Vnodes, String> {
    if s == "auto" {
        return Ok(Vnodes(None));
    }
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(Vnodes(Some(n))),
        _ => Err(format!("invalid vnodes '{s}': use a count from 1 to 65535, or auto")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnodes_parse() {
        assert_eq!(parse_vnodes("auto"), Ok(Vnodes(None)));
        assert_eq!(parse_vnodes("256"), Ok(Vnodes(Some(256))));
        for bad in ["0", "65536", "-1", "", "Auto", "12x"] {
            assert!(parse_vnodes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oids_parse() {
        assert_eq!(parse_oid("00ab12cd00000003"), Ok(0x00ab_12cd_0000_0003));
        assert_eq!(parse_oid("0x8000000000000001"), Ok(0x8000_0000_0000_0001));
        assert_eq!(parse_oid("3"), Ok(3));
        for bad in ["", "0x", "+3", "-3", "12345678901234567", "xyz", "0x0x3", " 3"] {
            assert!(parse_oid(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512b"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "G", "1X", "1GB", "-1", "1..2", ".", "1 G", "99999999999P"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn copies_and_policies() {
        assert_eq!(parse_copies("3"), Ok((3, 0)));
        assert_eq!(parse_copies("31"), Ok((31, 0)));
        assert!(parse_copies("0").is_err());
        assert!(parse_copies("32").is_err());
        assert!(parse_copies("x").is_err());
        assert_eq!(parse_copies("4:2"), Ok((6, 0x22)));
        assert!(parse_copies("3:2").is_err());
        assert!(parse_copies("4:0").is_err());
    }

    #[test]
    fn snapshots() {
        assert_eq!(parse_snap("1"), Ok(Snap::Id(1)));
        assert_eq!(parse_snap("snap1"), Ok(Snap::Tag("snap1".into())));
        assert_eq!(parse_snap("1a"), Ok(Snap::Tag("1a".into())));
        assert!(parse_snap("0").is_err());
        assert!(parse_snap("").is_err());
        assert!(parse_snap(&"t".repeat(256)).is_err());
        assert_eq!(Snap::id_and_tag(None), (0, ""));
        assert_eq!(Snap::id_and_tag(Some(&Snap::Id(2))), (2, ""));
        assert_eq!(Snap::id_and_tag(Some(&Snap::Tag("x".into()))), (0, "x"));
    }

    #[test]
    fn block_size_shifts() {
        assert_eq!(parse_block_size_shift("22"), Ok(22));
        assert!(parse_block_size_shift("19").is_err());
        assert_eq!(parse_block_size_shift("31"), Ok(31));
        assert!(parse_block_size_shift("32").is_err());
        assert!(parse_block_size_shift("x").is_err());
    }
}
