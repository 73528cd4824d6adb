//! Following an attachment's ring buffer: decode each event, let the flood gate decide, name
//! the holder and the cgroup of the events shown, print them. Logs (lost events, a replaced
//! or removed attachment) go to stderr through `tracing`.
use std::{
    collections::HashMap,
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};
use udpguard_common::Counter;

use super::{
    fanout::{Consumer, Received, Rendezvous, Role, Subscriber},
    flood::{FloodGate, Summary, WINDOW_NS},
    format::Line,
    holder::HolderFinder,
    record::{Action, Conflict, EventRecord, LostRecord, SummaryRecord, boot_clock_ns},
};
use crate::{
    attachment::{self, Attachment},
    cgroup,
};

/// How often summaries are due, lost events are checked and the ring is drained anyway.
const TICK: Duration = Duration::from_secs(1);

/// Events alike for the flood gate: same verdict on the same tuple in the same namespace.
type FloodKey = (Action, Option<u32>, u64, SocketAddr, SocketAddr);

/// Streams the events of the attachment pinned in `dir` to stdout until `shutdown` turns true
/// (or its sender goes), stdout closes, or the attachment is removed (an error). Any number of
/// readers can do this at once, each getting every event (see [`super::fanout`]).
pub async fn stream(
    dir: &Path,
    json: bool,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let rendezvous = Rendezvous::of(dir)?;
    let mut feed = Feed::join(&rendezvous, dir).await?;
    let mut source = Source::open(dir)?;
    let mut printer = Printer { json, open: true };
    let mut gate: FloodGate<FloodKey, Conflict> = FloodGate::default();
    let mut resolver = Some(Resolver::default());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopping = |shutdown: &watch::Receiver<bool>| *shutdown.borrow();

    while printer.open && !stopping(&shutdown) {
        let events = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() { break }
                continue;
            }
            next = feed.next() => match next? {
                Next::Events(events) => events,
                Next::Dropped(n) => {
                    tracing::warn!(
                        "{n} conflict events lost by this reader: it fell behind the one that \
                         reads the kernel's ring (they are still counted)"
                    );
                    printer.lost(n, "reader");
                    continue;
                }
                Next::Ended => {
                    // The reader that served us went: serve, or find the one who does now.
                    feed = Feed::join(&rendezvous, dir).await?;
                    continue;
                }
                Next::Nothing => continue,
            },
            _ = tick.tick() => {
                let summaries = gate.due(boot_clock_ns());
                printer.summaries(&mut resolver, summaries).await;
                if let Some(n) = source.check_lost() {
                    printer.lost(n, "ring_buffer");
                }
                if source.replaced()? {
                    source = Source::open(dir)?;
                    feed.reopen(dir)?;
                }
                // A wake-up can slip between the last read and clearing readiness: drain
                // here too, so an event never waits longer than a tick.
                feed.drain_now()
            }
        };
        let conflicts = decode(&events, &mut source.undecodable);
        for conflict in conflicts {
            if !printer.open {
                break;
            }
            let now = conflict.boot_ns;
            printer.summaries(&mut resolver, gate.due(now)).await;
            if gate.admit(flood_key(&conflict), conflict.clone(), now) {
                // When stopping, what was read is still printed, without the slow holder
                // lookup, so that exit stays quick and no event read is dropped unseen.
                let find_holder = !stopping(&shutdown);
                let record = resolve(&mut resolver, move |r| {
                    let cgroup = r.cgroups.path(conflict.cgroup_id);
                    let holder = find_holder.then(|| r.holders.find(&conflict)).flatten();
                    EventRecord::new(&conflict, cgroup, holder)
                })
                .await;
                printer.print(&Line::Event(record));
            }
        }
    }
    let left = gate.drain(boot_clock_ns());
    printer.summaries(&mut resolver, left).await;
    Ok(())
}

fn flood_key(conflict: &Conflict) -> FloodKey {
    (
        conflict.action,
        conflict.errno,
        conflict.netns_cookie,
        conflict.local,
        conflict.remote,
    )
}

/// Where this reader's events come from: the kernel's ring (it is the consumer, and serves
/// the others), or the consumer's socket.
enum Feed {
    Ring {
        consumer: Consumer,
        ring: Box<AsyncFd<RingBuf<MapData>>>,
    },
    Socket(Subscriber),
}

/// What [`Feed::next`] brought.
enum Next {
    /// Events, as the kernel wrote them.
    Events(Vec<Vec<u8>>),
    Dropped(u64),
    Ended,
    /// Nothing to show (a subscriber joined).
    Nothing,
}

impl Feed {
    async fn join(rendezvous: &Rendezvous, dir: &Path) -> anyhow::Result<Feed> {
        Ok(match rendezvous.join().await? {
            Role::Consumer(consumer) => {
                tracing::info!("reading the events from the kernel (and serving other readers)");
                Feed::Ring {
                    consumer,
                    ring: Box::new(open_ring(dir)?),
                }
            }
            Role::Subscriber(subscriber) => {
                tracing::info!("reading the events through the reader that reads the kernel's");
                Feed::Socket(subscriber)
            }
        })
    }

    async fn next(&mut self) -> anyhow::Result<Next> {
        match self {
            Feed::Ring { consumer, ring } => tokio::select! {
                ready = ring.readable_mut() => {
                    let mut ready = ready.context("waiting for events")?;
                    let events = drain(ready.get_inner_mut());
                    ready.clear_ready();
                    consumer.serve(&events);
                    Ok(Next::Events(events))
                }
                accepted = consumer.accept() => accepted.map(|()| Next::Nothing),
            },
            Feed::Socket(subscriber) => Ok(match subscriber.next().await {
                Received::Events(events) => Next::Events(events),
                Received::Dropped(n) => Next::Dropped(n),
                Received::Ended => Next::Ended,
            }),
        }
    }

    /// What the ring holds now, for the consumer (served too); nothing for a subscriber.
    fn drain_now(&mut self) -> Vec<Vec<u8>> {
        match self {
            Feed::Ring { consumer, ring } => {
                let events = drain(ring.get_mut());
                consumer.serve(&events);
                events
            }
            Feed::Socket(_) => Vec::new(),
        }
    }

    /// Follows the ring of the attachment that replaced the one in `dir`.
    fn reopen(&mut self, dir: &Path) -> anyhow::Result<()> {
        if let Feed::Ring { ring, .. } = self {
            **ring = open_ring(dir)?;
        }
        Ok(())
    }
}

fn open_ring(dir: &Path) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let ring = attachment::open_events(dir)?;
    // SAFETY: the ring buffer owns its map's descriptor and keeps it open, unchanged, for its
    // whole life, which the AsyncFd now owns.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the event ring buffer")?;
    Ok(ring)
}

/// Every event waiting in `ring`, as the kernel wrote it.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(item.to_vec());
    }
    events
}

/// The events decoded; counts those that do not decode.
fn decode(events: &[Vec<u8>], undecodable: &mut u64) -> Vec<Conflict> {
    let mut conflicts = Vec::new();
    for event in events {
        match Conflict::decode(event) {
            Some(conflict) => conflicts.push(conflict),
            None => {
                *undecodable += 1;
                if *undecodable == 1 {
                    tracing::warn!(
                        "an event did not decode: is the attachment from another build?"
                    );
                }
            }
        }
    }
    conflicts
}

/// Runs `work` on the resolver on a blocking thread (it reads /proc and enters namespaces).
async fn resolve<T: Send + 'static>(
    resolver: &mut Option<Resolver>,
    work: impl FnOnce(&mut Resolver) -> T + Send + 'static,
) -> T {
    let mut taken = resolver.take().unwrap_or_default();
    let (back, value) = tokio::task::spawn_blocking(move || {
        let value = work(&mut taken);
        (taken, value)
    })
    .await
    .expect("resolving an event does not panic");
    *resolver = Some(back);
    value
}

/// The attachment being followed: its counters (lost events), and what tells whether it is
/// still the one in its place.
struct Source {
    dir: PathBuf,
    /// The attachment directory's inode: `attach` replacing the programs makes a new one.
    dir_inode: u64,
    attachment: Attachment,
    lost: u64,
    undecodable: u64,
}

impl Source {
    fn open(dir: &Path) -> anyhow::Result<Source> {
        let dir_inode = std::fs::metadata(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .ino();
        let attachment = Attachment::open(dir)?;
        if !attachment.matches_binary() {
            tracing::warn!(
                "the attachment in {} was made by another udpguard build: its events may not \
                 decode (`udpguard attach` replaces it with this build's programs)",
                dir.display()
            );
        }
        let lost = attachment
            .counters()
            .map_or(0, |c| c.get(Counter::EventsLost));
        Ok(Source {
            dir: dir.to_path_buf(),
            dir_inode,
            attachment,
            lost,
            undecodable: 0,
        })
    }

    /// Says on stderr (a warning) how many events the kernel dropped since the last check,
    /// and returns it.
    fn check_lost(&mut self) -> Option<u64> {
        let counters = self.attachment.counters().ok()?;
        let lost = counters.get(Counter::EventsLost);
        let new = lost.checked_sub(self.lost).filter(|&n| n > 0);
        if let Some(n) = new {
            tracing::warn!(
                "{n} conflict events lost: the ring buffer was full (they are still counted; \
                 a larger `udpguard attach --events-buffer` keeps more)"
            );
        }
        self.lost = lost;
        new
    }

    /// True when another attachment took this one's place (a new build replaced it); an
    /// error when it was removed.
    fn replaced(&self) -> anyhow::Result<bool> {
        match std::fs::metadata(&self.dir) {
            Ok(meta) if meta.ino() == self.dir_inode => Ok(false),
            Ok(_) => {
                tracing::info!(
                    "the attachment in {} was replaced: following the new one",
                    self.dir.display()
                );
                Ok(true)
            }
            Err(_) => bail!(
                "the attachment in {} was removed (`udpguard detach`?): no more events",
                self.dir.display()
            ),
        }
    }
}

/// Writes lines to stdout; stops quietly when stdout goes away (`udpguard events | head`).
struct Printer {
    json: bool,
    open: bool,
}

impl Printer {
    fn print(&mut self, line: &Line) {
        if !self.open {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        let written = writeln!(stdout, "{}", line.render(self.json)).and_then(|()| stdout.flush());
        if written.is_err() {
            self.open = false;
        }
    }

    /// In JSON, a line saying `n` events were lost (`by` the "ring_buffer" or this "reader");
    /// for people, the warning on stderr says it.
    fn lost(&mut self, n: u64, by: &'static str) {
        if self.json {
            self.print(&Line::Lost(LostRecord::new(n, by)));
        }
    }

    async fn summaries(&mut self, resolver: &mut Option<Resolver>, due: Vec<Summary<Conflict>>) {
        if due.is_empty() {
            return;
        }
        let records = resolve(resolver, move |r| {
            due.into_iter()
                .map(|s| {
                    let cgroup = r.cgroups.path(s.last.cgroup_id);
                    SummaryRecord::new(
                        &s.last,
                        cgroup,
                        s.suppressed,
                        WINDOW_NS / 1_000_000_000,
                        s.end_ns,
                    )
                })
                .collect::<Vec<_>>()
        })
        .await;
        for record in records {
            self.print(&Line::Summary(record));
        }
    }
}

/// Names holders and cgroups; both lookups are slow, so it keeps what it learns.
#[derive(Default)]
struct Resolver {
    holders: HolderFinder,
    cgroups: CgroupNames,
}

/// cgroup id -> path, remembered while the path still has that id.
#[derive(Default)]
struct CgroupNames {
    root: Option<PathBuf>,
    known: HashMap<u64, PathBuf>,
}

impl CgroupNames {
    fn path(&mut self, id: u64) -> Option<PathBuf> {
        if let Some(path) = self.known.get(&id) {
            if std::fs::metadata(path).is_ok_and(|m| m.ino() == id) {
                return Some(path.clone());
            }
            self.known.remove(&id);
        }
        if self.root.is_none() {
            self.root = cgroup::root().ok();
        }
        let path = cgroup::path_of_id(self.root.as_deref()?, id)?;
        self.known.insert(id, path.clone());
        Some(path)
    }
}
