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

/// What is already at a cgroup's attachment place, as [`plan`] needs to know it.
#[derive(Debug)]
enum Found {
    Nothing,
    /// Attached by this binary: its settings, and whether its programs can set an errno.
    SameBuild {
        settings: Settings,
        set_retval: bool,
    },
    /// Attached by another build, or unreadable: its settings when they could be read.
    OtherBuild {
        settings: Option<Settings>,
    },
}

/// What `attach` will do.
#[derive(Debug)]
enum Plan {
    /// Load the programs and attach them, in place of what is there for `Replaced`.
    Load {
        outcome: AttachOutcome,
        settings: Settings,
    },
    /// Apply the settings to the attachment in place; `notes`: options that cannot.
    Update {
        settings: Settings,
        notes: Vec<String>,
    },
    Refuse(Error),
}

/// Decides an attach from what is there and what is asked. Pure: no I/O.
fn plan(found: Found, request: &AttachRequest) -> Plan {
    let (mode, errno, autobind) = (request.mode, request.errno, request.autobind);
    match found {
        Found::Nothing => Plan::Load {
            outcome: AttachOutcome::Attached,
            settings: Settings::default().with(mode, errno, autobind),
        },
        // Keep what the old attachment was set to, unless told otherwise.
        Found::OtherBuild { settings } => Plan::Load {
            outcome: AttachOutcome::Replaced,
            settings: settings.unwrap_or_default().with(mode, errno, autobind),
        },
        Found::SameBuild {
            settings,
            set_retval,
        } => {
            let settings = settings.with(mode, errno, autobind);
            // The loaded programs cannot choose an errno: refuse rather than pretend.
            if settings.errno.needs_set_retval() && !set_retval {
                return Plan::Refuse(Error::NoSetRetval);
            }
            let mut notes = Vec::new();
            // Sizes are fixed when the programs are loaded: say so rather than ignore them.
            if request.events_buffer.is_some() || request.max_sockets.is_some() {
                notes.push(
                    "--events-buffer and --max-sockets apply when the programs are loaded: the \
                     attachment keeps its sizes (detach and attach again to change them)"
                        .to_string(),
                );
            }
            Plan::Update { settings, notes }
        }
    }
}

/// Attaches the guard to a cgroup, or updates it in place: looks at what is there, decides
/// ([`plan`]), and carries the plan out, all under the pin root's lock.
pub fn attach(request: &AttachRequest) -> Result<Attached> {
    let sizes = request
        .max_sockets
        .map_or_else(TableSizes::for_this_host, TableSizes::for_sockets);
    privilege::require("attach")?;
    let cgroup = Cgroup::open_or_root(request.cgroup.as_deref())?;
    let root = bpffs::ensure_pin_root()?;
    // Once begun, it finishes: SIGINT/SIGTERM wait until the attachment is whole.
    let _signals = crate::faults::SignalsHeld::new();
    let _lock = PinLock::acquire(&root)?;
    // Under the lock no other attach is building: what is there is an interrupted run's.
    attachment::remove_leftovers(&root)?;

    let dir = root.join(attachment::dir_name(cgroup.id));
    let mut current = dir.exists().then(|| Attachment::open(&dir));
    let found = match &current {
        None => Found::Nothing,
        Some(Ok(current)) if current.matches_binary() => Found::SameBuild {
            settings: current.settings()?,
            set_retval: current.features().set_retval(),
        },
        Some(current) => Found::OtherBuild {
            settings: current.as_ref().ok().and_then(|a| a.settings().ok()),
        },
    };
    match plan(found, request) {
        Plan::Refuse(error) => Err(error),
        Plan::Update { settings, notes } => {
            let Some(Ok(current)) = current.as_mut() else {
                unreachable!("an update plan is made only for a readable attachment")
            };
            current.set_settings(settings)?;
            let mut notes = notes;
            // Links someone else detached (another agent's sweep): attached again.
            let relinked = attachment::reattach_removed(&dir, &cgroup)?;
            if !relinked.is_empty() {
                notes.push(format!(
                    "re-attached the {} link(s), removed by someone else",
                    relinked.join(", ")
                ));
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
        Plan::Load { outcome, settings } => {
            let events_buffer = request.events_buffer.unwrap_or(DEFAULT_EVENTS_BUFFER);
            let replacing = (outcome == AttachOutcome::Replaced).then_some(dir.as_path());
            let loaded =
                attachment::create(&root, &cgroup, settings, events_buffer, sizes, replacing)?;
            Ok(attached(cgroup, outcome, settings, &loaded))
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

    fn ask(mode: Option<Mode>, errno: Option<Errno>) -> AttachRequest {
        AttachRequest {
            mode,
            errno,
            ..AttachRequest::default()
        }
    }

    #[test]
    fn nothing_there_loads_with_what_is_asked_over_the_defaults() {
        let Plan::Load { outcome, settings } = plan(Found::Nothing, &ask(Some(Mode::Audit), None))
        else {
            panic!("not a load");
        };
        assert_eq!(outcome, AttachOutcome::Attached);
        assert_eq!(settings.mode, Mode::Audit);
        assert_eq!(settings.errno, Settings::default().errno);
    }

    #[test]
    fn another_build_is_replaced_keeping_its_settings_unless_told_otherwise() {
        let old = Settings::default().with(Some(Mode::Audit), Some(Errno::Eaddrinuse), None);
        let found = Found::OtherBuild {
            settings: Some(old),
        };
        let Plan::Load { outcome, settings } = plan(found, &ask(None, Some(Errno::Eperm))) else {
            panic!("not a load");
        };
        assert_eq!(outcome, AttachOutcome::Replaced);
        assert_eq!(settings.mode, Mode::Audit, "kept");
        assert_eq!(settings.errno, Errno::Eperm, "asked");
        // Unreadable: replaced with the defaults and what is asked.
        let found = Found::OtherBuild { settings: None };
        assert!(matches!(
            plan(found, &ask(None, None)),
            Plan::Load { outcome: AttachOutcome::Replaced, settings } if settings == Settings::default()
        ));
    }

    #[test]
    fn the_same_build_is_updated_in_place_and_says_what_it_cannot_change() {
        let found = || Found::SameBuild {
            settings: Settings::default(),
            set_retval: true,
        };
        let Plan::Update { settings, notes } = plan(found(), &ask(Some(Mode::Audit), None)) else {
            panic!("not an update");
        };
        assert_eq!(settings.mode, Mode::Audit);
        assert!(notes.is_empty());
        let sized = AttachRequest {
            max_sockets: Some(1000),
            ..AttachRequest::default()
        };
        let Plan::Update { notes, .. } = plan(found(), &sized) else {
            panic!("not an update");
        };
        assert!(notes[0].contains("--max-sockets"), "{notes:?}");
    }

    #[test]
    fn an_errno_the_loaded_programs_cannot_set_is_refused() {
        let found = Found::SameBuild {
            settings: Settings::default(),
            set_retval: false,
        };
        assert!(matches!(
            plan(found, &ask(None, Some(Errno::Eaddrinuse))),
            Plan::Refuse(Error::NoSetRetval)
        ));
    }

    #[test]
    fn events_buffer_sizes() {
        assert_eq!(parse_events_buffer("4096"), Ok(4096));
        assert!(parse_events_buffer("4095").is_err());
        assert!(parse_events_buffer("6144").is_err());
        assert!(parse_events_buffer("2048").is_err());
        assert!(parse_events_buffer("x").is_err());
    }
}
