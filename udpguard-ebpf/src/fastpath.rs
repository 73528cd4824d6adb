//! The O(1) no-conflict path, the kernel's half (the reasoning is in
//! `udpguard_common::namespaces`). Without it every connect runs `bpf_sk_lookup_udp`, which
//! walks every socket on the local address and port when no connected socket holds the tuple:
//! the QUIC-server shape, thousands of connected sockets on one port, pays for each.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{btf_maps::Array, helpers::generated::bpf_jiffies64, macros::btf_map};
use udpguard_common::{NAMESPACE_SLOTS, NamespaceIndex, namespace_slot, time::before};

/// The agent writes its word through a shared mapping, field by field.
const MMAPABLE: usize = aya_ebpf::bindings::BPF_F_MMAPABLE as usize;

/// Per namespace slot: the agent's word and the programs' notes (see [`NamespaceIndex`]). An
/// array, read on every connect, and times in `jiffies`: the verifier inlines both, so the
/// check makes no call (a call and return cost ~30 ns each on kernels with return-thunk
/// mitigations).
#[btf_map]
static NAMESPACES: Array<NamespaceIndex, { NAMESPACE_SLOTS as usize }, MMAPABLE> = Array::new();

/// True when the claims hold every tuple held in this namespace.
#[inline(always)]
pub fn index_complete(netns_cookie: u64) -> bool {
    let Some(slot) = NAMESPACES.get_ptr(namespace_slot(netns_cookie)) else {
        return false;
    };
    // SAFETY: pointers into the array; the agent writes the cookie and seeding time under
    // `version` (odd while it writes), so a copy taken between two equal even reads is whole.
    unsafe {
        let version = read_volatile(&(*slot).version);
        let copy = NamespaceIndex {
            version,
            netns_cookie: read_volatile(&(*slot).netns_cookie),
            indexed_since: read_volatile(&(*slot).indexed_since),
            lease_until: read_volatile(&(*slot).lease_until),
            unindexed_at: read_volatile(&(*slot).unindexed_at),
        };
        version & 1 == 0
            && read_volatile(&(*slot).version) == version
            && copy.complete_for(netns_cookie, bpf_jiffies64())
    }
}

/// Notes that a socket in this namespace holds (or may hold) a tuple the claims lack.
#[inline(always)]
pub fn note_unindexed(netns_cookie: u64) {
    if let Some(entry) = NAMESPACES.get_ptr_mut(namespace_slot(netns_cookie)) {
        // SAFETY: `jiffies` (inlined), and a load and a store into the array.
        unsafe {
            let now = bpf_jiffies64();
            // Stored only when it moves forward: every unchecked connect notes, and a store on
            // every one would bounce the slot's cache line between the CPUs.
            if before(read_volatile(&(*entry).unindexed_at), now) {
                write_volatile(&raw mut (*entry).unindexed_at, now);
            }
        }
    }
}
