//! A throw-away place to run sockets under a guard: its own cgroup, network namespace (`lo`
//! up, plus `fd00::1` and `fd00::2`) and pin root, all removed on drop, also when a test
//! panics. Used by the tests, the race stress tool and the benchmarks; never touches the
//! machine's own cgroups or attachments.
//!
//! The cgroup is a small tree: `<name>/guarded` is what the guard is attached to, and
//! `<name>/outside` holds the sandbox's processes that are not guarded, so the whole sandbox
//! (`scope`) can stand in for the cgroup root where the agent's watch must see every process.
use std::{
    fs::{self, File},
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::cgroup;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Sandbox {
    /// Names the cgroup, the network namespace (under /run/netns) and the pin root.
    pub name: String,
    /// The guarded cgroup.
    pub cgroup: PathBuf,
    /// The sandbox's own cgroup, holding `cgroup` and `outside`.
    pub scope: PathBuf,
    /// Where the sandbox's unguarded processes run.
    pub outside: PathBuf,
    /// Where this sandbox's attachments are pinned (`UDPGUARD_PIN_ROOT` for the CLI).
    pub pin_root: PathBuf,
}

impl Sandbox {
    /// Makes a fresh sandbox; `label` ends up in its name.
    pub fn new(label: &str) -> anyhow::Result<Sandbox> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("a sandbox loads BPF and makes cgroups and network namespaces: run as root");
        }
        let name = format!(
            "udpguard-test-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let scope = cgroup::root()?.join(&name);
        let sandbox = Sandbox {
            cgroup: scope.join("guarded"),
            outside: scope.join("outside"),
            scope,
            pin_root: PathBuf::from(crate::bpffs::DEFAULT_MOUNT).join(&name),
            name,
        };
        for dir in [&sandbox.scope, &sandbox.cgroup, &sandbox.outside] {
            fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        run("ip", &["netns", "add", &sandbox.name])?;
        sandbox.ip(&["link", "set", "lo", "up"])?;
        for addr in ["fd00::1/128", "fd00::2/128"] {
            sandbox.ip(&["addr", "add", addr, "dev", "lo", "nodad"])?;
        }
        Ok(sandbox)
    }

    /// Runs `ip -n <netns> ...`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs in the sandbox's network namespace, in its guarded cgroup when
    /// `in_cgroup` and in `outside` otherwise; the udpguard CLI it starts uses the sandbox's
    /// pin root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, in_cgroup: bool) -> Command {
        let netns = File::open(Path::new("/run/netns").join(&self.name))
            .expect("the sandbox's network namespace");
        let cgroup = if in_cgroup {
            &self.cgroup
        } else {
            &self.outside
        };
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))
            .expect("the sandbox's cgroup");
        let mut command = Command::new(program);
        command.env("UDPGUARD_PIN_ROOT", &self.pin_root);
        // SAFETY: the closure makes only async-signal-safe calls (write, setns) on file
        // descriptors it owns, which it keeps open until the exec.
        unsafe {
            command.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// The udpguard CLI (`binary`) with this sandbox's pin root, run from outside it.
    pub fn udpguard(&self, binary: &Path) -> Command {
        let mut command = Command::new(binary);
        command.env("UDPGUARD_PIN_ROOT", &self.pin_root);
        command
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Detach what is attached here, then remove whatever pins remain.
        if let Ok(root) = fs::read_dir(&self.pin_root) {
            for entry in root.flatten() {
                let _ = crate::attachment::remove(&entry.path());
            }
        }
        let _ = fs::remove_dir_all(&self.pin_root);
        // The event readers' lock and socket (named after the pin root).
        let _ = fs::remove_dir_all(Path::new("/run/udpguard").join(&self.name));
        // Kill anything still in the cgroup, then remove it.
        if let Ok(mut kill) = fs::OpenOptions::new()
            .write(true)
            .open(self.scope.join("cgroup.kill"))
        {
            let _ = kill.write_all(b"1");
        }
        remove_cgroup_tree(&self.scope);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Removes a cgroup and its children, waiting briefly for killed processes to leave.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..100 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (run scripts/setup.sh)"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
