//! The fast path's namespace table (`NAMESPACES`): per network namespace, whether the claims
//! index every tuple held there, so a connect whose tuple nobody claims can skip the kernel's
//! lookup (a walk of every socket on the port).
//!
//! The index is complete in a namespace only when (1) every socket there that connected
//! before the attach was added from a socket dump (the agent seeds it), and (2) nothing since
//! connected in a way the claims do not hold: a socket outside the guarded cgroup (seen by the
//! watch program, or impossible at the cgroup root), a wildcard socket the route mirror could
//! not place, an auto-bound reuse socket, an audited duplicate, or a claim that found no room
//! or was evicted. The agent vouches for (1), for a lease it renews; the programs note (2) with
//! a time. The fast path is on while the lease holds and nothing was noted after the seeding.

/// Slots of the `NAMESPACES` array, picked by netns cookie.
pub const NAMESPACE_SLOTS: u32 = 1024;

/// A network namespace's slot in `NAMESPACES` (namespaces sharing one turn each other's fast
/// path off: slower, never wrong).
#[inline(always)]
pub const fn namespace_slot(netns_cookie: u64) -> u32 {
    netns_cookie as u32 & (NAMESPACE_SLOTS - 1)
}

/// How long, in seconds, the agent's word for a namespace lasts unless renewed (it renews
/// every second): if the agent dies, nobody seeds or sweeps, so the fast path turns itself off.
pub const INDEX_LEASE_SECS: u64 = 10;

/// One slot of the `NAMESPACES` array. Read on every connect: an array, not a hash, and times
/// in `jiffies`, not nanoseconds, because the verifier inlines both.
///
/// The agent writes `netns_cookie` and `indexed_since` as a pair, under `version` (odd while
/// it writes, as a seqlock), and `lease_until` alone; the programs write `unindexed_at`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceIndex {
    pub version: u64,
    /// The namespace the agent vouches for in this slot; 0 for none.
    pub netns_cookie: u64,
    /// When it seeded the claims from a socket dump (less a margin for connects in flight).
    pub indexed_since: u64,
    /// Until when its word holds.
    pub lease_until: u64,
    /// When a socket of a namespace in this slot last connected in a way the claims cannot
    /// index, or a claim of one was dropped for room.
    pub unindexed_at: u64,
}

impl NamespaceIndex {
    /// True when, at `now`, the claims hold every tuple held in namespace `netns_cookie` (this
    /// being its slot, read consistently): the agent vouches for it, its lease holds, and
    /// nothing unindexed happened since the seeding. Times are compared signed: they come from
    /// different CPUs.
    #[inline(always)]
    pub fn complete_for(&self, netns_cookie: u64, now: u64) -> bool {
        use crate::time::before;
        self.netns_cookie == netns_cookie
            && self.indexed_since != 0
            && before(now, self.lease_until)
            && before(self.unindexed_at, self.indexed_since)
    }
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
unsafe impl aya::Pod for NamespaceIndex {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_index_vouches_only_for_its_namespace_within_its_lease() {
        let on = NamespaceIndex {
            version: 2,
            netns_cookie: 4097,
            indexed_since: 1_000,
            lease_until: 5_000,
            unindexed_at: 900,
        };
        assert!(on.complete_for(4097, 2_000));
        assert!(
            !on.complete_for(1, 2_000),
            "another namespace in the same slot"
        );
        assert!(!on.complete_for(4097, 5_000), "the lease ran out");
        let noted = NamespaceIndex {
            unindexed_at: 1_001,
            ..on
        };
        assert!(
            !noted.complete_for(4097, 2_000),
            "an unindexed connect since"
        );
        let off = NamespaceIndex {
            indexed_since: 0,
            ..on
        };
        assert!(!off.complete_for(4097, 2_000));
        assert_eq!(namespace_slot(4097), namespace_slot(1));
        assert_eq!(core::mem::size_of::<NamespaceIndex>(), 64);
    }
}
