//! The verbs that change the guard: attach and detach.
use std::path::{Path, PathBuf};

use udpguard_common::config::DEFAULT_EVENTS_BUFFER;

use crate::{
    attachment::{self, Attachment},
    bpffs::{self, PinLock},
    cgroup::Cgroup,
    error::{Error, Result},
    loader::Features,
    privilege,
    settings::{Autobind, Errno, Mode, Settings},
    tables::TableSizes,
};

/// What `attach` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Nothing was attached: programs loaded, attached and pinned.
    Attached,
    /// Already attached by this binary: mode and errno applied in place.
    Updated,
    /// Attached by another udpguard build: replaced, with no gap in enforcement.
    Replaced,
}

/// What `attach` (and `run`) are asked for; `None` keeps the current value (or the default).
#[derive(Clone, Debug, Default)]
pub struct AttachRequest {
    /// The cgroup v2 directory to guard (default: the cgroup v2 root).
    pub cgroup: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub errno: Option<Errno>,
    pub autobind: Option<Autobind>,
    /// Bytes of conflict-event ring buffer, when the programs are loaded.
    pub events_buffer: Option<u32>,
    /// Connected UDP sockets the kernel tables are sized for, when the programs are loaded.
    pub max_sockets: Option<u64>,
}

/// What `attach` did, and what the user should know about it.
#[derive(Debug)]
pub struct Attached {
    pub cgroup: Cgroup,
    pub outcome: AttachOutcome,
    pub settings: Settings,
    pub features: Features,
    /// The tables' sizes (None without claims).
    pub sizes: Option<TableSizes>,
    /// Options that did not take effect, and why.
    pub notes: Vec<String>,
}

/// A ring buffer's size must be a power of two and a whole number of pages.
pub fn parse_events_buffer(text: &str) -> std::result::Result<u32, String> {
    let bytes: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if bytes.is_power_of_two() && bytes >= 4096 {
        Ok(bytes)
    } else {
        Err("must be a power of two, at least 4096".into())
    }
}

/// Attaches the guard to a cgroup, or updates it in place.
pub fn attach(request: &AttachRequest) -> Result<Attached> {
    let AttachRequest {
        ref cgroup,
        mode,
        errno,
        autobind,
        events_buffer,
        max_sockets,
    } = *request;
    let sizes = max_sockets.map_or_else(TableSizes::for_this_host, TableSizes::for_sockets);
    privilege::require("attach")?;
    let cgroup = Cgroup::open_or_root(cgroup.as_deref())?;
    let root = bpffs::ensure_pin_root()?;
    // Once begun, it finishes: SIGINT/SIGTERM wait until the attachment is whole.
    let _signals = crate::faults::SignalsHeld::new();
    let _lock = PinLock::acquire(&root)?;
    // Under the lock no other attach is building: what is there is an interrupted run's.
    attachment::remove_leftovers(&root)?;

    let dir = root.join(attachment::dir_name(cgroup.id));
    let existing = dir.exists().then(|| Attachment::open(&dir));
    match existing {
        Some(Ok(mut current)) if current.matches_binary() => {
            let settings = current.settings()?.with(mode, errno, autobind);
            if settings.errno.needs_set_retval() && !current.features().set_retval() {
                return Err(Error::NoSetRetval);
            }
            current.set_settings(settings)?;
            let mut notes = Vec::new();
            // Links someone else detached (another agent's sweep): attached again.
            let relinked = attachment::reattach_removed(&dir, &cgroup)?;
            if !relinked.is_empty() {
                notes.push(format!(
                    "re-attached the {} link(s), removed by someone else",
                    relinked.join(", ")
                ));
            }
            // Sizes are fixed when the programs are loaded: say so rather than ignore them.
            if events_buffer.is_some() || max_sockets.is_some() {
                notes.push(
                    "--events-buffer and --max-sockets apply when the programs are loaded: the \
                     attachment keeps its sizes (detach and attach again to change them)"
                        .to_string(),
                );
            }
            Ok(Attached {
                cgroup,
                outcome: AttachOutcome::Updated,
                settings,
                features: current.features(),
                sizes: current.sizes(),
                notes,
            })
        }
        Some(current) => {
            // Keep what the old attachment was set to, unless told otherwise.
            let old = current.and_then(|a| a.settings()).unwrap_or_default();
            let settings = old.with(mode, errno, autobind);
            let events_buffer = events_buffer.unwrap_or(DEFAULT_EVENTS_BUFFER);
            let loaded =
                attachment::create(&root, &cgroup, settings, events_buffer, sizes, Some(&dir))?;
            Ok(attached(cgroup, AttachOutcome::Replaced, settings, &loaded))
        }
        None => {
            let settings = Settings::default().with(mode, errno, autobind);
            let events_buffer = events_buffer.unwrap_or(DEFAULT_EVENTS_BUFFER);
            let loaded = attachment::create(&root, &cgroup, settings, events_buffer, sizes, None)?;
            Ok(attached(cgroup, AttachOutcome::Attached, settings, &loaded))
        }
    }
}

fn attached(
    cgroup: Cgroup,
    outcome: AttachOutcome,
    settings: Settings,
    loaded: &crate::loader::LoadedGuard,
) -> Attached {
    Attached {
        cgroup,
        outcome,
        settings,
        features: loaded.features,
        sizes: loaded.features.claims().then_some(loaded.sizes),
        notes: Vec::new(),
    }
}

/// What `detach` did.
#[derive(Debug)]
pub struct Detached {
    pub cgroup: Cgroup,
    /// Whether an attachment was there (rather than only an interrupted run's leftovers).
    pub attached: bool,
    /// Directories left by interrupted runs, removed too.
    pub leftovers: usize,
}

/// Detaches the guard from `cgroup` (default: the cgroup v2 root) and removes its pins, and
/// whatever an interrupted `attach` or `detach` left for it.
pub fn detach(cgroup: Option<&Path>) -> Result<Detached> {
    privilege::require("detach")?;
    let cgroup = Cgroup::open_or_root(cgroup)?;
    let root = bpffs::pin_root();
    if !root.exists() {
        return Err(Error::NotAttached {
            cgroup: cgroup.path,
        });
    }
    bpffs::check_ours(&root, true)?;
    let _signals = crate::faults::SignalsHeld::new();
    let _lock = PinLock::acquire(&root)?;
    // Looked at under the lock: a detach that ran meanwhile has removed it.
    let dir = root.join(attachment::dir_name(cgroup.id));
    let attached = dir.exists();
    if attached {
        attachment::retire(&root, &dir, cgroup.id)?;
    }
    let leftovers = attachment::remove_leftovers_of(&root, cgroup.id)?;
    if !attached && leftovers == 0 {
        return Err(Error::NotAttached {
            cgroup: cgroup.path,
        });
    }
    Ok(Detached {
        cgroup,
        attached,
        leftovers,
    })
}

/// Detaches every attachment and removes every interrupted run's leftovers; returns the pin
/// directories removed.
pub fn detach_all() -> Result<Vec<std::path::PathBuf>> {
    privilege::require("detach")?;
    let root = bpffs::pin_root();
    if !root.exists() {
        return Ok(Vec::new());
    }
    bpffs::check_ours(&root, true)?;
    let _signals = crate::faults::SignalsHeld::new();
    let _lock = PinLock::acquire(&root)?;
    let mut removed = Vec::new();
    for (kind, id, dir) in attachment::list_all(&root) {
        match kind {
            attachment::DirKind::Attached => attachment::retire(&root, &dir, id)?,
            _ => attachment::remove(&dir)?,
        }
        removed.push(dir);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_buffer_sizes() {
        assert_eq!(parse_events_buffer("4096"), Ok(4096));
        assert!(parse_events_buffer("4095").is_err());
        assert!(parse_events_buffer("6144").is_err());
        assert!(parse_events_buffer("2048").is_err());
        assert!(parse_events_buffer("x").is_err());
    }
}
