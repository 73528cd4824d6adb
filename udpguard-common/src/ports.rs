//! Port notes (`UNSHARED_PORTS`, `SHARED_PORTS`): per network namespace, the local ports
//! unshared sockets (neither SO_REUSEADDR nor SO_REUSEPORT) and shared ones connected from.
//!
//! An unshared socket holds its port alone unless a socket cleared its reuse option after
//! binding a port it shared (what an adversary sharing a victim's port would do before
//! connecting to the victim's peer). The notes close that way around the rule, in both orders:
//! a connect from a port a shared socket connected from is checked in full even when its
//! socket is unshared now, and a connect from a port an unshared socket connected from is
//! looked up even where the claims index the namespace (the unshared one holds its tuple
//! without a claim). Bits are never cleared: a stale one costs a check, never a refusal.

use crate::namespace_slot;

/// Chunks of a port-note bitmap, one per group of namespace slots.
pub const PORT_NOTE_CHUNKS: u32 = 16;

/// Ports per bit: 64, so a namespace's whole port space is 1,024 bits, two cache lines that
/// stay hot (a bit per port spread a busy client's connects over 8 KiB, each touching a cold
/// line). A bit stands for 64 neighbouring ports: servers' ports lie far below the ephemeral
/// range clients' unshared sockets use.
pub const PORTS_PER_NOTE_BIT: u32 = 64;

/// Words (`u64`) in a port-note bitmap (2 KiB).
pub const PORT_NOTE_WORDS: u32 = PORT_NOTE_CHUNKS * (65536 / PORTS_PER_NOTE_BIT / 64);

/// Where a port-note bitmap keeps a local port (in network order, as the programs hold it) of
/// a namespace: its word and its bit. Namespaces in one chunk share their ports' bits (slower,
/// never wrong).
#[inline(always)]
pub const fn port_note_bit(netns_cookie: u64, port_be: u16) -> (u32, u64) {
    let group = u16::from_be(port_be) as u32 / PORTS_PER_NOTE_BIT;
    let chunk = namespace_slot(netns_cookie) & (PORT_NOTE_CHUNKS - 1);
    (chunk * (1024 / 64) + (group >> 6), 1 << (group & 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_s_ports_lie_in_two_cache_lines_of_its_chunk_64_to_a_bit() {
        extern crate std;
        let mut bits = std::collections::HashSet::new();
        let mut words = std::collections::HashSet::new();
        for port in 0..=u16::MAX {
            let (word, bit) = port_note_bit(4097, port.to_be());
            assert!(word < PORT_NOTE_WORDS);
            assert_eq!(bit.count_ones(), 1);
            bits.insert((word, bit));
            words.insert(word);
        }
        assert_eq!(bits.len(), 1024, "64 ports to a bit");
        assert_eq!(words.len(), 16, "two cache lines");
        let same = |a: u16, b: u16| port_note_bit(9, a.to_be()) == port_note_bit(9, b.to_be());
        assert!(
            same(32768, 32831) && !same(32767, 32768),
            "neighbouring ports in host order"
        );
        assert!(!same(443, 33000));
        let chunk = |cookie| port_note_bit(cookie, 0).0 / 16;
        assert_ne!(
            chunk(1),
            chunk(2),
            "neighbouring namespaces use different chunks"
        );
    }
}
