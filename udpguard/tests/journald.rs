//! Under systemd the agent's logs reach the journal with their priorities (needs root: it
//! attaches the guard to a sandbox cgroup). No journald runs here, so the test stands one in:
//! in a private mount namespace (`unshare -m`, a tmpfs on /run that nobody else sees) a
//! datagram socket at /run/systemd/journal/socket receives what the agent sends, and the agent
//! runs with `JOURNAL_STREAM` naming its stderr, as systemd starts a unit.
mod common;

use std::process::Command;

use common::{Sandbox, UDPGUARD, require_root};

/// Stands in for journald and runs the agent (argv[1:]) until it said a warning and an info
/// line; prints every record received as one JSON object per line.
const JOURNAL_PY: &str = r#"
import json, os, signal, socket, struct, subprocess, sys, time
os.system("mount -t tmpfs tmpfs /run")
os.makedirs("/run/systemd/journal")
journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
journal.bind("/run/systemd/journal/socket")
journal.settimeout(0.5)
read_end, write_end = os.pipe()
st = os.fstat(write_end)
env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
agent = subprocess.Popen(sys.argv[1:], stderr=write_end, stdout=subprocess.DEVNULL, env=env)
os.close(write_end)

def parse(data):
    # The native protocol: KEY=value lines, or KEY\n<le64 length><value>\n for binary values.
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v.decode(errors="replace")
            i = nl + 1
        else:
            n = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            fields[line.decode()] = data[nl + 9:nl + 9 + n].decode(errors="replace")
            i = nl + 9 + n + 1
    return fields

records, deadline = [], time.time() + 30
while time.time() < deadline:
    try:
        record = parse(journal.recv(65536))
        if record:  # the client's empty probe datagram, when it connects, carries nothing
            records.append(record)
    except socket.timeout:
        pass
    priorities = {r.get("PRIORITY") for r in records}
    if "4" in priorities and "6" in priorities:
        break
agent.send_signal(signal.SIGTERM)
agent.wait(timeout=30)
stderr = os.read(read_end, 65536).decode(errors="replace")
for r in records:
    print(json.dumps(r))
print(json.dumps({"stderr": stderr}))
"#;

#[test]
fn under_systemd_the_agents_logs_reach_the_journal_with_their_priorities() {
    require_root();
    let sb = Sandbox::new("journald");
    sb.attach(&[]);
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "python3",
            "-c",
            JOURNAL_PY,
        ])
        .arg(UDPGUARD)
        // Adopting an attachment with a size it cannot change is a warning.
        .args(["run", "--cgroup", sb.cgroup.to_str().unwrap()])
        .args([
            "--events-buffer",
            "8192",
            "--no-metrics",
            "--scan-interval",
            "0",
        ])
        .env("UDPGUARD_PIN_ROOT", &sb.pin_root)
        .output()
        .expect("running unshare and python3");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = said
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let with = |priority: &str, text: &str| {
        records.iter().any(|r| {
            r["PRIORITY"] == priority && r["MESSAGE"].as_str().is_some_and(|m| m.contains(text))
        })
    };
    assert!(
        with("4", "apply when the programs are loaded"),
        "the warning at priority 4 (warning): {said}"
    );
    assert!(
        with("6", "adopted the attachment"),
        "the info line at priority 6 (info): {said}"
    );
    assert!(
        records
            .iter()
            .all(|r| r.get("stderr").is_some() || r["SYSLOG_IDENTIFIER"] == "udpguard"),
        "{said}"
    );
    let stderr = records.last().unwrap()["stderr"].as_str().unwrap();
    assert!(
        !stderr.contains("adopted the attachment"),
        "the lines went to the journal, not to stderr: {stderr}"
    );
}
