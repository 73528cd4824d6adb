//! `udpguard run`: the host agent (what a systemd unit or a Kubernetes DaemonSet runs).
use std::{path::PathBuf, process::ExitCode};

use udpguard::agent::{self, Metrics, RunOptions};

use super::failed;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    attach: super::attach::AttachArgs,
    /// serve Prometheus metrics and /healthz on http://HOST:PORT/metrics; when this is not
    /// given and the default address is taken, the agent runs without them (a warning)
    /// [default: 127.0.0.1:10108]
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// serve no metrics and no /healthz
    #[arg(long, conflicts_with = "metrics_addr")]
    no_metrics: bool,
    /// seconds between the agent's scans for duplicate 4-tuples in every network namespace
    /// (exported as udpguard_scan_* metrics); 0 turns them off
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    scan_interval: u64,
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
        metrics: if args.no_metrics {
            Metrics::Off
        } else if let Some(addr) = &args.metrics_addr {
            Metrics::At(addr.clone())
        } else {
            Metrics::Default
        },
        scan_interval: std::time::Duration::from_secs(args.scan_interval),
        json: args.json,
        watch_cgroup: args.watch_cgroup.clone(),
    };
    match agent::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failed(format!("{err:#}")),
    }
}
