//! The per-CPU counters (`COUNTERS`), summed in user space: one slot per outcome of the
//! decision, and the reasons a connect was not checked.

/// One counter slot per outcome. The index is the slot in [`Counters::values`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The 4-tuple was checked: looked up with the kernel's own lookup, or (see `Indexed`)
    /// found unclaimed where the claims index every held tuple.
    Checked = 0,
    /// A conflict was refused (enforce mode).
    Rejected = 1,
    /// A conflict was let through and counted (audit mode).
    Audited = 2,
    /// Not checked: bound to the wildcard address, and no live agent to predict the source
    /// the kernel will choose.
    Wildcard = 3,
    /// Not checked: no local port yet, the kernel picks one after the hook.
    Autobind = 4,
    /// Not checked: an IPv6-bound socket connecting to an IPv4 peer (the kernel refuses it).
    FamilyMismatch = 5,
    /// A conflict event dropped because the ring buffer was full.
    EventsLost = 6,
    /// Conflicts with a racing socket, seen through its claim (also counted as rejected or
    /// audited).
    Raced = 7,
    /// Another socket's claim with no connected socket behind it (its socket disconnected,
    /// or its connect failed): taken over, the connect allowed.
    StaleClaims = 8,
    /// Not checked: bound to the wildcard address, in a network namespace the agent is still
    /// loading (reported to it on the first such connect).
    WildcardNewNetns = 9,
    /// Not checked: bound to the wildcard address, where the route mirror cannot say for sure
    /// which source the kernel will pick (policy rules, VRFs, multipath, SO_BINDTODEVICE,
    /// marks, multicast and link-local peers, no route).
    WildcardUnmodeled = 10,
    /// Not checked: auto-bound, with its reuse flags cleared so its port is unshared
    /// (`--autobind unique`).
    AutobindUnique = 11,
    /// Checked through the claims alone (the fast path): no socket claimed the tuple, so the
    /// kernel's lookup was skipped (also in `checked`).
    Indexed = 12,
    /// Not checked: the peer or the local address is multicast or broadcast. Datagrams to a
    /// group reach every member and none come from one, so no socket can starve.
    Multicast = 13,
    /// Not checked: the socket is (or will be, for a link-local peer) bound to a device, in a
    /// namespace whose claims do not index every held tuple; the kernel's lookup cannot see
    /// device-bound holders, so one connected before the guard could be missed.
    DeviceBound = 14,
    /// A claim that could not be recorded (its bucket and the spill bucket full of fresh
    /// claims), or a socket whose claim cannot be released on close (no record): the race
    /// protection of that connect is lost, never a legitimate connect.
    Unrecorded = 15,
    /// An older claim of another tuple dropped to make room (its buckets full): that tuple's
    /// namespace loses the fast path until the agent seeds it again; nothing is refused.
    Evicted = 16,
    /// Nothing to check: the socket has neither SO_REUSEADDR nor SO_REUSEPORT, so the kernel
    /// let no other socket bind its address and port (sharing one takes both sockets having a
    /// reuse option when the second binds), and no other can hold its 4-tuple. Not a reason
    /// the guard failed to check: most client sockets (a resolver's upstream queries) are
    /// these. A socket that cleared its option after binding beside shared ones is checked in
    /// full where the guard saw a shared socket connect from that port (see `ports`).
    Unshared = 17,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 18] = [
        Counter::Checked,
        Counter::Rejected,
        Counter::Audited,
        Counter::Wildcard,
        Counter::Autobind,
        Counter::FamilyMismatch,
        Counter::EventsLost,
        Counter::Raced,
        Counter::StaleClaims,
        Counter::WildcardNewNetns,
        Counter::WildcardUnmodeled,
        Counter::AutobindUnique,
        Counter::Indexed,
        Counter::Multicast,
        Counter::DeviceBound,
        Counter::Unrecorded,
        Counter::Evicted,
        Counter::Unshared,
    ];

    /// The counter's name in `status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Checked => "checked",
            Counter::Rejected => "rejected",
            Counter::Audited => "audited",
            Counter::Wildcard => "wildcard",
            Counter::Autobind => "autobind",
            Counter::FamilyMismatch => "family_mismatch",
            Counter::EventsLost => "events_lost",
            Counter::Raced => "raced",
            Counter::StaleClaims => "stale_claims",
            Counter::WildcardNewNetns => "wildcard_new_netns",
            Counter::WildcardUnmodeled => "wildcard_unmodeled",
            Counter::AutobindUnique => "autobind_unique",
            Counter::Indexed => "indexed",
            Counter::Multicast => "multicast",
            Counter::DeviceBound => "device_bound",
            Counter::Unrecorded => "unrecorded",
            Counter::Evicted => "evicted",
            Counter::Unshared => "unshared",
        }
    }

    /// True for the reasons a UDP connect was not checked.
    pub const fn is_not_checked_reason(self) -> bool {
        matches!(
            self,
            Counter::Wildcard
                | Counter::WildcardNewNetns
                | Counter::WildcardUnmodeled
                | Counter::Autobind
                | Counter::AutobindUnique
                | Counter::FamilyMismatch
                | Counter::Multicast
                | Counter::DeviceBound
        )
    }
}

/// Slots in [`Counters`]; more than [`Counter::ALL`] so new reasons keep the map's layout.
pub const COUNTER_SLOTS: usize = 24;

/// The per-CPU counters, in the one-entry `COUNTERS` per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTER_SLOTS],
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            values: [0; COUNTER_SLOTS],
        }
    }
}

impl Counters {
    /// The value of one counter.
    pub const fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
unsafe impl aya::Pod for Counters {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_own_slot_and_name() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!((*c as usize) < COUNTER_SLOTS);
            assert_eq!(
                Counter::ALL.iter().filter(|o| o.name() == c.name()).count(),
                1
            );
        }
    }
}
