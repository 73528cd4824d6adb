#!/usr/bin/env bash
# Checks what udpguard gives Prometheus, with Prometheus' own promtool (Debian's prometheus
# package; scripts/setup.sh installs it):
#   1. the alert rules parse (`promtool check rules`) and pass their unit tests
#      (`promtool test rules`, deploy/prometheus/udpguard.rules.test.yml);
#   2. a live agent's /metrics, in the classic text format and in OpenMetrics (content
#      negotiation), and `udpguard metrics [--openmetrics]`, pass `promtool check metrics` /
#      Prometheus' OpenMetrics parser (udpguard/tests/prometheus.rs: it attaches the guard to a
#      throw-away cgroup, network namespace and pin root of its own, removed afterwards).
# Run as root (step 2 loads BPF). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v promtool >/dev/null; then
  echo "test-prometheus: promtool is missing: run scripts/setup.sh as root" >&2
  exit 1
fi
promtool --version | head -1
(
  cd deploy/prometheus
  promtool check rules udpguard.rules.yml
  promtool test rules udpguard.rules.test.yml
)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test -p udpguard --test prometheus -- --nocapture >"$log" 2>&1 || status=$?
# What each check said, then cargo's verdict.
grep -E '^(test |promtool|scan:)|test result|panicked' "$log" || true
if [ "$status" -ne 0 ]; then
  tail -n 60 "$log" >&2
  echo "test-prometheus: udpguard/tests/prometheus.rs failed" >&2
  exit "$status"
fi
echo "test-prometheus: all checks passed"
