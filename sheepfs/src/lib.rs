//! sheepfs: a Sheepdog cluster as a filesystem. `fs` is the core (no FUSE in it), `fuse`
//! the thin adapter, `backend` the cluster client behind a trait.

pub mod backend;
pub mod cli;
pub mod control;
pub mod fs;
pub mod fuse;
#[cfg(test)]
mod memory;
pub mod monitor;
#[cfg(test)]
mod volume_model;

/// The examples of `SEMANTICS.md`, for the tests that keep code and page in step.
#[cfg(test)]
pub(crate) fn semantics_example(name: &str) -> String {
    let page = include_str!("../SEMANTICS.md");
    let open = format!("```example:{name}\n");
    let start = page
        .find(&open)
        .map(|i| i + open.len())
        .unwrap_or_else(|| panic!("no example {name} in SEMANTICS.md"));
    let len = page[start..]
        .find("```")
        .unwrap_or_else(|| panic!("example {name} is not closed"));
    page[start..start + len].to_string()
}
