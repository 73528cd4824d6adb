#!/usr/bin/env bash
# udpguard's main job in one command: set up, build, show the seed's silent duplicate, attach
# the guard to a temporary cgroup, and show the refusal. Cleans up after itself. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet 2>/dev/null || cargo build --release
udpguard=target/release/udpguard

cg2=$(awk '$3=="cgroup2"{print $2; exit}' /proc/self/mounts)
[ -n "$cg2" ] || { echo "no cgroup v2 mounted: mount -t cgroup2 none /sys/fs/cgroup" >&2; exit 1; }
name=udpguard-demo-$$
cgroup=$cg2/$name
cleanup() {
  "$udpguard" detach --cgroup "$cgroup" >/dev/null 2>&1 || true
  [ -d "$cgroup" ] && { echo 1 > "$cgroup/cgroup.kill" 2>/dev/null || true; sleep 0.1; rmdir "$cgroup" 2>/dev/null || true; }
  ip netns del "$name" 2>/dev/null || true
}
trap cleanup EXIT
mkdir "$cgroup"
ip netns add "$name"
ip -n "$name" link set lo up

# Runs the seed's two sockets inside the temporary cgroup and its own network namespace.
seed() { sh -c "echo \$\$ > '$cgroup/cgroup.procs'; exec ip netns exec '$name' python3 scripts/seed_demo.py"; }

echo "== 1. Without udpguard: both connects succeed; two ESTABLISHED sockets share one 4-tuple"
seed
echo
echo "== 2. udpguard attach --cgroup $cgroup"
"$udpguard" attach --cgroup "$cgroup"
echo
echo "== 3. The same two sockets with the guard (the CLI has exited; the pinned programs enforce)"
seed
echo
echo "== 4. udpguard status"
"$udpguard" status
echo "== 5. udpguard detach"
"$udpguard" detach --cgroup "$cgroup"
