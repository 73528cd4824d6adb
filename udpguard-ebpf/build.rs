//! The eBPF object is linked by `bpf-linker`: rebuild when it changes.
//!
//! Note: do not enable `--cpu-features=+alu32` here. With LLVM 22 it changed how the v4-mapped
//! path behaves (the mapped-peer lookup stopped finding AF_INET holders); the claim map's
//! 64-bit compare-and-swap needs no extra CPU features.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found: run scripts/setup.sh as root"),
    }
}
