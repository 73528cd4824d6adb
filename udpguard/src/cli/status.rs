//! `udpguard status`: what is attached where, how it is set, and what it counted. It only
//! reads: it never mounts, creates or locks anything.
//!
//! Exit status, for probes: 0 when something is attached and every attachment is whole and
//! enforcing (this build's programs, attached); 1 when nothing is attached; 3 when an
//! attachment is not (left by an interrupted run, unreadable, its programs gone, its links
//! removed by someone else, or another build's); 2 when status cannot tell (a pin root that is not udpguard's).
use std::{fmt::Write as _, process::ExitCode};

use udpguard::{
    bpffs,
    status::{self, State, Status},
};
use udpguard_common::Counter;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// print one JSON object
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> ExitCode {
    let status = status::collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&status).expect("status serializes")
        );
    } else {
        print!("{}", text(&status));
    }
    ExitCode::from(if status.problem.is_some() {
        2
    } else if status.attachments.is_empty() {
        1
    } else if status.attachments.iter().all(|a| a.healthy()) {
        0
    } else {
        3
    })
}

/// The human-readable report.
fn text(status: &Status) -> String {
    if let Some(problem) = &status.problem {
        return format!("cannot show the attachments: {problem}\n");
    }
    if status.attachments.is_empty() {
        return format!(
            "nothing attached (attachments are pinned under {})\n",
            bpffs::pin_root().display()
        );
    }
    let mut out = String::new();
    for a in &status.attachments {
        let cgroup = a.cgroup.as_ref().map_or_else(
            || "(cgroup removed)".to_string(),
            |p| p.display().to_string(),
        );
        let _ = writeln!(out, "{cgroup}  [cgroup id {}]", a.cgroup_id);
        if a.state != State::Attached {
            let what = if a.state == State::Building {
                "an attach that was interrupted while it built this attachment"
            } else {
                "an attach or detach that was interrupted while it took this attachment down"
            };
            let links = udpguard::attachment::attached_links(&a.pin_dir);
            let _ = writeln!(
                out,
                "  LEFT BY {what}: {} of its links attached (enforcing, with nobody \
                 reading its events); remove it with `udpguard detach --cgroup {cgroup}` \
                 or `udpguard detach --all`",
                links
            );
        }
        if let Some(error) = &a.error {
            let _ = writeln!(out, "  unreadable: {error}");
            let _ = writeln!(out, "  pins: {}", a.pin_dir.display());
            continue;
        }
        let id = |id: Option<u32>| id.map_or_else(|| "gone".to_string(), |id| format!("#{id}"));
        let _ = writeln!(
            out,
            "  mode {}, errno {}, autobind {}, programs connect4 {} connect6 {}, {}",
            a.mode.unwrap_or("?"),
            a.errno.unwrap_or("?"),
            a.autobind.unwrap_or("?"),
            id(a.programs.connect4),
            id(a.programs.connect6),
            if a.matches_binary {
                "matches this binary"
            } else {
                "from another udpguard build (run attach to replace)"
            }
        );
        let removed = a.links_removed();
        if !removed.is_empty() {
            let _ = writeln!(
                out,
                "  LINKS REMOVED BY SOMEONE ELSE: {} (pinned but detached from the cgroup: \
                 those programs do not run); a running agent re-attaches them within seconds, \
                 or `udpguard attach --cgroup {cgroup}` does",
                removed.join(", ")
            );
        }
        let count = |c: Counter| a.counters.get(c.name()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  checked {} ({} by the index alone)  unshared {}  rejected {}  audited {}  (raced {})  claimed tuples {}  events lost {}",
            count(Counter::Checked),
            count(Counter::Indexed),
            count(Counter::Unshared),
            count(Counter::Rejected),
            count(Counter::Audited),
            count(Counter::Raced),
            match (a.claims, a.kernel_mode) {
                (Some(n), _) => n.to_string(),
                (None, Some("compat")) => "(no claims: compat mode)".into(),
                (None, _) => "?".into(),
            },
            count(Counter::EventsLost),
        );
        if let Some(t) = &a.tables {
            let _ = writeln!(
                out,
                "  tables: {} of {} claims in use, {} buckets spilled, {} socket records, {} of kernel memory",
                a.claims.unwrap_or(0),
                t.claim_capacity,
                t.spilled_buckets,
                t.records,
                udpguard::tables::human_bytes(t.memory_bytes)
            );
        }
        if a.kernel_mode != Some("compat") {
            let _ = writeln!(
                out,
                "  claims taken over {}  evicted for room {}  unrecorded {}",
                count(Counter::StaleClaims),
                count(Counter::Evicted),
                count(Counter::Unrecorded)
            );
        }
        if let Some(mode) = a.kernel_mode {
            let forced = if a.kernel_mode_forced {
                " (forced by UDPGUARD_FORCE_COMPAT=1)"
            } else {
                ""
            };
            let _ = writeln!(out, "  kernel mode: {mode}{forced}");
        }
        for off in &a.degraded {
            let _ = writeln!(out, "  degraded: {off}");
        }
        if let Some(n) = a.fast_path_namespaces {
            let _ = writeln!(out, "  fast path on in {n} network namespace(s)");
        }
        let not_checked: Vec<String> = Counter::ALL
            .iter()
            .filter(|c| c.is_not_checked_reason())
            .map(|&c| format!("{} {}", c.name(), count(c)))
            .collect();
        let _ = writeln!(out, "  not checked: {}", not_checked.join("  "));
        let _ = writeln!(out, "  pins: {}", a.pin_dir.display());
    }
    out
}
