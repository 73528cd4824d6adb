//! `--json` on the verbs that change state (needs root: it attaches the guard to a sandbox
//! cgroup).
mod common;

use common::{Sandbox, require_root};
use serde_json::Value;

fn json(text: &str) -> Value {
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON object on one line: {text}"
    );
    serde_json::from_str(text).unwrap()
}

#[test]
fn attach_and_detach_say_what_they_did_in_json() {
    require_root();
    let sb = Sandbox::new("json");
    let cgroup = sb.cgroup.to_str().unwrap();
    let attached = json(&sb.udpguard_ok(&["attach", "--cgroup", cgroup, "--json"]));
    assert_eq!(attached["outcome"], "attached");
    assert_eq!(attached["mode"], "enforce");
    assert_eq!(attached["errno"], "EPERM");
    assert_eq!(attached["autobind"], "allow");
    assert_eq!(
        attached["cgroup_id"],
        sb.status()["attachments"][0]["cgroup_id"]
    );
    assert!(attached["notes"].is_array());
    if !attached["tables"].is_null() {
        assert!(attached["tables"]["claims"].as_u64().unwrap() > 0);
        assert!(attached["tables"]["memory_bytes"].as_u64().unwrap() > 0);
    }

    let updated =
        json(&sb.udpguard_ok(&["attach", "--cgroup", cgroup, "--mode", "audit", "--json"]));
    assert_eq!(updated["outcome"], "updated");
    assert_eq!(updated["mode"], "audit");

    let detached = json(&sb.udpguard_ok(&["detach", "--cgroup", cgroup, "--json"]));
    assert_eq!(detached["detached"], true);
    assert_eq!(detached["leftovers_removed"], 0);
    assert_eq!(sb.status()["attachments"], serde_json::json!([]));

    let all = json(&sb.udpguard_ok(&["detach", "--all", "--json"]));
    assert_eq!(all, serde_json::json!({"removed": []}));
}
