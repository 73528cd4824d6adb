//! Events, metrics and the agent against the real kernel: every conflict is reported with the
//! right caller, tuple and holder; the counters are scraped over HTTP and parsed by the Python
//! Prometheus client's OpenMetrics parser; `run` attaches or adopts and stops cleanly on
//! SIGTERM. Needs root; each test has its own sandbox, and every child it starts is killed
//! when the test ends, also when it fails.
mod common;

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        LazyLock,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use common::{Sandbox, UDPGUARD};
use serde_json::{Value, json};

const SOCKETS_PY: &str = include_str!("common/sockets.py");

/// How long to wait for a line or an exit before failing: generous, machines are noisy. 30 s,
/// or `UDPGUARD_TEST_PATIENCE` seconds (the kernel matrix's emulated guests are ~10x slower).
static PATIENCE: LazyLock<Duration> = LazyLock::new(|| {
    let secs = std::env::var("UDPGUARD_TEST_PATIENCE").map_or(30, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("UDPGUARD_TEST_PATIENCE={s:?} is not a number of seconds"))
    });
    Duration::from_secs(secs)
});

/// A child process killed (and reaped) when dropped; its output lines arrive on channels.
struct Running {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Running {
    fn start(name: &str, mut command: Command) -> Running {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Running {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    /// The next stdout line, waiting at most [`PATIENCE`].
    fn line(&mut self) -> String {
        self.next_from(true, *PATIENCE).unwrap_or_else(|| {
            panic!(
                "{} printed no line in {:?}; so far:\n{}",
                self.name,
                *PATIENCE,
                self.seen.join("\n")
            )
        })
    }

    /// The next stdout line parsed as JSON.
    fn json_line(&mut self) -> Value {
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Waits for a stderr line containing `text` and returns it.
    fn log_containing(&mut self, text: &str) -> String {
        let deadline = Instant::now() + *PATIENCE;
        while let Some(line) =
            self.next_from(false, deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(text) {
                return line;
            }
        }
        panic!(
            "{} logged no line with {text:?}; so far:\n{}",
            self.name,
            self.seen.join("\n")
        )
    }

    fn next_from(&mut self, stdout: bool, wait: Duration) -> Option<String> {
        let channel = if stdout { &self.stdout } else { &self.stderr };
        match channel.recv_timeout(wait) {
            Ok(line) => {
                self.seen
                    .push(format!("{}{line}", if stdout { "" } else { "[stderr] " }));
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Sends `signal` and waits for the exit; returns the exit code.
    fn stop_with(&mut self, signal: libc::c_int) -> i32 {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + *PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Keep what it printed last for failure messages.
                while self.next_from(false, Duration::from_millis(100)).is_some() {}
                return status.code().unwrap_or_else(|| {
                    panic!(
                        "{} died of a signal: {status}\n{}",
                        self.name,
                        self.seen.join("\n")
                    )
                });
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {:?} of signal {signal}:\n{}",
                self.name,
                *PATIENCE,
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads lines on a thread and hands them over a channel (so waits can be bounded).
fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// `udpguard <args>` with the sandbox's pin root, running until stopped or dropped.
fn udpguard(sb: &Sandbox, args: &[&str]) -> Running {
    // The library sandbox's command (not the helper that runs to completion).
    let mut command = std::ops::Deref::deref(sb).udpguard(UDPGUARD.as_ref());
    command.args(args);
    Running::start(&format!("udpguard {}", args.join(" ")), command)
}

/// A process in the sandbox (cgroup and network namespace) holding one connected socket.
struct Holder {
    pid: u64,
    inode: u64,
    _process: Running,
}

/// Starts a holder of `local` -> `peer` (`family` 4 or 6) and waits until it is connected.
fn hold(sb: &Sandbox, family: u8, local: (&str, u16), peer: (&str, u16)) -> Holder {
    let script = format!(
        "{SOCKETS_PY}\nimport os, sys\n\
         s = udp(bind=({:?}, {}), family={family})\n\
         s.connect(({:?}, {}))\n\
         out(os.getpid(), os.fstat(s.fileno()).st_ino)\n\
         sys.stdin.read()\n",
        local.0, local.1, peer.0, peer.1
    );
    let mut command = sb.command("python3", true);
    command.arg("-c").arg(script);
    let mut process = Running::start("the holder", command);
    let line = process.line();
    let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    let (pid, inode) = (fields.next().unwrap(), fields.next().unwrap());
    Holder {
        pid,
        inode,
        _process: process,
    }
}

/// Runs a scenario in the sandbox that prints its pid first; returns (pid, the other lines).
fn caller(sb: &Sandbox, script: &str) -> (u64, Vec<String>) {
    let mut lines = sb.py(&format!(
        "import os\nout(os.getpid())\n{}",
        common::dedent(script)
    ));
    let pid = lines.remove(0).parse().unwrap();
    (pid, lines)
}

fn cgroup_of(sb: &Sandbox) -> String {
    sb.cgroup.canonicalize().unwrap().display().to_string()
}

/// Fetches `url` (asking for `accept`, when given) and parses it with the Python Prometheus
/// client: its OpenMetrics parser when the text ends with `# EOF`, its classic text parser
/// otherwise. Returns the content type, which parser read it, and `[name, labels, value,
/// family type]` per sample.
const SCRAPE_PY: &str = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic
source, accept = sys.argv[1], sys.argv[2]
if source.startswith("http"):
    request = urllib.request.Request(source, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=20) as r:
        content_type, body = r.headers["Content-Type"], r.read().decode()
else:
    content_type, body = None, sys.stdin.read()
om = body.endswith('# EOF\n')
samples = [[s.name, s.labels, s.value, f.type] for f in (openmetrics if om else classic)(body) for s in f.samples]
print(json.dumps({"content_type": content_type, "openmetrics": om, "samples": samples}))
"#;

/// What the Python parsers make of an exposition, from a URL or (`text`) given directly.
fn parse_exposition(source: &str, text: Option<&str>) -> Value {
    parse_exposition_as(source, text, "")
}

/// [`parse_exposition`], asking for `accept` (a URL's `Accept` header).
fn parse_exposition_as(source: &str, text: Option<&str>, accept: &str) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", SCRAPE_PY, source, accept])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.unwrap_or("").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser failed (scripts/setup.sh installs prometheus-client):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The samples of a parse, as `[name, labels, value]` sorted (what both formats must agree on).
fn values(parsed: &Value) -> Vec<String> {
    let mut all: Vec<String> = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        // What changes by itself between two scrapes: ages, and the periodic scan.
        .filter(|s| {
            let name = s[0].as_str().unwrap();
            !name.contains("_age_seconds") && !name.starts_with("udpguard_scan_")
        })
        .map(|s| format!("{} {} {}", s[0], s[1], s[2]))
        .collect();
    all.sort();
    all
}

/// The value of the sample `name` with `labels` (a subset) among parsed samples.
fn sample(parsed: &Value, name: &str, labels: &Value) -> f64 {
    let matching: Vec<&Value> = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s[0] == name
                && labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| &s[1][k] == v)
        })
        .collect();
    assert_eq!(matching.len(), 1, "one {name} {labels} in {parsed}");
    matching[0][2].as_f64().unwrap()
}

#[test]
fn a_refused_connect_is_reported_with_its_caller_tuple_and_holder() {
    let sb = Sandbox::new("ev-reject");
    sb.attach(&[]);
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut events = udpguard(&sb, &["events", "--cgroup", cgroup, "--json"]);
    let holder = hold(&sb, 4, ("127.0.0.1", 4444), ("127.0.0.1", 1111));
    let (pid, got) = caller(&sb, r#"b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))"#);
    assert_eq!(got, ["EPERM"]);

    let event = events.json_line();
    let time = event["time"].as_str().unwrap().to_owned();
    assert!(
        time.len() == 27 && time.ends_with('Z') && &time[10..11] == "T",
        "RFC 3339 in UTC: {time}"
    );
    // The sandbox's network namespace, as the kernel's cookie (SO_NETNS_COOKIE, 71).
    let netns = sb.py(r#"
        import struct
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out(struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0])
        "#);
    let netns: u64 = netns[0].parse().unwrap();
    assert_eq!(
        event,
        json!({
            "type": "conflict",
            "time": time,
            "action": "rejected",
            "errno": "EPERM",
            "pid": pid,
            "comm": "python3",
            "uid": 0,
            "netns_cookie": netns,
            "cgroup": cgroup_of(&sb),
            "family": "ipv4",
            "local": "127.0.0.1:4444",
            "remote": "127.0.0.1:1111",
            "holder": {"pid": holder.pid, "comm": "python3", "inode": holder.inode},
        })
    );
}

#[test]
fn the_holder_is_named_even_when_the_caller_is_gone() {
    let sb = Sandbox::new("ev-gone");
    sb.attach(&[]);
    let holder = hold(&sb, 4, ("127.0.0.1", 4444), ("127.0.0.1", 1111));
    let (pid, got) = caller(&sb, r#"b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))"#);
    assert_eq!(got, ["EPERM"]);
    // Read only now: the caller has exited, so its namespace is found by its cookie.
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut events = udpguard(&sb, &["events", "--cgroup", cgroup, "--json"]);
    let event = events.json_line();
    assert_eq!(event["pid"], pid);
    assert_eq!(
        event["holder"],
        json!({"pid": holder.pid, "comm": "python3", "inode": holder.inode})
    );
}

#[test]
fn an_ipv6_conflict_in_audit_mode_is_reported_as_audited_naming_the_other_socket() {
    let sb = Sandbox::new("ev-audit");
    sb.attach(&["--mode", "audit"]);
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut events = udpguard(&sb, &["events", "--cgroup", cgroup, "--json"]);
    let holder = hold(&sb, 6, ("::1", 4444), ("::1", 1111));
    // The caller's connect goes through, so two sockets hold the tuple while the event is
    // read: the holder named must be the other one, not the caller's.
    let mut caller = Running::start("the caller", {
        let mut command = sb.command("python3", true);
        command.arg("-c").arg(format!(
            "{SOCKETS_PY}\nimport os, sys\n\
             b = udp(bind=('::1', 4444), family=6)\n\
             out(os.getpid(), conn(b, ('::1', 1111)), os.fstat(b.fileno()).st_ino)\n\
             sys.stdin.read()\n"
        ));
        command
    });
    let said = caller.line();
    let fields: Vec<&str> = said.split_whitespace().collect();
    assert_eq!(fields[1], "ok", "audit mode lets the connect through");
    let caller_inode: u64 = fields[2].parse().unwrap();

    let event = events.json_line();
    assert_eq!(event["action"], "audited");
    assert_eq!(event["errno"], Value::Null);
    assert_eq!(event["pid"].to_string(), fields[0]);
    assert_eq!(event["family"], "ipv6");
    assert_eq!(event["local"], "[::1]:4444");
    assert_eq!(event["remote"], "[::1]:1111");
    assert_eq!(
        event["holder"],
        json!({"pid": holder.pid, "comm": "python3", "inode": holder.inode})
    );
    assert_ne!(holder.inode, caller_inode);
    assert_eq!(sb.counter("audited"), 1);
}

#[test]
fn a_flood_is_shown_as_a_burst_and_summarised_for_people() {
    let sb = Sandbox::new("ev-flood");
    sb.attach(&[]);
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut events = udpguard(&sb, &["events", "--cgroup", cgroup]);
    let holder = hold(&sb, 4, ("127.0.0.1", 4444), ("127.0.0.1", 1111));
    let (pid, got) = caller(
        &sb,
        r#"
        b = udp(bind=("127.0.0.1", 4444))
        out(sorted(set(conn(b, P) for _ in range(200))))
        "#,
    );
    assert_eq!(got, ["['EPERM']"]);

    // However the 200 fall into seconds, every one is shown or counted in a summary.
    let (mut shown, mut summarised) = (0, 0);
    while shown + summarised < 200 {
        let line = events.line();
        if let Some((_, rest)) = line.split_once(' ')
            && let Some((count, _)) = rest.split_once(" more like this in the last second: ")
        {
            summarised += count.parse::<u64>().unwrap();
            continue;
        }
        assert!(
            line.contains(&format!(
                " rejected EPERM  python3[{pid}] 127.0.0.1:4444 -> 127.0.0.1:1111  held by \
                 python3[{}] (socket {})  cgroup {}",
                holder.pid,
                holder.inode,
                cgroup_of(&sb)
            )),
            "{line}"
        );
        shown += 1;
    }
    assert_eq!(shown + summarised, 200);
    assert!(
        summarised > 0,
        "a flood of 200 is summarised: {shown} shown"
    );
    assert!(shown < 200);
}

#[test]
fn run_attaches_streams_serves_metrics_over_http_and_detaches_on_sigterm() {
    let sb = Sandbox::new("run");
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut run = udpguard(
        &sb,
        &[
            "run",
            "--cgroup",
            cgroup,
            "--json",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    run.log_containing("attached to");
    let serving = run.log_containing("serving metrics on ");
    let url = serving
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    assert_eq!(sb.status()["attachments"][0]["mode"], "enforce");

    let labels = json!({"cgroup": cgroup_of(&sb)});
    let before = parse_exposition(&url, None);
    assert_eq!(
        before["content_type"], "text/plain; version=0.0.4; charset=utf-8",
        "classic text unless OpenMetrics is asked for"
    );
    let openmetrics = parse_exposition_as(
        &url,
        None,
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
    );
    assert_eq!(
        openmetrics["content_type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(openmetrics["openmetrics"], true);
    assert_eq!(
        values(&openmetrics),
        values(&before),
        "both formats carry the same samples"
    );
    let holder = hold(&sb, 4, ("127.0.0.1", 4444), ("127.0.0.1", 1111));
    let (pid, got) = caller(&sb, r#"b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))"#);
    assert_eq!(got, ["EPERM"]);

    let event = run.json_line();
    assert_eq!(event["pid"], pid);
    assert_eq!(event["holder"]["pid"], holder.pid);
    let after = parse_exposition(&url, None);
    let rejected = json!({"cgroup": cgroup_of(&sb), "action": "rejected"});
    assert_eq!(
        sample(&after, "udpguard_conflicts_total", &rejected),
        sample(&before, "udpguard_conflicts_total", &rejected) + 1.0
    );
    assert_eq!(
        sample(&after, "udpguard_connects_checked_total", &labels),
        sample(&before, "udpguard_connects_checked_total", &labels) + 2.0,
        "the holder's and the caller's connects were checked"
    );
    assert_eq!(
        sample(
            &after,
            "udpguard_attached",
            &json!({"cgroup": cgroup_of(&sb), "mode": "enforce"})
        ),
        1.0
    );

    assert_eq!(run.stop_with(libc::SIGTERM), 0, "{}", run.seen.join("\n"));
    assert_eq!(
        sb.status()["attachments"],
        json!([]),
        "run attached, so it detaches on exit"
    );
}

#[test]
fn run_adopts_an_existing_attachment_applies_its_mode_and_leaves_it() {
    let sb = Sandbox::new("adopt");
    sb.attach(&[]);
    let programs = sb.status()["attachments"][0]["programs"].clone();
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut run = udpguard(
        &sb,
        &[
            "run",
            "--cgroup",
            cgroup,
            "--mode",
            "audit",
            "--no-metrics",
            "--scan-interval",
            "0",
        ],
    );
    run.log_containing("adopted the attachment");
    let status = sb.status();
    assert_eq!(status["attachments"][0]["mode"], "audit");
    assert_eq!(
        status["attachments"][0]["programs"], programs,
        "the same programs"
    );

    let _holder = hold(&sb, 4, ("127.0.0.1", 4444), ("127.0.0.1", 1111));
    let (_, got) = caller(&sb, r#"b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))"#);
    assert_eq!(got, ["ok"], "audit mode, applied in place");
    assert!(run.line().contains(" audited (let through)  python3["));

    assert_eq!(run.stop_with(libc::SIGTERM), 0, "{}", run.seen.join("\n"));
    let status = sb.status();
    assert_eq!(
        status["attachments"][0]["programs"], programs,
        "left attached"
    );
    assert_eq!(status["attachments"][0]["counters"]["audited"], 1);
}

#[test]
fn run_stops_on_sigint_too() {
    let sb = Sandbox::new("sigint");
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut run = udpguard(
        &sb,
        &[
            "run",
            "--cgroup",
            cgroup,
            "--no-metrics",
            "--scan-interval",
            "0",
        ],
    );
    run.log_containing("attached to");
    assert_eq!(run.stop_with(libc::SIGINT), 0, "{}", run.seen.join("\n"));
    assert_eq!(sb.status()["attachments"], json!([]));
}

#[test]
fn the_metrics_verb_prints_the_pinned_counters_for_a_prometheus_parser() {
    let sb = Sandbox::new("metrics");
    sb.attach(&["--mode", "audit"]);
    sb.py(r#"
        a = udp(bind=("127.0.0.1", 4444)); out(conn(a, P))
        b = udp(bind=("127.0.0.1", 4444)); out(conn(b, P))
        c = udp(bind=("0.0.0.0", 4445)); out(conn(c, P))
        d = udp(); out(conn(d, P))
        "#);
    let text = sb.udpguard_ok(&["metrics"]);
    let parsed = parse_exposition("-", Some(&text));
    let cgroup = cgroup_of(&sb);
    let with = |extra: Value| {
        let mut labels = json!({"cgroup": cgroup});
        labels
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        labels
    };
    let counters = &sb.status()["attachments"][0]["counters"];
    let expect = [
        ("udpguard_connects_checked_total", json!({}), "checked"),
        (
            "udpguard_conflicts_total",
            json!({"action": "rejected"}),
            "rejected",
        ),
        (
            "udpguard_conflicts_total",
            json!({"action": "audited"}),
            "audited",
        ),
        (
            "udpguard_not_checked_total",
            json!({"reason": "wildcard"}),
            "wildcard",
        ),
        (
            "udpguard_not_checked_total",
            json!({"reason": "autobind"}),
            "autobind",
        ),
        (
            "udpguard_not_checked_total",
            json!({"reason": "family_mismatch"}),
            "family_mismatch",
        ),
        ("udpguard_events_lost_total", json!({}), "events_lost"),
    ];
    for (name, labels, counter) in expect {
        assert_eq!(
            sample(&parsed, name, &with(labels)),
            counters[counter].as_f64().unwrap(),
            "{name} is the pinned {counter}:\n{text}"
        );
    }
    assert_eq!(counters["audited"], 1);
    assert_eq!(counters["wildcard"], 1);
    assert_eq!(counters["autobind"], 1);
    assert_eq!(
        sample(
            &parsed,
            "udpguard_attached",
            &with(json!({"mode": "audit"}))
        ),
        1.0
    );
    let types: Vec<(&str, &str)> = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap(), s[3].as_str().unwrap()))
        .collect();
    assert!(
        types
            .iter()
            .all(|(name, kind)| if name.ends_with("_total") {
                *kind == "counter"
            } else {
                *kind == "gauge"
            }),
        "the classic parser reads counters as counters, the rest as gauges: {types:?}"
    );
}

#[test]
fn lost_events_are_counted_when_a_tiny_ring_buffer_overflows() {
    let sb = Sandbox::new("lost");
    sb.attach(&["--events-buffer", "4096"]);
    let _holder = hold(&sb, 4, ("127.0.0.1", 4444), ("127.0.0.1", 1111));
    // Nobody reads the ring buffer meanwhile: 4 KiB holds a few dozen events.
    let (_, got) = caller(
        &sb,
        r#"
        b = udp(bind=("127.0.0.1", 4444))
        out(sorted(set(conn(b, P) for _ in range(300))))
        "#,
    );
    assert_eq!(got, ["['EPERM']"]);
    let lost = sb.counter("events_lost");
    assert_eq!(sb.counter("rejected"), 300);
    assert!(lost > 0, "a 4 KiB ring buffer cannot hold 300 events");

    let parsed = parse_exposition("-", Some(&sb.udpguard_ok(&["metrics"])));
    assert_eq!(
        sample(
            &parsed,
            "udpguard_events_lost_total",
            &json!({"cgroup": cgroup_of(&sb)})
        ),
        lost as f64
    );

    // What the ring kept is still delivered, shown or summarised: kept + lost = rejected.
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut events = udpguard(&sb, &["events", "--cgroup", cgroup, "--json"]);
    let mut delivered = 0;
    while delivered < 300 - lost {
        let line = events.json_line();
        delivered += line.get("suppressed").map_or(1, |n| n.as_u64().unwrap());
    }
    assert_eq!(delivered + lost, 300);
    assert_eq!(events.stop_with(libc::SIGTERM), 0);
}

#[test]
fn events_without_an_attachment_says_how_to_attach_and_changes_nothing() {
    let sb = Sandbox::new("noattach");
    let cgroup = sb.cgroup.to_str().unwrap();
    let out = sb.udpguard(&["events", "--cgroup", cgroup]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("nothing is attached to") && said.contains("udpguard attach --cgroup"),
        "{said}"
    );
    assert!(!sb.pin_root.exists(), "events creates nothing");
    let metrics = sb.udpguard_ok(&["metrics"]);
    assert!(
        metrics.lines().all(|l| l.starts_with('#')
            || l.starts_with("udpguard_build_info{")
            || l.starts_with("udpguard_attachments_")),
        "no attachment's samples: {metrics}"
    );
    assert!(!sb.pin_root.exists(), "metrics creates nothing");
}

#[test]
fn several_readers_each_get_every_event_of_a_flood_and_after_it() {
    let sb = Sandbox::new("readers");
    // Room for the whole flood: any loss would be the readers', not the ring's.
    sb.attach(&["--events-buffer", "16777216"]);
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut readers: Vec<Running> = (0..2)
        .map(|_| udpguard(&sb, &["events", "--cgroup", cgroup, "--json"]))
        .chain([udpguard(
            &sb,
            &[
                "run",
                "--cgroup",
                cgroup,
                "--json",
                "--no-metrics",
                "--scan-interval",
                "0",
            ],
        )])
        .collect();
    for reader in &mut readers {
        reader.log_containing("reading the events");
    }
    let _holder = hold(&sb, 4, ("127.0.0.1", 4444), ("127.0.0.1", 1111));
    const FLOOD: u64 = 20_000;
    let (_, got) = caller(
        &sb,
        &format!(
            r#"
        b = udp(bind=("127.0.0.1", 4444))
        out(sorted(set(conn(b, P) for _ in range({FLOOD}))))
        "#
        ),
    );
    assert_eq!(got, ["['EPERM']"]);
    // After the flood, one more conflict, on another tuple: every reader shows it.
    let _other = hold(&sb, 4, ("127.0.0.1", 5555), ("127.0.0.1", 1111));
    let (_, got) = caller(&sb, r#"out(conn(udp(bind=("127.0.0.1", 5555)), P))"#);
    assert_eq!(got, ["EPERM"]);
    assert_eq!(sb.counter("events_lost"), 0);
    for reader in &mut readers {
        // Every flood event, shown or summarised, and then the last one.
        let (mut flood, mut last) = (0, false);
        while !last {
            let line = reader.json_line();
            if line["local"] == "127.0.0.1:5555" {
                last = line.get("suppressed").is_none();
                continue;
            }
            flood += line.get("suppressed").map_or(1, |n| n.as_u64().unwrap());
        }
        // The flood's last summary may come after the last event: wait for it.
        while flood < FLOOD {
            let line = reader.json_line();
            if line["local"] == "127.0.0.1:4444" {
                flood += line.get("suppressed").map_or(1, |n| n.as_u64().unwrap());
            }
        }
        assert_eq!(flood, FLOOD, "{}", reader.name);
        assert!(
            !reader
                .seen
                .iter()
                .any(|l| l.contains("did not decode") || l.contains("lost")),
            "{}: {:?}",
            reader.name,
            reader
                .seen
                .iter()
                .filter(|l| l.starts_with("[stderr]"))
                .collect::<Vec<_>>()
        );
    }
    for reader in &mut readers {
        assert_eq!(reader.stop_with(libc::SIGTERM), 0);
    }
}

#[test]
fn when_the_reader_of_the_ring_is_killed_another_takes_over_and_misses_nothing() {
    let sb = Sandbox::new("handover");
    sb.attach(&[]);
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut first = udpguard(&sb, &["events", "--cgroup", cgroup, "--json"]);
    first.log_containing("from the kernel");
    let mut second = udpguard(&sb, &["events", "--cgroup", cgroup, "--json"]);
    second.log_containing("through the reader");
    let _ = first.child.kill();
    let _ = first.child.wait();
    // Refusals while nobody reads the ring wait in it; the second reader takes over.
    let _holder = hold(&sb, 4, ("127.0.0.1", 4444), ("127.0.0.1", 1111));
    let (_, got) = caller(&sb, r#"out(conn(udp(bind=("127.0.0.1", 4444)), P))"#);
    assert_eq!(got, ["EPERM"]);
    let line = second.json_line();
    assert_eq!(line["local"], "127.0.0.1:4444", "{line}");
    second.log_containing("from the kernel");
    assert_eq!(second.stop_with(libc::SIGTERM), 0);
}

#[test]
fn slow_http_clients_cannot_exhaust_the_agent() {
    let sb = Sandbox::new("slowloris");
    let cgroup = sb.cgroup.to_str().unwrap();
    let mut run = udpguard(
        &sb,
        &["run", "--cgroup", cgroup, "--metrics-addr", "127.0.0.1:0"],
    );
    let serving = run.log_containing("serving metrics on ");
    let url = serving
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", run.child.id()))
            .unwrap()
            .count()
    };
    // Once its route mirror has settled.
    std::thread::sleep(Duration::from_secs(2));
    let idle = fds();
    // 1,000 clients connect and send nothing (or half a request), and keep their end open.
    let slow: Vec<std::net::TcpStream> = (0..1000)
        .filter_map(|i| {
            let mut s = std::net::TcpStream::connect(addr).ok()?;
            if i % 2 == 0 {
                let _ = std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHo");
            }
            Some(s)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let busy = fds();
    // Each held for at most the header timeout: then the agent closes them, and serves again.
    std::thread::sleep(Duration::from_secs(7));
    let after = fds();
    let scraped = parse_exposition(&url, None);
    drop(slow);
    eprintln!("agent fds: {idle} idle, {busy} with 1,000 slow clients, {after} after");
    // At most 64 connections at once; the rest are closed as they come.
    assert!(busy <= idle + 64 + 4, "the agent held {busy} fds");
    assert!(after <= idle + 4, "{after} fds after the timeout");
    assert!(
        scraped["content_type"]
            .as_str()
            .unwrap()
            .contains("version=0.0.4")
    );
    assert_eq!(run.stop_with(libc::SIGTERM), 0);
}
