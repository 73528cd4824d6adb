//! `udpguard detach`: take the guard off a cgroup (or every one) and remove its pins.
use std::{path::PathBuf, process::ExitCode};

use udpguard::guard;

use super::failed;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// cgroup v2 directory to stop guarding [default: the cgroup v2 root]
    #[arg(long, conflicts_with = "all")]
    cgroup: Option<PathBuf>,
    /// detach every attachment
    #[arg(long)]
    all: bool,
    /// print one JSON object: {"cgroup", "detached" (whether an attachment was there),
    /// "leftovers_removed"}, or with --all {"removed": [pin directories]}
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> ExitCode {
    if args.all {
        return match guard::detach_all() {
            Ok(removed) if args.json => {
                println!("{}", serde_json::json!({ "removed": removed }));
                ExitCode::SUCCESS
            }
            Ok(removed) => {
                if removed.is_empty() {
                    println!("nothing was attached");
                }
                for dir in removed {
                    println!("detached and removed {}", dir.display());
                }
                ExitCode::SUCCESS
            }
            Err(err) => failed(err),
        };
    }
    match guard::detach(args.cgroup.as_deref()) {
        Ok(detached) if args.json => {
            let document = serde_json::json!({
                "cgroup": detached.cgroup.path,
                "detached": detached.attached,
                "leftovers_removed": detached.leftovers,
            });
            println!("{document}");
            ExitCode::SUCCESS
        }
        Ok(detached) => {
            let path = detached.cgroup.path.display();
            if detached.attached {
                println!("udpguard detached from {path}");
            }
            if detached.leftovers > 0 {
                println!(
                    "removed what {} interrupted attach or detach left for {path} (its links \
                     detached)",
                    detached.leftovers
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => failed(err),
    }
}
