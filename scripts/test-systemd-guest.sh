#!/usr/bin/env bash
# Runs inside the systemd guest that scripts/test-systemd.sh boots, as the oneshot unit
# udpguard-check.service: checks the real udpguard.service under systemd as PID 1, writes
# /udpguard-check.result and powers the guest off. Not meant to be run by hand on a host.
#
# Result file: one line per check, "PASS|FAIL <check>: <detail>", then the
# `systemd-analyze security` score line ("SCORE ..."), then "RESULT pass" or "RESULT fail".
set -uo pipefail
result=/udpguard-check.result
: > "$result.tmp"
failed=0
pass() { echo "PASS $*" >> "$result.tmp"; }
fail() { echo "FAIL $*" >> "$result.tmp"; failed=1; }
finish() {
  {
    echo "== journal of udpguard.service"
    journalctl -b -u udpguard --no-pager -o short-monotonic 2>&1 | tail -n 80
  } > /udpguard-check.journal
  if [ "$failed" -eq 0 ]; then echo "RESULT pass" >> "$result.tmp"; else echo "RESULT fail" >> "$result.tmp"; fi
  mv "$result.tmp" "$result"
  sync
  systemctl poweroff --no-block
  exit 0
}
trap finish EXIT

cg2=$(awk '$3=="cgroup2"{print $2; exit}' /proc/self/mounts)
# The attachment at the cgroup root, from `udpguard status --json`: prints "<state> <mode>".
root_attachment() {
  udpguard status --json 2>/dev/null | python3 -c '
import json, sys
root = sys.argv[1]
doc = json.load(sys.stdin)
for a in doc.get("attachments", []):
    if a.get("cgroup") == root:
        print(a.get("state"), a.get("mode"), "healthy" if a.get("error") is None and a.get("matches_binary") else "unhealthy")
        break
else:
    print("none")
' "$cg2"
}
wait_active() { # SECONDS
  local i
  for ((i = 0; i < $1; i++)); do
    [ "$(systemctl is-active udpguard)" = active ] && return 0
    sleep 1
  done
  return 1
}
# Waits until the root is attached (Type=exec: active comes before the attach, which takes
# 15-25 s under emulation).
wait_attached() { # SECONDS
  local i
  for ((i = 0; i < $1; i++)); do
    [ "$(root_attachment)" = "attached enforce healthy" ] && return 0
    sleep 1
  done
  return 1
}
# Waits until something answers on /metrics.
wait_metrics() {
  local i
  for ((i = 0; i < 60; i++)); do
    curl -sf --max-time 5 http://127.0.0.1:10108/metrics > /tmp/metrics 2>/dev/null && return 0
    sleep 1
  done
  return 1
}

# 1. The service comes up by itself at boot.
if wait_active 120; then
  pass "active: udpguard.service is active (udp_diag: $(lsmod | grep -q '^udp_diag' && echo loaded || echo absent)) ($(systemctl show -p ExecMainPID --value udpguard) is its main pid)"
else
  fail "active: udpguard.service is $(systemctl is-active udpguard) after 120 s: $(systemctl status udpguard --no-pager 2>&1 | tail -n 5 | tr '\n' ' ')"
  exit 1
fi

# 2. Attached at the cgroup root.
wait_attached 120
a=$(root_attachment)
case $a in
  "attached enforce healthy") pass "attached: udpguard status shows the root $cg2 attached ($a)" ;;
  *) fail "attached: udpguard status for $cg2: $a; $(udpguard status 2>&1 | head -n 5 | tr '\n' ' ')" ;;
esac

# 3. The seed demo's duplicate connect is refused.
seed=$(python3 /usr/local/share/udpguard-check/seed_demo.py 2>&1)
if grep -q 'a.connect.*-> ok' <<< "$seed" && grep -q 'b.connect.*-> EPERM' <<< "$seed"; then
  pass "seed refused: $(grep 'b.connect' <<< "$seed" | sed 's/^ *//')"
else
  fail "seed refused: $(tr '\n' ' ' <<< "$seed")"
fi

# 4. /metrics is served on 127.0.0.1:10108, and counted the refusal.
if wait_metrics; then
  rejected=$(awk '/^udpguard_.*reject/ && !/^#/ {s += $NF} END {print s + 0}' /tmp/metrics)
  pass "metrics: $(grep -c '^udpguard_' /tmp/metrics) udpguard_ samples on 127.0.0.1:10108/metrics (rejections counted: $rejected)"
else
  fail "metrics: nothing on http://127.0.0.1:10108/metrics"
fi

# 5. SIGKILL the main pid: systemd restarts it and the new one adopts the attachment.
pid=$(systemctl show -p MainPID --value udpguard)
kill -KILL "$pid"
restarted=
for ((i = 0; i < 60; i++)); do
  sleep 1
  new=$(systemctl show -p MainPID --value udpguard)
  if [ "$new" != 0 ] && [ "$new" != "$pid" ] && [ "$(systemctl is-active udpguard)" = active ]; then
    restarted=$new
    break
  fi
done
sleep 3
if [ -n "$restarted" ] && journalctl -b -u udpguard _PID="$restarted" --no-pager 2>/dev/null | grep -q 'adopted'; then
  pass "sigkill: pid $pid killed, restarted as $restarted ($(systemctl show -p NRestarts --value udpguard) restart), which adopted the attachment"
else
  fail "sigkill: pid $pid killed; new pid '${restarted:-none}'; its log: $(journalctl -b -u udpguard --no-pager -n 5 2>&1 | tr '\n' ' ')"
fi
seed=$(python3 /usr/local/share/udpguard-check/seed_demo.py 2>&1)
grep -q 'b.connect.*-> EPERM' <<< "$seed" && pass "seed refused after the restart" || fail "seed after the restart: $(tr '\n' ' ' <<< "$seed")"

# 6. systemctl stop of an instance that adopted: the attachment stays (README, "Run it as a
#    service"), until `udpguard detach` removes it.
systemctl stop udpguard
a=$(root_attachment)
if [ "$(systemctl is-active udpguard)" != active ] && [[ $a == attached* ]]; then
  pass "stop after adopting: service $(systemctl is-active udpguard), attachment left in place ($a), as documented"
else
  fail "stop after adopting: service $(systemctl is-active udpguard), root attachment: $a (the docs say it stays)"
fi
udpguard detach --cgroup "$cg2" > /tmp/detach 2>&1 || true
a=$(root_attachment)
[ "$a" = none ] && pass "detach: udpguard detach removed it" || fail "detach: root attachment still $a: $(cat /tmp/detach)"

# 7. systemctl start with nothing attached, then stop: it attached, so it detaches; the pin
#    root and /run/udpguard (RuntimeDirectoryPreserve) stay, with nothing attached.
systemctl start udpguard
if wait_active 60 && wait_attached 120; then
  systemctl stop udpguard
  a=$(root_attachment)
  left=$(ls -A /sys/fs/bpf/udpguard 2>/dev/null | tr '\n' ' ')
  if [ "$a" = none ]; then
    pass "stop after attaching: detached; left in /sys/fs/bpf/udpguard: [${left% }], /run/udpguard $( [ -d /run/udpguard ] && echo kept || echo removed)"
  else
    fail "stop after attaching: root attachment still $a"
  fi
else
  fail "start again: $(systemctl is-active udpguard), root attachment $(root_attachment)"
fi

# The hardening, as systemd rates it (lower is better).
score=$(systemd-analyze security udpguard.service 2>/dev/null | grep -i 'overall exposure level')
echo "SCORE ${score:-systemd-analyze security printed no score}" >> "$result.tmp"
systemd-analyze security udpguard.service > /udpguard-check.security 2>&1 || true
