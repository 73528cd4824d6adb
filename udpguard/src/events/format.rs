//! The lines `events` and `run` print: one per event, one per flood summary; for people, or
//! (`--json`) one JSON object per line.
use std::path::Path;

use super::record::{Action, ConflictFields, EventRecord, LostRecord, SummaryRecord};

/// One line of the event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Event(EventRecord),
    Summary(SummaryRecord),
    /// Printed in JSON only (for people, a warning on stderr says it).
    Lost(LostRecord),
}

impl Line {
    /// The line, without its newline.
    pub fn render(&self, json: bool) -> String {
        match (self, json) {
            (Line::Event(e), false) => human_event(e),
            (Line::Summary(s), false) => human_summary(s),
            (Line::Event(e), true) => serde_json::to_string(e).expect("an event serializes"),
            (Line::Summary(s), true) => serde_json::to_string(s).expect("a summary serializes"),
            (Line::Lost(l), false) => {
                format!("{} {} conflict events lost ({})", l.time, l.lost, l.by)
            }
            (Line::Lost(l), true) => serde_json::to_string(l).expect("a lost line serializes"),
        }
    }
}

/// `<time> rejected EPERM  python3[4321] 127.0.0.1:4444 -> 127.0.0.1:1111  held by
/// python3[4300] (socket 123456)  cgroup /sys/fs/cgroup/app`
fn human_event(e: &EventRecord) -> String {
    let holder = match &e.holder {
        Some(h) if h.others > 0 => format!(
            "held by {}[{}] and {} more (socket {})",
            h.comm, h.pid, h.others, h.inode
        ),
        Some(h) => format!("held by {}[{}] (socket {})", h.comm, h.pid, h.inode),
        None => "holder unknown".to_owned(),
    };
    let c = &e.conflict;
    format!(
        "{} {}  {holder}  cgroup {}",
        e.time,
        verdict_and_tuple(c),
        cgroup(c.cgroup.as_deref()),
    )
}

/// `<time> 37 more like this in the last second: rejected EPERM  python3[4321]
/// 127.0.0.1:4444 -> 127.0.0.1:1111  cgroup /sys/fs/cgroup/app`
fn human_summary(s: &SummaryRecord) -> String {
    let period = if s.seconds == 1 {
        "the last second".to_owned()
    } else {
        format!("the last {} seconds", s.seconds)
    };
    format!(
        "{} {} more like this in {period}: {}  cgroup {}",
        s.time,
        s.suppressed,
        verdict_and_tuple(&s.conflict),
        cgroup(s.conflict.cgroup.as_deref()),
    )
}

/// `rejected EPERM  python3[4321] 127.0.0.1:4444 -> 127.0.0.1:1111` (or "audited (let
/// through)" for the verdict).
fn verdict_and_tuple(c: &ConflictFields) -> String {
    let verdict = match c.action {
        Action::Rejected => format!("rejected {}", c.errno.as_deref().unwrap_or("?")),
        Action::Audited => "audited (let through)".to_owned(),
    };
    format!(
        "{verdict}  {}[{}] {} -> {}",
        c.comm, c.pid, c.local, c.remote
    )
}

fn cgroup(path: Option<&Path>) -> String {
    path.map_or_else(|| "(removed)".to_owned(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::events::record::{Holder, IpFamily};

    fn fields() -> ConflictFields {
        ConflictFields {
            action: Action::Rejected,
            errno: Some("EPERM".into()),
            pid: 4321,
            comm: "python3".into(),
            uid: 1000,
            netns_cookie: 4097,
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/app")),
            family: IpFamily::Ipv4,
            local: "127.0.0.1:4444".into(),
            remote: "127.0.0.1:1111".into(),
        }
    }

    fn event() -> EventRecord {
        EventRecord {
            kind: "conflict",
            time: "2026-11-25T19:56:12.123456Z".into(),
            conflict: fields(),
            holder: Some(Holder {
                pid: 4300,
                comm: "dns-server".into(),
                inode: 123456,
                others: 0,
            }),
        }
    }

    #[test]
    fn a_rejected_event_for_people() {
        assert_eq!(
            Line::Event(event()).render(false),
            "2026-11-25T19:56:12.123456Z rejected EPERM  python3[4321] 127.0.0.1:4444 -> \
             127.0.0.1:1111  held by dns-server[4300] (socket 123456)  cgroup /sys/fs/cgroup/app"
        );
    }

    #[test]
    fn an_audited_event_without_holder_or_cgroup_for_people() {
        let e = EventRecord {
            conflict: ConflictFields {
                action: Action::Audited,
                errno: None,
                cgroup: None,
                family: IpFamily::Ipv6,
                local: "[::1]:4444".into(),
                remote: "[::1]:1111".into(),
                ..fields()
            },
            holder: None,
            ..event()
        };
        assert_eq!(
            Line::Event(e).render(false),
            "2026-11-25T19:56:12.123456Z audited (let through)  python3[4321] [::1]:4444 -> \
             [::1]:1111  holder unknown  cgroup (removed)"
        );
    }

    #[test]
    fn a_shared_holder_says_how_many_more_hold_it() {
        let mut e = event();
        e.holder.as_mut().unwrap().others = 2;
        assert!(
            Line::Event(e)
                .render(false)
                .contains("held by dns-server[4300] and 2 more (socket 123456)")
        );
    }

    #[test]
    fn an_event_as_json_has_exactly_the_documented_fields() {
        let line = Line::Event(event()).render(true);
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({
                "type": "conflict",
                "time": "2026-11-25T19:56:12.123456Z",
                "action": "rejected",
                "errno": "EPERM",
                "pid": 4321,
                "comm": "python3",
                "uid": 1000,
                "netns_cookie": 4097,
                "cgroup": "/sys/fs/cgroup/app",
                "family": "ipv4",
                "local": "127.0.0.1:4444",
                "remote": "127.0.0.1:1111",
                "holder": {"pid": 4300, "comm": "dns-server", "inode": 123456}
            })
        );
        let audited = EventRecord {
            conflict: ConflictFields {
                action: Action::Audited,
                errno: None,
                ..fields()
            },
            holder: None,
            ..event()
        };
        let value: serde_json::Value =
            serde_json::from_str(&Line::Event(audited).render(true)).unwrap();
        assert_eq!(value["action"], "audited");
        assert_eq!(value["errno"], json!(null));
        assert_eq!(value["holder"], json!(null));
    }

    fn summary() -> SummaryRecord {
        SummaryRecord {
            kind: "flood_summary",
            time: "2026-11-25T19:56:13.000000Z".into(),
            suppressed: 37,
            seconds: 1,
            conflict: fields(),
        }
    }

    #[test]
    fn a_summary_for_people() {
        assert_eq!(
            Line::Summary(summary()).render(false),
            "2026-11-25T19:56:13.000000Z 37 more like this in the last second: rejected EPERM  \
             python3[4321] 127.0.0.1:4444 -> 127.0.0.1:1111  cgroup /sys/fs/cgroup/app"
        );
    }

    #[test]
    fn a_summary_as_json_counts_what_was_not_shown() {
        let value: serde_json::Value =
            serde_json::from_str(&Line::Summary(summary()).render(true)).unwrap();
        assert_eq!(value["type"], "flood_summary");
        assert_eq!(value["netns_cookie"], 4097);
        assert_eq!(value["suppressed"], 37);
        assert_eq!(value["seconds"], 1);
        assert_eq!(value["local"], "127.0.0.1:4444");
        assert_eq!(value.get("holder"), None);
    }
}
