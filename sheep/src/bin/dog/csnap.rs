//! `dog cluster snapshot save|list|check|load|delete`: every VDI (or some) at one moment, copied
//! into a farm directory ([`sheep::store::farm`]) and created again from it, in this cluster or
//! another one, after a reformat or not.
//!
//! Save cuts first: one SNAPSHOT_VDIS request snapshots every VDI at one point of the
//! cluster's total order (writes after it go to the new working VDIs), so the copy reads
//! data nobody writes any more while the VDIs stay in use; the cut snapshots are deleted
//! when the copy is done (their objects stay as long as the working VDIs use them).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use protocol::inode::{Inode, MAX_BLOCK_SIZE_SHIFT, MAX_DATA_OBJS, MIN_BLOCK_SIZE_SHIFT};
use protocol::requests::MAX_SNAPSHOT_VDIS;
use protocol::{Client, ResultCode};
use tokio::task::block_in_place;

use crate::error::{fail, warn, why, Failure};
use crate::fmt::{local_time, size_str};
use crate::net::{self, NewVdi};
use crate::progress::Progress;
use crate::transfer::{self, WriteTarget};
use crate::vdi::{self, object_size};
use crate::Out;
use sheep::dogcli::Snap;
use sheep::store::farm::{
    self, hex, now, Error as FarmError, Farm, Hash, Keep, LogEntry, SnapObj, TrunkReader, TrunkWriter, VdiObj, SLICE,
};

/// The names of `all` that `only` asks for (all of them when `only` is empty), refusing
/// names that are not there.
fn select(all: &[String], only: &[String], place: &str) -> Result<Vec<String>, Failure> {
    let mut seen = HashSet::new();
    if only.is_empty() {
        return Ok(all.iter().filter(|n| seen.insert(n.as_str())).cloned().collect());
    }
    let missing: Vec<&str> = only.iter().filter(|n| !all.contains(n)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(Failure::new(format!(
            "No VDI {} {place}; nothing was done",
            missing.join(", ")
        )));
    }
    Ok(only.iter().filter(|n| seen.insert(n.as_str())).cloned().collect())
}

/// Runs of consecutive allocated objects: (first index, count).
fn allocated_runs(entries: &[u32]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, _) in entries.iter().enumerate().filter(|(_, &e)| e != 0) {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == i as u64 => *count += 1,
            _ => runs.push((i as u64, 1)),
        }
    }
    runs
}

/// Keeps `f` for the caller of a transfer, which only passes on an I/O error's text, and
/// returns that error.
fn stash(slot: &mut Option<Failure>, f: Failure) -> io::Error {
    let e = io::Error::other(f.msg.clone());
    *slot = Some(f);
    e
}

/// Takes a VDI's bytes in order (from [`transfer::read_range`]), cuts them into slices and
/// stores each one that is not all zeros, and its entry in the VDI's trunk.
struct SliceSink<'a> {
    farm: &'a Farm,
    progress: &'a Progress,
    /// Index of the slice `buf` fills.
    next: u64,
    buf: Vec<u8>,
    trunk: TrunkWriter<'a>,
    /// Slices stored, and their bytes.
    slices: u64,
    bytes: u64,
    /// Bytes of slices the farm did not hold yet.
    new_bytes: u64,
    /// Why the last write failed (the transfer only keeps the I/O error's text).
    failed: Option<Failure>,
}

impl SliceSink<'_> {
    fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.buf.iter().any(|&b| b != 0) {
            let (h, new) = self
                .farm
                .put(&self.buf)
                .map_err(|f| stash(&mut self.failed, f.into()))?;
            self.trunk
                .push(self.next, &h)
                .map_err(|f| stash(&mut self.failed, f.into()))?;
            self.slices += 1;
            self.bytes += self.buf.len() as u64;
            if new {
                self.new_bytes += self.buf.len() as u64;
            }
        }
        self.progress.add(self.buf.len() as u64);
        self.next += 1;
        self.buf.clear();
        Ok(())
    }
}

impl Write for SliceSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let take = rest.len().min(SLICE as usize - self.buf.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == SLICE as usize {
                self.cut()?;
            }
        }
        Ok(data.len())
    }

    /// The end of a run: a short last slice (the VDI's end) is stored as it is.
    fn flush(&mut self) -> io::Result<()> {
        self.cut()
    }
}

/// Copies one VDI (a cut snapshot) into the farm.
async fn copy_vdi(c: &Arc<Client>, farm: &Farm, ino: &Inode, progress: &Progress) -> Result<(VdiObj, u64), Failure> {
    let h = &ino.header;
    let obj = object_size(h)?;
    let nr = vdi::nr_objects(h)? as usize;
    let entries = &ino.data_vdi_id[..nr.min(ino.data_vdi_id.len())];
    let mut sink = SliceSink {
        farm,
        progress,
        next: 0,
        buf: Vec::with_capacity(SLICE as usize),
        trunk: TrunkWriter::new(farm, h.vdi_size)?,
        slices: 0,
        bytes: 0,
        new_bytes: 0,
        failed: None,
    };
    for (first, count) in allocated_runs(entries) {
        let at = first * obj;
        let end = ((first + count) * obj).min(h.vdi_size);
        sink.next = at / SLICE;
        let copied = transfer::read_range(c, &h.name, entries, obj, at, end - at, &mut sink).await;
        if let Some(f) = sink.failed.take() {
            return Err(f);
        }
        copied?;
    }
    let SliceSink {
        trunk,
        slices,
        bytes,
        new_bytes,
        ..
    } = sink;
    let th = block_in_place(|| trunk.finish())?;
    let v = VdiObj {
        name: h.name.clone(),
        size: h.vdi_size,
        copies: h.nr_copies,
        copy_policy: h.copy_policy,
        block_size_shift: h.block_size_shift,
        trunk: hex(&th),
        slices,
        bytes,
    };
    Ok((v, new_bytes))
}

/// Length of slice `idx` of a VDI of `size` bytes.
fn slice_len(size: u64, idx: u64) -> u64 {
    SLICE.min(size.saturating_sub(idx * SLICE))
}

/// Copies the cut snapshots (`snapshots`: snapshot vid, new working vid) of `names` into
/// the farm and logs them as the cluster snapshot `snap`. Returns its index, the snapshot
/// and the bytes newly stored.
async fn copy_all(
    c: &Arc<Client>,
    farm: &Farm,
    names: &[String],
    snapshots: &[(u32, u32)],
    mut snap: SnapObj,
) -> Result<(u32, SnapObj, u64), Failure> {
    // One inode in memory at a time (up to 4 MiB each): read once to size the progress
    // bar, again to copy. A cut snapshot does not change in between.
    let cut = names
        .iter()
        .zip(snapshots)
        .map(|(name, &(vid, _))| (vid, format!("the cut snapshot of VDI {name}")));
    let mut total = 0;
    for (vid, what) in cut.clone() {
        let ino = vdi::read_inode(c, vid, &what).await?;
        total += ino.data_vdi_id.iter().filter(|&&e| e != 0).count() as u64 * object_size(&ino.header)?;
    }
    let progress = Progress::bytes("saving", total);
    let mut new_bytes = 0;
    for (vid, what) in cut {
        let ino = vdi::read_inode(c, vid, &what).await?;
        let (v, new) = copy_vdi(c, farm, &ino, &progress).await?;
        snap.vdis.push(v);
        new_bytes += new;
    }
    let json =
        serde_json::to_vec_pretty(&snap).map_err(|e| Failure::new(format!("Failed to encode the snapshot: {e}")))?;
    let (sh, _) = block_in_place(|| farm.put(&json))?;
    block_in_place(|| farm.sync())?;
    let index = block_in_place(|| farm.append(&snap.tag, snap.time, &sh))?;
    Ok((index, snap, new_bytes))
}

pub async fn save(addr: SocketAddr, tag: &str, dir: &Path, only: &[String]) -> Result<(), Failure> {
    let farm = block_in_place(|| Farm::create(dir))?;
    let _held = block_in_place(|| farm.hold(false))?;
    if farm.log()?.iter().any(|e| e.tag == tag) {
        return Err(Failure::new(format!(
            "A cluster snapshot tagged '{tag}' exists in {} already",
            dir.display()
        )));
    }
    let c = net::connect(addr).await?;
    let members = net::node_list(&c).await?;
    let mut working = Vec::new();
    vdi::for_each_vdi(&c, false, |h, _| {
        if !h.is_snapshot() {
            working.push(h.name.clone());
        }
    })
    .await?;
    let names = select(&working, only, "in the cluster")?;
    if names.len() > MAX_SNAPSHOT_VDIS {
        return Err(Failure::new(format!(
            "{} VDIs: one cluster snapshot holds at most {MAX_SNAPSHOT_VDIS}; name the VDIs of each",
            names.len()
        )));
    }
    if names.is_empty() {
        return Err(Failure::new("The cluster has no VDI to snapshot"));
    }
    let time = now();
    let snap = SnapObj {
        tag: tag.to_string(),
        time,
        epoch: members.epoch,
        nodes: members.nodes.iter().map(|n| n.addr.to_string()).collect(),
        vdis: Vec::new(),
    };
    let cut = format!("cluster-snapshot-cut-{time}-{}", std::process::id());
    let saved = match c.snapshot_vdis(&cut, &names).await {
        Ok(snapshots) => copy_all(&c, &farm, &names, &snapshots, snap).await,
        Err(e) => Err(fail("Failed to snapshot the VDIs; nothing was saved", &e)),
    };
    // Also after a failed cut: the request may have taken effect before its reply was lost.
    for name in &names {
        match net::find_vdi(&c, name, 0, &cut).await {
            Ok(_) => {}
            Err(e) if matches!(e.result(), Some(ResultCode::NO_TAG | ResultCode::NO_VDI)) => continue,
            Err(e) => {
                warn(format!(
                    "Cannot tell whether VDI {name} kept a cut snapshot {cut}: {}",
                    why(&e)
                ));
                continue;
            }
        }
        if let Err(f) = vdi::delete(addr, name, Some(&Snap::Tag(cut.clone()))).await {
            warn(format!(
                "Failed to delete the cut snapshot of VDI {name} ({f}): delete it with \
                 `dog vdi delete -s {cut} {name}`"
            ));
        }
    }
    let (index, snap, new_bytes) = saved?;
    let mut out = Out::new();
    out.line(format!(
        "saved cluster snapshot {index} '{tag}': {} VDIs, {} of data, {} newly stored in {}",
        snap.vdis.len(),
        size_str(snap.bytes(), false),
        size_str(new_bytes, false),
        dir.display()
    ));
    out.print()
}

pub fn list(dir: &Path, raw: bool) -> Result<(), Failure> {
    let farm = Farm::open(dir)?;
    let mut out = Out::new();
    if !raw {
        out.line("Index  Snapshot Time     VDIs      Size  Tag");
    }
    for e in farm.log()? {
        let snap: SnapObj = farm.snap(&e)?;
        if raw {
            out.line(format!(
                "{} {} {} {} {}",
                e.index,
                e.time,
                snap.vdis.len(),
                snap.bytes(),
                e.tag
            ));
        } else {
            out.line(format!(
                "{:5}  {}  {:4}  {:>8}  {}",
                e.index,
                local_time(e.time, "%Y-%m-%d %H:%M"),
                snap.vdis.len(),
                size_str(snap.bytes(), false),
                e.tag
            ));
        }
    }
    out.print()
}

/// `cluster snapshot delete TAG DIR`: drops the snapshot from the log, then every object no
/// other snapshot uses. Refused, with nothing changed, when another snapshot's index cannot
/// be read (its objects could not be told apart from garbage).
pub fn delete(tag: &str, dir: &Path) -> Result<(), Failure> {
    let farm = Farm::open(dir)?;
    let _held = block_in_place(|| farm.hold(true))?;
    let log = farm.log()?;
    if !log.iter().any(|e| e.tag == tag) {
        return Err(Failure::new(format!(
            "No cluster snapshot tagged '{tag}' in {}",
            dir.display()
        )));
    }
    let mut others = Vec::new();
    for e in log.into_iter().filter(|e| e.tag != tag) {
        let snap = farm
            .snap(&e)
            .map_err(|f| Failure::new(format!("{f}; nothing was deleted")))?;
        others.push((e, snap));
    }
    // Every trunk is read before anything changes: one that cannot be read stops the delete.
    let first =
        in_use(&farm, &others, farm::NAMES_IN_MEMORY).map_err(|f| Failure::new(format!("{f}; nothing was deleted")))?;
    farm.unlog(tag)?;
    let (objects, bytes) = block_in_place(|| sweep_unused(&farm, &others, first)).map_err(|f| {
        Failure::new(format!(
            "{f}; snapshot '{tag}' is deleted, and what only it used goes with the next delete"
        ))
    })?;
    let mut out = Out::new();
    out.line(format!(
        "deleted cluster snapshot '{tag}': {objects} objects no other snapshot uses, {} freed",
        size_str(bytes, false)
    ));
    out.print()
}

/// Calls `f` with each object the snapshots `others` name: their snap objects, trunks and
/// slices (an object as often as it is named). Fails on a trunk it cannot read.
fn each_name(farm: &Farm, others: &[(LogEntry, SnapObj)], f: &mut dyn FnMut(Hash)) -> Result<(), Failure> {
    for (e, snap) in others {
        f(e.snap);
        for v in &snap.vdis {
            let in_snapshot = |fail: FarmError| Failure::new(format!("{fail} (snapshot '{}')", e.tag));
            for entry in farm.trunk(v).map_err(in_snapshot)? {
                f(entry.map_err(in_snapshot)?.1);
            }
            sheep::store::farm::parse_hex(&v.trunk).into_iter().for_each(&mut *f);
        }
    }
    Ok(())
}

/// The objects that the snapshots `others` use, unless more than `limit` distinct ones
/// (every trunk is read all the same).
fn in_use(farm: &Farm, others: &[(LogEntry, SnapObj)], limit: usize) -> Result<Keep, Failure> {
    farm::in_use(limit, |f| each_name(farm, others, f))
}

/// Removes every object that none of `others` uses ([`Farm::sweep_unnamed`], each part's
/// set under [`farm::NAMES_IN_MEMORY`]). Returns the objects removed and their bytes.
fn sweep_unused(farm: &Farm, others: &[(LogEntry, SnapObj)], first: Keep) -> Result<(u64, u64), Failure> {
    farm.sweep_unnamed(first, farm::NAMES_IN_MEMORY, |f| each_name(farm, others, f))
}

/// Reads every object of `vdis` back and checks it against its name. Returns a line per
/// problem.
fn verify(farm: &Farm, vdis: &[&VdiObj], what: &str) -> Vec<String> {
    let progress = Progress::bytes(what, vdis.iter().map(|v| v.bytes).sum());
    let mut problems = Vec::new();
    for v in vdis {
        let shift_ok = (MIN_BLOCK_SIZE_SHIFT..=MAX_BLOCK_SIZE_SHIFT).contains(&v.block_size_shift);
        if !shift_ok || v.size > (MAX_DATA_OBJS as u64) << v.block_size_shift {
            problems.push(format!(
                "VDI {}: a size of {} bytes with block size shift {} is impossible",
                v.name, v.size, v.block_size_shift
            ));
            continue;
        }
        let trunk = match farm.trunk(v) {
            Ok(t) if t.size != v.size => {
                problems.push(format!(
                    "VDI {}: its trunk is for {} bytes, the snapshot says {}",
                    v.name, t.size, v.size
                ));
                continue;
            }
            Ok(t) => t,
            Err(f) => {
                problems.push(f.msg);
                continue;
            }
        };
        for entry in trunk {
            match entry {
                Ok((idx, h)) => {
                    let len = slice_len(v.size, idx);
                    if let Err(f) = stored_slice(farm, &v.name, idx, &h, len) {
                        problems.push(f.msg);
                    }
                    progress.add(len);
                }
                Err(f) => problems.push(f.msg),
            }
        }
    }
    problems
}

pub fn check(tag: &str, dir: &Path) -> Result<(), Failure> {
    let farm = Farm::open(dir)?;
    let (_, snap) = farm.find(tag)?;
    let vdis: Vec<&VdiObj> = snap.vdis.iter().collect();
    let problems = block_in_place(|| verify(&farm, &vdis, "checking"));
    let mut out = Out::new();
    for p in &problems {
        out.line(p);
    }
    if problems.is_empty() {
        out.line(format!(
            "cluster snapshot '{tag}': {} VDIs, {} slices, {}: every object matches its SHA-1",
            snap.vdis.len(),
            snap.vdis.iter().map(|v| v.slices).sum::<u64>(),
            size_str(snap.bytes(), false)
        ));
    }
    out.print()?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "cluster snapshot '{tag}' has {} bad objects",
            problems.len()
        )))
    }
}

/// Hands out the bytes `[first slice, end)` of a VDI from the farm: stored slices checked
/// against their names, zeros for the others.
struct SliceSource<'a> {
    farm: &'a Farm,
    progress: &'a Progress,
    name: &'a str,
    size: u64,
    /// The stored slices from the next one on.
    slices: &'a [(u64, Hash)],
    next: u64,
    buf: Vec<u8>,
    pos: usize,
    failed: Option<Failure>,
}

impl Read for SliceSource<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            let len = slice_len(self.size, self.next);
            self.buf = match self.slices.split_first() {
                Some((&(idx, h), rest)) if idx == self.next => {
                    self.slices = rest;
                    match stored_slice(self.farm, self.name, idx, &h, len) {
                        Ok(b) => b,
                        Err(f) => return Err(stash(&mut self.failed, f)),
                    }
                }
                _ => vec![0; len as usize],
            };
            self.pos = 0;
            self.next += 1;
            self.progress.add(len);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Most zero slices written to join two stored slices into one run (1 MiB): a bigger gap
/// starts a new run, so holes stay holes.
const MAX_GAP: u64 = 8;

/// Most slices in one run (64 MiB): a run's entries are held while it is written.
const RUN_MAX: usize = 512;

/// The next run of stored slices from a trunk's entries, written by one transfer; empty at
/// the trunk's end.
fn next_run<I>(entries: &mut std::iter::Peekable<I>) -> Result<Vec<(u64, Hash)>, Failure>
where
    I: Iterator<Item = Result<(u64, Hash), FarmError>>,
{
    let mut run: Vec<(u64, Hash)> = Vec::new();
    while run.len() < RUN_MAX {
        let joins = match (entries.peek(), run.last()) {
            (Some(Ok((idx, _))), Some((last, _))) => idx - last <= MAX_GAP,
            (Some(_), _) => true,
            (None, _) => false,
        };
        if !joins {
            break;
        }
        match entries.next() {
            Some(Ok(e)) => run.push(e),
            Some(Err(f)) => return Err(f.into()),
            None => break,
        }
    }
    Ok(run)
}

/// Stored slice `idx` of VDI `name`: its bytes, checked against their name and length.
fn stored_slice(farm: &Farm, name: &str, idx: u64, h: &Hash, len: u64) -> Result<Vec<u8>, Failure> {
    let at = format!("VDI {name} at offset {}", idx * SLICE);
    let b = farm.get_or_fail(h, &at)?;
    if b.len() as u64 != len {
        return Err(Failure::new(format!(
            "farm object {} ({at}) holds {} bytes, not {len}",
            hex(h),
            b.len()
        )));
    }
    Ok(b)
}

/// Creates VDI `v` as it was saved: empty, with its size, redundancy and object size.
async fn create_vdi(c: &Client, v: &VdiObj) -> Result<u32, Failure> {
    let new = NewVdi {
        name: &v.name,
        size: v.size,
        base: 0,
        copies: v.copies,
        copy_policy: v.copy_policy,
        store_policy: 0,
        block_size_shift: v.block_size_shift,
        snapshot: false,
    };
    net::new_vdi(c, &new)
        .await
        .map_err(|e| fail(format!("Failed to create VDI {}", v.name), &e))
}

/// Writes the stored slices of `v` into its new VDI `vid`.
async fn fill_vdi(
    c: &Arc<Client>,
    farm: &Farm,
    v: &VdiObj,
    vid: u32,
    trunk: TrunkReader,
    progress: &Progress,
) -> Result<(), Failure> {
    let t = WriteTarget {
        client: c.clone(),
        name: v.name.clone(),
        vid,
        copies: v.copies,
        copy_policy: v.copy_policy,
        extra_flags: 0,
    };
    let obj = 1u64 << v.block_size_shift;
    // The objects earlier runs created: later runs write into them instead of creating them.
    let mut entries: Vec<u32> = Vec::new();
    let mut trunk = trunk.peekable();
    loop {
        let run = next_run(&mut trunk)?;
        let (Some(&(first, _)), Some(&(last, _))) = (run.first(), run.last()) else {
            break;
        };
        let at = first * SLICE;
        let len = last * SLICE + slice_len(v.size, last) - at;
        let mut src = SliceSource {
            farm,
            progress,
            name: &v.name,
            size: v.size,
            slices: &run,
            next: first,
            buf: Vec::new(),
            pos: 0,
            failed: None,
        };
        let written = transfer::write_range(&t, &entries, obj, at, len, &mut src).await;
        if let Some(f) = src.failed.take() {
            return Err(f);
        }
        if written? != len {
            return Err(Failure::new(format!(
                "VDI {}: the farm gave fewer bytes than its trunk names",
                v.name
            )));
        }
        let last_object = ((at + len - 1) / obj) as usize;
        if entries.len() <= last_object {
            entries.resize(last_object + 1, 0);
        }
        entries[(at / obj) as usize..=last_object].fill(vid);
    }
    t.flush().await
}

pub async fn load(addr: SocketAddr, tag: &str, dir: &Path, only: &[String]) -> Result<(), Failure> {
    let farm = Farm::open(dir)?;
    let (_, snap) = farm.find(tag)?;
    let all: Vec<String> = snap.vdis.iter().map(|v| v.name.clone()).collect();
    let names = select(&all, only, &format!("in cluster snapshot '{tag}'"))?;
    let vdis: Vec<&VdiObj> = snap.vdis.iter().filter(|v| names.contains(&v.name)).collect();

    let c = net::connect(addr).await?;
    let mut existing = HashSet::new();
    vdi::for_each_vdi(&c, false, |h, _| {
        existing.insert(h.name.clone());
    })
    .await?;
    let clash: Vec<&str> = vdis
        .iter()
        .filter(|v| existing.contains(&v.name))
        .map(|v| v.name.as_str())
        .collect();
    if !clash.is_empty() {
        return Err(Failure::new(format!(
            "VDI {} exists in the cluster: delete it or load the others by name; nothing was changed",
            clash.join(", ")
        )));
    }
    let problems = block_in_place(|| verify(&farm, &vdis, "checking"));
    if let Some(first) = problems.first() {
        for p in &problems[1..] {
            warn(p);
        }
        return Err(Failure::new(format!("{first}; nothing was changed")));
    }

    let progress = Progress::bytes("loading", vdis.iter().map(|v| v.bytes).sum());
    let mut loaded: Vec<&str> = Vec::new();
    for v in &vdis {
        let before = if loaded.is_empty() {
            "no VDI was loaded before".to_string()
        } else {
            format!("loaded before: {}", loaded.join(", "))
        };
        let vid = create_vdi(&c, v)
            .await
            .map_err(|f| Failure::new(format!("{f}; {before}")))?;
        let filled = match farm.trunk(v) {
            Ok(trunk) => fill_vdi(&c, &farm, v, vid, trunk, &progress).await,
            Err(f) => Err(f.into()),
        };
        if let Err(f) = filled {
            let undone = match vdi::delete(addr, &v.name, None).await {
                Ok(()) => "it was deleted again".to_string(),
                Err(d) => format!("it is half loaded: deleting it failed too ({d})"),
            };
            return Err(Failure::new(format!("{f}; VDI {}: {undone}; {before}", v.name)));
        }
        loaded.push(&v.name);
    }
    let mut out = Out::new();
    out.line(format!(
        "loaded {} VDIs ({}) of cluster snapshot '{tag}'",
        vdis.len(),
        size_str(vdis.iter().map(|v| v.bytes).sum(), false)
    ));
    out.print()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn runs_of_allocated_objects() {
        assert_eq!(allocated_runs(&[0, 5, 5, 0, 7, 0, 0, 5]), vec![(1, 2), (4, 1), (7, 1)]);
        assert_eq!(allocated_runs(&[0, 0]), vec![]);
    }

    /// The runs of slice indices `next_run` makes of stored slices `idx`.
    fn runs(idx: impl IntoIterator<Item = u64>) -> Vec<Vec<u64>> {
        let mut entries = idx.into_iter().map(|i| Ok((i, [0; 20]))).peekable();
        let mut out = Vec::new();
        loop {
            let run = next_run(&mut entries).expect("no failure");
            if run.is_empty() {
                return out;
            }
            out.push(run.iter().map(|&(i, _)| i).collect());
        }
    }

    #[test]
    fn slices_group_into_bounded_runs_across_small_gaps_only() {
        assert_eq!(runs([0, 3, 11, 20, 21]), vec![vec![0, 3, 11], vec![20, 21]]);
        let long = runs(0..RUN_MAX as u64 + 3);
        assert_eq!(long.iter().map(Vec::len).collect::<Vec<_>>(), vec![RUN_MAX, 3]);
        let failing = [Ok((0, [0; 20])), Err(FarmError::new("bad entry"))];
        let mut entries = failing.into_iter().peekable();
        assert_eq!(
            next_run(&mut entries).map_err(|f| f.msg).err().as_deref(),
            Some("bad entry")
        );
    }

    #[test]
    fn the_last_slice_is_short() {
        assert_eq!(slice_len(3 * SLICE + 5, 3), 5);
        assert_eq!(slice_len(3 * SLICE + 5, 2), SLICE);
    }

    #[test]
    fn selection_refuses_unknown_names_and_drops_repeats() {
        let all = vec!["a".to_string(), "b".to_string()];
        assert_eq!(select(&all, &[], "here").expect("all"), all);
        let twice = vec!["a".to_string(), "a".to_string()];
        assert_eq!(select(&twice, &[], "here").expect("all"), vec!["a".to_string()]);
        assert_eq!(
            select(&all, &["b".into(), "b".into()], "here").expect("b"),
            vec!["b".to_string()]
        );
        assert!(select(&all, &["c".into()], "here").is_err());
    }

    /// Stores a snapshot `tag` of one VDI whose slices are `data`, and logs it.
    fn saved(farm: &Farm, tag: &str, data: &[&[u8]]) -> (LogEntry, SnapObj) {
        let mut w = TrunkWriter::new(farm, 16 * SLICE).expect("trunk");
        for (i, d) in data.iter().enumerate() {
            let (h, _) = farm.put(d).expect("slice");
            w.push(i as u64, &h).expect("entry");
        }
        let trunk = w.finish().expect("trunk");
        let snap = SnapObj {
            tag: tag.into(),
            time: 1,
            epoch: 1,
            nodes: Vec::new(),
            vdis: vec![VdiObj {
                name: "v".into(),
                size: 16 * SLICE,
                copies: 1,
                copy_policy: 0,
                block_size_shift: 22,
                trunk: hex(&trunk),
                slices: data.len() as u64,
                bytes: 0,
            }],
        };
        let (h, _) = farm.put(&serde_json::to_vec(&snap).expect("json")).expect("snap");
        farm.append(tag, 1, &h).expect("log");
        let entry = farm
            .log()
            .expect("log")
            .into_iter()
            .find(|e| e.tag == tag)
            .expect("logged");
        (entry, snap)
    }

    fn stored(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("objects"))
            .expect("objects")
            .flat_map(|d| fs::read_dir(d.expect("dir").path()).expect("subdir"))
            .map(|f| f.expect("file").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_sweep_in_parts_removes_what_one_sweep_would() {
        let mut left = Vec::new();
        for limit in [usize::MAX, 1] {
            let d = tempfile::tempdir().expect("tempdir");
            let farm = Farm::create(d.path()).expect("farm");
            let a = saved(&farm, "a", &[b"1", b"2", b"3"]);
            let b = saved(&farm, "b", &[b"3", b"4"]);
            saved(&farm, "c", &[b"4", b"5", b"6"]);
            let tmp = d.path().join("objects/00");
            fs::create_dir_all(&tmp).expect("objects/00");
            fs::write(tmp.join(".tmp-1-leftover"), b"x").expect("a leftover of a crash");
            let before = stored(d.path()).len();
            farm.unlog("c").expect("unlog");
            let others = [a, b];
            // Eight distinct objects (two snaps, two trunks, slices 1 to 4) named nine times:
            // the limit is on distinct ones.
            assert!(matches!(in_use(&farm, &others, 8).expect("in use"), Keep::All(k) if k.len() == 8));
            assert!(matches!(in_use(&farm, &others, 7).expect("in use"), Keep::TooMany(9)));
            let first = in_use(&farm, &others, limit).expect("in use");
            assert_eq!(
                matches!(first, Keep::TooMany(_)),
                limit == 1,
                "parts only past the limit"
            );
            let (objects, _) = sweep_unused(&farm, &others, first).expect("sweep");
            // c's snap, trunk and slices 5 and 6, and the leftover.
            assert_eq!(objects, 5);
            assert_eq!(stored(d.path()).len(), before - 5);
            for (e, snap) in &others {
                for entry in farm.trunk(&snap.vdis[0]).expect("a kept trunk reads") {
                    farm.get(&entry.expect("an entry").1).expect("a kept slice reads");
                }
                farm.snap::<SnapObj>(e).expect("a kept snap reads");
            }
            left.push(stored(d.path()));
        }
        assert_eq!(left[0], left[1], "one sweep and a sweep in parts keep the same objects");
    }
}
