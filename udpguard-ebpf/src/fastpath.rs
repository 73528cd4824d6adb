//! The O(1) no-conflict path, the kernel's half (the reasoning is in
//! `udpguard_common::namespaces`). Without it every connect runs `bpf_sk_lookup_udp`, which
//! walks every socket on the local address and port when no connected socket holds the tuple:
//! the QUIC-server shape, thousands of connected sockets on one port, pays for each.
use core::{
    intrinsics::{AtomicOrdering::SeqCst, atomic_or},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{btf_maps::Array, helpers::generated::bpf_jiffies64, macros::btf_map};
use udpguard_common::{
    NAMESPACE_SLOTS, NamespaceIndex, UNSHARED_PORT_WORDS, namespace_slot, time::before,
    unshared_port_bit,
};

/// The agent writes its word through a shared mapping, field by field.
const MMAPABLE: usize = aya_ebpf::bindings::BPF_F_MMAPABLE as usize;

/// Per namespace slot: the agent's word and the programs' notes (see [`NamespaceIndex`]). An
/// array, read on every connect, and times in `jiffies`: the verifier inlines both, so the
/// check makes no call (a call and return cost ~30 ns each on kernels with return-thunk
/// mitigations).
#[btf_map]
static NAMESPACES: Array<NamespaceIndex, { NAMESPACE_SLOTS as usize }, MMAPABLE> = Array::new();

/// The local ports unshared sockets connected from, per namespace (see [`note_unshared_port`]);
/// the agent reads it through a shared mapping.
#[btf_map]
static UNSHARED_PORTS: Array<u64, { UNSHARED_PORT_WORDS as usize }, MMAPABLE> = Array::new();

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

/// Notes that an unshared socket (no SO_REUSEADDR, no SO_REUSEPORT) connected from this local
/// port, without a claim. Nothing can share its port unless a socket cleared its option after
/// binding a shared one; for that case, a connect from a port noted here is looked up even
/// where the claims index the namespace. Read first: after the first connect from a port the
/// bit is there, and a locked operation on every connect would cost more than the read.
#[inline(always)]
pub fn note_unshared_port(netns_cookie: u64, port: u16) {
    let (word, bit) = unshared_port_bit(netns_cookie, port);
    if let Some(word) = UNSHARED_PORTS.get_ptr_mut(word) {
        // SAFETY: a pointer into the array; an atomic or, as other CPUs set other bits.
        unsafe {
            if read_volatile(word) & bit == 0 {
                atomic_or::<u64, u64, { SeqCst }>(word, bit);
            }
        }
    }
}

/// True when an unshared socket connected from this local port (see [`note_unshared_port`]).
#[inline(always)]
pub fn unshared_port_seen(netns_cookie: u64, port: u16) -> bool {
    let (word, bit) = unshared_port_bit(netns_cookie, port);
    // SAFETY: a pointer into the array.
    UNSHARED_PORTS
        .get_ptr(word)
        .is_none_or(|word| unsafe { read_volatile(word) } & bit != 0)
}
