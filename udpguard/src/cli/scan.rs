//! `udpguard scan`: find the duplicate connected UDP 4-tuples that already exist. Exit status
//! 0: none, 1: duplicates found, 2: the scan failed (for cron, Nagios, probes).
use std::{io::Write as _, process::ExitCode};

use udpguard::scan::{self, ScanOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Scan every network namespace on the host (needs root to enter them),
    /// not only the current one.
    #[arg(long)]
    all_netns: bool,
}

const CLEAN: u8 = 0;
const DUPLICATES: u8 = 1;
const FAILED: u8 = 2;

pub fn run(args: &Args) -> ExitCode {
    let scanned = scan::run(&ScanOptions {
        json: args.json,
        all_netns: args.all_netns,
    });
    let notes = || {
        for note in &scanned.notes {
            eprintln!("udpguard scan: note: {note}");
        }
    };
    let text = match &scanned.text {
        Ok(text) => text,
        Err(error) => {
            notes();
            eprintln!("udpguard scan: error: {error:#}");
            return ExitCode::from(FAILED);
        }
    };
    if let Err(error) = std::io::stdout().lock().write_all(text.as_bytes()) {
        eprintln!("udpguard scan: error: cannot write the report: {error}");
        return ExitCode::from(FAILED);
    }
    notes();
    ExitCode::from(if scanned.duplicates {
        DUPLICATES
    } else {
        CLEAN
    })
}
