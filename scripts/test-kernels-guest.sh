#!/usr/bin/env bash
# Runs inside a virtme-ng guest (started by scripts/test-kernels.sh): the test binaries, one test
# at a time under a timeout, or the boot + attach smoke. Not meant to be run by hand on a host.
#
#   test-kernels-guest.sh OUT
#
# OUT (shared read-write with the host) holds:
#   in:  tests        lines "BINARY_NAME PATH PACKAGE_DIR" (the test binaries to run, each with
#                     cargo's cwd for it; empty = the smoke only)
#        env          PY_DIR (directory of the python3 that has prometheus-client), UDPGUARD (the
#                     CLI), PKG_DIR (the udpguard package), TIMEOUT (s per test), FILTER
#   out: results      one line per test: PASS|FAIL|TIMEOUT|IGNORED <binary>::<test> <seconds>
#                     (the seconds of its whole binary, or of its run alone)
#        logs/        output of every binary (and lone test) that did not pass
#        smoke        what the smoke saw (when run)
#        summary      "<passed> <failed>" (written last: its absence means the guest died)
set -uo pipefail
out=$1
# shellcheck source=/dev/null
. "$out/env"
: > "$out/results"
mkdir -p "$out/logs"

# The guest's kernel interfaces the tests expect, as on a normal host.
awk '$3=="bpf"{f=1} END{exit !f}' /proc/self/mounts || mount -t bpf bpf /sys/fs/bpf
ip link set lo up
# sock_diag for UDP (holders, scan) is a module on Debian's kernels. A real host autoloads it
# on first use; in this guest autoloading did not happen (lsmod showed no udp_diag after
# `ss -ua`), so load it as the host would have.
modprobe -q -a inet_diag udp_diag 2>/dev/null || true
# Debian's own python3 lacks prometheus-client; a pyenv shim is too slow under emulation.
export PATH="$PY_DIR:$PATH"
{
  echo "kernel: $(uname -r)"
  echo "modules: $(lsmod | awk '/diag/ {printf "%s ", $1}')"
  echo "python3: $(command -v python3) ($(python3 -c 'import prometheus_client, sys; print(sys.version.split()[0])' 2>&1))"
} > "$out/guest-info"

passed=0
failed=0
record() { # STATUS NAME SECONDS
  echo "$1 $2 $3" >> "$out/results"
  case $1 in PASS) passed=$((passed + 1)) ;; FAIL | TIMEOUT) failed=$((failed + 1)) ;; esac
}

# The boot + attach smoke: what a user sees running `udpguard attach` on this kernel.
smoke() {
  local cg2 cg log=$out/smoke start
  cg2=$(awk '$3=="cgroup2"{print $2; exit}' /proc/self/mounts)
  cg=$cg2/udpguard-smoke
  mkdir -p "$cg"
  start=$(date +%s)
  {
    echo "== udpguard attach --cgroup $cg"
    "$UDPGUARD" attach --cgroup "$cg" 2>&1
    echo "exit status: $?"
  } > "$log"
  if grep -q '^exit status: 0$' "$log"; then
    ip netns add smoke
    ip -n smoke link set lo up
    {
      echo "== the seed's two sockets in the guarded cgroup"
      sh -c "echo \$\$ > '$cg/cgroup.procs'; exec ip netns exec smoke python3 '$PKG_DIR/../scripts/seed_demo.py'" 2>&1
      echo "== udpguard status"
      "$UDPGUARD" status 2>&1
      echo "== udpguard detach --cgroup $cg"
      "$UDPGUARD" detach --cgroup "$cg" 2>&1
      echo "exit status: $?"
    } >> "$log"
    ip netns del smoke
  fi
  rmdir "$cg" 2>/dev/null
  if grep -q '^exit status: 0$' "$log" && grep -q 'b.connect.*-> E' "$log"; then
    record PASS smoke::attach_refuses_the_seed $(($(date +%s) - start))
  else
    record FAIL smoke::attach_refuses_the_seed $(($(date +%s) - start))
    cp "$log" "$out/logs/smoke::attach_refuses_the_seed"
  fi
}

if [ ! -s "$out/tests" ]; then
  smoke
fi

# Each test binary runs whole, two tests at a time (the guest's two vCPUs; each test has its own
# cgroup, namespace and pin root, as on the host), under a timeout of TIMEOUT seconds per test
# it holds: one process per binary, not per test (starting a test binary under emulation costs
# seconds). libtest's "test NAME ... ok|FAILED|ignored" lines give the result of
# each; a test the binary never reported on (it hung, or the binary died) is run again alone.
# The observability tests wait UDPGUARD_TEST_PATIENCE seconds for the agent (emulation is ~10x
# slower than the host).
export UDPGUARD_TEST_PATIENCE=${UDPGUARD_TEST_PATIENCE:-300}
# Tests that bound how soon something happens scale the bound by this (emulation is ~10x slower).
export UDPGUARD_TEST_SLOWDOWN=${UDPGUARD_TEST_SLOWDOWN:-10}
run_alone() { # NAME PATH TEST
  local log=$out/logs/$1::$3 start rc secs
  start=$(date +%s)
  timeout --kill-after=10 "$TIMEOUT" "$2" --exact "$3" --test-threads=1 > "$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record TIMEOUT "$1::$3" "$secs"
  elif [ "$rc" -ne 0 ]; then
    record FAIL "$1::$3" "$secs"
  elif grep -q '^test result: ok\. 1 passed' "$log"; then
    record PASS "$1::$3" "$secs"
    rm -f "$log"
  else
    record IGNORED "$1::$3" "$secs"
    rm -f "$log"
  fi
}
while read -r name path dir; do
  [ -n "$name" ] || continue
  cd "$dir"
  export CARGO_MANIFEST_DIR=$dir
  # shellcheck disable=SC2086 # FILTER is a list of name filters for the harness
  tests=$("$path" --list --format=terse ${FILTER:-} 2>/dev/null | sed -n 's/: test$//p')
  count=$(printf '%s\n' "$tests" | grep -c . || true)
  [ "$count" -gt 0 ] || continue
  log=$out/logs/$name
  start=$(date +%s)
  # shellcheck disable=SC2086
  timeout --kill-after=10 $((TIMEOUT * count)) "$path" --test-threads=2 ${FILTER:-} > "$log" 2>&1
  secs=$(($(date +%s) - start))
  for t in $tests; do
    line=$(grep -m1 -E "^test $t \.\.\. " "$log" || true)
    case $line in
      *" ... ok") record PASS "$name::$t" "$secs" ;;
      *" ... ignored"*) record IGNORED "$name::$t" "$secs" ;;
      *" ... FAILED") record FAIL "$name::$t" "$secs" ;;
      *) run_alone "$name" "$path" "$t" ;;
    esac
  done
  # Keep the whole log only when something did not pass.
  grep -q -E '^(FAIL|TIMEOUT) '"$name"'::' "$out/results" || rm -f "$log"
done < "$out/tests"

echo "$passed $failed" > "$out/summary"
