//! `udpguard metrics`: the Prometheus exposition once, from the pinned counters.
use std::process::ExitCode;

use udpguard::{
    metrics::{self, Format},
    privilege,
};

use super::failed;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// print OpenMetrics 1.0 text instead of the classic Prometheus text format (0.0.4)
    #[arg(long)]
    openmetrics: bool,
}

pub fn run(args: &Args) -> ExitCode {
    if let Err(err) = privilege::require("read the counters") {
        return failed(err);
    }
    let scrape = metrics::scrape();
    for problem in &scrape.unreadable {
        eprintln!("udpguard: {problem}");
    }
    let format = if args.openmetrics {
        Format::OpenMetrics
    } else {
        Format::Classic
    };
    print!("{}", metrics::render(&scrape, format));
    ExitCode::SUCCESS
}
