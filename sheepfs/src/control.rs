//! Control files: what may be written to them. Parsing happens before anything is changed,
//! so bad input leaves the cluster as it was.

use protocol::inode::MAX_NAME_LEN;

use volume::{FsError, FsResult};

/// What a write to `/vdi/<name>/snapshot` asks for: `1` (no tag) or `tag=NAME`.
pub fn parse_snapshot(input: &[u8]) -> FsResult<String> {
    let s = one_line(input)?;
    if s == "1" {
        return Ok(String::new());
    }
    match s.strip_prefix("tag=") {
        Some(tag) if !tag.is_empty() && tag.len() <= MAX_NAME_LEN => Ok(tag.to_string()),
        Some(_) => Err(FsError::invalid(format!(
            "snapshot tag must be 1 to {MAX_NAME_LEN} bytes"
        ))),
        None => Err(FsError::invalid(format!("snapshot: write 1 or tag=NAME, not {s:?}"))),
    }
}

/// What a write to `/config/object_cache` asks for: `1` (on) or `0` (off).
pub fn parse_switch(input: &[u8]) -> FsResult<bool> {
    match one_line(input)? {
        "1" => Ok(true),
        "0" => Ok(false),
        s => Err(FsError::invalid(format!("object_cache: write 0 or 1, not {s:?}"))),
    }
}

/// A new VDI name written to a `clone` file.
pub fn parse_clone(input: &[u8]) -> FsResult<String> {
    let s = one_line(input)?;
    check_name(s)?;
    Ok(s.to_string())
}

/// A VDI name usable as a directory name and on the wire.
pub fn check_name(name: &str) -> FsResult<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(FsError::invalid(format!("VDI names are 1 to {MAX_NAME_LEN} bytes")));
    }
    if name == "."
        || name == ".."
        || name == "list"
        || name.contains(['/', '\0'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(FsError::invalid(format!("{name:?} is not a valid VDI name")));
    }
    Ok(())
}

/// The input as one line of UTF-8, without its trailing newline.
fn one_line(input: &[u8]) -> FsResult<&str> {
    let s = std::str::from_utf8(input).map_err(|_| FsError::invalid("control input is not UTF-8"))?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    if s.contains('\n') {
        return Err(FsError::invalid("control input must be one line"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_examples() {
        for line in crate::semantics_example("control").lines() {
            let (file, rest) = line.split_once(' ').expect("file");
            let rest = rest.trim_start().strip_prefix('"').expect("quoted input");
            let (input, expect) = rest.split_once('"').expect("closing quote");
            let got = match file {
                "snapshot" => parse_snapshot(input.as_bytes()).map(|t| {
                    if t.is_empty() {
                        "ok, no tag".to_string()
                    } else {
                        format!("ok, tag {t}")
                    }
                }),
                "clone" => parse_clone(input.as_bytes()).map(|_| "ok".to_string()),
                "object_cache" => {
                    parse_switch(input.as_bytes()).map(|on| format!("ok, {}", if on { "on" } else { "off" }))
                }
                other => panic!("unknown control file {other}"),
            };
            let got = got.unwrap_or_else(|e| {
                if e.errno == libc::EINVAL {
                    "EINVAL".into()
                } else {
                    format!("errno {}", e.errno)
                }
            });
            assert_eq!(got, expect.trim(), "{line}");
        }
    }

    #[test]
    fn snapshot_inputs() {
        assert_eq!(parse_snapshot(b"1\n").ok(), Some(String::new()));
        assert_eq!(
            parse_snapshot(b"tag=before-upgrade\n").ok(),
            Some("before-upgrade".into())
        );
        for bad in [&b"banana\n"[..], b"", b"0", b"tag=", b"1\n2\n", b"\xff"] {
            assert_eq!(
                parse_snapshot(bad).map_err(|e| e.errno).err(),
                Some(libc::EINVAL),
                "{bad:?}"
            );
        }
        let long = format!("tag={}", "x".repeat(256));
        assert!(parse_snapshot(long.as_bytes()).is_err());
    }

    #[test]
    fn clone_names() {
        assert_eq!(parse_clone(b"web02\n").ok(), Some("web02".into()));
        assert!(parse_clone("x".repeat(256).as_bytes()).is_err());
        assert!(parse_clone(&[b'x'; 255]).is_ok());
        for bad in ["", "a/b", "list", "..", "a b"] {
            assert!(parse_clone(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
