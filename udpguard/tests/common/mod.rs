//! Test helpers on top of [`udpguard::sandbox::Sandbox`]: the CLI with the sandbox's pin
//! root, and socket scenarios written in Python (see `sockets.py`) run inside the sandbox.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::{
    io::{BufRead as _, BufReader},
    ops::Deref,
    process::{Child, Output, Stdio},
};

pub const UDPGUARD: &str = env!("CARGO_BIN_EXE_udpguard");
const SOCKETS_PY: &str = include_str!("sockets.py");

pub struct Sandbox(udpguard::sandbox::Sandbox);

impl Deref for Sandbox {
    type Target = udpguard::sandbox::Sandbox;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// How many times slower than a host this machine runs the tests: `UDPGUARD_TEST_SLOWDOWN`
/// (default 1). The kernel matrix's guests run under QEMU's software emulation, about ten
/// times slower, and set it; tests that bound how soon something happens scale their bounds
/// by it (a bound there only catches what never happens).
#[allow(dead_code)] // not every test binary bounds a time
pub fn slowdown() -> u32 {
    std::env::var("UDPGUARD_TEST_SLOWDOWN").map_or(1, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("UDPGUARD_TEST_SLOWDOWN={s:?} is not a whole number"))
    })
}

/// The stdout of a CLI run (`args`), failing the test with both outputs unless it succeeded.
pub fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "udpguard {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fails the test with a clear message unless it runs as root: these tests load BPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test runs against the real kernel and needs root: `sudo scripts/test.sh`"
    );
}

impl Sandbox {
    /// A fresh sandbox; fails the test with a clear message when not root.
    pub fn new(test: &str) -> Sandbox {
        Sandbox(udpguard::sandbox::Sandbox::new(test).unwrap_or_else(|e| {
            panic!("this test runs against the real kernel: {e:#} (`sudo scripts/test.sh`)")
        }))
    }

    /// The udpguard CLI as a command, with this sandbox's pin root.
    pub fn udpguard_command(&self) -> std::process::Command {
        self.0.udpguard(UDPGUARD.as_ref())
    }

    /// Runs the udpguard CLI with this sandbox's pin root.
    pub fn udpguard(&self, args: &[&str]) -> Output {
        self.0
            .udpguard(UDPGUARD.as_ref())
            .args(args)
            .output()
            .expect("running udpguard")
    }

    /// Runs the udpguard CLI and fails the test unless it succeeds; returns stdout.
    pub fn udpguard_ok(&self, args: &[&str]) -> String {
        succeeded(args, self.udpguard(args))
    }

    /// `udpguard attach --cgroup <ours>` plus `extra`.
    pub fn attach(&self, extra: &[&str]) -> String {
        let cgroup = self.cgroup.to_str().unwrap();
        let mut args = vec!["attach", "--cgroup", cgroup];
        args.extend_from_slice(extra);
        self.udpguard_ok(&args)
    }

    pub fn detach(&self) -> String {
        self.udpguard_ok(&["detach", "--cgroup", self.cgroup.to_str().unwrap()])
    }

    /// `udpguard status --json`, parsed (whatever its exit status says).
    pub fn status(&self) -> serde_json::Value {
        let out = self.udpguard(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// One counter of our (first) attachment.
    pub fn counter(&self, name: &str) -> u64 {
        let status = self.status();
        status["attachments"][0]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {status}"))
    }

    /// Runs a scenario inside the cgroup and namespace; returns its output lines.
    pub fn py(&self, script: &str) -> Vec<String> {
        self.run_py(script, true)
    }

    /// Runs a scenario in the namespace but outside the guarded cgroup.
    pub fn py_outside(&self, script: &str) -> Vec<String> {
        self.run_py(script, false)
    }

    fn run_py(&self, script: &str, in_cgroup: bool) -> Vec<String> {
        let program = format!("{SOCKETS_PY}\n{}", dedent(script));
        let out = self
            .command("python3", in_cgroup)
            .arg("-c")
            .arg(program)
            .stdin(Stdio::null())
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "scenario failed:\n{script}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The programs attached to our cgroup, as bpftool sees them.
    pub fn attached_programs(&self) -> Vec<serde_json::Value> {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(&self.cgroup)
            .output()
            .expect("running bpftool (run scripts/setup.sh)");
        assert!(out.status.success(), "bpftool cgroup show failed");
        let text = String::from_utf8(out.stdout).unwrap();
        if text.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str::<Vec<serde_json::Value>>(&text).unwrap()
    }
}

/// `udpguard run` on a sandbox's cgroup, stopped (SIGTERM) when dropped.
pub struct Agent(Child);

impl Agent {
    /// Starts the agent and waits until its route mirror runs.
    pub fn start(sb: &Sandbox) -> Agent {
        Agent::start_with(sb, &[])
    }

    /// Starts the agent with more options (`run` takes `attach`'s).
    pub fn start_with(sb: &Sandbox, extra: &[&str]) -> Agent {
        let mut child = sb
            .udpguard_command()
            .args(["run", "--cgroup", sb.cgroup.to_str().unwrap()])
            .args(["--watch-cgroup", sb.scope.to_str().unwrap()])
            .args(extra)
            // The machine's default metrics port is not the test's to take.
            .args(if extra.contains(&"--metrics-addr") {
                &[][..]
            } else {
                &["--no-metrics"][..]
            })
            // Nor is a scan of every namespace on the host (each test's agent would scan
            // every other test's namespaces): tests of the scan ask for it.
            .args(if extra.contains(&"--scan-interval") {
                &[][..]
            } else {
                &["--scan-interval", "0"][..]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting udpguard run");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let agent = Agent(child);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if std::env::var_os("UDPGUARD_TEST_LOG").is_some() {
                eprintln!("agent: {line}");
            }
            if line.contains("mirroring routes") {
                // Keep draining stderr so the agent never blocks on a full pipe (shown with
                // UDPGUARD_TEST_LOG set).
                let show = std::env::var_os("UDPGUARD_TEST_LOG").is_some();
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        if show {
                            eprintln!("agent: {line}");
                        }
                    }
                });
                return agent;
            }
            assert!(!line.contains("ERROR"), "udpguard run failed: {line}");
        }
        panic!("udpguard run ended before mirroring routes");
    }
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills the agent the hard way (SIGKILL): it withdraws nothing.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A process in the sandbox's namespace (in its cgroup or not) holding 127.0.0.1:4444 ->
/// 127.0.0.1:1111 connected until dropped.
pub struct Holder(Child);

impl Holder {
    pub fn start(sb: &Sandbox, in_cgroup: bool) -> Holder {
        let mut child = sb
            .command("python3", in_cgroup)
            .args([
                "-c",
                "import socket,time\n\
                 a=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 a.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 a.bind(('127.0.0.1',4444)); a.connect(('127.0.0.1',1111))\n\
                 print('held',flush=True); time.sleep(60)",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting a holder");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the indentation common to all non-blank lines (scenarios are indented in Rust).
pub fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}
