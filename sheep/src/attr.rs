//! VDI attributes (GET_VDI_ATTR): small key/value records beside a VDI, one 66,320-byte
//! object each, as `dog vdi setattr/getattr` and QEMU used them. The object is
//! `attr_oid(sd_hash_vdi(name), id)`, where `id` starts at the record's hash
//! ([`VdiAttr::first_id`]) and probes linearly past other keys.
//!
//! The original probes without reading when asked to create, so a set over a colliding key
//! overwrote it; here every probe reads, and only a slot that holds no object is created.
//! Slots of deleted attributes (their name cleared) are skipped, never reused. The whole
//! operation runs under the cluster's VDI-operation lock, so "exclusive" means exclusive
//! across gateways too.

use std::sync::Arc;

use protocol::attr::{attr_oid, VdiAttr, MAX_KEY};
use protocol::hash::sd_hash_vdi;
use protocol::inode::ATTR_OBJ_SIZE;
use protocol::{flags, Oid, RequestHeader, ResultCode};

use crate::gateway::{self, Write};
use crate::node::Sheep;
use crate::vdi;

/// What the reply carries: the attribute's object is `attr_oid(vid, attr_id)`.
pub struct Found {
    pub vid: u32,
    pub attr_id: u32,
    pub copies: u8,
}

/// Serves GET_VDI_ATTR: finds (CREAT: creates or replaces; EXCL: only creates; DEL: clears)
/// the attribute the payload names.
pub async fn get_vdi_attr(sheep: &Arc<Sheep>, req: &RequestHeader, payload: &[u8]) -> Result<Found, ResultCode> {
    if req.flags & flags::WRITE == 0 {
        return Err(ResultCode::INVALID_PARMS);
    }
    let mut want = VdiAttr::decode(payload).ok_or(ResultCode::INVALID_PARMS)?;
    let name = vdi::parse_name(&payload[..256]).ok_or(ResultCode::INVALID_PARMS)?;
    if want.key.is_empty() || want.key.len() > MAX_KEY {
        return Err(ResultCode::INVALID_PARMS);
    }
    let (create, excl, delete) = (
        req.flags & flags::CREAT != 0,
        req.flags & flags::EXCL != 0,
        req.flags & flags::DEL != 0,
    );
    let (_lock, end) = sheep.driver.lock_ops().await.map_err(|e| {
        tracing::error!(error = %e, "cannot take the VDI-operation lock for an attribute");
        ResultCode::CLUSTER_ERROR
    })?;
    sheep.wait_applied(end).await;
    let vid = vdi::lookup(sheep, &name, want.tag.as_bytes(), req.vdi().snapid)
        .await
        .found?;
    want.ctime = vdi::read_header(sheep, vid).await?.create_time;

    let hash_vid = sd_hash_vdi(&name);
    let copies = sheep.state().copies_for(hash_vid);
    let found = |attr_id| Found {
        vid: hash_vid,
        attr_id,
        copies,
    };
    let write = |oid, data: Vec<u8>, create| {
        gateway::write(
            sheep,
            Write {
                oid,
                offset: 0,
                data: data.into(),
                create,
                copies,
            },
        )
    };
    let start = want.first_id();
    let mut id = start;
    loop {
        let oid = Oid(attr_oid(hash_vid, id));
        match gateway::read(sheep, oid, 0, ATTR_OBJ_SIZE as u32, copies).await {
            Err(ResultCode::NO_OBJ) if create => {
                write(oid, want.encode(), true).await?;
                return Ok(found(id));
            }
            Err(code) => return Err(code),
            Ok(b) if VdiAttr::decode(&b).is_some_and(|s| s.same_key(&want)) => {
                if excl {
                    return Err(ResultCode::VDI_EXIST);
                }
                if delete {
                    // A cleared name[0] matches no lookup again.
                    write(oid, vec![0u8], false).await?;
                } else if create {
                    write(oid, want.encode(), false).await?;
                }
                return Ok(found(id));
            }
            Ok(_) => {}
        }
        id = id.wrapping_add(1);
        if id == start {
            return Err(ResultCode::FULL_VDI);
        }
    }
}
