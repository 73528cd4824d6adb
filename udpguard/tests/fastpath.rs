//! The O(1) no-conflict path: with `udpguard run` vouching for a namespace, a tuple nobody
//! claims needs no lookup; conflicts are still refused, sockets connected before are indexed
//! from a dump, and the fast path turns off at the connect of a socket outside the guarded
//! cgroup (seen by the watch, also from a thread that entered the namespace with setns), when
//! the agent that vouches for it dies, or when a claim there is dropped for room. Real kernel,
//! root, own sandbox each (its cgroup tree stands in for the cgroup root: `--watch-cgroup`).
mod common;

use std::time::{Duration, Instant};

use common::{Agent, Holder, Sandbox};

/// Waits (a few seconds at most) until the fast path's state is `on`.
fn wait_fast_path(sb: &Sandbox, on: bool) {
    wait_fast_path_for(sb, on, Duration::from_secs(5));
}

fn wait_fast_path_for(sb: &Sandbox, on: bool, most: Duration) {
    let deadline = Instant::now() + most;
    loop {
        let n = sb.status()["attachments"][0]["fast_path_namespaces"]
            .as_u64()
            .unwrap_or(0);
        if (n > 0) == on {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fast path never turned {}",
            if on { "on" } else { "off" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reports the sandbox's namespace to the agent (its first checked connect does).
const REPORT: &str = r#"
    s = udp(bind=("127.0.0.1", 3999)); s.connect(("127.0.0.1", 3998)); s.close()
"#;

#[test]
fn the_fast_path_skips_the_lookup_and_still_refuses_conflicts() {
    let sb = Sandbox::new("fast-on");
    let _agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    let before = sb.counter("indexed");
    let got = sb.py(r#"
        group = [udp(bind=("127.0.0.1", 4443)) for _ in range(100)]
        out(set(conn(s, ("127.0.0.2", 10000 + i)) for i, s in enumerate(group)))
        out(conn(udp(bind=("127.0.0.1", 4443)), ("127.0.0.2", 10007)))
        a = udp(bind=("0.0.0.0", 4444)); b = udp(bind=("0.0.0.0", 4444))
        out(conn(a, P), conn(b, P))
        "#);
    assert_eq!(got, ["{'ok'}", "EPERM", "ok EPERM"]);
    // The 100 clients and the first wildcard socket went by the index alone.
    assert!(sb.counter("indexed") - before >= 101, "{}", sb.status());
}

#[test]
fn a_port_an_unshared_socket_connected_from_is_looked_up_on_the_fast_path() {
    let sb = Sandbox::new("fast-unshared");
    let _agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    // An unshared socket holds its tuple without a claim. Only a socket that cleared its
    // SO_REUSEADDR after binding a shared port can be beside it; its neighbour is looked up.
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); b = udp(bind=("127.0.0.1", 4444))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        out(conn(a, P), conn(b, P))
        c = udp(bind=("127.0.0.1", 40000), reuse=False); out(conn(c, P))
        "#);
    assert_eq!(got, ["ok EPERM", "ok"]);
    // (A port near 4444, where a shared socket connected, would be checked in full: the
    // notes hold 64 ports to a bit.)
    assert_eq!(sb.counter("unshared"), 2);
}

#[test]
fn a_held_unshared_socket_keeps_the_fast_path_on_through_the_agents_checks() {
    let sb = Sandbox::new("fast-unshared-held");
    let _agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    // An unshared socket holds a tuple the claims do not: its port is noted, and the agent's
    // check (a dump every 10 s) must not take that for an unseen connect.
    let mut holder = sb
        .command("python3", true)
        .args([
            "-c",
            "import socket,time\n\
             a=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             a.bind(('127.0.0.1',4444)); a.connect(('127.0.0.1',1111))\n\
             print('held',flush=True); time.sleep(60)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    assert_eq!(sb.counter("unshared"), 1);
    // Through at least one check: the fast path never goes off (a withdrawal is seeded again
    // within a second, so it is watched all along).
    let until = Instant::now() + Duration::from_secs(13);
    let mut off = 0;
    while Instant::now() < until {
        if sb.status()["attachments"][0]["fast_path_namespaces"].as_u64() != Some(1) {
            off += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(off, 0, "the fast path went off at the agent's check");
}

#[test]
fn sockets_connected_before_are_indexed_from_a_dump() {
    let sb = Sandbox::new("fast-seed");
    // A holder connected before anything is attached, kept alive in the cgroup.
    let holder = Holder::start(&sb, true);
    let agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    let got = sb.py(r#"out(conn(udp(bind=("127.0.0.1", 4444)), P))"#);
    assert_eq!(got, ["EPERM"]);
    drop(agent);
    drop(holder);
}

#[test]
fn the_fast_path_turns_off_when_an_outside_process_joins_the_namespace() {
    let sb = Sandbox::new("fast-outside");
    let _agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    // A process outside the guarded cgroup joins the namespace and takes a tuple: the guard's
    // hooks do not see it, the watch does, at its connect.
    let outsider = Holder::start(&sb, false);
    // Refused to a newcomer inside at once: by the full lookup, or by its seeded claim once
    // the agent has dumped the namespace again.
    let got = sb.py(r#"out(conn(udp(bind=("127.0.0.1", 4444)), P))"#);
    assert_eq!(got, ["EPERM"]);
    drop(outsider);
}

#[test]
fn a_thread_that_enters_the_namespace_from_outside_is_seen_at_its_connect() {
    let sb = Sandbox::new("fast-setns");
    let _agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    // As Go programs and nsenter-style tools do: a process of another cgroup, living in the
    // host's namespace, sends threads into the guarded namespace with setns(); each connects
    // a tuple and leaves. No process of the namespace is outside the guarded cgroup at any
    // moment a /proc walk could see.
    let netns = format!("/run/netns/{}", sb.name);
    // The host's namespace, as this test runner has it (pid 1's is refused to root here).
    let host = format!("/proc/{}/ns/net", std::process::id());
    let mut outsider = sb
        .command("python3", false)
        .args([
            "-c",
            &format!(
                r#"
import ctypes, os, socket, threading, time
LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
assert LIBC.setns(os.open("{host}", os.O_RDONLY), CLONE_NEWNET) == 0
held = []
def enter_and_connect(port):
    assert LIBC.setns(os.open("{netns}", os.O_RDONLY), CLONE_NEWNET) == 0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 4444)); s.connect(("127.0.0.2", port)); held.append(s)
for port in range(6000, 6020):
    t = threading.Thread(target=enter_and_connect, args=(port,)); t.start(); t.join()
print("held", flush=True)
time.sleep(60)
"#
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(outsider.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    // Every duplicate of theirs is refused inside, at once.
    let got = sb.py(r#"
        out(set(conn(udp(bind=("127.0.0.1", 4444)), ("127.0.0.2", p)) for p in range(6000, 6020)))
        "#);
    let _ = outsider.kill();
    let _ = outsider.wait();
    assert_eq!(got, ["{'EPERM'}"]);
}

#[test]
fn the_fast_path_turns_itself_off_when_the_agent_dies() {
    let sb = Sandbox::new("fast-lease");
    let agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    // Killed, it withdraws nothing: its word holds until the lease (10 s) runs out. (Said
    // only when the connect came well within the lease: under emulation starting python
    // takes seconds.)
    agent.kill();
    let killed = Instant::now();
    let before = sb.counter("indexed");
    sb.py(REPORT);
    if killed.elapsed() < Duration::from_secs(5) {
        assert_eq!(sb.counter("indexed") - before, 1, "{}", sb.status());
    }
    wait_fast_path_for(&sb, false, Duration::from_secs(15));
    // Nobody checks the namespace now: an outsider's tuple is refused to a newcomer inside,
    // by the full lookup.
    let outsider = Holder::start(&sb, false);
    let before = sb.counter("indexed");
    let got = sb.py(r#"out(conn(udp(bind=("127.0.0.1", 4444)), P))"#);
    assert_eq!(got, ["EPERM"]);
    assert_eq!(sb.counter("indexed"), before, "{}", sb.status());
    drop(outsider);
}

#[test]
fn a_claim_dropped_for_room_turns_the_fast_path_off_in_its_namespace() {
    let sb = Sandbox::new("fast-evict");
    // The smallest tables: two buckets of seven claims (for four sockets).
    let _agent = Agent::start_with(&sb, &["--max-sockets", "4"]);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    let before = sb.counter("indexed");
    // Fourteen held tuples fill the table; once their claims are stale (10 ms), a fifteenth
    // tuple evicts one of them. That holder's tuple is no longer indexed: a newcomer to it
    // must be refused by the full lookup, and so must the others (by their claims or the
    // lookup).
    let got = sb.py(r#"
        ports = [3000 + i for i in range(15)]
        held = [udp(bind=("127.0.0.1", 4444)) for _ in ports[:-1]]
        out(set(conn(s, ("127.0.0.2", p)) for s, p in zip(held, ports)))
        time.sleep(0.1)
        out(conn(udp(bind=("127.0.0.1", 4444)), ("127.0.0.2", ports[-1])))
        out(set(conn(udp(bind=("127.0.0.1", 4444)), ("127.0.0.2", p)) for p in ports[:-1]))
        "#);
    assert_eq!(got, ["{'ok'}", "ok", "{'EPERM'}"]);
    // The fifteen went by the index; the newcomers, after the eviction, by the full lookup
    // (the agent cannot vouch again within a second: it seeds with a 1 s margin).
    assert_eq!(sb.counter("indexed") - before, 15, "{}", sb.status());
    assert_eq!(sb.counter("rejected"), 14);
}

#[test]
fn a_socket_whose_reconnect_fails_keeps_its_tuple_indexed() {
    let sb = Sandbox::new("fast-failed");
    let _agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    // The hook sees the reconnect before the kernel fails it (no route): the socket stays
    // connected to its first peer, and that tuple must stay in the index.
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        out(conn(a, ("10.99.99.99", 53)), a.getpeername())
        out(conn(udp(bind=("127.0.0.1", 4444)), P))
        "#);
    assert_eq!(got, ["ok", "ENETUNREACH ('127.0.0.1', 1111)", "EPERM"]);
}

#[test]
fn claims_let_go_of_are_swept_once_nobody_holds_their_tuples() {
    let sb = Sandbox::new("fast-sweep");
    let _agent = Agent::start(&sb);
    sb.py(REPORT);
    wait_fast_path(&sb, true);
    let claims = || sb.status()["attachments"][0]["claims"].as_u64().unwrap();
    let before = claims();
    // Under the fast path a socket that connects elsewhere leaves its old claim, unowned: 20
    // sockets moving leave 20. A socket that closes releases its claim at once.
    sb.py(r#"
        held = [udp(bind=("127.0.0.1", 4000 + i)) for i in range(20)]
        for s in held:
            assert conn(s, P) == "ok" and conn(s, ("127.0.0.1", 2222)) == "ok"
        for s in held:
            s.close()
        "#);
    assert_eq!(claims(), before + 20);
    // The agent's sweep (every 10 s) sees their tuples free in a later dump and clears them.
    let deadline = Instant::now() + Duration::from_secs(40);
    while claims() > before {
        assert!(
            Instant::now() < deadline,
            "{} claims left",
            claims() - before
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
