//! `dog node farm list|check|read`: a node's farm (`-b farm`), read on the node's machine
//! ([`sheep::store::farm::node`]).

use std::path::Path;

use protocol::Oid;
use sheep::store::farm::node::{self, NodeFarm};

use crate::error::Failure;
use crate::fmt::{local_time, size_str};
use crate::Out;

/// The farm in `dir`: a sheep's directory, or its farm.
fn open(dir: &Path) -> Result<NodeFarm, Failure> {
    let farm = node::dir(dir);
    if farm.is_dir() {
        return Ok(NodeFarm::open(&farm)?);
    }
    if dir.join("obj").is_dir() {
        return Err(Failure::new(format!(
            "{} holds no farm: a sheep makes one when a recovery first drops copies in a cluster \
             formatted with -b farm",
            dir.display()
        )));
    }
    Ok(NodeFarm::open(dir)?)
}

pub fn list(dir: &Path, raw: bool) -> Result<(), Failure> {
    let farm = open(dir)?;
    let _held = farm.hold_for_reading()?;
    let mut out = Out::new();
    if !raw {
        out.line("Index  Snapshot Time     Epoch  Copies      Size  Members");
    }
    let snaps = farm.snapshots()?;
    let count = snaps.len();
    let mut unreadable = 0;
    for (e, snap) in snaps {
        let snap = match snap {
            Ok(s) => s,
            Err(f) => {
                crate::error::warn(format!("system snapshot {} ('{}'): {f}", e.index, e.tag));
                unreadable += 1;
                continue;
            }
        };
        let members = snap.members.join(",");
        if raw {
            out.line(format!(
                "{} {} {} {} {} {members}",
                e.index, e.time, snap.epoch, snap.objects, snap.bytes
            ));
        } else {
            out.line(format!(
                "{:5}  {}  {:5}  {:6}  {:>8}  {members}",
                e.index,
                local_time(e.time, "%Y-%m-%d %H:%M"),
                snap.epoch,
                snap.objects,
                size_str(snap.bytes, false),
            ));
        }
    }
    if !raw {
        let damaged = match unreadable {
            0 => String::new(),
            n => format!(" ({n} cannot be read)"),
        };
        out.line(format!(
            "system snapshots: {count}{damaged}; the farm takes {} on disk",
            size_str(farm.disk_bytes()?, false)
        ));
    }
    out.print()
}

pub fn check(dir: &Path) -> Result<(), Failure> {
    let farm = open(dir)?;
    let _held = farm.hold_for_reading()?;
    let problems = farm.check()?;
    if problems.is_empty() {
        crate::emit("every object of the farm's system snapshots matches its SHA-1\n")?;
        return Ok(());
    }
    for p in &problems {
        crate::error::warn(p);
    }
    Err(Failure::new(format!(
        "{} farm objects are missing or corrupt",
        problems.len()
    )))
}

pub fn read(dir: &Path, oid: u64, epoch: Option<u32>) -> Result<(), Failure> {
    let farm = open(dir)?;
    let _held = farm.hold_for_reading()?;
    let (_, trunk) = farm.find(Oid(oid), epoch)?;
    let mut out = std::io::stdout().lock();
    // NodeFarm::read flushes what it wrote.
    farm.read(Oid(oid), &trunk, &mut out)?;
    Ok(())
}
