//! Prometheus metrics, read from the pinned counters and tables at scrape time (the kernel
//! keeps the counters, so a restarted agent never resets them), plus the running agent's own
//! state ([`crate::health`]).
//!
//! Two expositions of the same families: the classic text format 0.0.4 (what a scraper gets
//! unless it asks for OpenMetrics, and what `udpguard metrics` prints by default) and
//! OpenMetrics 1.0 (through `prometheus-client`). The metric names and every label value are
//! listed in docs/metrics.md.
use std::fmt::{self, Write as _};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use udpguard_common::{Counter, Counters};

use crate::{
    health::AgentSnapshot,
    settings::{Choice as _, Mode},
    status::{self, State},
};

/// Every family's name starts with this (and `_`).
const PREFIX: &str = "udpguard";

/// Which text a scrape gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4.
    Classic,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The HTTP `Content-Type` of this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it lists
    /// `application/openmetrics-text` (with a non-zero quality) at least as high as any other
    /// type, the classic text otherwise (also with no header at all).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let (mut openmetrics, mut other) = (0.0f32, 0.0f32);
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            if media == "application/openmetrics-text" {
                openmetrics = openmetrics.max(quality);
            } else if !media.is_empty() {
                other = other.max(quality);
            }
        }
        if openmetrics > 0.0 && openmetrics >= other {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }
}

/// The claim table of one attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimUse {
    pub in_use: usize,
    pub capacity: usize,
    pub spilled_buckets: usize,
}

/// One attachment's numbers, as read from its pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentSample {
    /// The guarded cgroup's path, or `(removed) cgroup id N` once it is gone.
    pub cgroup: String,
    pub mode: Mode,
    /// Summed over CPUs.
    pub counters: Counters,
    /// None without claims (a kernel without 64-bit BPF atomics).
    pub claims: Option<ClaimUse>,
    /// Network namespaces with the fast path on (None without claims).
    pub fast_path_namespaces: Option<usize>,
    /// Per link pin (connect4, connect6, create, release): whether it is attached to the
    /// cgroup now (false: removed by someone else, or its pin is gone).
    pub links: Vec<(&'static str, bool)>,
    /// Whether the programs were loaded from this binary's eBPF object.
    pub matches_binary: bool,
    /// The build of the programs this kernel runs: `full`, `eperm-only` or `compat`.
    pub kernel_mode: &'static str,
    /// What that build cannot do here: (feature, why).
    pub off: Vec<(&'static str, String)>,
}

/// What a scrape read: the attachments' samples, and why some could not be read.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<AttachmentSample>,
    /// One message per attachment whose pins could not be read.
    pub unreadable: Vec<String>,
    /// Directories an interrupted attach or detach left behind.
    pub leftovers: usize,
    /// The running agent's state (None outside `udpguard run`).
    pub agent: Option<AgentSnapshot>,
}

/// Reads every attachment under the pin root. Only reads: mounts, creates and locks nothing.
pub fn scrape() -> Scrape {
    let status = status::collect();
    let mut scrape = Scrape {
        agent: crate::health::AGENT.snapshot(),
        ..Scrape::default()
    };
    if let Some(problem) = status.problem {
        scrape.unreadable.push(problem);
    }
    for a in status.attachments {
        if a.state != State::Attached {
            scrape.leftovers += 1;
            continue;
        }
        let cgroup = a.cgroup.as_ref().map_or_else(
            || format!("(removed) cgroup id {}", a.cgroup_id),
            |p| p.display().to_string(),
        );
        if let Some(error) = &a.error {
            scrape.unreadable.push(format!(
                "cannot read the counters in {}: {error}",
                a.pin_dir.display()
            ));
            continue;
        }
        let mut counters = Counters::default();
        for c in Counter::ALL {
            counters.values[c as usize] = a.counters.get(c.name()).copied().unwrap_or(0);
        }
        scrape.samples.push(AttachmentSample {
            cgroup,
            mode: a.mode.and_then(Mode::from_word).unwrap_or(Mode::Enforce),
            counters,
            claims: a.claims.zip(a.tables.as_ref()).map(|(in_use, t)| ClaimUse {
                in_use,
                capacity: t.claim_capacity,
                spilled_buckets: t.spilled_buckets,
            }),
            fast_path_namespaces: a.fast_path_namespaces,
            links: a
                .links
                .iter()
                .map(|(&pin, &state)| (pin, state == crate::attachment::LinkState::Attached))
                .collect(),
            matches_binary: a.matches_binary,
            kernel_mode: a.kernel_mode.unwrap_or("full"),
            off: a.off.iter().map(|o| (o.feature, o.why.clone())).collect(),
        });
    }
    scrape
}

/// The exposition of `scrape` in `format`.
pub fn render(scrape: &Scrape, format: Format) -> String {
    let families = families(scrape);
    match format {
        Format::Classic => classic(&families),
        Format::OpenMetrics => {
            let mut registry = Registry::with_prefix(PREFIX);
            registry.register_collector(Box::new(Snapshot(families)));
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry)
                .expect("writing to a String cannot fail");
            text
        }
    }
}

/// A label value as both expositions must write it (`\\`, `\"`, `\n`): prometheus-client
/// writes values as given, and a cgroup's path may hold any of these.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A counter or a gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A sample's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

/// One labelled value of a family (label values already escaped).
type Row = (Vec<(&'static str, String)>, Value);

/// One metric family: its name without the prefix (and, for counters, without `_total`).
#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub rows: Vec<Row>,
}

/// The build, as `udpguard_build_info` labels it.
pub fn build_labels() -> Vec<(&'static str, String)> {
    let object: String = crate::loader::object_sha256()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        (
            "commit",
            option_env!("UDPGUARD_GIT_COMMIT")
                .unwrap_or("unknown")
                .to_owned(),
        ),
        ("object", object),
    ]
}

/// A counter or gauge family.
fn family(name: &'static str, help: &'static str, kind: Kind, rows: Vec<Row>) -> Family {
    Family {
        name,
        help,
        kind,
        rows,
    }
}

/// Every family of `scrape`, in exposition order.
pub fn families(scrape: &Scrape) -> Vec<Family> {
    let samples = &scrape.samples;
    // One row per attachment, labelled with its cgroup plus `extra`.
    let per = |extra: &dyn Fn(&AttachmentSample) -> Vec<(&'static str, String)>,
               value: &dyn Fn(&AttachmentSample) -> Option<Value>|
     -> Vec<Row> {
        samples
            .iter()
            .filter_map(|s| {
                let value = value(s)?;
                let mut labels = vec![("cgroup", escape_label_value(&s.cgroup))];
                labels.extend(extra(s));
                Some((labels, value))
            })
            .collect()
    };
    let count = |c: Counter| per(&|_| vec![], &|s| Some(Value::Int(s.counters.get(c))));
    // One row per attachment and counter, labelled `label` = the counter's name.
    let by_counter = |label: &'static str, counters: &[Counter]| -> Vec<Row> {
        counters
            .iter()
            .flat_map(|&c| {
                per(&|_| vec![(label, c.name().to_owned())], &|s| {
                    Some(Value::Int(s.counters.get(c)))
                })
            })
            .collect()
    };
    let gauge = |n: usize| Some(Value::Int(n as u64));
    let not_checked: Vec<Counter> = Counter::ALL
        .into_iter()
        .filter(|c| c.is_not_checked_reason())
        .collect();
    let links: Vec<Row> = samples
        .iter()
        .flat_map(|s| {
            s.links.iter().map(|&(program, attached)| {
                (
                    vec![
                        ("cgroup", escape_label_value(&s.cgroup)),
                        ("program", program.to_owned()),
                    ],
                    Value::Int(u64::from(attached)),
                )
            })
        })
        .collect();
    let features_off: Vec<Row> = samples
        .iter()
        .flat_map(|s| {
            s.off.iter().map(|(feature, why)| {
                (
                    vec![
                        ("cgroup", escape_label_value(&s.cgroup)),
                        ("feature", (*feature).to_owned()),
                        ("why", escape_label_value(why)),
                    ],
                    Value::Int(1),
                )
            })
        })
        .collect();
    let mut all = vec![
        family(
            "connects_checked",
            "UDP connect()s whose 4-tuple the guard looked up",
            Kind::Counter,
            count(Counter::Checked),
        ),
        family(
            "connects_indexed",
            "connect()s checked through the claims alone, the kernel's lookup skipped (the fast \
             path; also in connects_checked)",
            Kind::Counter,
            count(Counter::Indexed),
        ),
        family(
            "connects_unshared",
            "UDP connect()s of sockets without SO_REUSEADDR or SO_REUSEPORT: they share their \
             port with nobody, so they cannot duplicate a 4-tuple and are not looked up",
            Kind::Counter,
            count(Counter::Unshared),
        ),
        family(
            "conflicts",
            "connect()s that would have duplicated an ESTABLISHED 4-tuple, by what the guard \
             did (rejected in enforce mode, audited in audit mode)",
            Kind::Counter,
            by_counter("action", &[Counter::Rejected, Counter::Audited]),
        ),
        family(
            "conflicts_raced",
            "conflicts with a socket connecting at the same instant (also in conflicts)",
            Kind::Counter,
            count(Counter::Raced),
        ),
        family(
            "not_checked",
            "UDP connect()s the guard could not check, by reason",
            Kind::Counter,
            by_counter("reason", &not_checked),
        ),
        family(
            "events_lost",
            "conflict events dropped because the ring buffer was full (still counted in \
             conflicts)",
            Kind::Counter,
            count(Counter::EventsLost),
        ),
        family(
            "stale_claims",
            "claims of another socket with no connected socket behind it, taken over (the \
             connect allowed)",
            Kind::Counter,
            count(Counter::StaleClaims),
        ),
        family(
            "claims_unrecorded",
            "claims that could not be recorded (their buckets full of fresh claims): that \
             connect lost its race protection",
            Kind::Counter,
            count(Counter::Unrecorded),
        ),
        family(
            "claims_evicted",
            "older claims dropped to make room (their buckets full): that namespace loses the \
             fast path until the agent seeds it again",
            Kind::Counter,
            count(Counter::Evicted),
        ),
        family(
            "attached",
            "1 for each cgroup the guard is attached to, labelled with its mode",
            Kind::Gauge,
            per(&|s| vec![("mode", s.mode.word().to_owned())], &|_| gauge(1)),
        ),
        family(
            "kernel_mode",
            "1 for each attachment, labelled with the build of the programs this kernel runs: \
             full, eperm-only (no bpf_set_retval: EPERM only) or compat (no BPF atomic fetch \
             ops: the kernel's lookup alone, no race protection, no fast path)",
            Kind::Gauge,
            per(
                &|s| vec![("kernel_mode", s.kernel_mode.to_owned())],
                &|_| gauge(1),
            ),
        ),
        family(
            "feature_off",
            "1 for each thing the guard cannot do on this kernel, labelled with what and why",
            Kind::Gauge,
            features_off,
        ),
        family(
            "attachment_current_build",
            "1 when the attachment's programs were loaded from this binary's eBPF object, 0 \
             when another build made them",
            Kind::Gauge,
            per(&|_| vec![], &|s| gauge(usize::from(s.matches_binary))),
        ),
        family(
            "link_attached",
            "1 when the attachment's link for the program is attached to its cgroup, 0 when \
             it was removed by someone else (or its pin is gone)",
            Kind::Gauge,
            links,
        ),
        family(
            "claims",
            "4-tuples held or being connected to by sockets in the cgroup (claim table \
             entries in use)",
            Kind::Gauge,
            per(&|_| vec![], &|s| s.claims.and_then(|c| gauge(c.in_use))),
        ),
        family(
            "claim_capacity",
            "claims the claim table holds in all",
            Kind::Gauge,
            per(&|_| vec![], &|s| s.claims.and_then(|c| gauge(c.capacity))),
        ),
        family(
            "claim_spilled_buckets",
            "claim buckets that spilled claims into another (a sign the table is getting full)",
            Kind::Gauge,
            per(&|_| vec![], &|s| {
                s.claims.and_then(|c| gauge(c.spilled_buckets))
            }),
        ),
        family(
            "fast_path_namespaces",
            "network namespaces where the O(1) no-conflict path is on (udpguard run keeps it)",
            Kind::Gauge,
            per(&|_| vec![], &|s| s.fast_path_namespaces.and_then(gauge)),
        ),
        family(
            "attachments_unreadable",
            "attachments whose pins could not be read (made by another udpguard version, or \
             being replaced)",
            Kind::Gauge,
            vec![(vec![], Value::Int(scrape.unreadable.len() as u64))],
        ),
        family(
            "attachments_leftover",
            "directories an interrupted attach or detach left (udpguard detach removes them)",
            Kind::Gauge,
            vec![(vec![], Value::Int(scrape.leftovers as u64))],
        ),
        family(
            "build_info",
            "1, labelled with this binary's version, git commit and eBPF object hash (the \
             first 12 hex digits of its SHA-256)",
            Kind::Gauge,
            vec![(build_labels(), Value::Int(1))],
        ),
    ];
    if let Some(agent) = &scrape.agent {
        all.extend(agent_families(agent));
    }
    all
}

/// The running agent's own families.
fn agent_families(agent: &AgentSnapshot) -> Vec<Family> {
    let one = |v: Value| vec![(vec![], v)];
    let mut all = vec![
        family(
            "agent_heartbeat_age_seconds",
            "seconds since the agent's route mirror last renewed its heartbeat (the kernel \
             stops trusting the mirror after 3)",
            Kind::Gauge,
            agent
                .heartbeat_age
                .map_or_else(Vec::new, |age| one(Value::Float(age))),
        ),
        family(
            "agent_mirrored_namespaces",
            "network namespaces whose routes the agent mirrors",
            Kind::Gauge,
            one(Value::Int(agent.mirrored)),
        ),
        family(
            "reattach",
            "links of the agent's attachment found removed by someone else and re-attached",
            Kind::Counter,
            one(Value::Int(agent.reattached)),
        ),
        family(
            "reattach_failures",
            "links found removed by someone else that the agent could not re-attach",
            Kind::Counter,
            one(Value::Int(agent.reattach_failed)),
        ),
    ];
    let Some(scan) = &agent.scan else {
        return all;
    };
    let per_netns = |value: fn(&crate::health::NetnsFindings) -> usize| -> Vec<Row> {
        scan.per_netns
            .iter()
            .map(|n| {
                (
                    vec![("netns", escape_label_value(&n.netns))],
                    Value::Int(value(n) as u64),
                )
            })
            .collect()
    };
    all.extend([
        family(
            "scan_duplicate_tuples",
            "connected UDP 4-tuples held by more than one socket, per network namespace, at \
             the agent's last periodic scan",
            Kind::Gauge,
            per_netns(|n| n.duplicate_tuples),
        ),
        family(
            "scan_starving_sockets",
            "sockets that receive nothing because another socket on their 4-tuple gets the \
             datagrams, per network namespace, at the last scan",
            Kind::Gauge,
            per_netns(|n| n.starving_sockets),
        ),
        family(
            "scan_sockets",
            "connected UDP sockets the last scan looked at",
            Kind::Gauge,
            one(Value::Int(scan.sockets as u64)),
        ),
        family(
            "scan_namespaces",
            "network namespaces the last scan looked in",
            Kind::Gauge,
            one(Value::Int(scan.namespaces as u64)),
        ),
        family(
            "scan_duration_seconds",
            "how long the last scan took",
            Kind::Gauge,
            one(Value::Float(scan.seconds)),
        ),
        family(
            "scan_partial",
            "1 when the last scan could not see every namespace or socket",
            Kind::Gauge,
            one(Value::Int(u64::from(scan.partial))),
        ),
    ]);
    if let Some(age) = agent.scan_age {
        all.push(family(
            "scan_age_seconds",
            "seconds since the last scan finished",
            Kind::Gauge,
            one(Value::Float(age)),
        ));
    }
    all
}

/// The classic text format 0.0.4: a counter's HELP and TYPE name its sample (`_total`), which
/// is what classic parsers need to read it as a counter.
fn classic(families: &[Family]) -> String {
    let mut text = String::new();
    for f in families {
        let name = match f.kind {
            Kind::Counter => format!("{PREFIX}_{}_total", f.name),
            Kind::Gauge => format!("{PREFIX}_{}", f.name),
        };
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(text, "# HELP {name} {}", f.help);
        let _ = writeln!(text, "# TYPE {name} {kind}");
        for (labels, value) in &f.rows {
            text.push_str(&name);
            if !labels.is_empty() {
                let labels: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                let _ = write!(text, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(text, " {value}");
        }
    }
    text
}

/// The families of one scrape, encoded as prometheus-client's registry asks (OpenMetrics).
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for f in &self.0 {
            if f.name == "build_info" {
                // OpenMetrics has a type for it: the family `build`, its sample `build_info`.
                let mut metric =
                    encoder.encode_descriptor("build", f.help, None, MetricType::Info)?;
                for (labels, _) in &f.rows {
                    metric.encode_info(labels)?;
                }
                continue;
            }
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, value) in &f.rows {
                let family = metric.encode_family(labels)?;
                match (f.kind, *value) {
                    (Kind::Counter, Value::Int(n)) => ConstCounter::new(n).encode(family)?,
                    (Kind::Counter, Value::Float(x)) => ConstCounter::new(x).encode(family)?,
                    (Kind::Gauge, Value::Int(n)) => {
                        ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(family)?
                    }
                    (Kind::Gauge, Value::Float(x)) => ConstGauge::new(x).encode(family)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use udpguard_common::names::link_pins;

    use super::*;

    fn sample(cgroup: &str, mode: Mode, values: &[(Counter, u64)]) -> AttachmentSample {
        let mut counters = Counters::default();
        for &(c, v) in values {
            counters.values[c as usize] = v;
        }
        AttachmentSample {
            cgroup: cgroup.to_owned(),
            mode,
            counters,
            claims: Some(ClaimUse {
                in_use: 5,
                capacity: 1024,
                spilled_buckets: 0,
            }),
            fast_path_namespaces: Some(1),
            links: link_pins::ALL.iter().map(|&p| (p, true)).collect(),
            matches_binary: true,
            kernel_mode: "full",
            off: Vec::new(),
        }
    }

    fn scrape_of(samples: Vec<AttachmentSample>) -> Scrape {
        Scrape {
            samples,
            ..Scrape::default()
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn classic_counters_are_described_under_their_sample_name() {
        let text = render(
            &scrape_of(vec![sample(
                "/sys/fs/cgroup/app",
                Mode::Enforce,
                &[
                    (Counter::Checked, 7),
                    (Counter::Rejected, 2),
                    (Counter::Wildcard, 3),
                ],
            )]),
            Format::Classic,
        );
        let l = lines(&text);
        let at = l
            .iter()
            .position(|&x| x.starts_with("# HELP udpguard_connects_checked_total "))
            .expect("HELP under the _total name");
        assert_eq!(l[at + 1], "# TYPE udpguard_connects_checked_total counter");
        assert_eq!(
            l[at + 2],
            "udpguard_connects_checked_total{cgroup=\"/sys/fs/cgroup/app\"} 7"
        );
        for line in [
            "udpguard_conflicts_total{cgroup=\"/sys/fs/cgroup/app\",action=\"rejected\"} 2",
            "udpguard_not_checked_total{cgroup=\"/sys/fs/cgroup/app\",reason=\"wildcard\"} 3",
            "udpguard_attached{cgroup=\"/sys/fs/cgroup/app\",mode=\"enforce\"} 1",
            "udpguard_claims{cgroup=\"/sys/fs/cgroup/app\"} 5",
            "udpguard_claim_capacity{cgroup=\"/sys/fs/cgroup/app\"} 1024",
            "udpguard_link_attached{cgroup=\"/sys/fs/cgroup/app\",program=\"connect4\"} 1",
            "# TYPE udpguard_build_info gauge",
        ] {
            assert!(l.contains(&line), "no {line} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "no EOF in the classic format");
        // Every sample's name was described just before (HELP and TYPE).
        let mut described = "";
        for line in &l {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                described = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, described, "{line} has no HELP/TYPE of its own");
            }
        }
    }

    #[test]
    fn openmetrics_names_the_family_and_ends_with_eof() {
        let text = render(
            &scrape_of(vec![sample("/a", Mode::Audit, &[(Counter::Audited, 4)])]),
            Format::OpenMetrics,
        );
        let l = lines(&text);
        for line in [
            "# TYPE udpguard_conflicts counter",
            "udpguard_conflicts_total{cgroup=\"/a\",action=\"audited\"} 4",
            "# TYPE udpguard_build info",
            "udpguard_attached{cgroup=\"/a\",mode=\"audit\"} 1",
        ] {
            assert!(l.contains(&line), "no {line} in\n{text}");
        }
        assert!(
            l.iter()
                .any(|x| x.starts_with("udpguard_build_info{version="))
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_attachment_has_its_own_labelled_rows() {
        let text = render(
            &scrape_of(vec![
                sample("/a", Mode::Enforce, &[(Counter::Checked, 1)]),
                sample("/b", Mode::Audit, &[(Counter::Audited, 4)]),
            ]),
            Format::Classic,
        );
        for line in [
            "udpguard_connects_checked_total{cgroup=\"/a\"} 1",
            "udpguard_connects_checked_total{cgroup=\"/b\"} 0",
            "udpguard_conflicts_total{cgroup=\"/b\",action=\"audited\"} 4",
            "udpguard_attached{cgroup=\"/a\",mode=\"enforce\"} 1",
            "udpguard_attached{cgroup=\"/b\",mode=\"audit\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn nothing_attached_gives_descriptions_build_info_and_totals_only() {
        for format in [Format::Classic, Format::OpenMetrics] {
            let text = render(&Scrape::default(), format);
            let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            assert_eq!(samples.len(), 3, "{text}");
            assert!(
                samples.iter().all(|s| s.starts_with("udpguard_build_info")
                    || s.starts_with("udpguard_attachments_"))
            );
        }
    }

    #[test]
    fn docs_metrics_md_lists_every_family_and_every_reason() {
        let doc = include_str!("../../docs/metrics.md");
        let mut scrape = agent_scrape();
        scrape.samples.push(sample("/a", Mode::Enforce, &[]));
        for f in families(&scrape) {
            let name = match f.kind {
                Kind::Counter => format!("`{PREFIX}_{}_total`", f.name),
                Kind::Gauge => format!("`{PREFIX}_{}`", f.name),
            };
            assert!(doc.contains(&name), "docs/metrics.md does not list {name}");
        }
        for reason in Counter::ALL.iter().filter(|c| c.is_not_checked_reason()) {
            let row = format!("| `{}` |", reason.name());
            assert!(doc.contains(&row), "docs/metrics.md does not explain {row}");
        }
    }

    fn agent_scrape() -> Scrape {
        Scrape {
            agent: Some(AgentSnapshot {
                heartbeat_age: Some(0.25),
                mirrored: 2,
                reattached: 1,
                reattach_failed: 0,
                scan: Some(crate::health::ScanSummary {
                    finished_ns: 1,
                    seconds: 0.5,
                    sockets: 10,
                    namespaces: 1,
                    per_netns: vec![crate::health::NetnsFindings {
                        netns: "net:[4026531840]".into(),
                        duplicate_tuples: 1,
                        starving_sockets: 1,
                    }],
                    partial: false,
                }),
                scan_age: Some(3.0),
            }),
            ..Scrape::default()
        }
    }

    #[test]
    fn the_agent_adds_its_own_families() {
        let text = render(&agent_scrape(), Format::Classic);
        for line in [
            "udpguard_agent_heartbeat_age_seconds 0.25",
            "udpguard_reattach_total 1",
            "udpguard_scan_starving_sockets{netns=\"net:[4026531840]\"} 1",
            "udpguard_scan_duration_seconds 0.5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(
            &scrape_of(vec![sample("/odd\"name\\x\ny", Mode::Enforce, &[])]),
            Format::OpenMetrics,
        );
        assert!(
            text.contains(r#"udpguard_attached{cgroup="/odd\"name\\x\ny",mode="enforce"} 1"#),
            "quotes, backslashes and newlines escaped:\n{text}"
        );
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        use Format::*;
        for (accept, format) in [
            (None, Classic),
            (Some("text/plain"), Classic),
            (Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"), Classic),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,\
                     application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;\
                     q=0.3,*/*;q=0.2",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;q=1, application/openmetrics-text;q=0.5"),
                Classic,
            ),
            (Some("application/openmetrics-text;q=0"), Classic),
        ] {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }
}
