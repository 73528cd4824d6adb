//! The long-running verbs: `udpguard run`, the foreground host agent (what a systemd unit or a
//! Kubernetes DaemonSet runs), and `udpguard events`, which follows an existing attachment.
//!
//! `run` attaches the guard if nothing is attached to the cgroup, and then detaches it on
//! SIGINT/SIGTERM; or it adopts the attachment already there (applying `--mode`/`--errno` if
//! given) and leaves it attached on exit. Either way it streams the conflict events to
//! stdout, logs to stderr (the journal under systemd), serves `/metrics` and `/healthz`
//! (127.0.0.1:10108 unless `--metrics-addr` or `--no-metrics`), re-attaches links someone
//! else removed, and scans every namespace for duplicates every `--scan-interval`.
use std::{io::IsTerminal as _, path::PathBuf};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    attachment,
    attachment::Attachment,
    bpffs,
    cgroup::Cgroup,
    events,
    guard::{self, AttachOutcome, AttachRequest},
    privilege,
    routes::RouteMirror,
    watch::Watch,
};

/// What `udpguard run` is asked for.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// What to attach (or adopt), as `attach` takes it.
    pub attach: AttachRequest,
    /// Where to serve `/metrics` and `/healthz`.
    pub metrics: Metrics,
    /// How often to scan every namespace for duplicate 4-tuples (zero: never).
    pub scan_interval: std::time::Duration,
    /// Events as JSON lines.
    pub json: bool,
    /// The cgroup the watch goes on, for the fast path below the cgroup root.
    pub watch_cgroup: Option<PathBuf>,
}

/// Where the agent serves `/metrics` and `/healthz`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Metrics {
    /// [`DEFAULT_METRICS_ADDR`]; when it is taken, the agent runs without metrics (warned).
    #[default]
    Default,
    /// This address, or the agent does not start.
    At(String),
    /// Nowhere.
    Off,
}

/// Where `udpguard run` serves metrics unless told otherwise: outside Prometheus' allocated
/// exporter range (9100-9999), and no port in `/etc/services`.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10108";

/// Sends logs to stderr; `RUST_LOG` filters them (default `info`).
///
/// Under systemd (stderr is the journal stream that `JOURNAL_STREAM` names) they go to the
/// journal itself, each with its priority (`journalctl -p warning` shows the warnings, such as
/// lost events) and no time of their own. Elsewhere they are coloured only on a terminal, and
/// never when `NO_COLOR` is set (<https://no-color.org>).
pub fn init_logging() {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(
                        journal
                            .with_syslog_identifier("udpguard".into())
                            // syslog's meanings: info is 6 (the crate's default is 5, notice).
                            .with_priority_mappings(tracing_journald::PriorityMappings {
                                info: tracing_journald::Priority::Informational,
                                debug: tracing_journald::Priority::Debug,
                                ..tracing_journald::PriorityMappings::new()
                            }),
                    )
                    .try_init();
                return;
            }
            // No journal socket to write to: plain lines on stderr, as below.
            Err(_) => {
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(filter())
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .with_target(false)
                    .without_time()
                    .try_init();
                return;
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false)
        .try_init();
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set to anything but "".
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// True when stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` holds its
/// `device:inode` (a child that inherited the variable but not the stream gets false).
fn stderr_is_journal() -> bool {
    names_stderr(std::env::var_os("JOURNAL_STREAM").as_deref())
}

/// Whether `stream` (`device:inode`) is this process's stderr.
fn names_stderr(stream: Option<&std::ffi::OsStr>) -> bool {
    use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};
    let Some(stream) = stream else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// `udpguard run`.
pub fn run(args: &RunOptions) -> anyhow::Result<()> {
    init_logging();
    privilege::require("run the guard")?;
    // One thread per watched namespace: with glibc's default of eight arenas per CPU, memory
    // freed by threads that came and went stays spread over arenas nobody uses again.
    // SAFETY: mallopt has no preconditions; it runs before any other thread is started.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    runtime()?.block_on(run_async(args))
}

/// `udpguard events`: follows the attachment to `cgroup` (default: the cgroup v2 root);
/// changes nothing.
pub fn events(cgroup: Option<&std::path::Path>, json: bool) -> anyhow::Result<()> {
    init_logging();
    privilege::require("read the conflict events")?;
    let cgroup = Cgroup::open_or_root(cgroup)?;
    let dir = bpffs::pin_root().join(attachment::dir_name(cgroup.id));
    if !dir.exists() {
        bail!("{}", not_attached(&cgroup));
    }
    runtime()?.block_on(async move {
        let shutdown = on_signal()?;
        tracing::info!("following the conflict events of {}", cgroup.path.display());
        events::stream(&dir, json, shutdown).await
    })
}

/// What to say when `events` finds nothing attached to `cgroup`.
fn not_attached(cgroup: &Cgroup) -> String {
    let path = cgroup.path.display();
    let mut message = format!(
        "nothing is attached to {path}: attach the guard first \
         (`udpguard attach --cgroup {path}`, or run the agent: `udpguard run --cgroup {path}`)"
    );
    let others: Vec<String> = crate::status::collect()
        .attachments
        .into_iter()
        .filter_map(|a| a.cgroup)
        .map(|p| p.display().to_string())
        .collect();
    if !others.is_empty() {
        message.push_str(&format!(
            "; attached now: {} (pass one with --cgroup)",
            others.join(", ")
        ));
    }
    message
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A receiver that turns true on the first SIGINT or SIGTERM.
fn on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!("{name}: stopping");
        let _ = stop.send(true);
    });
    Ok(stopped)
}

async fn run_async(args: &RunOptions) -> anyhow::Result<()> {
    // Signals first, so a SIGTERM during the attach is not lost; the listener before the
    // attach, so a bad address changes nothing.
    let shutdown = on_signal()?;
    let listener = match &args.metrics {
        Metrics::At(addr) => Some(
            tokio::net::TcpListener::bind(addr.as_str())
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {addr} for /metrics: pass another --metrics-addr, \
                         or --no-metrics"
                    )
                })?,
        ),
        Metrics::Default => match tokio::net::TcpListener::bind(DEFAULT_METRICS_ADDR).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::warn!(
                    "serving no metrics: cannot listen on {DEFAULT_METRICS_ADDR} ({err}); pass \
                     --metrics-addr HOST:PORT for another address, or --no-metrics"
                );
                None
            }
        },
        Metrics::Off => None,
    };

    let attached = guard::attach(&args.attach)?;
    let (cgroup, outcome, settings) = (&attached.cgroup, attached.outcome, attached.settings);
    for note in attached
        .features
        .missing()
        .into_iter()
        .chain(attached.notes.clone())
    {
        tracing::warn!("{note}");
    }
    let owned = outcome == AttachOutcome::Attached;
    let path = cgroup.path.display().to_string();
    let how = settings.to_string();
    match outcome {
        AttachOutcome::Attached => {
            tracing::info!("attached to {path} ({how}); detaching on exit")
        }
        AttachOutcome::Updated => {
            tracing::info!("adopted the attachment to {path} ({how}); it stays attached on exit")
        }
        AttachOutcome::Replaced => tracing::info!(
            "replaced the attachment to {path} (made by another build) with this build's \
             programs ({how}); it stays attached on exit"
        ),
    }

    let server = listener.map(|listener| crate::http::Server::start(listener, shutdown.clone()));
    let dir = bpffs::pin_root().join(attachment::dir_name(cgroup.id));
    // Before the mirror says it runs (what supervisors and tests wait for): the agent's
    // threads are all there by then.
    crate::health::AGENT.set_running(true);
    let links = keep_links(dir.clone(), cgroup.clone());
    let scans = (!args.scan_interval.is_zero()).then(|| scan_every(args.scan_interval));
    let scope = args.watch_cgroup.as_deref().map(Cgroup::open).transpose()?;
    // Below the cgroup root the fast path needs the watch; at the root, nothing more.
    let watch = match Watch::start(Attachment::open(&dir)?, cgroup, scope.as_ref()) {
        Ok(watch) => Some(watch),
        Err(err) => {
            tracing::warn!("fast path off: cannot watch for connects outside {path}: {err:#}");
            None
        }
    };
    let coverage = watch
        .as_ref()
        .map_or_else(Default::default, Watch::coverage);
    // The route mirror lets the guard check wildcard-bound sockets while we run.
    let mirror = match RouteMirror::start(&Attachment::open(&dir)?, coverage) {
        Ok(mirror) => {
            tracing::info!("mirroring routes: wildcard-bound sockets are checked while this runs");
            Some(mirror)
        }
        Err(err) => {
            tracing::warn!("no route mirror ({err:#}): wildcard-bound sockets pass unchecked");
            None
        }
    };
    let streamed = events::stream(&dir, args.json, shutdown).await;
    drop(links);
    drop(scans);
    crate::health::AGENT.set_running(false);
    if let Some(mirror) = mirror {
        mirror.stop();
    }
    // The fast path is withdrawn everywhere: the watch can go.
    if let Some(watch) = watch {
        watch.stop();
    }
    if let Some(server) = server {
        server.stop().await;
    }
    if owned {
        match guard::detach(Some(&cgroup.path)) {
            Ok(_) => tracing::info!("detached from {path}"),
            Err(crate::error::Error::NotAttached { .. }) => {}
            Err(err) => tracing::error!("detaching from {path}: {err}"),
        }
    } else {
        tracing::info!("left the attachment to {path} in place");
    }
    streamed
}

/// How often the agent looks whether someone else removed its links.
const LINK_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Every [`LINK_CHECK`], on a thread of its own: re-attaches the links of the attachment in
/// `dir` that someone else detached (another agent's sweep of programs it does not know,
/// `bpftool link detach`), warning and counting each time.
fn keep_links(dir: PathBuf, cgroup: Cgroup) -> Periodic {
    Periodic::start(LINK_CHECK, LINK_CHECK, move || {
        if let Err(err) = relink(&dir, &cgroup) {
            crate::health::AGENT.reattach_failed();
            tracing::error!(
                "links removed by someone else, and re-attaching them failed: {err} \
                 (connects in the cgroup are not checked; `udpguard attach` or restarting the \
                 agent attaches again)"
            );
        }
    })
}

/// A thread that runs a job every so often until dropped. It sleeps until the job is due or it
/// is told to stop, nothing in between (an idle agent's wake-ups are its CPU).
struct Periodic {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Periodic {
    /// Runs `job` after `first`, then every `every`.
    fn start(
        first: std::time::Duration,
        every: std::time::Duration,
        mut job: impl FnMut() + Send + 'static,
    ) -> Periodic {
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (flag, wake) = &*stopped;
            let mut wait = first;
            loop {
                let guard = flag.lock().unwrap();
                let (guard, _) = wake.wait_timeout_while(guard, wait, |stop| !*stop).unwrap();
                if *guard {
                    return;
                }
                drop(guard);
                job();
                wait = every;
            }
        });
        Periodic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap() = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One look at the links; re-attaches what was removed.
fn relink(dir: &std::path::Path, cgroup: &Cgroup) -> crate::error::Result<()> {
    let removed: Vec<&str> = attachment::link_states(dir)
        .into_iter()
        .filter(|&(_, state)| state == attachment::LinkState::Removed)
        .map(|(pin, _)| pin)
        .collect();
    if removed.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        "links removed by someone else: {} of {} (another agent's sweep, or `bpftool link \
         detach`?): re-attaching",
        removed.join(", "),
        cgroup.path.display()
    );
    let _lock = bpffs::PinLock::acquire(&bpffs::pin_root())?;
    let done = attachment::reattach_removed(dir, cgroup)?;
    crate::health::AGENT.reattached(done.len() as u64);
    if !done.is_empty() {
        tracing::warn!(
            "re-attached {} to {}",
            done.join(", "),
            cgroup.path.display()
        );
    }
    Ok(())
}

/// Every `interval` (the first a few seconds after start, once the agent has settled), on a
/// thread of its own at a low priority (nice 10, so a scan of many sockets never delays the
/// events): scans every network namespace for duplicate 4-tuples (what `udpguard scan
/// --all-netns` reports) for the `udpguard_scan_*` metrics.
fn scan_every(interval: std::time::Duration) -> Periodic {
    let mut last_starving = None;
    let mut niced = false;
    Periodic::start(FIRST_SCAN.min(interval), interval, move || {
        if !niced {
            // SAFETY: setpriority has no preconditions; who 0 is this thread on Linux.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
            niced = true;
        }
        match crate::scan::summary() {
            Ok(summary) => {
                let starving: usize = summary.per_netns.iter().map(|n| n.starving_sockets).sum();
                let line = format!(
                    "scan: {} connected UDP sockets in {} network namespace(s) in {:.1} ms: {} \
                     duplicate 4-tuple(s), {starving} starving socket(s)",
                    summary.sockets,
                    summary.namespaces,
                    summary.seconds * 1e3,
                    summary
                        .per_netns
                        .iter()
                        .map(|n| n.duplicate_tuples)
                        .sum::<usize>()
                );
                // Said when it changes; at debug level otherwise.
                if last_starving != Some(starving) && starving > 0 {
                    tracing::warn!("{line} (`udpguard scan --all-netns` shows them)");
                } else if last_starving != Some(starving) {
                    tracing::info!("{line}");
                } else {
                    tracing::debug!("{line}");
                }
                last_starving = Some(starving);
                crate::health::AGENT.set_scan(summary);
            }
            Err(err) => tracing::warn!("scan: {err:#}"),
        }
    })
}

/// How long after start the first scan runs.
const FIRST_SCAN: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_and_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some(OsStr::new(""))));
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        assert!(!super::colour(false, None));
    }

    #[test]
    fn only_the_stream_that_is_stderr_is_taken_for_the_journal() {
        use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};
        let fd = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        let meta = std::fs::File::from(fd).metadata().unwrap();
        let ours = format!("{}:{}", meta.dev(), meta.ino());
        assert!(super::names_stderr(Some(ours.as_ref())));
        assert!(!super::names_stderr(Some("1:2".as_ref())));
        assert!(!super::names_stderr(Some("junk".as_ref())));
        assert!(!super::names_stderr(None));
    }
}
