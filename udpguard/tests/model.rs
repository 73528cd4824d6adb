//! The model-based randomized test: thousands of random socket operations (new socket, bind
//! to a full or wildcard address, connect, connect elsewhere, close, disconnect with
//! AF_UNSPEC) across IPv4, IPv6 and v4-mapped, each connect judged against a model of which
//! socket holds which 4-tuple (`model.py`); now and then a pause lets every claim go stale. With fixed seeds, with `attach` alone and under the
//! agent (its route mirror and fast path on). No false rejection and no miss; the documented
//! AF_UNSPEC window is the one tolerated exception, and is counted. Needs root.
mod common;

use std::time::{Duration, Instant};

use common::{Agent, Sandbox};
use udpguard_common::{COUNTER_SLOTS, Counter};

const MODEL_PY: &str = include_str!("model.py");
const SEEDS: [u64; 3] = [1, 2, 3];
const OPS: u32 = 10_000;

fn counter_indices() -> String {
    let pairs: Vec<String> = Counter::ALL
        .iter()
        .map(|c| format!("\"{}\": {}", c.name(), *c as usize))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Runs the model for `seed` in the sandbox; returns its JSON report.
fn run_model(sb: &Sandbox, seed: u64, wildcard_checked: bool) -> serde_json::Value {
    let pin = format!(
        "{}/counters",
        sb.status()["attachments"][0]["pin_dir"].as_str().unwrap()
    );
    let out = sb
        .command("python3", true)
        .args(["-c", MODEL_PY, &seed.to_string(), &OPS.to_string(), &pin])
        .arg(COUNTER_SLOTS.to_string())
        .arg(counter_indices())
        .arg(if wildcard_checked { "1" } else { "0" })
        .output()
        .expect("running the model");
    assert!(
        out.status.success(),
        "the model failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(report: &serde_json::Value) {
    eprintln!(
        "seed {}: {} ops, {} connects ({} checked), {} refused, {} tolerated (AF_UNSPEC window), unchecked duplicates {}, errors {}",
        report["seed"],
        report["ops"],
        report["connects"],
        report["checked"],
        report["refused"],
        report["tolerated"],
        report["unchecked_duplicates"],
        report["errors"]
    );
    assert_eq!(
        report["false_rejections"],
        serde_json::json!([]),
        "{report:#}"
    );
    assert_eq!(report["misses"], serde_json::json!([]), "{report:#}");
    assert!(report["checked"].as_u64().unwrap() > 1500, "{report}");
}

#[test]
fn random_operations_with_attach_alone_refuse_every_duplicate_and_nothing_else() {
    let sb = Sandbox::new("model-attach");
    sb.attach(&[]);
    for seed in SEEDS {
        check(&run_model(&sb, seed, false));
    }
}

#[test]
fn random_operations_under_the_agent_refuse_every_duplicate_and_nothing_else() {
    let sb = Sandbox::new("model-agent");
    let _agent = Agent::start(&sb);
    // Load the namespace and let the fast path come on, so the model runs on the index too.
    sb.py(r#"
        w = udp(bind=("0.0.0.0", 3999)); w.connect(("127.0.0.1", 3998)); w.close()
        "#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sb.status()["attachments"][0]["fast_path_namespaces"] != 1 {
        assert!(Instant::now() < deadline, "the fast path never came on");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = sb.counter("indexed");
    for seed in SEEDS {
        check(&run_model(&sb, seed, true));
    }
    assert!(
        sb.counter("indexed") > before,
        "the fast path was never used"
    );
}
