//! The QUIC-server shape in worker processes: one unconnected socket on 127.0.0.1:4433 (the
//! listener, in worker 0), and per client one socket bound to the same port (SO_REUSEADDR,
//! SO_REUSEPORT) and connected to the client's address. Each worker holds its share of the
//! clients (a process may have 20,000 fds here) and, on `churn <ms>`, lets the oldest client
//! leave (close) and a new one arrive (socket, bind, connect) until the time is up.
use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    process::{ChildStdin, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use udpguard::sandbox::Sandbox;

use crate::workload::Killed;

pub const WORKER_ARG: &str = "--quic-worker";
const PORT: u16 = 4433;

/// A UDP socket, closed when dropped.
struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// socket, SO_REUSEADDR + SO_REUSEPORT, bind 127.0.0.1:4433, and connect to `peer` if given.
fn open(peer: Option<(Ipv4Addr, u16)>) -> std::io::Result<Socket> {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a fd we own, with valid pointers and lengths.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = Socket(fd);
        let one: libc::c_int = 1;
        for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let local = sockaddr(Ipv4Addr::LOCALHOST, PORT);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some((ip, port)) = peer {
            let peer = sockaddr(ip, port);
            if libc::connect(fd, (&peer as *const libc::sockaddr_in).cast(), len) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(socket)
    }
}

/// Client `n` of worker `index`: 127.<10+index>.x.y, port 20000 and up. Distinct for every
/// client a run makes.
fn client(index: usize, n: u64) -> (Ipv4Addr, u16) {
    let host = (n % 65_536) as u16;
    (
        Ipv4Addr::new(127, 10 + index as u8, (host >> 8) as u8, host as u8),
        20_000 + (n / 65_536) as u16,
    )
}

/// The worker process: `--quic-worker <index> <clients>`.
pub fn worker_main(args: &[String]) -> anyhow::Result<()> {
    let index: usize = args.first().context("worker index")?.parse()?;
    let live: usize = args.get(1).context("clients per worker")?.parse()?;
    // The soft fd limit up to the hard one (20,000 here).
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let _listener = if index == 0 {
        Some(open(None).context("opening the listener")?)
    } else {
        None
    };
    let mut next = 0u64;
    let mut clients = VecDeque::with_capacity(live);
    for _ in 0..live {
        clients.push_back(open(Some(client(index, next))).context("connecting a client")?);
        next += 1;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let ms: u64 = line
            .strip_prefix("churn ")
            .with_context(|| format!("unknown command {line:?}"))?
            .parse()?;
        let (mut count, mut failures) = (0u64, 0u64);
        let start = Instant::now();
        let until = start + Duration::from_millis(ms);
        while Instant::now() < until {
            for _ in 0..16 {
                drop(clients.pop_front());
                match open(Some(client(index, next))) {
                    Ok(socket) => clients.push_back(socket),
                    Err(_) => failures += 1,
                }
                next += 1;
                count += 1;
            }
        }
        writeln!(
            out,
            "{count} {failures} {}",
            start.elapsed().as_nanos() as u64
        )?;
        out.flush()?;
    }
    Ok(())
}

/// One worker process, seen from the bench.
struct Worker {
    _process: Killed,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The workers holding the clients.
pub struct Clients(Vec<Worker>);

/// What a churn reported, summed over the workers.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Churn {
    pub clients: u64,
    pub failures: u64,
    pub per_second: f64,
}

impl Clients {
    /// Starts `processes` workers in the sandbox's guarded cgroup, holding `clients` in all,
    /// and waits until every one holds its share.
    pub fn start(sandbox: &Sandbox, clients: usize, processes: usize) -> anyhow::Result<Clients> {
        ensure!(
            processes > 0 && processes <= 200,
            "--processes must be 1..=200"
        );
        let share = clients.div_ceil(processes);
        ensure!(
            share < 19_000,
            "{share} clients per process exceed the 20,000 fds a process may have here: \
             use more --processes"
        );
        let exe = std::env::current_exe().context("finding the bench's own executable")?;
        let mut workers = Vec::new();
        for index in 0..processes {
            let mut command = sandbox.command(&exe, true);
            command
                .arg(WORKER_ARG)
                .arg(index.to_string())
                .arg(share.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            let mut child = command.spawn().context("starting a client worker")?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            workers.push(Worker {
                _process: Killed::adopt(child, "client worker"),
                stdin,
                stdout,
            });
        }
        for worker in &mut workers {
            let mut line = String::new();
            worker.stdout.read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("a client worker failed to connect its clients (see its error above)");
            }
        }
        Ok(Clients(workers))
    }

    /// Every worker churns its clients for `ms` at once; the clients that arrived (and as many
    /// that left), per second.
    pub fn churn(&mut self, ms: u64) -> anyhow::Result<Churn> {
        for worker in &mut self.0 {
            writeln!(worker.stdin, "churn {ms}")?;
            worker.stdin.flush()?;
        }
        let mut churn = Churn::default();
        for worker in &mut self.0 {
            let mut line = String::new();
            worker.stdout.read_line(&mut line)?;
            let fields: Vec<u64> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("a client worker answered {line:?}"))?;
            let [count, failures, nanos] = fields[..] else {
                bail!("a client worker answered {line:?}");
            };
            churn.clients += count;
            churn.failures += failures;
            churn.per_second += count as f64 * 1e9 / nanos.max(1) as f64;
        }
        Ok(churn)
    }
}
