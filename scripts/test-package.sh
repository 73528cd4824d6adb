#!/usr/bin/env bash
# Tests the Debian package without touching this machine's /usr, /etc or systemd:
#   1. builds it (scripts/package.sh), or takes UDPGUARD_DEB=<path to a .deb>;
#   2. checks its contents and control files (dpkg-deb -c / -I / -e): the binary, the unit, a man
#      page per verb, the bash/zsh/fish completions, /etc/default/udpguard as a conffile, the
#      maintainer scripts that enable the unit, stop it and detach what is left;
#   3. renders every man page with `man -l` (warnings fail);
#   4. installs it with dpkg into a throwaway Debian 12 root (mmdebstrap, cached in
#      /var/cache/udpguard-test-package), runs `udpguard --version` there, reads a page with man,
#      loads the bash completion, runs lintian (reported, never fatal), then purges it and
#      checks that nothing of it is left (files, conffile, the unit's enablement).
# The real install-and-run under systemd is scripts/test-systemd.sh (UDPGUARD_DEB=<path>).
# Run as root (chroot, mount). UDPGUARD_SKIP_SETUP=1 skips scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[test-package] %s\n' "$*" >&2; }
passed=0
failed=0
check() { # check DESCRIPTION COMMAND...: one line per check, counted
  if "${@:2}"; then
    passed=$((passed + 1)); say "ok: $1"
  else
    failed=$((failed + 1)); say "FAILED: $1"
  fi
}
started=$SECONDS

if [ "$(id -u)" -ne 0 ]; then
  say "run me as root: the package is installed into a chroot"
  exit 1
fi

deb=${UDPGUARD_DEB:-}
if [ -z "$deb" ]; then
  deb=$(bash scripts/package.sh | tail -n 1)
fi
[ -f "$deb" ] || { say "no package at '$deb': run scripts/package.sh or set UDPGUARD_DEB"; exit 1; }
deb=$(realpath "$deb")
say "package: $deb ($(stat -c %s "$deb") bytes)"

work=$(mktemp -d /tmp/udpguard-test-package.XXXXXX)
root="$work/root"
cleanup() {
  # Unmount what we mounted in the chroot (deepest first), then remove it all.
  if [ -d "$root" ]; then
    awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts \
      | sort -r | while read -r m; do umount -l "$m" || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# 2. Contents and control files.
dpkg-deb -c "$deb" | awk '{ print $NF }' | sed 's|^\./|/|' >"$work/contents"
dpkg-deb -x "$deb" "$work/x"
dpkg-deb -e "$deb" "$work/control"
has() { grep -qxF "$1" "$work/contents"; }
check "binary /usr/bin/udpguard, mode 755" \
  sh -c "dpkg-deb -c '$deb' | grep -qE '^-rwxr-xr-x .* \./usr/bin/udpguard$'"
check "systemd unit /usr/lib/systemd/system/udpguard.service" has /usr/lib/systemd/system/udpguard.service
check "the unit runs the packaged binary" grep -q '^ExecStart=/usr/bin/udpguard ' "$work/x/usr/lib/systemd/system/udpguard.service"
check "defaults file /etc/default/udpguard" has /etc/default/udpguard
check "/etc/default/udpguard is a conffile" grep -qxF /etc/default/udpguard "$work/control/conffiles"
check "the unit reads /etc/default/udpguard" grep -q '^EnvironmentFile=-/etc/default/udpguard' "$work/x/usr/lib/systemd/system/udpguard.service"
# Every verb of the packaged binary's own --help gets a page.
verbs=$("$work/x/usr/bin/udpguard" --help | awk '/^Commands:/ { on = 1; next } /^$/ { on = 0 } on && $1 != "help" { print $1 }')
check "the binary lists its verbs" test -n "$verbs"
check "man page udpguard.1.gz" has /usr/share/man/man1/udpguard.1.gz
for verb in $verbs; do
  check "man page udpguard-$verb.1.gz" has "/usr/share/man/man1/udpguard-$verb.1.gz"
done
check "bash completion" has /usr/share/bash-completion/completions/udpguard
check "zsh completion" has /usr/share/zsh/vendor-completions/_udpguard
check "fish completion" has /usr/share/fish/vendor_completions.d/udpguard.fish
check "postinst enables the unit (deb-systemd-helper)" grep -q 'deb-systemd-helper enable udpguard.service' "$work/control/postinst"
check "postinst starts the unit when systemd runs" grep -q 'deb-systemd-invoke $_dh_action udpguard.service' "$work/control/postinst"
check "prerm stops the unit on remove" grep -q 'deb-systemd-invoke stop udpguard.service' "$work/control/prerm"
check "prerm detaches what is left on remove" grep -q '/usr/bin/udpguard detach --all' "$work/control/prerm"
check "changelog.Debian.gz and copyright" sh -c "grep -qxF /usr/share/doc/udpguard/changelog.Debian.gz '$work/contents' && grep -qxF /usr/share/doc/udpguard/copyright '$work/contents'"
check "postrm purges the unit's state" grep -q 'deb-systemd-helper purge udpguard.service' "$work/control/postrm"
for script in postinst prerm postrm; do
  check "$script is valid sh" sh -n "$work/control/$script"
done

# 3. Every page renders, without groff warnings.
for page in "$work"/x/usr/share/man/man1/*.1.gz; do
  check "man -l $(basename "$page") renders cleanly" sh -c \
    "out=\$(MANWIDTH=80 man --warnings -l '$page' 2>&1 >/dev/null); [ -z \"\$out\" ] || { echo \"\$out\" >&2; false; }"
done

# 4. A throwaway Debian 12 root: made once (about 4 minutes), then unpacked from the cache.
cache=/var/cache/udpguard-test-package
tarball="$cache/bookworm-minbase-man-lintian.tar"
if [ ! -f "$tarball" ] || [ ! -s "$tarball" ]; then
  say "making the Debian 12 root for the install test (cached in $cache)"
  mkdir -p "$cache"
  # --format=tar: mmdebstrap picks the format from the name's extension, and "*.tmp" would
  # make a directory (which the mv below would then put where the tarball belongs).
  rm -rf "$tarball.tmp" "$tarball"
  mmdebstrap --quiet --format=tar --variant=minbase --include=man-db,lintian bookworm \
    "$tarball.tmp" http://deb.debian.org/debian
  mv "$tarball.tmp" "$tarball"
fi
mkdir "$root"
tar -xf "$tarball" -C "$root"
# /proc only: udpguard reads /proc/self/status for its privileges. Never /sys: the chroot's
# empty /sys/fs/bpf is what keeps prerm's `detach --all` away from this machine's real pins.
check "the chroot has no /sys/fs/bpf/udpguard" test ! -e "$root/sys/fs/bpf/udpguard"
mount -t proc proc "$root/proc"
cp "$deb" "$root/tmp/udpguard.deb"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

check "dpkg -i installs it" sh -c "chroot '$root' env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg -i /tmp/udpguard.deb >'$work/install.log' 2>&1 || { cat '$work/install.log' >&2; false; }"
in_root udpguard --version >"$work/version" 2>&1 || true
cat "$work/version" >&2
check "udpguard --version names a commit" grep -qE '^commit: ([0-9a-f]{40}|unknown)$' "$work/version"
check "udpguard --version names the eBPF object's sha256" grep -qE '^eBPF object sha256: [0-9a-f]{64}$' "$work/version"
check "the unit is enabled (multi-user.target.wants)" test -L "$root/etc/systemd/system/multi-user.target.wants/udpguard.service"
check "man udpguard-run finds the installed page" sh -c "chroot '$root' env -i PATH=/usr/bin:/bin MANWIDTH=80 man -P cat udpguard-run 2>/dev/null | grep -q -- '--metrics-addr'"
check "the bash completion loads and completes udpguard" sh -c "chroot '$root' bash -c 'source /usr/share/bash-completion/completions/udpguard && complete -p udpguard' >/dev/null"
check "udpguard run accepts the packaged UDPGUARD_OPTS" sh -c ". '$root/etc/default/udpguard' && chroot '$root' /usr/bin/udpguard run \$UDPGUARD_OPTS --help >/dev/null"

say "lintian (reported, not fatal):"
lintian_rc=0
in_root lintian --tag-display-limit 0 /tmp/udpguard.deb >"$work/lintian" 2>&1 || lintian_rc=$?
sed 's/^/    /' "$work/lintian" >&2
say "lintian: exit $lintian_rc, $(grep -c '^E:' "$work/lintian" || true) errors, $(grep -c '^W:' "$work/lintian" || true) warnings"

in_root dpkg --purge udpguard >"$work/purge.log" 2>&1 || true
cat "$work/purge.log" >&2
check "prerm ran udpguard detach --all (nothing was attached here)" grep -q 'nothing was attached' "$work/purge.log"
check "purge: dpkg knows no udpguard" sh -c "! chroot '$root' dpkg-query -W -f='\${Status}' udpguard 2>/dev/null | grep -q installed"
leftover=""
while read -r path; do
  [ -d "$root$path" ] && continue
  [ -e "$root$path" ] || [ -L "$root$path" ] && leftover+=" $path"
done <"$work/contents"
check "purge: none of the package's files is left${leftover:+ (left:$leftover)}" test -z "$leftover"
check "purge: the unit's enablement is gone" test ! -e "$root/etc/systemd/system/multi-user.target.wants/udpguard.service" -a ! -L "$root/etc/systemd/system/multi-user.target.wants/udpguard.service"
check "purge: no mask left" test ! -L "$root/etc/systemd/system/udpguard.service"

say "took $((SECONDS - started)) s"
echo "test-package: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
