//! [`ObjectIo`] through one gateway sheep's client connections, with no retries: the
//! gateway's own answer, error or not, is the answer.

use protocol::inode::Inode;
use protocol::requests::{NewVdi, VdiInfo};
use protocol::{Client, ClientError, Oid, Vid};

use crate::{FsError, FsResult, ObjectIo};

pub struct Gateway {
    client: Client,
    /// Flags every object read and write carries (`flags::CACHE`, or none).
    object_flags: u16,
}

impl Gateway {
    pub fn new(client: Client, object_flags: u16) -> Gateway {
        Gateway { client, object_flags }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn failed(what: impl FnOnce() -> String) -> impl FnOnce(ClientError) -> FsError {
    move |e| FsError::cluster(&what(), &e)
}

impl ObjectIo for Gateway {
    async fn read_obj(&self, oid: Oid, offset: u32, out: &mut [u8]) -> FsResult<usize> {
        self.client
            .read_obj_into_with(oid, offset, out, self.object_flags)
            .await
            .map_err(failed(|| format!("read of object {oid}")))
    }

    async fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> FsResult<()> {
        self.client
            .write_obj_with(oid, offset, data, self.object_flags)
            .await
            .map_err(failed(|| format!("write of object {oid}")))
    }

    async fn create_obj(&self, oid: Oid, cow: Option<Oid>, offset: u32, data: &[u8]) -> FsResult<()> {
        self.client
            .create_obj(oid, cow, offset, data)
            .await
            .map_err(failed(|| format!("create of object {oid}")))
    }

    async fn remove_obj(&self, oid: Oid) -> FsResult<()> {
        self.client
            .remove_obj(oid)
            .await
            .map_err(failed(|| format!("removal of object {oid}")))
    }

    async fn vdi_info(&self, name: &str, snapid: u32) -> FsResult<VdiInfo> {
        self.client
            .vdi_info(name, None, snapid)
            .await
            .map_err(failed(|| format!("lookup of VDI {name}")))
    }

    async fn inode(&self, vid: Vid) -> FsResult<Inode> {
        self.client
            .inode(vid)
            .await
            .map_err(failed(|| format!("read of inode {vid}")))
    }

    async fn new_vdi(&self, name: &str, v: NewVdi) -> FsResult<VdiInfo> {
        self.client
            .new_vdi(name, v)
            .await
            .map_err(failed(|| format!("creation of VDI {name}")))
    }

    async fn snapshot(&self, name: &str, tag: &str) -> FsResult<VdiInfo> {
        self.client
            .snapshot(name, tag)
            .await
            .map_err(failed(|| format!("snapshot of VDI {name}")))
    }

    async fn set_vdi_size(&self, vid: Vid, size: u64) -> FsResult<()> {
        self.client
            .set_vdi_size(vid, size)
            .await
            .map_err(failed(|| format!("resize of VDI {vid}")))
    }

    async fn flush(&self, vid: Vid) -> FsResult<()> {
        self.client
            .flush_vdi(vid)
            .await
            .map_err(failed(|| format!("flush of VDI {vid}")))
    }
}
