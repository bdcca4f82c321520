//! `dog cluster format | info | shutdown` (PROTOCOL.md 5.1, 5.10, 5.11).

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::SystemTime;

use protocol::bitmap::VdiBitmap;
use protocol::cluster::EpochRecord;
use protocol::inode::sd_time;
use protocol::opcode::cluster_flags;
use protocol::{op, Client, ClusterArgs, RequestHeader, ResultCode};

use crate::error::{fail, why, Failure};
use crate::fmt::{ctime, local_time, redundancy};
use crate::net::{self, NodeList};
use crate::Out;

/// Options of `cluster format`.
pub struct FormatOpts {
    pub copies: Option<(u8, u8)>,
    pub block_size_shift: Option<u8>,
    pub store: String,
    pub force: bool,
    pub strict: bool,
    pub fixed_vnodes: bool,
}

pub async fn format(addr: SocketAddr, o: &FormatOpts) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let list = net::node_list(&c).await?;

    // Every storage node must agree with the vnode strategy asked for.
    for n in &list.nodes {
        let node = net::connect(n.addr).await?;
        let (code, info) = net::cluster_info(&node)
            .await
            .map_err(|e| fail(format!("Failed to get cluster info from {}", n.addr), &e))?;
        if code != ResultCode::SUCCESS {
            return Err(Failure::new(format!("{}: {}", n.addr, code.message())));
        }
        if n.nr_vnodes != 0 {
            let auto = info.flags & cluster_flags::AUTO_VNODES != 0;
            if auto && o.fixed_vnodes {
                return Err(Failure::new(
                    "Can not apply the option of '-V', because the vnode strategy of sheep \
                     is auto in the cluster",
                ));
            }
            if !auto && !o.fixed_vnodes {
                return Err(Failure::new(
                    "Need to specify the option of '-V', because the vnode strategy of sheep \
                     is fixed in the cluster",
                ));
            }
        }
    }

    let (copies, copy_policy) = o.copies.unwrap_or((0, 0));
    if usize::from(copies) > list.nodes.len() && !o.force {
        confirm(&format!(
            "Number of copies ({copies}) is larger than number of nodes ({}).\n\
             Are you sure you want to continue? [yes/no]: ",
            list.nodes.len()
        ))?;
    }

    let mut req = RequestHeader::new(op::READ_VDIS);
    req.data_length = protocol::bitmap::BITMAP_BYTES as u32;
    let r = c
        .call(req, &[])
        .await
        .map_err(|e| fail("Failed to read the VDI list", &e))?;
    let in_use = VdiBitmap::from_bytes(r.data)
        .ok_or_else(|| Failure::new("Failed to read the VDI list: the bitmap has a wrong size"))?;
    if in_use.iter().next().is_some() && !o.force {
        confirm(
            "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! The cluster is not empty.\n\
             (/_)_|_  Are you sure you want to continue? [yes/no]: ",
        )?;
    }

    let mut flags = if o.fixed_vnodes { 0 } else { cluster_flags::AUTO_VNODES };
    if o.strict {
        flags |= cluster_flags::STRICT;
    }
    let mut req = RequestHeader::new(op::MAKE_FS);
    req.set_cluster(&ClusterArgs {
        ctime: sd_time(SystemTime::now()),
        copies,
        copy_policy,
        flags,
        block_size_shift: o.block_size_shift.unwrap_or(0),
        ..ClusterArgs::default()
    });
    let mut store = o.store.clone().into_bytes();
    store.push(0);
    crate::emit(&format!("using backend {} store\n", o.store))?;
    match c.call(req, &store).await {
        Ok(_) => Ok(()),
        Err(e) if e.result() == Some(ResultCode::NO_STORE) => {
            let mut msg = format!("Format failed: {}", why(&e));
            if let Some(list) = store_list(&c).await {
                msg.push_str(&format!("\nAvailable stores: {list}"));
            }
            Err(Failure::new(msg))
        }
        Err(e) => Err(fail("Format failed", &e)),
    }
}

/// GET_STORE_LIST: the names of the stores the server offers.
async fn store_list(c: &Client) -> Option<String> {
    let mut req = RequestHeader::new(op::GET_STORE_LIST);
    req.data_length = 512;
    let r = c.call(req, &[]).await.ok()?;
    Some(protocol::get_cstr(&r.data).trim().to_string())
}

/// Asks on stdout, reads one line from stdin; anything but "yes" stops the command.
fn confirm(question: &str) -> Result<(), Failure> {
    crate::emit(question)?;
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    match read {
        Ok(_) if line.trim_start().to_ascii_lowercase().starts_with("yes") => Ok(()),
        Ok(_) => Err(Failure::new(
            "Not confirmed; nothing was changed (use -f to skip the question)",
        )),
        Err(e) => Err(Failure::new(format!("Failed to read the answer: {e}"))),
    }
}

pub async fn info(addr: SocketAddr, raw: bool, verbose: bool) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let NodeList { nodes, epoch } = net::node_list(&c).await?;
    let (r, nodes_nr) = net::stat_cluster(&c, epoch, nodes.len()).await?;
    let code = r.header.result_code();
    let records = EpochRecord::decode_all(&r.data, nodes_nr);
    let first = records.first();

    let mut out = Out::new();
    if !raw {
        out.push_str("Cluster status: ");
    }
    if code == ResultCode::SUCCESS {
        let disabled = first.is_some_and(|f| f.disable_recovery);
        out.line(format!(
            "running, auto-recovery {}",
            if disabled { "disabled" } else { "enabled" }
        ));
        if let Some(f) = first {
            let zones = nodes
                .iter()
                .filter(|n| !n.is_gateway())
                .map(|n| n.zone)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if zones < usize::from(f.nr_copies) {
                out.line(if f.flags & cluster_flags::STRICT != 0 {
                    format!(
                        "Fewer zones ({zones}) than copies ({}): writes are halted (strict mode)",
                        f.nr_copies
                    )
                } else {
                    format!(
                        "Fewer zones ({zones}) than copies ({}): running degraded, {zones} copies per object",
                        f.nr_copies
                    )
                });
            }
        }
    } else {
        out.line(code.message());
    }

    if verbose {
        let flags = first.map_or(0, |f| f.flags);
        if !raw {
            out.push_str("Cluster store: ");
        }
        match (code, first) {
            (ResultCode::SUCCESS, Some(f)) => {
                out.line(format!(
                    "{} with {} redundancy policy",
                    f.drv_name,
                    redundancy(f.nr_copies, f.copy_policy)
                ));
                if !raw {
                    out.push_str("Cluster vnodes strategy: ");
                }
                out.line(if flags & cluster_flags::AUTO_VNODES != 0 {
                    "auto"
                } else {
                    "fixed"
                });
            }
            _ => out.line(code.message()),
        }
        if !raw {
            out.push_str("Cluster vnode mode: ");
        }
        out.line(if flags & cluster_flags::DISKMODE != 0 {
            "disk"
        } else {
            "node"
        });
    } else {
        out.line("");
    }

    if !raw && !records.is_empty() {
        let created = records[0].ctime >> 32;
        out.line(format!("Cluster created at {}\n", ctime(created)));
        out.line("Epoch Time           Version [Host:Port:V-Nodes,,,]");
    }
    for rec in &records {
        let time = if raw {
            rec.time.to_string()
        } else {
            local_time(rec.time, "%Y-%m-%d %H:%M:%S")
        };
        let members: Vec<String> = rec
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.addr, n.nr_vnodes))
            .collect();
        if raw {
            out.line(format!("{time} {} [{}]", rec.epoch, members.join(", ")));
        } else {
            out.line(format!("{time} {:6} [{}]", rec.epoch, members.join(", ")));
        }
    }
    out.print()
}

pub async fn shutdown(addr: SocketAddr) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    c.call(RequestHeader::new(op::SHUTDOWN), &[])
        .await
        .map_err(|e| fail("Failed to shut the cluster down", &e))?;
    Ok(())
}
