//! Cluster state as every node sees it: membership, epochs, the cluster's format, and the VDI
//! bitmaps. It changes only by applying [`Event`]s that the cluster driver delivers in one
//! total order, so every node that applies the same events holds the same state. Applying is
//! pure; what a node must do locally as a consequence comes back as [`Effect`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use protocol::bitmap::VdiBitmap;
use protocol::cluster::{status, ClusterInfo, EpochRecord};
use protocol::inode::{ATTR_OBJ_SIZE, INODE_SIZE, MAX_BLOCK_SIZE_SHIFT};
use protocol::node::{sort_nodes, Node};
use protocol::oid::ObjectKind;
use protocol::opcode::cluster_flags;
use protocol::placement::{auto_vnodes, Ring};
use protocol::Oid;

/// Size of objects whose size is not per-VDI.
const FIXED_OBJECT_SIZE: u64 = 1 << 22;

/// What MAKE_FS fixed for the cluster's lifetime.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Format {
    pub ctime: u64,
    pub copies: u8,
    pub copy_policy: u8,
    pub flags: u16,
    pub block_size_shift: u8,
    pub store: String,
}

/// A totally ordered cluster event. `time` is set once by the node that broadcasts it, so
/// every node records the same epoch times.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// `incarnation` tells apart two lives of one address (the ZooKeeper session id).
    /// `fixed_vnodes`: the node's count was set by hand (`sheep -V`), so capacity weighting
    /// leaves it alone.
    Join {
        node: Node,
        time: u64,
        #[serde(default)]
        incarnation: u64,
        #[serde(default)]
        fixed_vnodes: bool,
    },
    /// With an incarnation, only that life of the node leaves (a late notice about a previous
    /// life is ignored).
    Leave {
        addr: SocketAddr,
        time: u64,
        #[serde(default)]
        incarnation: Option<u64>,
    },
    Format {
        format: Format,
        time: u64,
    },
    /// A new VDI (create, clone or snapshot) now exists. `snapshot_of` names the working vid
    /// that this snapshot froze.
    VdiAdd {
        vid: u32,
        copies: u8,
        block_size_shift: u8,
        snapshot_of: Option<u32>,
    },
    /// Snapshots of several VDIs at one point of the total order (`dog cluster snapshot
    /// save`): each as a `VdiAdd` with `snapshot_of` set, all applied together.
    VdiSnapshots {
        vdis: Vec<NewVid>,
    },
    VdiDel {
        vid: u32,
    },
    /// `dog node vnodes set`: member `addr` gets `vnodes` on the ring (`None`: its capacity's
    /// share again, or its `-V` count). A new epoch when the ring changes. Lasts until the
    /// node joins again, when its own configuration applies.
    SetVnodes {
        addr: SocketAddr,
        vnodes: Option<u16>,
        time: u64,
    },
    /// `client` (a connection of gateway `owner`) opens working VDI `vid` for writing; a
    /// no-op when someone holds it already.
    LockVdi {
        vid: u32,
        owner: SocketAddr,
        client: u64,
    },
    /// The holder's lock on `vid` ends (a no-op unless it is the holder).
    ReleaseVdi {
        vid: u32,
        owner: SocketAddr,
        client: u64,
    },
    Shutdown,
}

/// One new working vid of a [`Event::VdiSnapshots`]: it follows `snapshot_of`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewVid {
    pub vid: u32,
    pub copies: u8,
    pub block_size_shift: u8,
    pub snapshot_of: u32,
}

/// Who holds a VDI open for writing: a client connection of one gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VdiLock {
    pub owner: SocketAddr,
    pub client: u64,
}

/// Per-vid facts every node needs to route object I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VdiState {
    pub copies: u8,
    pub block_size_shift: u8,
    pub snapshot: bool,
    pub deleted: bool,
}

/// One logged epoch: its members and when it started.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Epoch {
    pub epoch: u32,
    pub time: u64,
    pub nodes: Vec<Node>,
}

/// A local consequence of an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// The cluster was (re)formatted: drop every stored object.
    WipeStore,
    /// A new epoch began.
    NewEpoch(u32),
    Shutdown,
}

/// The state is also a checkpoint: drivers store it (JSON) so that a node starting later
/// begins there instead of replaying every event before it ([`ClusterState::jump_to`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClusterState {
    /// Position of the last event applied ([`ClusterState::apply_at`]).
    #[serde(default)]
    pub pos: u64,
    /// Position of the `Format` event that began this cluster's data (0: none seen).
    #[serde(default)]
    pub formatted_at: u64,
    /// Current members, sorted as GET_NODE_LIST returns them, with vnodes as joined.
    members: Vec<Node>,
    /// The life (session) of each member, as its last join said.
    incarnations: BTreeMap<SocketAddr, u64>,
    pub format: Option<Format>,
    pub epochs: Vec<Epoch>,
    #[serde(with = "vid_list")]
    pub in_use: VdiBitmap,
    #[serde(with = "vid_list")]
    pub deleted: VdiBitmap,
    pub vdis: BTreeMap<u32, VdiState>,
    /// Working VDIs open for writing, by vid. A snapshot moves the lock to the new working
    /// vid; a member that leaves or joins again loses its locks (its connections are gone).
    pub locks: BTreeMap<u32, VdiLock>,
    /// How many times each VDI's lock was taken: a gateway's object cache keeps, with its
    /// dirty data, the count it was written under, and after a crash pushes that data only if
    /// nobody took the VDI since.
    pub lock_gens: BTreeMap<u32, u64>,
    pub shutting_down: bool,
    /// Vnode counts set by SET_VNODES, until the member joins again.
    overrides: BTreeMap<SocketAddr, u16>,
    /// Members that joined with `-V`: their joined count is fixed.
    pinned: BTreeSet<SocketAddr>,
    /// Derived from the members; rebuilt after loading a checkpoint.
    #[serde(skip, default = "empty_ring")]
    ring: Arc<Ring>,
}

fn empty_ring() -> Arc<Ring> {
    Arc::new(Ring::new(Vec::new()))
}

/// A bitmap in a checkpoint: the list of its set vids (2 MiB of mostly zeros otherwise).
mod vid_list {
    use protocol::bitmap::VdiBitmap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(b: &VdiBitmap, s: S) -> Result<S::Ok, S::Error> {
        b.iter().collect::<Vec<u32>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VdiBitmap, D::Error> {
        let mut b = VdiBitmap::default();
        for vid in Vec::<u32>::deserialize(d)? {
            b.set(vid);
        }
        Ok(b)
    }
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            pos: 0,
            formatted_at: 0,
            members: Vec::new(),
            incarnations: BTreeMap::new(),
            format: None,
            epochs: Vec::new(),
            in_use: VdiBitmap::default(),
            deleted: VdiBitmap::default(),
            vdis: BTreeMap::new(),
            locks: BTreeMap::new(),
            lock_gens: BTreeMap::new(),
            shutting_down: false,
            overrides: BTreeMap::new(),
            pinned: BTreeSet::new(),
            ring: empty_ring(),
        }
    }
}

impl ClusterState {
    /// The current epoch: 0 before format.
    pub fn epoch(&self) -> u32 {
        self.epochs.last().map_or(0, |e| e.epoch)
    }

    /// Members as clients see them (vnodes weighted when AUTO_VNODES is on).
    pub fn nodes(&self) -> &[Node] {
        self.ring.nodes()
    }

    /// Members that store objects (gateway-only nodes left out).
    pub fn storage_nodes(&self) -> Vec<Node> {
        self.nodes().iter().filter(|n| !n.is_gateway()).cloned().collect()
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring.clone()
    }

    /// Each member and its life (incarnation).
    pub fn lives(&self) -> BTreeMap<SocketAddr, u64> {
        self.members
            .iter()
            .map(|n| (n.addr, self.incarnations.get(&n.addr).copied().unwrap_or(0)))
            .collect()
    }

    pub fn is_member(&self, addr: SocketAddr) -> bool {
        self.members.iter().any(|n| n.addr == addr)
    }

    /// Copies for objects of `vid`: the VDI's own count, else the cluster default.
    pub fn copies_for(&self, vid: u32) -> u8 {
        self.vdis
            .get(&vid)
            .map(|v| v.copies)
            .or(self.format.as_ref().map(|f| f.copies))
            .unwrap_or(1)
    }

    /// The gateway whose client holds the write lock of `oid`'s VDI, if any.
    pub fn lock_owner(&self, oid: Oid) -> Option<SocketAddr> {
        self.locks.get(&oid.vid().get()).map(|l| l.owner)
    }

    /// The size of `oid`, or `None` when its VDI is unknown here.
    pub fn object_size(&self, oid: Oid) -> Option<u64> {
        match oid.kind() {
            ObjectKind::Inode => Some(INODE_SIZE as u64),
            ObjectKind::Attr => Some(ATTR_OBJ_SIZE as u64),
            // A shift beyond the range (only a damaged event log could hold one) is no size.
            ObjectKind::Data => self
                .vdis
                .get(&oid.vid().get())
                .filter(|v| v.block_size_shift <= MAX_BLOCK_SIZE_SHIFT)
                .map(|v| 1u64 << v.block_size_shift),
            ObjectKind::VmState | ObjectKind::Btree | ObjectKind::Ledger => Some(FIXED_OBJECT_SIZE),
        }
    }

    fn rebuild_ring(&mut self) {
        let mut nodes = self.members.clone();
        for n in nodes.iter_mut() {
            if let Some(&v) = self.overrides.get(&n.addr) {
                n.nr_vnodes = v;
            }
        }
        if self
            .format
            .as_ref()
            .is_none_or(|f| f.flags & cluster_flags::AUTO_VNODES != 0)
        {
            auto_vnodes(&mut nodes, |n| {
                self.overrides.contains_key(&n.addr) || self.pinned.contains(&n.addr)
            });
        }
        self.ring = Arc::new(Ring::new(nodes));
    }

    /// A new VDI; with `snapshot_of`, the working VDI it follows becomes a snapshot.
    fn add_vdi(&mut self, vid: u32, copies: u8, block_size_shift: u8, snapshot_of: Option<u32>) {
        self.in_use.set(vid);
        self.vdis.insert(
            vid,
            VdiState {
                copies,
                block_size_shift,
                snapshot: false,
                deleted: false,
            },
        );
        if let Some(cur) = snapshot_of.and_then(|c| self.vdis.get_mut(&c)) {
            cur.snapshot = true;
        }
        // The writer keeps the VDI, which now lives on under the new vid.
        if let Some(l) = snapshot_of.and_then(|c| self.locks.remove(&c)) {
            self.locks.insert(vid, l);
            *self.lock_gens.entry(vid).or_default() += 1;
        }
    }

    fn new_epoch(&mut self, time: u64, effects: &mut Vec<Effect>) {
        if self.format.is_none() {
            return;
        }
        let epoch = self.epoch() + 1;
        self.epochs.push(Epoch {
            epoch,
            time,
            nodes: self.nodes().to_vec(),
        });
        effects.push(Effect::NewEpoch(epoch));
    }

    /// Reads a checkpoint written from [`ClusterState`]'s JSON.
    pub fn from_checkpoint(bytes: &[u8]) -> serde_json::Result<ClusterState> {
        let mut st: ClusterState = serde_json::from_slice(bytes)?;
        st.rebuild_ring();
        Ok(st)
    }

    /// Applies the event at position `pos` of the total order.
    pub fn apply_at(&mut self, pos: u64, ev: &Event) -> Vec<Effect> {
        let fx = self.apply(ev);
        self.pos = pos;
        if fx.contains(&Effect::WipeStore) {
            self.formatted_at = pos;
        }
        fx
    }

    /// Replaces this state by `image`, a checkpoint taken at a later position, and returns
    /// what applying the events in between would have asked of this node: a wipe when the
    /// cluster was formatted again meanwhile, every epoch it has not seen, a shutdown.
    /// A checkpoint no newer than this state changes nothing.
    pub fn jump_to(&mut self, image: ClusterState) -> Vec<Effect> {
        let mut fx = Vec::new();
        if image.pos <= self.pos {
            return fx;
        }
        let reformatted = image.formatted_at > self.formatted_at;
        if reformatted {
            fx.push(Effect::WipeStore);
        }
        let seen = if reformatted { 0 } else { self.epoch() };
        fx.extend(
            image
                .epochs
                .iter()
                .filter(|e| e.epoch > seen)
                .map(|e| Effect::NewEpoch(e.epoch)),
        );
        if image.shutting_down && !self.shutting_down {
            fx.push(Effect::Shutdown);
        }
        *self = image;
        fx
    }

    /// Applies one event and returns what this node must do about it.
    pub fn apply(&mut self, ev: &Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match ev {
            Event::Join {
                node,
                time,
                incarnation,
                fixed_vnodes,
            } => {
                self.incarnations.insert(node.addr, *incarnation);
                self.locks.retain(|_, l| l.owner != node.addr);
                // Joining again, a node's own configuration replaces a count set by hand.
                let pinned = *fixed_vnodes && !node.is_gateway();
                let unchanged = self.members.contains(node)
                    && self.pinned.contains(&node.addr) == pinned
                    && !self.overrides.contains_key(&node.addr);
                if unchanged {
                    return fx;
                }
                self.overrides.remove(&node.addr);
                if pinned {
                    self.pinned.insert(node.addr);
                } else {
                    self.pinned.remove(&node.addr);
                }
                self.members.retain(|n| n.addr != node.addr);
                self.members.push(node.clone());
                sort_nodes(&mut self.members);
                self.shutting_down = false;
                self.rebuild_ring();
                self.new_epoch(*time, &mut fx);
            }
            Event::Leave {
                addr,
                time,
                incarnation,
            } => {
                let stale = incarnation.is_some_and(|i| self.incarnations.get(addr) != Some(&i));
                if !self.is_member(*addr) || stale {
                    return fx;
                }
                self.members.retain(|n| n.addr != *addr);
                self.incarnations.remove(addr);
                self.overrides.remove(addr);
                self.pinned.remove(addr);
                self.locks.retain(|_, l| l.owner != *addr);
                self.rebuild_ring();
                self.new_epoch(*time, &mut fx);
            }
            Event::Format { format, time } => {
                self.format = Some(format.clone());
                self.in_use = VdiBitmap::default();
                self.deleted = VdiBitmap::default();
                self.vdis.clear();
                self.locks.clear();
                self.lock_gens.clear();
                self.epochs.clear();
                self.rebuild_ring();
                self.epochs.push(Epoch {
                    epoch: 1,
                    time: *time,
                    nodes: self.nodes().to_vec(),
                });
                fx.push(Effect::WipeStore);
                fx.push(Effect::NewEpoch(1));
            }
            Event::VdiAdd {
                vid,
                copies,
                block_size_shift,
                snapshot_of,
            } => self.add_vdi(*vid, *copies, *block_size_shift, *snapshot_of),
            Event::VdiSnapshots { vdis } => {
                for v in vdis {
                    self.add_vdi(v.vid, v.copies, v.block_size_shift, Some(v.snapshot_of));
                }
            }
            Event::VdiDel { vid } => {
                self.locks.remove(vid);
                self.deleted.set(*vid);
                if let Some(v) = self.vdis.get_mut(vid) {
                    v.deleted = true;
                }
            }
            Event::SetVnodes { addr, vnodes, time } => {
                let Some(m) = self.members.iter().find(|n| n.addr == *addr) else {
                    return fx;
                };
                if m.is_gateway() {
                    return fx;
                }
                let before = self.ring.clone();
                match vnodes {
                    Some(v) => self.overrides.insert(*addr, *v),
                    None => self.overrides.remove(addr),
                };
                self.rebuild_ring();
                if before.nodes() != self.ring.nodes() {
                    self.new_epoch(*time, &mut fx);
                }
            }
            Event::LockVdi { vid, owner, client } => {
                let l = VdiLock {
                    owner: *owner,
                    client: *client,
                };
                if !self.locks.contains_key(vid) {
                    self.locks.insert(*vid, l);
                    *self.lock_gens.entry(*vid).or_default() += 1;
                }
            }
            Event::ReleaseVdi { vid, owner, client } => {
                if self.locks.get(vid)
                    == Some(&VdiLock {
                        owner: *owner,
                        client: *client,
                    })
                {
                    self.locks.remove(vid);
                }
            }
            Event::Shutdown => {
                // Nodes leave without a new epoch: the cluster resumes at this epoch.
                self.shutting_down = true;
                self.locks.clear();
                self.members.clear();
                self.incarnations.clear();
                self.overrides.clear();
                self.pinned.clear();
                self.rebuild_ring();
                fx.push(Effect::Shutdown);
            }
        }
        fx
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        let (st, f) = match (&self.format, self.shutting_down) {
            (_, true) => (status::SHUTDOWN, self.format.clone()),
            (Some(f), false) => (status::OK, Some(f.clone())),
            (None, false) => (status::WAIT, None),
        };
        let f = f.as_ref();
        ClusterInfo {
            disable_recovery: false,
            epoch: self.epoch(),
            ctime: f.map_or(0, |f| f.ctime),
            flags: f.map_or(cluster_flags::AUTO_VNODES, |f| f.flags),
            nr_copies: f.map_or(0, |f| f.copies),
            copy_policy: f.map_or(0, |f| f.copy_policy),
            status: st,
            block_size_shift: f.map_or(0, |f| f.block_size_shift),
            default_store: f.map_or_else(|| "plain".to_string(), |f| f.store.clone()),
            nodes: self.nodes().to_vec(),
        }
    }

    /// Epoch-log records, newest first, in the STAT_CLUSTER shape.
    pub fn epoch_records(&self) -> Vec<EpochRecord> {
        let f = self.format.clone();
        self.epochs
            .iter()
            .rev()
            .map(|e| EpochRecord {
                ctime: f.as_ref().map_or(0, |f| f.ctime),
                time: e.time,
                epoch: e.epoch,
                disable_recovery: false,
                nr_copies: f.as_ref().map_or(0, |f| f.copies),
                copy_policy: f.as_ref().map_or(0, |f| f.copy_policy),
                flags: f.as_ref().map_or(0, |f| f.flags),
                drv_name: f.as_ref().map_or_else(String::new, |f| f.store.clone()),
                nodes: e.nodes.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_per_vdi_and_locks_follow_snapshots_and_members() {
        let mut s = ClusterState::default();
        s.apply(&format());
        let (a, b) = (node(1).addr, node(2).addr);
        for n in [node(1), node(2)] {
            s.apply(&Event::Join {
                node: n,
                time: 1,
                incarnation: 0,
                fixed_vnodes: false,
            });
        }
        s.apply(&Event::LockVdi {
            vid: 7,
            owner: a,
            client: 1,
        });
        s.apply(&Event::LockVdi {
            vid: 7,
            owner: b,
            client: 9,
        });
        assert_eq!(s.locks[&7], VdiLock { owner: a, client: 1 }, "the first lock wins");
        assert_eq!(s.lock_gens[&7], 1, "a refused lock is not counted");
        s.apply(&Event::ReleaseVdi {
            vid: 7,
            owner: b,
            client: 9,
        });
        assert!(s.locks.contains_key(&7), "only the holder releases");
        s.apply(&Event::VdiAdd {
            vid: 8,
            copies: 3,
            block_size_shift: 22,
            snapshot_of: Some(7),
        });
        assert_eq!(
            (s.locks.get(&7), s.locks.get(&8)),
            (None, Some(&VdiLock { owner: a, client: 1 }))
        );
        s.apply(&Event::ReleaseVdi {
            vid: 8,
            owner: a,
            client: 1,
        });
        assert!(s.locks.is_empty());
        s.apply(&Event::LockVdi {
            vid: 8,
            owner: b,
            client: 2,
        });
        s.apply(&Event::Leave {
            addr: b,
            time: 2,
            incarnation: None,
        });
        assert!(s.locks.is_empty(), "a member that leaves drops its locks");
        s.apply(&Event::LockVdi {
            vid: 8,
            owner: a,
            client: 3,
        });
        s.apply(&Event::VdiDel { vid: 8 });
        assert!(s.locks.is_empty(), "a deleted VDI is unlocked");
    }

    fn node(port: u16) -> Node {
        Node {
            addr: format!("127.0.0.1:{port}").parse().expect("a"),
            nr_vnodes: 128,
            zone: port.into(),
            space: 100,
        }
    }

    fn join(n: Node, fixed_vnodes: bool) -> Event {
        Event::Join {
            node: n,
            time: 1,
            incarnation: 0,
            fixed_vnodes,
        }
    }

    fn vnodes(s: &ClusterState) -> Vec<u16> {
        s.nodes().iter().map(|n| n.nr_vnodes).collect()
    }

    #[test]
    fn vnodes_follow_capacity_unless_fixed() {
        let mut s = ClusterState::default();
        s.apply(&format());
        let (a, mut b, mut g) = (node(1), node(2), node(3));
        b.space = 300;
        g.nr_vnodes = 0;
        let mut pinned = node(4);
        pinned.nr_vnodes = 50;
        pinned.space = 1_000_000;
        for (n, fixed) in [
            (a.clone(), false),
            (b.clone(), false),
            (g.clone(), false),
            (pinned.clone(), true),
        ] {
            s.apply(&join(n, fixed));
        }
        assert_eq!(vnodes(&s), [64, 192, 0, 50], "capacity weights all but the -V node");
        let set = |addr, vnodes| Event::SetVnodes { addr, vnodes, time: 9 };
        let e = s.epoch();
        assert_eq!(s.apply(&set(a.addr, Some(10))), [Effect::NewEpoch(e + 1)]);
        assert_eq!(vnodes(&s), [10, 128, 0, 50], "b alone is weighted now: the average");
        assert!(s.apply(&set(a.addr, Some(10))).is_empty(), "no change, no epoch");
        assert!(
            s.apply(&set(g.addr, Some(10))).is_empty(),
            "a gateway keeps zero vnodes"
        );
        assert!(
            s.apply(&set(pinned.addr, None)).is_empty(),
            "auto returns a -V node to its -V count"
        );
        s.apply(&set(pinned.addr, Some(70)));
        s.apply(&set(pinned.addr, None));
        assert_eq!(vnodes(&s), [10, 128, 0, 50]);
        assert_eq!(s.apply(&set(a.addr, None)), [Effect::NewEpoch(e + 4)]);
        assert_eq!(vnodes(&s), [64, 192, 0, 50]);
        // A set count lasts until the node joins again with its own configuration.
        s.apply(&set(b.addr, Some(5)));
        s.apply(&join(b.clone(), false));
        assert_eq!(vnodes(&s), [64, 192, 0, 50]);
        b.nr_vnodes = 33;
        s.apply(&join(b, true));
        assert_eq!(vnodes(&s)[1], 33, "joined again with -V 33");
        // Set by hand to what the node then restarts with as -V: still its -V count after auto.
        s.apply(&set(a.addr, Some(128)));
        let mut a_pinned = a.clone();
        a_pinned.nr_vnodes = 128;
        s.apply(&join(a_pinned, true));
        s.apply(&set(a.addr, None));
        assert_eq!(vnodes(&s)[0], 128, "auto returns to the -V count");
        s.apply(&Event::Leave {
            addr: pinned.addr,
            time: 10,
            incarnation: None,
        });
        s.apply(&set(pinned.addr, Some(9)));
        assert!(
            !s.nodes().iter().any(|n| n.addr == pinned.addr),
            "no set for a non-member"
        );
    }

    fn format() -> Event {
        let format = Format {
            ctime: 1,
            copies: 3,
            copy_policy: 0,
            flags: 4,
            block_size_shift: 22,
            store: "plain".into(),
        };
        Event::Format { format, time: 10 }
    }

    #[test]
    fn epochs_start_at_format_and_follow_membership() {
        let mut s = ClusterState::default();
        s.apply(&Event::Join {
            node: node(1),
            time: 1,
            incarnation: 0,
            fixed_vnodes: false,
        });
        s.apply(&Event::Join {
            node: node(2),
            time: 2,
            incarnation: 0,
            fixed_vnodes: false,
        });
        assert_eq!(s.epoch(), 0);
        assert_eq!(s.cluster_info().status, status::WAIT);
        assert_eq!(s.apply(&format()), vec![Effect::WipeStore, Effect::NewEpoch(1)]);
        assert_eq!(s.epochs[0].nodes.len(), 2);
        assert_eq!(
            s.apply(&Event::Join {
                node: node(3),
                time: 11,
                incarnation: 0,
                fixed_vnodes: false,
            }),
            vec![Effect::NewEpoch(2)]
        );
        // A repeated identical join changes nothing; a leave of a stranger neither.
        assert!(s
            .apply(&Event::Join {
                node: node(3),
                time: 12,
                incarnation: 0,
                fixed_vnodes: false,
            })
            .is_empty());
        assert!(s
            .apply(&Event::Leave {
                addr: node(9).addr,
                time: 12,
                incarnation: None
            })
            .is_empty());
        assert_eq!(
            s.apply(&Event::Leave {
                addr: node(1).addr,
                time: 13,
                incarnation: None
            }),
            vec![Effect::NewEpoch(3)]
        );
        let recs = s.epoch_records();
        assert_eq!(recs.iter().map(|r| r.epoch).collect::<Vec<_>>(), [3, 2, 1]);
        assert_eq!(recs[0].nodes.len(), 2);
        assert_eq!(s.cluster_info().status, status::OK);
    }

    #[test]
    fn a_late_leave_of_a_previous_life_is_ignored() {
        let mut s = ClusterState::default();
        s.apply(&format());
        s.apply(&Event::Join {
            node: node(1),
            time: 1,
            incarnation: 7,
            fixed_vnodes: false,
        });
        let e = s.epoch();
        // The node restarted (new session 8) before its old session's departure was seen.
        assert!(s
            .apply(&Event::Join {
                node: node(1),
                time: 2,
                incarnation: 8,
                fixed_vnodes: false,
            })
            .is_empty());
        assert!(s
            .apply(&Event::Leave {
                addr: node(1).addr,
                time: 3,
                incarnation: Some(7)
            })
            .is_empty());
        assert!(s.is_member(node(1).addr));
        assert_eq!(s.epoch(), e);
        let left = s.apply(&Event::Leave {
            addr: node(1).addr,
            time: 4,
            incarnation: Some(8),
        });
        assert_eq!(left, vec![Effect::NewEpoch(e + 1)]);
    }

    #[test]
    fn vdis_and_snapshots() {
        let mut s = ClusterState::default();
        s.apply(&format());
        s.apply(&Event::VdiAdd {
            vid: 5,
            copies: 2,
            block_size_shift: 22,
            snapshot_of: None,
        });
        s.apply(&Event::VdiAdd {
            vid: 6,
            copies: 2,
            block_size_shift: 22,
            snapshot_of: Some(5),
        });
        assert!(s.vdis[&5].snapshot && !s.vdis[&6].snapshot);
        assert!(s.in_use.get(5) && s.in_use.get(6));
        s.apply(&Event::VdiDel { vid: 6 });
        assert!(s.deleted.get(6) && s.vdis[&6].deleted);
        assert_eq!(s.copies_for(5), 2);
        assert_eq!(s.copies_for(99), 3);
        // Several snapshots in one event: every old working VDI frozen, every new one live,
        // the writer's lock moved along.
        s.apply(&Event::VdiAdd {
            vid: 9,
            copies: 1,
            block_size_shift: 20,
            snapshot_of: None,
        });
        s.apply(&Event::LockVdi {
            vid: 9,
            owner: node(1).addr,
            client: 4,
        });
        let follow = |vid, snapshot_of| NewVid {
            vid,
            copies: 1,
            block_size_shift: 20,
            snapshot_of,
        };
        s.apply(&Event::VdiSnapshots {
            vdis: vec![follow(10, 6), follow(11, 9)],
        });
        assert!(s.vdis[&6].snapshot && s.vdis[&9].snapshot);
        assert!(!s.vdis[&10].snapshot && !s.vdis[&11].snapshot && s.in_use.get(10) && s.in_use.get(11));
        assert_eq!(s.vdis[&11].block_size_shift, 20);
        assert!(s.locks.contains_key(&11) && !s.locks.contains_key(&9));
        // A re-format forgets all VDIs.
        s.apply(&format());
        assert!(s.vdis.is_empty() && !s.in_use.get(5));
    }

    #[test]
    fn same_events_same_state() {
        let evs = vec![
            Event::Join {
                node: node(1),
                time: 1,
                incarnation: 0,
                fixed_vnodes: false,
            },
            format(),
            Event::Join {
                node: node(2),
                time: 2,
                incarnation: 0,
                fixed_vnodes: false,
            },
            Event::VdiAdd {
                vid: 7,
                copies: 3,
                block_size_shift: 22,
                snapshot_of: None,
            },
            Event::Leave {
                addr: node(1).addr,
                time: 3,
                incarnation: None,
            },
        ];
        let run = || {
            let mut s = ClusterState::default();
            for e in &evs {
                s.apply(e);
            }
            (s.epoch_records(), s.in_use.clone(), s.cluster_info())
        };
        assert_eq!(run(), run());
        // Events survive the log's JSON encoding.
        for e in &evs {
            let j = serde_json::to_string(e).expect("ser");
            assert_eq!(&serde_json::from_str::<Event>(&j).expect("de"), e);
        }
    }

    /// A history with every kind of fact a checkpoint must carry, applied with positions.
    fn history() -> Vec<Event> {
        let mut pinned = node(3);
        pinned.nr_vnodes = 40;
        vec![
            format(),
            join(node(1), false),
            join(node(2), false),
            join(pinned, true),
            Event::VdiAdd {
                vid: 7,
                copies: 3,
                block_size_shift: 22,
                snapshot_of: None,
            },
            Event::VdiAdd {
                vid: 8,
                copies: 2,
                block_size_shift: 22,
                snapshot_of: Some(7),
            },
            Event::VdiAdd {
                vid: 9,
                copies: 1,
                block_size_shift: 20,
                snapshot_of: None,
            },
            Event::VdiDel { vid: 9 },
            Event::LockVdi {
                vid: 8,
                owner: node(2).addr,
                client: 5,
            },
            Event::SetVnodes {
                addr: node(1).addr,
                vnodes: Some(10),
                time: 4,
            },
            Event::Leave {
                addr: node(2).addr,
                time: 5,
                incarnation: Some(0),
            },
            join(node(4), false),
        ]
    }

    fn applied(evs: &[Event]) -> ClusterState {
        let mut s = ClusterState::default();
        for (i, e) in evs.iter().enumerate() {
            s.apply_at(i as u64 + 1, e);
        }
        s
    }

    #[test]
    fn a_checkpoint_loads_as_the_same_state() {
        let s = applied(&history());
        let bytes = serde_json::to_vec(&s).expect("encode");
        let back = ClusterState::from_checkpoint(&bytes).expect("decode");
        assert_eq!(serde_json::to_vec(&back).expect("encode again"), bytes);
        assert_eq!(back.nodes(), s.nodes(), "the ring is rebuilt with the same weights");
        assert_eq!(back.epoch_records(), s.epoch_records());
        assert_eq!(back.in_use, s.in_use);
        assert_eq!(back.deleted, s.deleted);
        assert_eq!(back.cluster_info(), s.cluster_info());
        assert_eq!((back.pos, back.formatted_at), (12, 1));
        assert_eq!(back.lives(), s.lives());
        assert!(
            ClusterState::from_checkpoint(b"{\"pos\": 3").is_err(),
            "a cut checkpoint"
        );
    }

    #[test]
    fn jumping_to_a_checkpoint_does_what_the_skipped_events_would() {
        let evs = history();
        let mut behind = applied(&evs[..5]);
        let mut replayed = behind.clone();
        let image = applied(&evs);
        let mut want = Vec::new();
        for (i, e) in evs.iter().enumerate().skip(5) {
            want.extend(replayed.apply_at(i as u64 + 1, e));
        }
        assert!(!want.is_empty(), "the skipped events began epochs");
        assert_eq!(behind.jump_to(image.clone()), want);
        assert_eq!(serde_json::to_vec(&behind).ok(), serde_json::to_vec(&replayed).ok());
        assert!(
            behind.jump_to(applied(&evs[..7])).is_empty(),
            "an older image is ignored"
        );
        assert_eq!(behind.pos, 12, "and changes nothing");

        // Formatted again in between: wipe, then every epoch of the new history is new.
        let mut again = evs.clone();
        again.push(format());
        again.push(join(node(5), false));
        let reformatted = applied(&again);
        let epochs: Vec<Effect> = reformatted.epochs.iter().map(|e| Effect::NewEpoch(e.epoch)).collect();
        let fx = behind.jump_to(reformatted);
        assert_eq!(fx[0], Effect::WipeStore);
        assert_eq!(fx[1..], epochs[..]);
        assert_eq!(behind.formatted_at, 13);

        let mut last = again.clone();
        last.push(Event::Shutdown);
        assert_eq!(behind.jump_to(applied(&last)).last(), Some(&Effect::Shutdown));
    }
}
