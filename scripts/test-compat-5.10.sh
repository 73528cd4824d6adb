#!/usr/bin/env bash
# Runs tests/compat.rs (the older-kernel mode) inside Debian 11's 5.10 kernel, booted with
# virtme-ng under QEMU's software emulation (this machine's /dev/kvm hangs stock kernels).
# Needs root and what scripts/setup.sh installs (virtme-ng, qemu-system-x86, udev,
# busybox-static). The kernel comes from scripts/kernels.sh (cached, shared with the matrix).
# Prints one closing line: "compat on 5.10: PASS|FAIL (...)".
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '[compat-5.10] %s\n' "$*" >&2; }
for tool in vng qemu-system-x86_64; do
  command -v "$tool" >/dev/null || { say "$tool missing: pip install virtme-ng; apt-get install qemu-system-x86 udev"; exit 1; }
done

read -r _ vmlinuz moddir < <(bash scripts/kernels.sh 5.10)

say "building the compat test binary"
bin=$(cargo test -p udpguard --test compat --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "compat" and m.get("executable"):
        print(m["executable"])' | tail -1)
cargo build -q -p udpguard --bin udpguard
python=$(command -v python3)
# A pyenv shim is too slow under emulation: use the interpreter it points at.
if command -v pyenv >/dev/null; then python=$(pyenv which python3); fi

out=$(mktemp -d)
cat >"$out/guest.sh" <<EOF
#!/bin/bash
exec >"$out/guest.log" 2>&1
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
grep -q cgroup2 /proc/self/mounts || { mkdir -p /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup; }
ip link set lo up
modprobe -q -a inet_diag udp_diag || true
mkdir -p /run/netns
export PATH=$(dirname "$python"):\$PATH
uname -r
"$bin" --test-threads=2
echo "rc=\$?" >"$out/rc"
EOF
chmod +x "$out/guest.sh"
say "booting $(basename "$vmlinuz") (the log: $out/guest.log)"
timeout 1800 vng --disable-kvm --force-9p --run "$vmlinuz" --memory 2G --cpus 2 \
  --rodir="$moddir" --rwdir="$out" --exec "$out/guest.sh" >"$out/vng.log" 2>&1 || true
summary=$(grep '^test result:' "$out/guest.log" | tail -1 || true)
if [ "$(cat "$out/rc" 2>/dev/null)" = "rc=0" ]; then
  echo "compat on 5.10: PASS (${summary:-?})"
else
  tail -40 "$out/guest.log" >&2 || true
  echo "compat on 5.10: FAIL (${summary:-no result; see $out})"
  exit 1
fi
