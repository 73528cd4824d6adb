#!/usr/bin/env bash
# The kernel matrix: builds the test binaries here, boots each Debian kernel under QEMU software
# emulation with virtme-ng and runs them inside, one test at a time. Run as root.
#
#   scripts/test-kernels.sh [KERNEL[:SELECTION] ...]      default: 6.1 6.12 5.10 host
#
# KERNEL: 6.1, 6.12, 5.10 (fetched by scripts/kernels.sh) or host (not booted: scripts/test.sh
# already runs the whole suite on this kernel; its closing line is shown from $UDPGUARD_HOST_RESULT,
# which .ci/run sets). SELECTION: all (every test binary), smoke (boot + `udpguard attach` of the
# seed demo), or a comma list of test binary names (guard,state,...). Defaults: 6.1 and 6.12 run
# all; 5.10 runs `compat` (the degraded mode's tests) when that test binary exists, else smoke.
# Environment:
#   UDPGUARD_TEST_FILTER   libtest name filters for every binary (e.g. "attach scan_")
#   UDPGUARD_TEST_TIMEOUT  seconds per test inside a guest (default 300: emulation is ~10x slower)
#   UDPGUARD_GUEST_TIMEOUT seconds per guest, boot to power-off (default 3600)
#   UDPGUARD_MATRIX_OUT    results directory (default target/kernel-matrix)
# One closing line per kernel ("kernel 6.1.0-57-amd64: N passed, M failed (T s)"); the exit
# status is non-zero when any kernel failed a test or its guest did not finish.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="$HOME/.cargo/bin:$PATH"
say() { printf '[matrix] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "run me as root: the guests load BPF and scripts/kernels.sh writes /var/cache"
  exit 1
fi
for tool in vng qemu-system-x86_64 jq; do
  command -v "$tool" >/dev/null || { say "$tool is missing: run scripts/setup.sh"; exit 1; }
done

kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(6.1 6.12 5.10 host)
timeout_test=${UDPGUARD_TEST_TIMEOUT:-300}
timeout_guest=${UDPGUARD_GUEST_TIMEOUT:-3600}
outroot=$(realpath -m "${UDPGUARD_MATRIX_OUT:-target/kernel-matrix}")
mkdir -p "$outroot"

# The python3 that has prometheus-client, resolved through any pyenv shim to the real binary.
py_dir=
for py in python3 /usr/bin/python3; do
  real=$("$py" -c 'import prometheus_client, os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null) || continue
  py_dir=$(dirname "$real")
  break
done
[ -n "$py_dir" ] || { say "no python3 with prometheus-client: run scripts/setup.sh"; exit 1; }

say "building the test binaries"
build_json=$outroot/build.json
if ! cargo test --workspace --exclude udpguard-ebpf --no-run --message-format=json > "$build_json" 2> "$outroot/build.log"; then
  tail -n 40 "$outroot/build.log" >&2
  say "the build failed (whole log: $outroot/build.log)"
  exit 1
fi
# "name path package_dir" for each test binary: integration tests by their name, unit tests as
# <target>-<kind> (udpguard-lib, udpguard-bin, udpguard_common-lib, ...).
jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
       | (if .target.kind == ["test"] then .target.name
          else .target.name + "-" + .target.kind[0] end)
         + " " + .executable + " " + (.manifest_path | sub("/Cargo.toml$"; ""))' \
  "$build_json" | sort -u > "$outroot/all-tests"
udpguard_bin=$(jq -r 'select(.reason == "compiler-artifact" and (.profile.test | not)
                       and .target.name == "udpguard" and .target.kind == ["bin"]) | .executable' "$build_json" | tail -n1)
[ -x "$udpguard_bin" ] || { say "the build did not produce the udpguard binary"; exit 1; }
say "$(wc -l < "$outroot/all-tests") test binaries"

status=0
lines=()
for spec in "${kernels[@]}"; do
  k=${spec%%:*}
  sel=${spec#*:}
  [ "$sel" != "$spec" ] || sel=
  if [ "$k" = host ]; then
    lines+=("kernel $(uname -r) (host): ${UDPGUARD_HOST_RESULT:-not run here (scripts/test.sh runs the whole suite on the host)}")
    case ${UDPGUARD_HOST_RESULT:-} in *" 0 failed"* | "") ;; *) status=1 ;; esac
    continue
  fi
  if [ -z "$sel" ]; then
    case $k in
      5.10) if grep -q '^compat ' "$outroot/all-tests"; then sel=compat; else sel=smoke; fi ;;
      *) sel=all ;;
    esac
  fi
  read -r _ vmlinuz moddir < <(bash scripts/kernels.sh "$k")
  release=${vmlinuz##*/vmlinuz-}
  out=$outroot/$release
  rm -rf "$out"
  mkdir -p "$out"
  case $sel in
    all) cp "$outroot/all-tests" "$out/tests" ;;
    smoke) : > "$out/tests" ;;
    *) tr ',' '\n' <<< "$sel" | while read -r b; do
         grep "^$b " "$outroot/all-tests" || { say "no test binary named '$b' (have: $(cut -d' ' -f1 "$outroot/all-tests" | tr '\n' ' '))"; exit 1; }
       done > "$out/tests" ;;
  esac
  {
    printf 'PY_DIR=%q\nUDPGUARD=%q\nPKG_DIR=%q\nTIMEOUT=%q\nFILTER=%q\n' \
      "$py_dir" "$udpguard_bin" "$root/udpguard" "$timeout_test" "${UDPGUARD_TEST_FILTER:-}"
  } > "$out/env"
  # A copy: bash reads a script as it runs it, and an edit of the checkout would reach a guest
  # in the middle of its run.
  cp scripts/test-kernels-guest.sh "$out/guest.sh"
  say "booting $release ($sel); console in $out/console.log"
  start=$(date +%s)
  rc=0
  timeout --kill-after=30 "$timeout_guest" vng --force-9p --disable-kvm --run "$vmlinuz" --memory 4G --cpus 2 \
    --rodir="$moddir" --rwdir="$out" --exec "bash $out/guest.sh $out" > "$out/console.log" 2>&1 < /dev/null || rc=$?
  secs=$(($(date +%s) - start))
  if [ -s "$out/summary" ]; then
    read -r p f < "$out/summary"
    extra=
    [ "$sel" = all ] || extra=" [$sel]"
    lines+=("kernel $release: $p passed, $f failed (${secs} s)$extra")
    if [ "$f" -ne 0 ] || [ "$p" -eq 0 ]; then
      status=1
      grep -v '^PASS\|^IGNORED' "$out/results" | sed 's/^/  /' >&2 || true
      say "logs of what did not pass: $out/logs/"
    fi
  else
    lines+=("kernel $release: guest did not finish (exit $rc after ${secs} s; see $out/console.log)")
    status=1
  fi
  say "${lines[-1]}"
done
printf '%s\n' "${lines[@]}"
exit "$status"
