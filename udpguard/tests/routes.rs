//! The route mirror, for wildcard-bound sockets (issue 5): with `udpguard run` mirroring the
//! routes, a socket bound to 0.0.0.0 / [::] is checked on the source the kernel will choose, and never refused on a
//! guess: without the agent, or before a namespace is loaded, it passes and is counted.
mod common;

use std::time::{Duration, Instant};

use common::{Agent, Sandbox};

/// Makes the agent load the sandbox's namespace (its first wildcard connect reports it), and
/// waits until the namespace is covered.
const WARM_UP: &str = r#"
    warm = udp(bind=("0.0.0.0", 3999)); warm.connect(("127.0.0.1", 3998)); warm.close()
    time.sleep(0.5)
"#;

/// A scenario that runs after [`WARM_UP`].
fn warmed(scenario: &str) -> String {
    format!("{}\n{}", common::dedent(WARM_UP), common::dedent(scenario))
}

#[test]
fn wildcard_duplicates_are_refused_ipv4_ipv6_and_dual_stack() {
    let sb = Sandbox::new("wild-dup");
    let _agent = Agent::start(&sb);
    let got = sb.py(&warmed(
        r#"
        a = udp(bind=("0.0.0.0", 4444)); out(conn(a, P), a.getsockname()[0])
        b = udp(bind=("0.0.0.0", 4444)); out(conn(b, P))
        x = udp(bind=("::", 4555), family=6); out(conn(x, ("::1", 1111)))
        y = udp(bind=("::", 4555), family=6); out(conn(y, ("::1", 1111)))
        m = udp(bind=("::", 4666), family=6, v6only=False); out(conn(m, ("::ffff:127.0.0.1", 1111)))
        n = udp(bind=("0.0.0.0", 4666)); out(conn(n, P))
        o = udp(bind=("::", 4666), family=6, v6only=False); out(conn(o, ("::ffff:127.0.0.1", 1111)))
        out(receiver([a, b], P))
        "#,
    ));
    assert_eq!(
        got,
        [
            "ok 127.0.0.1",
            "EPERM",
            "ok",
            "EPERM",
            "ok",
            "EPERM",
            "EPERM",
            "0"
        ]
    );
    assert_eq!(sb.counter("wildcard_new_netns"), 1);
}

#[test]
fn the_near_miss_and_other_sources_are_allowed() {
    let sb = Sandbox::new("wild-near");
    let _agent = Agent::start(&sb);
    let got = sb.py(&warmed(
        r#"
        # An explicit 127.0.0.14:4801 holder does not stop a wildcard socket on port 4801
        # whose route to P uses 127.0.0.1.
        n = udp(bind=("127.0.0.14", 4801)); out(conn(n, P))
        w = udp(bind=("0.0.0.0", 4801)); out(conn(w, P), w.getsockname()[0])
        # Other peers and other ports on the wildcard are neighbours too.
        v = udp(bind=("0.0.0.0", 4801)); out(conn(v, ("127.0.0.1", 1112)))
        u = udp(bind=("0.0.0.0", 4802)); out(conn(u, P))
        "#,
    ));
    assert_eq!(got, ["ok", "ok 127.0.0.1", "ok", "ok"]);
    assert_eq!(sb.counter("rejected"), 0);
}

#[test]
fn specific_then_wildcard_and_wildcard_then_specific_are_refused() {
    let sb = Sandbox::new("wild-mixed");
    let _agent = Agent::start(&sb);
    let got = sb.py(&warmed(
        r#"
        s = udp(bind=("127.0.0.1", 4444)); out(conn(s, P))
        w = udp(bind=("0.0.0.0", 4444)); out(conn(w, P))
        w2 = udp(bind=("0.0.0.0", 5555)); out(conn(w2, P))
        s2 = udp(bind=("127.0.0.1", 5555)); out(conn(s2, P))
        "#,
    ));
    assert_eq!(got, ["ok", "EPERM", "ok", "EPERM"]);
}

#[test]
fn routes_and_addresses_added_while_running_are_covered() {
    let sb = Sandbox::new("wild-live");
    let _agent = Agent::start(&sb);
    sb.py(WARM_UP);
    sb.ip(&[
        "route",
        "add",
        "10.77.0.0/24",
        "dev",
        "lo",
        "src",
        "127.0.0.2",
    ])
    .unwrap();
    sb.ip(&["addr", "add", "10.88.0.1/24", "dev", "lo"])
        .unwrap();
    let scenario = r#"
        h = udp(bind=("127.0.0.2", 4444)); r1 = conn(h, ("10.77.0.5", 1111))
        w = udp(bind=("0.0.0.0", 4444)); r2 = conn(w, ("10.77.0.5", 1111))
        g = udp(bind=("10.88.0.1", 4444)); r3 = conn(g, ("10.88.0.7", 1111))
        v = udp(bind=("0.0.0.0", 4444)); r4 = conn(v, ("10.88.0.7", 1111))
        out(r1, r2, r3, r4)
    "#;
    // Covered within a second or two (poll: a change takes a notification and a re-read).
    let deadline = Instant::now() + Duration::from_secs(2);
    let got = loop {
        let got = sb.py(scenario);
        if got == ["ok EPERM ok EPERM"] || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(got, ["ok EPERM ok EPERM"]);

    // The route's source changes: the mirror follows, and the old holder is a near-miss now.
    sb.ip(&[
        "route",
        "change",
        "10.77.0.0/24",
        "dev",
        "lo",
        "src",
        "127.0.0.3",
    ])
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let got = sb.py(r#"
        h = udp(bind=("127.0.0.2", 4444)); out(conn(h, ("10.77.0.5", 1111)))
        w = udp(bind=("0.0.0.0", 4444)); out(conn(w, ("10.77.0.5", 1111)), w.getsockname()[0])
        "#);
    assert_eq!(got, ["ok", "ok 127.0.0.3"]);
}

#[test]
fn a_new_namespace_is_covered_after_its_first_connect() {
    let sb = Sandbox::new("wild-newns");
    let _agent = Agent::start(&sb);
    let got = sb.py(r#"
        # The first wildcard connect reports the namespace and passes, counted.
        a = udp(bind=("0.0.0.0", 4444)); out(conn(a, P))
        b = udp(bind=("0.0.0.0", 4444)); out(conn(b, P))
        a.close(); b.close()
        time.sleep(0.5)
        c = udp(bind=("0.0.0.0", 4444)); out(conn(c, P))
        d = udp(bind=("0.0.0.0", 4444)); out(conn(d, P))
        "#);
    // The second connect comes a moment after the first: the agent may have loaded the
    // namespace already (it wakes on the report), or not.
    assert_eq!(got[0], "ok");
    assert!(got[1] == "ok" || got[1] == "EPERM", "{got:?}");
    assert_eq!(got[2..], ["ok", "EPERM"]);
    assert!(sb.counter("wildcard_new_netns") >= 1);
}

#[test]
fn without_a_live_agent_wildcard_connects_are_never_refused() {
    let sb = Sandbox::new("wild-noagent");
    sb.attach(&[]);
    // Attach-only: no route data at all.
    let dup = r#"
        a = udp(bind=("0.0.0.0", 4444)); b = udp(bind=("0.0.0.0", 4444))
        out(conn(a, P), conn(b, P))
    "#;
    assert_eq!(sb.py(dup), ["ok ok"]);
    assert_eq!(sb.counter("wildcard"), 2);

    // An agent that ran and stopped leaves nothing the kernel would trust.
    {
        let _agent = Agent::start(&sb);
        assert_eq!(sb.py(&warmed(dup))[0], "ok EPERM");
    }
    assert_eq!(sb.py(dup), ["ok ok"]);
    assert!(sb.counter("wildcard") >= 4);
}

#[test]
fn policy_routing_is_not_modelled_and_passes() {
    let sb = Sandbox::new("wild-policy");
    sb.ip(&["rule", "add", "fwmark", "7", "table", "100"])
        .unwrap();
    let _agent = Agent::start(&sb);
    let got = sb.py(&warmed(
        r#"
        a = udp(bind=("0.0.0.0", 4444)); b = udp(bind=("0.0.0.0", 4444))
        out(conn(a, P), conn(b, P))
        "#,
    ));
    assert_eq!(got, ["ok ok"]);
    assert!(sb.counter("wildcard_unmodeled") >= 2);
}

#[test]
fn wildcard_ipv6_to_an_address_of_the_host_is_checked_on_the_source_the_kernel_picks() {
    let sb = Sandbox::new("wild-host6");
    sb.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"])
        .unwrap();
    for dev in ["va", "vb"] {
        sb.ip(&["link", "set", dev, "up"]).unwrap();
    }
    for (addr, dev) in [
        ("fd01::1/64", "va"),
        ("fd01::7/64", "va"),
        ("fd02::5/64", "vb"),
    ] {
        sb.ip(&["addr", "add", addr, "dev", dev, "nodad"]).unwrap();
    }
    let _agent = Agent::start(&sb);
    // To an address of the host the kernel answers from that address (RFC 6724, rule 1): a
    // second wildcard socket, and a socket bound to that source, are duplicates. To a remote
    // peer with several candidate sources the mirror cannot be sure (rule 8 and on): let
    // through, counted as not checked.
    let got = sb.py(&warmed(
        r#"
        port = 5000
        for dst in ["::1", "fd00::1", "fd00::2", "fd01::1", "fd01::7", "fd02::5", "fd01::99"]:
            port += 1
            a = udp(bind=("::", port), family=6); r1 = conn(a, (dst, 53)); src = a.getsockname()[0]
            b = udp(bind=("::", port), family=6); r2 = conn(b, (dst, 53))
            c = udp(bind=(src, port), family=6); r3 = conn(c, (dst, 53))
            out(dst, src, r1, r2, r3)
        "#,
    ));
    assert_eq!(
        got,
        [
            "::1 ::1 ok EPERM EPERM",
            "fd00::1 fd00::1 ok EPERM EPERM",
            "fd00::2 fd00::2 ok EPERM EPERM",
            "fd01::1 fd01::1 ok EPERM EPERM",
            "fd01::7 fd01::7 ok EPERM EPERM",
            "fd02::5 fd02::5 ok EPERM EPERM",
            "fd01::99 fd01::7 ok ok EPERM",
        ]
    );
    assert_eq!(sb.counter("wildcard_unmodeled"), 2);
}
