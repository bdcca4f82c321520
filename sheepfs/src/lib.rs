//! sheepfs: a Sheepdog cluster as a filesystem. `fs` is the core (no FUSE in it), `fuse`
//! the thin adapter, `backend` the cluster client behind a trait.

pub mod backend;
pub mod control;
pub mod error;
pub mod fs;
pub mod fuse;
#[cfg(test)]
mod memory;
pub mod monitor;
pub mod span;
pub mod volume;
