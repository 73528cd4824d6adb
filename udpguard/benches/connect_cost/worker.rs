//! The measured socket loop and its driver: the worker process (the loop, and the holder that
//! makes the hit path), the helper processes holding the background sockets, and the
//! orchestrator's handles on both.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use socket2::{Domain, SockAddr, Socket, Type};
use udpguard::sandbox::Sandbox;

/// The local address every socket in the bench shares.
const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4444);
/// The measured loop's peer (and, on the hit path, the holder's).
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1111);
/// Background sockets per helper process (the open-file hard limit is 20,000 per process).
const PER_HOLDER: usize = 5_000;
/// The worker's and helpers' argument that selects their mode (cargo adds `--bench`).
pub const WORKER_ARG: &str = "__connect_cost_worker";
pub const HOLDER_ARG: &str = "__connect_cost_holder";

/// Set on SIGINT / SIGTERM: the next command to the worker fails, so the bench stops between
/// batches.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C (and SIGTERM): stop between batches and clean up (the sandbox's Drop), instead of
/// dying.
pub fn stop_between_batches_on_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// The worker: reads commands on stdin, one per line, and answers each on stdout.
/// `run <ops>` runs the measured operation `ops` times and answers `<nanoseconds> <refused>`;
/// `hold` / `unhold` open / close the socket that makes the hit path (connected LOCAL -> PEER).
pub fn worker_main() -> anyhow::Result<()> {
    let local = SockAddr::from(LOCAL);
    let peer = SockAddr::from(PEER);
    let mut holder = None;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("run"), Some(ops)) => {
                let ops: u64 = ops.parse().context("run <ops>")?;
                let start = Instant::now();
                let mut refused = 0u64;
                for _ in 0..ops {
                    refused += u64::from(bind_connect_close(&local, &peer)?);
                }
                let nanos = start.elapsed().as_nanos();
                writeln!(out, "{nanos} {refused}")?;
            }
            (Some("hold"), None) => {
                holder = Some(connected(&local, &peer).context("the hit path's holder")?);
                writeln!(out, "ok")?;
            }
            (Some("unhold"), None) => {
                holder = None;
                writeln!(out, "ok")?;
            }
            _ => bail!("unknown worker command {line:?}"),
        }
        out.flush()?;
    }
    drop(holder);
    Ok(())
}

/// The measured operation. Returns whether the guard refused the connect (EPERM).
#[inline(never)]
fn bind_connect_close(local: &SockAddr, peer: &SockAddr) -> anyhow::Result<bool> {
    let socket = bound(local)?;
    match socket.connect(peer) {
        Ok(()) => Ok(false),
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => Ok(true),
        Err(err) => Err(err).context("connect"),
    }
    // The socket closes here, inside the measured operation.
}

/// A UDP socket on `local` with SO_REUSEADDR (inlined: it is part of the measured operation).
#[inline(always)]
fn bound(local: &SockAddr) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(local)?;
    Ok(socket)
}

/// A socket on LOCAL (SO_REUSEADDR) connected to `peer`.
fn connected(local: &SockAddr, peer: &SockAddr) -> anyhow::Result<Socket> {
    let socket = bound(local)?;
    socket.connect(peer)?;
    Ok(socket)
}

/// A helper: `<first> <count>`: holds `count` sockets connected from LOCAL to distinct peers
/// (127.0.0.2:10000 and on), prints "ready", and keeps them until stdin closes.
pub fn holder_main(args: &[String]) -> anyhow::Result<()> {
    let [first, count] = args else {
        bail!("{HOLDER_ARG} <first> <count>");
    };
    let (first, count): (usize, usize) = (first.parse()?, count.parse()?);
    raise_open_file_limit()?;
    let local = SockAddr::from(LOCAL);
    let kept = (first..first + count)
        .map(|i| connected(&local, &SockAddr::from(background_peer(i))))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("making the background sockets")?;
    println!("ready");
    std::io::stdout().flush()?;
    std::io::stdin().read_to_end(&mut Vec::new())?;
    drop(kept);
    Ok(())
}

/// The peer of background socket `i`: 127.0.0.2:10000, 127.0.0.2:10001, ...
fn background_peer(i: usize) -> SocketAddrV4 {
    let host = u8::try_from(2 + i / 50_000).expect("at most 200,000 background sockets");
    let port = u16::try_from(10_000 + i % 50_000).expect("a port below 60,000");
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), port)
}

/// Soft open-file limit up to the hard limit (no CAP_SYS_RESOURCE needed).
fn raise_open_file_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(())
}

/// The worker process in the sandbox; killed on drop.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One timed batch.
pub struct Batch {
    pub ns_per_op: f64,
    pub refused: u64,
}

/// This bench's own binary in the sandbox (its cgroup and network namespace), in the mode
/// `args` select, talking over pipes.
fn spawn_in(sandbox: &Sandbox, args: &[String], what: &str) -> anyhow::Result<Child> {
    sandbox
        .command(std::env::current_exe()?, true)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {what}"))
}

impl Worker {
    pub fn spawn(sandbox: &Sandbox) -> anyhow::Result<Worker> {
        let mut child = spawn_in(sandbox, &[WORKER_ARG.to_string()], "the worker")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Worker {
            child,
            stdin,
            stdout,
        })
    }

    fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        writeln!(self.stdin, "{command}").context("the worker is gone")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        ensure!(!line.is_empty(), "the worker exited (see its error above)");
        Ok(line.trim().to_string())
    }

    pub fn run(&mut self, ops: u64) -> anyhow::Result<Batch> {
        let answer = self.ask(&format!("run {ops}"))?;
        let (nanos, refused) = answer
            .split_once(' ')
            .with_context(|| format!("the worker answered {answer:?}"))?;
        Ok(Batch {
            ns_per_op: nanos.parse::<f64>()? / ops as f64,
            refused: refused.parse()?,
        })
    }

    /// The untimed run before a timed one (after a switch of setup).
    pub fn warm_up(&mut self, ops: u64) -> anyhow::Result<()> {
        self.run((ops / 10).max(3))?;
        Ok(())
    }

    /// Opens (or closes) the hit path's holder.
    fn hold(&mut self, on: bool) -> anyhow::Result<()> {
        let answer = self.ask(if on { "hold" } else { "unhold" })?;
        ensure!(answer == "ok", "the worker answered {answer:?}");
        Ok(())
    }

    /// Runs `batches` on the hit path (with the holder open) if `hit`, else on the miss path.
    /// The holder is closed again also when `batches` fails; that error is the one returned.
    pub fn on_path<T>(
        &mut self,
        hit: bool,
        batches: impl FnOnce(&mut Worker) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if !hit {
            return batches(self);
        }
        self.hold(true)?;
        let result = batches(self);
        let closed = self.hold(false);
        let value = result?;
        closed?;
        Ok(value)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Helper processes holding the background sockets; killed on drop.
#[derive(Default)]
pub struct Background {
    holders: Vec<Child>,
    sockets: usize,
}

impl Background {
    /// Adds helpers until `target` sockets are held.
    pub fn grow(&mut self, sandbox: &Sandbox, target: usize) -> anyhow::Result<()> {
        let first_new = self.holders.len();
        while self.sockets < target {
            let count = PER_HOLDER.min(target - self.sockets);
            let args = [
                HOLDER_ARG.to_string(),
                self.sockets.to_string(),
                count.to_string(),
            ];
            let child = spawn_in(sandbox, &args, "a socket holder")?;
            self.holders.push(child);
            self.sockets += count;
        }
        for holder in &mut self.holders[first_new..] {
            let mut line = String::new();
            BufReader::new(holder.stdout.as_mut().expect("piped")).read_line(&mut line)?;
            ensure!(line.trim() == "ready", "a socket holder failed");
        }
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for holder in &mut self.holders {
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}
