//! The 48-byte request and response headers (PROTOCOL.md sections 1.2-1.4).
//!
//! Fixed fields are struct members; the 32-byte per-op union is kept as bytes and read or
//! written through typed views ([`ObjArgs`], [`VdiArgs`], [`ClusterArgs`]) so that a field sits
//! at exactly one offset in this file.

use crate::bytes::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Size of either header on the wire.
pub const HEADER_SIZE: usize = 48;

/// A request header (`sd_req`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeader {
    pub proto_ver: u8,
    pub opcode: u8,
    pub flags: u16,
    pub epoch: u32,
    pub id: u32,
    pub data_length: u32,
    /// Bytes 16..48: the per-op union.
    pub args: [u8; 32],
}

/// A response header (`sd_rsp`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    pub proto_ver: u8,
    pub opcode: u8,
    pub flags: u16,
    pub epoch: u32,
    pub id: u32,
    pub data_length: u32,
    pub result: u32,
    /// Bytes 20..48: the rest of the reply union.
    pub rest: [u8; 28],
}

impl RequestHeader {
    pub fn new(opcode: u8) -> RequestHeader {
        RequestHeader {
            proto_ver: crate::opcode::proto_ver_for(opcode),
            opcode,
            ..RequestHeader::default()
        }
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0] = self.proto_ver;
        b[1] = self.opcode;
        put_u16(&mut b, 2, self.flags);
        put_u32(&mut b, 4, self.epoch);
        put_u32(&mut b, 8, self.id);
        put_u32(&mut b, 12, self.data_length);
        b[16..].copy_from_slice(&self.args);
        b
    }

    pub fn decode(b: &[u8; HEADER_SIZE]) -> RequestHeader {
        let mut args = [0u8; 32];
        args.copy_from_slice(&b[16..]);
        RequestHeader {
            proto_ver: b[0],
            opcode: b[1],
            flags: get_u16(b, 2),
            epoch: get_u32(b, 4),
            id: get_u32(b, 8),
            data_length: get_u32(b, 12),
            args,
        }
    }

    /// Bytes of payload that follow this header on the wire (PROTOCOL.md 1.5).
    pub fn payload_len(&self) -> u32 {
        if self.flags & crate::opcode::flags::WRITE != 0 {
            self.data_length
        } else {
            0
        }
    }

    /// The largest reply payload the client will read.
    pub fn reply_capacity(&self) -> u32 {
        use crate::opcode::flags::{PIGGYBACK, WRITE};
        if self.flags & WRITE == 0 || self.flags & PIGGYBACK != 0 {
            self.data_length
        } else {
            0
        }
    }

    pub fn obj(&self) -> ObjArgs {
        ObjArgs::decode(&self.args)
    }

    pub fn set_obj(&mut self, a: &ObjArgs) {
        a.encode(&mut self.args)
    }

    /// REPAIR_REPLICA's `forw` variant: the object, and the node to copy it from.
    pub fn forw(&self) -> (u64, std::net::SocketAddr) {
        let oid = u64::from_le_bytes(self.args[0..8].try_into().unwrap_or_default());
        let ip = crate::node::addr_from_bytes(&self.args[8..24]);
        let port = u16::from_le_bytes([self.args[24], self.args[25]]);
        (oid, std::net::SocketAddr::new(ip, port))
    }

    pub fn set_forw(&mut self, oid: u64, from: std::net::SocketAddr) {
        self.args[0..8].copy_from_slice(&oid.to_le_bytes());
        self.args[8..24].copy_from_slice(&crate::node::addr_bytes(from.ip()));
        self.args[24..26].copy_from_slice(&from.port().to_le_bytes());
    }

    pub fn vdi(&self) -> VdiArgs {
        VdiArgs::decode(&self.args)
    }

    pub fn set_vdi(&mut self, a: &VdiArgs) {
        a.encode(&mut self.args)
    }

    pub fn cluster(&self) -> ClusterArgs {
        ClusterArgs::decode(&self.args)
    }

    pub fn set_cluster(&mut self, a: &ClusterArgs) {
        a.encode(&mut self.args)
    }
}

/// Object I/O arguments (`obj` union, request offsets 16..48).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjArgs {
    pub oid: u64,
    pub cow_oid: u64,
    pub copies: u8,
    pub copy_policy: u8,
    pub ec_index: u8,
    pub tgt_epoch: u32,
    pub offset: u32,
}

impl ObjArgs {
    fn decode(a: &[u8; 32]) -> ObjArgs {
        ObjArgs {
            oid: get_u64(a, 0),
            cow_oid: get_u64(a, 8),
            copies: a[16],
            copy_policy: a[17],
            ec_index: a[18],
            tgt_epoch: get_u32(a, 20),
            offset: get_u32(a, 24),
        }
    }

    fn encode(&self, a: &mut [u8; 32]) {
        *a = [0; 32];
        put_u64(a, 0, self.oid);
        put_u64(a, 8, self.cow_oid);
        a[16] = self.copies;
        a[17] = self.copy_policy;
        a[18] = self.ec_index;
        put_u32(a, 20, self.tgt_epoch);
        put_u32(a, 24, self.offset);
    }
}

/// VDI arguments (`vdi` union).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdiArgs {
    pub vdi_size: u64,
    pub base_vdi_id: u32,
    pub copies: u8,
    pub copy_policy: u8,
    pub store_policy: u8,
    pub block_size_shift: u8,
    pub snapid: u32,
    pub lock_type: u32,
}

impl VdiArgs {
    fn decode(a: &[u8; 32]) -> VdiArgs {
        VdiArgs {
            vdi_size: get_u64(a, 0),
            base_vdi_id: get_u32(a, 8),
            copies: a[12],
            copy_policy: a[13],
            store_policy: a[14],
            block_size_shift: a[15],
            snapid: get_u32(a, 16),
            lock_type: get_u32(a, 20),
        }
    }

    fn encode(&self, a: &mut [u8; 32]) {
        *a = [0; 32];
        put_u64(a, 0, self.vdi_size);
        put_u32(a, 8, self.base_vdi_id);
        a[12] = self.copies;
        a[13] = self.copy_policy;
        a[14] = self.store_policy;
        a[15] = self.block_size_shift;
        put_u32(a, 16, self.snapid);
        put_u32(a, 20, self.lock_type);
    }
}

/// Cluster arguments (`cluster` union: MAKE_FS, STAT_CLUSTER).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterArgs {
    pub ctime: u64,
    pub copies: u8,
    pub copy_policy: u8,
    pub flags: u16,
    pub nodes_nr: u32,
    pub block_size_shift: u8,
}

impl ClusterArgs {
    fn decode(a: &[u8; 32]) -> ClusterArgs {
        ClusterArgs {
            ctime: get_u64(a, 8),
            copies: a[16],
            copy_policy: a[17],
            flags: get_u16(a, 18),
            nodes_nr: get_u32(a, 24),
            block_size_shift: a[28],
        }
    }

    fn encode(&self, a: &mut [u8; 32]) {
        *a = [0; 32];
        put_u64(a, 8, self.ctime);
        a[16] = self.copies;
        a[17] = self.copy_policy;
        put_u16(a, 18, self.flags);
        put_u32(a, 24, self.nodes_nr);
        a[28] = self.block_size_shift;
    }
}

impl ResponseHeader {
    /// A reply to `req` carrying `result`, with the request's opcode and id echoed.
    pub fn reply_to(req: &RequestHeader, result: crate::ResultCode, epoch: u32) -> ResponseHeader {
        ResponseHeader {
            opcode: req.opcode,
            id: req.id,
            epoch,
            result: result.0,
            ..ResponseHeader::default()
        }
    }

    pub fn result_code(&self) -> crate::ResultCode {
        crate::ResultCode(self.result)
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0] = self.proto_ver;
        b[1] = self.opcode;
        put_u16(&mut b, 2, self.flags);
        put_u32(&mut b, 4, self.epoch);
        put_u32(&mut b, 8, self.id);
        put_u32(&mut b, 12, self.data_length);
        put_u32(&mut b, 16, self.result);
        b[20..].copy_from_slice(&self.rest);
        b
    }

    pub fn decode(b: &[u8; HEADER_SIZE]) -> ResponseHeader {
        let mut rest = [0u8; 28];
        rest.copy_from_slice(&b[20..]);
        ResponseHeader {
            proto_ver: b[0],
            opcode: b[1],
            flags: get_u16(b, 2),
            epoch: get_u32(b, 4),
            id: get_u32(b, 8),
            data_length: get_u32(b, 12),
            result: get_u32(b, 16),
            rest,
        }
    }

    // Reply union fields; offsets are from the start of the header minus 20.

    pub fn vdi_id(&self) -> u32 {
        get_u32(&self.rest, 4)
    }

    pub fn attr_id(&self) -> u32 {
        get_u32(&self.rest, 8)
    }

    pub fn set_attr_id(&mut self, attr_id: u32) {
        put_u32(&mut self.rest, 8, attr_id);
    }

    pub fn vdi_copies(&self) -> u8 {
        self.rest[12]
    }

    pub fn vdi_block_size_shift(&self) -> u8 {
        self.rest[13]
    }

    /// Sets the `vdi` reply variant.
    pub fn set_vdi(&mut self, vdi_id: u32, copies: u8, block_size_shift: u8) {
        put_u32(&mut self.rest, 4, vdi_id);
        self.rest[12] = copies;
        self.rest[13] = block_size_shift;
    }

    pub fn nr_nodes(&self) -> u32 {
        get_u32(&self.rest, 0)
    }

    pub fn store_size(&self) -> u64 {
        get_u64(&self.rest, 12)
    }

    pub fn store_free(&self) -> u64 {
        get_u64(&self.rest, 20)
    }

    /// Sets the `node` reply variant.
    pub fn set_node(&mut self, nr_nodes: u32, store_size: u64, store_free: u64) {
        put_u32(&mut self.rest, 0, nr_nodes);
        put_u64(&mut self.rest, 12, store_size);
        put_u64(&mut self.rest, 20, store_free);
    }

    pub fn hash(&self) -> [u8; 20] {
        let mut h = [0u8; 20];
        h.copy_from_slice(&self.rest[4..24]);
        h
    }

    pub fn set_hash(&mut self, h: &[u8; 20]) {
        self.rest[4..24].copy_from_slice(h);
    }

    /// STAT_RECOVERY (this implementation): the last epoch whose recovery finished on the node.
    pub fn recovered_epoch(&self) -> u32 {
        get_u32(&self.rest, 0)
    }

    pub fn set_recovered_epoch(&mut self, epoch: u32) {
        put_u32(&mut self.rest, 0, epoch);
    }

    /// Sets the `cluster_default` reply variant.
    pub fn set_cluster_default(&mut self, copies: u8, copy_policy: u8, block_size_shift: u8) {
        self.rest[0] = copies;
        self.rest[1] = copy_policy;
        self.rest[2] = block_size_shift;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opcode::{flags, op};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn golden_cow_create_request() {
        // PROTOCOL.md 4.3: flags 0x0003, oid 0x007c2b2600000000, cow_oid 0x007c2b2500000000,
        // copies 3, offset 1024, data_length 512.
        let mut h = RequestHeader::new(op::CREATE_AND_WRITE_OBJ);
        h.flags = flags::WRITE | flags::COW;
        h.data_length = 512;
        h.set_obj(&ObjArgs {
            oid: 0x007c_2b26_0000_0000,
            cow_oid: 0x007c_2b25_0000_0000,
            copies: 3,
            offset: 1024,
            ..ObjArgs::default()
        });
        let b = h.encode();
        assert_eq!(hex(&b[..16]), "02010300000000000000000000020000");
        assert_eq!(hex(&b[16..24]), "00000000262b7c00");
        assert_eq!(hex(&b[24..32]), "00000000252b7c00");
        assert_eq!(b[32], 3);
        assert_eq!(hex(&b[40..44]), "00040000");
        assert_eq!(RequestHeader::decode(&b), h);
    }

    #[test]
    fn golden_inode_entry_update() {
        // PROTOCOL.md 5.6: WRITE_OBJ(0x807c2b2500000000 @4664, 4 bytes).
        let mut h = RequestHeader::new(op::WRITE_OBJ);
        h.flags = flags::WRITE;
        h.data_length = 4;
        h.set_obj(&ObjArgs {
            oid: 0x807c_2b25_0000_0000,
            offset: 4664,
            ..ObjArgs::default()
        });
        let b = h.encode();
        assert_eq!(hex(&b[16..24]), "00000000252b7c80");
        assert_eq!(hex(&b[40..44]), "38120000");
    }

    #[test]
    fn golden_new_vdi_reply() {
        // PROTOCOL.md 4.5: `...252b7c00 00000000 03 16` = vid 0x7c2b25, copies 3, bss 22.
        let mut r = ResponseHeader::default();
        r.set_vdi(0x7c2b25, 3, 22);
        let b = r.encode();
        assert_eq!(hex(&b[24..34]), "252b7c00000000000316");
        let back = ResponseHeader::decode(&b);
        assert_eq!(back.vdi_id(), 0x7c2b25);
        assert_eq!(back.vdi_copies(), 3);
        assert_eq!(back.vdi_block_size_shift(), 22);
    }

    #[test]
    fn golden_stat_cluster_and_make_fs() {
        let mut h = RequestHeader::new(op::STAT_CLUSTER);
        h.data_length = 624;
        h.set_cluster(&ClusterArgs {
            nodes_nr: 2,
            ..ClusterArgs::default()
        });
        let b = h.encode();
        assert_eq!(b[0], 0x0a);
        assert_eq!(hex(&b[40..44]), "02000000");
        let mut m = RequestHeader::new(op::MAKE_FS);
        m.set_cluster(&ClusterArgs {
            ctime: 0x1122_3344_5566_7788,
            copies: 3,
            flags: 0x4,
            block_size_shift: 22,
            ..ClusterArgs::default()
        });
        let b = m.encode();
        assert_eq!(hex(&b[24..32]), "8877665544332211");
        assert_eq!(b[32], 3);
        assert_eq!(hex(&b[34..36]), "0400");
        assert_eq!(b[44], 22);
        assert_eq!(RequestHeader::decode(&b).cluster(), m.cluster());
    }

    #[test]
    fn vdi_args_round_trip() {
        let a = VdiArgs {
            vdi_size: 1 << 30,
            base_vdi_id: 0x7c2b25,
            copies: 3,
            copy_policy: 0,
            store_policy: 0,
            block_size_shift: 22,
            snapid: 1,
            lock_type: 0,
        };
        let mut h = RequestHeader::new(op::NEW_VDI);
        h.set_vdi(&a);
        let b = h.encode();
        assert_eq!(hex(&b[16..24]), "0000004000000000");
        assert_eq!(hex(&b[24..28]), "252b7c00");
        assert_eq!(b[31], 22);
        assert_eq!(hex(&b[32..36]), "01000000");
        assert_eq!(RequestHeader::decode(&b).vdi(), a);
    }

    #[test]
    fn node_reply_offsets() {
        let mut r = ResponseHeader::default();
        r.set_node(3, 100, 50);
        let b = r.encode();
        assert_eq!(hex(&b[20..24]), "03000000");
        assert_eq!(hex(&b[32..40]), "6400000000000000");
        assert_eq!(hex(&b[40..48]), "3200000000000000");
        let d = ResponseHeader::decode(&b);
        assert_eq!((d.nr_nodes(), d.store_size(), d.store_free()), (3, 100, 50));
    }

    #[test]
    fn payload_rules() {
        let mut h = RequestHeader::new(op::GET_NODE_LIST);
        h.data_length = 491_520;
        assert_eq!(h.payload_len(), 0);
        assert_eq!(h.reply_capacity(), 491_520);
        h.flags = flags::WRITE;
        assert_eq!(h.payload_len(), 491_520);
        assert_eq!(h.reply_capacity(), 0);
        h.flags |= flags::PIGGYBACK;
        assert_eq!(h.reply_capacity(), 491_520);
    }
}
