//! Opcodes, request flags and result codes (PROTOCOL.md sections 1.6, 1.7 and 4).

/// `proto_ver` for client opcodes below 0x80.
pub const SD_PROTO_VER: u8 = 0x02;
/// `proto_ver` for opcodes at or above 0x80.
pub const SD_SHEEP_PROTO_VER: u8 = 0x0a;

/// Request flag bits.
pub mod flags {
    pub const WRITE: u16 = 0x0001;
    pub const COW: u16 = 0x0002;
    pub const CACHE: u16 = 0x0004;
    pub const DIRECT: u16 = 0x0008;
    pub const PIGGYBACK: u16 = 0x0010;
    /// Internal: a gateway's read that a replica whose copy is not recovered yet must not
    /// wait for: it answers NODE_IN_RECOVERY, and the gateway asks a replica that is current.
    pub const CURRENT_ONLY: u16 = 0x0040;
    /// Internal: a recovery read, served whatever the epochs say.
    pub const RECOVERY: u16 = 0x0080;
    /// GET_VDI_ATTR: create the attribute (or replace its value).
    pub const CREAT: u16 = 0x0100;
    /// GET_VDI_ATTR: fail with VDI_EXIST if the attribute exists.
    pub const EXCL: u16 = 0x0200;
    /// GET_VDI_ATTR: delete the attribute.
    pub const DEL: u16 = 0x0400;
}

/// Cluster flag bits stored by MAKE_FS.
pub mod cluster_flags {
    pub const STRICT: u16 = 0x01;
    pub const DISKMODE: u16 = 0x02;
    pub const AUTO_VNODES: u16 = 0x04;
    pub const USE_LOCK: u16 = 0x08;
    pub const RECYCLE_VID: u16 = 0x10;
    pub const AVOID_DISKFULL: u16 = 0x20;
}

macro_rules! opcodes {
    ($($name:ident = $val:expr),* $(,)?) => {
        /// Opcode constants.
        pub mod op {
            $(pub const $name: u8 = $val;)*
        }
        /// The name of an opcode, for logs.
        pub fn op_name(op: u8) -> &'static str {
            match op {
                $($val => stringify!($name),)*
                _ => "UNKNOWN_OP",
            }
        }
    };
}

opcodes! {
    CREATE_AND_WRITE_OBJ = 0x01,
    READ_OBJ = 0x02,
    WRITE_OBJ = 0x03,
    REMOVE_OBJ = 0x04,
    DISCARD_OBJ = 0x05,
    NEW_VDI = 0x11,
    LOCK_VDI = 0x12,
    RELEASE_VDI = 0x13,
    GET_VDI_INFO = 0x14,
    READ_VDIS = 0x15,
    FLUSH_VDI = 0x16,
    DEL_VDI = 0x17,
    GET_CLUSTER_DEFAULT = 0x18,
    GET_NODE_LIST = 0x82,
    MAKE_FS = 0x84,
    SHUTDOWN = 0x85,
    STAT_SHEEP = 0x86,
    STAT_CLUSTER = 0x87,
    GET_VDI_ATTR = 0x89,
    MD_INFO = 0xb1,
    GET_STORE_LIST = 0x90,
    STAT_RECOVERY = 0x97,
    GET_OBJ_LIST = 0xa1,
    GET_EPOCH = 0xa2,
    CREATE_AND_WRITE_PEER = 0xa3,
    READ_PEER = 0xa4,
    WRITE_PEER = 0xa5,
    REMOVE_PEER = 0xa6,
    FLUSH_PEER = 0xa7,
    GET_OBJ_EPOCH = 0xa8,
    GET_VDI_COPIES = 0xab,
    GET_HASH = 0xb4,
    STAT = 0xb8,
    EXIST = 0xbd,
    CLUSTER_INFO = 0xbe,
    REPAIR_REPLICA = 0xc5,
    OIDS_EXIST = 0xc6,
    READ_DEL_VDIS = 0xc9,
    // The original's SET_VNODES number; here it sets the vnodes of the node that receives
    // it (payload: u32 LE count, 0 = follow the store's capacity again).
    SET_VNODES = 0xcc,
    GET_VNODES = 0xcd,
    // This implementation's own (not in Sheepdog 1.0): the object cache's figures.
    STAT_CACHE = 0xe0,
    // ... and its metrics as Prometheus/OpenMetrics text.
    STAT_METRICS = 0xe1,
    // ... and its background scrub's progress and findings.
    STAT_SCRUB = 0xe2,
    // ... and snapshots of several VDIs at one moment (`dog cluster snapshot save`): WRITE,
    // payload a 256-byte tag then one 256-byte name per VDI; reply (old vid, new vid) u32 LE
    // pairs.
    SNAPSHOT_VDIS = 0xe3,
}

/// True for the node-to-node (peer) ops, which only sheep send each other.
pub fn is_peer_op(op: u8) -> bool {
    matches!(
        op,
        op::GET_OBJ_LIST
            | op::CREATE_AND_WRITE_PEER
            | op::READ_PEER
            | op::WRITE_PEER
            | op::REMOVE_PEER
            | op::FLUSH_PEER
            | op::GET_OBJ_EPOCH
    )
}

/// The `proto_ver` a well-behaved client sends for `op`.
pub fn proto_ver_for(op: u8) -> u8 {
    if op >= 0x80 {
        SD_SHEEP_PROTO_VER
    } else {
        SD_PROTO_VER
    }
}

/// A `SD_RES_*` result code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u32);

macro_rules! results {
    ($($name:ident = $val:expr, $msg:expr;)*) => {
        impl ResultCode {
            $(pub const $name: ResultCode = ResultCode($val);)*

            /// The message the original `dog` prints for this code.
            pub fn message(self) -> &'static str {
                match self.0 {
                    $($val => $msg,)*
                    _ => "Unknown error",
                }
            }

            /// The constant's name, for logs.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($val => stringify!($name),)*
                    _ => "UNKNOWN_RESULT",
                }
            }
        }
    };
}

results! {
    SUCCESS = 0x00, "Success";
    UNKNOWN = 0x01, "Unknown error";
    NO_OBJ = 0x02, "No object found";
    EIO = 0x03, "I/O error";
    VDI_EXIST = 0x04, "VDI exists already";
    INVALID_PARMS = 0x05, "Invalid parameters";
    SYSTEM_ERROR = 0x06, "System error";
    VDI_LOCKED = 0x07, "VDI is already locked";
    NO_VDI = 0x08, "No VDI found";
    NO_BASE_VDI = 0x09, "No base VDI found";
    VDI_READ = 0x0a, "Failed to read from requested VDI";
    VDI_WRITE = 0x0b, "Failed to write to requested VDI";
    BASE_VDI_READ = 0x0c, "Failed to read from base VDI";
    BASE_VDI_WRITE = 0x0d, "Failed to write to base VDI";
    NO_TAG = 0x0e, "Failed to find requested tag";
    STARTUP = 0x0f, "System is still booting";
    VDI_NOT_LOCKED = 0x10, "VDI is not locked";
    SHUTDOWN = 0x11, "System is shutting down";
    NO_MEM = 0x12, "Out of memory on server";
    FULL_VDI = 0x13, "Maximum number of VDIs reached";
    VER_MISMATCH = 0x14, "Protocol version mismatch";
    NO_SPACE = 0x15, "Server has no space for new objects";
    WAIT_FOR_FORMAT = 0x16, "Waiting for cluster to be formatted";
    WAIT_FOR_JOIN = 0x17, "Waiting for other nodes to join cluster";
    JOIN_FAILED = 0x18, "Node has failed to join cluster";
    HALT = 0x19, "IO has halted as there are not enough living nodes";
    READONLY = 0x1a, "Object is read-only";
    INODE_INVALIDATED = 0x1d, "Inode object is invalidated";
    OLD_NODE_VER = 0x81, "Request has an old epoch";
    NEW_NODE_VER = 0x82, "Request has a new epoch";
    NETWORK_ERROR = 0x86, "Network error between sheep";
    NOT_FORMATTED = 0x83, "Cluster has not been formatted";
    BUFFER_SMALL = 0x88, "The buffer is too small";
    NO_STORE = 0x8a, "Targeted backend store is not found";
    NO_SUPPORT = 0x8b, "Operation is not supported";
    NODE_IN_RECOVERY = 0x8c, "Targeted node is in recovery";
    KILLED = 0x8d, "Node is killed";
    OID_EXIST = 0x8e, "Object ID exists already";
    AGAIN = 0x8f, "Ask to try again";
    STALE_OBJ = 0x90, "Object may be stale";
    CLUSTER_ERROR = 0x91, "Cluster driver error";
    VDI_NOT_EMPTY = 0x92, "VDI is not empty";
    NOT_FOUND = 0x93, "Cannot found target";
    COLLECTING_CINFO = 0x95, "Sheep is collecting cluster information";
    GATEWAY_MODE = 0x97, "Targeted node is gateway mode";
    INVALID_VNODES_STRATEGY = 0x98, "Invalid vnodes strategy";
    NO_CHECKPOINT_ENTRY = 0x99, "Cannot find checkpoint entry";
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#x})", self.message(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_messages() {
        assert_eq!(op_name(op::GET_NODE_LIST), "GET_NODE_LIST");
        assert_eq!(op_name(0x50), "UNKNOWN_OP");
        assert_eq!(ResultCode::NO_TAG.name(), "NO_TAG");
        assert_eq!(ResultCode(0x7777).message(), "Unknown error");
        assert_eq!(
            ResultCode::WAIT_FOR_FORMAT.to_string(),
            "Waiting for cluster to be formatted (0x16)"
        );
    }

    #[test]
    fn proto_versions() {
        assert_eq!(proto_ver_for(op::READ_OBJ), 2);
        assert_eq!(proto_ver_for(op::CLUSTER_INFO), 0x0a);
        assert!(is_peer_op(op::WRITE_PEER));
        assert!(!is_peer_op(op::WRITE_OBJ));
    }
}
