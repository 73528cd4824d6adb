//! `udpguard status`: what is attached where, how it is set, and what it counted.
//! It only reads: it never mounts, creates, or locks anything.
use std::{collections::BTreeMap, path::PathBuf};

use serde::Serialize;
use udpguard_common::Counter;

pub use crate::attachment::DirKind as State;

use crate::{
    attachment::{self, Attachment, DirKind, LinkState},
    bpffs, cgroup,
};

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct Status {
    pub attachments: Vec<AttachmentStatus>,
    /// Why the pin root cannot be trusted, if it cannot (then nothing in it is shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One attachment as `status` shows it.
#[derive(Debug, Serialize)]
pub struct AttachmentStatus {
    /// "attached", or "building"/"retiring" for what an interrupted `attach` or `detach` left
    /// (its links may be attached and enforcing; `udpguard detach` removes it).
    pub state: DirKind,
    /// The cgroup's path, or None when the cgroup no longer exists.
    pub cgroup: Option<PathBuf>,
    pub cgroup_id: u64,
    pub pin_dir: PathBuf,
    /// "enforce" or "audit"; None when the pins cannot be read.
    pub mode: Option<&'static str>,
    /// "EPERM", "EADDRINUSE" or "EADDRNOTAVAIL".
    pub errno: Option<&'static str>,
    /// "allow" or "unique": what happens to sockets auto-bound at connect.
    pub autobind: Option<&'static str>,
    pub programs: Programs,
    /// Whether the pinned programs were loaded from this binary's eBPF object.
    pub matches_binary: bool,
    /// Seconds since the epoch.
    pub attached_at: Option<u64>,
    /// Counter name -> value, summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    /// Tuples held or being connected to by sockets in the cgroup (the claim table's entries).
    pub claims: Option<usize>,
    /// The kernel tables' sizes and use (None without claims).
    pub tables: Option<Tables>,
    /// Which build of the programs runs: "full" (claims, any errno), "eperm-only" (claims,
    /// EPERM only: no bpf_set_retval, before 5.18) or "compat" (the kernel's lookup alone: no
    /// race protection, no fast path, EPERM only; before 5.12, or forced with
    /// UDPGUARD_FORCE_COMPAT=1). None when the pins cannot be read.
    pub kernel_mode: Option<&'static str>,
    /// True when the "compat" build was forced (UDPGUARD_FORCE_COMPAT=1), not the kernel's lack.
    pub kernel_mode_forced: bool,
    /// What the programs cannot do on this kernel, and why (empty when nothing is off).
    pub degraded: Vec<String>,
    /// The same, by feature, for metrics labels.
    #[serde(skip)]
    pub off: Vec<crate::loader::Off>,
    /// Network namespaces where the O(1) no-conflict path is on (`udpguard run` turns it on).
    pub fast_path_namespaces: Option<usize>,
    /// Each link pin and whether it is "attached", "removed" (by someone else: its program
    /// no longer runs) or "missing".
    pub links: BTreeMap<&'static str, LinkState>,
    /// Why the pins could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The claim table and socket records of an attachment.
#[derive(Debug, Serialize)]
pub struct Tables {
    /// Claims the table holds in all.
    pub claim_capacity: usize,
    /// Buckets that spilled claims into another (a sign the table is getting full).
    pub spilled_buckets: usize,
    /// Places for socket records.
    pub records: u32,
    /// Kernel memory both take, in bytes.
    pub memory_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Programs {
    pub connect4: Option<u32>,
    pub connect6: Option<u32>,
}

/// Reads every attachment under the pin root, and what interrupted runs left there.
pub fn collect() -> Status {
    let root = bpffs::pin_root();
    if root.exists()
        && let Err(problem) = bpffs::check_ours(&root, false)
    {
        return Status {
            attachments: Vec::new(),
            problem: Some(problem.to_string()),
        };
    }
    let cgroup_root = cgroup::root().ok();
    let attachments = attachment::list_all(&root)
        .into_iter()
        .map(|(kind, id, dir)| {
            let path = cgroup_root
                .as_deref()
                .and_then(|root| cgroup::path_of_id(root, id));
            describe(kind, id, path, dir)
        })
        .collect();
    Status {
        attachments,
        problem: None,
    }
}

/// What to say when an attachment's pins cannot be read.
pub fn unreadable(err: &crate::error::Error) -> String {
    let cause = match err {
        crate::error::Error::Bpf(e) => e
            .chain()
            .find_map(|c| c.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind),
        crate::error::Error::Io { source, .. } => Some(source.kind()),
        _ => None,
    };
    match cause {
        Some(std::io::ErrorKind::NotFound) => {
            format!("{err} (it is being replaced or removed right now: run status again)")
        }
        Some(std::io::ErrorKind::PermissionDenied) => {
            format!("{err} (permission denied: run status as root)")
        }
        _ => format!("{err} (made by another udpguard version? `udpguard attach` replaces it)"),
    }
}

fn describe(
    state: DirKind,
    cgroup_id: u64,
    cgroup: Option<PathBuf>,
    pin_dir: PathBuf,
) -> AttachmentStatus {
    let mut status = AttachmentStatus {
        state,
        cgroup,
        cgroup_id,
        pin_dir,
        mode: None,
        errno: None,
        autobind: None,
        programs: Programs {
            connect4: None,
            connect6: None,
        },
        matches_binary: false,
        attached_at: None,
        counters: BTreeMap::new(),
        claims: None,
        tables: None,
        kernel_mode: None,
        kernel_mode_forced: false,
        degraded: Vec::new(),
        off: Vec::new(),
        fast_path_namespaces: None,
        links: BTreeMap::new(),
        error: None,
    };
    status.links = attachment::link_states(&status.pin_dir)
        .into_iter()
        .collect();
    let read = Attachment::open(&status.pin_dir).and_then(|a| {
        let settings = a.settings()?;
        let counters = a.counters()?;
        Ok((a, settings, counters))
    });
    match read {
        Ok((attachment, settings, counters)) => {
            let [connect4, connect6] = attachment.program_ids();
            status.mode = Some(settings.mode.name());
            status.errno = Some(settings.errno.name());
            status.autobind = Some(settings.autobind.name());
            status.programs = Programs { connect4, connect6 };
            status.matches_binary = attachment.matches_binary();
            status.attached_at = Some(attachment.meta.attached_at);
            if attachment.features().claims()
                && let Ok(table) = attachment.claim_table(false)
            {
                status.claims = Some(table.count());
                status.tables = attachment.sizes().map(|sizes| Tables {
                    claim_capacity: table.capacity(),
                    spilled_buckets: table.spilled_buckets(),
                    records: sizes.records,
                    memory_bytes: sizes.bytes(),
                });
            }
            let features = attachment.features();
            status.kernel_mode = Some(features.mode());
            status.kernel_mode_forced = features.forced_compat();
            status.degraded = features.missing();
            status.off = features.off();
            status.fast_path_namespaces =
                crate::fastpath::NamespaceTable::open(&status.pin_dir, false)
                    .ok()
                    .map(|table| table.namespaces_on());
            status.counters = Counter::ALL
                .iter()
                .map(|&c| (c.name(), counters.get(c)))
                .collect();
        }
        Err(err) => status.error = Some(unreadable(&err)),
    }
    status
}

impl AttachmentStatus {
    /// True when the attachment is whole and enforcing as this binary would: its pins read,
    /// its connect programs attached, made by this build.
    pub fn healthy(&self) -> bool {
        self.state == DirKind::Attached
            && self.error.is_none()
            && self.matches_binary
            && self.programs.connect4.is_some()
            && self.programs.connect6.is_some()
            && self.links.values().all(|&s| s == LinkState::Attached)
    }

    /// The links someone else removed (pinned, but no longer attached to the cgroup).
    pub fn links_removed(&self) -> Vec<&'static str> {
        self.links
            .iter()
            .filter(|&(_, &s)| s == LinkState::Removed)
            .map(|(&pin, _)| pin)
            .collect()
    }
}
