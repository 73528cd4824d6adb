//! The verbs that change the guard: attach and detach.
use std::path::Path;

use crate::{
    attachment::{self, Attachment},
    bpffs::{self, PinLock},
    cgroup::Cgroup,
    error::{Error, Result},
    privilege,
    settings::{Errno, Mode, Settings},
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

/// The ring buffer's default size: room for about 2,500 conflict events between two reads.
pub const DEFAULT_EVENTS_BUFFER: u32 = 256 * 1024;

/// What `attach` was asked for; `None` keeps the current value (or the default).
#[derive(Clone, Debug, Default)]
pub struct AttachRequest<'a> {
    /// The cgroup to guard; `None` for the cgroup v2 root.
    pub cgroup: Option<&'a Path>,
    pub mode: Option<Mode>,
    pub errno: Option<Errno>,
    /// Bytes in the event ring buffer (a power of two, at least a page); used when the
    /// programs are loaded, not when an attachment is updated in place.
    pub events_buffer: Option<u32>,
}

/// Attaches the guard to a cgroup, or updates it in place.
/// Returns the cgroup, what was done, and the settings now in force.
pub fn attach(request: &AttachRequest<'_>) -> Result<(Cgroup, AttachOutcome, Settings)> {
    let AttachRequest {
        cgroup,
        mode,
        errno,
        events_buffer,
    } = *request;
    let events_buffer = events_buffer.unwrap_or(DEFAULT_EVENTS_BUFFER);
    privilege::require("attach")?;
    let cgroup = Cgroup::open_or_root(cgroup)?;
    let root = bpffs::ensure_pin_root()?;
    let _lock = PinLock::acquire(&root)?;
    attachment::remove_leftovers(&root)?;

    let dir = root.join(attachment::dir_name(cgroup.id));
    let existing = dir.exists().then(|| Attachment::open(&dir));
    match existing {
        Some(Ok(mut current)) if current.matches_binary() => {
            let settings = current.settings()?.with(mode, errno);
            if settings.errno.needs_set_retval() && current.meta.set_retval == 0 {
                return Err(Error::NoSetRetval);
            }
            current.set_settings(settings)?;
            Ok((cgroup, AttachOutcome::Updated, settings))
        }
        Some(current) => {
            // Keep what the old attachment was set to, unless told otherwise.
            let old = current.and_then(|a| a.settings()).unwrap_or_default();
            let settings = old.with(mode, errno);
            attachment::create(&root, &cgroup, settings, events_buffer, Some(&dir))?;
            Ok((cgroup, AttachOutcome::Replaced, settings))
        }
        None => {
            let settings = Settings::default().with(mode, errno);
            attachment::create(&root, &cgroup, settings, events_buffer, None)?;
            Ok((cgroup, AttachOutcome::Attached, settings))
        }
    }
}

/// Detaches the guard from `cgroup` (default: the cgroup v2 root) and removes its pins.
pub fn detach(cgroup: Option<&Path>) -> Result<Cgroup> {
    privilege::require("detach")?;
    let cgroup = Cgroup::open_or_root(cgroup)?;
    let root = bpffs::pin_root();
    let dir = root.join(attachment::dir_name(cgroup.id));
    if !dir.exists() {
        return Err(Error::NotAttached {
            cgroup: cgroup.path,
        });
    }
    let _lock = PinLock::acquire(&root)?;
    attachment::remove(&dir)?;
    Ok(cgroup)
}

/// Detaches every attachment; returns the pin directories removed.
pub fn detach_all() -> Result<Vec<std::path::PathBuf>> {
    privilege::require("detach")?;
    let root = bpffs::pin_root();
    if !root.exists() {
        return Ok(Vec::new());
    }
    let _lock = PinLock::acquire(&root)?;
    attachment::remove_leftovers(&root)?;
    let mut removed = Vec::new();
    for (_, dir) in attachment::list_dirs(&root) {
        attachment::remove(&dir)?;
        removed.push(dir);
    }
    Ok(removed)
}
