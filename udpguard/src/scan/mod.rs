//! `udpguard scan`: find the duplicate connected UDP 4-tuples that already exist.
//!
//! The guard stops new duplicates; `scan` reports the ones already there
//! (made before the guard, or outside its cgroup), without BPF and, for what
//! an unprivileged user can see, without root:
//!
//! 1. dump the connected UDP sockets of each namespace ([`sock_diag`]),
//! 2. group them by 4-tuple, v4-mapped IPv6 folded into IPv4 ([`group`]),
//! 3. ask the kernel's own lookup which socket of each group receives
//!    ([`sock_diag::SockDiag::receiving_inode`]; [`route`] supplies the
//!    incoming interface when some sockets are bound to a device),
//! 4. find the processes holding the sockets ([`procfs`]),
//! 5. print a table or JSON ([`output`]); exit 0 (none), 1 (found) or 2 (error).

// `events` reuses these to name the holder of a conflicting tuple.
pub(crate) mod group;
mod output;
mod route;

use std::collections::HashSet;

use anyhow::Context as _;

use crate::sys::{
    netns::{self, NetworkNamespace},
    procfs,
    sock_diag::SockDiag,
};
use group::{DuplicateGroup, Ingress};
use output::{DuplicateReport, Report, SocketReport};
use route::RouteLookup;

/// What `udpguard scan` is asked for.
#[derive(Debug, Default)]
pub struct ScanOptions {
    /// One JSON object instead of a table.
    pub json: bool,
    /// Every network namespace on the host, not only the current one.
    pub all_netns: bool,
}

/// What a scan found, rendered, and what it could not see.
pub struct Scanned {
    /// The report as asked (a table or JSON), or why the scan failed.
    pub text: anyhow::Result<String>,
    /// Whether it found duplicates.
    pub duplicates: bool,
    /// What could not be seen (for stderr).
    pub notes: Vec<String>,
}

/// Runs a scan.
pub fn run(options: &ScanOptions) -> Scanned {
    let mut gaps = Gaps::default();
    let result = scan(options, &mut gaps);
    let duplicates = result.as_ref().is_ok_and(|r| !r.duplicates.is_empty());
    let text = result.map(|report| {
        if options.json {
            output::render_json(&report)
        } else {
            output::render_table(&report)
        }
    });
    Scanned {
        text,
        duplicates,
        notes: gaps.notes,
    }
}

/// Scans every network namespace and sums up what it found per namespace, timed: what the
/// agent exports as `udpguard_scan_*`. Notes on what could not be seen go to the debug log.
pub fn summary() -> anyhow::Result<crate::health::ScanSummary> {
    let started = std::time::Instant::now();
    let mut gaps = Gaps::default();
    let report = scan(
        &ScanOptions {
            json: false,
            all_netns: true,
        },
        &mut gaps,
    )?;
    for note in &gaps.notes {
        tracing::debug!("scan: {note}");
    }
    let mut per_netns: std::collections::BTreeMap<String, crate::health::NetnsFindings> =
        std::collections::BTreeMap::new();
    for duplicate in &report.duplicates {
        let netns = duplicate.netns.clone().unwrap_or_default();
        let entry =
            per_netns
                .entry(netns.clone())
                .or_insert_with(|| crate::health::NetnsFindings {
                    netns,
                    ..Default::default()
                });
        entry.duplicate_tuples += 1;
        entry.starving_sockets += duplicate.sockets.iter().filter(|s| !s.receiving).count();
    }
    Ok(crate::health::ScanSummary {
        finished_ns: crate::clock::monotonic_ns(),
        seconds: started.elapsed().as_secs_f64(),
        sockets: report.scanned,
        namespaces: report.namespaces_scanned.unwrap_or(1),
        per_netns: per_netns.into_values().collect(),
        partial: report.partial,
    })
}

/// A duplicate group found in one namespace, with the inode of the socket
/// that receives (`None` if the kernel's lookup picked none of them).
struct Finding {
    netns: Option<String>,
    group: DuplicateGroup,
    receiving: Option<u64>,
}

/// What could not be seen, for the user (stderr) and the report (`partial`).
#[derive(Default)]
struct Gaps {
    notes: Vec<String>,
    partial: bool,
}

impl Gaps {
    fn add(&mut self, note: String) {
        self.notes.push(note);
        self.partial = true;
    }
}

/// Scans and returns the report; what could not be seen goes to `gaps`.
fn scan(args: &ScanOptions, gaps: &mut Gaps) -> anyhow::Result<Report> {
    let (scanned, findings, namespaces_scanned) = if args.all_netns {
        let (scanned, findings, namespaces) = scan_all_namespaces(gaps)?;
        (scanned, findings, Some(namespaces))
    } else {
        let mut kernel =
            KernelSockets::open().context("cannot scan the current network namespace")?;
        let (scanned, findings) = scan_with(&mut kernel, None)?;
        (scanned, findings, None)
    };
    report(scanned, findings, namespaces_scanned, gaps)
}

/// Scans every namespace found; returns the sockets scanned, the findings and
/// how many namespaces were scanned.
fn scan_all_namespaces(gaps: &mut Gaps) -> anyhow::Result<(usize, Vec<Finding>, usize)> {
    let discovery = netns::discover().context("cannot list the network namespaces")?;
    if discovery.unreadable_processes > 0 {
        gaps.add(format!(
            "could not see the network namespace of {} (permission denied); \
             namespaces only they use were not scanned{}",
            processes(discovery.unreadable_processes),
            remedy("to scan them all")
        ));
    }
    let mut scanned = 0;
    let mut findings = Vec::new();
    let mut namespaces_scanned = 0;
    for namespace in &discovery.namespaces {
        match scan_namespace(namespace) {
            Ok((count, found)) => {
                namespaces_scanned += 1;
                scanned += count;
                findings.extend(found);
            }
            Err(error) => {
                gaps.add(format!(
                    "network namespace {} not scanned: {error:#}",
                    namespace.name
                ));
            }
        }
    }
    if namespaces_scanned == 0 {
        anyhow::bail!(
            "none of the {} network namespaces found could be scanned (see the notes)",
            discovery.namespaces.len()
        );
    }
    Ok((scanned, findings, namespaces_scanned))
}

/// Scans one namespace found by `--all-netns`.
fn scan_namespace(namespace: &NetworkNamespace) -> anyhow::Result<(usize, Vec<Finding>)> {
    let mut kernel = netns::open_in(namespace, KernelSockets::open)?;
    scan_with(&mut kernel, Some(namespace.name.clone()))
}

/// The netlink sockets a scan asks one namespace's kernel state through.
struct KernelSockets {
    diag: SockDiag,
    routes: RouteLookup,
}

impl KernelSockets {
    /// Opens them in the calling thread's network namespace.
    fn open() -> anyhow::Result<Self> {
        Ok(Self {
            diag: SockDiag::open()?,
            routes: RouteLookup::open().context("cannot open a NETLINK_ROUTE socket")?,
        })
    }
}

/// Dumps, groups and resolves the receiver of each group, in the namespace
/// `kernel` belongs to. Returns the number of connected sockets and the groups.
fn scan_with(
    kernel: &mut KernelSockets,
    netns: Option<String>,
) -> anyhow::Result<(usize, Vec<Finding>)> {
    let sockets = kernel
        .diag
        .dump_connected_udp()
        .context("cannot list the connected UDP sockets")?;
    let count = sockets.len();
    let mut findings = Vec::new();
    for group in group::find_duplicates(sockets) {
        let (local, remote) = (group.tuple.local, group.tuple.remote);
        let ifindex = match group.ingress() {
            Ingress::Any => 0,
            Ingress::Device(ifindex) => ifindex,
            Ingress::FromRoute => kernel
                .routes
                .egress_ifindex(local.ip(), remote.ip())
                .with_context(|| format!("cannot look up the route from {local} to {remote}"))?
                .unwrap_or(0),
        };
        let receiving = kernel
            .diag
            .receiving_inode(&group.tuple, ifindex)
            .with_context(|| {
                format!("cannot ask the kernel which socket receives on {local} -> {remote}")
            })?
            .filter(|inode| group.sockets.iter().any(|s| s.inode == *inode));
        findings.push(Finding {
            netns: netns.clone(),
            group,
            receiving,
        });
    }
    Ok((count, findings))
}

/// Looks up the owners of every duplicated socket and builds the report.
fn report(
    scanned: usize,
    findings: Vec<Finding>,
    namespaces_scanned: Option<usize>,
    gaps: &mut Gaps,
) -> anyhow::Result<Report> {
    let inodes: HashSet<u64> = findings
        .iter()
        .flat_map(|f| f.group.sockets.iter().map(|s| s.inode))
        .collect();
    let mut owners = procfs::find_socket_owners(&inodes).context("cannot read /proc")?;
    if owners.unreadable_processes > 0 {
        gaps.add(format!(
            "could not read the open files of {} (permission denied); \
             process lists may be incomplete{}",
            processes(owners.unreadable_processes),
            remedy("to see every owner")
        ));
    }
    let duplicates = findings
        .into_iter()
        .map(|finding| DuplicateReport {
            netns: finding.netns,
            local: finding.group.tuple.local.to_string(),
            remote: finding.group.tuple.remote.to_string(),
            sockets: finding
                .group
                .sockets
                .iter()
                .map(|s| SocketReport {
                    inode: s.inode,
                    uid: s.uid,
                    family: s.family,
                    receiving: finding.receiving == Some(s.inode),
                    processes: owners.by_inode.remove(&s.inode).unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    Ok(Report {
        scanned,
        duplicates,
        partial: gaps.partial,
        namespaces_scanned,
    })
}

/// "1 process", "2 processes".
fn processes(count: usize) -> String {
    if count == 1 {
        "1 process".to_owned()
    } else {
        format!("{count} processes")
    }
}

/// ": run as root <goal>", or, when already root, why root was not enough.
fn remedy(goal: &str) -> String {
    if nix::unistd::Uid::effective().is_root() {
        " (refused even to root: protected processes, e.g. by a security module, \
             or this root lacks CAP_DAC_READ_SEARCH, to list another user's /proc/<pid>/fd, \
             or CAP_SYS_PTRACE, to read its links)"
            .to_owned()
    } else {
        format!(": run as root {goal}")
    }
}
