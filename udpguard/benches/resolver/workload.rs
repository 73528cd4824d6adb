//! What the workload benches (`resolver`, `quic_shape`) share: their three setups (no guard,
//! `udpguard attach`, `udpguard run`), the agent as its own process and its CPU time, the
//! programs attached to the sandbox and their BPF run-time stats, the guard's counters, a
//! temporary directory, and child processes that are killed when dropped.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use udpguard::sandbox::Sandbox;

use crate::{
    bpf_stats::{Counts, ProgramTime},
    setups::{Guard, Setup as GuardSetup},
    stats,
};

/// The udpguard binary built with the bench (the agent runs as its own process).
pub const UDPGUARD: &str = env!("CARGO_BIN_EXE_udpguard");

/// What guards the sandbox's cgroup while a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    NoGuard,
    /// Empty programs on the hooks the guard uses (sock_create, connect4/6, sock_release): what
    /// any program there costs on this kernel, the floor of every guard built on these hooks.
    Floor,
    /// `udpguard attach`: the programs alone (no agent, so no fast path, and wildcard binds
    /// are not checked).
    Attach,
    /// `udpguard run`: the agent attaches, mirrors routes (wildcard binds are checked) and
    /// vouches for the namespace (the fast path).
    Run,
}

impl Setup {
    pub const ALL: [Setup; 4] = [Setup::NoGuard, Setup::Floor, Setup::Attach, Setup::Run];

    pub fn label(self) -> &'static str {
        match self {
            Setup::NoGuard => "no guard",
            Setup::Floor => "empty programs (floor)",
            Setup::Attach => "udpguard attach",
            Setup::Run => "udpguard run",
        }
    }

    /// The order of round `round`: each round starts with a different setup.
    pub fn order(round: usize) -> [Setup; 4] {
        let mut order = Setup::ALL;
        order.rotate_left(round % Setup::ALL.len());
        order
    }
}

/// Switches the sandbox's cgroup between the setups: `attach` through the library (as
/// `udpguard attach` does), `run` as the real agent process.
pub struct Setups<'a> {
    sandbox: &'a Sandbox,
    guard: Guard<'a>,
    agent: Option<Agent>,
    /// The CPU the agent runs on, if pinned (see [`pin`]).
    agent_cpu: Option<usize>,
    current: Setup,
}

impl<'a> Setups<'a> {
    pub fn new(sandbox: &'a Sandbox, agent_cpu: Option<usize>) -> anyhow::Result<Setups<'a>> {
        Ok(Setups {
            sandbox,
            guard: Guard::new(&sandbox.cgroup)?,
            agent: None,
            agent_cpu,
            current: Setup::NoGuard,
        })
    }

    pub fn set(&mut self, setup: Setup) -> anyhow::Result<()> {
        if setup == self.current {
            return Ok(());
        }
        if let Some(agent) = self.agent.take() {
            agent.stop()?; // it detaches on SIGTERM
        }
        match setup {
            Setup::NoGuard => self.guard.set(GuardSetup::NoProgram)?,
            Setup::Floor => self.guard.set(GuardSetup::Floor)?,
            Setup::Attach => self.guard.set(GuardSetup::Enforce)?,
            Setup::Run => {
                self.guard.set(GuardSetup::NoProgram)?;
                self.agent = Some(Agent::start(self.sandbox, self.agent_cpu)?);
            }
        }
        self.current = setup;
        Ok(())
    }

    /// Under `run`: makes connects with `connect` until the agent has turned the fast path on
    /// in the sandbox's namespace.
    pub fn wait_fast_path(
        &self,
        connect: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        ensure!(self.current == Setup::Run, "the fast path needs the agent");
        self.guard.wait_fast_path(connect)
    }

    /// The agent's CPU time so far (user + system, all threads), under `run`.
    pub fn agent_cpu_ns(&self) -> anyhow::Result<Option<u64>> {
        self.agent.as_ref().map(Agent::cpu_ns).transpose()
    }

    /// Detaches everything (also done on drop, without reporting errors).
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.set(Setup::NoGuard)
    }
}

impl Drop for Setups<'_> {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            let _ = agent.stop();
        }
        let _ = self.guard.set(GuardSetup::NoProgram);
    }
}

/// `udpguard run --cgroup <guarded> --watch-cgroup <sandbox>`, stopped with SIGTERM (it
/// detaches) when dropped.
pub struct Agent(Killed);

impl Agent {
    /// Starts the agent and waits until its route mirror runs.
    fn start(sandbox: &Sandbox, cpu: Option<usize>) -> anyhow::Result<Agent> {
        let mut command = sandbox.udpguard(Path::new(UDPGUARD));
        if let Some(cpu) = cpu {
            pin(&mut command, cpu);
        }
        command
            .arg("run")
            .arg("--cgroup")
            .arg(&sandbox.cgroup)
            .arg("--watch-cgroup")
            .arg(&sandbox.scope);
        let agent = Agent(Killed::spawn_until(
            command,
            "udpguard run",
            "mirroring routes",
        )?);
        Ok(agent)
    }

    fn cpu_ns(&self) -> anyhow::Result<u64> {
        cpu_ns(self.0.pid())
    }

    /// SIGTERM, and waits (SIGKILL after 10 s).
    fn stop(mut self) -> anyhow::Result<()> {
        self.0.terminate(Duration::from_secs(10))
    }
}

/// A child process, killed (SIGKILL) and reaped when dropped; its stderr is drained by a
/// thread (and shown with `UDPGUARD_BENCH_LOG` set).
pub struct Killed {
    name: String,
    child: Option<Child>,
}

impl Killed {
    /// Spawns `command` with stderr piped, and waits until a stderr line contains `ready`.
    pub fn spawn_until(mut command: Command, name: &str, ready: &str) -> anyhow::Result<Killed> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} (run scripts/setup.sh)"))?;
        let stderr = child.stderr.take().expect("piped");
        let process = Killed {
            name: name.to_string(),
            child: Some(child),
        };
        let show = std::env::var_os("UDPGUARD_BENCH_LOG").is_some();
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.with_context(|| format!("reading {name}'s stderr"))?;
            if show {
                eprintln!("{name}: {line}");
            }
            if line.contains(ready) {
                let name = name.to_string();
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        if show {
                            eprintln!("{name}: {line}");
                        }
                    }
                });
                return Ok(process);
            }
            seen.push(line);
        }
        bail!(
            "{name} ended before it was ready (\"{ready}\"); it said:\n{}",
            seen.join("\n")
        )
    }

    /// A child spawned elsewhere, killed when dropped.
    pub fn adopt(child: Child, name: &str) -> Killed {
        Killed {
            name: name.to_string(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then waits up to `patience` before SIGKILL.
    pub fn terminate(&mut self, patience: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "{} exited with {status}", self.name);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{} did not stop within {patience:?} of SIGTERM: killed",
            self.name
        )
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The CPUs the resolver bench gives its processes, when the machine has two or more: the
/// forwarder (whose thread the guard's programs run on) one to itself, everything else (the
/// load generator, the authority, the agent) the other. Without it the scheduler moves them
/// about and the queries per second swing by 5% from run to run, more than the cost measured.
pub const FORWARDER_CPU: usize = 1;
pub const OTHERS_CPU: usize = 0;

/// Runs `command`'s process on one CPU (when the machine has more than one).
pub fn pin(command: &mut Command, cpu: usize) {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        return;
    }
    // SAFETY: the closure makes one async-signal-safe call on a set of its own.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A process's CPU time so far, over all its threads: from each thread's
/// /proc/<pid>/task/<tid>/schedstat (nanoseconds on a CPU), or, where that is missing, from
/// /proc/<pid>/stat's utime + stime (clock ticks, 10 ms here: too coarse for a few seconds of
/// an agent that mostly sleeps). Threads that ended are counted only by /proc/<pid>/stat.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut total = 0u64;
        let mut any = false;
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            {
                total += ns;
                any = true;
            }
        }
        if any {
            return Ok(total);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) start with the state (3rd).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("parsing /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc/<pid>/stat")?
            .parse()
            .context("parsing /proc/<pid>/stat")
    };
    let ticks = field(14)? + field(15)?; // utime, stime
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// A temporary directory, removed with everything in it when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> anyhow::Result<TempDir> {
        let dir =
            std::env::temp_dir().join(format!("udpguard-bench-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A BPF program in effect on a cgroup (its own and its ancestors').
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Program {
    pub id: u32,
    pub name: String,
    /// The hook, as bpftool names it (cgroup_inet4_connect, cgroup_inet_sock_create, ...).
    pub attach_type: String,
}

/// The programs in effect on `cgroup` (`bpftool cgroup show <cgroup> effective`).
pub fn effective_programs(cgroup: &Path) -> anyhow::Result<Vec<Program>> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .arg("effective")
        .output()
        .context("running bpftool (run scripts/setup.sh)")?;
    ensure!(
        out.status.success(),
        "bpftool cgroup show {} failed: {}",
        cgroup.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).context("parsing bpftool's JSON")
}

/// One program's time over a window of `units` (queries, clients).
#[derive(Clone, Debug, Serialize)]
pub struct ProgramCost {
    pub name: String,
    pub attach_type: String,
    pub ns_per_run: f64,
    pub runs_per_unit: f64,
    pub ns_per_unit: f64,
}

/// The programs' cost per unit between two readings of the stats.
pub fn program_costs(
    programs: &[Program],
    before: &Counts,
    after: &Counts,
    units: u64,
) -> anyhow::Result<Vec<ProgramCost>> {
    programs
        .iter()
        .map(|program| {
            let ProgramTime { ns_per_run, runs } = ProgramTime::between(before, after, program.id)?;
            let runs_per_unit = runs as f64 / units.max(1) as f64;
            Ok(ProgramCost {
                name: program.name.clone(),
                attach_type: program.attach_type.clone(),
                ns_per_run,
                runs_per_unit,
                ns_per_unit: ns_per_run * runs_per_unit,
            })
        })
        .collect()
}

/// Each program's median over several windows (by position: the same programs each time).
pub fn median_costs(windows: &[Vec<ProgramCost>]) -> Vec<ProgramCost> {
    let Some(first) = windows.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let of = |pick: fn(&ProgramCost) -> f64| {
                let values: Vec<f64> = windows.iter().filter_map(|w| w.get(i)).map(pick).collect();
                stats::median(&values)
            };
            ProgramCost {
                name: first[i].name.clone(),
                attach_type: first[i].attach_type.clone(),
                ns_per_run: of(|c| c.ns_per_run),
                runs_per_unit: of(|c| c.runs_per_unit),
                ns_per_unit: of(|c| c.ns_per_unit),
            }
        })
        .collect()
}

/// The guard's counters on the sandbox (empty when nothing is attached).
pub fn counters() -> BTreeMap<String, u64> {
    udpguard::status::collect()
        .attachments
        .into_iter()
        .next()
        .map(|a| {
            a.counters
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        })
        .unwrap_or_default()
}

/// The counters that moved between two readings, and by how much.
pub fn counters_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0).min(*v)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Namespaces with the fast path on (None when nothing is attached).
pub fn fast_path_namespaces() -> Option<usize> {
    udpguard::status::collect()
        .attachments
        .into_iter()
        .next()
        .and_then(|a| a.fast_path_namespaces)
}

/// Formats a rate: 45,946.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGINT and SIGTERM only note the request; [`check_stop`] between runs turns it into an
/// error, so everything is cleaned up on the way out.
pub fn stop_on_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once SIGINT or SIGTERM was received.
pub fn check_stop() -> anyhow::Result<()> {
    ensure!(
        !STOP.load(std::sync::atomic::Ordering::Relaxed),
        "interrupted: cleaning up"
    );
    Ok(())
}
