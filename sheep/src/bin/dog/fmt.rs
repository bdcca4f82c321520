//! Parsing and printing as the original `dog` does: sizes with binary suffixes, human sizes,
//! local times, raw-mode name escaping, redundancy schemes and snapshot selectors.

use std::ffi::CString;

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

/// Prints a size as the original's `strnumber`: the raw byte count with `-r`, otherwise
/// mebibytes and up with one decimal below 10 (`1.0 GB`, `64 MB`, `0.0 MB`).
pub fn size_str(bytes: u64, raw: bool) -> String {
    if raw {
        return bytes.to_string();
    }
    const UNITS: [&str; 7] = ["MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = bytes as f64 / (1024.0 * 1024.0);
    let mut i = 0;
    while i < UNITS.len() - 1 && size >= 1024.0 {
        i += 1;
        size /= 1024.0;
    }
    if size >= 10.0 {
        format!("{size:.0} {}", UNITS[i])
    } else {
        format!("{size:.1} {}", UNITS[i])
    }
}

extern "C" {
    fn tzset();
}

/// Formats Unix seconds in local time with a `strftime` pattern.
pub fn local_time(secs: u64, pattern: &str) -> String {
    let t = secs.min(i64::MAX as u64) as libc::time_t;
    let Ok(pattern) = CString::new(pattern) else {
        return secs.to_string();
    };
    let mut buf = [0u8; 128];
    // SAFETY: `tm` is plain data that localtime_r fills; strftime writes at most `buf.len()`
    // bytes into `buf` and returns how many (0 on failure). The pattern is NUL-terminated.
    let n = unsafe {
        tzset();
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return secs.to_string();
        }
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), pattern.as_ptr(), &tm)
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `ctime(3)` without its newline: `Thu Jun 18 17:24:56 2015`.
pub fn ctime(secs: u64) -> String {
    local_time(secs, "%a %b %e %H:%M:%S %Y")
}

/// A name for a raw (`-r`) line: white space and backslashes get a backslash in front, so
/// that a whitespace split of the line still finds every field.
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '\\' || matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits an erasure-coding copy policy into (data strips, parity strips).
pub fn ec_policy_to_dp(policy: u8) -> (u8, u8) {
    ((policy >> 4) * 2, policy & 0x0f)
}

/// The "Copies" column: the number of copies, or `d:p` for an erasure-coded VDI.
pub fn redundancy(copies: u8, policy: u8) -> String {
    if policy == 0 {
        copies.to_string()
    } else {
        let (d, p) = ec_policy_to_dp(policy);
        format!("{d}:{p}")
    }
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
             shift from {MIN} (1 MiB) to {MAX} (64 MiB)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sizes_print() {
        assert_eq!(size_str(1 << 30, false), "1.0 GB");
        assert_eq!(size_str(64 << 20, false), "64 MB");
        assert_eq!(size_str(4 << 20, false), "4.0 MB");
        assert_eq!(size_str(0, false), "0.0 MB");
        assert_eq!(size_str(512, false), "0.0 MB");
        assert_eq!(size_str(10 << 40, false), "10 TB");
        assert_eq!(size_str(1536 << 20, false), "1.5 GB");
        assert_eq!(size_str(1 << 30, true), "1073741824");
        assert_eq!(size_str(u64::MAX, false), "16 EB");
    }

    #[test]
    fn names_escape() {
        assert_eq!(escape_name("plain"), "plain");
        assert_eq!(escape_name("a b\\c\td"), "a\\ b\\\\c\\\td");
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
        assert_eq!(redundancy(3, 0), "3");
        assert_eq!(redundancy(6, 0x22), "4:2");
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
        assert!(parse_block_size_shift("27").is_err());
        assert!(parse_block_size_shift("x").is_err());
    }

    #[test]
    fn times_format() {
        // Only the shape is checked: the local time zone is whatever the machine has.
        let s = local_time(0, "%Y-%m-%d %H:%M");
        assert_eq!(s.len(), 16, "{s}");
        assert_eq!(ctime(1_434_618_296).len(), 24);
    }
}
