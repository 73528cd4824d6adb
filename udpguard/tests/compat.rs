//! The older-kernel mode (issue 16): on a kernel without 64-bit BPF atomic fetch operations
//! (Linux 5.10, before 5.12) the guard loads its lookup-only build: a duplicate of a connected
//! socket is still refused by the kernel's lookup (as the reference design does), there is no
//! race protection and no fast path, refusals are EPERM, and `attach`, `status`, `run` and the
//! metrics say so and why.
//!
//! On a kernel that has the atomics these tests force the mode (`UDPGUARD_FORCE_COMPAT=1`);
//! on one that lacks them (the kernel matrix runs this binary in a 5.10 guest) they check the
//! probe found that by itself. Needs root; each test has its own sandbox.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{OnceLock, mpsc},
    time::Duration,
};

use common::Sandbox;
use serde_json::Value;

/// The seed's two sockets: both bound to 127.0.0.1:4444 and connected to 127.0.0.1:1111.
const SEED: &str = r#"
    a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
    b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
    out(receiver([a, b], P))
"#;

/// True when this kernel has the atomics, so the mode must be forced to be tested.
fn must_force() -> bool {
    static HAS_ATOMICS: OnceLock<bool> = OnceLock::new();
    *HAS_ATOMICS.get_or_init(|| {
        udpguard::sys::bpf::atomic_fetch_supported().expect("probing for BPF atomic fetch ops")
    })
}

/// True when this kernel tells a namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14), which
/// the agent's route mirror needs (5.10 has not: wildcard-bound sockets pass there).
fn netns_cookies() -> bool {
    udpguard::sys::netns::current_cookie().is_ok()
}

/// The udpguard CLI with the sandbox's pin root, in the older-kernel mode.
fn udpguard(sb: &Sandbox) -> Command {
    let mut command = sb.udpguard_command();
    if must_force() {
        command.env(udpguard::loader::FORCE_COMPAT_ENV, "1");
    } else {
        command.env_remove(udpguard::loader::FORCE_COMPAT_ENV);
    }
    command
}

/// Runs the CLI in the older-kernel mode; fails the test unless it succeeds; returns stdout.
fn ok(sb: &Sandbox, args: &[&str]) -> String {
    common::succeeded(
        args,
        udpguard(sb).args(args).output().expect("running udpguard"),
    )
}

/// `udpguard attach --cgroup <the sandbox's>` in the older-kernel mode; returns what it said.
fn attach(sb: &Sandbox, extra: &[&str]) -> String {
    let mut args = vec!["attach", "--cgroup", sb.cgroup.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(sb, &args)
}

/// Why the mode is on, as `attach`, `status`, `run` and the metrics say it.
fn expected_why() -> &'static str {
    if must_force() {
        "forced by UDPGUARD_FORCE_COMPAT=1"
    } else {
        "lacks BPF atomic fetch ops (64-bit cmpxchg/xchg), needs 5.12"
    }
}

#[test]
fn attach_and_status_say_what_is_off_and_why() {
    let sb = Sandbox::new("compat-say");
    let said = attach(&sb, &[]);
    assert!(said.contains("attached to"), "{said}");
    assert!(said.contains("kernel mode: compat"), "{said}");
    for off in [
        "race protection is off",
        "the fast path is off",
        "SO_BINDTODEVICE",
        "refusals are EPERM only",
    ] {
        assert!(said.contains(off), "attach does not say {off:?}:\n{said}");
    }
    assert!(said.contains(expected_why()), "{said}");
    assert!(
        !said.contains("tables:"),
        "no claim tables in this mode: {said}"
    );

    let status = sb.status();
    let a = &status["attachments"][0];
    assert_eq!(a["kernel_mode"], "compat", "{status}");
    assert_eq!(a["kernel_mode_forced"], must_force(), "{status}");
    assert_eq!(a["tables"], Value::Null, "{status}");
    let degraded: Vec<&str> = a["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let wildcard_off = !netns_cookies();
    assert_eq!(
        degraded.len(),
        4 + usize::from(wildcard_off),
        "{degraded:?}"
    );
    assert_eq!(
        degraded
            .iter()
            .any(|d| d.contains("SO_NETNS_COOKIE, needs 5.14")),
        wildcard_off,
        "{degraded:?}"
    );
    assert!(
        degraded[0].starts_with("race protection is off"),
        "{degraded:?}"
    );
    assert!(
        degraded
            .iter()
            .filter(|d| !d.contains("SO_NETNS_COOKIE"))
            .all(|d| d.contains(if must_force() {
                "UDPGUARD_FORCE_COMPAT=1"
            } else {
                "kernel "
            })),
        "{degraded:?}"
    );
    let text = ok(&sb, &["status"]);
    assert!(text.contains("kernel mode: compat"), "{text}");
    assert!(text.contains("degraded: race protection is off"), "{text}");

    // Only the connect programs are linked: no socket records, so no sock_create/release.
    let pins: Vec<String> = std::fs::read_dir(a["pin_dir"].as_str().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pins.iter().any(|p| p == "connect4"), "{pins:?}");
    assert!(pins.iter().any(|p| p == "connect6"), "{pins:?}");
    assert!(
        !pins.iter().any(|p| p == "create" || p == "release"),
        "{pins:?}"
    );

    // The metrics say it too.
    let metrics = ok(&sb, &["metrics"]);
    assert!(metrics.contains("kernel_mode=\"compat\"} 1"), "{metrics}");
    for feature in [
        "race_protection",
        "fast_path",
        "device_bound_holders",
        "errno_choice",
    ] {
        let row = metrics
            .lines()
            .find(|l| {
                l.starts_with("udpguard_feature_off{")
                    && l.contains(&format!("feature=\"{feature}\""))
            })
            .unwrap_or_else(|| panic!("no feature_off row for {feature}:\n{metrics}"));
        assert!(row.ends_with(" 1"), "{row}");
    }
}

#[test]
fn the_seed_duplicate_is_refused_and_the_holder_keeps_its_traffic() {
    let sb = Sandbox::new("compat-seed");
    attach(&sb, &[]);
    assert_eq!(sb.py(SEED), ["ok", "EPERM", "0"]);
    assert_eq!(sb.counter("rejected"), 1);
    assert_eq!(sb.counter("checked"), 2);
}

#[test]
fn another_peer_or_another_local_address_or_port_is_allowed() {
    let sb = Sandbox::new("compat-nbr");
    attach(&sb, &[]);
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, ("127.0.0.1", 1112)))
        c = udp(bind=("127.0.0.1", 4444)); out(conn(c, ("127.0.0.2", 1111)))
        d = udp(bind=("127.0.0.3", 4444)); out(conn(d, P))
        e = udp(bind=("127.0.0.1", 4445)); out(conn(e, P))
        f = udp(bind=("127.0.0.1", 4444)); out(conn(f, P))
        "#);
    assert_eq!(got, ["ok", "ok", "ok", "ok", "ok", "EPERM"]);
}

#[test]
fn the_tuple_is_free_again_once_its_holder_moved_away_or_closed() {
    let sb = Sandbox::new("compat-moved");
    attach(&sb, &[]);
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
        out(conn(a, ("127.0.0.1", 2222)))
        out(conn(b, P))
        c = udp(bind=("127.0.0.1", 4444)); out(conn(c, P))
        b.close()
        out(conn(c, P))
        out(disconnect(c))
        d = udp(bind=("127.0.0.1", 4444)); out(conn(d, P))
        "#);
    assert_eq!(got, ["ok", "EPERM", "ok", "ok", "EPERM", "ok", "ok", "ok"]);
}

#[test]
fn a_socket_may_reconnect_to_the_peer_it_already_has() {
    let sb = Sandbox::new("compat-again");
    attach(&sb, &[]);
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P)); out(conn(a, P))
        b = udp(bind=("::1", 4444), family=6); out(conn(b, ("::1", 1111))); out(conn(b, ("::1", 1111)))
        c = udp(bind=("127.0.0.1", 4444)); out(conn(c, P))
        "#);
    assert_eq!(got, ["ok", "ok", "ok", "ok", "EPERM"]);
}

#[test]
fn ipv6_and_v4_mapped_conflicts_are_refused_and_neighbours_allowed() {
    let sb = Sandbox::new("compat-v6");
    attach(&sb, &[]);
    let got = sb.py(r#"
        Q = ("::1", 1111)
        M = ("::ffff:127.0.0.1", 1111)
        a = udp(bind=("::1", 4444), family=6); out(conn(a, Q))
        b = udp(bind=("::1", 4444), family=6); out(conn(b, Q))
        c = udp(bind=("::1", 4444), family=6); out(conn(c, ("::1", 1112)))
        d = udp(bind=("fd00::1", 4444), family=6); out(conn(d, Q))
        e = udp(bind=("127.0.0.1", 4444)); out(conn(e, P))
        f = udp(bind=("::ffff:127.0.0.1", 4444), family=6, v6only=False); out(conn(f, M))
        g = udp(bind=("::ffff:127.0.0.1", 4444), family=6, v6only=False); out(conn_sockaddr_in(g, "127.0.0.1", 1111))
        h = udp(bind=("::ffff:127.0.0.1", 4444), family=6, v6only=False); out(conn(h, ("::ffff:127.0.0.1", 1113)))
        out(receiver([a, b], Q, family=6))
        "#);
    assert_eq!(
        got,
        ["ok", "EPERM", "ok", "ok", "ok", "EPERM", "EPERM", "ok", "0"]
    );
}

#[test]
fn an_errno_other_than_eperm_is_refused_with_what_to_do() {
    let sb = Sandbox::new("compat-errno");
    let out = udpguard(&sb)
        .args(["attach", "--cgroup", sb.cgroup.to_str().unwrap()])
        .args(["--errno", "eaddrinuse"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--errno eperm"), "{err}");
    assert_eq!(sb.status()["attachments"], serde_json::json!([]));
}

/// `udpguard run` in the older-kernel mode, stopped (SIGTERM) when dropped; keeps the log
/// lines it wrote before it mirrored the routes.
struct Agent {
    child: Child,
    log: Vec<String>,
}

impl Agent {
    fn start(sb: &Sandbox) -> Agent {
        let mut child = udpguard(sb)
            .args(["run", "--cgroup", sb.cgroup.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting udpguard run");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    // Keep draining so the agent never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut agent = Agent {
            child,
            log: Vec::new(),
        };
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("udpguard run: {e}; it said:\n{:?}", agent.log));
            assert!(!line.contains("ERROR"), "udpguard run failed: {line}");
            // Without SO_NETNS_COOKIE (before 5.14) it says there is no route mirror.
            let mirroring =
                line.contains("mirroring routes") || line.contains("reading the events");
            agent.log.push(line);
            if mirroring {
                return agent;
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn the_agent_says_what_is_off_and_checks_wildcard_bound_sockets() {
    let sb = Sandbox::new("compat-run");
    let agent = Agent::start(&sb);
    let log = agent.log.join("\n");
    assert!(log.contains("race protection is off"), "{log}");
    assert!(log.contains("the fast path is off"), "{log}");
    assert!(log.contains(expected_why()), "{log}");
    let status = sb.status();
    assert_eq!(
        status["attachments"][0]["kernel_mode"], "compat",
        "{status}"
    );
    let got = sb.py(r#"
        warm = udp(bind=("0.0.0.0", 3999)); warm.connect(("127.0.0.1", 3998)); warm.close()
        time.sleep(0.5)
        a = udp(bind=("0.0.0.0", 4444)); out(conn(a, P))
        b = udp(bind=("0.0.0.0", 4444)); out(conn(b, P))
        c = udp(bind=("0.0.0.0", 4444)); out(conn(c, ("127.0.0.1", 1112)))
        out(receiver([a, b], P))
        "#);
    if netns_cookies() {
        // The route mirror needs no atomics: wildcard-bound duplicates are refused.
        assert_eq!(got, ["ok", "EPERM", "ok", "0"]);
    } else {
        // No route mirror: wildcard-bound sockets pass, counted, as the log and status say.
        assert_eq!(got, ["ok", "ok", "ok", "1"]);
        let passed = sb.counter("wildcard") + sb.counter("wildcard_new_netns");
        assert!(passed >= 3, "{}", sb.status());
        assert!(status.to_string().contains("SO_NETNS_COOKIE"), "{status}");
    }
    assert_eq!(sb.counter("indexed"), 0, "no fast path in this mode");
    drop(agent);
    assert_eq!(
        sb.status()["attachments"],
        serde_json::json!([]),
        "run attached, so it detaches on exit"
    );
}

#[test]
fn unforced_the_probe_picks_the_build() {
    let sb = Sandbox::new("compat-probe");
    let said = sb.attach(&[]);
    let status = sb.status();
    let a = &status["attachments"][0];
    assert_eq!(a["kernel_mode_forced"], false, "{status}");
    if must_force() {
        // The kernel has the atomics: claims and the fast path, as on the host.
        assert_ne!(a["kernel_mode"], "compat", "{said}\n{status}");
        assert!(!said.contains("race protection is off"), "{said}");
    } else {
        assert_eq!(a["kernel_mode"], "compat", "{said}\n{status}");
        assert!(said.contains(expected_why()), "{said}");
    }
    assert_eq!(sb.py(SEED), ["ok", "EPERM", "0"]);
}
