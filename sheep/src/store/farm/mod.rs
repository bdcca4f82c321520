//! The farm: a directory of objects named by the SHA-1 of their bytes, so that data several
//! VDIs, snapshots or copies hold is stored once, and every read checks the bytes against
//! the name. Two kinds ([`Kind`]): the farm where `dog cluster snapshot` keeps cluster
//! snapshots, and a node's farm on a `-b farm` store ([`node`]), which share this format.
//!
//! Layout (ARCHITECTURE.md, "Farm"):
//! - `farm`: the text `sheepdog farm 1` (`sheepdog node farm 1`), marking the directory and
//!   its format version;
//! - `objects/XX/YYYY…`: the objects, named by the 40 hex digits of their SHA-1 (the first two
//!   name the subdirectory):
//!   - *data*: one [`SLICE`] of a VDI or copy (shorter at its end), never all zeros;
//!   - *trunk*: one VDI (or copy) at one moment: `SDFARMT1`, its size (u64 LE), the slice
//!     size (u32 LE), then for each slice that is not all zeros, in ascending order, its index
//!     (u64 LE) and its data object's SHA-1 (20 bytes);
//!   - *index* (node farms): `SDFARMI1`, 0 (u64), 0 (u32), then per copy, by ascending oid,
//!     the oid (u64 LE) and its trunk's SHA-1;
//!   - *snap*: one snapshot, JSON: a cluster snapshot ([`SnapObj`]: tag, time, epoch,
//!     members, and per VDI its name, size, redundancy, object size and trunk) or a node's
//!     system snapshot ([`node::SysSnap`]);
//! - `snap.log`: one line per snapshot, oldest first: `INDEX TIME SNAP-SHA1 TAG`.
//!
//! Objects are written to a temporary name and renamed, the file system is synced, and only
//! then is the snapshot appended to the log (and the log synced): a snapshot in the log has
//! all its objects on disk. Deleting a snapshot removes it from the log, then every object
//! that no snapshot left in the log names (an object's references are the snapshots that
//! name it, counted by walking them); a delete holds the farm alone, saves share it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

/// Why a farm operation failed: a message that names the farm file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub msg: String,
}

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error { msg: msg.into() }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// The unit of deduplication: 128 KiB of a VDI.
pub const SLICE: u64 = 128 * 1024;
/// Most object names a delete or prune holds in memory at once (about 32 bytes each with the
/// set's overhead); past it, [`Farm::sweep_unnamed`] goes a part of the hash space at a time.
pub const NAMES_IN_MEMORY: usize = 4 << 20;
const MARKER: &str = "farm";
/// What a farm directory holds, told by the text of its marker file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Cluster snapshots, saved by `dog cluster snapshot` ([`SnapObj`]).
    Snapshots,
    /// A node's system snapshots: the copies it dropped after each recovery ([`node`]).
    Node,
}

impl Kind {
    fn marker_text(self) -> &'static str {
        match self {
            Kind::Snapshots => "sheepdog farm 1\n",
            Kind::Node => "sheepdog node farm 1\n",
        }
    }
}
const LOG: &str = "snap.log";
const TRUNK_MAGIC: &[u8; 8] = b"SDFARMT1";
const INDEX_MAGIC: &[u8; 8] = b"SDFARMI1";
const TRUNK_HEADER: usize = 8 + 8 + 4;
const TRUNK_ENTRY: usize = 8 + 20;

pub mod node;

pub type Hash = [u8; 20];

/// Seconds since the Unix epoch, as farm logs and snap objects record times.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn hash_of(bytes: &[u8]) -> Hash {
    Sha1::digest(bytes).into()
}

pub fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(s: &str) -> Option<Hash> {
    if s.len() != 40 {
        return None;
    }
    let mut h = [0u8; 20];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

/// One VDI of a cluster snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VdiObj {
    pub name: String,
    pub size: u64,
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    /// SHA-1 of its trunk, hex.
    pub trunk: String,
    /// Slices stored (not all zeros), and their bytes.
    pub slices: u64,
    pub bytes: u64,
}

/// A cluster snapshot: the snap object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapObj {
    pub tag: String,
    /// Unix seconds of the cut.
    pub time: u64,
    pub epoch: u32,
    /// The members at the cut, host:port.
    pub nodes: Vec<String>,
    pub vdis: Vec<VdiObj>,
}

impl SnapObj {
    pub fn bytes(&self) -> u64 {
        self.vdis.iter().map(|v| v.bytes).sum()
    }
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u32,
    pub time: u64,
    pub snap: Hash,
    pub tag: String,
}

/// One stored trunk (or index), read entry by entry in ascending order, so that no trunk is
/// ever whole in memory. Its bytes were checked against its name when it was opened
/// ([`Farm::trunk`], [`Farm::slices`], [`Farm::index`]); each entry is checked as it comes:
/// in order and, for a trunk, within the VDI or object. After an entry that fails, the
/// reader ends.
pub struct TrunkReader {
    input: std::io::BufReader<File>,
    /// What the trunk is, for messages: "trunk of VDI NAME (SHA-1)".
    what: String,
    /// The bytes of the VDI or object (a trunk), or 0 (an index).
    pub size: u64,
    /// Keys must be below this: the slices of `size` bytes, or any oid.
    limit: u64,
    left: u64,
    prev: Option<u64>,
}

impl TrunkReader {
    fn malformed(&mut self, why: &str) -> Error {
        self.left = 0;
        Error::new(format!("The {} is malformed: {why}", self.what))
    }
}

impl Iterator for TrunkReader {
    type Item = Result<(u64, Hash), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let mut e = [0u8; TRUNK_ENTRY];
        if let Err(err) = self.input.read_exact(&mut e) {
            self.left = 0;
            return Some(Err(io_failure(format!("Failed to read the {}", self.what), &err)));
        }
        self.left -= 1;
        let (idx, h) = e.split_at(8);
        let idx = u64::from_le_bytes(idx.try_into().unwrap_or_default());
        if self.prev.is_some_and(|prev| prev >= idx) {
            return Some(Err(self.malformed("its entries are out of order")));
        }
        if idx >= self.limit {
            return Some(Err(self.malformed("a slice lies past the end")));
        }
        self.prev = Some(idx);
        Some(Ok((idx, h.try_into().unwrap_or_default())))
    }
}

/// What the snapshots left in a farm use, as far as a sweep can hold it in memory.
pub enum Keep {
    /// Every object they use.
    All(HashSet<Hash>),
    /// More distinct objects than the limit: only how many times the snapshots name an
    /// object, which bounds the distinct ones.
    TooMany(usize),
}

/// The objects `each_name` names (it calls its argument with each), unless more than
/// `limit` distinct ones; it is walked to its end all the same, so that a name it cannot
/// read fails here, before anything changes.
pub fn in_use<E>(limit: usize, each_name: impl FnOnce(&mut dyn FnMut(Hash)) -> Result<(), E>) -> Result<Keep, E> {
    let mut keep = Some(HashSet::new());
    let mut names = 0;
    each_name(&mut |h| {
        names += 1;
        if let Some(k) = &mut keep {
            if k.len() < limit || k.contains(&h) {
                k.insert(h);
            } else {
                keep = None;
            }
        }
    })?;
    Ok(keep.map_or(Keep::TooMany(names), Keep::All))
}

/// A share of the hash space, by first byte: a delete whose keep-set would be too big for
/// memory sweeps the farm a part at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub of: usize,
}

impl Part {
    pub const WHOLE: Part = Part { index: 0, of: 1 };

    pub fn holds(&self, h: &[u8]) -> bool {
        h.first().is_some_and(|&b| usize::from(b) * self.of / 256 == self.index)
    }
}

/// A trunk stored as its entries come, in ascending slice order: they go to a temporary
/// file and into its hash, so that no VDI's trunk is ever whole in memory (28 bytes a slice:
/// 900 MiB for a VDI of 4 TiB written full).
pub struct TrunkWriter<'a> {
    farm: &'a Farm,
    tmp: PathBuf,
    out: std::io::BufWriter<File>,
    hasher: Sha1,
    len: u64,
    named: bool,
}

impl<'a> TrunkWriter<'a> {
    /// Starts the trunk of a VDI (or object) of `size` bytes: its entries are slice indexes.
    pub fn new(farm: &'a Farm, size: u64) -> Result<TrunkWriter<'a>, Error> {
        TrunkWriter::start(farm, TRUNK_MAGIC, size, SLICE as u32)
    }

    /// Starts an index: its entries are oids, each with the name of its object's trunk.
    pub fn index(farm: &'a Farm) -> Result<TrunkWriter<'a>, Error> {
        TrunkWriter::start(farm, INDEX_MAGIC, 0, 0)
    }

    fn start(farm: &'a Farm, magic: &[u8; 8], size: u64, slice: u32) -> Result<TrunkWriter<'a>, Error> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = farm.tmp_dir()?.join(format!(".tmp-{}-trunk-{n}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| io_failure(format!("Failed to create {}", tmp.display()), &e))?;
        let mut w = TrunkWriter {
            farm,
            tmp,
            out: std::io::BufWriter::new(file),
            hasher: Sha1::new(),
            len: 0,
            named: false,
        };
        w.add(magic)?;
        w.add(&size.to_le_bytes())?;
        w.add(&slice.to_le_bytes())?;
        Ok(w)
    }

    fn add(&mut self, b: &[u8]) -> Result<(), Error> {
        self.hasher.update(b);
        self.len += b.len() as u64;
        self.out
            .write_all(b)
            .map_err(|e| io_failure(format!("Failed to write {}", self.tmp.display()), &e))
    }

    /// Records that slice (or oid) `idx` is object `h`.
    pub fn push(&mut self, idx: u64, h: &Hash) -> Result<(), Error> {
        self.add(&idx.to_le_bytes())?;
        self.add(h)
    }

    /// Stores the trunk (unless the farm holds it already); returns its name.
    pub fn finish(mut self) -> Result<Hash, Error> {
        self.out
            .flush()
            .map_err(|e| io_failure(format!("Failed to write {}", self.tmp.display()), &e))?;
        let h: Hash = std::mem::take(&mut self.hasher).finalize().into();
        if !self.farm.holds(&h, self.len) {
            self.farm.settle(&self.tmp, &h)?;
            self.named = true;
        }
        Ok(h)
    }
}

impl Drop for TrunkWriter<'_> {
    fn drop(&mut self) {
        if !self.named {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// What went wrong with an object.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    Missing,
    /// Its bytes hash to this instead.
    Corrupt(Hash),
    Unreadable(String),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Missing => write!(f, "missing"),
            Bad::Corrupt(h) => write!(f, "corrupt: its content hashes to {}", hex(h)),
            Bad::Unreadable(e) => write!(f, "unreadable: {e}"),
        }
    }
}

pub struct Farm {
    dir: PathBuf,
}

/// A trunk just opened, with the slice size its header gives.
struct Opened {
    reader: TrunkReader,
    slice: u32,
}

/// An object that could not be read, as what is wrong with it.
fn unreadable(e: std::io::Error) -> Bad {
    match e.kind() {
        ErrorKind::NotFound => Bad::Missing,
        _ => Bad::Unreadable(e.to_string()),
    }
}

fn io_failure(what: impl std::fmt::Display, e: &std::io::Error) -> Error {
    Error::new(format!("{what}: {e}"))
}

/// Takes `how` (LOCK_SH, LOCK_EX) on `f`, waiting for it; the lock goes with `f`.
fn flock(f: &File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on an open descriptor has no memory-safety preconditions.
    if unsafe { libc::flock(f.as_raw_fd(), how) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Farm {
    /// The farm of cluster snapshots in `dir`, made there if the directory is missing or
    /// empty. A directory with other things in it is refused.
    pub fn create(dir: &Path) -> Result<Farm, Error> {
        Farm::create_as(dir, Kind::Snapshots)
    }

    /// The farm of cluster snapshots in `dir`, which must be one.
    pub fn open(dir: &Path) -> Result<Farm, Error> {
        Farm::open_as(dir, Kind::Snapshots)
    }

    /// The farm of `kind` in `dir`, made there if the directory is missing or empty.
    pub fn create_as(dir: &Path, kind: Kind) -> Result<Farm, Error> {
        fs::create_dir_all(dir).map_err(|e| io_failure(format!("Failed to create {}", dir.display()), &e))?;
        if !dir.join(MARKER).exists() {
            let mut entries =
                fs::read_dir(dir).map_err(|e| io_failure(format!("Failed to read {}", dir.display()), &e))?;
            if entries.next().is_some() {
                return Err(Error::new(format!(
                    "{} is not a farm and not empty: give an empty or new directory",
                    dir.display()
                )));
            }
            fs::create_dir(dir.join("objects"))
                .and_then(|()| fs::write(dir.join(MARKER), kind.marker_text()))
                .map_err(|e| io_failure(format!("Failed to make a farm in {}", dir.display()), &e))?;
        }
        Farm::open_as(dir, kind)
    }

    /// The farm of `kind` in `dir`, which must be one.
    pub fn open_as(dir: &Path, kind: Kind) -> Result<Farm, Error> {
        match fs::read_to_string(dir.join(MARKER)) {
            Ok(s) if s == kind.marker_text() => Ok(Farm { dir: dir.to_path_buf() }),
            Ok(s) => Err(Error::new(format!(
                "{} is a farm of another format ({}); this command reads {}",
                dir.display(),
                s.trim(),
                kind.marker_text().trim()
            ))),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::new(format!("{} is not a farm", dir.display()))),
            Err(e) => Err(io_failure(format!("Failed to read {}", dir.display()), &e)),
        }
    }

    pub fn path(&self, h: &Hash) -> PathBuf {
        let name = hex(h);
        self.dir.join("objects").join(&name[..2]).join(&name[2..])
    }

    /// Stores `bytes` unless an object of that name and length exists; returns its name and
    /// whether it was new. (A crash before a save synced can leave a short object under its
    /// name: it is written again, not reused.)
    pub fn put(&self, bytes: &[u8]) -> Result<(Hash, bool), Error> {
        let h = hash_of(bytes);
        if self.holds(&h, bytes.len() as u64) {
            return Ok((h, false));
        }
        let tmp = self.tmp_dir()?.join(format!(".tmp-{}-{}", std::process::id(), hex(&h)));
        fs::write(&tmp, bytes)
            .map_err(|e| io_failure(format!("Failed to write {}", tmp.display()), &e))
            .and_then(|()| self.settle(&tmp, &h))
            .inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })?;
        Ok((h, true))
    }

    /// Whether object `h` is stored whole (`len` bytes).
    fn holds(&self, h: &Hash, len: u64) -> bool {
        fs::metadata(self.path(h)).is_ok_and(|m| m.len() == len)
    }

    /// Where objects are written before they are named: a directory of objects, so that
    /// the leftovers of a crash are swept like any object that nothing names.
    fn tmp_dir(&self) -> Result<PathBuf, Error> {
        let d = self.dir.join("objects").join("00");
        fs::create_dir_all(&d).map_err(|e| io_failure(format!("Failed to create {}", d.display()), &e))?;
        Ok(d)
    }

    /// Names the written file `tmp` as object `h`.
    fn settle(&self, tmp: &Path, h: &Hash) -> Result<(), Error> {
        let path = self.path(h);
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent)
            .and_then(|()| fs::rename(tmp, &path))
            .map_err(|e| io_failure(format!("Failed to store {}", path.display()), &e))
    }

    /// The bytes of object `h`, only if they hash to `h`.
    pub fn get(&self, h: &Hash) -> Result<Vec<u8>, Bad> {
        let b = fs::read(self.path(h)).map_err(unreadable)?;
        let got = hash_of(&b);
        if got != *h {
            return Err(Bad::Corrupt(got));
        }
        Ok(b)
    }

    /// [`Farm::get`] with the failure as a message that names the object and what it is.
    pub fn get_or_fail(&self, h: &Hash, what: impl std::fmt::Display) -> Result<Vec<u8>, Error> {
        self.get(h).map_err(|bad| self.bad_object(h, what, &bad))
    }

    fn bad_object(&self, h: &Hash, what: impl std::fmt::Display, bad: &Bad) -> Error {
        Error::new(format!(
            "farm object {} ({what}, {}) is {bad}",
            hex(h),
            self.path(h).display()
        ))
    }

    /// Every snapshot of the log, oldest first.
    pub fn log(&self) -> Result<Vec<LogEntry>, Error> {
        let text = match fs::read_to_string(self.dir.join(LOG)) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io_failure(
                    format!("Failed to read the log of {}", self.dir.display()),
                    &e,
                ))
            }
        };
        // A last line without its newline is an append cut short: not a snapshot.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .enumerate()
            .map(|(n, line)| {
                parse_log_line(line)
                    .ok_or_else(|| Error::new(format!("{}: line {} of {LOG} is malformed", self.dir.display(), n + 1)))
            })
            .collect()
    }

    /// The snapshot tagged `tag` and its snap object.
    pub fn find(&self, tag: &str) -> Result<(LogEntry, SnapObj), Error> {
        let entry = self
            .log()?
            .into_iter()
            .find(|e| e.tag == tag)
            .ok_or_else(|| Error::new(format!("No cluster snapshot tagged '{tag}' in {}", self.dir.display())))?;
        let snap = self.snap(&entry)?;
        Ok((entry, snap))
    }

    /// The snap object a log entry names, checked.
    pub fn snap<T: serde::de::DeserializeOwned>(&self, entry: &LogEntry) -> Result<T, Error> {
        let tag = &entry.tag;
        let b = self.get_or_fail(&entry.snap, format_args!("snap of '{tag}'"))?;
        serde_json::from_slice(&b).map_err(|e| Error::new(format!("The snap object of '{tag}' is malformed: {e}")))
    }

    /// The trunk of `v`, its bytes checked against its name, ready to be read entry by entry.
    pub fn trunk(&self, v: &VdiObj) -> Result<TrunkReader, Error> {
        let h = parse_hex(&v.trunk)
            .ok_or_else(|| Error::new(format!("VDI {}: '{}' is not a trunk's name", v.name, v.trunk)))?;
        self.slices(&h, &format!("trunk of VDI {}", v.name))
    }

    /// Trunk `h` (`what` it is, for messages), checked, ready to be read entry by entry.
    pub fn slices(&self, h: &Hash, what: &str) -> Result<TrunkReader, Error> {
        let mut t = self.open_trunk(h, what, TRUNK_MAGIC)?;
        if t.slice != SLICE as u32 {
            return Err(Error::new(format!(
                "The {} is malformed: another slice size",
                t.reader.what
            )));
        }
        t.reader.limit = t.reader.size.div_ceil(SLICE);
        Ok(t.reader)
    }

    /// Index `h` (`what` it is, for messages), checked, ready to be read entry by entry.
    pub fn index(&self, h: &Hash, what: &str) -> Result<TrunkReader, Error> {
        let t = self.open_trunk(h, what, INDEX_MAGIC)?;
        // An index's header names no size and no slice ([`TrunkWriter::index`]).
        if t.slice != 0 || t.reader.size != 0 {
            return Err(Error::new(format!(
                "The {} is malformed: its header is not an index's",
                t.reader.what
            )));
        }
        Ok(t.reader)
    }

    fn open_trunk(&self, h: &Hash, what: &str, magic: &[u8; 8]) -> Result<Opened, Error> {
        let mut f = self.checked_file(h).map_err(|bad| self.bad_object(h, what, &bad))?;
        let what = format!("{what} ({})", hex(h));
        let len = f
            .metadata()
            .map_err(|e| io_failure(format!("Failed to read the {what}"), &e))?
            .len();
        let whole = len >= TRUNK_HEADER as u64 && (len - TRUNK_HEADER as u64).is_multiple_of(TRUNK_ENTRY as u64);
        if !whole {
            return Err(Error::new(format!("The {what} is malformed: not a trunk")));
        }
        let mut head = [0u8; TRUNK_HEADER];
        f.read_exact(&mut head)
            .map_err(|e| io_failure(format!("Failed to read the {what}"), &e))?;
        if &head[..8] != magic {
            return Err(Error::new(format!("The {what} is malformed: not a trunk")));
        }
        Ok(Opened {
            slice: u32::from_le_bytes(head[16..20].try_into().unwrap_or_default()),
            reader: TrunkReader {
                input: std::io::BufReader::with_capacity(64 << 10, f),
                what,
                size: u64::from_le_bytes(head[8..16].try_into().unwrap_or_default()),
                limit: u64::MAX,
                left: (len - TRUNK_HEADER as u64) / TRUNK_ENTRY as u64,
                prev: None,
            },
        })
    }

    /// Object `h`'s file, open at its start, once its bytes (read in pieces) hash to `h`.
    fn checked_file(&self, h: &Hash) -> Result<File, Bad> {
        let mut f = File::open(self.path(h)).map_err(unreadable)?;
        let mut hasher = Sha1::new();
        std::io::copy(&mut f, &mut hasher).map_err(unreadable)?;
        let got: Hash = hasher.finalize().into();
        if got != *h {
            return Err(Bad::Corrupt(got));
        }
        f.rewind().map_err(unreadable)?;
        Ok(f)
    }

    /// Holds the farm for a save or a read (`exclusive` false: they may run side by side) or
    /// for a delete or prune (`exclusive`: alone, so that no save's objects are swept before
    /// its log line is written, and no reader finds an object gone). Released when the
    /// returned file is dropped.
    pub fn hold(&self, exclusive: bool) -> Result<File, Error> {
        let held = self.lock(if exclusive { libc::LOCK_EX } else { libc::LOCK_SH })?;
        held.ok_or_else(|| Error::new(format!("{} is busy", self.dir.display())))
    }

    /// Holds the farm alone, like `hold(true)`, if nobody holds it now; `None` if somebody
    /// does (a reader), instead of waiting for it.
    pub fn try_hold_alone(&self) -> Result<Option<File>, Error> {
        self.lock(libc::LOCK_EX | libc::LOCK_NB)
    }

    /// flock(`how`) on the marker file; `None` when LOCK_NB finds it held.
    fn lock(&self, how: libc::c_int) -> Result<Option<File>, Error> {
        let failed = |e: std::io::Error| io_failure(format!("Failed to lock {}", self.dir.display()), &e);
        let f = File::open(self.dir.join(MARKER)).map_err(failed)?;
        match flock(&f, how) {
            Ok(()) => Ok(Some(f)),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    /// Removes the snapshot tagged `tag` from the log (durably); returns its entry.
    pub fn unlog(&self, tag: &str) -> Result<LogEntry, Error> {
        let log = self.log()?;
        let gone = log
            .iter()
            .find(|e| e.tag == tag)
            .cloned()
            .ok_or_else(|| Error::new(format!("No cluster snapshot tagged '{tag}' in {}", self.dir.display())))?;
        let text: String = log
            .iter()
            .filter(|e| e.tag != tag)
            .map(|e| format!("{} {} {} {}\n", e.index, e.time, hex(&e.snap), e.tag))
            .collect();
        let path = self.dir.join(LOG);
        super::write_durably(&path, text.as_bytes())
            .map_err(|e| io_failure(format!("Failed to rewrite {}", path.display()), &e))?;
        Ok(gone)
    }

    /// Deletes every object of `part` not in `keep`, and leftovers of interrupted writes;
    /// returns how many objects went and their bytes.
    pub fn sweep(&self, keep: &HashSet<Hash>, part: Part) -> Result<(u64, u64), Error> {
        let objects = self.dir.join("objects");
        let failed = |e: std::io::Error| io_failure(format!("Failed to sweep {}", objects.display()), &e);
        let (mut count, mut bytes) = (0, 0);
        for sub in fs::read_dir(&objects).map_err(failed)? {
            let sub = sub.map_err(failed)?;
            let prefix = sub.file_name().to_string_lossy().into_owned();
            // A directory not named by a first byte (none is made) goes with the first part.
            if !part.holds(&[u8::from_str_radix(&prefix, 16).unwrap_or(0)]) {
                continue;
            }
            for f in fs::read_dir(sub.path()).map_err(failed)? {
                let f = f.map_err(failed)?;
                let name = format!("{prefix}{}", f.file_name().to_string_lossy());
                if parse_hex(&name).is_some_and(|h| keep.contains(&h)) {
                    continue;
                }
                let len = f.metadata().map_err(failed)?.len();
                fs::remove_file(f.path()).map_err(failed)?;
                count += 1;
                bytes += len;
            }
        }
        Ok((count, bytes))
    }

    /// Bytes the farm's objects take (their lengths, temporary files included).
    pub fn disk_bytes(&self) -> Result<u64, Error> {
        let objects = self.dir.join("objects");
        let failed = |e: std::io::Error| io_failure(format!("Failed to read {}", objects.display()), &e);
        let mut total = 0;
        for sub in fs::read_dir(&objects).map_err(failed)? {
            for f in fs::read_dir(sub.map_err(failed)?.path()).map_err(failed)? {
                total += f.map_err(failed)?.metadata().map_err(failed)?.len();
            }
        }
        Ok(total)
    }

    /// Removes every object that `each_name` does not name (it calls its argument with each
    /// name the snapshots left use): in one sweep with the set `first` holds, else a share
    /// of the hash space at a time, calling `each_name` again for each share, so that no
    /// share's set passes `limit`. Returns the objects removed and their bytes.
    pub fn sweep_unnamed<E: From<Error>>(
        &self,
        first: Keep,
        limit: usize,
        mut each_name: impl FnMut(&mut dyn FnMut(Hash)) -> Result<(), E>,
    ) -> Result<(u64, u64), E> {
        let names = match first {
            Keep::All(keep) => return Ok(self.sweep(&keep, Part::WHOLE)?),
            Keep::TooMany(names) => names,
        };
        let of = names.div_ceil(limit.max(1)).clamp(2, 256);
        let (mut objects, mut bytes) = (0, 0);
        for index in 0..of {
            let part = Part { index, of };
            let mut keep = HashSet::new();
            each_name(&mut |h| {
                if part.holds(&h) {
                    keep.insert(h);
                }
            })?;
            let (o, b) = self.sweep(&keep, part)?;
            objects += o;
            bytes += b;
        }
        Ok((objects, bytes))
    }

    /// Makes everything stored so far durable (one syncfs of the farm's file system).
    pub fn sync(&self) -> Result<(), Error> {
        let d = File::open(&self.dir).map_err(|e| io_failure(format!("Failed to open {}", self.dir.display()), &e))?;
        // SAFETY: syncfs only reads the descriptor, which `d` keeps open.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io_failure(
                format!("Failed to sync {}", self.dir.display()),
                &std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Appends a snapshot to the log, durably; returns its index. Under an exclusive lock
    /// of the log, so that two saves into one farm neither share an index nor a tag.
    pub fn append(&self, tag: &str, time: u64, snap: &Hash) -> Result<u32, Error> {
        let failed =
            |e: std::io::Error| io_failure(format!("Failed to append to the log of {}", self.dir.display()), &e);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LOG))
            .map_err(failed)?;
        flock(&f, libc::LOCK_EX).map_err(failed)?;
        let log = self.log()?;
        if log.iter().any(|e| e.tag == tag) {
            return Err(Error::new(format!(
                "A cluster snapshot tagged '{tag}' was saved in {} meanwhile",
                self.dir.display()
            )));
        }
        let index = log.last().map_or(Some(1), |e| e.index.checked_add(1));
        let index = index.ok_or_else(|| Error::new(format!("The log of {} is full", self.dir.display())))?;
        // An append cut short (a crash, a full disk) left a partial last line: drop it.
        let text = fs::read(self.dir.join(LOG)).map_err(failed)?;
        let before = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) as u64;
        if before < text.len() as u64 {
            f.set_len(before).map_err(failed)?;
        }
        let appended = f
            .write_all(format!("{index} {time} {} {tag}\n", hex(snap)).as_bytes())
            .and_then(|()| f.sync_all());
        if let Err(e) = appended {
            // Leave no partial line for the next append to join.
            let _ = f.set_len(before);
            return Err(failed(e));
        }
        Ok(index)
    }
}

fn parse_log_line(line: &str) -> Option<LogEntry> {
    let mut it = line.splitn(4, ' ');
    Some(LogEntry {
        index: it.next()?.parse().ok()?,
        time: it.next()?.parse().ok()?,
        snap: parse_hex(it.next()?)?,
        tag: it.next().filter(|t| !t.is_empty())?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trunk of a VDI of `size` bytes with entries `slices`, as a [`TrunkWriter`] stores it:
    /// the VDI that names it.
    fn stored(farm: &Farm, size: u64, slices: &[(u64, Hash)]) -> VdiObj {
        let mut w = TrunkWriter::new(farm, size).expect("writer");
        for (idx, h) in slices {
            w.push(*idx, h).expect("push");
        }
        named(&w.finish().expect("finish"), size)
    }

    fn named(trunk: &Hash, size: u64) -> VdiObj {
        VdiObj {
            name: "v".into(),
            size,
            copies: 1,
            copy_policy: 0,
            block_size_shift: 22,
            trunk: hex(trunk),
            slices: 0,
            bytes: 0,
        }
    }

    /// The entries of `v`'s trunk, or the first failure's message.
    fn read_back(farm: &Farm, v: &VdiObj) -> Result<Vec<(u64, Hash)>, String> {
        let t = farm.trunk(v).map_err(|f| f.msg)?;
        assert_eq!(t.size, v.size, "the trunk's VDI size");
        t.collect::<Result<_, _>>().map_err(|f| f.msg)
    }

    #[test]
    fn trunks_round_trip_and_malformed_ones_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let farm = Farm::create(d.path()).expect("farm");
        let size = 3 * SLICE + 10;
        let slices = vec![(0, [1; 20]), (3, [2; 20])];
        let v = stored(&farm, size, &slices);
        let h = parse_hex(&v.trunk).expect("a name");
        let b = fs::read(farm.path(&h)).expect("the trunk");
        assert_eq!(hash_of(&b), h, "a trunk is named by its bytes");
        assert_eq!(read_back(&farm, &v), Ok(slices.clone()));
        assert_eq!(stored(&farm, size, &slices), v, "the same trunk again: the same name");
        assert_eq!(fs::read(farm.path(&h)).expect("the trunk"), b, "and the same bytes");

        let malformed = |v: &VdiObj, why: &str| {
            let e = read_back(&farm, v).expect_err(why);
            assert!(e.contains("malformed") && e.contains(why), "{e}");
        };
        let (cut, _) = farm.put(&b[..b.len() - 1]).expect("a trunk cut in an entry");
        malformed(&named(&cut, size), "not a trunk");
        let mut reversed = slices.clone();
        reversed.reverse();
        malformed(&stored(&farm, size, &reversed), "out of order");
        let past_end = [slices.as_slice(), &[(4, [3; 20])]].concat();
        malformed(&stored(&farm, size, &past_end), "past the end");

        let mut flipped = b.clone();
        flipped[TRUNK_HEADER] ^= 1;
        fs::write(farm.path(&h), &flipped).expect("flip a bit");
        let e = read_back(&farm, &v).expect_err("a corrupt trunk");
        assert!(e.contains(&v.trunk) && e.contains("corrupt"), "{e}");
        let left: Vec<_> = fs::read_dir(d.path().join("objects/00"))
            .expect("the temporary directory")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n.to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn an_index_is_read_back_and_other_headers_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let farm = Farm::create(d.path()).expect("farm");
        let entries = vec![(7, [1; 20]), (9, [2; 20])];
        let fill = |mut w: TrunkWriter| {
            for (idx, h) in &entries {
                w.push(*idx, h).expect("push");
            }
            w.finish().expect("finish")
        };
        let read = |h: &Hash| -> Result<Vec<(u64, Hash)>, String> {
            let t = farm.index(h, "index").map_err(|f| f.msg)?;
            t.collect::<Result<_, _>>().map_err(|f| f.msg)
        };
        let index = fill(TrunkWriter::index(&farm).expect("writer"));
        assert_eq!(read(&index), Ok(entries.clone()));
        for (magic, size, slice, why) in [
            (INDEX_MAGIC, 5, 0, "not an index's"),
            (INDEX_MAGIC, 0, SLICE as u32, "not an index's"),
            (TRUNK_MAGIC, 0, 0, "not a trunk"),
        ] {
            let other = fill(TrunkWriter::start(&farm, magic, size, slice).expect("writer"));
            let e = read(&other).expect_err(why);
            assert!(e.contains("malformed") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn objects_are_stored_once_and_checked_on_every_read() {
        let d = tempfile::tempdir().expect("tempdir");
        let farm = Farm::create(d.path()).expect("farm");
        let (h, new) = farm.put(b"slice").expect("put");
        assert!(new);
        assert_eq!(farm.put(b"slice").expect("put again"), (h, false));
        assert_eq!(farm.get(&h).expect("get"), b"slice");
        fs::write(farm.path(&h), b"sl").expect("cut short");
        assert_eq!(farm.put(b"slice").expect("put over a short copy"), (h, true));
        assert_eq!(farm.get(&h).expect("get"), b"slice");
        fs::write(farm.path(&h), b"slicf").expect("flip");
        assert_eq!(farm.get(&h), Err(Bad::Corrupt(hash_of(b"slicf"))));
        fs::remove_file(farm.path(&h)).expect("rm");
        assert_eq!(farm.get(&h), Err(Bad::Missing));
    }

    #[test]
    fn the_log_keeps_tags_with_spaces_and_numbers_snapshots() {
        let d = tempfile::tempdir().expect("tempdir");
        let farm = Farm::create(d.path()).expect("farm");
        assert_eq!(farm.append("before upgrade", 7, &[9; 20]).expect("append"), 1);
        assert_eq!(farm.append("b", 8, &[10; 20]).expect("append"), 2);
        assert!(farm.append("b", 9, &[11; 20]).is_err(), "a tag once");
        // An append cut short is not a snapshot, and the next append replaces it.
        let mut f = OpenOptions::new().append(true).open(d.path().join(LOG)).expect("log");
        f.write_all(b"3 10 abc").expect("a partial line");
        assert_eq!(farm.log().expect("log").len(), 2);
        assert_eq!(farm.append("c", 11, &[12; 20]).expect("append"), 3);
        assert_eq!(farm.log().expect("log")[2].tag, "c");
        let log = farm.log().expect("log");
        assert_eq!(log[0].tag, "before upgrade");
        assert_eq!((log[1].index, log[1].time, log[1].snap), (2, 8, [10; 20]));
        assert!(Farm::open(d.path()).is_ok());
        let other = tempfile::tempdir().expect("tempdir");
        fs::write(other.path().join("x"), b"x").expect("write");
        assert!(Farm::create(other.path()).is_err(), "a directory with other files");
        assert!(Farm::open(other.path()).is_err());
    }
}
