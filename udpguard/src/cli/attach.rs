//! `udpguard attach`: attach the guard to a cgroup, or change its settings in place.
use std::{path::PathBuf, process::ExitCode};

use udpguard::{
    guard::{self, AttachOutcome, AttachRequest},
    settings::{Autobind, Errno, Mode},
    tables,
};

use super::{choice, failed};

/// What `attach` (and `run`) take.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AttachArgs {
    /// cgroup v2 directory to guard [default: the cgroup v2 root]
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// enforce refuses conflicts, audit only counts them [default: enforce, or as attached]
    #[arg(long, value_parser = choice::<Mode>())]
    pub mode: Option<Mode>,
    /// errno a refused connect() fails with [default: eperm, or as attached]
    #[arg(long, value_parser = choice::<Errno>())]
    pub errno: Option<Errno>,
    /// sockets that get their port at connect (auto-bind): allow counts them, unique clears
    /// their SO_REUSEADDR/SO_REUSEPORT so the port is unshared [default: allow, or as attached]
    #[arg(long, value_parser = choice::<Autobind>())]
    pub autobind: Option<Autobind>,
    /// bytes of conflict-event ring buffer when the programs are loaded, a power of two
    /// >= 4096 [default: 262144]
    #[arg(long, value_parser = guard::parse_events_buffer)]
    pub events_buffer: Option<u32>,
    /// connected UDP sockets the kernel tables are sized for when the programs are loaded
    /// (e.g. 500k); past it claims spill, then fail open, counted [default: from the host's
    /// memory, 262144 on 24 GiB]
    #[arg(long, value_parser = tables::parse_max_sockets, value_name = "N")]
    pub max_sockets: Option<u64>,
}

impl AttachArgs {
    pub fn request(&self) -> AttachRequest {
        AttachRequest {
            cgroup: self.cgroup.clone(),
            mode: self.mode,
            errno: self.errno,
            autobind: self.autobind,
            events_buffer: self.events_buffer,
            max_sockets: self.max_sockets,
        }
    }
}

/// `attach` alone: what `run` does not take.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// print one JSON object: {"outcome", "cgroup", "cgroup_id", "mode", "errno", "autobind",
    /// "tables" ({"claims", "records", "memory_bytes"} or null), "notes"}
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> ExitCode {
    let attached = match guard::attach(&args.attach.request()) {
        Ok(attached) => attached,
        Err(err) => return failed(err),
    };
    let notes: Vec<String> = attached
        .features
        .missing()
        .into_iter()
        .chain(attached.notes.iter().cloned())
        .collect();
    if args.json {
        let outcome = match attached.outcome {
            AttachOutcome::Attached => "attached",
            AttachOutcome::Updated => "updated",
            AttachOutcome::Replaced => "replaced",
        };
        let document = serde_json::json!({
            "outcome": outcome,
            "cgroup": attached.cgroup.path,
            "cgroup_id": attached.cgroup.id,
            "mode": attached.settings.mode.name(),
            "errno": attached.settings.errno.name(),
            "autobind": attached.settings.autobind.name(),
            "tables": attached.sizes.map(|sizes| serde_json::json!({
                "claims": sizes.claim_ways(),
                "records": sizes.records,
                "memory_bytes": sizes.bytes(),
            })),
            "notes": notes,
        });
        println!("{document}");
        return ExitCode::SUCCESS;
    }
    let what = match attached.outcome {
        AttachOutcome::Attached => "attached to",
        AttachOutcome::Updated => "updated on",
        AttachOutcome::Replaced => "replaced (older build) on",
    };
    println!(
        "udpguard {what} {} ({})",
        attached.cgroup.path.display(),
        attached.settings
    );
    if let Some(sizes) = attached.sizes {
        println!(
            "  tables: {} claims, {} socket records ({} of kernel memory)",
            sizes.claim_ways(),
            sizes.records,
            tables::human_bytes(sizes.bytes())
        );
    }
    if !attached.features.missing().is_empty() {
        println!("  kernel mode: {}", attached.features.mode());
    }
    for note in &notes {
        println!("  note: {note}");
    }
    ExitCode::SUCCESS
}
