//! The O(1) no-conflict path. Without it every connect runs `bpf_sk_lookup_udp`, which walks
//! every socket on the local address and port when no connected socket holds the tuple: the
//! QUIC-server shape, thousands of connected sockets on one port, pays for each.
//!
//! The claims are an index of the tuples sockets in the cgroup hold. They are all the tuples
//! held in a network namespace only when every process there is in the guarded cgroup, the
//! sockets connected before the attach were added from a socket dump, and no socket since has
//! connected in a way the claims cannot record (a wildcard socket the route mirror could not
//! place, an auto-bound reuse socket, an audited duplicate). The agent vouches for the first
//! two per namespace, writing when it seeded the index; the programs note the third. The
//! fast path is on while nothing unindexed happened after the seeding; when in doubt, off.
use aya_ebpf::{btf_maps::HashMap, helpers::generated::bpf_ktime_get_ns, macros::btf_map};

const NETNS_MAX: usize = 4096;

/// Written by the agent: netns cookie -> when (`CLOCK_MONOTONIC` ns) it seeded the index.
#[btf_map]
static INDEXED_SINCE: HashMap<u64, u64, NETNS_MAX> = HashMap::new();

/// Written here: netns cookie -> when a socket last connected that the claims cannot index.
#[btf_map]
static UNINDEXED_AT: HashMap<u64, u64, NETNS_MAX> = HashMap::new();

/// True when the claims hold every tuple held in this namespace.
#[inline(always)]
pub fn index_complete(netns_cookie: u64) -> bool {
    // SAFETY: values are copied out at once.
    let Some(since) = (unsafe { INDEXED_SINCE.get(netns_cookie) }).copied() else {
        return false;
    };
    // SAFETY: as above.
    match unsafe { UNINDEXED_AT.get(netns_cookie) }.copied() {
        // Signed: the two times come from different CPUs.
        Some(at) => (at as i64).wrapping_sub(since as i64) < 0,
        None => true,
    }
}

/// Notes that a socket in this namespace holds (or may hold) a tuple the claims lack.
#[inline(always)]
pub fn note_unindexed(netns_cookie: u64) {
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = UNINDEXED_AT.insert(netns_cookie, now, 0);
}
