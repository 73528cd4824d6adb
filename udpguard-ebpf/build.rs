//! The eBPF object is linked by `bpf-linker`: rebuild when it changes.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found: run scripts/setup.sh as root"),
    }
}
