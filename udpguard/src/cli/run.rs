//! `udpguard run`: the host agent (what a systemd unit or a Kubernetes DaemonSet runs).
use std::{path::PathBuf, process::ExitCode};

use udpguard::agent::{self, RunOptions};

use super::failed;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    attach: super::attach::AttachArgs,
    /// serve Prometheus metrics on http://HOST:PORT/metrics (e.g. 127.0.0.1:9108)
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// print events as JSON, one object per line
    #[arg(long)]
    json: bool,
    /// for the fast path below the cgroup root: a cgroup that holds every process able to
    /// enter the guarded network namespaces (the cgroup v2 root always does), watched for
    /// connects the guard does not see [default: none, the fast path is off below the root]
    #[arg(long, value_name = "PATH")]
    watch_cgroup: Option<PathBuf>,
}

pub fn run(args: &Args) -> ExitCode {
    let options = RunOptions {
        attach: args.attach.request(),
        metrics_addr: args.metrics_addr.clone(),
        json: args.json,
        watch_cgroup: args.watch_cgroup.clone(),
    };
    match agent::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failed(format!("{err:#}")),
    }
}
