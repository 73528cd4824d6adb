#!/usr/bin/env bash
# Installs everything udpguard needs to build and test, idempotently.
# Safe to run again: every step checks first and does nothing when already done.
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22

say() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "run me as root: I install Debian packages (apt-get) and udpguard needs root to load BPF"
  exit 1
fi

# Debian packages: LLVM for bpf-linker, and the tools the tests drive.
pkgs=(llvm-${LLVM_MAJOR}-dev libzstd-dev zlib1g-dev bpftool socat iproute2 procps util-linux)
# The workload benches (benches/resolver.rs): Unbound and dnsperf.
pkgs+=(unbound dnsperf)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# promtool (Debian's prometheus package) checks the metrics and the alert rules
# (scripts/test-prometheus.sh). Only the tool is wanted: no recommends, and the server the
# package ships is not started here.
if ! command -v promtool >/dev/null; then
  say "installing promtool (Debian's prometheus package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# Rust: stable builds user space, nightly + rust-src builds the eBPF object.
export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

# bpf-linker, built against Debian's LLVM.
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  say "building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_MAJOR (about 2 minutes)"
  LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR} cargo install bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features llvm-${LLVM_MAJOR} --locked --force
fi

# bpffs: udpguard mounts it itself when missing, but tests and bpftool like it present.
if ! awk '$3=="bpf"{f=1} END{exit !f}' /proc/self/mounts; then
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# The Python Prometheus client: the metrics tests parse udpguard's exposition with its parsers.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  say "installing the Python Prometheus client (prometheus-client)"
  if ! python3 -m pip install --quiet prometheus-client 2>/dev/null; then
    # Debian's own python3 refuses pip installs (PEP 668): use its package.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-prometheus-client >/dev/null
  fi
fi

# Packaging (scripts/package.sh, scripts/test-package.sh): cargo-deb builds the .deb; mmdebstrap
# makes the throwaway Debian root the package is installed into; man-db renders its pages.
if ! command -v cargo-deb >/dev/null; then
  say "installing cargo-deb (about 3 minutes)"
  cargo install cargo-deb --locked
fi
pkg_tools=(mmdebstrap man-db)
missing=()
for p in "${pkg_tools[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Kubernetes manifests (scripts/test-manifests.sh): validated against the schemas that the
# kubernetes-validate package bundles (no cluster, no network).
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  say "installing kubernetes-validate"
  # Debian's own python3 refuses pip installs (PEP 668) and has no package of it.
  python3 -m pip install --quiet kubernetes-validate 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi

# The kernel matrix and the systemd guest (scripts/test-kernels.sh, scripts/test-systemd.sh):
# QEMU (software emulation: this machine's KVM is PVM), udev (the guest's virtio console), kmod
# (depmod for the kernels' modules), busybox-static (virtme-ng's initramfs, which loads the
# modules of a kernel that has them: udp_diag), mmdebstrap (the bookworm rootfs), jq, and
# virtme-ng from PyPI.
vm_pkgs=(qemu-system-x86 udev kmod busybox-static mmdebstrap jq)
vm_missing=()
for p in "${vm_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || vm_missing+=("$p")
done
if [ ${#vm_missing[@]} -gt 0 ]; then
  say "installing Debian packages for the VM tests: ${vm_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${vm_missing[@]}" >/dev/null
fi
if ! command -v vng >/dev/null; then
  say "installing virtme-ng (vng) from PyPI"
  python3 -m pip install --quiet virtme-ng
fi

say "ready"
