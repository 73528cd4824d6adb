//! Prometheus metrics (OpenMetrics text, through `prometheus-client`), read from the pinned
//! counters at scrape time: the kernel keeps them, so a restarted agent never resets them.
//!
//! Every attachment contributes its samples, labelled with its `cgroup`:
//! `udpguard_connects_checked_total`, `udpguard_conflicts_total{action}`,
//! `udpguard_conflicts_raced_total`, `udpguard_not_checked_total{reason}`,
//! `udpguard_events_lost_total`, the gauge `udpguard_attached{mode}` (1 per attachment), the
//! gauge `udpguard_kernel_mode{kernel_mode}` (1 per attachment: `full`, `eperm-only` or
//! `compat`) and `udpguard_feature_off{feature,why}` (1 for each thing this kernel's build
//! cannot do; no row when nothing is off).
use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use udpguard_common::{Counter, Counters};

use crate::{
    attachment::{self, Attachment},
    bpffs, cgroup,
    settings::Mode,
};

/// The HTTP `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One attachment's numbers, as read from its pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentSample {
    /// The guarded cgroup's path, or `(removed) cgroup id N` once it is gone.
    pub cgroup: String,
    pub mode: Mode,
    /// Summed over CPUs.
    pub counters: Counters,
    /// What the programs can do on this kernel.
    pub features: crate::loader::Features,
}

/// What a scrape read: the attachments' samples, and why some could not be read.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<AttachmentSample>,
    /// One message per attachment whose pins could not be read.
    pub unreadable: Vec<String>,
}

/// Reads every attachment under the pin root. Only reads: mounts, creates and locks nothing.
pub fn scrape() -> Scrape {
    let cgroup_root = cgroup::root().ok();
    let mut scrape = Scrape::default();
    for (id, dir) in attachment::list_dirs(&bpffs::pin_root()) {
        let read =
            Attachment::open(&dir).and_then(|a| Ok((a.settings()?, a.counters()?, a.features())));
        match read {
            Ok((settings, counters, features)) => scrape.samples.push(AttachmentSample {
                cgroup: cgroup_root
                    .as_deref()
                    .and_then(|root| cgroup::path_of_id(root, id))
                    .map_or_else(
                        || format!("(removed) cgroup id {id}"),
                        |p| p.display().to_string(),
                    ),
                mode: settings.mode,
                counters,
                features,
            }),
            Err(err) => scrape.unreadable.push(format!(
                "cannot read the counters in {}: {}",
                dir.display(),
                crate::status::unreadable(&err)
            )),
        }
    }
    scrape
}

/// The exposition of `samples`, ending with `# EOF`.
pub fn render(samples: &[AttachmentSample]) -> String {
    let mut registry = Registry::with_prefix("udpguard");
    registry.register_collector(Box::new(Snapshot(samples.to_vec())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// A label value as the exposition must write it (`\\`, `\"`, `\n`): prometheus-client writes
/// values as given, and a cgroup's path may hold any of these.
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

/// The samples of one scrape, encoded as the registry asks.
#[derive(Debug)]
struct Snapshot(Vec<AttachmentSample>);

/// One labelled value of a metric.
type Row = (Vec<(&'static str, String)>, u64);

impl Snapshot {
    /// One row per attachment, labelled with its cgroup plus `extra`.
    fn per_attachment(
        &self,
        extra: impl Fn(&AttachmentSample) -> Vec<(&'static str, String)>,
        value: impl Fn(&AttachmentSample) -> u64,
    ) -> Vec<Row> {
        self.0
            .iter()
            .map(|s| {
                let mut labels = vec![("cgroup", escape_label_value(&s.cgroup))];
                labels.extend(extra(s));
                (labels, value(s))
            })
            .collect()
    }

    fn count(&self, counter: Counter) -> Vec<Row> {
        self.per_attachment(|_| vec![], |s| s.counters.get(counter))
    }

    /// One row per attachment and counter, labelled `label` = the counter's name.
    fn by_counter(&self, label: &'static str, counters: &[Counter]) -> Vec<Row> {
        counters
            .iter()
            .flat_map(|&c| {
                self.per_attachment(
                    |_| vec![(label, c.name().to_owned())],
                    move |s| s.counters.get(c),
                )
            })
            .collect()
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let not_checked: Vec<Counter> = Counter::ALL
            .into_iter()
            .filter(|c| c.is_not_checked_reason())
            .collect();
        let counters = [
            (
                "connects_checked",
                "UDP connect()s whose 4-tuple the guard looked up",
                self.count(Counter::Checked),
            ),
            (
                "conflicts",
                "connect()s that would have duplicated an ESTABLISHED 4-tuple, by what the \
                 guard did (rejected in enforce mode, audited in audit mode)",
                self.by_counter("action", &[Counter::Rejected, Counter::Audited]),
            ),
            (
                "conflicts_raced",
                "conflicts with a socket connecting at the same instant (also in conflicts)",
                self.count(Counter::Raced),
            ),
            (
                "not_checked",
                "UDP connect()s the guard could not check, by reason",
                self.by_counter("reason", &not_checked),
            ),
            (
                "events_lost",
                "conflict events dropped because the ring buffer was full (still counted in \
                 conflicts)",
                self.count(Counter::EventsLost),
            ),
        ];
        for (name, help, rows) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, value) in rows {
                ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "attached",
            "1 for each cgroup the guard is attached to, labelled with its mode",
            None,
            MetricType::Gauge,
        )?;
        for (labels, _) in self.per_attachment(|s| vec![("mode", s.mode.name().to_owned())], |_| 1)
        {
            ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "kernel_mode",
            "1 for each attachment, labelled with the build of the programs this kernel runs: \
             full, eperm-only (no bpf_set_retval: EPERM only) or compat (no BPF atomic fetch \
             ops: the kernel's lookup alone, no race protection, no fast path)",
            None,
            MetricType::Gauge,
        )?;
        let modes = self.per_attachment(
            |s| vec![("kernel_mode", s.features.mode().to_owned())],
            |_| 1,
        );
        for (labels, _) in modes {
            ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "feature_off",
            "1 for each thing the guard cannot do on this kernel, labelled with what and why",
            None,
            MetricType::Gauge,
        )?;
        for s in &self.0 {
            for off in s.features.off() {
                let labels = vec![
                    ("cgroup", escape_label_value(&s.cgroup)),
                    ("feature", off.feature.to_owned()),
                    ("why", escape_label_value(&off.why)),
                ];
                ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
            features: crate::loader::Features(
                udpguard_common::meta::features::SET_RETVAL
                    | udpguard_common::meta::features::CLAIMS,
            ),
        }
    }

    #[test]
    fn the_exposition_of_one_attachment() {
        let text = render(&[sample(
            "/sys/fs/cgroup/app",
            Mode::Enforce,
            &[
                (Counter::Checked, 7),
                (Counter::Rejected, 2),
                (Counter::Wildcard, 3),
                (Counter::EventsLost, 1),
            ],
        )]);
        let expected = r#"# HELP udpguard_connects_checked UDP connect()s whose 4-tuple the guard looked up
# TYPE udpguard_connects_checked counter
udpguard_connects_checked_total{cgroup="/sys/fs/cgroup/app"} 7
# HELP udpguard_conflicts connect()s that would have duplicated an ESTABLISHED 4-tuple, by what the guard did (rejected in enforce mode, audited in audit mode)
# TYPE udpguard_conflicts counter
udpguard_conflicts_total{cgroup="/sys/fs/cgroup/app",action="rejected"} 2
udpguard_conflicts_total{cgroup="/sys/fs/cgroup/app",action="audited"} 0
# HELP udpguard_conflicts_raced conflicts with a socket connecting at the same instant (also in conflicts)
# TYPE udpguard_conflicts_raced counter
udpguard_conflicts_raced_total{cgroup="/sys/fs/cgroup/app"} 0
# HELP udpguard_not_checked UDP connect()s the guard could not check, by reason
# TYPE udpguard_not_checked counter
udpguard_not_checked_total{cgroup="/sys/fs/cgroup/app",reason="wildcard"} 3
udpguard_not_checked_total{cgroup="/sys/fs/cgroup/app",reason="autobind"} 0
udpguard_not_checked_total{cgroup="/sys/fs/cgroup/app",reason="family_mismatch"} 0
udpguard_not_checked_total{cgroup="/sys/fs/cgroup/app",reason="wildcard_new_netns"} 0
udpguard_not_checked_total{cgroup="/sys/fs/cgroup/app",reason="wildcard_unmodeled"} 0
udpguard_not_checked_total{cgroup="/sys/fs/cgroup/app",reason="autobind_unique"} 0
udpguard_not_checked_total{cgroup="/sys/fs/cgroup/app",reason="multicast"} 0
udpguard_not_checked_total{cgroup="/sys/fs/cgroup/app",reason="device_bound"} 0
# HELP udpguard_events_lost conflict events dropped because the ring buffer was full (still counted in conflicts)
# TYPE udpguard_events_lost counter
udpguard_events_lost_total{cgroup="/sys/fs/cgroup/app"} 1
# HELP udpguard_attached 1 for each cgroup the guard is attached to, labelled with its mode
# TYPE udpguard_attached gauge
udpguard_attached{cgroup="/sys/fs/cgroup/app",mode="enforce"} 1
# HELP udpguard_kernel_mode 1 for each attachment, labelled with the build of the programs this kernel runs: full, eperm-only (no bpf_set_retval: EPERM only) or compat (no BPF atomic fetch ops: the kernel's lookup alone, no race protection, no fast path)
# TYPE udpguard_kernel_mode gauge
udpguard_kernel_mode{cgroup="/sys/fs/cgroup/app",kernel_mode="full"} 1
# HELP udpguard_feature_off 1 for each thing the guard cannot do on this kernel, labelled with what and why
# TYPE udpguard_feature_off gauge
# EOF
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn every_attachment_has_its_own_labelled_rows() {
        let text = render(&[
            sample("/a", Mode::Enforce, &[(Counter::Checked, 1)]),
            sample("/b", Mode::Audit, &[(Counter::Audited, 4)]),
        ]);
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
    fn nothing_attached_gives_descriptions_only() {
        let text = render(&[]);
        assert!(text.ends_with("# EOF\n"));
        assert!(
            text.lines().all(|l| l.starts_with('#')),
            "no samples without attachments:\n{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&[sample("/odd\"name\\x\ny", Mode::Enforce, &[])]);
        assert!(
            text.contains(r#"udpguard_attached{cgroup="/odd\"name\\x\ny",mode="enforce"} 1"#),
            "quotes, backslashes and newlines escaped:\n{text}"
        );
    }
}
