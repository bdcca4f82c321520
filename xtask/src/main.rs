//! `cargo run -p xtask -- docs DIR`: writes the man pages and shell completions of sheep, dog
//! and sheepfs, rendered from their clap definitions, under DIR:
//!
//! ```text
//! DIR/man/man1/{sheep,dog,sheepfs}.1, and dog-vdi.1, dog-vdi-create.1... for subcommands
//! DIR/completions/bash/{sheep,dog,sheepfs}
//! DIR/completions/zsh/_{sheep,dog,sheepfs}
//! DIR/completions/fish/{sheep,dog,sheepfs}.fish
//! ```
//!
//! `contrib/install.sh` runs it and puts the files where Debian looks for them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

fn commands() -> [Command; 3] {
    [
        sheep::config::Args::command(),
        sheep::dogcli::Cli::command(),
        sheepfs::cli::Args::command(),
    ]
}

fn write(path: &Path, text: &[u8]) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The page of `cmd`, named `name`, then (dog-vdi-create.1...) one per subcommand, each
/// stamped with the program's `version`.
fn man_pages(cmd: &Command, name: &str, version: &str, dir: &Path) -> Result<(), String> {
    let mut text = Vec::new();
    let page = cmd.clone().name(name.to_string()).version(version.to_string());
    clap_mangen::Man::new(page)
        .render(&mut text)
        .map_err(|e| format!("rendering {name}.1: {e}"))?;
    write(&dir.join(format!("{name}.1")), &text)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        man_pages(sub, &format!("{name}-{}", sub.get_name()), version, dir)?;
    }
    Ok(())
}

fn docs(out: &Path) -> Result<(), String> {
    let mkdir = |d: &Path| fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()));
    let man = out.join("man/man1");
    mkdir(&man)?;
    for mut cmd in commands() {
        let name = cmd.get_name().to_string();
        cmd.build();
        let version = cmd.get_version().unwrap_or_default().to_string();
        man_pages(&cmd, &name, &version, &man)?;
        for (shell, file) in [
            (Shell::Bash, name.clone()),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let dir = out.join("completions").join(shell.to_string());
            mkdir(&dir)?;
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut text);
            write(&dir.join(file), &text)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, dir] if cmd == "docs" => docs(&PathBuf::from(dir)),
        _ => Err("usage: cargo run -p xtask -- docs DIR   (man pages and shell completions)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
