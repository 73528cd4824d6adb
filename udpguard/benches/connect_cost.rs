//! Benchmark (issue 7): what udpguard adds to a UDP `connect()`.
//!
//! The measured operation is the reference design's loop body: `socket(AF_INET, SOCK_DGRAM)`,
//! `SO_REUSEADDR`, `bind(127.0.0.1:4444)`, `connect(127.0.0.1:1111)`, `close`. It runs in a
//! worker process inside a throw-away [`Sandbox`] (child cgroup + network namespace), while
//! helper processes in the same cgroup hold N other sockets connected from 127.0.0.1:4444 to
//! distinct peers: the sockets `bpf_sk_lookup_udp` walks when there is no conflict.
//!
//! For every N, six setups are measured in interleaved rounds (so they share the machine's
//! noise): no program attached, empty programs on the three hooks the guard uses (the floor any
//! program there pays: the cgroup's program array, the call and its return), the reference
//! design (one connect4 program: the lookup, EPERM), udpguard (enforce), udpguard in audit
//! mode, and udpguard with the agent's fast path on. Each round gives one batch per setup; the
//! table shows the mean time per operation and its ratio to "no program", with a 95% bootstrap
//! interval over rounds (why the mean: see `connect_cost/stats.rs`). The hit path (a
//! holder already has the 4-tuple, so the guard refuses the connect with EPERM) is measured the
//! same way against "no program" (where that connect succeeds and makes the duplicate).
//!
//! The programs' own time comes from the kernel's BPF run-time stats (run_time_ns / run_cnt of
//! the attached connect4, sock_create and sock_release programs), the median over separate
//! windows: the stats cost clock reads on every program run, so they are off while the batches
//! are timed.
//!
//! Run (as root): `cargo bench -p udpguard --bench connect_cost`
//! Options (after `--`): `--json`, `--rounds N`, `--batch-ms N`, `--sockets 0,1000,10000`,
//! `--svg PATH` (default docs/connect_cost.svg), `--no-svg`, `--quick`.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, ExitCode, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr,
    cgroup_sock::CgroupSockLinkId,
    cgroup_sock_addr::CgroupSockAddrLinkId,
    links::{FdLink, PinnedLink},
};
use serde::Serialize;
use socket2::{Domain, SockAddr, Socket, Type};
use udpguard::{guard, loader::program, routes::RouteMirror, sandbox::Sandbox, settings::Mode};

#[path = "connect_cost/stats.rs"]
mod stats;

/// The local address every socket in the bench shares.
const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4444);
/// The measured loop's peer (and, on the hit path, the holder's).
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1111);
/// Background sockets per helper process (the open-file hard limit is 20,000 per process).
const PER_HOLDER: usize = 5_000;
/// The worker's and helpers' argument that selects their mode (cargo adds `--bench`).
const WORKER_ARG: &str = "__connect_cost_worker";
const HOLDER_ARG: &str = "__connect_cost_holder";
/// Room for every conflict event of the hit batches between two drains.
const EVENTS_BUFFER: u32 = 16 << 20;
/// Windows with the BPF stats on, per N; each program's time is the median over them.
const STATS_WINDOWS: usize = 7;
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(WORKER_ARG) => worker_main(),
        Some(HOLDER_ARG) => holder_main(&args[1..]),
        _ => Options::parse(&args).and_then(|options| orchestrate(&options)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("connect_cost: {err:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    json: bool,
    rounds: usize,
    batch_ms: u64,
    sockets: Vec<usize>,
    svg: Option<PathBuf>,
}

impl Options {
    /// Tolerant: cargo passes `--bench`, and a bench filter may follow; those are ignored.
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options {
            json: false,
            rounds: 21,
            batch_ms: 40,
            sockets: vec![0, 1_000, 10_000],
            svg: Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .expect("the crate is in a workspace")
                    .join("docs/connect_cost.svg"),
            ),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .with_context(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--json" => options.json = true,
                "--quick" => {
                    options.rounds = 5;
                    options.sockets = vec![0, 1_000];
                }
                "--rounds" => options.rounds = value(arg)?.parse().context("--rounds")?,
                "--batch-ms" => options.batch_ms = value(arg)?.parse().context("--batch-ms")?,
                "--sockets" => {
                    options.sockets = value(arg)?
                        .split(',')
                        .map(|n| n.trim().replace('_', "").parse())
                        .collect::<Result<_, _>>()
                        .context("--sockets takes a list like 0,1000,10000")?;
                }
                "--svg" => options.svg = Some(value(arg)?.into()),
                "--no-svg" => options.svg = None,
                "--help" | "-h" => {
                    println!(
                        "cargo bench -p udpguard --bench connect_cost -- [--json] [--rounds N] \
                         [--batch-ms N] [--sockets 0,1000,10000] [--svg PATH | --no-svg] [--quick]"
                    );
                    std::process::exit(0);
                }
                "--bench" => {}
                other if other.starts_with('-') => eprintln!("connect_cost: ignoring {other}"),
                _ => {} // a bench name filter
            }
        }
        ensure!(options.rounds > 0, "--rounds must be at least 1");
        ensure!(
            options.sockets.iter().all(|&n| n <= 200_000),
            "at most 200,000 background sockets"
        );
        options.sockets.sort_unstable();
        options.sockets.dedup();
        Ok(options)
    }
}

// ---------------------------------------------------------------------------------------------
// The measuring side (runs inside the sandbox)

/// The worker: reads commands on stdin, one per line, and answers each on stdout.
/// `run <ops>` runs the measured operation `ops` times and answers `<nanoseconds> <refused>`;
/// `hold` / `unhold` open / close the socket that makes the hit path (connected LOCAL -> PEER).
fn worker_main() -> anyhow::Result<()> {
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
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(local)?;
    match socket.connect(peer) {
        Ok(()) => Ok(false),
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => Ok(true),
        Err(err) => Err(err).context("connect"),
    }
    // The socket closes here, inside the measured operation.
}

/// A socket on LOCAL (SO_REUSEADDR) connected to `peer`.
fn connected(local: &SockAddr, peer: &SockAddr) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(local)?;
    socket.connect(peer)?;
    Ok(socket)
}

/// A helper: `<first> <count>`: holds `count` sockets connected from LOCAL to distinct peers
/// (127.0.0.2:10000 and on), prints "ready", and keeps them until stdin closes.
fn holder_main(args: &[String]) -> anyhow::Result<()> {
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

// ---------------------------------------------------------------------------------------------
// The orchestrating side (outside the sandbox)

/// What is attached to the sandbox's cgroup while a batch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Setup {
    NoProgram,
    /// Empty programs on the three hooks the guard uses: what any program there costs.
    Floor,
    /// The reference design's connect4 program.
    Reference,
    Enforce,
    Audit,
    /// Enforce, with the agent's route mirror vouching for the sandbox's namespace: the O(1)
    /// no-conflict path is on.
    Fast,
}

impl Setup {
    const ALL: [Setup; 6] = [
        Setup::NoProgram,
        Setup::Floor,
        Setup::Reference,
        Setup::Enforce,
        Setup::Audit,
        Setup::Fast,
    ];

    fn label(self) -> &'static str {
        match self {
            Setup::NoProgram => "no program",
            Setup::Floor => "empty programs",
            Setup::Reference => "reference design",
            Setup::Enforce => "udpguard",
            Setup::Audit => "udpguard audit",
            Setup::Fast => "udpguard fast path",
        }
    }

    /// Whether this setup refuses a conflicting connect.
    fn refuses(self) -> bool {
        matches!(self, Setup::Reference | Setup::Enforce | Setup::Fast)
    }

    /// Whether this setup is a baseline program set rather than udpguard.
    fn is_baseline(self) -> bool {
        matches!(self, Setup::Floor | Setup::Reference)
    }
}

/// The worker process in the sandbox; killed on drop.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One timed batch.
struct Batch {
    ns_per_op: f64,
    refused: u64,
}

impl Worker {
    fn spawn(sandbox: &Sandbox) -> anyhow::Result<Worker> {
        let mut child = sandbox
            .command(std::env::current_exe()?, true)
            .arg(WORKER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the worker")?;
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

    fn run(&mut self, ops: u64) -> anyhow::Result<Batch> {
        let answer = self.ask(&format!("run {ops}"))?;
        let (nanos, refused) = answer
            .split_once(' ')
            .with_context(|| format!("the worker answered {answer:?}"))?;
        Ok(Batch {
            ns_per_op: nanos.parse::<f64>()? / ops as f64,
            refused: refused.parse()?,
        })
    }

    /// Opens (or closes) the hit path's holder.
    fn hold(&mut self, on: bool) -> anyhow::Result<()> {
        let answer = self.ask(if on { "hold" } else { "unhold" })?;
        ensure!(answer == "ok", "the worker answered {answer:?}");
        Ok(())
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
struct Background {
    holders: Vec<Child>,
    sockets: usize,
}

impl Background {
    /// Adds helpers until `target` sockets are held.
    fn grow(&mut self, sandbox: &Sandbox, target: usize) -> anyhow::Result<()> {
        let first_new = self.holders.len();
        while self.sockets < target {
            let count = PER_HOLDER.min(target - self.sockets);
            let child = sandbox
                .command(std::env::current_exe()?, true)
                .args([
                    HOLDER_ARG.to_string(),
                    self.sockets.to_string(),
                    count.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a socket holder")?;
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

/// Attaches, switches and detaches the guard on the sandbox's cgroup.
struct Guard<'a> {
    cgroup: &'a Path,
    current: Setup,
    /// The agent's route mirror, running while the setup is [`Setup::Fast`].
    mirror: Option<RouteMirror>,
    baselines: Baselines,
}

impl Guard<'_> {
    fn set(&mut self, setup: Setup) -> anyhow::Result<()> {
        if setup == self.current {
            return Ok(());
        }
        if let Some(mirror) = self.mirror.take() {
            mirror.stop(); // the fast path goes off with it
        }
        if self.current.is_baseline() {
            self.baselines.detach()?;
        }
        let mode = match setup {
            Setup::NoProgram | Setup::Floor | Setup::Reference => {
                if !(self.current == Setup::NoProgram || self.current.is_baseline()) {
                    guard::detach(Some(self.cgroup))?;
                }
                if setup.is_baseline() {
                    self.baselines.attach(setup, self.cgroup)?;
                }
                self.current = setup;
                return Ok(());
            }
            Setup::Enforce | Setup::Fast => Mode::Enforce,
            Setup::Audit => Mode::Audit,
        };
        // Loads and attaches when nothing is attached; switches the mode in place otherwise.
        guard::attach(&guard::AttachRequest {
            cgroup: Some(self.cgroup.to_path_buf()),
            mode: Some(mode),
            events_buffer: Some(EVENTS_BUFFER),
            ..Default::default()
        })?;
        if setup == Setup::Fast {
            // At the cgroup root the guard sees every connect; the sandbox's namespace holds
            // only the bench's own processes, all in the guarded cgroup, so it counts as seen.
            let attachment = udpguard::attachment::Attachment::open(&self.pin_dir()?)?;
            let coverage = std::sync::Arc::new(udpguard::watch::Coverage::assumed());
            self.mirror = Some(RouteMirror::start(&attachment, coverage)?);
        }
        self.current = setup;
        Ok(())
    }

    /// After switching to [`Setup::Fast`]: connects until the agent has loaded the sandbox's
    /// namespace (a checked connect reports it) and turned the fast path on there.
    fn wait_fast_path(&self, worker: &mut Worker) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            worker.run(20)?;
            let on = udpguard::status::collect()
                .attachments
                .first()
                .and_then(|a| a.fast_path_namespaces)
                .unwrap_or(0);
            if on > 0 {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the fast path never turned on");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The attachment's pin directory (there is one: the sandbox has its own pin root).
    fn pin_dir(&self) -> anyhow::Result<PathBuf> {
        let status = udpguard::status::collect();
        let attachment = status
            .attachments
            .first()
            .context("nothing attached to the sandbox")?;
        Ok(attachment.pin_dir.clone())
    }

    /// Empties the conflict-event ring buffer (as `udpguard run` would) and returns the
    /// attachment's `events_lost` counter.
    fn drain_events(&self) -> anyhow::Result<u64> {
        let mut events = udpguard::attachment::open_events(&self.pin_dir()?)?;
        while events.next().is_some() {}
        let status = udpguard::status::collect();
        Ok(status
            .attachments
            .first()
            .and_then(|a| a.counters.get("events_lost").copied())
            .unwrap_or(0))
    }

    /// The ids of the attached programs: connect4 (from `status`), sock_create and
    /// sock_release (from their pinned links).
    fn program_ids(&self) -> anyhow::Result<ProgramIds> {
        let status = udpguard::status::collect();
        let attachment = status
            .attachments
            .first()
            .context("nothing attached to the sandbox")?;
        let link = |pin: &str| -> anyhow::Result<u32> {
            let link: FdLink = PinnedLink::from_pin(attachment.pin_dir.join(pin))
                .with_context(|| format!("opening the pinned link {pin}"))?
                .into();
            Ok(link.info()?.program_id())
        };
        Ok(ProgramIds {
            connect4: attachment
                .programs
                .connect4
                .context("no connect4 program attached")?,
            create: Some(link("create")?),
            release: Some(link("release")?),
        })
    }
}

struct ProgramIds {
    connect4: u32,
    /// None for a setup without these hooks (the reference design).
    create: Option<u32>,
    release: Option<u32>,
}

/// The baselines' own eBPF object (udpguard-ebpf's `baselines.rs`), built beside udpguard's
/// but never part of it.
static BASELINES: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udpguard-baselines"));

/// Names of the programs in [`BASELINES`].
mod program_names {
    /// Empty programs on connect4, sock_create and sock_release: the floor.
    pub const FLOOR: [&str; 3] = ["floor_connect4", "floor_create", "floor_release"];
    /// The reference design's connect4 (lookup, EPERM).
    pub const REFERENCE: &str = "reference_connect4";
}

/// The programs udpguard is measured against: loaded once from their own object, attached to
/// the sandbox's cgroup while their setup runs.
struct Baselines {
    ebpf: aya::Ebpf,
    floor: Option<(CgroupSockAddrLinkId, CgroupSockLinkId, CgroupSockLinkId)>,
    reference: Option<CgroupSockAddrLinkId>,
}

impl Baselines {
    fn load() -> anyhow::Result<Baselines> {
        let mut ebpf = aya::Ebpf::load(BASELINES).context("loading the baselines' eBPF object")?;
        let [connect4, create, release] = program_names::FLOOR;
        for name in [connect4, program_names::REFERENCE] {
            program::<CgroupSockAddr>(&mut ebpf, name)?.load()?;
        }
        for name in [create, release] {
            program::<CgroupSock>(&mut ebpf, name)?.load()?;
        }
        Ok(Baselines {
            ebpf,
            floor: None,
            reference: None,
        })
    }

    /// Attaches the programs of `setup` ([`Setup::Floor`] or [`Setup::Reference`]).
    fn attach(&mut self, setup: Setup, cgroup: &Path) -> anyhow::Result<()> {
        let dir =
            std::fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mode = CgroupAttachMode::Single;
        let [connect4, create, release] = program_names::FLOOR;
        match setup {
            Setup::Floor => {
                self.floor = Some((
                    program::<CgroupSockAddr>(&mut self.ebpf, connect4)?.attach(&dir, mode)?,
                    program::<CgroupSock>(&mut self.ebpf, create)?.attach(&dir, mode)?,
                    program::<CgroupSock>(&mut self.ebpf, release)?.attach(&dir, mode)?,
                ));
            }
            Setup::Reference => {
                let program = program::<CgroupSockAddr>(&mut self.ebpf, program_names::REFERENCE)?;
                self.reference = Some(program.attach(&dir, mode)?);
            }
            _ => bail!("{} is not a baseline", setup.label()),
        }
        Ok(())
    }

    /// Detaches whatever is attached.
    fn detach(&mut self) -> anyhow::Result<()> {
        let [connect4, create, release] = program_names::FLOOR;
        if let Some((connect4_link, create_link, release_link)) = self.floor.take() {
            program::<CgroupSockAddr>(&mut self.ebpf, connect4)?.detach(connect4_link)?;
            program::<CgroupSock>(&mut self.ebpf, create)?.detach(create_link)?;
            program::<CgroupSock>(&mut self.ebpf, release)?.detach(release_link)?;
        }
        if let Some(link) = self.reference.take() {
            program::<CgroupSockAddr>(&mut self.ebpf, program_names::REFERENCE)?.detach(link)?;
        }
        Ok(())
    }

    /// The floor's program ids, and the reference's connect4.
    fn program_ids(&mut self) -> anyhow::Result<(ProgramIds, u32)> {
        let [connect4, create, release] = program_names::FLOOR;
        let floor = ProgramIds {
            connect4: program::<CgroupSockAddr>(&mut self.ebpf, connect4)?
                .info()?
                .id(),
            create: Some(program::<CgroupSock>(&mut self.ebpf, create)?.info()?.id()),
            release: Some(program::<CgroupSock>(&mut self.ebpf, release)?.info()?.id()),
        };
        let reference = program::<CgroupSockAddr>(&mut self.ebpf, program_names::REFERENCE)?
            .info()?
            .id();
        Ok((floor, reference))
    }
}

/// Keeps the kernel's BPF run-time stats on: with BPF_ENABLE_STATS, which turns them off again
/// when the fd closes (also if the bench dies), else with the sysctl, restored on drop.
struct StatsOn {
    _fd: Option<OwnedFd>,
    sysctl_was: Option<String>,
}

impl StatsOn {
    fn enable() -> anyhow::Result<StatsOn> {
        if let Ok(fd) = aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            return Ok(StatsOn {
                _fd: Some(fd),
                sysctl_was: None,
            });
        }
        let was = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(BPF_STATS_SYSCTL, "1").context("setting kernel.bpf_stats_enabled=1")?;
        Ok(StatsOn {
            _fd: None,
            sysctl_was: Some(was.trim().to_string()),
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Some(was) = &self.sysctl_was {
            let _ = std::fs::write(BPF_STATS_SYSCTL, was.as_bytes());
        }
    }
}

/// run_time_ns and run_cnt of every loaded program, by id.
fn program_counts() -> anyhow::Result<HashMap<u32, (u64, u64)>> {
    aya::programs::loaded_programs()
        .map(|info| {
            let info = info?;
            Ok((
                info.id(),
                (info.run_time().as_nanos() as u64, info.run_count()),
            ))
        })
        .collect()
}

/// A program's mean time per run over a window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct ProgramTime {
    ns_per_run: f64,
    runs: u64,
}

fn program_time(
    before: &HashMap<u32, (u64, u64)>,
    after: &HashMap<u32, (u64, u64)>,
    id: u32,
) -> anyhow::Result<ProgramTime> {
    let (Some(&(t0, n0)), Some(&(t1, n1))) = (before.get(&id), after.get(&id)) else {
        bail!("program {id} disappeared");
    };
    let runs = n1 - n0;
    Ok(ProgramTime {
        ns_per_run: if runs == 0 {
            0.0
        } else {
            (t1 - t0) as f64 / runs as f64
        },
        runs,
    })
}

/// The programs' time per run for one setup and path.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct ProgramTimes {
    connect4: ProgramTime,
    sock_create: ProgramTime,
    sock_release: ProgramTime,
}

impl ProgramTimes {
    /// Each program's median time per run over several windows, and its runs in all.
    fn median(windows: &[ProgramTimes]) -> ProgramTimes {
        let of = |pick: fn(&ProgramTimes) -> ProgramTime| {
            let times: Vec<ProgramTime> = windows.iter().map(pick).collect();
            let ns: Vec<f64> = times.iter().map(|t| t.ns_per_run).collect();
            ProgramTime {
                ns_per_run: stats::median(&ns),
                runs: times.iter().map(|t| t.runs).sum(),
            }
        };
        ProgramTimes {
            connect4: of(|t| t.connect4),
            sock_create: of(|t| t.sock_create),
            sock_release: of(|t| t.sock_release),
        }
    }

    /// Program time per operation: one run of each.
    fn total(&self) -> f64 {
        self.connect4.ns_per_run + self.sock_create.ns_per_run + self.sock_release.ns_per_run
    }
}

/// One setup at one N: time per operation, and its ratio to "no program" (paired by round).
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Measured {
    ns_per_op: f64,
    ratio: stats::Ratio,
}

#[derive(Debug, Default, Serialize)]
struct Level {
    /// Other connected sockets on 127.0.0.1:4444.
    sockets: usize,
    ops_per_batch: u64,
    hit_ops_per_batch: u64,
    no_program: Measured,
    /// Empty programs on the same three hooks.
    floor: Measured,
    /// The reference design (one connect4 program, the full lookup).
    reference: Measured,
    hit_reference: Measured,
    enforce: Measured,
    audit: Measured,
    /// The refused connect (enforce) and the same operation with no program, where that
    /// connect succeeds and makes the duplicate.
    hit_no_program: Measured,
    hit_enforce: Measured,
    /// Enforce with the agent's O(1) no-conflict path on.
    fast: Measured,
    hit_fast: Measured,
    programs_enforce: Option<ProgramTimes>,
    programs_audit: Option<ProgramTimes>,
    programs_hit: Option<ProgramTimes>,
    programs_fast: Option<ProgramTimes>,
    programs_floor: Option<ProgramTimes>,
    programs_reference: Option<ProgramTime>,
    programs_hit_reference: Option<ProgramTime>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
}

impl Machine {
    fn probe() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), Linux {}",
            self.cpus, self.cpu_model, self.kernel
        )
    }
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    rounds: usize,
    /// Whether kernel.bpf_stats_enabled was already 1 (then the timed batches include the
    /// stats' own cost).
    bpf_stats_were_on: bool,
    /// Conflict events dropped because the ring buffer was full (0 expected).
    events_lost: u64,
    levels: Vec<Level>,
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn orchestrate(options: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root: it makes a cgroup and a network namespace and loads BPF programs \
             (run: sudo cargo bench -p udpguard --bench connect_cost)"
        );
    }
    // Ctrl-C: stop between batches and clean up (the sandbox's Drop), instead of dying.
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    let machine = Machine::probe();
    let bpf_stats_were_on =
        std::fs::read_to_string(BPF_STATS_SYSCTL).is_ok_and(|v| v.trim() != "0");
    let sandbox = Sandbox::new("connect-cost")?;
    // SAFETY: single-threaded; the guard's library code reads this to find its pins.
    unsafe { std::env::set_var("UDPGUARD_PIN_ROOT", &sandbox.pin_root) };
    eprintln!(
        "connect_cost: {}; sandbox {}; {} rounds of ~{} ms batches",
        machine.describe(),
        sandbox.name,
        options.rounds,
        options.batch_ms
    );
    if bpf_stats_were_on {
        eprintln!(
            "connect_cost: note: kernel.bpf_stats_enabled is already 1: the timed batches \
             include the stats' own cost"
        );
    }
    let mut worker = Worker::spawn(&sandbox)?;
    let mut background = Background::default();
    let mut guard = Guard {
        cgroup: &sandbox.cgroup,
        current: Setup::NoProgram,
        mirror: None,
        baselines: Baselines::load()?,
    };
    let mut report = Report {
        machine,
        rounds: options.rounds,
        bpf_stats_were_on,
        events_lost: 0,
        levels: Vec::new(),
    };
    for &sockets in &options.sockets {
        let level = measure_level(
            options,
            &sandbox,
            &mut worker,
            &mut background,
            &mut guard,
            sockets,
            &mut report.events_lost,
        )?;
        report.levels.push(level);
    }
    guard.set(Setup::NoProgram)?;
    drop(worker);
    drop(background);
    drop(sandbox);

    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    if let Some(path) = &options.svg {
        std::fs::write(path, plot(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("connect_cost: plot written to {}", path.display());
    }
    Ok(())
}

/// Everything measured at one N.
fn measure_level(
    options: &Options,
    sandbox: &Sandbox,
    worker: &mut Worker,
    background: &mut Background,
    guard: &mut Guard<'_>,
    sockets: usize,
    events_lost: &mut u64,
) -> anyhow::Result<Level> {
    // The background sockets are made with nothing attached (their connects would each walk
    // all the others); they are in the sandbox's cgroup all the same.
    guard.set(Setup::NoProgram)?;
    let started = Instant::now();
    background.grow(sandbox, sockets)?;
    eprintln!(
        "connect_cost: {sockets} background sockets ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    // Batch sizes: about `batch_ms` with no program.
    let batch_ns = options.batch_ms as f64 * 1e6;
    let size = |probe: Batch| (batch_ns / probe.ns_per_op).clamp(10.0, 1e6) as u64;
    worker.run(20)?;
    let ops = size(worker.run(20)?);
    worker.hold(true)?;
    worker.run(20)?;
    let hit_ops = size(worker.run(20)?);
    worker.hold(false)?;

    let mut times: HashMap<(Setup, bool), Vec<f64>> = HashMap::new();
    let timed = |worker: &mut Worker, setup: Setup, hit: bool, ops: u64| {
        worker.run((ops / 10).max(3))?; // warm-up, after a switch
        let batch = worker.run(ops)?;
        let expected = if hit && setup.refuses() { ops } else { 0 };
        ensure!(
            batch.refused == expected,
            "{} ({}): {} of {ops} connects refused, expected {expected}",
            setup.label(),
            if hit { "hit" } else { "miss" },
            batch.refused
        );
        anyhow::Ok(batch.ns_per_op)
    };
    for round in 0..options.rounds {
        // Rotate the order, so no setup always runs first after a (re)load.
        for k in 0..Setup::ALL.len() {
            let setup = Setup::ALL[(round + k) % Setup::ALL.len()];
            guard.set(setup)?;
            if setup == Setup::Fast {
                guard.wait_fast_path(worker)?;
            }
            let ns = timed(worker, setup, false, ops)?;
            times.entry((setup, false)).or_default().push(ns);
            if !matches!(setup, Setup::Audit | Setup::Floor) {
                worker.hold(true)?;
                let ns = timed(worker, setup, true, hit_ops)?;
                worker.hold(false)?;
                times.entry((setup, true)).or_default().push(ns);
                if setup.refuses() && !setup.is_baseline() {
                    *events_lost = (*events_lost).max(guard.drain_events()?);
                }
            }
        }
    }
    let measured = |setup: Setup, hit: bool| {
        let base = &times[&(Setup::NoProgram, hit)];
        let these = &times[&(setup, hit)];
        Measured {
            ns_per_op: stats::mean(these),
            ratio: stats::ratio_of_means(these, base),
        }
    };
    let mut level = Level {
        sockets,
        ops_per_batch: ops,
        hit_ops_per_batch: hit_ops,
        no_program: measured(Setup::NoProgram, false),
        floor: measured(Setup::Floor, false),
        reference: measured(Setup::Reference, false),
        hit_reference: measured(Setup::Reference, true),
        enforce: measured(Setup::Enforce, false),
        audit: measured(Setup::Audit, false),
        fast: measured(Setup::Fast, false),
        hit_no_program: measured(Setup::NoProgram, true),
        hit_enforce: measured(Setup::Enforce, true),
        hit_fast: measured(Setup::Fast, true),
        ..Level::default()
    };

    // The programs' own time, from the kernel's stats, in windows of their own.
    match program_windows(worker, guard, ops, hit_ops) {
        Ok(times) => {
            let of = |setup, hit| times.get(&(setup, hit)).copied();
            level.programs_floor = of(Setup::Floor, false);
            level.programs_reference = of(Setup::Reference, false).map(|t| t.connect4);
            level.programs_hit_reference = of(Setup::Reference, true).map(|t| t.connect4);
            level.programs_enforce = of(Setup::Enforce, false);
            level.programs_hit = of(Setup::Enforce, true);
            level.programs_audit = of(Setup::Audit, false);
            level.programs_fast = of(Setup::Fast, false);
        }
        Err(err) => eprintln!("connect_cost: no BPF run-time stats: {err:#}"),
    }
    *events_lost = (*events_lost).max(guard.drain_events()?);
    eprintln!(
        "connect_cost: {sockets} sockets done: no program {}, empty programs {} ({:.2}x), reference {} ({:.2}x), udpguard {} ({:.2}x), audit {} ({:.2}x), fast path {} ({:.2}x)",
        fmt_ns(level.no_program.ns_per_op),
        fmt_ns(level.floor.ns_per_op),
        level.floor.ratio.value,
        fmt_ns(level.reference.ns_per_op),
        level.reference.ratio.value,
        fmt_ns(level.enforce.ns_per_op),
        level.enforce.ratio.value,
        fmt_ns(level.audit.ns_per_op),
        level.audit.ratio.value,
        fmt_ns(level.fast.ns_per_op),
        level.fast.ratio.value,
    );
    Ok(level)
}

/// Program time per run of each setup (the hit path of those that refuse), stats on only
/// meanwhile: the median over [`STATS_WINDOWS`] windows of one batch each, interleaved.
fn program_windows(
    worker: &mut Worker,
    guard: &mut Guard<'_>,
    ops: u64,
    hit_ops: u64,
) -> anyhow::Result<HashMap<(Setup, bool), ProgramTimes>> {
    let (floor_ids, reference_id) = guard.baselines.program_ids()?;
    let reference_ids = ProgramIds {
        connect4: reference_id,
        create: None,
        release: None,
    };
    let _stats = StatsOn::enable()?;
    let window =
        |worker: &mut Worker, ids: &ProgramIds, ops: u64| -> anyhow::Result<ProgramTimes> {
            worker.run((ops / 10).max(3))?;
            let before = program_counts()?;
            worker.run(ops)?;
            let after = program_counts()?;
            let time = |id: Option<u32>| {
                id.map_or(Ok(ProgramTime::default()), |id| {
                    program_time(&before, &after, id)
                })
            };
            let times = ProgramTimes {
                connect4: time(Some(ids.connect4))?,
                sock_create: time(ids.create)?,
                sock_release: time(ids.release)?,
            };
            ensure!(
                times.connect4.runs == ops,
                "connect4 ran {} times for {ops} connects: is something else in the cgroup?",
                times.connect4.runs
            );
            Ok(times)
        };
    let mut windows: HashMap<(Setup, bool), Vec<ProgramTimes>> = HashMap::new();
    let mut measure = |worker: &mut Worker, setup: Setup, ids: &ProgramIds, hit: bool| {
        if hit {
            worker.hold(true)?;
        }
        let times = window(worker, ids, if hit { hit_ops } else { ops });
        if hit {
            worker.hold(false)?;
        }
        windows.entry((setup, hit)).or_default().push(times?);
        anyhow::Ok(())
    };
    for _ in 0..STATS_WINDOWS {
        guard.set(Setup::Floor)?;
        measure(worker, Setup::Floor, &floor_ids, false)?;
        guard.set(Setup::Reference)?;
        measure(worker, Setup::Reference, &reference_ids, false)?;
        measure(worker, Setup::Reference, &reference_ids, true)?;
        // Loaded afresh after the baselines; then switched in place, same programs.
        guard.set(Setup::Enforce)?;
        let guard_ids = guard.program_ids()?;
        measure(worker, Setup::Enforce, &guard_ids, false)?;
        measure(worker, Setup::Enforce, &guard_ids, true)?;
        guard.set(Setup::Audit)?;
        measure(worker, Setup::Audit, &guard_ids, false)?;
        guard.set(Setup::Fast)?;
        guard.wait_fast_path(worker)?;
        measure(worker, Setup::Fast, &guard_ids, false)?;
    }
    Ok(windows
        .into_iter()
        .map(|(key, times)| (key, ProgramTimes::median(&times)))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Output

/// "91 ns", "3.16 us", "606 us", "1.23 ms".
fn fmt_ns(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "us")
    } else {
        (ns / 1e6, "ms")
    };
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {unit}")
}

fn fmt_ratio(r: &stats::Ratio) -> String {
    format!("{:.2}x [{:.2}-{:.2}]", r.value, r.low, r.high)
}

fn fmt_program(p: Option<ProgramTime>) -> String {
    p.map_or_else(|| "n/a".into(), |p| fmt_ns(p.ns_per_run))
}

fn table(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nconnect cost: socket + SO_REUSEADDR + bind 127.0.0.1:4444 + connect 127.0.0.1:1111 + close"
    );
    let _ = writeln!(
        out,
        "{}; mean per op over {} interleaved rounds; ratio to no program: ratio of the means [95% interval, bootstrap over rounds]",
        report.machine.describe(),
        report.rounds
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>8} | {:>10} | {:>10} {:>18} | {:>10} {:>18} | {:>10} {:>18} | {:>10} {:>18} | {:>10} {:>18} | {:>9} {:>9}",
        "sockets",
        "no program",
        "empty x3",
        "ratio",
        "reference",
        "ratio",
        "udpguard",
        "ratio",
        "audit",
        "ratio",
        "fast path",
        "ratio",
        "c4 alone",
        "c4 fast"
    );
    let _ = writeln!(out, "{}", "-".repeat(203));
    for l in &report.levels {
        let _ = writeln!(
            out,
            "{:>8} | {:>10} | {:>10} {:>18} | {:>10} {:>18} | {:>10} {:>18} | {:>10} {:>18} | {:>10} {:>18} | {:>9} {:>9}",
            l.sockets,
            fmt_ns(l.no_program.ns_per_op),
            fmt_ns(l.floor.ns_per_op),
            fmt_ratio(&l.floor.ratio),
            fmt_ns(l.reference.ns_per_op),
            fmt_ratio(&l.reference.ratio),
            fmt_ns(l.enforce.ns_per_op),
            fmt_ratio(&l.enforce.ratio),
            fmt_ns(l.audit.ns_per_op),
            fmt_ratio(&l.audit.ratio),
            fmt_ns(l.fast.ns_per_op),
            fmt_ratio(&l.fast.ratio),
            fmt_program(l.programs_enforce.map(|p| p.connect4)),
            fmt_program(l.programs_fast.map(|p| p.connect4)),
        );
    }
    let _ = writeln!(
        out,
        "\nprogram time per run (BPF stats: run_time_ns / run_cnt, median of {STATS_WINDOWS} windows); \
         per op = connect4 + sock_create + sock_release:"
    );
    let _ = writeln!(
        out,
        "{:>8} | {:>10} {:>10} {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>10} | {:>10} {:>10} | {:>10}",
        "sockets",
        "connect4",
        "create",
        "release",
        "per op",
        "audit c4",
        "per op",
        "fast c4",
        "per op",
        "hit c4",
        "empty c4",
        "per op",
        "ref c4"
    );
    let _ = writeln!(out, "{}", "-".repeat(158));
    for l in &report.levels {
        let total = |p: Option<ProgramTimes>| p.map_or_else(|| "n/a".into(), |p| fmt_ns(p.total()));
        let _ = writeln!(
            out,
            "{:>8} | {:>10} {:>10} {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>10} | {:>10} {:>10} | {:>10}",
            l.sockets,
            fmt_program(l.programs_enforce.map(|p| p.connect4)),
            fmt_program(l.programs_enforce.map(|p| p.sock_create)),
            fmt_program(l.programs_enforce.map(|p| p.sock_release)),
            total(l.programs_enforce),
            fmt_program(l.programs_audit.map(|p| p.connect4)),
            total(l.programs_audit),
            fmt_program(l.programs_fast.map(|p| p.connect4)),
            total(l.programs_fast),
            fmt_program(l.programs_hit.map(|p| p.connect4)),
            fmt_program(l.programs_floor.map(|p| p.connect4)),
            total(l.programs_floor),
            fmt_program(l.programs_reference),
        );
    }
    let _ = writeln!(
        out,
        "empty x3: empty programs on connect4, sock_create and sock_release, the floor of any \
         program on the three hooks the guard uses; reference: the reference design's connect4 \
         (the lookup, EPERM)"
    );
    let _ = writeln!(
        out,
        "\nhit path: a holder already has 127.0.0.1:4444 -> 127.0.0.1:1111; udpguard refuses the \
         loop's connect (EPERM); with no program it succeeds (a duplicate):"
    );
    let _ = writeln!(
        out,
        "{:>8} | {:>10} | {:>10} {:>18} | {:>10} {:>10} | {:>10} {:>18} | {:>10}",
        "sockets",
        "no program",
        "refused",
        "ratio",
        "connect4",
        "per op",
        "reference",
        "ratio",
        "ref c4"
    );
    let _ = writeln!(out, "{}", "-".repeat(125));
    for l in &report.levels {
        let _ = writeln!(
            out,
            "{:>8} | {:>10} | {:>10} {:>18} | {:>10} {:>10} | {:>10} {:>18} | {:>10}",
            l.sockets,
            fmt_ns(l.hit_no_program.ns_per_op),
            fmt_ns(l.hit_enforce.ns_per_op),
            fmt_ratio(&l.hit_enforce.ratio),
            fmt_program(l.programs_hit.map(|p| p.connect4)),
            l.programs_hit
                .map_or_else(|| "n/a".into(), |p| fmt_ns(p.total())),
            fmt_ns(l.hit_reference.ns_per_op),
            fmt_ratio(&l.hit_reference.ratio),
            fmt_program(l.programs_hit_reference),
        );
    }
    if report.events_lost > 0 {
        let _ = writeln!(
            out,
            "\nnote: {} conflict events were lost (ring buffer full): some refusals took the \
             events_lost path",
            report.events_lost
        );
    }
    if report.bpf_stats_were_on {
        let _ = writeln!(
            out,
            "\nnote: kernel.bpf_stats_enabled was already 1: every timed batch with a program \
             includes the stats' clock reads"
        );
    }
    out
}

fn plot(report: &Report) -> String {
    let xs: Vec<usize> = report.levels.iter().map(|l| l.sockets).collect();
    let series = [
        svg::Series {
            label: "no program",
            color: "#555555",
            dashed: false,
            values: report
                .levels
                .iter()
                .map(|l| l.no_program.ns_per_op)
                .collect(),
            notes: Vec::new(),
        },
        svg::Series {
            label: "empty programs",
            color: "#999999",
            dashed: true,
            values: report.levels.iter().map(|l| l.floor.ns_per_op).collect(),
            notes: Vec::new(),
        },
        svg::Series {
            label: "reference design",
            color: "#ff7f0e",
            dashed: true,
            values: report
                .levels
                .iter()
                .map(|l| l.reference.ns_per_op)
                .collect(),
            notes: Vec::new(),
        },
        svg::Series {
            label: "udpguard",
            color: "#d62728",
            dashed: false,
            values: report.levels.iter().map(|l| l.enforce.ns_per_op).collect(),
            notes: report
                .levels
                .iter()
                .map(|l| format!("{:.2}x", l.enforce.ratio.value))
                .collect(),
        },
        svg::Series {
            label: "udpguard audit",
            color: "#1f77b4",
            dashed: true,
            values: report.levels.iter().map(|l| l.audit.ns_per_op).collect(),
            notes: Vec::new(),
        },
        svg::Series {
            label: "fast path (agent)",
            color: "#2ca02c",
            dashed: false,
            values: report.levels.iter().map(|l| l.fast.ns_per_op).collect(),
            notes: report
                .levels
                .iter()
                .map(|l| format!("{:.2}x", l.fast.ratio.value))
                .collect(),
        },
    ];
    svg::chart(
        "UDP bind + connect + close vs connected sockets on the local port",
        &[
            &format!("measured on {}", report.machine.describe()),
            &format!(
                "mean per operation over {} interleaved rounds; labels: udpguard / no program",
                report.rounds
            ),
        ],
        &xs,
        &series,
    )
}

/// A line chart in plain SVG: categorical x (evenly spaced), logarithmic y (nanoseconds).
mod svg {
    use std::fmt::Write as _;

    pub struct Series<'a> {
        pub label: &'a str,
        pub color: &'a str,
        pub dashed: bool,
        /// Nanoseconds, one per x.
        pub values: Vec<f64>,
        /// Optional text above each point.
        pub notes: Vec<String>,
    }

    const WIDTH: f64 = 760.0;
    const HEIGHT: f64 = 460.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 170.0;
    const TOP: f64 = 56.0;
    const BOTTOM: f64 = 60.0;

    fn escape(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }

    fn time_label(ns: f64) -> String {
        if ns >= 1e6 {
            format!("{} ms", ns / 1e6)
        } else if ns >= 1e3 {
            format!("{} µs", ns / 1e3)
        } else {
            format!("{ns} ns")
        }
    }

    fn thousands(n: usize) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    /// The 1-2-5 steps (1, 2, 5, 10, 20, ...) from the one at or below `lo` to the one at or
    /// above `hi`.
    fn ticks(lo: f64, hi: f64) -> Vec<f64> {
        let first_decade = lo.log10().floor() as i32 - 1;
        let last_decade = hi.log10().ceil() as i32 + 1;
        let all: Vec<f64> = (first_decade..=last_decade)
            .flat_map(|d| [1.0, 2.0, 5.0].map(|step| step * 10f64.powi(d)))
            .collect();
        let start = all.iter().rposition(|&t| t <= lo).unwrap_or(0);
        let end = all.iter().position(|&t| t >= hi).unwrap_or(all.len() - 1);
        all[start..=end].to_vec()
    }

    /// `subtitle` lines are printed under the title.
    pub fn chart(title: &str, subtitle: &[&str], xs: &[usize], series: &[Series<'_>]) -> String {
        let values = series.iter().flat_map(|s| s.values.iter().copied());
        let (lo, hi) = values
            .filter(|v| *v > 0.0)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (1e3, 1e4) };
        let ticks = ticks(lo * 0.95, hi * 1.05);
        let (axis_lo, axis_hi) = (ticks[0].log10(), ticks[ticks.len() - 1].log10());
        let axis_hi = if axis_hi > axis_lo {
            axis_hi
        } else {
            axis_lo + 1.0
        };
        let top = TOP + 16.0 * subtitle.len() as f64;
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - top - BOTTOM;
        let x_at = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / xs.len().max(1) as f64;
        let y_at = |ns: f64| top + plot_h * (1.0 - (ns.log10() - axis_lo) / (axis_hi - axis_lo));

        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
            WIDTH / 2.0,
            escape(title)
        );
        for (i, line) in subtitle.iter().enumerate() {
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
                WIDTH / 2.0,
                48.0 + 16.0 * i as f64,
                escape(line)
            );
        }
        // Horizontal grid on the 1-2-5 steps; decades darker.
        for &ns in &ticks {
            let y = y_at(ns);
            let decade = (ns.log10() - ns.log10().round()).abs() < 1e-9;
            let (stroke, width) = if decade {
                ("#bbbbbb", 1.0)
            } else {
                ("#e4e4e4", 0.8)
            };
            let _ = writeln!(
                out,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}" stroke-width="{width}"/>"#,
                LEFT + plot_w
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                time_label(ns)
            );
        }
        // Axes and x labels.
        let _ = writeln!(
            out,
            r#"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        for (i, &x) in xs.iter().enumerate() {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x_at(i),
                top + plot_h + 18.0,
                thousands(x)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">other connected sockets on 127.0.0.1:4444 (evenly spaced)</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 14.0
        );
        let _ = writeln!(
            out,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">time per operation (log scale)</text>"#,
            top + plot_h / 2.0
        );
        // The series.
        for (n, s) in series.iter().enumerate() {
            // Notes of alternate series go above left and below right of their points: close
            // values (as at 0 sockets) keep their labels apart, and off the rising lines.
            let noted_before = series[..n].iter().filter(|s| !s.notes.is_empty()).count();
            let (note_dx, note_dy, anchor) = if noted_before % 2 == 0 {
                (-8.0, -8.0, "end")
            } else {
                (8.0, 17.0, "start")
            };
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let points: Vec<String> = s
                .values
                .iter()
                .enumerate()
                .map(|(i, &v)| format!("{:.1},{:.1}", x_at(i), y_at(v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                points.join(" "),
                s.color
            );
            for (i, &v) in s.values.iter().enumerate() {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}" stroke="{}" stroke-width="1.5"><title>{}: {}</title></circle>"#,
                    x_at(i),
                    y_at(v),
                    if s.dashed { "white" } else { s.color },
                    s.color,
                    escape(s.label),
                    super::fmt_ns(v).replace(" us", " µs")
                );
                if let Some(note) = s.notes.get(i) {
                    let _ = writeln!(
                        out,
                        r#"<text x="{:.1}" y="{:.1}" fill="{}" text-anchor="{anchor}">{}</text>"#,
                        x_at(i) + note_dx,
                        y_at(v) + note_dy,
                        s.color,
                        escape(note)
                    );
                }
            }
            // Legend.
            let ly = top + 16.0 + 22.0 * n as f64;
            let lx = LEFT + plot_w + 16.0;
            let _ = writeln!(
                out,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#,
                lx + 28.0,
                s.color
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}">{}</text>"#,
                lx + 34.0,
                ly + 4.0,
                escape(s.label)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}
