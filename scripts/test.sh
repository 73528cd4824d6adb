#!/usr/bin/env bash
# Sets up a fresh machine (idempotent) and runs every test. Run as root: the tests load BPF
# programs into the real kernel, each in its own cgroup and network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --quiet -p udpguard -p udpguard-common --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --exclude udpguard-ebpf 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo's own last line is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
