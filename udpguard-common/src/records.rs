//! Socket records (`RECORDS`): for each UDP socket the programs saw born, its birth (which
//! tells a newcomer from a racer, see `claims::contest`) and where its claim is (so its close
//! releases it). An array sized at load time; a socket's record is at the first of
//! [`RECORD_PROBES`] places from its cookie that is free or [`reclaimable`].
//!
//! A record only matters while its socket is young or its claim is fresh: an old socket
//! without a record counts as old, which it is, and an old claim nobody releases refuses
//! nobody (the lookup finds no holder, and it is taken over). So records are reused once both
//! are old, and no number of sockets can make a legitimate connect fail for want of one. The
//! exception is a device-bound claim, which the lookup cannot confirm: its record is kept as
//! long as the claim is in place.

use crate::time::fresh_at;

/// Places a record may be from its home (`cookie & mask`).
pub const RECORD_PROBES: u32 = 4;

/// Bits of [`SocketRecord::flags`].
pub mod record_flags {
    /// The record's claim is device-bound: its release on close is what keeps it truthful.
    pub const DEVICE_CLAIM: u32 = 1;
}

/// One UDP socket the programs know.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRecord {
    /// The socket's cookie; 0 marks a free record.
    pub cookie: u64,
    /// Its birth (`CLOCK_MONOTONIC` ns); 0 when it was created before the attach.
    pub born: u64,
    /// Its claim's order (identity), to tell it from a later claim in the same way.
    pub claim_order: u64,
    /// Its claim's way in the table (bucket * `CLAIM_WAYS` + way) plus one; 0 for none.
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
    // A young socket's birth must survive while a fresh claim could be compared with it.
    if record.born != 0 && fresh_at(now, record.born, fresh) {
        return false;
    }
    if record.claim == 0 {
        return true;
    }
    // Its socket may close and another take the tuple at once: the close must release it.
    if fresh_at(now, record.claim_order, fresh) {
        return false;
    }
    if record.flags & record_flags::DEVICE_CLAIM != 0 {
        return !claim_in_place();
    }
    true
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
unsafe impl aya::Pod for SocketRecord {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::FRESH_NS;

    const NOW: u64 = 5_000_000_000;
    const OLD: u64 = NOW - FRESH_NS - 1;

    fn record(born: u64, claim_order: u64) -> SocketRecord {
        SocketRecord {
            cookie: 9,
            born,
            claim_order,
            claim: if claim_order == 0 { 0 } else { 3 },
            flags: 0,
        }
    }

    #[test]
    fn free_and_old_records_are_reused() {
        let never = || -> bool { panic!("asked only for device claims") };
        assert!(reclaimable(&SocketRecord::default(), NOW, FRESH_NS, never));
        assert!(reclaimable(&record(OLD, 0), NOW, FRESH_NS, never));
        assert!(
            reclaimable(&record(0, 0), NOW, FRESH_NS, never),
            "made at connect"
        );
        assert!(reclaimable(&record(OLD, OLD), NOW, FRESH_NS, never));
    }

    #[test]
    fn a_young_socket_or_a_fresh_claim_keeps_its_record() {
        let never = || -> bool { panic!("asked only for device claims") };
        assert!(!reclaimable(&record(NOW - 10, 0), NOW, FRESH_NS, never));
        assert!(!reclaimable(&record(OLD, NOW - 10), NOW, FRESH_NS, never));
        assert!(!reclaimable(&record(0, NOW - 10), NOW, FRESH_NS, never));
    }

    #[test]
    fn a_device_claim_keeps_its_record_while_it_is_in_place() {
        let device = SocketRecord {
            flags: record_flags::DEVICE_CLAIM,
            ..record(OLD, OLD)
        };
        assert!(!reclaimable(&device, NOW, FRESH_NS, || true));
        assert!(reclaimable(&device, NOW, FRESH_NS, || false));
    }
}
