//! The guard against the real kernel. Every rule is proved both ways: it refuses the conflict
//! and lets the legitimate neighbour through. Needs root; each test has its own sandbox.
mod common;

use common::Sandbox;

/// What an attachment puts on its cgroup: connect4, connect6, sock_create and sock_release.
const CGROUP_PROGRAMS: usize = 4;

/// The seed's two sockets: both bound to 127.0.0.1:4444 and connected to 127.0.0.1:1111.
const SEED: &str = r#"
    a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
    b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
    out(receiver([a, b], P))
"#;

#[test]
fn without_the_guard_the_seed_duplicates_and_the_older_socket_starves() {
    let sb = Sandbox::new("control");
    // Both connects succeed and only the newer socket (index 1) receives: the hazard.
    assert_eq!(sb.py(SEED), ["ok", "ok", "1"]);
}

#[test]
fn the_seed_duplicate_is_refused_after_the_cli_exits() {
    let sb = Sandbox::new("seed");
    let said = sb.attach(&[]);
    assert!(said.contains("attached to"), "{said}");
    // The CLI has exited: the pinned links keep enforcing. The holder keeps its traffic.
    assert_eq!(sb.py(SEED), ["ok", "EPERM", "0"]);
    assert_eq!(sb.counter("rejected"), 1);
    assert_eq!(sb.counter("checked"), 2);
}

#[test]
fn another_peer_or_another_local_address_is_allowed() {
    let sb = Sandbox::new("neighbours");
    sb.attach(&[]);
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, ("127.0.0.1", 1112)))
        c = udp(bind=("127.0.0.1", 4444)); out(conn(c, ("127.0.0.2", 1111)))
        d = udp(bind=("127.0.0.3", 4444)); out(conn(d, P))
        e = udp(bind=("127.0.0.1", 4444)); out(conn(e, P))
        "#);
    assert_eq!(got, ["ok", "ok", "ok", "ok", "EPERM"]);
}

#[test]
fn the_tuple_is_free_again_once_its_holder_moved_away_or_closed() {
    let sb = Sandbox::new("moved");
    sb.attach(&[]);
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
        out(conn(a, ("127.0.0.1", 2222)))
        out(conn(b, P))
        c = udp(bind=("127.0.0.1", 4444)); out(conn(c, P))
        b.close()
        out(conn(c, P))
        "#);
    assert_eq!(got, ["ok", "EPERM", "ok", "ok", "EPERM", "ok"]);
}

#[test]
fn a_socket_without_a_reuse_option_holds_its_port_alone_and_is_not_looked_up() {
    let sb = Sandbox::new("unshared");
    sb.attach(&[]);
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444), reuse=False); out(conn(a, P))
        out(bind(udp(reuse=False), ("127.0.0.1", 4444)), bind(udp(), ("127.0.0.1", 4444)))
        c = udp(bind=("127.0.0.1", 4445), reuse=False); out(conn(c, P))
        d = udp(bind=("0.0.0.0", 4446), reuse=False); out(conn(d, P))
        e = udp(bind=("::1", 4447), family=6, reuse=False); out(conn(e, ("::1", 1111)))
        "#);
    // The kernel itself refuses anyone else the port, with or without a reuse option.
    assert_eq!(got, ["ok", "EADDRINUSE EADDRINUSE", "ok", "ok", "ok"]);
    assert_eq!(sb.counter("unshared"), 4);
    assert_eq!(sb.counter("checked"), 0);
}

#[test]
fn a_socket_that_cleared_its_reuse_option_after_binding_is_still_refused_its_neighbours_tuple() {
    let sb = Sandbox::new("unshared-toggle");
    sb.attach(&[]);
    // As an adversary would take a victim's tuple: bind its port with SO_REUSEADDR, clear the
    // option, connect to its peer. Connecting after the victim, the port is one a shared
    // socket connected from: checked in full, refused.
    let got = sb.py(r#"
        victim = udp(bind=("127.0.0.1", 4444)); out(conn(victim, P))
        a = udp(bind=("127.0.0.1", 4444))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        out(conn(a, P), conn(a, ("127.0.0.1", 1112)))
        "#);
    assert_eq!(
        got,
        ["ok", "EPERM ok"],
        "the same socket may take another peer"
    );
    // Connecting before its neighbour, it holds the tuple without a claim; the neighbour is
    // looked up, and refused.
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 5444)); b = udp(bind=("127.0.0.1", 5444))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        out(conn(a, P), conn(b, P))
        "#);
    assert_eq!(got, ["ok EPERM"]);
    assert_eq!(
        sb.counter("unshared"),
        1,
        "only the first connect from 5444"
    );
}

/// Without BTF the programs read the reuse options with `bpf_getsockopt`: rule 2 holds the
/// same, both ways round (forced here on a kernel with BTF).
#[test]
fn the_reuse_options_read_by_getsockopt_decide_the_same() {
    let sb = Sandbox::new("unshared-getsockopt");
    let cgroup = sb.cgroup.to_str().unwrap();
    let out = sb
        .udpguard_command()
        .env(udpguard::loader::REUSE_BY_GETSOCKOPT_ENV, "1")
        .args(["attach", "--cgroup", cgroup])
        .output()
        .expect("running udpguard");
    assert!(out.status.success(), "{out:?}");
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444), reuse=False); out(conn(a, P))
        victim = udp(bind=("127.0.0.1", 5444)); out(conn(victim, P))
        b = udp(bind=("127.0.0.1", 5444))
        out(conn(b, P))
        b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        out(conn(b, P), conn(b, ("127.0.0.1", 1112)))
        c = udp(bind=("127.0.0.1", 6444), reuseport=True); d = udp(bind=("127.0.0.1", 6444), reuse=False, reuseport=True)
        out(conn(c, P), conn(d, P))
        "#);
    assert_eq!(got, ["ok", "ok", "EPERM", "EPERM ok", "ok EPERM"]);
    // a, and nothing else: b's and d's options (or port) sent them to the full check.
    assert_eq!(sb.counter("unshared"), 1);
}

#[test]
fn a_socket_that_cleared_its_reuse_option_beside_one_connected_before_the_attach_is_counted_unshared()
 {
    // The limit the README states: the guard never saw the holder connect, so its port is not
    // noted as shared. Let through, and counted unshared, never checked.
    let sb = Sandbox::new("unshared-before");
    let _holder = common::Holder::start(&sb, true);
    sb.attach(&[]);
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        out(conn(a, P))
        "#);
    assert_eq!(got, ["ok"]);
    assert_eq!((sb.counter("unshared"), sb.counter("checked")), (1, 0));
}

#[test]
fn a_socket_may_reconnect_to_the_peer_it_already_has() {
    let sb = Sandbox::new("reconnect");
    sb.attach(&[]);
    let got = sb.py(
        r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P)); out(conn(a, P))
        b = udp(bind=("::1", 4444), family=6); out(conn(b, ("::1", 1111))); out(conn(b, ("::1", 1111)))
        c = udp(bind=("127.0.0.1", 4444)); out(conn(c, P))
        "#,
    );
    assert_eq!(got, ["ok", "ok", "ok", "ok", "EPERM"]);
}

#[test]
fn reconnecting_to_its_own_peer_is_allowed_even_beside_an_older_duplicate() {
    let sb = Sandbox::new("olddup");
    // A duplicate made before the guard: a and b share the tuple. Attach while they live.
    let got = sb.py(&format!(
        r#"
        import subprocess
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
        r = subprocess.run(["{}", "attach", "--cgroup", "{}"], capture_output=True)
        out(r.returncode)
        out(conn(a, P)); out(conn(b, P))
        c = udp(bind=("127.0.0.1", 4444)); out(conn(c, P))
        "#,
        common::UDPGUARD,
        sb.cgroup.display()
    ));
    assert_eq!(got, ["ok", "ok", "0", "ok", "ok", "EPERM"]);
}

#[test]
fn ipv6_conflicts_are_refused_and_neighbours_allowed() {
    let sb = Sandbox::new("ipv6");
    sb.attach(&[]);
    let got = sb.py(r#"
        Q = ("::1", 1111)
        a = udp(bind=("::1", 4444), family=6); out(conn(a, Q))
        b = udp(bind=("::1", 4444), family=6); out(conn(b, Q))
        c = udp(bind=("::1", 4444), family=6); out(conn(c, ("::1", 1112)))
        d = udp(bind=("fd00::1", 4444), family=6); out(conn(d, Q))
        e = udp(bind=("::1", 4444), family=6); out(conn(e, ("fd00::2", 1111)))
        out(receiver([a, b], Q, family=6))
        "#);
    assert_eq!(got, ["ok", "EPERM", "ok", "ok", "ok", "0"]);
}

#[test]
fn v4_mapped_and_af_inet_sockets_conflict_in_both_orders() {
    let sb = Sandbox::new("mapped");
    sb.attach(&[]);
    let got = sb.py(
        r#"
        M = ("::ffff:127.0.0.1", 1111)
        # AF_INET holder, then a mapped AF_INET6 newcomer (runs connect6).
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("::ffff:127.0.0.1", 4444), family=6, v6only=False); out(conn(b, M))
        # Mapped AF_INET6 holder, then an AF_INET newcomer (runs connect4).
        c = udp(bind=("::ffff:127.0.0.1", 5555), family=6, v6only=False); out(conn(c, ("::ffff:127.0.0.1", 2222)))
        d = udp(bind=("127.0.0.1", 5555)); out(conn(d, ("127.0.0.1", 2222)))
        # An AF_INET6 socket given a plain AF_INET sockaddr (connect4 with family AF_INET6).
        e = udp(bind=("::ffff:127.0.0.1", 4444), family=6, v6only=False); out(conn_sockaddr_in(e, "127.0.0.1", 1111))
        # The mapped neighbours: another peer, another local address.
        f = udp(bind=("::ffff:127.0.0.1", 4444), family=6, v6only=False); out(conn(f, ("::ffff:127.0.0.1", 1112)))
        g = udp(bind=("::ffff:127.0.0.5", 4444), family=6, v6only=False); out(conn(g, M))
        h = udp(bind=("::ffff:127.0.0.1", 4444), family=6, v6only=False); out(conn_sockaddr_in(h, "127.0.0.1", 1113))
        "#,
    );
    assert_eq!(
        got,
        ["ok", "EPERM", "ok", "EPERM", "EPERM", "ok", "ok", "ok"]
    );
}

#[test]
fn reuseport_groups_are_checked() {
    let sb = Sandbox::new("reuseport");
    sb.attach(&[]);
    let got = sb.py(
        r#"
        group = [udp(bind=("127.0.0.1", 4444), reuseport=True) for _ in range(8)]
        out(conn(group[3], P))
        out(conn(group[5], P))
        out(",".join(conn(s, ("127.0.0.2", 2000 + i)) for i, s in enumerate(group) if i not in (3, 5)))
        out(receiver(group, P))
        "#,
    );
    assert_eq!(got, ["ok", "EPERM", "ok,ok,ok,ok,ok,ok", "3"]);
}

#[test]
fn the_quic_server_pattern_works() {
    let sb = Sandbox::new("quic");
    sb.attach(&[]);
    // An unconnected listener on the port, plus one connected socket per client on it.
    let got = sb.py(r#"
        for bind in (("127.0.0.1", 4443), ("0.0.0.0", 4444)):
            listener = udp(bind=bind)
            clients = [udp(bind=("127.0.0.1", bind[1])) for _ in range(50)]
            out(set(conn(s, ("127.0.0.2", 10000 + i)) for i, s in enumerate(clients)))
            out(conn(udp(bind=("127.0.0.1", bind[1])), ("127.0.0.2", 10007)))
            out(conn(udp(bind=("127.0.0.1", bind[1])), ("127.0.0.2", 10050)))
        "#);
    assert_eq!(got, ["{'ok'}", "EPERM", "ok", "{'ok'}", "EPERM", "ok"]);
}

/// As a QUIC server with SO_REUSEPORT runs it: clients arrive and leave on the listener's port,
/// each connected to its own peer, and a duplicate is still refused. (With clients connecting
/// concurrently from two processes the kernel's lookup answered with a group member connected
/// to another peer: `benches/quic_shape` reproduces that; this sequential form does not.)
#[test]
fn reuseport_clients_coming_and_going_are_never_refused() {
    let sb = Sandbox::new("quic-reuseport");
    sb.attach(&[]);
    let got = sb.py(r#"
        listener = udp(bind=("127.0.0.1", 4433), reuseport=True)
        live, refused = [], 0
        for i in range(3000):
            s = udp(bind=("127.0.0.1", 4433), reuseport=True)
            if conn(s, ("127.0.0.2", 10000 + i)) != "ok":
                refused += 1
            live.append(s)
            if len(live) > 500:
                live.pop(0).close()
        out(refused)
        out(conn(udp(bind=("127.0.0.1", 4433), reuseport=True), ("127.0.0.2", 10000 + 2999)))
        "#);
    assert_eq!(got, ["0", "EPERM"]);
}

#[test]
fn tcp_and_other_protocols_are_untouched() {
    let sb = Sandbox::new("tcp");
    sb.attach(&[]);
    let got = sb.py(r#"
        srv = socket.socket(); srv.bind(("127.0.0.1", 1111)); srv.listen()
        c1 = socket.socket(); c1.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c1.bind(("127.0.0.1", 4444)); out(conn(c1, P))
        c2 = socket.socket(); c2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c2.bind(("127.0.0.1", 4445)); out(conn(c2, P))
        open("/proc/sys/net/ipv4/ping_group_range", "w").write("0 0")
        ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        out(conn(ping, ("127.0.0.1", 0)))
        "#);
    assert_eq!(got, ["ok", "ok", "ok"]);
    // Not even counted: the guard only looks at UDP.
    assert_eq!(sb.counter("checked"), 0);
}

#[test]
fn processes_outside_the_cgroup_are_untouched() {
    let sb = Sandbox::new("outside");
    sb.attach(&[]);
    assert_eq!(sb.py_outside(SEED), ["ok", "ok", "1"]);
    assert_eq!(sb.counter("checked"), 0);
}

#[test]
fn a_holder_outside_the_cgroup_still_counts() {
    let sb = Sandbox::new("holder-outside");
    sb.attach(&[]);
    // The holder lives outside the guarded cgroup; the newcomer inside is refused.
    let got = sb.py(&format!(
        r#"
        import subprocess
        holder = subprocess.Popen(["python3", "-c", {holder:?}], stdout=subprocess.PIPE, text=True)
        out(holder.stdout.readline().strip())
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
        holder.kill()
        "#,
        holder = "import socket,time\na=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                  a.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                  a.bind(('127.0.0.1',4444)); a.connect(('127.0.0.1',1111))\n\
                  print('held',flush=True); time.sleep(30)"
    ));
    assert_eq!(got, ["held", "EPERM"]);
}

#[test]
fn audit_mode_lets_the_conflict_through_and_counts_it() {
    let sb = Sandbox::new("audit");
    sb.attach(&["--mode", "audit"]);
    assert_eq!(sb.py(SEED), ["ok", "ok", "1"]);
    assert_eq!(sb.counter("audited"), 1);
    assert_eq!(sb.counter("rejected"), 0);
    assert_eq!(sb.status()["attachments"][0]["mode"], "audit");
}

#[test]
fn each_errno_is_what_the_refused_connect_gets() {
    let sb = Sandbox::new("errno");
    for (flag, name) in [
        ("eaddrinuse", "EADDRINUSE"),
        ("eaddrnotavail", "EADDRNOTAVAIL"),
        ("eperm", "EPERM"),
    ] {
        sb.attach(&["--errno", flag]);
        assert_eq!(sb.py(SEED), ["ok", name, "0"], "--errno {flag}");
        assert_eq!(sb.status()["attachments"][0]["errno"], name);
    }
}

#[test]
fn attaching_again_updates_in_place() {
    let sb = Sandbox::new("idempotent");
    sb.attach(&[]);
    let before = sb.status();
    assert_eq!(sb.py(SEED), ["ok", "EPERM", "0"]);
    let said = sb.attach(&["--mode", "audit"]);
    assert!(said.contains("updated"), "{said}");
    let after = sb.status();
    // Same programs, same single pair on the hook, counters kept, new mode applied.
    assert_eq!(
        before["attachments"][0]["programs"],
        after["attachments"][0]["programs"]
    );
    assert_eq!(after["attachments"].as_array().unwrap().len(), 1);
    assert_eq!(sb.attached_programs().len(), CGROUP_PROGRAMS);
    assert_eq!(after["attachments"][0]["counters"]["rejected"], 1);
    assert_eq!(after["attachments"][0]["mode"], "audit");
    assert_eq!(after["attachments"][0]["matches_binary"], true);
    // Mode unchanged when not given again; errno likewise.
    sb.attach(&["--errno", "eaddrinuse"]);
    assert_eq!(sb.status()["attachments"][0]["mode"], "audit");
}

#[test]
fn repeated_attaches_keep_one_attachment_with_the_last_settings() {
    let sb = Sandbox::new("concurrent");
    let cgroup = sb.cgroup.to_str().unwrap().to_owned();
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let errno = if i % 2 == 0 { "eperm" } else { "eaddrinuse" };
            std::process::Command::new(common::UDPGUARD)
                .args(["attach", "--cgroup", &cgroup, "--errno", errno])
                .env("UDPGUARD_PIN_ROOT", &sb.pin_root)
                .output()
                .unwrap()
        })
        .collect();
    for run in &runs {
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    assert_eq!(sb.status()["attachments"].as_array().unwrap().len(), 1);
    assert_eq!(sb.attached_programs().len(), CGROUP_PROGRAMS);
    assert_eq!(sb.py(SEED)[1..], ["EADDRINUSE", "0"]);
}

#[test]
fn concurrent_attaches_in_parallel_processes_do_not_corrupt_state() {
    let sb = Sandbox::new("parallel");
    let cgroup = sb.cgroup.to_str().unwrap().to_owned();
    let children: Vec<_> = (0..6)
        .map(|_| {
            std::process::Command::new(common::UDPGUARD)
                .args(["attach", "--cgroup", &cgroup])
                .env("UDPGUARD_PIN_ROOT", &sb.pin_root)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(sb.status()["attachments"].as_array().unwrap().len(), 1);
    assert_eq!(sb.attached_programs().len(), CGROUP_PROGRAMS);
    assert_eq!(sb.py(SEED), ["ok", "EPERM", "0"]);
}

#[test]
fn an_attachment_from_another_build_is_replaced() {
    let sb = Sandbox::new("replace");
    sb.attach(&["--errno", "eaddrinuse"]);
    let old = sb.status()["attachments"][0]["programs"].clone();
    // Make the pins look foreign: zero the recorded object hash.
    let dir = sb.status()["attachments"][0]["pin_dir"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut args = vec!["map", "update", "pinned"];
    let meta = format!("{dir}/meta");
    args.extend([meta.as_str(), "key", "0", "0", "0", "0", "value"]);
    let zeros = vec!["0"; size_of::<udpguard_common::AttachMeta>()];
    args.extend(zeros.iter().copied());
    assert!(
        std::process::Command::new("bpftool")
            .args(&args)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(sb.status()["attachments"][0]["matches_binary"], false);

    let said = sb.attach(&[]);
    assert!(said.contains("replaced"), "{said}");
    let now = sb.status();
    assert_eq!(now["attachments"][0]["matches_binary"], true);
    assert_ne!(now["attachments"][0]["programs"], old);
    // The old settings carry over; only the new pair is on the hook.
    assert_eq!(now["attachments"][0]["errno"], "EADDRINUSE");
    assert_eq!(sb.attached_programs().len(), CGROUP_PROGRAMS);
    assert_eq!(sb.py(SEED), ["ok", "EADDRINUSE", "0"]);
}

#[test]
fn detach_restores_vanilla_behaviour_and_leaves_no_pins() {
    let sb = Sandbox::new("detach");
    sb.attach(&[]);
    assert_eq!(sb.py(SEED), ["ok", "EPERM", "0"]);
    assert!(sb.detach().contains("detached"));
    assert_eq!(sb.py(SEED), ["ok", "ok", "1"]);
    assert!(sb.attached_programs().is_empty());
    // The pin root keeps only its lock.
    let left: Vec<_> = std::fs::read_dir(&sb.pin_root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name != "lock")
        .collect();
    assert!(left.is_empty(), "pins left: {left:?}");
    assert_eq!(sb.status()["attachments"], serde_json::json!([]));

    // Detaching again is a clear message, not a crash.
    let again = sb.udpguard(&["detach", "--cgroup", sb.cgroup.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("nothing is attached"), "{err}");
}

#[test]
fn detach_all_removes_every_attachment() {
    let sb = Sandbox::new("detach-all");
    let second = sb.cgroup.join("child");
    std::fs::create_dir(&second).unwrap();
    sb.attach(&[]);
    sb.udpguard_ok(&["attach", "--cgroup", second.to_str().unwrap()]);
    assert_eq!(sb.status()["attachments"].as_array().unwrap().len(), 2);
    let said = sb.udpguard_ok(&["detach", "--all"]);
    assert_eq!(said.lines().count(), 2, "{said}");
    assert_eq!(sb.status()["attachments"], serde_json::json!([]));
    assert!(sb.attached_programs().is_empty());
    std::fs::remove_dir(&second).unwrap();
}

#[test]
fn wildcard_and_autobound_sockets_are_counted_not_checked() {
    let sb = Sandbox::new("notchecked");
    sb.attach(&[]);
    let got = sb.py(r#"
        a = udp(bind=("0.0.0.0", 4444)); out(conn(a, P))
        b = udp(bind=("::", 4445), family=6); out(conn(b, ("fd00::2", 1111)))
        c = udp(); out(conn(c, P))
        d = udp(bind=("fd00::1", 4446), family=6); out(conn(d, ("::ffff:127.0.0.1", 1111)))
        "#);
    // Never refused on a guess; the kernel itself refuses d (IPv6-bound, IPv4 peer).
    assert_eq!(got, ["ok", "ok", "ok", "ENETUNREACH"]);
    assert_eq!(sb.counter("wildcard"), 2);
    assert_eq!(sb.counter("autobind"), 1);
    assert_eq!(sb.counter("family_mismatch"), 1);
    assert_eq!(sb.counter("checked"), 0);
}

#[test]
fn bad_input_gets_a_message_that_says_what_to_do() {
    let sb = Sandbox::new("badinput");
    let missing = sb.udpguard(&[
        "attach",
        "--cgroup",
        "/sys/fs/cgroup/no/such/udpguard-cgroup",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("/sys/fs/cgroup/no/such/udpguard-cgroup") && err.contains("does not exist"),
        "{err}"
    );

    let not_cgroup = sb.udpguard(&["attach", "--cgroup", "/tmp"]);
    assert_eq!(not_cgroup.status.code(), Some(1));
    let err = String::from_utf8_lossy(&not_cgroup.stderr);
    assert!(err.contains("not a cgroup v2 directory"), "{err}");

    let bad_mode = sb.udpguard(&["attach", "--mode", "strict"]);
    assert_eq!(bad_mode.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_mode.stderr).contains("possible values"));

    // Not root: setpriv drops to nobody with no capabilities.
    let unprivileged = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(common::UDPGUARD)
        .args(["attach", "--cgroup", sb.cgroup.to_str().unwrap()])
        .env("UDPGUARD_PIN_ROOT", &sb.pin_root)
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(unprivileged.status.code(), Some(1));
    let err = String::from_utf8_lossy(&unprivileged.stderr);
    assert!(err.contains("needs root"), "{err}");
    assert!(sb.status()["attachments"].as_array().unwrap().is_empty());
}

/// 300 auto-bound SO_REUSEADDR sockets connecting to one peer; prints how many local ports
/// ended up shared by two or more of them.
const AUTOBIND_300: &str = r#"
    import collections
    socks = [udp() for _ in range(300)]
    results = set(conn(s, P) for s in socks)
    ports = collections.Counter(s.getsockname()[1] for s in socks)
    out(results, sum(1 for n in ports.values() if n > 1))
    out(socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
"#;

#[test]
fn autobind_unique_gives_every_auto_bound_socket_its_own_port() {
    let sb = Sandbox::new("autobind-unique");
    sb.attach(&["--autobind", "unique"]);
    assert_eq!(sb.status()["attachments"][0]["autobind"], "unique");
    let got = sb.py(AUTOBIND_300);
    // No shared port; the side effect: the application reads SO_REUSEADDR as 0.
    assert_eq!(got, ["{'ok'} 0", "0"]);
    assert_eq!(sb.counter("autobind_unique"), 300);
}

#[test]
fn autobind_allow_changes_nothing() {
    let sb = Sandbox::new("autobind-allow");
    sb.attach(&[]);
    assert_eq!(sb.status()["attachments"][0]["autobind"], "allow");
    let got = sb.py(AUTOBIND_300);
    assert_eq!(got[0].split(' ').next(), Some("{'ok'}"));
    // The flag is left as the application set it.
    assert_eq!(got[1], "1");
    assert_eq!(sb.counter("autobind"), 300);
}

#[test]
fn the_unspecified_peer_is_the_host_itself_as_the_kernel_stores_it() {
    let sb = Sandbox::new("unspecified");
    sb.attach(&[]);
    // connect() to 0.0.0.0 connects to the bound address (or from and to 127.0.0.1, bound to
    // 0.0.0.0); to `::`, to ::1 (127.0.0.1 when bound to a v4-mapped address); to
    // ::ffff:0.0.0.0, as to 0.0.0.0. The duplicate is of the tuple the kernel stores.
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        out(conn(udp(bind=("127.0.0.1", 4444)), ("0.0.0.0", 1111)))
        out(conn(udp(bind=("127.0.0.5", 4444)), ("0.0.0.0", 1111)))
        w = udp(bind=("0.0.0.0", 4445)); out(conn(w, ("0.0.0.0", 1111)), w.getpeername()[0])
        out(conn(udp(bind=("0.0.0.0", 4445)), ("0.0.0.0", 1111)))
        b = udp(bind=("::1", 4444), family=6); out(conn(b, ("::1", 1111)))
        out(conn(udp(bind=("::1", 4444), family=6), ("::", 1111)))
        out(conn(udp(bind=("fd00::1", 4444), family=6), ("::", 1111)))
        M = dict(family=6, v6only=False)
        out(conn(udp(bind=("::ffff:127.0.0.1", 4444), **M), ("::ffff:0.0.0.0", 1111)))
        out(conn(udp(bind=("::ffff:127.0.0.1", 4444), **M), ("::", 1111)))
        out(conn(udp(bind=("::ffff:127.0.0.7", 4444), **M), ("::ffff:0.0.0.0", 1111)))
        "#);
    assert_eq!(
        got,
        [
            "ok",
            "EPERM",
            "ok",
            "ok 127.0.0.1",
            "EPERM",
            "ok",
            "EPERM",
            "ok",
            "EPERM",
            "EPERM",
            "ok"
        ]
    );
    assert_eq!(sb.counter("rejected"), 5);
}

#[test]
fn multicast_and_broadcast_ends_are_never_refused() {
    let sb = Sandbox::new("multicast");
    sb.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"])
        .unwrap();
    sb.attach(&[]);
    // A group receives every datagram sent to it, in every member; none comes from a group:
    // two sockets sharing such a tuple starve nobody.
    let got = sb.py(r#"
        def pair(local, peer, broadcast=False):
            a, b = udp(bind=local), udp(bind=local)
            for s in (a, b):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, int(broadcast))
            return conn(a, peer), conn(b, peer), a, b
        kept = []
        for local, peer, bc in [(("239.1.1.1", 5000), P, False),
                                (("127.0.0.1", 5001), ("239.2.2.2", 5002), False),
                                (("127.0.0.1", 5003), ("255.255.255.255", 5004), True),
                                # The unicast neighbour is still checked.
                                (("127.0.0.1", 5005), P, False)]:
            x, y, a, b = pair(local, peer, bc); kept += [a, b]; out(x, y)
        "#);
    assert_eq!(got, ["ok ok", "ok ok", "ok ok", "ok EPERM"]);
    assert_eq!(sb.counter("multicast"), 6);
}

/// Two veth devices in the sandbox's namespace, `va` and `vb`, each with a route to
/// 10.9.9.9 (the peer), and the local address 10.9.0.1 on `va`.
fn two_devices(sb: &Sandbox) {
    sb.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"])
        .unwrap();
    for dev in ["va", "vb"] {
        sb.ip(&["link", "set", dev, "up"]).unwrap();
    }
    sb.ip(&["addr", "add", "10.9.0.1/24", "dev", "va"]).unwrap();
    sb.ip(&["route", "add", "10.9.9.9/32", "dev", "va"])
        .unwrap();
    sb.ip(&["route", "add", "10.9.9.9/32", "dev", "vb", "metric", "10"])
        .unwrap();
}

#[test]
fn device_bound_holders_are_seen_through_their_claims() {
    let sb = Sandbox::new("device");
    two_devices(&sb);
    sb.attach(&[]);
    // The kernel's lookup (from a hook, with no incoming device) cannot see a socket bound to
    // a device: its claim stands for it until it closes or connects elsewhere.
    let got = sb.py(r#"
        Q = ("10.9.9.9", 53)
        h = udp(bind=("10.9.0.1", 4444), device="va"); out(conn(h, Q))
        out(conn(udp(bind=("10.9.0.1", 4444)), Q))
        out(conn(udp(bind=("10.9.0.1", 4444), device="va"), Q))
        # Another device: each socket gets its own device's datagrams.
        out(conn(udp(bind=("10.9.0.1", 4444), device="vb"), Q))
        # An unbound holder, and a device-bound newcomer: the lookup sees the holder.
        u = udp(bind=("10.9.0.1", 4445)); out(conn(u, Q))
        out(conn(udp(bind=("10.9.0.1", 4445), device="va"), Q))
        # Once the device-bound holder closes, or moves away, the tuple is free.
        h.close()
        n = udp(bind=("10.9.0.1", 4444), device="va"); out(conn(n, Q))
        out(conn(n, ("10.9.9.9", 54)))
        out(conn(udp(bind=("10.9.0.1", 4444), device="va"), Q))
        "#);
    assert_eq!(
        got,
        [
            "ok", "EPERM", "EPERM", "ok", "ok", "EPERM", "ok", "ok", "ok"
        ]
    );
    assert_eq!(sb.counter("rejected"), 3);
}

#[test]
fn link_local_peers_are_checked_where_the_device_is_known() {
    let sb = Sandbox::new("linklocal");
    two_devices(&sb);
    sb.attach(&[]);
    // A connect to a link-local peer binds the socket to the peer's scope, which the hook
    // cannot read: refused where the device is known (bound before), counted as not checked
    // (device_bound) where it is not.
    let got = sb.py(r#"
        va, vb = socket.if_nametoindex("va"), socket.if_nametoindex("vb")
        six = dict(family=6)
        h = udp(bind=("fd00::1", 4444), device="va", **six); out(conn(h, ("fe80::99", 53, 0, va)))
        out(conn(udp(bind=("fd00::1", 4444), device="va", **six), ("fe80::99", 53, 0, va)))
        out(conn(udp(bind=("fd00::1", 4444), device="vb", **six), ("fe80::99", 53, 0, vb)))
        # Bound to no device: its device will be the scope, which the hook cannot read.
        out(conn(udp(bind=("fd00::1", 4444), **six), ("fe80::99", 53, 0, vb)))
        u = udp(bind=("fd00::1", 4445), **six); out(conn(u, ("fe80::99", 53, 0, va)))
        out(u.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode())
        out(conn(udp(bind=("fd00::1", 4445), device="va", **six), ("fe80::99", 53, 0, va)))
        "#);
    // The unknown scopes are let through and counted: refusing them could refuse a peer on
    // another link, which is another peer. Every device-bound connect that goes ahead counts
    // as not checked here: without the agent's index a device-bound socket connected before
    // the attach would be invisible.
    assert_eq!(got, ["ok", "EPERM", "ok", "ok", "ok", "va", "ok"]);
    assert_eq!(sb.counter("rejected"), 1);
    assert_eq!(sb.counter("device_bound"), 5, "{}", sb.status());
}

#[test]
fn status_exit_codes_are_for_probes() {
    let sb = Sandbox::new("probe");
    let code = || sb.udpguard(&["status"]).status.code();
    assert_eq!(code(), Some(1), "nothing attached");
    sb.attach(&[]);
    assert_eq!(code(), Some(0), "attached and whole");
    // Its programs detached behind its back (as another agent pruning foreign programs would).
    let dir = sb.status()["attachments"][0]["pin_dir"]
        .as_str()
        .unwrap()
        .to_owned();
    for pin in ["connect4", "connect6"] {
        std::fs::remove_file(format!("{dir}/{pin}")).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(code(), Some(3), "attached but not whole");
}

/// The kernel verifies at most 1,000,000 instructions a program, walking every path: the
/// guard's stay under a quarter of it (room for kernels whose verifier prunes less, and the
/// time `attach` takes: 349,043 for conn6 was a second of it on a fast host).
#[test]
fn the_programs_verify_well_inside_the_kernels_limit() {
    let sb = Sandbox::new("verifier-budget");
    sb.attach(&[]);
    let ids: Vec<u32> = sb
        .attached_programs()
        .iter()
        .map(|p| p["id"].as_u64().unwrap() as u32)
        .collect();
    assert!(!ids.is_empty());
    let mut seen = 0;
    for info in aya::programs::loaded_programs().flatten() {
        if !ids.contains(&info.id()) {
            continue;
        }
        seen += 1;
        let name = info.name_as_str().unwrap_or("?").to_owned();
        // Counted since Linux 5.16; the older-kernel build has tests of its own (compat.rs).
        let Some(verified) = info.verified_instruction_count() else {
            continue;
        };
        assert!(
            verified <= 250_000,
            "{name}: {verified} instructions verified; see udpguard-ebpf/src/opaque.rs"
        );
        eprintln!("{name}: {verified} instructions verified");
    }
    assert_eq!(seen, ids.len(), "programs {ids:?} not all found loaded");
}
