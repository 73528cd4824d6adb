//! Builds the eBPF object (the `udpguard-ebpf` crate, for the bpf target, with nightly and
//! bpf-linker) into OUT_DIR, where `src/loader.rs` embeds it in the binary.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
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
