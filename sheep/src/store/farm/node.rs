//! A node's farm (`dog cluster format -b farm`): beside the working directory of plain
//! objects, `DIR/farm` keeps the node's *system snapshots*. When a recovery has finished on
//! every member, the copies this node no longer owns are not simply deleted: they are stored
//! here first, as one snapshot of that epoch, and then leave the working directory. A copy
//! dropped by mistake (a placement bug, an operator's error, a disk lost on the new owner
//! before its next scrub) can then still be read back with `dog node farm read`.
//!
//! Client I/O never touches the farm: writes and reads go to the working directory at the
//! plain store's speed, and hashing happens only when a snapshot is taken. A copy is cut
//! into [`SLICE`]s; a slice is stored once however many copies or snapshots hold it, and
//! every read checks it against its name, so a corrupt farm file is reported, never served.
//!
//! Format (ARCHITECTURE.md, "Farm"): the objects of [`super`]; per archived copy a trunk
//! (the copy's size and its slices); per snapshot an *index* (each oid with its trunk) and a
//! snap object ([`SysSnap`], JSON); `snap.log` names the snapshots, oldest first, tagged
//! `epoch E`. The farm keeps the newest `keep` snapshots ([`NodeFarm::prune`]).

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use protocol::Oid;

use super::{
    hex, in_use, io_failure, now, parse_hex, Error, Farm, Hash, Kind, LogEntry, TrunkWriter, NAMES_IN_MEMORY, SLICE,
};
use crate::store::Store;

/// System snapshots a node keeps unless told otherwise (`sheep --farm-keep`).
pub const KEEP: usize = 8;

/// A system snapshot in the log, with its snap object or why that cannot be read.
pub type Listed = (LogEntry, Result<SysSnap, Error>);

/// One system snapshot: the snap object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SysSnap {
    /// The epoch whose recovery dropped these copies.
    pub epoch: u32,
    pub time: u64,
    /// The members of that epoch, host:port.
    pub members: Vec<String>,
    /// SHA-1 of its index, hex.
    pub index: String,
    pub objects: u64,
    /// The copies' bytes.
    pub bytes: u64,
}

/// What one [`NodeFarm::archive`] stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Archived {
    pub objects: u64,
    pub bytes: u64,
    /// Bytes of slices the farm did not hold yet.
    pub new_bytes: u64,
    /// Copies not stored because they fail their own checksums.
    pub damaged: Vec<Oid>,
}

/// What became of one copy.
enum Copy {
    Stored {
        trunk: Hash,
        size: u64,
        new_bytes: u64,
    },
    Damaged,
    /// Deleted meanwhile (its VDI's garbage collected): nothing to keep.
    Gone,
}

pub struct NodeFarm {
    farm: Farm,
}

/// The directory of the farm of the node whose directory is `node_dir`.
pub fn dir(node_dir: &Path) -> PathBuf {
    node_dir.join("farm")
}

impl NodeFarm {
    /// The farm of the node whose directory is `node_dir`, made if it has none.
    pub fn create(node_dir: &Path) -> Result<NodeFarm, Error> {
        let d = dir(node_dir);
        if d.is_dir() && !d.join(super::MARKER).exists() {
            // Only the sheep writes here: a farm without its marker is a creation cut short
            // (it holds no snapshot), which would otherwise be refused as not a farm forever.
            std::fs::remove_dir_all(&d).map_err(|e| io_failure(format!("Failed to remove {}", d.display()), &e))?;
        }
        Farm::create_as(&d, Kind::Node).map(|farm| NodeFarm { farm })
    }

    /// The farm at `dir` (a node's `DIR/farm`), which must be one.
    pub fn open(dir: &Path) -> Result<NodeFarm, Error> {
        Farm::open_as(dir, Kind::Node).map(|farm| NodeFarm { farm })
    }

    /// Stores this node's copies of `oids` (read from `store`) as the system snapshot of
    /// `epoch`, calling `pace` after each copy: a rate limit sleeps there, and an error it
    /// returns stops the archive (nothing is logged; what was stored goes with the next
    /// prune). Once it returns, the snapshot is durable and in the log.
    pub fn archive(
        &self,
        store: &Store,
        epoch: u32,
        members: Vec<String>,
        oids: &[Oid],
        mut pace: impl FnMut() -> Result<(), Error>,
    ) -> Result<Archived, Error> {
        let mut sorted = oids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut done = Archived::default();
        let mut index = TrunkWriter::index(&self.farm)?;
        let mut buf = vec![0u8; SLICE as usize];
        for oid in sorted {
            match self.copy(store, oid, &mut buf)? {
                Copy::Stored { trunk, size, new_bytes } => {
                    index.push(oid.0, &trunk)?;
                    done.objects += 1;
                    done.bytes += size;
                    done.new_bytes += new_bytes;
                }
                Copy::Damaged => done.damaged.push(oid),
                Copy::Gone => {}
            }
            pace()?;
        }
        let snap = SysSnap {
            epoch,
            time: now(),
            members,
            index: hex(&index.finish()?),
            objects: done.objects,
            bytes: done.bytes,
        };
        let json = serde_json::to_vec_pretty(&snap).map_err(|e| Error::new(format!("Failed to encode a snap: {e}")))?;
        let (h, _) = self.farm.put(&json)?;
        self.farm.sync()?;
        let taken: HashSet<String> = self.farm.log()?.into_iter().map(|e| e.tag).collect();
        let tag = (1..)
            .map(|n| match n {
                1 => format!("epoch {epoch}"),
                n => format!("epoch {epoch} #{n}"),
            })
            .find(|t| !taken.contains(t))
            .unwrap_or_default();
        self.farm.append(&tag, snap.time, &h)?;
        Ok(done)
    }

    /// Stores this node's copy of `oid` (`buf`: a slice's worth of room) and its trunk,
    /// unless the copy fails its own checksums: a damaged copy is not kept, so that no read
    /// of the farm ever returns its bytes as if they were good.
    fn copy(&self, store: &Store, oid: Oid, buf: &mut [u8]) -> Result<Copy, Error> {
        let failed = |e: std::io::Error| io_failure(format!("Failed to read object {oid} to archive it"), &e);
        let from_store = |e: crate::store::StoreError| Error::new(format!("Failed to archive object {oid}: {e}"));
        let f = match store.file(oid) {
            Ok(f) => f,
            Err(crate::store::StoreError::NotFound(_)) => return Ok(Copy::Gone),
            Err(e) => return Err(from_store(e)),
        };
        let size = f.metadata().map_err(failed)?.len();
        let mut trunk = TrunkWriter::new(&self.farm, size)?;
        let mut new_bytes = 0;
        for idx in 0..size.div_ceil(SLICE) {
            let len = (size - idx * SLICE).min(SLICE) as usize;
            let slice = &mut buf[..len];
            f.read_exact_at(slice, idx * SLICE).map_err(failed)?;
            match store.verify(oid, size, idx * SLICE, slice) {
                Ok(bad) if bad.is_empty() => {}
                Ok(_) => return Ok(Copy::Damaged),
                // Removed while this archive read it.
                Err(crate::store::StoreError::NotFound(_)) => return Ok(Copy::Gone),
                Err(e) => return Err(from_store(e)),
            }
            if slice.iter().all(|&b| b == 0) {
                continue;
            }
            let (h, new) = self.farm.put(slice)?;
            trunk.push(idx, &h)?;
            if new {
                new_bytes += len as u64;
            }
        }
        Ok(Copy::Stored {
            trunk: trunk.finish()?,
            size,
            new_bytes,
        })
    }

    /// Holds the farm for reading until the returned file is dropped: no prune sweeps an
    /// object from under the reader meanwhile.
    pub fn hold_for_reading(&self) -> Result<std::fs::File, Error> {
        self.farm.hold(false)
    }

    /// Bytes the farm's objects take on disk.
    pub fn disk_bytes(&self) -> Result<u64, Error> {
        self.farm.disk_bytes()
    }

    /// The system snapshots, oldest first, each with its snap object or why that cannot be
    /// read: one damaged snapshot does not hide the others, nor stop a prune.
    pub fn snapshots(&self) -> Result<Vec<Listed>, Error> {
        Ok(self
            .farm
            .log()?
            .into_iter()
            .map(|e| {
                let snap = self.farm.snap(&e);
                (e, snap)
            })
            .collect())
    }

    /// Calls `f` with each oid of `snap` and the name of its copy's trunk, in oid order.
    fn each_copy(&self, snap: &SysSnap, mut f: impl FnMut(u64, Hash) -> Result<(), Error>) -> Result<(), Error> {
        let h = parse_hex(&snap.index)
            .ok_or_else(|| Error::new(format!("'{}' is not the name of an index", snap.index)))?;
        for entry in self.farm.index(&h, &format!("index of epoch {}", snap.epoch))? {
            let (oid, trunk) = entry?;
            f(oid, trunk)?;
        }
        Ok(())
    }

    /// The newest snapshot that holds a copy of `oid` (of `epoch`, when given), and the
    /// name of that copy's trunk.
    pub fn find(&self, oid: Oid, epoch: Option<u32>) -> Result<(SysSnap, Hash), Error> {
        let mut unreadable = 0;
        for (_, snap) in self.snapshots()?.into_iter().rev() {
            let Ok(snap) = snap else {
                unreadable += 1;
                continue;
            };
            if epoch.is_some_and(|e| e != snap.epoch) {
                continue;
            }
            let mut found = None;
            self.each_copy(&snap, |o, trunk| {
                if o == oid.0 {
                    found = Some(trunk);
                }
                Ok(())
            })?;
            if let Some(trunk) = found {
                return Ok((snap, trunk));
            }
        }
        let which = match epoch {
            Some(e) => format!("No system snapshot of epoch {e}"),
            None => "No system snapshot".to_string(),
        };
        let damaged = match unreadable {
            0 => String::new(),
            n => format!(" ({n} cannot be read: `dog node farm check` names them)"),
        };
        Err(Error::new(format!("{which} holds object {oid}{damaged}")))
    }

    /// Writes the archived copy of `oid` whose trunk is `trunk` to `out`, every slice checked
    /// first; returns its size. Nothing is written when a slice fails.
    pub fn read(&self, oid: Oid, trunk: &Hash, out: &mut impl Write) -> Result<u64, Error> {
        let what = format!("trunk of object {oid}");
        let reader = self.farm.slices(trunk, &what)?;
        let size = reader.size;
        let mut slices = Vec::new();
        for entry in reader {
            let (idx, h) = entry?;
            self.farm.get_or_fail(&h, format_args!("slice {idx} of object {oid}"))?;
            slices.push((idx, h));
        }
        let failed = |e: std::io::Error| io_failure(format!("Failed to write object {oid}"), &e);
        let zeros = vec![0u8; SLICE as usize];
        let mut next = slices.iter().peekable();
        for idx in 0..size.div_ceil(SLICE) {
            let len = (size - idx * SLICE).min(SLICE) as usize;
            match next.next_if(|(i, _)| *i == idx) {
                Some((_, h)) => {
                    let b = self.farm.get_or_fail(h, format_args!("slice {idx} of object {oid}"))?;
                    out.write_all(&b).map_err(failed)?;
                }
                None => out.write_all(&zeros[..len]).map_err(failed)?,
            }
        }
        out.flush().map_err(failed)?;
        Ok(size)
    }

    /// Checks every object the snapshots use against its name; returns the problems, each
    /// naming the object, what it is and its file.
    pub fn check(&self) -> Result<Vec<String>, Error> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for (e, snap) in self.snapshots()? {
            let snap = match snap {
                Ok(s) => s,
                Err(f) => {
                    problems.push(format!("{f} ('{}')", e.tag));
                    continue;
                }
            };
            let r = self.each_copy(&snap, |oid, trunk| {
                let what = format!("trunk of object {}", Oid(oid));
                let reader = match self.farm.slices(&trunk, &what) {
                    Ok(r) => r,
                    Err(f) => {
                        problems.push(format!("{f} ('{}')", e.tag));
                        return Ok(());
                    }
                };
                for entry in reader {
                    let (idx, h) = match entry {
                        Ok(e) => e,
                        Err(f) => {
                            // The rest of this trunk cannot be read; the other copies can.
                            problems.push(format!("{f} ('{}')", e.tag));
                            break;
                        }
                    };
                    // Each distinct slice once, as far as memory allows; past that, again.
                    if seen.len() >= NAMES_IN_MEMORY || seen.insert(h) {
                        if let Err(f) = self
                            .farm
                            .get_or_fail(&h, format_args!("slice {idx} of object {}", Oid(oid)))
                        {
                            problems.push(format!("{f} ('{}')", e.tag));
                        }
                    }
                }
                Ok(())
            });
            if let Err(f) = r {
                problems.push(format!("{f} ('{}')", e.tag));
            }
        }
        Ok(problems)
    }

    /// Drops all but the newest `keep` snapshots, then every object no snapshot left uses
    /// (theirs, and what an archive cut short left); returns how many objects went and
    /// their bytes. The names kept are held in memory up to [`NAMES_IN_MEMORY`]; past that,
    /// the sweep goes a share of the hash space at a time ([`Farm::sweep_unnamed`]).
    pub fn prune(&self, keep: usize) -> Result<(u64, u64), Error> {
        self.prune_within(keep, NAMES_IN_MEMORY)
    }

    fn prune_within(&self, keep: usize, names_in_memory: usize) -> Result<(u64, u64), Error> {
        // A reader (`dog node farm`) may hold the farm as long as its output waits: the
        // prune is put off to the next archive rather than wait for it.
        let Some(_alone) = self.farm.try_hold_alone()? else {
            return Err(Error::new("a reader holds the farm; the oldest snapshots go next time"));
        };
        let snaps = self.snapshots()?;
        let (gone, kept) = snaps.split_at(snaps.len().saturating_sub(keep));
        // Every trunk kept is read before anything changes.
        let first = in_use(names_in_memory, |f| self.each_name(kept, f))?;
        for (e, _) in gone {
            self.farm.unlog(&e.tag)?;
        }
        self.farm
            .sweep_unnamed(first, names_in_memory, |f| self.each_name(kept, f))
    }

    /// Calls `f` with each object the snapshots `snaps` name: their snap objects, indexes,
    /// trunks and slices.
    fn each_name(&self, snaps: &[Listed], f: &mut dyn FnMut(Hash)) -> Result<(), Error> {
        for (e, snap) in snaps {
            f(e.snap);
            // A damaged snap object names nothing else that can be found.
            let Ok(snap) = snap else { continue };
            parse_hex(&snap.index).into_iter().for_each(&mut *f);
            self.each_copy(snap, |oid, trunk| {
                f(trunk);
                for entry in self.farm.slices(&trunk, &format!("trunk of object {}", Oid(oid)))? {
                    f(entry?.1);
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, Options};

    const MIB: u64 = 1 << 20;

    /// A store in a new directory holding `copies` (see [`stored`]), and its node's farm.
    fn farm_with(copies: &[(u64, u8)]) -> (tempfile::TempDir, Store, NodeFarm) {
        let t = tempfile::tempdir().expect("tempdir");
        let store = Store::open(t.path(), Options::default()).expect("store");
        stored(&store, copies);
        let farm = NodeFarm::create(t.path()).expect("farm");
        (t, store, farm)
    }

    /// A store with objects of 1 MiB: `oid` holds `fill` in its second slice, zeros elsewhere.
    fn stored(store: &Store, copies: &[(u64, u8)]) {
        for &(oid, fill) in copies {
            let data = vec![fill; SLICE as usize];
            store
                .create(Oid(oid), MIB, SLICE, &data, Durability::OnFlush)
                .expect("create");
        }
    }

    fn read_back(farm: &NodeFarm, oid: u64, epoch: Option<u32>) -> Result<Vec<u8>, String> {
        let (_, trunk) = farm.find(Oid(oid), epoch).map_err(|e| e.msg)?;
        let mut out = Vec::new();
        farm.read(Oid(oid), &trunk, &mut out).map_err(|e| e.msg)?;
        Ok(out)
    }

    fn object_files(node_dir: &Path) -> usize {
        walk(&dir(node_dir).join("objects"))
    }

    fn walk(d: &Path) -> usize {
        std::fs::read_dir(d)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .map(|p| if p.is_dir() { walk(&p) } else { 1 })
            .sum()
    }

    #[test]
    fn copies_are_archived_once_read_back_checked_and_pruned() {
        let (t, store, farm) = farm_with(&[(1, 7), (2, 7), (3, 9)]);
        let members = vec!["127.0.0.1:7000".to_string()];
        let mut paced = 0;
        let a = farm
            .archive(&store, 2, members.clone(), &[Oid(1), Oid(2)], || {
                paced += 1;
                Ok(())
            })
            .expect("archive");
        assert_eq!(paced, 2, "paced after each copy");
        // Two copies of the same bytes: one slice of data stored.
        assert_eq!(
            a,
            Archived {
                objects: 2,
                bytes: 2 * MIB,
                new_bytes: SLICE,
                damaged: Vec::new(),
            }
        );
        let mut want = vec![0u8; MIB as usize];
        want[SLICE as usize..2 * SLICE as usize].fill(7);
        assert_eq!(read_back(&farm, 1, None), Ok(want.clone()));
        assert_eq!(read_back(&farm, 2, Some(2)), Ok(want.clone()));
        assert!(read_back(&farm, 3, None).is_err_and(|e| e.contains("No system snapshot holds object")));

        // The same copy again in a later epoch adds no data; a new one does.
        store.write(Oid(1), 0, b"changed").expect("write");
        store.update_sums(Oid(1), MIB, 0, b"changed").expect("checksums");
        let a = farm
            .archive(&store, 3, members.clone(), &[Oid(1), Oid(3)], || Ok(()))
            .expect("archive");
        assert_eq!((a.objects, a.new_bytes), (2, 2 * SLICE));
        let snaps = farm.snapshots().expect("snapshots");
        let epochs: Vec<_> = snaps
            .iter()
            .map(|(e, s)| {
                let s = s.as_ref().expect("a readable snap object");
                (e.tag.as_str(), s.epoch, s.objects)
            })
            .collect();
        assert_eq!(epochs, [("epoch 2", 2, 2), ("epoch 3", 3, 2)]);
        assert_eq!(snaps[1].1.as_ref().expect("snap").members, members);
        let newest = read_back(&farm, 1, None).expect("epoch 3's copy");
        assert_eq!(&newest[..7], b"changed");
        assert_eq!(read_back(&farm, 1, Some(2)), Ok(want.clone()), "epoch 2's copy stays");
        // A second archive of one epoch gets its own tag.
        farm.archive(&store, 3, members.clone(), &[Oid(3)], || Ok(()))
            .expect("archive");
        assert_eq!(farm.snapshots().expect("snapshots")[2].0.tag, "epoch 3 #2");
        assert!(farm.check().expect("check").is_empty());
        // Three distinct slices of data (7s, 9s, "changed"), then small trunks, indexes, snaps.
        let data = 3 * SLICE;
        let disk = farm.disk_bytes().expect("disk bytes");
        assert!(disk > data && disk < data + 8192, "{disk} bytes on disk");

        // Keeping the newest two drops epoch 2's snapshot and what only it used (swept a
        // share of the names at a time, as a farm too big for memory is).
        let before = object_files(t.path());
        let (gone, _) = farm.prune_within(2, 3).expect("prune");
        assert!(gone > 0);
        assert_eq!(object_files(t.path()), before - gone as usize);
        assert!(read_back(&farm, 1, Some(2)).is_err());
        assert!(read_back(&farm, 2, None).is_err(), "only epoch 2 held oid 2");
        assert!(read_back(&farm, 1, None).is_ok());
        assert!(farm.check().expect("check").is_empty());
        assert_eq!(farm.prune(2).expect("prune again"), (0, 0));

        // What an archive cut short left (a temporary file, objects no snapshot names) goes
        // with the next prune.
        let stray = dir(t.path()).join("objects/00/.tmp-1-cut");
        std::fs::write(&stray, b"cut short").expect("a temporary file");
        let (h, _) = farm.farm.put(b"unnamed").expect("an unnamed object");
        assert_eq!(farm.prune(2).expect("prune").0, 2);
        assert!(!stray.exists() && !farm.farm.path(&h).exists());
        assert!(read_back(&farm, 1, None).is_ok());
    }

    #[test]
    fn a_damaged_snap_object_is_named_and_hides_nothing_else() {
        let (_t, store, farm) = farm_with(&[(1, 7), (2, 9)]);
        for (epoch, oid) in [(2, 1), (3, 2), (4, 1)] {
            farm.archive(&store, epoch, Vec::new(), &[Oid(oid)], || Ok(()))
                .expect("archive");
        }
        let snaps = farm.snapshots().expect("snapshots");
        std::fs::write(farm.farm.path(&snaps[1].0.snap), b"not a snap").expect("damage epoch 3's snap");

        let snaps = farm.snapshots().expect("the others are still listed");
        assert_eq!(snaps.len(), 3);
        assert!(snaps[0].1.is_ok() && snaps[1].1.is_err() && snaps[2].1.is_ok());
        let problems = farm.check().expect("check");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("epoch 3"), "{problems:?}");
        assert!(farm.find(Oid(1), Some(2)).is_ok(), "epoch 2 is read");
        let e = farm.find(Oid(2), None).expect_err("only epoch 3 held oid 2");
        assert!(e.msg.contains("1 cannot be read"), "{}", e.msg);
        // Pruning still works, and drops the damaged snapshot with the old ones.
        farm.prune(1).expect("prune past a damaged snapshot");
        let left = farm.snapshots().expect("snapshots");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0.tag, "epoch 4");
        assert!(farm.check().expect("check").is_empty());
    }

    #[test]
    fn a_prune_is_put_off_while_a_reader_holds_the_farm() {
        let (_t, store, farm) = farm_with(&[(1, 7)]);
        for epoch in [2, 3] {
            farm.archive(&store, epoch, Vec::new(), &[Oid(1)], || Ok(()))
                .expect("archive");
        }
        let reader = farm.hold_for_reading().expect("a reader's hold");
        let e = farm.prune(1).expect_err("put off");
        assert!(e.msg.contains("a reader holds the farm"), "{}", e.msg);
        assert_eq!(
            farm.snapshots().expect("snapshots").len(),
            2,
            "nothing dropped meanwhile"
        );
        drop(reader);
        farm.prune(1).expect("prune once the reader is gone");
        assert_eq!(farm.snapshots().expect("snapshots").len(), 1);
    }

    #[test]
    fn a_farm_whose_creation_was_cut_short_is_made_again() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir(t.path()).join("objects")).expect("a farm without its marker");
        let farm = NodeFarm::create(t.path()).expect("made again");
        assert!(farm.snapshots().expect("snapshots").is_empty());
        assert!(NodeFarm::open(&dir(t.path())).is_ok());
    }

    #[test]
    fn an_archive_stopped_by_its_pace_logs_nothing_and_is_swept() {
        let (t, store, farm) = farm_with(&[(1, 1), (2, 2), (3, 3)]);
        let mut copies = 0;
        let stop = || {
            copies += 1;
            match copies {
                1 => Ok(()),
                _ => Err(Error::new("epoch 3 began")),
            }
        };
        let e = farm
            .archive(&store, 2, Vec::new(), &[Oid(1), Oid(2), Oid(3)], stop)
            .expect_err("stopped");
        assert_eq!(e.msg, "epoch 3 began");
        assert_eq!(copies, 2, "no copy after the stop");
        assert!(farm.snapshots().expect("snapshots").is_empty());
        assert!(object_files(t.path()) > 0, "the copies stored before the stop");
        farm.prune(KEEP).expect("prune");
        assert_eq!(object_files(t.path()), 0, "swept by the next prune");
    }

    #[test]
    fn a_damaged_copy_is_left_out_and_a_deleted_one_skipped() {
        let (_t, store, farm) = farm_with(&[(8, 4), (9, 5), (10, 6)]);
        store
            .remove(Oid(10))
            .expect("a copy deleted before the archive reaches it");
        let path = store.dir().join(Oid(8).file_name());
        let mut b = std::fs::read(&path).expect("the copy");
        b[SLICE as usize + 1] ^= 1;
        std::fs::write(&path, &b).expect("flip a bit behind the store's back");
        let a = farm
            .archive(&store, 2, Vec::new(), &[Oid(8), Oid(9), Oid(10)], || Ok(()))
            .expect("archive");
        assert_eq!((a.objects, a.damaged), (1, vec![Oid(8)]));
        assert!(farm.find(Oid(8), None).is_err(), "the damaged copy is not in the farm");
        assert!(farm.find(Oid(9), None).is_ok());
        assert!(farm.find(Oid(10), None).is_err(), "nothing of the deleted copy");
    }

    #[test]
    fn a_corrupt_slice_is_named_and_never_read() {
        let (_t, store, farm) = farm_with(&[(5, 3)]);
        farm.archive(&store, 2, Vec::new(), &[Oid(5)], || Ok(()))
            .expect("archive");
        let slice = super::super::hash_of(&vec![3u8; SLICE as usize]);
        let path = farm.farm.path(&slice);
        let mut b = std::fs::read(&path).expect("the slice");
        b[100] ^= 1;
        std::fs::write(&path, &b).expect("flip a bit");
        let problems = farm.check().expect("check");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains(&hex(&slice)) && problems[0].contains("corrupt"),
            "{problems:?}"
        );
        assert!(problems[0].contains("object 0000000000000005"), "{problems:?}");
        let (_, trunk) = farm.find(Oid(5), None).expect("find");
        let mut out = Vec::new();
        let e = farm.read(Oid(5), &trunk, &mut out).expect_err("a corrupt copy");
        assert!(e.msg.contains(&hex(&slice)), "{e}");
        assert!(out.is_empty(), "nothing written before the check");
        assert_eq!(store.read(Oid(5), SLICE, 4).expect("the working copy"), [3; 4]);
    }
}
