//! Any number of readers of one attachment's events, each getting every event. A BPF ring
//! buffer has one consumer: two readers advancing it at once take events from each other and
//! corrupt each other's reads. So one reader at a time holds the attachment's consumer lock
//! and reads the ring; it serves every event, as the kernel wrote it, to the others over a
//! Unix socket. When it goes, a subscriber takes its place; the ring keeps what arrives
//! meanwhile. Events go out in batches, one per read of the ring. A subscriber too slow to
//! keep up loses events once [`QUEUE`] of them wait for it (about 34 MiB), and is told how
//! many.
//!
//! Both live in a root-only directory under /run/udpguard, named after the pin root (so that
//! test sandboxes, each with its own pin root, stay apart).
use std::{
    fs::File,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
};

/// Where runtime files live.
const RUN_DIR: &str = "/run/udpguard";
/// Events waiting for one subscriber before it loses events.
const QUEUE: usize = 256 * 1024;
/// How often a subscriber is told of events it lost, when it lost any.
const TELL_LOSSES: Duration = Duration::from_millis(500);
/// A frame: events as the kernel wrote them (a u32 count, then each as a u32 length and its
/// bytes).
const EVENTS: u8 = 1;
/// A frame: how many events this subscriber lost from its queue (a u64).
const DROPPED: u8 = 2;

/// The meeting place of an attachment's readers.
pub struct Rendezvous {
    lock: PathBuf,
    socket: PathBuf,
}

impl Rendezvous {
    /// The one of the attachment pinned in `dir`.
    pub fn of(dir: &Path) -> anyhow::Result<Rendezvous> {
        let root = dir
            .parent()
            .context("an attachment directory has a parent")?;
        let tag = root
            .file_name()
            .and_then(|n| n.to_str())
            .context("the pin root has a name")?;
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("the attachment directory has a name")?;
        let run = Path::new(RUN_DIR).join(tag);
        for dir in [Path::new(RUN_DIR), &run] {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("creating {}", dir.display()));
                }
                _ => {}
            }
            crate::bpffs::check_ours(dir, true)?;
        }
        Ok(Rendezvous {
            lock: run.join(format!("{name}-events.lock")),
            socket: run.join(format!("{name}-events.sock")),
        })
    }

    /// Becomes the consumer if nobody is, else subscribes to the one who is.
    pub async fn join(&self) -> anyhow::Result<Role> {
        for _ in 0..100 {
            if let Some(lock) = self.try_lock()? {
                // Nobody serves: a socket file left here is a dead consumer's.
                let _ = std::fs::remove_file(&self.socket);
                let listener = UnixListener::bind(&self.socket)
                    .with_context(|| format!("serving events on {}", self.socket.display()))?;
                return Ok(Role::Consumer(Consumer {
                    _lock: lock,
                    listener,
                    subscribers: Vec::new(),
                }));
            }
            if let Ok(stream) = UnixStream::connect(&self.socket).await {
                return Ok(Role::Subscriber(Subscriber::over(stream)));
            }
            // The consumer is between taking the lock and serving, or going.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!(
            "another reader holds {} but serves no events on {}",
            self.lock.display(),
            self.socket.display()
        )
    }

    fn try_lock(&self) -> anyhow::Result<Option<Flock<File>>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .with_context(|| format!("opening {}", self.lock.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => {
                Err(errno).with_context(|| format!("locking {}", self.lock.display()))
            }
        }
    }
}

/// What this reader is.
pub enum Role {
    Consumer(Consumer),
    Subscriber(Subscriber),
}

/// The reader of the ring, serving the others.
pub struct Consumer {
    _lock: Flock<File>,
    listener: UnixListener,
    subscribers: Vec<Queue>,
}

/// One subscriber, from the consumer's side: its queue (batches, and how many events they
/// hold), and what it lost.
struct Queue {
    frames: mpsc::UnboundedSender<(Arc<Vec<u8>>, usize)>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Consumer {
    /// Waits for a new subscriber and starts serving it.
    pub async fn accept(&mut self) -> anyhow::Result<()> {
        let (stream, _) = self.listener.accept().await.context("accepting a reader")?;
        let (frames, mut queue) = mpsc::unbounded_channel::<(Arc<Vec<u8>>, usize)>();
        let (queued, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
        let (waiting, lost) = (Arc::clone(&queued), Arc::clone(&dropped));
        tokio::spawn(async move {
            let mut stream = stream;
            let mut tell = tokio::time::interval(TELL_LOSSES);
            loop {
                let frame = tokio::select! {
                    next = queue.recv() => match next {
                        Some((frame, events)) => {
                            waiting.fetch_sub(events, Ordering::Relaxed);
                            frame
                        }
                        None => return,
                    },
                    _ = tell.tick() => match lost.swap(0, Ordering::Relaxed) {
                        0 => continue,
                        n => Arc::new(frame_of(DROPPED, &n.to_ne_bytes())),
                    },
                };
                if stream.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        self.subscribers.push(Queue {
            frames,
            queued,
            dropped,
        });
        Ok(())
    }

    /// Hands the events just read from the ring to every subscriber, never waiting for one.
    pub fn serve(&mut self, events: &[Vec<u8>]) {
        self.subscribers.retain(|queue| !queue.frames.is_closed());
        if events.is_empty() || self.subscribers.is_empty() {
            return;
        }
        let frame = Arc::new(frame_of(EVENTS, &batch_payload(events)));
        for queue in &self.subscribers {
            let n = events.len();
            if queue.queued.load(Ordering::Relaxed) + n > QUEUE
                || queue.frames.send((Arc::clone(&frame), n)).is_err()
            {
                queue.dropped.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                queue.queued.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// A reader served by the consumer. The socket is read by a task of its own: `next` is
/// awaited in a select! beside timers, and a frame read cut off half-way (reading is not
/// cancel-safe) would put every later frame out of step. A channel's receive is cancel-safe.
pub struct Subscriber {
    received: mpsc::Receiver<Received>,
}

/// What a subscriber receives.
pub enum Received {
    Events(Vec<Vec<u8>>),
    /// Events it lost from its queue, being too slow.
    Dropped(u64),
    /// The consumer went away: join again.
    Ended,
}

impl Subscriber {
    fn over(stream: UnixStream) -> Subscriber {
        // A few frames ahead at most: a slow subscriber's backlog stays in the consumer's
        // counted queue.
        let (tx, received) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut stream = BufReader::with_capacity(1 << 20, stream);
            loop {
                let next = read_frame(&mut stream).await;
                let ended = matches!(next, Received::Ended);
                if tx.send(next).await.is_err() || ended {
                    return;
                }
            }
        });
        Subscriber { received }
    }

    pub async fn next(&mut self) -> Received {
        self.received.recv().await.unwrap_or(Received::Ended)
    }
}

async fn read_frame(stream: &mut BufReader<UnixStream>) -> Received {
    let mut head = [0u8; 5];
    if stream.read_exact(&mut head).await.is_err() {
        return Received::Ended;
    }
    let len = u32::from_ne_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0; len];
    if stream.read_exact(&mut body).await.is_err() {
        return Received::Ended;
    }
    match head[0] {
        DROPPED if len == 8 => {
            Received::Dropped(u64::from_ne_bytes(body.try_into().expect("eight bytes")))
        }
        _ => Received::Events(split_batch(&body)),
    }
}

fn frame_of(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A batch's payload: a u32 count, then each event as a u32 length and its bytes.
fn batch_payload(events: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + events.iter().map(|e| 4 + e.len()).sum::<usize>());
    payload.extend_from_slice(&(events.len() as u32).to_ne_bytes());
    for event in events {
        payload.extend_from_slice(&(event.len() as u32).to_ne_bytes());
        payload.extend_from_slice(event);
    }
    payload
}

/// The events of a batch's payload (a malformed one: those before the fault).
fn split_batch(payload: &[u8]) -> Vec<Vec<u8>> {
    let word = |at: usize| {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let (mut events, mut at) = (Vec::with_capacity(count), 4);
    for _ in 0..count {
        let Some(len) = word(at) else { break };
        let Some(event) = payload.get(at + 4..at + 4 + len) else {
            break;
        };
        events.push(event.to_vec());
        at += 4 + len;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_back_into_its_events() {
        let events = vec![vec![1u8, 2, 3], vec![], vec![9; 100]];
        let payload = batch_payload(&events);
        assert_eq!(split_batch(&payload), events);
        assert_eq!(
            split_batch(&payload[..11]).len(),
            1,
            "cut short: what is whole"
        );
        assert!(split_batch(&payload[..10]).is_empty());
        assert!(split_batch(&[]).is_empty());
    }

    /// The stream reader waits in a select! beside a timer and the shutdown signal: a read
    /// cut off in the middle of a frame must not lose its bytes (which would put every later
    /// frame out of step: a flood's batches are hundreds of KiB, so this happened under load).
    #[tokio::test]
    async fn a_subscriber_interrupted_in_the_middle_of_a_frame_loses_nothing() {
        const BATCHES: usize = 40;
        let (mut consumer, subscriber) = UnixStream::pair().unwrap();
        let mut subscriber = Subscriber::over(subscriber);
        tokio::spawn(async move {
            for i in 0..BATCHES {
                let frame = frame_of(EVENTS, &batch_payload(&vec![vec![i as u8; 1000]; 200]));
                for chunk in frame.chunks(4096) {
                    consumer.write_all(chunk).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut got = 0;
        while got < BATCHES {
            tokio::select! {
                received = subscriber.next() => match received {
                    Received::Events(events) => {
                        assert!(
                            events == vec![vec![got as u8; 1000]; 200],
                            "batch {got} came out as {} events",
                            events.len()
                        );
                        got += 1;
                    }
                    Received::Dropped(_) => panic!("batch {got}: a loss that did not happen"),
                    Received::Ended => panic!("batch {got}: the stream ended early"),
                },
                () = tokio::time::sleep(Duration::from_micros(50)) => {}
            }
        }
    }
}
