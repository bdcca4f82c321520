//! `dog vdi setattr | getattr`: GET_VDI_ATTR finds (or sets) the attribute; getattr then
//! reads its object, as the original does.

use std::io::{Read, Write};
use std::net::SocketAddr;

use protocol::attr::{VdiAttr, MAX_KEY, MAX_VALUE};
use protocol::inode::ATTR_OBJ_SIZE;
use protocol::{flags, ClientError, ResultCode};

use crate::error::{fail, why, Failure};
use crate::net;

/// The original's exit statuses for an attribute that exists (`-x`) and for a missing VDI
/// or attribute.
const EXIT_EXISTS: i32 = 3;
const EXIT_MISSING: i32 = 5;

fn attr(name: &str, key: &str, value: Vec<u8>) -> Result<VdiAttr, Failure> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Failure::usage(format!(
            "The attribute key must be 1 to {MAX_KEY} bytes"
        )));
    }
    Ok(VdiAttr {
        name: name.into(),
        key: key.into(),
        value,
        ..VdiAttr::default()
    })
}

/// Maps the two results scripts test for to their exit statuses.
fn failure(e: &ClientError, key: &str, context: &str) -> Failure {
    let (code, msg) = match e.result() {
        Some(ResultCode::VDI_EXIST) => (EXIT_EXISTS, format!("The attribute '{key}' already exists")),
        Some(ResultCode::NO_OBJ) => (EXIT_MISSING, format!("Attribute '{key}' not found")),
        Some(ResultCode::NO_VDI) => (EXIT_MISSING, "VDI not found".into()),
        _ => return fail(context, e),
    };
    Failure { code, msg }
}

pub async fn set(
    addr: SocketAddr,
    name: &str,
    key: &str,
    value: Option<String>,
    delete: bool,
    exclusive: bool,
) -> Result<(), Failure> {
    let value = match value {
        Some(v) => v.into_bytes(),
        None if delete => Vec::new(),
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .take(MAX_VALUE as u64 + 1)
                .read_to_end(&mut v)
                .map_err(|e| Failure::new(format!("Failed to read the value from standard input: {e}")))?;
            v
        }
    };
    if value.len() > MAX_VALUE {
        return Err(Failure::usage(format!("The value is longer than {MAX_VALUE} bytes")));
    }
    let a = attr(name, key, value)?;
    let mut f = if delete { flags::DEL } else { flags::CREAT };
    if exclusive {
        f |= flags::EXCL;
    }
    let c = net::connect(addr).await?;
    c.get_vdi_attr(&a, f)
        .await
        .map_err(|e| failure(&e, key, "Failed to set attribute"))?;
    Ok(())
}

pub async fn get(addr: SocketAddr, name: &str, key: &str) -> Result<(), Failure> {
    let a = attr(name, key, Vec::new())?;
    let c = net::connect(addr).await?;
    let oid = c
        .get_vdi_attr(&a, 0)
        .await
        .map_err(|e| failure(&e, key, "Failed to find attribute oid"))?;
    let b = net::read_obj(&c, oid.0, 0, ATTR_OBJ_SIZE as u32, true)
        .await
        .map_err(|e| Failure::new(format!("Failed to read attribute oid: {}", why(&e))))?;
    let stored = VdiAttr::decode(&b).ok_or_else(|| Failure::new("The attribute object is malformed"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&stored.value)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(format!("Failed to write the value: {e}")))
}
