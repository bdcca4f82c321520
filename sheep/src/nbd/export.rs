//! What the NBD server exports: every VDI by name, snapshots as `NAME@ID` or `NAME@TAG`.
//!
//! All connections to one export share one [`Volume`] (one object map, one set of creation
//! locks), so several connections of one client (multi-conn) see each other's writes, and a
//! flush on any of them covers the writes the others had acknowledged. A writable export
//! holds the VDI's write lock from its first connection to its last, like a writable sheepfs
//! mount: a second writer elsewhere in the cluster is refused.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::inode::InodeHeader;
use protocol::opcode::flags;
use protocol::{Client, ResultCode, Vid};
use tokio::sync::Mutex;
use volume::{FsError, FsResult, Gateway, Volume, DEFAULT_CHUNK};

use super::local::InProcess;

use crate::node::Sheep;

/// An open export.
pub struct Export {
    pub name: String,
    pub volume: Volume<InProcess>,
    /// The lock holder id, for a writable export.
    lock: Option<u64>,
    sheep: Arc<Sheep>,
}

/// The exports in use on this gateway, with their connection counts.
pub struct Exports {
    sheep: Arc<Sheep>,
    io: Arc<InProcess>,
    open: Mutex<HashMap<String, Opened>>,
}

struct Opened {
    export: Arc<Export>,
    connections: usize,
}

/// What a client learns of an export before it opens it.
pub struct Description {
    pub size: u64,
    pub read_only: bool,
}

impl Exports {
    /// Exports served by `sheep`, whose object I/O it serves in process (through its object
    /// cache if it runs one); lookups go to its client port at `gateway`.
    /// The sheep whose VDIs these are.
    pub fn sheep(&self) -> &Arc<Sheep> {
        &self.sheep
    }

    pub fn new(sheep: Arc<Sheep>, gateway: std::net::SocketAddr) -> Exports {
        let object_flags = if sheep.cache.is_some() { flags::CACHE } else { 0 };
        let rare = Gateway::new(Client::new(gateway), 0);
        Exports {
            io: Arc::new(InProcess::new(sheep.clone(), object_flags, rare)),
            sheep,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self) -> &Client {
        self.io.rare().client()
    }

    /// Every export: working VDIs by name, snapshots as `NAME@ID`, each with a description.
    pub async fn list(&self) -> FsResult<Vec<(String, String)>> {
        let headers = self
            .client()
            .vdi_headers()
            .await
            .map_err(|e| FsError::cluster("VDI listing", &e))?;
        Ok(headers
            .into_iter()
            .map(|h| {
                let size = h.vdi_size;
                if h.is_snapshot() {
                    let tag = if h.tag.is_empty() {
                        String::new()
                    } else {
                        format!(", tag {}", h.tag)
                    };
                    (
                        format!("{}@{}", h.name, h.snap_id),
                        format!("snapshot {} of {}{tag}, {size} bytes, read-only", h.snap_id, h.name),
                    )
                } else {
                    (h.name.clone(), format!("VDI {}, {size} bytes", h.name))
                }
            })
            .collect())
    }

    /// Size and mode of export `name`, without opening it. ENOENT if there is none.
    pub async fn describe(&self, name: &str) -> FsResult<Description> {
        let (_, snap, h) = self.resolve(name).await?;
        Ok(Description {
            size: h.vdi_size,
            read_only: snap.is_some(),
        })
    }

    /// The VDI name, snapshot id and inode header behind export `name`: `NAME`, `NAME@ID`
    /// or `NAME@TAG`.
    async fn resolve(&self, name: &str) -> FsResult<(String, Option<u32>, InodeHeader)> {
        let (vdi, tag, snapid) = match name.rsplit_once('@') {
            None => (name, None, 0),
            Some((_, "0")) => return Err(FsError::not_found(name)),
            Some((vdi, which)) => match which.parse::<u32>() {
                Ok(id) => (vdi, None, id),
                Err(_) => (vdi, Some(which), 0),
            },
        };
        let failed = |what: &str, e| FsError::cluster(&format!("{what} of export {name}"), &e);
        let info = self
            .client()
            .vdi_info(vdi, tag, snapid)
            .await
            .map_err(|e| failed("lookup", e))?;
        let vid = Vid::new(info.vid).ok_or_else(|| FsError::new(libc::EIO, "lookup returned a bad vid"))?;
        let h = self.client().inode_header(vid).await.map_err(|e| failed("inode", e))?;
        // A snapshot id or tag names a snapshot, never the working VDI.
        if (tag.is_some() || snapid != 0) && !h.is_snapshot() {
            return Err(FsError::not_found(name));
        }
        let snap = h.is_snapshot().then_some(h.snap_id);
        Ok((vdi.to_string(), snap, h))
    }

    /// Opens export `name` for one more connection, until the returned [`Attached`] is
    /// dropped. The first connection to a writable export takes the VDI's write lock: EBUSY
    /// while another client holds it.
    pub async fn open(self: &Arc<Self>, name: &str) -> FsResult<Attached> {
        let this = self.clone();
        let name = name.to_string();
        // In a task of its own: a handshake abandoned meanwhile must not leave a lock or a
        // connection count behind (an abandoned result is dropped, and detaches).
        tokio::spawn(async move { this.attach(&name).await })
            .await
            .map_err(|e| FsError::new(libc::EIO, format!("opening the export failed: {e}")))?
    }

    async fn attach(self: Arc<Self>, name: &str) -> FsResult<Attached> {
        let mut open = self.open.lock().await;
        if let Some(o) = open.get_mut(name) {
            o.connections += 1;
            let export = o.export.clone();
            drop(open);
            return Ok(Attached { exports: self, export });
        }
        let (vdi, snap, _) = self.resolve(name).await?;
        let volume = Volume::open(self.io.clone(), &vdi, snap, DEFAULT_CHUNK).await?;
        let lock = if volume.read_only() {
            None
        } else {
            let holder = crate::server::next_connection();
            match crate::vdi::lock(&self.sheep, volume.vid().await.get(), holder).await {
                Ok(()) => Some(holder),
                Err(ResultCode::VDI_LOCKED) => {
                    return Err(FsError::new(
                        libc::EBUSY,
                        format!("VDI {vdi} is open for writing by another client"),
                    ))
                }
                Err(code) => return Err(FsError::new(libc::EIO, format!("lock of VDI {vdi}: {code}"))),
            }
        };
        tracing::info!(export = name, writable = lock.is_some(), "NBD export opened");
        let export = Arc::new(Export {
            name: name.to_string(),
            volume,
            lock,
            sheep: self.sheep.clone(),
        });
        open.insert(
            name.to_string(),
            Opened {
                export: export.clone(),
                connections: 1,
            },
        );
        drop(open);
        Ok(Attached { exports: self, export })
    }

    /// One connection to export `name` ended. After the last, the VDI's lock is released
    /// (which pushes what the object cache holds of it).
    async fn close(&self, name: &str) {
        let mut open = self.open.lock().await;
        let Some(o) = open.get_mut(name) else {
            return;
        };
        o.connections -= 1;
        if o.connections > 0 {
            return;
        }
        if let Some(o) = open.remove(name) {
            if let Some(holder) = o.export.lock {
                crate::vdi::release_connection(&self.sheep, holder).await;
            }
            tracing::info!(export = name, "NBD export closed");
        }
    }
}

/// One connection's hold on an export; dropping it detaches.
pub struct Attached {
    exports: Arc<Exports>,
    export: Arc<Export>,
}

impl std::ops::Deref for Attached {
    type Target = Export;

    fn deref(&self) -> &Export {
        &self.export
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let exports = self.exports.clone();
        let name = self.export.name.clone();
        tokio::spawn(async move { exports.close(&name).await });
    }
}

impl Export {
    /// Before a change: the VDI's lock is still this export's. It is taken again if the
    /// cluster dropped it (this gateway left and rejoined) and nobody else took it; if
    /// someone did, the change fails.
    pub async fn hold_lock(&self) -> FsResult<()> {
        let Some(holder) = self.lock else {
            return Ok(());
        };
        let vid = self.volume.vid().await.get();
        // Snapshotted by another client: the lock moved with the name to the new working
        // VDI, which the volume loads when the change meets the snapshot's read-only objects.
        if self.sheep.state().vdis.get(&vid).is_some_and(|v| v.snapshot) {
            return Ok(());
        }
        match crate::vdi::lock(&self.sheep, vid, holder).await {
            Ok(()) => Ok(()),
            Err(ResultCode::VDI_LOCKED) => Err(FsError::new(
                libc::EIO,
                format!(
                    "{}: the VDI lock was lost to another client; writes are refused",
                    self.name
                ),
            )),
            Err(code) => Err(FsError::new(libc::EIO, format!("{}: lock: {code}", self.name))),
        }
    }
}
