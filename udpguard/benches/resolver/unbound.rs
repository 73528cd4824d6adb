//! The resolver workload: an authority Unbound answering every name under a test zone (a
//! `redirect` local zone), a forwarding Unbound with `udp-connect: yes` (a fresh bound and
//! connected UDP socket per upstream query) in front of it, and dnsperf asking the forwarder
//! for names that never repeat, so every query goes upstream. All run in the sandbox's
//! namespace and guarded cgroup.
use std::{
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, ensure};
use serde::Serialize;
use udpguard::sandbox::Sandbox;

use crate::workload::{FORWARDER_CPU, Killed, OTHERS_CPU, pin};

/// The zone the authority answers every name under. Not under `test.`: Unbound answers that
/// one itself (a default local zone), so queries would never go upstream.
pub const ZONE: &str = "udpguard.bench.";
const AUTHORITY_PORT: u16 = 5300;
const FORWARDER_PORT: u16 = 5301;
/// Names in a run's query file per second of the run: more than the forwarder answers here,
/// so no name repeats within a run (dnsperf stops at the end of the file, `-n 1`).
const NAMES_PER_SECOND: u64 = 60_000;

/// Settings both servers share: in the foreground, as root, no chroot, logging to stderr,
/// one thread, IPv4 only, no DNSSEC module, no control socket.
fn common(dir: &Path, port: u16) -> String {
    format!(
        "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  \
         username: \"\"\n  chroot: \"\"\n  pidfile: \"\"\n  directory: \"{dir}\"\n  \
         use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  num-threads: 1\n  do-ip6: no\n  \
         module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n",
        dir = dir.display()
    )
}

fn authority_conf(dir: &Path) -> String {
    format!(
        "{}  local-zone: \"{ZONE}\" redirect\n  local-data: \"{ZONE} 60 IN A 192.0.2.1\"\n\
         remote-control:\n  control-enable: no\n",
        common(dir, AUTHORITY_PORT)
    )
}

fn forwarder_conf(dir: &Path) -> String {
    format!(
        "{}  do-not-query-localhost: no\n  udp-connect: yes\n  qname-minimisation: no\n  \
         prefetch: no\n  outgoing-range: 4096\n  num-queries-per-thread: 2048\n\
         remote-control:\n  control-enable: no\n\
         forward-zone:\n  name: \".\"\n  forward-addr: 127.0.0.1@{AUTHORITY_PORT}\n",
        common(dir, FORWARDER_PORT)
    )
}

/// Both Unbounds, killed when dropped.
pub struct Servers {
    _authority: Killed,
    forwarder: Killed,
}

impl Servers {
    /// The forwarder's pid: the process whose sockets the guard checks (its one thread makes
    /// every upstream socket, and the guard's programs run on it).
    pub fn forwarder_pid(&self) -> u32 {
        self.forwarder.pid()
    }

    /// Writes their configurations into `dir` and starts them in the sandbox's guarded cgroup.
    pub fn start(sandbox: &Sandbox, dir: &Path) -> anyhow::Result<Servers> {
        // dnsperf 2.10 sends nothing when the namespace has a global IPv6 address: it picks
        // a v4-mapped IPv6 socket for 127.0.0.1, and refuses `-f inet` ("invalid server
        // address"). The workload is IPv4 only, so the sandbox's fd00:: addresses go.
        for addr in ["fd00::1/128", "fd00::2/128"] {
            sandbox.ip(&["addr", "del", addr, "dev", "lo"])?;
        }
        let start = |name: &str, conf: String, cpu: usize| -> anyhow::Result<Killed> {
            let path = dir.join(format!("{name}.conf"));
            std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
            let check = std::process::Command::new("unbound-checkconf")
                .arg(&path)
                .output()
                .context("running unbound-checkconf (run scripts/setup.sh)")?;
            ensure!(
                check.status.success(),
                "unbound-checkconf {}: {}",
                path.display(),
                String::from_utf8_lossy(&check.stdout)
            );
            let mut command = sandbox.command("unbound", true);
            command.arg("-d").arg("-c").arg(&path);
            pin(&mut command, cpu);
            Killed::spawn_until(command, &format!("unbound ({name})"), "start of service")
        };
        Ok(Servers {
            _authority: start("authority", authority_conf(dir), OTHERS_CPU)?,
            forwarder: start("forwarder", forwarder_conf(dir), FORWARDER_CPU)?,
        })
    }
}

/// What one dnsperf run reported.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Perf {
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub seconds: f64,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Asks the forwarder, for `seconds`, for names never asked before (a fresh query file per
/// run, removed afterwards), from dnsperf in the sandbox's guarded cgroup.
pub fn dnsperf(sandbox: &Sandbox, dir: &Path, seconds: f64) -> anyhow::Result<Perf> {
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let file = query_file(dir, run, (seconds * NAMES_PER_SECOND as f64).ceil() as u64)?;
    let mut command = sandbox.command("dnsperf", true);
    pin(&mut command, OTHERS_CPU);
    let out = command
        .args(["-s", "127.0.0.1", "-p", &FORWARDER_PORT.to_string()])
        .arg("-d")
        .arg(&file)
        .args([
            "-l",
            &format!("{seconds}"),
            "-n",
            "1",
            "-c",
            "4",
            "-q",
            "200",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf (run scripts/setup.sh)");
    let _ = std::fs::remove_file(&file);
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "dnsperf failed: {}{}",
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let perf = parse(&text)?;
    ensure!(
        perf.completed > 0,
        "dnsperf got no answers from the forwarder: {}",
        text
    );
    Ok(perf)
}

/// Lines `q<i>.r<run>.udpguard.bench. A`.
fn query_file(dir: &Path, run: u64, names: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("queries-{run}.txt"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for i in 0..names {
        writeln!(out, "q{i}.r{run}.{ZONE} A")?;
    }
    out.flush()?;
    Ok(path)
}

/// dnsperf's statistics.
fn parse(text: &str) -> anyhow::Result<Perf> {
    let field = |label: &str| -> anyhow::Result<f64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .with_context(|| format!("dnsperf printed no \"{label}\""))?;
        line.trim_start()[label.len()..]
            .split_whitespace()
            .next()
            .context("empty field")?
            .parse()
            .with_context(|| format!("parsing dnsperf's \"{line}\""))
    };
    Ok(Perf {
        completed: field("Queries completed:")? as u64,
        lost: field("Queries lost:")? as u64,
        qps: field("Queries per second:")?,
        seconds: field("Run time (s):")?,
    })
}
