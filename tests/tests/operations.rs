//! What an operator runs the cluster with: versions, the rest of the original `dog`'s
//! commands, metrics, packaging.

use std::process::Command;

use tests::{dog_bin, sheep_bin, sheepfs_bin};

/// Every binary says which commit it was built from, so a bug report names the code.
#[test]
fn version_names_the_git_commit() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cannot run git");
    assert!(head.status.success(), "git rev-parse failed");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    for (name, bin) in [("sheep", sheep_bin()), ("dog", dog_bin()), ("sheepfs", sheepfs_bin())] {
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .expect("cannot run --version");
        assert!(out.status.success(), "{name} --version failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!("{name} {} (git {head})", env!("CARGO_PKG_VERSION"));
        assert_eq!(text.trim(), want, "{name} --version");
    }
}
