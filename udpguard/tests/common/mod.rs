//! A sandbox per test: its own child cgroup, network namespace and pin root, all removed when
//! the sandbox drops (also when the test fails). Socket scenarios run as Python scripts in a
//! child process placed in the cgroup and namespace.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::{
    fs::{self, File},
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

pub const UDPGUARD: &str = env!("CARGO_BIN_EXE_udpguard");
const SOCKETS_PY: &str = include_str!("sockets.py");

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Sandbox {
    pub name: String,
    pub cgroup: PathBuf,
    pub pin_root: PathBuf,
}

/// Fails the test with a clear message unless it runs as root: these tests load BPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs into the real kernel and needs root: run `sudo scripts/test.sh`"
    );
}

/// Where cgroup v2 is mounted on this machine.
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .expect("no cgroup2 mount: these tests need cgroup v2");
    PathBuf::from(line.split_whitespace().nth(1).unwrap())
}

impl Sandbox {
    /// A fresh cgroup, network namespace (lo up, extra loopback addresses) and pin root.
    pub fn new(test: &str) -> Sandbox {
        require_root();
        let name = format!(
            "udpguard-test-{}-{}-{test}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let sandbox = Sandbox {
            cgroup: cgroup2_root().join(&name),
            pin_root: PathBuf::from("/sys/fs/bpf").join(&name),
            name,
        };
        fs::create_dir(&sandbox.cgroup).expect("creating the test cgroup");
        run_ok("ip", &["netns", "add", &sandbox.name]);
        sandbox.ip(&["link", "set", "lo", "up"]);
        for addr in ["fd00::1/128", "fd00::2/128"] {
            sandbox.ip(&["addr", "add", addr, "dev", "lo", "nodad"]);
        }
        sandbox
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ok("ip", &all);
    }

    /// Runs the udpguard CLI with this sandbox's pin root.
    pub fn udpguard(&self, args: &[&str]) -> Output {
        Command::new(UDPGUARD)
            .args(args)
            .env("UDPGUARD_PIN_ROOT", &self.pin_root)
            .output()
            .expect("running udpguard")
    }

    /// Runs the udpguard CLI and fails the test unless it succeeds; returns stdout.
    pub fn udpguard_ok(&self, args: &[&str]) -> String {
        let out = self.udpguard(args);
        assert!(
            out.status.success(),
            "udpguard {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
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

    /// `udpguard status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.udpguard_ok(&["status", "--json"])).unwrap()
    }

    /// One counter of our attachment.
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
        let netns = File::open(Path::new("/run/netns").join(&self.name)).unwrap();
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))
            .unwrap();
        let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
        let program = format!("{SOCKETS_PY}\n{}", dedent(script));
        let mut command = Command::new("python3");
        command
            .arg("-c")
            .arg(program)
            .env("UDPGUARD_PIN_ROOT", &self.pin_root)
            .stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls (write, setns) on fds opened before the fork.
        unsafe {
            command.pre_exec(move || {
                if in_cgroup && libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output().expect("running python3");
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
        let out = Command::new("bpftool")
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

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Detach through the CLI, then remove whatever pins remain.
        let _ = self.udpguard(&["detach", "--all"]);
        let _ = fs::remove_dir_all(&self.pin_root);
        // Kill anything still in the cgroup, then remove it.
        if let Ok(mut kill) = fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.kill"))
        {
            let _ = kill.write_all(b"1");
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
