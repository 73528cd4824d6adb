#!/usr/bin/env bash
# Checks the deployment files without a cluster or an image registry:
#   - deploy/kubernetes/*.yaml against the Kubernetes schemas that kubernetes-validate bundles,
#     strictly (unknown fields fail), for 1.30 (the first with appArmorProfile) and the newest;
#   - every command line that runs udpguard (the DaemonSet's command+args, the Containerfile's
#     ENTRYPOINT+CMD, each UDPGUARD_OPTS in deploy/udpguard.default) through the binary's own
#     parser: the same arguments with --help appended must exit 0 (clap checks every argument
#     and value before it, then prints help and exits: nothing runs);
#   - other command lines (the init container's shell) with `sh -n`;
#   - the DaemonSet's capabilities are the unit's CapabilityBoundingSet, its metrics port the
#     one it probes and annotates, the Containerfile's tool versions those of scripts/setup.sh.
# UDPGUARD_BIN=<binary> uses that binary; otherwise the release build (built if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
started=$SECONDS

bin=${UDPGUARD_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet --release --locked -p udpguard --bin udpguard
  bin=target/release/udpguard
fi
python3 -c 'import kubernetes_validate' 2>/dev/null \
  || { echo "kubernetes-validate is missing: run scripts/setup.sh" >&2; exit 1; }

status=0
UDPGUARD_BIN=$bin python3 - <<'EOF' || status=$?
import json, os, re, shlex, subprocess, sys, glob
import yaml

bin_ = os.environ["UDPGUARD_BIN"]
passed = failed = 0

def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"[test-manifests] ok: {what}", file=sys.stderr)
    else:
        failed += 1
        print(f"[test-manifests] FAILED: {what}" + (f"\n    {detail}" if detail else ""), file=sys.stderr)

def parses(args):
    """The binary's parser on args + --help: (accepted, stderr)."""
    r = subprocess.run([bin_, *args, "--help"], capture_output=True, text=True)
    return r.returncode == 0, r.stderr.strip()

manifests = sorted(glob.glob("deploy/kubernetes/*.yaml"))
check("there are manifests", bool(manifests))
for version in ["1.30.0", None]:
    for path in manifests:
        cmd = ["kubernetes-validate", "--strict", "--quiet"] + (["-k", version] if version else []) + [path]
        r = subprocess.run(cmd, capture_output=True, text=True)
        check(f"{path} is valid Kubernetes {version or 'latest bundled'} (strict)",
              r.returncode == 0, (r.stdout + r.stderr).strip())

# Kubernetes expands $(VAR) in command/args from the container's env: a sample value for each.
samples = {"status.hostIP": "192.0.2.10"}
def expand(arg, env):
    def value(m):
        e = env.get(m.group(1))
        if e is None:
            return m.group(0)
        if "value" in e:
            return e["value"]
        return samples.get(e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"), m.group(0))
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, arg)

unit = open("deploy/udpguard.service").read()
m = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M)
unit_caps = sorted(c.removeprefix("CAP_") for c in m.group(1).split()) if m else []

for path in manifests:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "DaemonSet":
            continue
        pod = doc["spec"]["template"]
        spec = pod["spec"]
        name = doc["metadata"]["name"]
        check(f"{name}: hostPID and hostNetwork", spec.get("hostPID") is True and spec.get("hostNetwork") is True)
        for c in spec.get("initContainers", []) + spec["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            line = [expand(a, env) for a in c.get("command", []) + c.get("args", [])]
            where = f"{name}/{c['name']}"
            if line and line[0] == "/usr/bin/udpguard":
                ok, err = parses(line[1:])
                check(f"{where}: the binary accepts `{shlex.join(line)}`", ok, err)
                unexpanded = [a for a in line if "$(" in a]
                check(f"{where}: every $(VAR) in its command line is set", not unexpanded, str(unexpanded))
                if "--metrics-addr" in line:
                    addr = line[line.index("--metrics-addr") + 1]
                    port = int(addr.rsplit(":", 1)[1])
                    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                    probes = [c[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe") if p in c]
                    check(f"{where}: it serves on the port it declares ({port})", port in ports.values())
                    check(f"{where}: liveness and readiness probe /healthz on that port",
                          "livenessProbe" in c and "readinessProbe" in c and
                          all(p["path"] == "/healthz" and ports.get(p["port"], p["port"]) == port for p in probes))
                    ann = pod["metadata"].get("annotations", {})
                    check(f"{where}: the scrape annotations name that port and /metrics",
                          ann.get("prometheus.io/port") == str(port) and ann.get("prometheus.io/path") == "/metrics")
                sc = c.get("securityContext", {})
                caps = sc.get("capabilities", {})
                check(f"{where}: not privileged, no privilege escalation",
                      sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False)
                check(f"{where}: drops ALL capabilities and adds the unit's ({' '.join(unit_caps)})",
                      caps.get("drop") == ["ALL"] and sorted(caps.get("add", [])) == unit_caps,
                      f"adds {sorted(caps.get('add', []))}")
            elif line[:2] == ["/bin/sh", "-ec"] and len(line) == 3:
                r = subprocess.run(["sh", "-n", "-c", line[2]], capture_output=True, text=True)
                check(f"{where}: its shell command is valid sh", r.returncode == 0, r.stderr)
            else:
                check(f"{where}: a command line this test knows how to check", False, shlex.join(line))

# The Containerfile: the image's default command line, and the versions setup.sh pins.
cf = open("deploy/container/Containerfile").read()
def exec_form(word):
    m = re.findall(rf"^{word}\s+(\[.*\])\s*$", cf, re.M)
    return json.loads(m[-1]) if m else None
entry, cmd = exec_form("ENTRYPOINT"), exec_form("CMD")
check("Containerfile: ENTRYPOINT is /usr/bin/udpguard (exec form)", entry == ["/usr/bin/udpguard"], str(entry))
check("Containerfile: the binary is copied to /usr/bin/udpguard",
      re.search(r"^COPY --from=\S+ \S+/udpguard /usr/bin/udpguard$", cf, re.M) is not None)
if entry and cmd is not None:
    ok, err = parses(entry[1:] + cmd)
    check(f"Containerfile: the binary accepts `{shlex.join(entry + cmd)}`", ok, err)
setup = open("scripts/setup.sh").read()
for var in ("BPF_LINKER_VERSION", "LLVM_MAJOR"):
    want = re.search(rf"^{var}=(\S+)$", setup, re.M)
    have = re.search(rf"^ARG {var}=(\S+)$", cf, re.M)
    check(f"Containerfile: {var} is setup.sh's ({want and want.group(1)})",
          bool(want and have and want.group(1) == have.group(1)), f"Containerfile has {have and have.group(1)}")

# /etc/default/udpguard: the option lines, set and commented out.
for line in open("deploy/udpguard.default"):
    m = re.match(r'^#?UDPGUARD_OPTS="(.*)"$', line.strip())
    if m:
        ok, err = parses(["run", *shlex.split(m.group(1))])
        check(f"udpguard.default: the binary accepts `run {m.group(1)}`", ok, err)

print(f"test-manifests: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
echo "[test-manifests] took $((SECONDS - started)) s" >&2
exit $status
