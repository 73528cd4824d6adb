use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use udpguard::{
    guard::{self, AttachOutcome, AttachRequest},
    status,
};

/// Refuses UDP connect()s that would give two sockets the same 4-tuple.
#[derive(Parser)]
#[command(name = "udpguard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the guard to a cgroup (again: apply mode/errno in place). It stays after exit.
    Attach(AttachRequest),
    /// Detach the guard and remove its pins.
    Detach {
        /// cgroup v2 directory to stop guarding [default: the cgroup v2 root]
        #[arg(long, conflicts_with = "all")]
        cgroup: Option<PathBuf>,
        /// detach every attachment
        #[arg(long)]
        all: bool,
    },
    /// List attachments: cgroup, mode, errno, programs, counters.
    Status {
        /// print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Find duplicate connected UDP 4-tuples that already exist (no BPF needed).
    Scan(udpguard::scan::ScanArgs),
    /// The host agent: attach (or adopt), stream conflict events, serve /metrics, until SIGTERM.
    Run(udpguard::agent::RunArgs),
    /// Stream the conflict events of an existing attachment (changes nothing).
    Events(udpguard::agent::EventsArgs),
    /// Print the Prometheus metrics once, from the pinned counters (changes nothing).
    Metrics,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(request) => guard::attach(&request).map(|attached| {
            let what = match attached.outcome {
                AttachOutcome::Attached => "attached to",
                AttachOutcome::Updated => "updated on",
                AttachOutcome::Replaced => "replaced (older build) on",
            };
            let settings = attached.settings;
            println!(
                "udpguard {what} {} (mode {}, errno {}, autobind {})",
                attached.cgroup.path.display(),
                settings.mode.name(),
                settings.errno.name(),
                settings.autobind.name()
            );
            if let Some(sizes) = attached.sizes {
                println!(
                    "  tables: {} claims, {} socket records ({} of kernel memory)",
                    sizes.claim_ways(),
                    sizes.records,
                    udpguard::tables::human_bytes(sizes.bytes())
                );
            }
            for note in attached.features.missing() {
                println!("  note: {note}");
            }
            for note in &attached.notes {
                println!("  note: {note}");
            }
        }),
        Command::Detach { cgroup, all: false } => {
            guard::detach(cgroup.as_deref()).map(|detached| {
                let path = detached.cgroup.path.display();
                if detached.attached {
                    println!("udpguard detached from {path}");
                }
                if detached.leftovers > 0 {
                    println!(
                        "removed what {} interrupted attach or detach left for {path} (its \
                         links detached)",
                        detached.leftovers
                    );
                }
            })
        }
        Command::Detach { all: true, .. } => guard::detach_all().map(|removed| {
            if removed.is_empty() {
                println!("nothing was attached");
            }
            for dir in removed {
                println!("detached and removed {}", dir.display());
            }
        }),
        Command::Status { json } => {
            let status = status::collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&status).expect("status serializes")
                );
            } else {
                print!("{}", status.to_text());
            }
            Ok(())
        }
        Command::Scan(args) => return ExitCode::from(udpguard::scan::run(&args) as u8),
        Command::Run(args) => udpguard::agent::run(&args).map_err(Into::into),
        Command::Events(args) => udpguard::agent::events(&args).map_err(Into::into),
        Command::Metrics => udpguard::metrics::print(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("udpguard: {err}");
            ExitCode::FAILURE
        }
    }
}
