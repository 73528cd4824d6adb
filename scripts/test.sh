#!/usr/bin/env bash
# Sets up a fresh machine (idempotent) and runs every test. Run as root: the tests load BPF
# programs into the real kernel, each in its own cgroup and network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --quiet -p udpguard -p udpguard-common --all-targets -- -D warnings
cargo test --workspace --exclude udpguard-ebpf
