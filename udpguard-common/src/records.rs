//! Socket records (`RECORDS`) and births (`BIRTHS`).
//!
//! A record says where a socket's claim is, so its close releases it. An array sized at load
//! time; a socket's record is made at its first claim, at the first of [`RECORD_PROBES`] places
//! from its cookie that is free or [`reclaimable`]. A record only matters while its claim is
//! fresh: an old claim nobody releases refuses nobody (the lookup finds no holder, and it is
//! taken over). So records are reused once their claim is old, and no number of sockets can
//! make a legitimate connect fail for want of one. The exception is a device-bound claim, which
//! the lookup cannot confirm: its record is kept as long as the claim is in place.
//!
//! A birth tells a newcomer from a racer (see `claims::contest`): a socket born after a fresh
//! claim cannot be racing its claimant. Only the births of the last `FRESH_NS` matter (an older
//! socket is older than every fresh claim, as one without a birth counts), so births are kept
//! direct-mapped by cookie in a fixed array, with one plain store per socket created: a birth
//! is lost only when [`BIRTH_SLOTS`] sockets are created within `FRESH_NS`, and a socket
//! without one counts as old (only ever refused, in a race, never let through wrongly).
//!
//! A birth is not a clock reading (one took ~90 ns of every socket's creation on a VM) but the
//! order of the newest claim made before it, which every claim publishes in the place
//! [`CLAIM_CLOCK`] before its way: it is never later than the socket's real creation, so a
//! socket created before a claim is born before it (a possible racer, as with a clock), and one
//! created after a claim was published is born at or after it (a newcomer). Only a socket
//! created in the instant between a claim's clock read and its publication counts as older
//! than it is, which can only refuse it, in a race, never let one through.

use crate::time::fresh_at;

/// Places a record may be from its home (`cookie & mask`).
pub const RECORD_PROBES: u32 = 4;

/// Places in `BIRTHS` (16 bytes each: 1 MiB). Sockets created faster than this many per
/// `FRESH_NS` (6.5 million a second) overwrite births still young.
pub const BIRTH_SLOTS: u32 = 1 << 16;

/// The place in `BIRTHS`, after the births, whose `born` is the order of the newest claim made
/// (its `cookie` stays 0). `BIRTHS` has `BIRTH_SLOTS + 1` places.
pub const CLAIM_CLOCK: u32 = BIRTH_SLOTS;

/// The place of a socket's birth in `BIRTHS`.
#[inline(always)]
pub const fn birth_slot(cookie: u64) -> u32 {
    cookie as u32 & (BIRTH_SLOTS - 1)
}

/// When a socket was created, as the sock_create program saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Birth {
    /// The socket's cookie (a place holds the last socket born there).
    pub cookie: u64,
    /// The order (`CLOCK_MONOTONIC` nanoseconds) of the newest claim made before it; 0: none.
    pub born: u64,
}

/// Bits of [`SocketRecord::flags`].
pub mod record_flags {
    /// The record's claim is device-bound: its release on close is what keeps it truthful.
    pub const DEVICE_CLAIM: u32 = 1;
}

/// Where a UDP socket's claim is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRecord {
    /// The socket's cookie; 0 marks a free record.
    pub cookie: u64,
    /// Its claim's order (identity), to tell it from a later claim in the same way; when the
    /// record was made, until its socket's claim is in it (a claim is being made).
    pub claim_order: u64,
    /// Its claim's way in the table (bucket * 8 + way) plus one; 0 for none.
    pub claim: u32,
    /// Bits of [`record_flags`].
    pub flags: u32,
}

/// True when `record` may be given to another socket at `now`. `claim_in_place` says whether
/// its device-bound claim is still there (asked only for such a claim).
#[inline(always)]
pub fn reclaimable(
    record: &SocketRecord,
    now: u64,
    fresh: u64,
    claim_in_place: impl FnOnce() -> bool,
) -> bool {
    if record.cookie == 0 {
        return true;
    }
    // A claim being made (the record is its socket's until the claim is noted in it), or a
    // fresh one: its socket may close and another take the tuple at once, and the close must
    // release it.
    if fresh_at(now, record.claim_order, fresh) {
        return false;
    }
    if record.claim == 0 {
        return true;
    }
    if record.flags & record_flags::DEVICE_CLAIM != 0 {
        return !claim_in_place();
    }
    true
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
    unsafe impl aya::Pod for super::SocketRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Birth {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::FRESH_NS;

    const NOW: u64 = 5_000_000_000;
    const OLD: u64 = NOW - FRESH_NS - 1;

    fn record(claim_order: u64, claim: u32) -> SocketRecord {
        SocketRecord {
            cookie: 9,
            claim_order,
            claim,
            flags: 0,
        }
    }

    #[test]
    fn free_and_old_records_are_reused() {
        let never = || -> bool { panic!("asked only for device claims") };
        assert!(reclaimable(&SocketRecord::default(), NOW, FRESH_NS, never));
        assert!(
            reclaimable(&record(OLD, 0), NOW, FRESH_NS, never),
            "its claim was never made"
        );
        assert!(reclaimable(&record(OLD, 3), NOW, FRESH_NS, never));
    }

    #[test]
    fn a_claim_being_made_or_a_fresh_claim_keeps_its_record() {
        let never = || -> bool { panic!("asked only for device claims") };
        assert!(
            !reclaimable(&record(NOW - 10, 0), NOW, FRESH_NS, never),
            "being made"
        );
        assert!(!reclaimable(&record(NOW - 10, 3), NOW, FRESH_NS, never));
        assert!(
            !reclaimable(&record(NOW + 10, 3), NOW, FRESH_NS, never),
            "made on another CPU just after our clock read"
        );
    }

    #[test]
    fn a_device_claim_keeps_its_record_while_it_is_in_place() {
        let device = SocketRecord {
            flags: record_flags::DEVICE_CLAIM,
            ..record(OLD, 3)
        };
        assert!(!reclaimable(&device, NOW, FRESH_NS, || true));
        assert!(reclaimable(&device, NOW, FRESH_NS, || false));
    }

    #[test]
    fn births_are_direct_mapped_by_cookie() {
        assert_eq!(birth_slot(5), birth_slot(5 + BIRTH_SLOTS as u64));
        assert_ne!(birth_slot(5), birth_slot(6));
        assert!(birth_slot(u64::MAX) < BIRTH_SLOTS);
        assert!(
            birth_slot(u64::MAX) < CLAIM_CLOCK,
            "no socket's birth is the claim clock"
        );
        assert_eq!(core::mem::size_of::<Birth>(), 16);
        assert_eq!(core::mem::size_of::<SocketRecord>(), 24);
    }
}
