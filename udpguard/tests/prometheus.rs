//! What Prometheus' own tools make of a live agent's metrics (needs root: each test attaches
//! the guard to its own sandbox cgroup, and `promtool`, which scripts/setup.sh installs).
//!
//! - the classic text (the default of `/metrics` and of `udpguard metrics`) passes
//!   `promtool check metrics`, Prometheus' linter of that format;
//! - the OpenMetrics text (asked for with `Accept: application/openmetrics-text`, or
//!   `udpguard metrics --openmetrics`) is read by Prometheus' own OpenMetrics parser, through
//!   `promtool tsdb create-blocks-from openmetrics` (`check metrics` reads only the classic
//!   format: it reports every OpenMetrics counter as "no help text", since an OpenMetrics
//!   counter's family is named without the `_total` its samples carry);
//! - links removed by someone else are noticed, re-attached and counted.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, Sandbox, require_root};

/// A port on 127.0.0.1 nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` with `accept`; returns the content type and the body.
fn get(port: u16, accept: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => panic!("the agent serves no metrics: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-type:")
                .then(|| l[13..].trim().to_owned())
        })
        .expect("a Content-Type");
    (content_type, body.to_owned())
}

/// Runs promtool with `args` and `input` on stdin; returns its exit code and its output.
fn promtool(args: &[&str], input: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (scripts/setup.sh installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `promtool check metrics` on classic text: exit 0 and not one complaint.
fn check_classic(text: &str) {
    let (code, out) = promtool(&["check", "metrics"], text);
    eprintln!("promtool check metrics: exit {code}, output {out:?}");
    assert_eq!((code, out.as_str()), (0, ""), "on:\n{text}");
}

/// Prometheus' OpenMetrics parser on `text`: `promtool tsdb create-blocks-from openmetrics`
/// (which wants a timestamp on every sample: one is added, the text is otherwise as served).
fn check_openmetrics(text: &str) {
    assert!(text.ends_with("# EOF\n"));
    let dir = std::env::temp_dir().join(format!("udpguard-om-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamped: String = text
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{l}\n")
            } else {
                format!("{l} {now}\n")
            }
        })
        .collect();
    let input = dir.join("metrics.om");
    std::fs::write(&input, stamped).unwrap();
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(dir.join("blocks"))
        .output()
        .expect("running promtool");
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "promtool tsdb create-blocks-from openmetrics: exit {:?}\n{}{said}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.status.success(), "{said} on:\n{text}");
}

#[test]
fn a_live_agents_metrics_pass_promtool_in_both_formats() {
    require_root();
    let sb = Sandbox::new("promtool");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _agent = Agent::start_with(&sb, &["--metrics-addr", &addr]);
    // Something to count: a refused duplicate.
    sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
        "#);

    let (content_type, classic) = get(port, "text/plain;version=0.0.4");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    check_classic(&classic);
    for series in [
        "udpguard_build_info{",
        "udpguard_agent_heartbeat_age_seconds ",
        "udpguard_agent_mirrored_namespaces ",
        "udpguard_reattach_total ",
        "udpguard_claims{",
        "udpguard_claim_capacity{",
        "udpguard_fast_path_namespaces{",
        "udpguard_stale_claims_total{",
        "udpguard_connects_indexed_total{",
        "udpguard_link_attached{",
    ] {
        assert!(
            classic.lines().any(|l| l.starts_with(series)),
            "no {series} in\n{classic}"
        );
    }

    let (content_type, openmetrics) = get(
        port,
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    );
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    check_openmetrics(&openmetrics);

    // The CLI, both formats.
    check_classic(&sb.udpguard_ok(&["metrics"]));
    check_openmetrics(&sb.udpguard_ok(&["metrics", "--openmetrics"]));
}

#[test]
fn links_removed_by_someone_else_are_reported_and_reattached() {
    require_root();
    let sb = Sandbox::new("relink");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _agent = Agent::start_with(&sb, &["--metrics-addr", &addr]);
    let pin = |name: &str| {
        let dir = sb.status()["attachments"][0]["pin_dir"]
            .as_str()
            .unwrap()
            .to_owned();
        std::path::Path::new(&dir).join(name)
    };
    // Someone else detaches the connect4 link (as `bpftool link detach` or another agent's
    // sweep of the cgroup's programs would): the program stops running at once.
    let link = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin("connect4"))
        .output()
        .expect("running bpftool");
    let info: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap();
    let id = info["id"].as_u64().expect("the link's id").to_string();
    let detached = Command::new("bpftool")
        .args(["link", "detach", "id", &id])
        .output()
        .unwrap();
    assert!(
        detached.status.success(),
        "bpftool link detach: {}",
        String::from_utf8_lossy(&detached.stderr)
    );

    // Within a few seconds the agent has put a new link in its place, and counted it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = get(port, "text/plain");
        if text.lines().any(|l| l == "udpguard_reattach_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "not re-attached:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = sb.status();
    assert_eq!(
        status["attachments"][0]["links"]["connect4"], "attached",
        "{status}"
    );
    // And the guard refuses a duplicate again.
    let got = sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
        "#);
    assert_eq!(got, ["ok", "EPERM"]);
}

#[test]
fn status_says_when_links_were_removed_by_someone_else() {
    require_root();
    let sb = Sandbox::new("removed");
    sb.attach(&[]);
    let dir = sb.status()["attachments"][0]["pin_dir"]
        .as_str()
        .unwrap()
        .to_owned();
    let link = udpguard::sys::bpf::obj_get(&std::path::Path::new(&dir).join("connect6")).unwrap();
    udpguard::sys::bpf::link_detach(&link).unwrap();
    let out = sb.udpguard(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "not whole: exit 3\n{text}");
    assert!(
        text.contains("LINKS REMOVED BY SOMEONE ELSE: connect6"),
        "{text}"
    );
    assert_eq!(
        sb.status()["attachments"][0]["links"]["connect6"],
        "removed"
    );
}

#[test]
fn the_agent_exports_what_its_periodic_scan_finds() {
    require_root();
    let sb = Sandbox::new("scanexport");
    // Two sockets on one 4-tuple, made outside the guarded cgroup (as before the guard, or
    // outside it): one of them starves.
    let mut holder = sb
        .command("python3", false)
        .arg("-c")
        .arg(format!(
            "{}\nimport sys\n\
             a = udp(bind=('127.0.0.1', 4444)); conn(a, P)\n\
             b = udp(bind=('127.0.0.1', 4444)); conn(b, P)\n\
             out('ready')\n\
             sys.stdin.read()\n",
            include_str!("common/sockets.py")
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _agent = Agent::start_with(&sb, &["--metrics-addr", &addr, "--scan-interval", "1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (_, text) = get(port, "text/plain");
        if text
            .lines()
            .any(|l| l.starts_with("udpguard_scan_duration_seconds "))
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no scan exported:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let value = |prefix: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let starving: f64 = value("udpguard_scan_starving_sockets{").iter().sum();
    let duplicates: f64 = value("udpguard_scan_duplicate_tuples{").iter().sum();
    assert!(starving >= 1.0 && duplicates >= 1.0, "{text}");
    eprintln!(
        "scan: {} sockets in {} namespaces in {} s",
        value("udpguard_scan_sockets ")[0],
        value("udpguard_scan_namespaces ")[0],
        value("udpguard_scan_duration_seconds ")[0]
    );
    check_classic(&text);
    let _ = holder.kill();
    let _ = holder.wait();
}
