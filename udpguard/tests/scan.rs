//! `udpguard scan` against the real kernel.
//!
//! Every test makes its own network namespace, fills it with a few thousand
//! unique connected UDP sockets plus deliberate duplicates held by python
//! helper processes started inside it, runs `udpguard scan` there, and checks
//! the answer against what the kernel really does: which groups exist, which
//! inodes and pids are in them, and which socket actually gets a datagram the
//! peer sends.
//!
//! These tests need root (they create network namespaces); they fail, never
//! skip, without it. The namespace is a [`Sandbox`]'s (the one harness); scan loads no BPF,
//! so its processes run in the sandbox's unguarded cgroup.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, UDPGUARD};
use serde_json::{Value, json};

/// The helper that holds sockets. It reads one JSON command per line on stdin
/// and answers one JSON line on stdout; it exits when stdin closes.
const SOCKET_HOLDER_PY: &str = r#"
import json, os, resource, socket, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
kept = []        # unique sockets
duplicates = []  # sockets made with "create", probed by "received"
pipes = []

def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def connected(family, local, remote, reuse, device=None):
    s = socket.socket(FAMILY[family], socket.SOCK_DGRAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if device:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    s.bind(tuple(local))
    s.connect(tuple(remote))
    return s

answer({"pid": os.getpid()})
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    if op == "unique":
        for i in range(cmd["count"]):
            kept.append(connected(cmd["family"], (cmd["local"], 0),
                                  (cmd["remote"], cmd["first_port"] + i), False))
        answer({"created": cmd["count"]})
    elif op == "create":
        s = connected(cmd["family"], cmd["local"], cmd["remote"], True, cmd.get("device"))
        s.setblocking(False)
        duplicates.append(s)
        answer({"inode": os.fstat(s.fileno()).st_ino})
    elif op == "send":
        peer = socket.socket(FAMILY[cmd["family"]], socket.SOCK_DGRAM)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        peer.bind(tuple(cmd["from"]))
        peer.sendto(b"probe", tuple(cmd["to"]))
        peer.close()
        answer({"sent": True})
    elif op == "received":
        got = []
        for s in duplicates:
            try:
                while True:
                    s.recv(64)
                    got.append(os.fstat(s.fileno()).st_ino)
            except BlockingIOError:
                pass
        answer({"received": got})
    elif op == "fork":
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(w)
            os.read(r, 1)  # returns when the parent dies
            os._exit(0)
        os.close(r)
        pipes.append(w)
        answer({"child": child})
"#;

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A sandbox's network namespace (`lo` up), removed on drop (also on panic).
struct TestNetns {
    sandbox: Sandbox,
    name: String,
}

impl TestNetns {
    fn new() -> Self {
        let sandbox = Sandbox::new("scan");
        let name = sandbox.name.clone();
        Self { sandbox, name }
    }

    /// `program`, run inside the namespace.
    fn command(&self, program: &str) -> Command {
        self.sandbox.command(program, false)
    }

    /// Runs `udpguard scan <args>` inside the namespace.
    fn scan(&self, args: &[&str]) -> Output {
        self.command(UDPGUARD)
            .arg("scan")
            .args(args)
            .output()
            .expect("cannot run udpguard")
    }

    /// Starts a socket holder inside the namespace.
    fn holder(&self) -> Holder {
        let mut child = self
            .command(python())
            .args(["-c", SOCKET_HOLDER_PY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start python3");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let hello: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("socket holder did not start ({e}): {line:?}"));
        Holder {
            pid: hello["pid"].as_u64().unwrap() as u32,
            child,
            stdin,
            stdout,
        }
    }
}

/// A python process inside a test namespace holding sockets; killed on drop.
struct Holder {
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn ask(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("socket holder failed on {command} ({e}): {line:?}"))
    }

    /// `count` unique connected sockets: `local`:ephemeral -> `remote`:first_port+i.
    fn unique(&mut self, family: u8, local: &str, remote: &str, first_port: u16, count: usize) {
        let answer = self.ask(json!({"op": "unique", "family": family, "local": local,
            "remote": remote, "first_port": first_port, "count": count}));
        assert_eq!(answer["created"], count);
    }

    /// One `SO_REUSEADDR` socket bound to `local` and connected to `remote`;
    /// returns its inode.
    fn duplicate(&mut self, family: u8, local: (&str, u16), remote: (&str, u16)) -> u64 {
        let answer = self.ask(json!({"op": "create", "family": family,
            "local": [local.0, local.1], "remote": [remote.0, remote.1]}));
        answer["inode"].as_u64().unwrap()
    }

    /// Like [`Holder::duplicate`], bound to `device` with `SO_BINDTODEVICE` first.
    fn duplicate_on(&mut self, device: &str, local: (&str, u16), remote: (&str, u16)) -> u64 {
        let answer = self.ask(json!({"op": "create", "family": 4, "device": device,
            "local": [local.0, local.1], "remote": [remote.0, remote.1]}));
        answer["inode"].as_u64().unwrap()
    }

    /// Forks a child that shares every socket; returns its pid.
    fn fork(&mut self) -> u32 {
        self.ask(json!({"op": "fork"}))["child"].as_u64().unwrap() as u32
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A duplicate group the test made: its tuple as `scan` must print it, the
/// address to send a probe from, and its sockets (inode -> (family, holder pid)).
struct Expected {
    local: &'static str,
    remote: &'static str,
    probe_family: u8,
    from: (&'static str, u16),
    to: (&'static str, u16),
    sockets: BTreeMap<u64, (&'static str, u32)>,
}

/// Sends one datagram from the group's peer address and returns the inode of
/// the socket that got it.
fn actual_receiver(holders: &mut [&mut Holder], group: &Expected) -> u64 {
    holders[0].ask(json!({"op": "send", "family": group.probe_family,
        "from": [group.from.0, group.from.1], "to": [group.to.0, group.to.1]}));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        for holder in holders.iter_mut() {
            let answer = holder.ask(json!({"op": "received"}));
            got.extend(
                answer["received"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap()),
            );
        }
    }
    assert_eq!(
        got.len(),
        1,
        "{} -> {}: expected one receiver, got {got:?}",
        group.local,
        group.remote
    );
    assert!(
        group.sockets.contains_key(&got[0]),
        "the datagram went outside the group: {got:?}"
    );
    got[0]
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "scan --json did not print JSON ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim_end()
        .to_owned()
}

/// Checks a `scan --json` duplicate group against the one made.
fn check_group(found: &Value, expected: &Expected, receiver: u64) {
    let sockets = found["sockets"].as_array().unwrap();
    let inodes: BTreeSet<u64> = sockets
        .iter()
        .map(|s| s["inode"].as_u64().unwrap())
        .collect();
    let want: BTreeSet<u64> = expected.sockets.keys().copied().collect();
    assert_eq!(
        inodes, want,
        "inodes of {} -> {}",
        expected.local, expected.remote
    );
    for socket in sockets {
        let inode = socket["inode"].as_u64().unwrap();
        let (family, pid) = expected.sockets[&inode];
        assert_eq!(socket["family"], family, "family of {inode}");
        assert_eq!(socket["uid"], 0, "uid of {inode}");
        assert_eq!(
            socket["receiving"],
            inode == receiver,
            "{} -> {}: scan says socket {inode} has receiving = {}, but the peer's datagram went to {receiver}",
            expected.local,
            expected.remote,
            socket["receiving"]
        );
        assert_eq!(
            socket["processes"],
            json!([{"pid": pid, "comm": comm_of(pid)}]),
            "owners of {inode}"
        );
    }
}

#[test]
fn clean_namespace_exits_0() {
    let netns = TestNetns::new();
    let mut holder = netns.holder();
    holder.unique(4, "127.0.0.1", "127.0.0.3", 10000, 1500);
    holder.unique(6, "::1", "::1", 20000, 500);
    holder.unique(6, "::ffff:127.0.0.1", "::ffff:127.0.0.4", 30000, 200);
    // Same local port, different remote: not a duplicate.
    holder.duplicate(4, ("127.0.0.1", 5000), ("127.0.0.2", 53));
    holder.duplicate(4, ("127.0.0.1", 5000), ("127.0.0.2", 54));

    let output = netns.scan(&["--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = json_of(&output);
    assert_eq!(report["scanned"], 2202);
    assert_eq!(report["duplicates"], json!([]));

    let output = netns.scan(&[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "scanned 2202 connected UDP sockets: no duplicate 4-tuples\n"
    );
}

#[test]
fn finds_exactly_the_duplicates_and_which_socket_receives() {
    let netns = TestNetns::new();
    let mut a = netns.holder();
    let mut b = netns.holder();
    a.unique(4, "127.0.0.1", "127.0.0.3", 10000, 1500);
    a.unique(6, "::1", "::1", 20000, 300);
    b.unique(4, "127.0.0.1", "127.0.0.3", 10000, 1500);
    b.unique(6, "::ffff:127.0.0.1", "::ffff:127.0.0.3", 30000, 300);

    let mut groups = Vec::new();
    // IPv4 pair across two processes.
    let mut g = Expected {
        local: "127.0.0.1:5000",
        remote: "127.0.0.2:53",
        probe_family: 4,
        from: ("127.0.0.2", 53),
        to: ("127.0.0.1", 5000),
        sockets: BTreeMap::new(),
    };
    g.sockets.insert(
        a.duplicate(4, ("127.0.0.1", 5000), ("127.0.0.2", 53)),
        ("ipv4", a.pid),
    );
    g.sockets.insert(
        b.duplicate(4, ("127.0.0.1", 5000), ("127.0.0.2", 53)),
        ("ipv4", b.pid),
    );
    groups.push(g);
    // IPv4 triple, made A, B, A.
    let mut g = Expected {
        local: "127.0.0.1:5002",
        remote: "127.0.0.2:53",
        probe_family: 4,
        from: ("127.0.0.2", 53),
        to: ("127.0.0.1", 5002),
        sockets: BTreeMap::new(),
    };
    g.sockets.insert(
        a.duplicate(4, ("127.0.0.1", 5002), ("127.0.0.2", 53)),
        ("ipv4", a.pid),
    );
    g.sockets.insert(
        b.duplicate(4, ("127.0.0.1", 5002), ("127.0.0.2", 53)),
        ("ipv4", b.pid),
    );
    g.sockets.insert(
        a.duplicate(4, ("127.0.0.1", 5002), ("127.0.0.2", 53)),
        ("ipv4", a.pid),
    );
    groups.push(g);
    // IPv6 pair.
    let mut g = Expected {
        local: "[::1]:5001",
        remote: "[::1]:6001",
        probe_family: 6,
        from: ("::1", 6001),
        to: ("::1", 5001),
        sockets: BTreeMap::new(),
    };
    g.sockets.insert(
        a.duplicate(6, ("::1", 5001), ("::1", 6001)),
        ("ipv6", a.pid),
    );
    g.sockets.insert(
        b.duplicate(6, ("::1", 5001), ("::1", 6001)),
        ("ipv6", b.pid),
    );
    groups.push(g);
    // Cross-family: AF_INET, then AF_INET6 with v4-mapped addresses.
    let mut g = Expected {
        local: "127.0.0.1:5003",
        remote: "127.0.0.2:54",
        probe_family: 4,
        from: ("127.0.0.2", 54),
        to: ("127.0.0.1", 5003),
        sockets: BTreeMap::new(),
    };
    g.sockets.insert(
        a.duplicate(4, ("127.0.0.1", 5003), ("127.0.0.2", 54)),
        ("ipv4", a.pid),
    );
    g.sockets.insert(
        b.duplicate(6, ("::ffff:127.0.0.1", 5003), ("::ffff:127.0.0.2", 54)),
        ("ipv6", b.pid),
    );
    groups.push(g);
    // Cross-family the other way round: v4-mapped AF_INET6 first, then AF_INET.
    let mut g = Expected {
        local: "127.0.0.1:5005",
        remote: "127.0.0.2:54",
        probe_family: 4,
        from: ("127.0.0.2", 54),
        to: ("127.0.0.1", 5005),
        sockets: BTreeMap::new(),
    };
    g.sockets.insert(
        a.duplicate(6, ("::ffff:127.0.0.1", 5005), ("::ffff:127.0.0.2", 54)),
        ("ipv6", a.pid),
    );
    g.sockets.insert(
        b.duplicate(4, ("127.0.0.1", 5005), ("127.0.0.2", 54)),
        ("ipv4", b.pid),
    );
    groups.push(g);
    // Two v4-mapped AF_INET6 sockets: an IPv4 tuple.
    let mut g = Expected {
        local: "127.0.0.1:5004",
        remote: "127.0.0.4:55",
        probe_family: 4,
        from: ("127.0.0.4", 55),
        to: ("127.0.0.1", 5004),
        sockets: BTreeMap::new(),
    };
    g.sockets.insert(
        a.duplicate(6, ("::ffff:127.0.0.1", 5004), ("::ffff:127.0.0.4", 55)),
        ("ipv6", a.pid),
    );
    g.sockets.insert(
        b.duplicate(6, ("::ffff:127.0.0.1", 5004), ("::ffff:127.0.0.4", 55)),
        ("ipv6", b.pid),
    );
    groups.push(g);
    // SO_BINDTODEVICE: on lo, a socket bound to lo beats an unbound one,
    // whichever is older; both bound: the kernel's usual choice.
    for (port, first_bound, second_bound) in
        [(5008, false, true), (5009, true, false), (5010, true, true)]
    {
        let mut g = Expected {
            local: ["127.0.0.1:5008", "127.0.0.1:5009", "127.0.0.1:5010"][usize::from(port - 5008)],
            remote: "127.0.0.2:53",
            probe_family: 4,
            from: ("127.0.0.2", 53),
            to: ("127.0.0.1", port),
            sockets: BTreeMap::new(),
        };
        for (holder, bound) in [(&mut a, first_bound), (&mut b, second_bound)] {
            let local = ("127.0.0.1", port);
            let inode = if bound {
                holder.duplicate_on("lo", local, ("127.0.0.2", 53))
            } else {
                holder.duplicate(4, local, ("127.0.0.2", 53))
            };
            g.sockets.insert(inode, ("ipv4", holder.pid));
        }
        groups.push(g);
    }
    // Near misses that must not be reported.
    a.duplicate(4, ("127.0.0.1", 5006), ("127.0.0.2", 53));
    b.duplicate(4, ("127.0.0.1", 5006), ("127.0.0.2", 56));
    a.duplicate(6, ("::1", 5006), ("::1", 53));
    b.duplicate(4, ("127.0.0.1", 5007), ("127.0.0.2", 53));

    let made_duplicates: usize = groups.iter().map(|g| g.sockets.len()).sum();
    let total = 1500 + 300 + 1500 + 300 + made_duplicates + 4;

    let output = netns.scan(&["--json"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = json_of(&output);
    assert_eq!(report["scanned"], total);
    let found = report["duplicates"].as_array().unwrap();
    let found_tuples: BTreeSet<(String, String)> = found
        .iter()
        .map(|d| {
            (
                d["local"].as_str().unwrap().to_owned(),
                d["remote"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let made_tuples: BTreeSet<(String, String)> = groups
        .iter()
        .map(|g| (g.local.to_owned(), g.remote.to_owned()))
        .collect();
    assert_eq!(found_tuples, made_tuples, "exactly the groups made");
    assert_eq!(found.len(), groups.len());
    for group in &groups {
        let found_group = found
            .iter()
            .find(|d| d["local"] == group.local && d["remote"] == group.remote)
            .unwrap();
        assert!(
            found_group.get("netns").is_none(),
            "no netns field without --all-netns"
        );
        let receiver = actual_receiver(&mut [&mut a, &mut b], group);
        check_group(found_group, group, receiver);
    }

    let output = netns.scan(&[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout);
    for group in &groups {
        let header = format!(
            "{} -> {}: {} sockets, 1 receiving,",
            group.local,
            group.remote,
            group.sockets.len()
        );
        assert!(table.contains(&header), "no {header:?} in:\n{table}");
        for inode in group.sockets.keys() {
            assert!(
                table.contains(&format!("  {inode}  ")),
                "no {inode} in:\n{table}"
            );
        }
    }
    assert!(
        table.ends_with(&format!(
            "scanned {total} connected UDP sockets: {} duplicate 4-tuples, {} starving sockets\n",
            groups.len(),
            made_duplicates - groups.len()
        )),
        "{table}"
    );
}

#[test]
fn lists_every_process_sharing_a_socket() {
    let netns = TestNetns::new();
    let mut holder = netns.holder();
    holder.unique(4, "127.0.0.1", "127.0.0.3", 10000, 1000);
    let first = holder.duplicate(4, ("127.0.0.1", 5000), ("127.0.0.2", 53));
    let second = holder.duplicate(4, ("127.0.0.1", 5000), ("127.0.0.2", 53));
    let child = holder.fork();

    let output = netns.scan(&["--json"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = json_of(&output);
    let sockets = report["duplicates"][0]["sockets"].as_array().unwrap();
    let inodes: Vec<u64> = sockets
        .iter()
        .map(|s| s["inode"].as_u64().unwrap())
        .collect();
    assert_eq!(inodes, [first.min(second), first.max(second)]);
    let comm = comm_of(holder.pid);
    let mut owners = [holder.pid, child];
    owners.sort();
    for socket in sockets {
        assert_eq!(
            socket["processes"],
            json!([{"pid": owners[0], "comm": comm}, {"pid": owners[1], "comm": comm}])
        );
    }
}

#[test]
fn all_netns_finds_and_names_other_namespaces() {
    let netns = TestNetns::new();
    let mut holder = netns.holder();
    holder.unique(6, "::1", "::1", 20000, 500);
    let mut made = BTreeSet::new();
    made.insert(holder.duplicate(6, ("::1", 5001), ("::1", 6001)));
    made.insert(holder.duplicate(6, ("::1", 5001), ("::1", 6001)));

    // From the test's own namespace, not inside the test namespace.
    let output = Command::new(UDPGUARD)
        .args(["scan", "--all-netns", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = json_of(&output);
    assert!(report["scanned"].as_u64().unwrap() >= 502);
    let ours: Vec<&Value> = report["duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["netns"] == netns.name.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{report}");
    assert_eq!(ours[0]["local"], "[::1]:5001");
    assert_eq!(ours[0]["remote"], "[::1]:6001");
    let inodes: BTreeSet<u64> = ours[0]["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["inode"].as_u64().unwrap())
        .collect();
    assert_eq!(inodes, made);

    let output = Command::new(UDPGUARD)
        .args(["scan", "--all-netns"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout);
    let header = format!("netns {}: [::1]:5001 -> [::1]:6001: 2 sockets", netns.name);
    assert!(table.contains(&header), "no {header:?} in:\n{table}");
}
