//! Port notes: the local ports unshared and shared sockets connected from, per namespace (the
//! reasoning is in `udpguard_common::ports`). Two bitmaps of two cache lines per namespace,
//! read on every UDP connect that gets this far; a bit is set with a locked operation only the
//! first time.
use core::{
    intrinsics::{AtomicOrdering::SeqCst, atomic_or},
    ptr::read_volatile,
};

use aya_ebpf::{btf_maps::Array, macros::btf_map};
use udpguard_common::{PORT_NOTE_WORDS, port_note_bit};

/// The agent reads and seeds them through shared mappings.
const MMAPABLE: usize = aya_ebpf::bindings::BPF_F_MMAPABLE as usize;

/// Ports unshared sockets connected from: a shared socket's connect from one is looked up even
/// where the claims index the namespace.
#[btf_map]
static UNSHARED_PORTS: Array<u64, { PORT_NOTE_WORDS as usize }, MMAPABLE> = Array::new();

/// Ports shared sockets connected from: an unshared socket's connect from one is checked in
/// full (it may have cleared its reuse option after binding beside them).
#[btf_map]
static SHARED_PORTS: Array<u64, { PORT_NOTE_WORDS as usize }, MMAPABLE> = Array::new();

/// Notes that an unshared socket connected from this local port (network order).
#[inline(always)]
pub fn note_unshared(netns_cookie: u64, port: u16) {
    note(&UNSHARED_PORTS, netns_cookie, port);
}

/// True when an unshared socket connected from this local port.
#[inline(always)]
pub fn unshared_seen(netns_cookie: u64, port: u16) -> bool {
    seen(&UNSHARED_PORTS, netns_cookie, port)
}

/// Notes that a shared socket connected from this local port.
#[inline(always)]
pub fn note_shared(netns_cookie: u64, port: u16) {
    note(&SHARED_PORTS, netns_cookie, port);
}

/// True when a shared socket connected from this local port.
#[inline(always)]
pub fn shared_seen(netns_cookie: u64, port: u16) -> bool {
    seen(&SHARED_PORTS, netns_cookie, port)
}

#[inline(always)]
fn note(map: &Array<u64, { PORT_NOTE_WORDS as usize }, MMAPABLE>, netns_cookie: u64, port: u16) {
    let (word, bit) = port_note_bit(netns_cookie, port);
    if let Some(word) = map.get_ptr_mut(word) {
        // SAFETY: a pointer into the array; an atomic or, as other CPUs set other bits. Read
        // first: after a port's first connect its bit is there, and a locked operation on
        // every connect would cost more than the read.
        unsafe {
            if read_volatile(word) & bit == 0 {
                atomic_or::<u64, u64, { SeqCst }>(word, bit);
            }
        }
    }
}

/// A missing word reads as noted: slower, never wrong.
#[inline(always)]
fn seen(
    map: &Array<u64, { PORT_NOTE_WORDS as usize }, MMAPABLE>,
    netns_cookie: u64,
    port: u16,
) -> bool {
    let (word, bit) = port_note_bit(netns_cookie, port);
    // SAFETY: a pointer into the array.
    map.get_ptr(word)
        .is_none_or(|word| unsafe { read_volatile(word) } & bit != 0)
}
