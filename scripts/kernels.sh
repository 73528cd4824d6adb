#!/usr/bin/env bash
# Fetches and unpacks the Debian kernels the matrix boots (idempotent, cached).
#
#   scripts/kernels.sh 6.1|6.12|5.10 ...   prints "<name> <path to vmlinuz> <modules dir>" per kernel
#
# Cache: $UDPGUARD_KERNEL_CACHE (default /var/cache/udpguard-kernels), one directory per kernel
# release (e.g. 6.1.0-57-amd64/) holding the unpacked .deb: boot/vmlinuz-<release> and
# lib/modules/<release>/ with the modules.dep that depmod makes here (the .deb ships none: its
# postinst makes it). A kernel already unpacked there is used as is, without asking apt.
# A guest sees the modules only when they are shared with it: vng mounts a tmpfs over
# /var/cache, so pass `--rodir=<modules dir>` (its /lib/modules/<release> links there), and
# vng then needs busybox-static for the initramfs that loads virtio's modules.
#   6.1  Debian 12's kernel, default apt sources (linux-image-6.1.0-N-amd64)
#   6.12 Debian 12's newer kernel, default apt sources (bookworm-security's linux-image-6.12.N+deb12-amd64)
#   5.10 Debian 11's kernel, from a bullseye sources list of our own (apt state kept in the cache,
#        the host's apt lists untouched)
set -euo pipefail

cache=${UDPGUARD_KERNEL_CACHE:-/var/cache/udpguard-kernels}
say() { printf '[kernels] %s\n' "$*" >&2; }

if [ "$#" -eq 0 ]; then
  echo "usage: $0 6.1|6.12|5.10 ..." >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  say "run me as root: I write $cache and call apt-get"
  exit 1
fi
mkdir -p "$cache"

# apt options for the bullseye source: its own sources list, lists and package cache.
bullseye_apt() {
  local d=$cache/apt-bullseye
  mkdir -p "$d/lists/partial" "$d/archives/partial" "$d/sources.list.d"
  cat > "$d/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
EOF
  printf '%s\n' -o "Dir::Etc::SourceList=$d/sources.list" -o "Dir::Etc::SourceParts=$d/sources.list.d" \
    -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d" -o "Dir::Cache::archives=$d/archives" \
    -o "Dir::State::status=/dev/null" -o "APT::Get::List-Cleanup=false"
}

# The unpacked kernel already in the cache whose release matches $1 (a grep -E pattern).
cached() {
  local dir
  for dir in $(ls -d "$cache"/*/ 2>/dev/null | sort -rV); do
    dir=${dir%/}
    [[ $(basename "$dir") =~ ^$1$ ]] || continue
    ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1 && { echo "$dir"; return 0; }
  done
  return 1
}

# Downloads the newest package matching $2 (apt-cache regex) and unpacks it; $1: extra apt options.
fetch() {
  local -a opts=()
  [ -n "$1" ] && mapfile -t opts <<< "$1"
  local pattern=$2 pkg tmp release
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  for pkg in $(apt-cache "${opts[@]}" search --names-only "$pattern" | awk '{print $1}' | sort -rV); do
    if (cd "$tmp" && apt-get "${opts[@]}" -o APT::Sandbox::User=root download -q "$pkg" >&2); then
      release=${pkg#linux-image-}
      release=${release%-unsigned}
      say "unpacking $pkg into $cache/$release"
      rm -rf "$cache/$release.tmp"
      dpkg -x "$tmp"/*.deb "$cache/$release.tmp"
      mv "$cache/$release.tmp" "$cache/$release"
      echo "$cache/$release"
      return 0
    fi
    say "$pkg: not downloadable, trying an older one"
  done
  say "no package matching $pattern could be downloaded (is apt reachable? try: apt-get update)"
  return 1
}

for want in "$@"; do
  case $want in
    6.1) re='6\.1\.0-[0-9]+-amd64'; opts=''; pat='^linux-image-6\.1\.0-[0-9]+-amd64$' ;;
    6.12) re='6\.12\.[0-9]+\+deb12-amd64'; opts=''; pat='^linux-image-6\.12\.[0-9]+\+deb12-amd64(-unsigned)?$' ;;
    5.10) re='5\.10\.0-[0-9]+-amd64'; opts=$(bullseye_apt); pat='^linux-image-5\.10\.0-[0-9]+-amd64$' ;;
    *) say "unknown kernel '$want': I know 6.1, 6.12 and 5.10"; exit 2 ;;
  esac
  if ! dir=$(cached "$re"); then
    if [ "$want" = 5.10 ]; then
      mapfile -t o <<< "$opts"
      say "updating the bullseye package lists (kept in $cache/apt-bullseye)"
      apt-get "${o[@]}" update -qq >&2
    fi
    dir=$(fetch "$opts" "$pat")
  fi
  vmlinuz=$(ls "$dir"/boot/vmlinuz-* | head -n1)
  release=${vmlinuz##*/vmlinuz-}
  moddir=$dir/lib/modules/$release
  # Without modules.dep modprobe finds nothing in the guest (udp_diag: holders, scan, the fast
  # path). vng's own depmod writes into a temporary copy.
  if [ ! -s "$moddir/modules.dep" ]; then
    say "depmod for $release"
    depmod -a -b "$dir" "$release"
  fi
  echo "$want $vmlinuz $moddir"
done
