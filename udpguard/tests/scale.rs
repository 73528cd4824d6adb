//! At a real host's scale: 152,000 connected UDP sockets held in the guarded cgroup (8
//! processes of 19,000: the open-file limit is 20,000 per process), while a socket closes and
//! a new one takes its tuple at once, other sockets come and go in between, and duplicates of
//! held tuples are tried. No reconnect is ever refused and every duplicate is, with `attach`
//! alone, under the agent, and with tables too small for the load (which fail open: counted,
//! never a refusal). Needs root.
mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Stdio},
};

use common::{Agent, Sandbox};

const PROCESSES: usize = 8;
const PER_PROCESS: usize = 19_000;
/// Tables with room for them all, whatever the machine's memory (the default is a share of it:
/// a 4 GiB VM's tables hold 114,688 claims), so that these tests measure soundness with room
/// and `tables_too_small_for_the_load_fail_open` without. Room means the claim table as loaded
/// as the default one on a 24 GiB host (1.2 claims a bucket): with `200k` (2.3 a bucket), 178
/// of the 65,536 buckets spilled and 4 claims found their bucket and its spill bucket full and
/// evicted another (6.12 guest).
const ROOM: &str = "400k";

/// Holds `PER_PROCESS` connected sockets, each its own tuple, until stdin closes. Process `k`
/// binds 127.(10+k).x.y:5000 and connects to 127.200.0.1:53.
const HOLDER: &str = r#"
import resource, socket, sys
k = int(sys.argv[1]); n = int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 100
if hard < want:
    # A VM's init leaves the kernel's default hard limit (4,096); root there may raise it.
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        hard = want
    except (ValueError, OSError):
        sys.exit(f"the open-file limit is {hard} and cannot be raised to {want}")
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((f"127.{10 + k}.{i // 250}.{i % 250 + 1}", 5000))
    s.connect(("127.200.0.1", 53))
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
"#;

/// The rounds, inside the guarded cgroup: 300 times, a socket of its own closes and a new one
/// takes its tuple at once, with 100 other sockets made and closed in between; then 300
/// duplicates of the holders' tuples and 300 of its own.
const ROUNDS: &str = r#"
import json, random, socket
rng = random.Random(7)
def udp(local):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(local)
    return s
def conn(s, peer):
    try:
        s.connect(peer); return True
    except PermissionError:
        return False
PEER = ("127.200.0.1", 53)
own = {j: udp(("127.50.0.%d" % (j + 1), 6000)) for j in range(200)}
for s in own.values():
    assert conn(s, PEER)
refused = 0
for r in range(300):
    j = rng.randrange(200)
    own[j].close()
    own[j] = udp(("127.50.0.%d" % (j + 1), 6000))
    refused += not conn(own[j], PEER)
    for c in range(100):
        t = udp(("127.60.%d.%d" % (c // 250, c % 250 + 1), 7000 + r % 10))
        t.connect(("127.200.0.2", 53)); t.close()
dup_holders = 0
for d in range(300):
    k, i = rng.randrange(8), rng.randrange(19000)
    s = udp((f"127.{10 + k}.{i // 250}.{i % 250 + 1}", 5000))
    dup_holders += not conn(s, PEER); s.close()
dup_own = 0
for d in range(300):
    j = rng.randrange(200)
    s = udp(("127.50.0.%d" % (j + 1), 6000))
    dup_own += not conn(s, PEER); s.close()
print(json.dumps({"reconnects_refused": refused, "duplicates_of_holders_refused": dup_holders,
                  "duplicates_of_own_refused": dup_own}))
"#;

/// The holders, stopped (stdin closed, then killed) when dropped.
struct Holders(Vec<Child>);

impl Holders {
    fn start(sb: &Sandbox) -> Holders {
        let mut children: Vec<Child> = (0..PROCESSES)
            .map(|k| {
                sb.command("python3", true)
                    .args(["-c", HOLDER, &k.to_string(), &PER_PROCESS.to_string()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("starting a holder")
            })
            .collect();
        for child in &mut children {
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready", "a holder could not make its sockets");
        }
        Holders(children)
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.stdin.take().map(|mut s| s.write_all(b""));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rounds(sb: &Sandbox) -> serde_json::Value {
    let got = sb.py(ROUNDS);
    serde_json::from_str(got.last().expect("the rounds printed nothing")).unwrap()
}

fn assert_sound(sb: &Sandbox, report: &serde_json::Value) {
    eprintln!(
        "{report}; counters {}",
        sb.status()["attachments"][0]["counters"]
    );
    assert_eq!(report["reconnects_refused"], 0, "{report}");
    assert_eq!(report["duplicates_of_holders_refused"], 300, "{report}");
    assert_eq!(report["duplicates_of_own_refused"], 300, "{report}");
}

#[test]
fn with_150_000_sockets_held_reconnects_pass_and_duplicates_are_refused() {
    let sb = Sandbox::new("scale-attach");
    sb.attach(&["--max-sockets", ROOM]);
    let _holders = Holders::start(&sb);
    let status = sb.status();
    assert!(
        status["attachments"][0]["claims"].as_u64().unwrap() >= 152_000,
        "{status}"
    );
    assert_sound(&sb, &rounds(&sb));
    assert_eq!(sb.counter("unrecorded"), 0, "{}", sb.status());
}

#[test]
fn with_150_000_sockets_held_under_the_agent_reconnects_pass_and_duplicates_are_refused() {
    let sb = Sandbox::new("scale-agent");
    let _agent = Agent::start_with(&sb, &["--max-sockets", ROOM]);
    let _holders = Holders::start(&sb);
    // The agent seeds the namespace from a dump of its 152,000 sockets, then vouches for it.
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(30 * u64::from(common::slowdown()));
    while sb.status()["attachments"][0]["fast_path_namespaces"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fast path never came on"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let before = sb.counter("indexed");
    assert_sound(&sb, &rounds(&sb));
    assert_eq!(sb.counter("unrecorded"), 0, "{}", sb.status());
    assert!(sb.counter("indexed") > before, "the fast path was not used");
}

#[test]
fn tables_too_small_for_the_load_fail_open() {
    let sb = Sandbox::new("scale-small");
    // Room for a third of the held tuples: older claims are evicted for newer ones, counted;
    // the kernel's lookup still refuses every duplicate, and no reconnect is refused.
    sb.attach(&["--max-sockets", "16k"]);
    let _holders = Holders::start(&sb);
    assert_sound(&sb, &rounds(&sb));
    assert!(sb.counter("evicted") > 50_000, "{}", sb.status());
}
