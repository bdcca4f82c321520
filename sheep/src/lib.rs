//! The sheep daemon: server loop, op dispatch, gateway replication, cluster drivers and
//! membership, VDI management, and the object stores (plain, and farm beside it). `ARCHITECTURE.md` at the
//! repository root walks a request through these modules.

pub mod access;
pub mod attr;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod dogcli;
pub mod gateway;
pub mod group;
pub mod metrics;
pub mod nbd;
pub mod node;
pub mod ops;
pub mod peer;
pub mod recovery;
pub mod scrape;
pub mod server;
pub mod store;
pub mod uring;
pub mod vdi;
