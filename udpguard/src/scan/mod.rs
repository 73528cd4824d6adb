//! `udpguard scan`: find the duplicate connected UDP 4-tuples that already exist.
//! (Being built: see issue 4.)

/// Arguments of `udpguard scan`.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {}

/// Runs `udpguard scan`; returns the process exit status (0 none, 1 duplicates, 2 error).
pub fn run(_args: &ScanArgs) -> i32 {
    eprintln!("udpguard scan: not implemented yet");
    2
}
