//! `udpguard completions SHELL` and `udpguard man DIR`: what the package ships beside the
//! binary, generated from the command line itself so they cannot drift from it.
//! `scripts/package.sh` calls them for the .deb; without it, `udpguard completions bash >
//! ~/.local/share/bash-completion/completions/udpguard` does the same by hand.
use std::{path::PathBuf, process::ExitCode};

use clap_complete::Shell;

use super::failed;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// the shell to print the completion script for
    shell: Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// directory to write udpguard.1 and udpguard-VERB.1 into (created if missing)
    dir: PathBuf,
}

pub fn completions(args: &CompletionsArgs, mut command: clap::Command) -> ExitCode {
    let name = command.get_name().to_owned();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    ExitCode::SUCCESS
}

pub fn man(args: &ManArgs, command: clap::Command) -> ExitCode {
    if let Err(err) = std::fs::create_dir_all(&args.dir) {
        return failed(format!(
            "cannot create {}: {err}; give a directory you can write",
            args.dir.display()
        ));
    }
    // The pages' VERSION section is filled text: the one-line version (with the commit), not
    // --version's lines, which roff would run together.
    let version = command.get_version().unwrap_or_default().to_owned();
    match clap_mangen::generate_to(command.long_version(version), &args.dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failed(format!(
            "writing the man pages into {} failed: {err}",
            args.dir.display()
        )),
    }
}
