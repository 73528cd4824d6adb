//! The kernel clocks the programs read, from user space.
use std::sync::OnceLock;

use anyhow::Context as _;

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The kernel's `jiffies` now, the clock `bpf_jiffies64` reads (the programs' only clock on
/// the fast path: the verifier inlines it). User space cannot read it directly, but it moves
/// in step with `CLOCK_MONOTONIC`, one tick per `tick_ns`: one sample of both, from
/// `/proc/timer_list`, gives it to within a tick or two.
pub fn jiffies() -> anyhow::Result<u64> {
    static SAMPLE: OnceLock<Result<(u64, u64), String>> = OnceLock::new();
    let (jiffies, at_ns) = SAMPLE
        .get_or_init(|| sample().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)?;
    Ok(jiffies + (monotonic_ns().saturating_sub(at_ns)) / tick_ns())
}

/// Ticks in `seconds` at this kernel's tick rate.
pub fn ticks(seconds: u64) -> u64 {
    (seconds * 1_000_000_000).div_ceil(tick_ns())
}

fn sample() -> anyhow::Result<(u64, u64)> {
    const PATH: &str = "/proc/timer_list";
    let text = std::fs::read_to_string(PATH)
        .with_context(|| format!("reading {PATH} (the kernel's jiffies, for the fast path)"))?;
    parse_timer_list(&text).with_context(|| format!("no \"now at\" and \"jiffies:\" in {PATH}"))
}

/// `(jiffies, CLOCK_MONOTONIC ns)` from `/proc/timer_list`: its "now at N nsecs" line and the
/// first "jiffies: J" line after it (printed a moment later: behind by a tick at most).
fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let now_ns = text.lines().find_map(|line| {
        line.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .trim()
            .parse()
            .ok()
    })?;
    let jiffies = text
        .lines()
        .find_map(|line| line.strip_prefix("jiffies:")?.trim().parse().ok())?;
    Some((jiffies, now_ns))
}

/// The kernel's tick in nanoseconds (`jiffies` advance once per tick): the resolution of
/// `CLOCK_MONOTONIC_COARSE`, 4 ms at 250 Hz.
pub fn tick_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid timespec to write.
    let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } == 0;
    let ns = res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64;
    // Unknown: assume the slowest common tick (100 Hz).
    if ok && ns > 0 { ns } else { 10_000_000 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jiffies_and_their_time_from_a_timer_list() {
        let text = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 9570225153386 nsecs\n\n\
                    cpu: 0\n  .last_jiffies   : 4297284784\njiffies: 4297285061\n\ncpu: 1\njiffies: 4297285062\n";
        assert_eq!(
            parse_timer_list(text),
            Some((4_297_285_061, 9_570_225_153_386))
        );
        assert_eq!(parse_timer_list("jiffies: 5\n"), None);
    }

    #[test]
    fn a_lease_of_ten_seconds_is_ten_seconds_of_ticks() {
        assert_eq!(ticks(10) * tick_ns(), 10_000_000_000);
    }
}
