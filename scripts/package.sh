#!/usr/bin/env bash
# Builds the Debian package: target/debian/udpguard_<version>-1_<arch>.deb.
#
#   bash scripts/package.sh                  # sets the machine up first (scripts/setup.sh)
#   apt install ./target/debian/udpguard_*.deb
#
# The release binary carries the eBPF object (udpguard/build.rs builds it, src/loader.rs
# embeds it), so the package is one binary plus what is generated from it here: a man page per
# verb and the bash, zsh and fish completions. UDPGUARD_SKIP_SETUP=1 skips setup.sh (CI has
# run it already). Prints the .deb's path as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '[package] %s\n' "$*" >&2; }

if [ "${UDPGUARD_SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup.sh
fi
command -v cargo-deb >/dev/null || { say "cargo-deb is missing: run scripts/setup.sh as root"; exit 1; }

say "building the release binary (and the eBPF object it embeds)"
cargo build --release --locked -p udpguard --bin udpguard

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/udpguard"
assets="$target_dir/release/udpguard-assets"
say "generating man pages and completions from $bin"
rm -rf "$assets"
mkdir -p "$assets/completions"
"$bin" man "$assets/man"
# Debian policy: man pages gzipped (cargo-deb leaves files under target/ as they are).
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/udpguard"
"$bin" completions zsh >"$assets/completions/_udpguard"
"$bin" completions fish >"$assets/completions/udpguard.fish"

say "packing the .deb"
# --no-build: the binary above is the one the pages were generated from.
deb=$(cargo deb -p udpguard --no-build | tail -n 1)
say "built $deb ($(du -h "$deb" | cut -f1))"
echo "$deb"
