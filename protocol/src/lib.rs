//! The Sheepdog 1.0 client protocol and data model: pure types and functions, plus an async
//! client shared by `dog` and `sheepfs`. Byte layouts follow `PROTOCOL.md`; every integer on the
//! wire is little-endian.

pub mod attr;
pub mod auth;
pub mod backup;
pub mod bitmap;
mod bytes;
pub mod check;
pub mod client;
pub mod cluster;
pub mod frame;
pub mod hash;
pub mod header;
pub mod inode;
pub mod mux;
pub mod node;
pub mod oid;
pub mod opcode;
pub mod placement;
pub mod requests;
pub mod sched;
pub mod stats;

pub use bytes::{get_cstr, put_cstr};

/// What `--version` prints after the program's name: the release and the git commit the
/// binaries were built from ("unknown" outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("SHEEP_GIT_COMMIT"), ")");
pub use client::{Client, ClientError, Reply};
pub use header::{ClusterArgs, ObjArgs, RequestHeader, ResponseHeader, VdiArgs};
pub use oid::{Oid, Vid};
pub use opcode::{flags, op, ResultCode};
