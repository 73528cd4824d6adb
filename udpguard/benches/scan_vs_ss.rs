//! Benchmark: `udpguard scan --json` against `ss -Hnaup state established` on
//! the same ~15,000 connected UDP sockets.
//!
//! Both list the connected UDP sockets over `NETLINK_SOCK_DIAG` and walk every
//! `/proc/<pid>/fd` to find their processes, so `ss -p` is the bar to meet.
//! The sockets live in a private network namespace, spread over several python
//! processes (the open-file hard limit is 20,000 per process here), with some
//! duplicate 4-tuples among them. The bench enters that namespace itself so
//! that both tools run as plain children, without `ip netns exec` overhead.
//!
//! Run (as root): `cargo bench -p udpguard --bench scan_vs_ss`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

const UDPGUARD: &str = env!("CARGO_BIN_EXE_udpguard");
/// Socket-holding processes.
const HOLDERS: usize = 4;
/// Unique connected IPv4 / IPv6 sockets per holder.
const UNIQUE_V4_PER_HOLDER: usize = 3000;
const UNIQUE_V6_PER_HOLDER: usize = 730;
/// Duplicate groups; every holder puts one socket in each.
const DUPLICATE_GROUPS: usize = 20;
/// Untimed runs of each command before measuring.
const WARMUP_RUNS: usize = 3;
/// Timed runs of each command (interleaved).
const TIMED_RUNS: usize = 21;

/// Makes the sockets given on the command line, prints "ready" and holds them
/// until stdin closes.
const HOLDER_PY: &str = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
index, v4, v6, groups = map(int, sys.argv[1:5])
kept = []
for i in range(v4):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.connect(("127.0.0.3", 1024 + (index * v4 + i) % 60000))
    kept.append(s)
for i in range(v6):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.connect(("::1", 1024 + (index * v6 + i) % 60000))
    kept.append(s)
for g in range(groups):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 5000 + g))
    s.connect(("127.0.0.2", 53))
    kept.append(s)
print("ready", flush=True)
sys.stdin.read()
"#;

/// The bench's namespace; deleted on drop.
struct BenchNetns {
    name: String,
}

impl BenchNetns {
    fn new() -> Self {
        let name = format!("udpguard-bench-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self { name };
        run(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]));
        netns
    }
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A socket-holding python process; killed on drop.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(command: &mut Command) {
    let status = command.status().expect("cannot run a command");
    assert!(status.success(), "{command:?} failed");
}

/// Runs `command` to completion, reading all its output, and returns the wall
/// time and the number of output lines.
fn timed(command: &mut Command) -> (Duration, usize) {
    let start = Instant::now();
    let output = command.output().expect("cannot run a command");
    let elapsed = start.elapsed();
    assert!(
        output.status.code().is_some_and(|c| c <= 1),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        elapsed,
        output
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
    )
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this bench needs root: it creates a network namespace"
    );
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };

    let netns = BenchNetns::new();
    let started = Instant::now();
    let mut holders = Vec::new();
    for index in 0..HOLDERS {
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name, python, "-c", HOLDER_PY])
            .args(
                [
                    index,
                    UNIQUE_V4_PER_HOLDER,
                    UNIQUE_V6_PER_HOLDER,
                    DUPLICATE_GROUPS,
                ]
                .map(|n| n.to_string()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start python3");
        holders.push(Holder(child));
    }
    for holder in &mut holders {
        let mut line = String::new();
        BufReader::new(holder.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "a socket holder failed");
    }
    let sockets = HOLDERS * (UNIQUE_V4_PER_HOLDER + UNIQUE_V6_PER_HOLDER + DUPLICATE_GROUPS);
    println!(
        "made {sockets} connected UDP sockets in {HOLDERS} processes \
         ({DUPLICATE_GROUPS} duplicate 4-tuples of {HOLDERS} sockets each) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Enter the namespace so both tools run in it as direct children.
    let home = File::open("/proc/thread-self/ns/net").unwrap();
    let target = File::open(format!("/run/netns/{}", netns.name)).unwrap();
    setns(&target, CloneFlags::CLONE_NEWNET).expect("cannot enter the bench namespace");

    let mut scan = Command::new(UDPGUARD);
    scan.args(["scan", "--json"]);
    let mut ss_p = Command::new("ss");
    ss_p.args(["-Hnaup", "state", "established"]);
    let mut ss = Command::new("ss");
    ss.args(["-Hnau", "state", "established"]);

    for _ in 0..WARMUP_RUNS {
        timed(&mut scan);
        timed(&mut ss_p);
        timed(&mut ss);
    }
    let (mut scan_times, mut ss_p_times, mut ss_times) = (Vec::new(), Vec::new(), Vec::new());
    let mut ss_lines = 0;
    for _ in 0..TIMED_RUNS {
        scan_times.push(timed(&mut scan).0);
        let (time, lines) = timed(&mut ss_p);
        ss_p_times.push(time);
        ss_lines = lines;
        ss_times.push(timed(&mut ss).0);
    }
    let report = scan.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        report["scanned"], sockets,
        "scan saw a different socket count"
    );
    assert_eq!(
        report["duplicates"].as_array().unwrap().len(),
        DUPLICATE_GROUPS
    );
    assert_eq!(ss_lines, sockets, "ss saw a different socket count");

    setns(&home, CloneFlags::CLONE_NEWNET).expect("cannot return to the original namespace");

    let scan_median = median(&mut scan_times);
    let ss_p_median = median(&mut ss_p_times);
    let ss_median = median(&mut ss_times);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "median of {TIMED_RUNS} runs each (after {WARMUP_RUNS} warm-up runs):"
    );
    let _ = writeln!(
        out,
        "  udpguard scan --json               {:8.2} ms",
        millis(scan_median)
    );
    let _ = writeln!(
        out,
        "  ss -Hnaup state established        {:8.2} ms",
        millis(ss_p_median)
    );
    let _ = writeln!(
        out,
        "  ss -Hnau state established (no -p) {:8.2} ms",
        millis(ss_median)
    );
    let _ = writeln!(
        out,
        "ratio ss -p / udpguard scan: {:.2}x (> 1 means scan is faster)",
        ss_p_median.as_secs_f64() / scan_median.as_secs_f64()
    );
    drop(holders);
    drop(netns);
}
