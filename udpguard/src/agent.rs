//! The long-running verbs: `udpguard run`, the foreground host agent (what a systemd unit or a
//! Kubernetes DaemonSet runs), and `udpguard events`, which follows an existing attachment.
//!
//! `run` attaches the guard if nothing is attached to the cgroup, and then detaches it on
//! SIGINT/SIGTERM; or it adopts the attachment already there (applying `--mode`/`--errno` if
//! given) and leaves it attached on exit. Either way it streams the conflict events to
//! stdout, logs to stderr, and serves `/metrics` when given `--metrics-addr`.
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
    /// Serve `/metrics` and `/healthz` here.
    pub metrics_addr: Option<String>,
    /// Events as JSON lines.
    pub json: bool,
    /// The cgroup the watch goes on, for the fast path below the cgroup root.
    pub watch_cgroup: Option<PathBuf>,
}

/// Sends logs to stderr; `RUST_LOG` filters them (default `info`). Under systemd (which sets
/// `JOURNAL_STREAM`) the journal stamps lines itself, so they carry no time.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().try_init()
    } else {
        logs.try_init()
    };
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
    let listener = match &args.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr.as_str())
                .await
                .with_context(|| format!("cannot listen on {addr} for /metrics"))?,
        ),
        None => None,
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
