//! Builds the eBPF object (the `udpguard-ebpf` crate, for the bpf target, with nightly and
//! bpf-linker) into OUT_DIR, where `src/loader.rs` embeds it in the binary; and names the git
//! commit the binary is built from (`UDPGUARD_GIT_COMMIT`, shown by `--version`).
use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rustc-env=UDPGUARD_GIT_COMMIT={}", git_commit());
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "udpguard-ebpf")
        .ok_or_else(|| anyhow!("udpguard-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("udpguard-ebpf has no manifest directory"))?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
        .context("building the eBPF object failed: run scripts/setup.sh as root (nightly, rust-src, bpf-linker)")
}

/// The commit HEAD names, or "unknown" outside a git checkout (a source tarball, a container
/// build without `.git`). `UDPGUARD_GIT_COMMIT` set in the environment wins: a build from an
/// exported tree can still say where it came from.
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=UDPGUARD_GIT_COMMIT");
    if let Ok(commit) = std::env::var("UDPGUARD_GIT_COMMIT") {
        return commit;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Run again when HEAD moves: a checkout changes HEAD, a commit changes the branch's ref
    // (loose, or packed by `git gc`). Worktrees keep HEAD apart from the shared refs.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        // A path that does not exist would make cargo run this script on every build.
        let path = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]);
        if let Some(path) = path.filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    commit
}
