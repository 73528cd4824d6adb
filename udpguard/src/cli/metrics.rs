//! `udpguard metrics`: the Prometheus exposition once, from the pinned counters.
use std::process::ExitCode;

use udpguard::{metrics, privilege};

use super::failed;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: &Args) -> ExitCode {
    if let Err(err) = privilege::require("read the counters") {
        return failed(err);
    }
    let scrape = metrics::scrape();
    for problem in &scrape.unreadable {
        eprintln!("udpguard: {problem}");
    }
    print!("{}", metrics::render(&scrape.samples));
    ExitCode::SUCCESS
}
