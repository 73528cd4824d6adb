#!/usr/bin/env bash
# The real systemd unit under a real systemd (252, Debian 12) as PID 1: boots a bookworm
# rootfs with Debian 12's kernel under QEMU software emulation (virtme-ng), where the oneshot
# udpguard-check.service (scripts/test-systemd-guest.sh) checks deploy/udpguard.service:
# active at boot, attached at the cgroup root, the seed demo refused, /metrics on
# 127.0.0.1:10108, restarted after SIGKILL and adopting, and what `systemctl stop` leaves.
# Run as root. Prints one line; the exit status is non-zero when a check failed.
#
#   scripts/test-systemd.sh
#
# Environment:
#   UDPGUARD_DEB   a udpguard .deb to `apt install` in the guest instead of the release build,
#                  deploy/udpguard.service and /etc/default/udpguard
#   UDPGUARD_SYSTEMD_OUT  work directory (default target/systemd-guest); the result, journal and
#                  console log stay there
# The bookworm rootfs is made once with mmdebstrap and cached in /var/cache/udpguard-kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
say() { printf '[systemd] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "run me as root: I make a rootfs with mmdebstrap and boot it"
  exit 1
fi
for tool in vng mmdebstrap qemu-system-x86_64; do
  command -v "$tool" >/dev/null || { say "$tool is missing: run scripts/setup.sh"; exit 1; }
done
cache=${UDPGUARD_KERNEL_CACHE:-/var/cache/udpguard-kernels}
base=$cache/rootfs-bookworm
work=$(realpath -m "${UDPGUARD_SYSTEMD_OUT:-target/systemd-guest}")
start=$(date +%s)

if [ ! -x "$base/lib/systemd/systemd" ]; then
  say "making the bookworm rootfs (once; about 80 s) in $base"
  rm -rf "$base.tmp"
  mmdebstrap --variant=minbase --include=systemd-sysv,udev,iproute2,kmod,python3,procps,curl \
    bookworm "$base.tmp" >&2
  mv "$base.tmp" "$base"
fi
read -r _ vmlinuz moddir < <(bash scripts/kernels.sh 6.1)
release=${vmlinuz##*/vmlinuz-}

if [ -z "${UDPGUARD_DEB:-}" ]; then
  say "building the release binary"
  cargo build --release --quiet -p udpguard --bin udpguard
fi

say "preparing the guest's root in $work/rootfs"
rm -rf "$work"
mkdir -p "$work"
cp -a "$base" "$work/rootfs"
r=$work/rootfs
if [ -n "${UDPGUARD_DEB:-}" ]; then
  deb=$(realpath "$UDPGUARD_DEB")
  cp "$deb" "$r/tmp/udpguard.deb"
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  chroot "$r" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/udpguard.deb >&2
  rm -f "$r/tmp/udpguard.deb"
else
  install -m 0755 target/release/udpguard "$r/usr/bin/udpguard"
  install -m 0644 deploy/udpguard.service "$r/etc/systemd/system/udpguard.service"
  mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
  ln -sf /etc/systemd/system/udpguard.service "$r/etc/systemd/system/multi-user.target.wants/udpguard.service"
fi
# The metrics address explicitly, whatever the binary's default.
if ! grep -qs -- '^UDPGUARD_OPTS=.*--metrics-addr 127.0.0.1:10108' "$r/etc/default/udpguard"; then
  echo 'UDPGUARD_OPTS="--metrics-addr 127.0.0.1:10108"' > "$r/etc/default/udpguard"
fi
unit_dir=$r/etc/systemd/system
[ -f "$unit_dir/udpguard.service" ] || unit_dir=$r/lib/systemd/system
mkdir -p "$r/usr/local/share/udpguard-check"
install -m 0755 scripts/test-systemd-guest.sh "$r/usr/local/share/udpguard-check/check.sh"
install -m 0644 scripts/seed_demo.py "$r/usr/local/share/udpguard-check/seed_demo.py"
cat > "$r/etc/systemd/system/udpguard-check.service" <<'EOF'
[Unit]
Description=udpguard's systemd check (scripts/test-systemd-guest.sh)
After=udpguard.service multi-user.target
Wants=udpguard.service

[Service]
Type=oneshot
ExecStart=/usr/local/share/udpguard-check/check.sh
StandardOutput=journal+console
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/udpguard-check.service "$r/etc/systemd/system/multi-user.target.wants/udpguard-check.service"
echo udpguard-guest > "$r/etc/hostname"
# Holders and the fast path list UDP sockets over sock_diag (the udp_diag module). A Debian host
# autoloads it on first use; this guest does not autoload modules, so load it at boot, from the
# rootfs's own /lib/modules (vng's --root mode shares no modules): the diag modules alone.
for m in inet_diag udp_diag; do
  ko=$(cd "$moddir" && find kernel -name "$m.ko*" | head -n1)
  [ -n "$ko" ] || { say "no $m module in $moddir"; exit 1; }
  install -D -m 0644 "$moddir/$ko" "$r/lib/modules/$release/$ko"
done
cp "$moddir"/modules.builtin* "$moddir/modules.order" "$r/lib/modules/$release/"
depmod -a -b "$r" "$release"
echo udp_diag > "$r/etc/modules-load.d/udpguard-check.conf"
rm -f "$r/udpguard-check.result"

say "booting systemd in the guest (kernel $release); console in $work/console.log"
boot=$(date +%s)
rc=0
# vng wants a terminal for a systemd guest's console: script(1) gives it one.
timeout --kill-after=30 "${UDPGUARD_SYSTEMD_TIMEOUT:-900}" \
  script -qefc "vng --systemd --root $r --rw --force-9p --disable-kvm --run $vmlinuz --memory 2G --cpus 2" \
  "$work/console.log" < /dev/null > /dev/null 2>&1 || rc=$?
now=$(date +%s)
cp "$r/udpguard-check.result" "$r/udpguard-check.journal" "$r/udpguard-check.security" "$work/" 2>/dev/null || true

if [ -s "$work/udpguard-check.result" ]; then
  checks=$(grep -c '^PASS\|^FAIL' "$work/udpguard-check.result")
  fails=$(grep -c '^FAIL' "$work/udpguard-check.result" || true)
  score=$(sed -n 's/^SCORE.*level for [^:]*: *//p' "$work/udpguard-check.result")
  if grep -q '^RESULT pass$' "$work/udpguard-check.result"; then
    echo "systemd guest (systemd $(chroot "$r" dpkg-query -W -f='${Version}' systemd 2>/dev/null), kernel $release): all $checks checks passed; security exposure ${score:-?}; boot to power-off $((now - boot)) s, in all $((now - start)) s"
    exit 0
  fi
  grep '^FAIL' "$work/udpguard-check.result" | sed 's/^/  /' >&2
  echo "systemd guest (kernel $release): $fails of $checks checks failed (see $work/udpguard-check.result and .journal); $((now - start)) s"
  exit 1
fi
echo "systemd guest (kernel $release): no result (vng exit $rc after $((now - boot)) s; see $work/console.log)"
exit 1
