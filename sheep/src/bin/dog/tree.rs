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

/// One VDI on the path from the root to the VDI being drawn.
struct Step<'a> {
    /// Its text: its label, after its name when that differs from its parent's.
    me: String,
    children: &'a [u32],
    /// The child being drawn.
    at: usize,
    /// Whether a line has been drawn under it yet, and under the child being drawn.
    drawn: bool,
    child_drawn: bool,
}

impl Step<'_> {
    /// The part of the next line this VDI draws: itself or blank, then the branch to the
    /// child being drawn.
    fn push_to(&self, line: &mut String) {
        let (first, rest) = match (self.children.len(), self.at) {
            (1, _) => ("---", "   "),
            (_, 0) => ("-+-", " | "),
            (n, i) if i == n - 1 => (" `-", "   "),
            _ => (" |-", " | "),
        };
        if self.drawn {
            line.extend(std::iter::repeat_n(' ', self.me.chars().count()));
        } else {
            line.push_str(&self.me);
        }
        line.push_str(if self.child_drawn { rest } else { first });
    }
}

/// The lines of the tree under `root`, drawn from column 0. A walk with its own stack, not
/// a recursion: a chain of thousands of snapshots is a deep tree.
fn lines(root: u32, vdis: &BTreeMap<u32, Vdi>, kids: &BTreeMap<u32, Vec<u32>>) -> Vec<String> {
    let text = |vid: u32| {
        let v = &vdis[&vid];
        if vdis.get(&v.parent).map(|p| p.name.as_str()) == Some(v.name.as_str()) {
            v.label.clone()
        } else {
            format!("{} {}", v.name, v.label)
        }
    };
    let children = |vid: u32| kids.get(&vid).map_or(&[][..], Vec::as_slice);
    let mut out = Vec::new();
    let mut path: Vec<Step> = Vec::new();
    let mut next = Some(root);
    loop {
        if let Some(vid) = next.take() {
            let step = Step {
                me: text(vid),
                children: children(vid),
                at: 0,
                drawn: false,
                child_drawn: false,
            };
            if !step.children.is_empty() {
                next = Some(step.children[0]);
                path.push(step);
                continue;
            }
            // A leaf ends a line: every VDI above it draws its part.
            let mut line = String::new();
            for s in &path {
                s.push_to(&mut line);
            }
            line.push_str(&step.me);
            out.push(line);
            for s in &mut path {
                s.drawn = true;
                s.child_drawn = true;
            }
        }
        // The next child of the nearest VDI that has one left.
        loop {
            let Some(top) = path.last_mut() else {
                return out;
            };
            top.at += 1;
            if top.at < top.children.len() {
                top.child_drawn = false;
                next = Some(top.children[top.at]);
                break;
            }
            path.pop();
        }
    }
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

    #[test]
    fn a_chain_of_many_snapshots_is_one_line() {
        let n = 20_000u32;
        let vdis: BTreeMap<u32, Vdi> = (1..=n)
            .map(|v| (v, vdi("a", v - 1, if v == n { "(you are here)" } else { "[s]" })))
            .collect();
        let kids: BTreeMap<u32, Vec<u32>> = (1..n).map(|v| (v, vec![v + 1])).collect();
        let got = lines(1, &vdis, &kids);
        assert_eq!(got.len(), 1);
        let want = format!("a {}(you are here)", "[s]---".repeat(n as usize - 1));
        assert!(got[0] == want, "a chain of {n} draws as one line");
    }
}
