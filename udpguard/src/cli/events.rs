//! `udpguard events`: follow the conflict events of an existing attachment (changes nothing).
use std::{path::PathBuf, process::ExitCode};

use super::failed;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// the guarded cgroup v2 directory whose events to follow [default: the cgroup v2 root]
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// print events as JSON, one object per line
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> ExitCode {
    match udpguard::agent::events(args.cgroup.as_deref(), args.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failed(format!("{err:#}")),
    }
}
