//! [`ObjectIo`] inside the gateway. An export's object requests go straight to the dispatch
//! that serves this sheep's network clients (`ops::handle`: the same admission, gateway and
//! object cache), without a trip through the loopback socket. VDI lookups and the other
//! rare requests go through the sheep's client port.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use protocol::inode::Inode;
use protocol::opcode::op_name;
use protocol::requests::{object, NewVdi, VdiInfo};
use protocol::{ClientError, Oid, RequestHeader, ResultCode, Vid};
use volume::{FsError, FsResult, Gateway, ObjectIo};

use crate::node::Sheep;
use crate::store::aligned::Aligned;

pub struct InProcess {
    sheep: Arc<Sheep>,
    /// The client id requests carry, as a network connection's would.
    conn: u64,
    /// Flags every object read and write carries (`flags::CACHE`, or none).
    object_flags: u16,
    /// For everything but object I/O.
    rare: Gateway,
}

impl InProcess {
    pub fn new(sheep: Arc<Sheep>, object_flags: u16, rare: Gateway) -> InProcess {
        InProcess {
            sheep,
            conn: crate::server::next_connection(),
            object_flags,
            rare,
        }
    }

    pub fn rare(&self) -> &Gateway {
        &self.rare
    }

    /// Serves `req` with `payload` here: the reply's data, or its result code.
    async fn serve(&self, req: &RequestHeader, payload: Bytes) -> Result<Vec<u8>, ResultCode> {
        let (rsp, data) = crate::ops::handle(&self.sheep, self.conn, req, payload).await;
        match rsp.result_code() {
            ResultCode::SUCCESS => Ok(data),
            code => Err(code),
        }
    }

    /// [`InProcess::serve`], with a failure described as one of `what`.
    async fn call(&self, req: RequestHeader, payload: Bytes, what: impl FnOnce() -> String) -> FsResult<Vec<u8>> {
        self.serve(&req, payload).await.map_err(|result| {
            let e = ClientError::Result {
                addr: self.sheep.me.addr,
                op: op_name(req.opcode),
                result,
            };
            FsError::cluster(&what(), &e)
        })
    }
}

/// A payload in page-aligned memory, as the server reads them, so that a direct write
/// takes it as it is.
fn payload(data: &[u8]) -> Bytes {
    let mut a = Aligned::with_capacity(data.len());
    a.put_slice(data);
    a.freeze()
}

impl ObjectIo for InProcess {
    async fn read_obj(&self, oid: Oid, offset: u32, out: &mut [u8]) -> FsResult<usize> {
        let req = object::read(oid, offset, out.len() as u32, self.object_flags);
        let data = self.call(req, Bytes::new(), || format!("read of object {oid}")).await?;
        let n = data.len().min(out.len());
        out[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    async fn write_obj(&self, oid: Oid, offset: u32, data: &[u8]) -> FsResult<()> {
        let req = object::write(oid, offset, data.len() as u32, self.object_flags);
        self.call(req, payload(data), || format!("write of object {oid}"))
            .await
            .map(drop)
    }

    async fn create_obj(&self, oid: Oid, cow: Option<Oid>, offset: u32, data: &[u8]) -> FsResult<()> {
        let req = object::create(oid, cow, offset, data.len() as u32);
        self.call(req, payload(data), || format!("create of object {oid}"))
            .await
            .map(drop)
    }

    async fn remove_obj(&self, oid: Oid) -> FsResult<()> {
        match self.serve(&object::remove(oid), Bytes::new()).await {
            Ok(_) | Err(ResultCode::NO_OBJ) => Ok(()),
            Err(code) => Err(FsError::new(libc::EIO, format!("removal of object {oid}: {code}"))),
        }
    }

    async fn vdi_info(&self, name: &str, snapid: u32) -> FsResult<VdiInfo> {
        self.rare.vdi_info(name, snapid).await
    }

    async fn inode(&self, vid: Vid) -> FsResult<Inode> {
        self.rare.inode(vid).await
    }

    async fn new_vdi(&self, name: &str, v: NewVdi) -> FsResult<VdiInfo> {
        self.rare.new_vdi(name, v).await
    }

    async fn snapshot(&self, name: &str, tag: &str) -> FsResult<VdiInfo> {
        self.rare.snapshot(name, tag).await
    }

    async fn set_vdi_size(&self, vid: Vid, size: u64) -> FsResult<()> {
        self.rare.set_vdi_size(vid, size).await
    }

    async fn flush(&self, vid: Vid) -> FsResult<()> {
        self.call(object::flush(vid), Bytes::new(), || format!("flush of VDI {vid}"))
            .await
            .map(drop)
    }
}
