//! Builds the eBPF object (the `udpguard-ebpf` crate, for the bpf target, with nightly and
//! bpf-linker) into OUT_DIR, where `src/loader.rs` embeds it in the binary.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    git_commit();
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

/// Sets `UDPGUARD_GIT_COMMIT` (what `udpguard_build_info{commit}` says) to the checkout's
/// commit, with `-dirty` when files differ from it, or "unknown" outside a git checkout.
fn git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).map_or_else(
        || "unknown".to_owned(),
        |commit| match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{commit}-dirty"),
            _ => commit,
        },
    );
    println!("cargo:rustc-env=UDPGUARD_GIT_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout).
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
