//! The O(1) no-conflict path. Without it every connect runs `bpf_sk_lookup_udp`, which walks
//! every socket on the local address and port when no connected socket holds the tuple: the
//! QUIC-server shape, thousands of connected sockets on one port, pays for each.
//!
//! The claims are an index of the tuples sockets in the cgroup hold. They are all the tuples
//! held in a network namespace only when every process there is in the guarded cgroup, the
//! sockets connected before the attach were added from a socket dump, and no socket since has
//! connected in a way the claims cannot record (a wildcard socket the route mirror could not
//! place, an auto-bound reuse socket, an audited duplicate, a claim that found no room or
//! evicted another). The agent vouches for the first two per namespace, writing when it
//! seeded the index; the programs note the third. The fast path is on while nothing unindexed
//! happened after the seeding; when in doubt, off.
use aya_ebpf::{
    btf_maps::{Array, HashMap},
    helpers::generated::bpf_ktime_get_ns,
    macros::btf_map,
};
use udpguard_common::UNINDEXED_SLOTS;

const NETNS_MAX: usize = 4096;

/// Written by the agent: netns cookie -> when (`CLOCK_MONOTONIC` ns) it seeded the index.
#[btf_map]
static INDEXED_SINCE: HashMap<u64, u64, NETNS_MAX> = HashMap::new();

/// Written here: when a socket last connected that the claims cannot index, by netns cookie
/// modulo `UNINDEXED_SLOTS` (namespaces sharing a slot turn each other off: slower, never
/// wrong), and in the last slot for every namespace. An array: read on every connect, inlined.
#[btf_map]
static UNINDEXED_AT: Array<u64, { UNINDEXED_SLOTS as usize + 1 }> = Array::new();

/// True when the claims hold every tuple held in this namespace.
#[inline(always)]
pub fn index_complete(netns_cookie: u64) -> bool {
    // SAFETY: values are copied out at once.
    let Some(since) = (unsafe { INDEXED_SINCE.get(netns_cookie) }).copied() else {
        return false;
    };
    // Signed: the times come from different CPUs.
    let before_since = |slot: u32| {
        UNINDEXED_AT
            .get(slot)
            .is_none_or(|&at| (at as i64).wrapping_sub(since as i64) < 0)
    };
    before_since(slot_of(netns_cookie)) && before_since(UNINDEXED_SLOTS)
}

/// Notes that a socket in this namespace holds (or may hold) a tuple the claims lack.
#[inline(always)]
pub fn note_unindexed(netns_cookie: u64) {
    note(slot_of(netns_cookie));
}

/// Notes that a claim of some namespace was dropped to make room.
#[inline(always)]
pub fn note_unindexed_everywhere() {
    note(UNINDEXED_SLOTS);
}

#[inline(always)]
fn note(slot: u32) {
    if let Some(at) = UNINDEXED_AT.get_ptr_mut(slot) {
        // SAFETY: a plain helper call, and a store into the array.
        unsafe { *at = bpf_ktime_get_ns() };
    }
}

#[inline(always)]
fn slot_of(netns_cookie: u64) -> u32 {
    netns_cookie as u32 & (UNINDEXED_SLOTS - 1)
}
