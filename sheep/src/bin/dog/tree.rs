//! `dog vdi tree`: the descent of VDIs (PROTOCOL.md 5.11: the `vdi list` reads, headers
//! only), drawn as text trees.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use protocol::inode::InodeHeader;

use crate::error::Failure;
use crate::fmt::local_time;
use crate::vdi::{deleted_parents, for_each_vdi};
use crate::{net, Out};

/// One VDI in the tree.
struct Vdi {
    name: String,
    parent: u32,
    label: String,
}

fn label(h: &InodeHeader) -> String {
    if !h.is_snapshot() {
        return "(you are here)".to_string();
    }
    let time = local_time(h.snap_ctime >> 32, "%Y-%m-%d %H:%M");
    if h.tag.is_empty() {
        format!("[{} {time}]", h.snap_id)
    } else {
        format!("[{} {time} {}]", h.snap_id, h.tag)
    }
}

/// The lines of the tree under `vid`, drawn from column 0.
fn lines(vid: u32, vdis: &BTreeMap<u32, Vdi>, kids: &BTreeMap<u32, Vec<u32>>) -> Vec<String> {
    let v = &vdis[&vid];
    let parent_name = vdis.get(&v.parent).map(|p| p.name.as_str());
    let me = if parent_name == Some(v.name.as_str()) {
        v.label.clone()
    } else {
        format!("{} {}", v.name, v.label)
    };
    let children = kids.get(&vid).map_or(&[][..], Vec::as_slice);
    if children.is_empty() {
        return vec![me];
    }
    let pad = " ".repeat(me.chars().count());
    let mut out = Vec::new();
    for (i, &child) in children.iter().enumerate() {
        let (first, rest) = match (children.len(), i) {
            (1, _) => ("---", "   "),
            (_, 0) => ("-+-", " | "),
            (n, i) if i == n - 1 => (" `-", "   "),
            _ => (" |-", " | "),
        };
        for (j, line) in lines(child, vdis, kids).into_iter().enumerate() {
            let head = match (i, j) {
                (0, 0) => format!("{me}{first}"),
                (_, 0) => format!("{pad}{first}"),
                _ => format!("{pad}{rest}"),
            };
            out.push(head + &line);
        }
    }
    out
}

pub async fn tree(addr: SocketAddr, name: Option<&str>) -> Result<(), Failure> {
    let c = net::connect(addr).await?;
    let mut vdis = BTreeMap::new();
    for_each_vdi(&c, false, |h, _| {
        let v = Vdi {
            name: h.name.clone(),
            parent: h.parent_vdi_id,
            label: label(h),
        };
        vdis.insert(h.vdi_id, v);
    })
    .await?;
    // A deleted VDI (a snapshot deleted after `cluster snapshot save` cut it, say) is
    // skipped: its children hang from its nearest live ancestor.
    let dead = deleted_parents(&c).await?;
    for v in vdis.values_mut() {
        let mut hops = 0;
        while let Some(&up) = dead.get(&v.parent) {
            hops += 1;
            if hops > dead.len() {
                break;
            }
            v.parent = up;
        }
    }
    let mut kids: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (&vid, v) in &vdis {
        if vdis.contains_key(&v.parent) {
            kids.entry(v.parent).or_default().push(vid);
        } else {
            roots.push(vid);
        }
    }
    roots.sort_by(|a, b| vdis[a].name.cmp(&vdis[b].name).then(a.cmp(b)));
    // With a name, the trees that hold a VDI of that name.
    let holds = |root: u32| {
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            if name.is_none_or(|n| vdis[&v].name == n) {
                return true;
            }
            stack.extend(kids.get(&v).into_iter().flatten());
        }
        false
    };
    let mut out = Out::new();
    for root in roots.into_iter().filter(|&r| holds(r)) {
        for line in lines(root, &vdis, &kids) {
            out.line(line);
        }
    }
    out.print()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vdi(name: &str, parent: u32, label: &str) -> Vdi {
        Vdi {
            name: name.into(),
            parent,
            label: label.into(),
        }
    }

    #[test]
    fn branches_are_drawn_under_their_snapshot() {
        let vdis: BTreeMap<u32, Vdi> = [
            (1, vdi("a", 0, "[1]")),
            (2, vdi("a", 1, "[2]")),
            (3, vdi("a", 2, "(you are here)")),
            (4, vdi("c", 1, "(you are here)")),
            (5, vdi("d", 1, "[1]")),
            (6, vdi("d", 5, "(you are here)")),
        ]
        .into_iter()
        .collect();
        let kids: BTreeMap<u32, Vec<u32>> = [(1, vec![2, 4, 5]), (2, vec![3]), (5, vec![6])].into_iter().collect();
        assert_eq!(
            lines(1, &vdis, &kids),
            [
                "a [1]-+-[2]---(you are here)",
                "      |-c (you are here)",
                "      `-d [1]---(you are here)",
            ]
        );
    }
}
