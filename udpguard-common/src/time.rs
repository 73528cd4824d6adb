//! Times the programs compare: `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`), one clock
//! for every CPU, so a socket's birth and another socket's claim can be ordered.

/// How long a claim stays fresh: the longest a racer is trusted to take from its hook to the
/// kernel hashing it as connected (normally microseconds; 10 ms covers a preemption or a
/// paused vCPU). A fresh claim refuses sockets born before it; an older one refuses nobody.
pub const FRESH_NS: u64 = 10_000_000;

/// True when something stamped `at` is still fresh at `now`. Signed: `now` may have been read
/// on another CPU just before `at` was written, and a stamp ahead of `now` is fresh.
#[inline(always)]
pub const fn fresh_at(now: u64, at: u64, fresh: u64) -> bool {
    (now.wrapping_sub(at) as i64) <= fresh as i64
}

/// True when `a` is strictly before `b` (signed, as [`fresh_at`]).
#[inline(always)]
pub const fn before(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) < 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_signed() {
        assert!(fresh_at(100, 100, 10));
        assert!(fresh_at(110, 100, 10));
        assert!(!fresh_at(111, 100, 10));
        assert!(
            fresh_at(100, 105, 10),
            "stamped after our clock read: fresh"
        );
        assert!(before(1, 2) && !before(2, 2) && !before(3, 2));
        assert!(before(u64::MAX, 1), "wraps");
    }
}
