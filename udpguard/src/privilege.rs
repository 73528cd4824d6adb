//! Whether this process may load and attach BPF programs.
use crate::error::{Error, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with a message saying what to do when the process lacks the capabilities to `action`.
pub fn require(action: &'static str) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match effective_caps(&status) {
        Some(caps) if can_attach(caps) => Ok(()),
        _ => Err(Error::NotPrivileged { action }),
    }
}

/// The CapEff mask from /proc/self/status.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Attaching cgroup programs needs CAP_SYS_ADMIN, or CAP_BPF with CAP_NET_ADMIN and
/// CAP_PERFMON (without it the verifier refuses the programs' pointer arithmetic).
fn can_attach(caps: u64) -> bool {
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN) && has(CAP_PERFMON))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_capabilities() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert!(can_attach(0x1ff_ffff_ffff));
        assert!(!can_attach(0));
        assert!(can_attach(
            (1 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON)
        ));
        assert!(!can_attach((1 << CAP_BPF) | (1 << CAP_NET_ADMIN)));
        assert!(!can_attach(1 << CAP_BPF));
    }
}
