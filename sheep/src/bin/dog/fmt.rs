//! Printing as the original `dog` does: human sizes, local times, raw-mode name escaping
//! and redundancy schemes.

use std::ffi::CString;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn redundancy_columns() {
        assert_eq!(redundancy(3, 0), "3");
        assert_eq!(redundancy(6, 0x22), "4:2");
    }

    #[test]
    fn times_format() {
        // Only the shape is checked: the local time zone is whatever the machine has.
        let s = local_time(0, "%Y-%m-%d %H:%M");
        assert_eq!(s.len(), 16, "{s}");
        assert_eq!(ctime(1_434_618_296).len(), 24);
    }
}
