//! The claim table (`CLAIMS`): the tuples sockets in the guarded cgroup hold or are about to
//! hold. It closes the race the kernel's lookup leaves open (two sockets connecting to one
//! tuple at once both pass the lookup: neither is hashed as connected until after the hook),
//! and where it indexes every held tuple of a namespace it lets connects skip the lookup (the
//! fast path, see `namespaces`).
//!
//! A memory-mappable array of buckets, sized at load time (a power of two). A tuple's tag picks
//! its primary bucket; when that is full, its claim spills into a second bucket and the
//! primary counts it in `spilled`, so a lookup reads one cache line unless its bucket has
//! spilled. A way is won with one compare-and-swap and written with `order` last; nothing ever
//! waits for another CPU.
//!
//! The rules that decide on another socket's claim are [`contest`], pure and unit-tested here;
//! the eBPF code calls them.

use crate::time::fresh_at;

/// Ways per bucket: the spill count and seven tags fill one cache line.
pub const CLAIM_WAYS: usize = 7;

/// A connected 4-tuple in one network namespace: what a claim is of.
/// Addresses and ports in network order; an IPv4 address is in `*_addr[0]`, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimKey {
    pub netns_cookie: u64,
    pub local_addr: [u32; 4],
    pub peer_addr: [u32; 4],
    pub local_port: u16,
    pub peer_port: u16,
    /// 4 or 6.
    pub family: u32,
}

impl ClaimKey {
    /// The tuple's 64-bit tag in the claim table (never 0, which marks a free way): what the
    /// programs and the agent's seeding both compute. Distinct tuples share a tag with
    /// probability 2^-63.
    #[inline(always)]
    pub fn tag(&self) -> u64 {
        let words = [
            self.netns_cookie,
            self.local_addr[0] as u64 | (self.local_addr[1] as u64) << 32,
            self.local_addr[2] as u64 | (self.local_addr[3] as u64) << 32,
            self.peer_addr[0] as u64 | (self.peer_addr[1] as u64) << 32,
            self.peer_addr[2] as u64 | (self.peer_addr[3] as u64) << 32,
            self.local_port as u64 | (self.peer_port as u64) << 16 | (self.family as u64) << 32,
        ];
        let mut hash = 0x9e37_79b9_7f4a_7c15_u64;
        let mut i = 0;
        while i < words.len() {
            hash = mix(hash ^ words[i]);
            i += 1;
        }
        hash | 1
    }
}

impl ClaimKey {
    /// The key of the tuple `local` -> `peer` in namespace `netns_cookie`, as the programs make
    /// it: a v4-mapped IPv6 tuple is IPv4.
    pub fn of(
        netns_cookie: u64,
        local: core::net::SocketAddr,
        peer: core::net::SocketAddr,
    ) -> ClaimKey {
        let (local_addr, family) = addr_words(local.ip());
        let (peer_addr, _) = addr_words(peer.ip());
        ClaimKey {
            netns_cookie,
            local_addr,
            peer_addr,
            local_port: local.port().to_be(),
            peer_port: peer.port().to_be(),
            family,
        }
    }
}

/// An address as the programs hold it, four network-order words (IPv4, and v4-mapped IPv6,
/// in the first), and its family (4 or 6).
pub fn addr_words(addr: core::net::IpAddr) -> ([u32; 4], u32) {
    let word = |b: [u8; 4]| u32::from_ne_bytes(b);
    match addr {
        core::net::IpAddr::V4(a) => ([word(a.octets()), 0, 0, 0], 4),
        core::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => ([word(v4.octets()), 0, 0, 0], 4),
            None => {
                let o = a.octets();
                let at = |i: usize| word([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ([at(0), at(4), at(8), at(12)], 6)
            }
        },
    }
}

/// The address the programs hold as `words`, of `family` (4 or 6; None for another).
pub fn words_addr(words: [u32; 4], family: u32) -> Option<core::net::IpAddr> {
    match family {
        4 => Some(core::net::Ipv4Addr::from(words[0].to_ne_bytes()).into()),
        6 => {
            let mut bytes = [0u8; 16];
            let mut i = 0;
            while i < 4 {
                let b = words[i].to_ne_bytes();
                bytes[i * 4..i * 4 + 4].copy_from_slice(&b);
                i += 1;
            }
            Some(core::net::Ipv6Addr::from(bytes).into())
        }
        _ => None,
    }
}

/// splitmix64's finalizer: every input bit flips about half the output bits.
#[inline(always)]
const fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The primary bucket of a tag in a table of `mask + 1` buckets.
#[inline(always)]
pub const fn primary_bucket(tag: u64, mask: u32) -> u32 {
    (tag >> 32) as u32 & mask
}

/// The bucket a tag spills into when its primary is full: never the primary itself (for a
/// table of two buckets or more).
#[inline(always)]
pub const fn spill_bucket(tag: u64, mask: u32) -> u32 {
    primary_bucket(tag, mask) ^ ((tag >> 8) as u32 | 1) & mask
}

/// A claim's place as a socket record holds it: its bucket times eight plus its way, plus one
/// (0 means no claim). Shifts, not a multiplication by [`CLAIM_WAYS`]: no division back.
#[inline(always)]
pub const fn claim_ref(bucket: u32, way: usize) -> u32 {
    (bucket << 3 | way as u32 & 7) + 1
}

/// The bucket and way of a claim a socket record holds (see [`claim_ref`]).
#[inline(always)]
pub const fn way_of_ref(claim: u32) -> (u32, usize) {
    let place = claim.wrapping_sub(1);
    (place >> 3, (place & 7) as usize)
}

/// A way's `order` while it is written (free ways included): readers see a claim in progress.
pub const WRITING: u64 = 0;

/// The order of a claim the agent seeded from a socket dump: older than every socket.
pub const SEEDED_ORDER: u64 = 1;

/// The mark of a claim its socket let go of (it connected elsewhere): no cookie has this bit.
pub const DISOWNED: u64 = 1 << 63;

/// When a claim was let go of (`jiffies`), if its owner says it was.
#[inline(always)]
pub const fn disowned_at(owner: u64) -> Option<u64> {
    if owner & DISOWNED != 0 {
        Some(owner & !DISOWNED)
    } else {
        None
    }
}

/// The device of a claim made towards a link-local peer by a socket bound to no device: the
/// kernel binds it to the peer's scope, which the hook cannot read.
pub const DEVICE_UNKNOWN: u32 = u32::MAX;

/// Bits of [`ClaimSlot::flags`].
pub mod claim_flags {
    /// The claimant has a socket record, so its close (or its connect elsewhere) releases the
    /// claim: only then can a device-bound claim stand for its holder.
    pub const RECORDED: u32 = 1;
}

/// One claim: a tuple a socket holds or is about to hold (its tag is in
/// [`ClaimBucket::tags`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimSlot {
    /// When the claim was made (`CLOCK_MONOTONIC` ns), which is also its identity:
    /// [`WRITING`] while the way is written, [`SEEDED_ORDER`] for a seeded claim.
    pub order: u64,
    /// The claiming socket's cookie; 0 for a claim seeded from a socket dump; [`DISOWNED`]
    /// with the `jiffies` it happened for one its socket let go of (see [`disowned_at`]).
    pub owner: u64,
    /// The tuple's network namespace: a claim dropped for room turns the fast path off there.
    pub netns_cookie: u64,
    /// The claimant's `SO_BINDTODEVICE` device (0 for none), or [`DEVICE_UNKNOWN`].
    pub device: u32,
    /// Bits of [`claim_flags`].
    pub flags: u32,
}

/// A bucket of the claim table. The spill count and the tags share the first cache line:
/// finding a tuple (or a free way) reads that line alone, and a claim touches one more.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimBucket {
    /// How many tuples whose primary bucket this is have their claim in their spill bucket.
    pub spilled: u64,
    /// [`ClaimKey::tag`] of each way's tuple; 0 marks a free way.
    pub tags: [u64; CLAIM_WAYS],
    pub slots: [ClaimSlot; CLAIM_WAYS],
}

/// Whether two sockets bound to these devices receive the same datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Devices {
    /// One is bound to none, or both to the same: they do.
    Overlap,
    /// Both are bound, to different devices: each gets its own device's.
    Apart,
    /// One device is a link-local peer's scope, which the hook cannot read.
    Unknown,
}

#[inline(always)]
pub const fn devices(a: u32, b: u32) -> Devices {
    if a == 0 || b == 0 {
        Devices::Overlap
    } else if a == DEVICE_UNKNOWN || b == DEVICE_UNKNOWN {
        Devices::Unknown
    } else if a == b {
        Devices::Overlap
    } else {
        Devices::Apart
    }
}

/// What another socket's claim on the tuple means for a connecting socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contest {
    /// The kernel's lookup found an ESTABLISHED holder: a conflict.
    Held,
    /// A device-bound socket holds the tuple (its claim stands until it closes or connects
    /// elsewhere): a conflict the kernel's lookup cannot see.
    HeldByDevice,
    /// The claimant may be connecting to the tuple right now: a conflict (a race).
    Lost,
    /// Nobody connected backs the claim (its socket disconnected, or its connect failed), or
    /// the caller is newer than it: the caller takes it over. `blind` when the claim was a
    /// device-bound socket's whose close is not seen, so its holder cannot be ruled out.
    TakeOver { blind: bool },
    /// The claimant is bound to another device than the caller: each gets its own device's
    /// datagrams, no conflict. The caller goes ahead without a claim of its own (one tuple has
    /// one claim), so the claims no longer index every holder of the tuple. `blind` when one
    /// device is a link-local peer's scope the hook cannot read: they may be the same, and the
    /// connect is not checked (rather than refused on a guess).
    Coexist { blind: bool },
}

/// What the connecting socket brings to a contest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claimant {
    /// When it was born (0 when the programs did not see it born: older than any claim).
    pub born: u64,
    /// Its device, as in [`ClaimSlot::device`].
    pub device: u32,
    /// Now, `CLOCK_MONOTONIC` ns.
    pub now: u64,
}

/// Decides on another socket's claim `seen` of the caller's tuple. `held` is the kernel's
/// lookup (a walk of the port's sockets), asked only here, when a claim is there.
#[inline(always)]
pub fn contest(
    seen: &ClaimSlot,
    me: &Claimant,
    fresh: u64,
    held: impl FnOnce() -> bool,
) -> Contest {
    // The kernel sees an ESTABLISHED holder: whatever the claim's story, a conflict.
    if held() {
        return Contest::Held;
    }
    // Being written: a racer is claiming the tuple this instant.
    if seen.order == WRITING {
        return Contest::Lost;
    }
    let device_bound = seen.device != 0;
    match devices(seen.device, me.device) {
        // Bound to two different devices: the kernel gives each its own device's datagrams.
        Devices::Apart => return Contest::Coexist { blind: false },
        // Perhaps the same device, perhaps not: never refused on a guess.
        Devices::Unknown => return Contest::Coexist { blind: true },
        Devices::Overlap => {}
    }
    // A fresh claim and a socket born before it: it may be racing the claimant, which is
    // between its hook and the kernel hashing it.
    if fresh_at(me.now, seen.order, fresh) && me.born < seen.order {
        return Contest::Lost;
    }
    if device_bound {
        // The lookup cannot see device-bound sockets. A recorded claim is released when its
        // socket closes or moves, so it stands for its holder.
        if seen.flags & claim_flags::RECORDED != 0 {
            return Contest::HeldByDevice;
        }
        return Contest::TakeOver { blind: true };
    }
    // Stale, or the caller is newer than the claim: no connected socket backs it.
    Contest::TakeOver { blind: false }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
    unsafe impl aya::Pod for super::ClaimKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClaimBucket {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::FRESH_NS;

    const NOW: u64 = 1_000_000_000;

    fn claim(order: u64) -> ClaimSlot {
        ClaimSlot {
            order,
            owner: 7,
            netns_cookie: 1,
            device: 0,
            flags: claim_flags::RECORDED,
        }
    }

    fn me(born: u64) -> Claimant {
        Claimant {
            born,
            device: 0,
            now: NOW,
        }
    }

    #[test]
    fn a_holder_the_lookup_sees_is_a_conflict_whatever_the_claim() {
        for seen in [claim(WRITING), claim(NOW), claim(SEEDED_ORDER)] {
            assert_eq!(contest(&seen, &me(NOW), FRESH_NS, || true), Contest::Held);
        }
    }

    #[test]
    fn a_claim_being_written_is_a_racer() {
        assert_eq!(
            contest(&claim(WRITING), &me(NOW), FRESH_NS, || false),
            Contest::Lost
        );
    }

    #[test]
    fn a_fresh_claim_refuses_only_sockets_born_before_it() {
        let seen = claim(NOW - 1_000);
        assert_eq!(
            contest(&seen, &me(0), FRESH_NS, || false),
            Contest::Lost,
            "no birth seen"
        );
        assert_eq!(
            contest(&seen, &me(NOW - 2_000), FRESH_NS, || false),
            Contest::Lost
        );
        assert_eq!(
            contest(&seen, &me(NOW - 500), FRESH_NS, || false),
            Contest::TakeOver { blind: false },
            "born after the claim: its claimant has disconnected, or failed"
        );
    }

    #[test]
    fn a_stale_claim_refuses_nobody() {
        let seen = claim(NOW - FRESH_NS - 1);
        assert_eq!(
            contest(&seen, &me(0), FRESH_NS, || false),
            Contest::TakeOver { blind: false }
        );
        let seeded = ClaimSlot {
            owner: 0,
            flags: 0,
            ..claim(SEEDED_ORDER)
        };
        assert_eq!(
            contest(&seeded, &me(0), FRESH_NS, || false),
            Contest::TakeOver { blind: false }
        );
    }

    #[test]
    fn the_lookup_is_asked_only_when_no_rule_before_it_decides() {
        let mut asked = false;
        contest(&claim(NOW), &me(0), FRESH_NS, || {
            asked = true;
            false
        });
        assert!(
            asked,
            "the lookup comes first: a holder makes it Held, not Lost"
        );
    }

    #[test]
    fn a_recorded_device_bound_claim_stands_for_its_holder() {
        let seen = ClaimSlot {
            device: 3,
            ..claim(NOW - FRESH_NS - 1)
        };
        let on = |device| Claimant { device, ..me(NOW) };
        assert_eq!(
            contest(&seen, &on(0), FRESH_NS, || false),
            Contest::HeldByDevice
        );
        assert_eq!(
            contest(&seen, &on(3), FRESH_NS, || false),
            Contest::HeldByDevice
        );
        assert_eq!(
            contest(&seen, &on(DEVICE_UNKNOWN), FRESH_NS, || false),
            Contest::Coexist { blind: true },
            "a link-local peer's scope is unknown: not refused on a guess"
        );
        assert_eq!(
            contest(&seen, &on(4), FRESH_NS, || false),
            Contest::Coexist { blind: false },
            "another device: each socket gets its own device's datagrams"
        );
        let racing = ClaimSlot {
            device: 3,
            ..claim(NOW)
        };
        assert_eq!(
            contest(&racing, &on(4), FRESH_NS, || false),
            Contest::Coexist { blind: false }
        );
        let older = Claimant {
            born: 0,
            device: 3,
            now: NOW,
        };
        assert_eq!(contest(&racing, &older, FRESH_NS, || false), Contest::Lost);
        let unrecorded = ClaimSlot { flags: 0, ..seen };
        assert_eq!(
            contest(&unrecorded, &on(0), FRESH_NS, || false),
            Contest::TakeOver { blind: true },
            "its close is not seen: it cannot stand for a holder, and the connect is not checked"
        );
    }

    #[test]
    fn devices_overlap_unless_both_are_known_and_different() {
        for (a, b) in [(0, 0), (0, 5), (5, 0), (5, 5), (0, DEVICE_UNKNOWN)] {
            assert_eq!(devices(a, b), Devices::Overlap, "{a} {b}");
        }
        assert_eq!(devices(5, 6), Devices::Apart);
        assert_eq!(devices(DEVICE_UNKNOWN, 5), Devices::Unknown);
        assert_eq!(devices(DEVICE_UNKNOWN, DEVICE_UNKNOWN), Devices::Unknown);
    }

    #[test]
    fn claim_tags_are_never_free_and_tell_tuples_apart() {
        let key = ClaimKey {
            netns_cookie: 4096,
            local_addr: [0x0100_007f, 0, 0, 0],
            peer_addr: [0x0200_007f, 0, 0, 0],
            local_port: 4444u16.to_be(),
            peer_port: 53u16.to_be(),
            family: 4,
        };
        let variants = [
            key,
            ClaimKey {
                netns_cookie: 4097,
                ..key
            },
            ClaimKey {
                peer_port: 54u16.to_be(),
                ..key
            },
            ClaimKey {
                local_port: 53u16.to_be(),
                peer_port: 4444u16.to_be(),
                ..key
            },
            ClaimKey {
                local_addr: key.peer_addr,
                peer_addr: key.local_addr,
                ..key
            },
            ClaimKey { family: 6, ..key },
        ];
        for (i, a) in variants.iter().enumerate() {
            assert_ne!(a.tag(), 0, "0 marks a free way");
            for b in &variants[i + 1..] {
                assert_ne!(a.tag(), b.tag());
            }
        }
    }

    #[test]
    fn a_tag_spills_into_another_bucket_of_the_table() {
        for mask in [1u32, 7, 1023, (1 << 20) - 1] {
            for tag in [1u64, 0xdead_beef_0000_0001, u64::MAX, 0x1234_5678_9abc_def1] {
                let (p, s) = (primary_bucket(tag, mask), spill_bucket(tag, mask));
                assert!(p <= mask && s <= mask);
                assert_ne!(p, s, "tag {tag:#x} mask {mask}");
            }
        }
    }

    #[test]
    fn addresses_round_trip_through_the_programs_words() {
        use core::net::{IpAddr, SocketAddr};
        for text in ["127.0.0.1", "::1", "fd00::2", "2001:db8::7"] {
            let ip: IpAddr = text.parse().unwrap();
            let (words, family) = addr_words(ip);
            assert_eq!(words_addr(words, family), Some(ip));
        }
        let mapped: SocketAddr = "[::ffff:127.0.0.2]:53".parse().unwrap();
        let plain: SocketAddr = "127.0.0.2:53".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:4444".parse().unwrap();
        assert_eq!(
            ClaimKey::of(7, local, mapped),
            ClaimKey::of(7, local, plain)
        );
        let key = ClaimKey::of(7, local, plain);
        assert_eq!(key.local_addr[0].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!((key.family, key.peer_port), (4, 53u16.to_be()));
    }

    #[test]
    fn a_claim_ref_round_trips() {
        for (bucket, way) in [(0, 0), (0, 6), (12345, 3), ((1 << 28) - 1, 6)] {
            assert_ne!(claim_ref(bucket, way), 0, "0 means none");
            assert_eq!(way_of_ref(claim_ref(bucket, way)), (bucket, way));
        }
    }

    #[test]
    fn the_bucket_layout_is_what_the_mapping_expects() {
        assert_eq!(core::mem::size_of::<ClaimSlot>(), 32);
        assert_eq!(core::mem::offset_of!(ClaimBucket, spilled), 0);
        assert_eq!(core::mem::offset_of!(ClaimBucket, tags), 8);
        assert_eq!(core::mem::offset_of!(ClaimBucket, slots), 64);
        assert_eq!(core::mem::size_of::<ClaimBucket>(), 320);
        const { assert!(SEEDED_ORDER != WRITING) };
    }
}
