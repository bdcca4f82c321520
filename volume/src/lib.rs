//! A VDI's bytes as one address space over object requests: a range is cut into pieces that
//! never cross an object (`span`), a first write creates the object (copying a snapshot's,
//! PROTOCOL.md 5.12) and points the inode at it, and errors carry the errno that a client
//! (a FUSE reply, an NBD reply) passes on. sheepfs serves its volume files with it, and the
//! gateway sheep its NBD exports.

pub mod error;
mod gateway;
pub mod span;
mod volume;

use std::future::Future;

use protocol::inode::Inode;
use protocol::requests::{NewVdi, VdiInfo};
use protocol::{Oid, Vid};

pub use error::{FsError, FsResult};
pub use gateway::Gateway;
pub use volume::{Volume, DEFAULT_CHUNK};

/// The object requests a [`Volume`] is made of, answered by a gateway sheep (or a double in
/// tests).
pub trait ObjectIo: Send + Sync + 'static {
    /// Reads `out.len()` bytes of `oid` at `offset` into `out`; returns how many the
    /// gateway answered (fewer only from a faulty one).
    fn read_obj(&self, oid: Oid, offset: u32, out: &mut [u8]) -> impl Future<Output = FsResult<usize>> + Send;
    fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> impl Future<Output = FsResult<()>> + Send;
    fn create_obj(
        &self,
        oid: Oid,
        cow: Option<Oid>,
        offset: u32,
        data: &[u8],
    ) -> impl Future<Output = FsResult<()>> + Send;
    /// Deletes `oid` on every replica; a missing object is not an error.
    fn remove_obj(&self, oid: Oid) -> impl Future<Output = FsResult<()>> + Send;
    /// Looks a working VDI (`snapid` 0) or a snapshot up by name. ENOENT if there is none.
    fn vdi_info(&self, name: &str, snapid: u32) -> impl Future<Output = FsResult<VdiInfo>> + Send;
    fn inode(&self, vid: Vid) -> impl Future<Output = FsResult<Inode>> + Send;
    fn new_vdi(&self, name: &str, v: NewVdi) -> impl Future<Output = FsResult<VdiInfo>> + Send;
    fn snapshot(&self, name: &str, tag: &str) -> impl Future<Output = FsResult<VdiInfo>> + Send;
    fn set_vdi_size(&self, vid: Vid, size: u64) -> impl Future<Output = FsResult<()>> + Send;
    /// Makes every acknowledged write durable on every replica.
    fn flush(&self, vid: Vid) -> impl Future<Output = FsResult<()>> + Send;
}
