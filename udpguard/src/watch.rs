//! The agent's watch for the fast path (the programs are in `udpguard-ebpf/src/watch.rs`).
//!
//! At the cgroup root the guard sees every connect on the host, and the fast path needs
//! nothing more. Below it, sockets of other cgroups can connect in the guarded namespaces (a
//! process there, or a thread that `setns()`ed in), unseen by the guard. The watch programs go
//! on an ancestor cgroup that holds every process that can enter those namespaces, named with
//! `--watch-cgroup` (the cgroup v2 root always does); they note each connect the guard
//! did not see, in the kernel, before it can hold a tuple. Their links are pinned with the
//! attachment, so a killed agent leaves them enforcing until its lease runs out and `detach`
//! removes them with the rest.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use udpguard_common::config::flags;

use crate::{
    attachment::{self, Attachment, WATCH_PINS},
    cgroup::Cgroup,
    loader,
};

/// How long after the watch is attached the fast path may rely on it: a connect whose hook ran
/// just before may still be on its way to the kernel's hash (its tuple is not in the seeding
/// dump if it lands after it).
const SETTLE: Duration = Duration::from_secs(1);

/// Whether every connect in the guarded namespaces is seen, and since when.
#[derive(Debug, Default)]
pub struct Coverage {
    /// None: not covered (the fast path stays off), with the reason said once at start.
    since: Option<Instant>,
    /// The watched cgroup, when the watch does the seeing (None at the cgroup root).
    scope: Option<std::path::PathBuf>,
}

impl Coverage {
    /// Coverage taken as given: at the cgroup root, or for a benchmark whose namespace holds
    /// nothing but its own guarded processes.
    pub fn assumed() -> Coverage {
        Coverage {
            since: Some(Instant::now() - SETTLE),
            scope: None,
        }
    }

    /// True when the fast path may be on: every connect is seen, and has been for a while.
    pub fn covered(&self) -> bool {
        self.since.is_some_and(|since| since.elapsed() >= SETTLE)
    }

    /// True when the namespace `netns` (its nsfs identity) may have the fast path: covered,
    /// and, under a watch, every task in it is inside the watched cgroup. The watch's word is
    /// only as good as the promise that its cgroup holds everyone who can enter; a namespace
    /// where a task outside it already is (the agent's own, often) breaks the promise, and the
    /// fast path stays off there.
    pub fn covers(&self, netns: (u64, u64)) -> bool {
        self.covered()
            && self
                .scope
                .as_deref()
                .is_none_or(|scope| every_task_inside(netns, scope))
    }
}

/// True when every task (thread) in the namespace `netns`, but ours, is in `scope` or below.
fn every_task_inside(netns: (u64, u64), scope: &std::path::Path) -> bool {
    let Ok(root) = crate::cgroup::root() else {
        return false;
    };
    crate::sys::procfs::others_tasks()
        .filter(|task| crate::sys::netns::identity_of_task(task) == Some(netns))
        // Outside, or gone before we could tell.
        .all(|task| {
            crate::sys::procfs::cgroup_of(&task, &root).is_some_and(|c| c.starts_with(scope))
        })
}

/// The watch of one attachment while the agent runs.
pub struct Watch {
    attachment: Attachment,
    attached: bool,
    coverage: Arc<Coverage>,
}

impl Watch {
    /// Makes sure every connect in the namespaces of the attachment to `guarded` is seen: at
    /// the cgroup root by the guard itself, elsewhere by watch programs on `scope` (none: the
    /// fast path stays off). Without claims there is no fast path to serve.
    pub fn start(
        attachment: Attachment,
        guarded: &Cgroup,
        scope: Option<&Cgroup>,
    ) -> anyhow::Result<Watch> {
        remove_watch(&attachment)?;
        let mut watch = Watch {
            attachment,
            attached: false,
            coverage: Arc::new(Coverage::default()),
        };
        if !watch.attachment.features().claims() {
            return Ok(watch);
        }
        if guarded.is_host_root() {
            watch.coverage = Arc::new(Coverage::assumed());
            return Ok(watch);
        }
        // Putting programs on a cgroup the operator did not name would be a surprise: below
        // the root the watch is asked for.
        let Some(scope) = scope else {
            tracing::info!(
                "fast path off: attached below the cgroup root, where processes of other cgroups \
                 can connect in the guarded namespaces unseen; pass --watch-cgroup with a cgroup \
                 that holds every process able to enter them (the cgroup v2 root always does)"
            );
            return Ok(watch);
        };
        anyhow::ensure!(
            guarded.path.starts_with(&scope.path),
            "--watch-cgroup {} does not hold the guarded cgroup {}",
            scope.path.display(),
            guarded.path.display()
        );
        // Marks first, then the watch: a connect the watch sees unmarked only turns the fast
        // path off.
        watch.attachment.set_flags(flags::WATCHED, 0)?;
        let links = loader::attach_watch(&watch.attachment.dir, scope)?;
        for (pin, link) in links {
            link.pin(watch.attachment.dir.join(pin))
                .with_context(|| format!("pinning the watch link {pin}"))?;
        }
        watch.attached = true;
        watch.coverage = Arc::new(Coverage {
            since: Some(Instant::now()),
            // The cgroup root holds every task: nothing to check against it.
            scope: (!scope.is_host_root()).then(|| scope.path.clone()),
        });
        tracing::info!(
            "watching {} for connects outside {} (fast path below the cgroup root)",
            scope.path.display(),
            guarded.path.display()
        );
        Ok(watch)
    }

    pub fn coverage(&self) -> Arc<Coverage> {
        Arc::clone(&self.coverage)
    }

    /// Takes the watch off (call once the fast path is withdrawn everywhere).
    pub fn stop(mut self) {
        if self.attached {
            if let Err(e) = remove_watch(&self.attachment) {
                tracing::warn!("removing the watch: {e:#}");
            }
            if let Err(e) = self.attachment.set_flags(0, flags::WATCHED) {
                tracing::warn!("clearing the watch flag: {e:#}");
            }
        }
    }
}

/// Detaches and unpins the watch links of an attachment, if any.
fn remove_watch(attachment: &Attachment) -> anyhow::Result<()> {
    for pin in WATCH_PINS {
        attachment::detach_link(&attachment.dir.join(pin))?;
    }
    Ok(())
}
