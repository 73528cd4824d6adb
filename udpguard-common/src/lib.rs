//! The types udpguard's kernel programs and user space share: one definition each.
//!
//! Everything here is `#[repr(C)]` plain data: it crosses the kernel boundary through BPF maps.
//! Changing a layout changes the eBPF object, so `udpguard status` then reports the pinned
//! programs as not matching the binary and `udpguard attach` replaces them.
#![no_std]

/// Names of the maps in the eBPF object; user space pins them under these names.
pub mod map_names {
    /// [`crate::Config`], one entry: mode and errno, changed in place by `attach`.
    pub const CONFIG: &str = "CONFIG";
    /// [`crate::Counters`], one per-CPU entry, summed in user space.
    pub const COUNTERS: &str = "COUNTERS";
    /// [`crate::AttachMeta`], one entry, written once by user space at attach time.
    pub const META: &str = "META";
    /// Ring buffer of [`crate::ConflictEvent`]s, one per refused or audited connect.
    pub const EVENTS: &str = "EVENTS";
    /// Array of [`crate::ClaimBucket`]s: the tuples sockets in the cgroup hold or are about to
    /// hold, by [`crate::ClaimKey::tag`].
    pub const CLAIMS: &str = "CLAIMS";
    /// Array of [`crate::SocketRecord`]s: UDP sockets by cookie, their birth and their claim.
    pub const SOCKETS: &str = "SOCKETS";
    /// One-entry array: the order clock, one tick per socket birth and per claim.
    pub const ORDER: &str = "ORDER";
    /// LPM trie: (netns cookie, IPv4 destination prefix) -> [`crate::Route4`], kept by the agent.
    pub const ROUTES4: &str = "ROUTES4";
    /// LPM trie: (netns cookie, IPv6 destination prefix) -> [`crate::Route6`].
    pub const ROUTES6: &str = "ROUTES6";
    /// Hash: netns cookie -> one of [`crate::netns_state`].
    pub const NETNS: &str = "NETNS";
    /// [`crate::AgentState`], one entry: the agent's heartbeat.
    pub const AGENT: &str = "AGENT";
    /// Ring buffer of [`crate::NetnsEvent`]s: a network namespace the agent does not know yet.
    pub const NETNS_EVENTS: &str = "NETNS_EVENTS";
    /// Array of [`crate::NamespaceIndex`]es (fast path), one per [`crate::namespace_slot`];
    /// memory-mappable, the agent writes through a mapping.
    pub const NAMESPACES: &str = "NAMESPACES";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// cgroup/connect4, refusing with EPERM only (loads on kernels without `bpf_set_retval`).
    pub const CONNECT4_PLAIN: &str = "connect4_plain";
    /// cgroup/connect6, refusing with EPERM only.
    pub const CONNECT6_PLAIN: &str = "connect6_plain";
    /// cgroup/connect4, refusing with the configured errno through `bpf_set_retval`.
    pub const CONNECT4: &str = "connect4";
    /// cgroup/connect6, refusing with the configured errno through `bpf_set_retval`.
    pub const CONNECT6: &str = "connect6";
    /// cgroup/sock_release: releases the closing socket's claim.
    pub const RELEASE: &str = "release";
    /// cgroup/sock_create: records a new UDP socket's birth on the order clock.
    pub const CREATE: &str = "create";
    /// Empty programs on connect4, sock_create and sock_release: the benchmark's floor.
    pub const FLOOR: [&str; 3] = ["floor_connect4", "floor_create", "floor_release"];
    /// The reference design's connect4 (lookup, EPERM), for the benchmark.
    pub const REFERENCE: &str = "reference_connect4";
}

/// What the guard does with a conflicting `connect()`.
pub mod mode {
    /// Refuse the connect.
    pub const ENFORCE: u32 = 0;
    /// Let the connect through, but count it.
    pub const AUDIT: u32 = 1;
}

/// Errno values the guard can refuse with (positive, as in `errno.h`).
pub mod errno {
    /// What a cgroup sock_addr program's refusal gives without `bpf_set_retval`.
    pub const EPERM: u32 = 1;
    pub const EADDRINUSE: u32 = 98;
    pub const EADDRNOTAVAIL: u32 = 99;
}

/// What the guard does with a socket that binds its port at connect time (auto-bind).
pub mod autobind {
    /// Count it, change nothing.
    pub const ALLOW: u32 = 0;
    /// Clear its SO_REUSEADDR/SO_REUSEPORT so the kernel picks a port no other socket holds.
    pub const UNIQUE: u32 = 1;
}

/// The guard's settings, in the one-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u32,
    /// One of [`errno`]; anything but EPERM needs the `bpf_set_retval` programs.
    pub errno: u32,
    /// One of [`autobind`].
    pub autobind: u32,
    /// How many `jiffies` a claim stays fresh (able to refuse an older socket): at least
    /// 10 ms, from the tick length user space reads off `CLOCK_MONOTONIC_COARSE`.
    pub fresh_jiffies: u32,
}

/// Slots of the `NAMESPACES` array, picked by netns cookie.
pub const NAMESPACE_SLOTS: u32 = 1024;

/// A network namespace's slot in `NAMESPACES` (namespaces sharing one turn each other's fast
/// path off: slower, never wrong).
#[inline(always)]
pub const fn namespace_slot(netns_cookie: u64) -> u32 {
    netns_cookie as u32 & (NAMESPACE_SLOTS - 1)
}

/// How long, in seconds, the agent's word for a namespace lasts unless renewed (it renews
/// every second): if the agent dies, nobody re-checks that every process there is in the
/// guarded cgroup, so the fast path turns itself off.
pub const INDEX_LEASE_SECS: u64 = 10;

/// One slot of the `NAMESPACES` array: whether the claims index every tuple held in a network
/// namespace (the O(1) no-conflict path is on there). An array, not a hash, and times in
/// `jiffies`, not nanoseconds: it is read on every connect, and the verifier inlines both.
///
/// The agent writes `netns_cookie` and `indexed_since` as a pair, under `version` (odd while
/// it writes, as a seqlock), and `lease_until` alone; the programs write `unindexed_at`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceIndex {
    pub version: u64,
    /// The namespace the agent vouches for in this slot; 0 for none.
    pub netns_cookie: u64,
    /// When it seeded the claims from a socket dump (less a margin for connects in flight).
    pub indexed_since: u64,
    /// Until when its word holds.
    pub lease_until: u64,
    /// When a socket of a namespace in this slot last connected in a way the claims cannot
    /// index, or a claim of one was dropped for room.
    pub unindexed_at: u64,
}

impl NamespaceIndex {
    /// True when, at `now`, the claims hold every tuple held in namespace `netns_cookie` (this
    /// being its slot, read consistently): the agent vouches for it, its lease holds, and
    /// nothing unindexed happened since the seeding. Times are compared signed: they come from
    /// different CPUs.
    #[inline(always)]
    pub fn complete_for(&self, netns_cookie: u64, now: u64) -> bool {
        let before = |a: u64, b: u64| (a.wrapping_sub(b) as i64) < 0;
        self.netns_cookie == netns_cookie
            && self.indexed_since != 0
            && before(now, self.lease_until)
            && before(self.unindexed_at, self.indexed_since)
    }
}

/// How long the agent's heartbeat stays trusted: without it, route data may be stale, and a
/// wildcard-bound connect is let through unchecked.
pub const AGENT_TIMEOUT_NS: u64 = 3_000_000_000;

/// The agent's liveness, in the one-entry `AGENT` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// `CLOCK_MONOTONIC` nanoseconds of the last heartbeat; 0 when no agent runs.
    pub heartbeat_ns: u64,
}

/// What the guard knows of a network namespace's routes, the values of the `NETNS` map.
pub mod netns_state {
    /// Reported to the agent, not loaded yet.
    pub const PENDING: u32 = 1;
    /// Its routes are mirrored: wildcard-bound connects are checked.
    pub const READY: u32 = 2;
    /// Its routing cannot be mirrored (policy rules, VRFs, ...): wildcard connects pass.
    pub const UNMODELED: u32 = 3;
}

/// A route entry's prediction is exact: the kernel will choose `src` (flag in `Route*::flags`).
pub const ROUTE_MODELED: u32 = 1;

/// Where a wildcard-bound IPv4 socket's datagrams to a destination come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route4 {
    /// The source address the kernel will pick, network order.
    pub src: u32,
    /// [`ROUTE_MODELED`] or 0 (unmodeled: multipath, broadcast, ...).
    pub flags: u32,
}

/// The IPv6 counterpart of [`Route4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route6 {
    pub src: [u32; 4],
    pub flags: u32,
}

/// The data part of an IPv4 route key: netns cookie then address, matched as one bit string
/// (a key's prefix length is 64 + the route's prefix length).
pub const fn route_key4(netns_cookie: u64, addr: [u8; 4]) -> [u8; 12] {
    let c = netns_cookie.to_be_bytes();
    [
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The data part of an IPv6 route key: netns cookie then address.
pub const fn route_key6(netns_cookie: u64, addr: [u8; 16]) -> [u8; 24] {
    let c = netns_cookie.to_be_bytes();
    let mut key = [0u8; 24];
    let mut i = 0;
    while i < 8 {
        key[i] = c[i];
        i += 1;
    }
    while i < 24 {
        key[i] = addr[i - 8];
        i += 1;
    }
    key
}

/// A network namespace the kernel saw a wildcard-bound connect in, unknown to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsEvent {
    pub netns_cookie: u64,
    /// The connecting process (thread group id in the upper 32 bits): its /proc/<pid>/ns/net
    /// is the way into the namespace.
    pub pid_tgid: u64,
}

/// One counter slot per outcome of the decision. The index is the slot in [`Counters::values`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The 4-tuple was looked up.
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
    /// Another socket's claim with no connected socket behind it (stale, or its socket
    /// disconnected or failed to connect): taken over, the connect allowed.
    StaleClaims = 8,
    /// Not checked: bound to the wildcard address, in a network namespace the agent is still
    /// loading (reported to it on the first such connect).
    WildcardNewNetns = 9,
    /// Not checked: bound to the wildcard address, where the route mirror cannot say for sure
    /// which source the kernel will pick (policy rules, VRFs, multipath, SO_BINDTODEVICE,
    /// marks, no route).
    WildcardUnmodeled = 10,
    /// Not checked: auto-bound, with its reuse flags cleared so its port is unshared
    /// (`--autobind unique`).
    AutobindUnique = 11,
    /// Checked through the claims alone (the fast path): no socket claimed the tuple, so the
    /// kernel's lookup was skipped (also in `checked`).
    Indexed = 12,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 13] = [
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
        )
    }
}

/// Slots in [`Counters`]; more than [`Counter::ALL`] so new reasons keep the map's layout.
pub const COUNTER_SLOTS: usize = 16;

/// The per-CPU counters, in the one-entry `COUNTERS` per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTER_SLOTS],
}

impl Counters {
    /// The value of one counter.
    pub const fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }
}

/// Facts about an attachment that user space keeps with its pins, in the one-entry `META` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachMeta {
    /// Layout version of this struct; 0 means "never written".
    pub version: u32,
    /// 1 when the programs refuse through `bpf_set_retval` (any errno), 0 for EPERM only.
    pub set_retval: u32,
    /// The cgroup's id (its inode in cgroup2), which names the pin directory.
    pub cgroup_id: u64,
    /// SHA-256 of the eBPF object the programs were loaded from.
    pub object_sha256: [u8; 32],
    /// When the attachment was made, seconds since the epoch.
    pub attached_at: u64,
}

impl AttachMeta {
    pub const VERSION: u32 = 1;
}

/// A connected 4-tuple in one network namespace: the key of the claim map.
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
    /// The tuple's 64-bit tag in the claim table (never 0, which marks a free slot): what the
    /// programs and the agent's seeding both compute, so one definition serves both. Distinct
    /// tuples share a tag with probability 2^-63.
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

/// splitmix64's finalizer: every input bit flips about half the output bits.
#[inline(always)]
const fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Buckets in the claim table; a tuple's bucket is picked by its tag.
pub const CLAIM_BUCKETS: u32 = 1 << 14;
/// Claims per bucket: 131,072 in all. With 10,000 held tuples, a bucket overflows (and the
/// fast path turns off) with probability about 1 in 4,000.
pub const CLAIM_WAYS: usize = 8;

/// The bucket of a tuple with this tag.
#[inline(always)]
pub const fn claim_bucket(tag: u64) -> u32 {
    (tag >> 40) as u32 & (CLAIM_BUCKETS - 1)
}

/// One claim: a tuple a socket holds or is about to hold (its tag is in
/// [`ClaimBucket::tags`]). A writer wins a way with one compare-and-swap (of the tag when
/// free, of `order` otherwise), holds it with `order` at 0, and writes `order` last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimSlot {
    /// The claim's place on the order clock (`ORDER`: one tick per socket birth), so a
    /// socket's birth can be compared with it; [`SEEDED_ORDER`] for a seeded claim; 0 while
    /// the way is being written (free ways included).
    pub order: u64,
    /// `jiffies` when claimed: how fresh it is.
    pub since_jiffies: u64,
    /// The claiming socket's cookie; 0 for a claim seeded from a socket dump.
    pub owner: u64,
    /// The tuple's network namespace (its cookie): a claim dropped for room turns the fast
    /// path off there, and nowhere else.
    pub netns_cookie: u64,
}

/// The order of a claim the agent seeded from a socket dump: older than every socket.
pub const SEEDED_ORDER: u64 = 1;

/// A bucket of the claim table (`CLAIMS`, a memory-mappable array, so the agent seeds it with
/// the same atomic steps the programs take). The tags come first, in one cache line: finding
/// a tuple (or a free way) reads only that line, and a claim touches one more.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimBucket {
    /// [`ClaimKey::tag`] of each way's tuple; 0 marks a free way.
    pub tags: [u64; CLAIM_WAYS],
    pub slots: [ClaimSlot; CLAIM_WAYS],
}

/// A UDP socket the programs have seen born: in the `SOCKETS` array, at the first free place
/// from its cookie on. Freed when the socket closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRecord {
    /// The socket's cookie; 0 marks a free record.
    pub cookie: u64,
    /// Its birth on the order clock.
    pub born: u64,
    /// Its claim's place in the table (bucket * [`CLAIM_WAYS`] + way) plus one; 0 for none.
    pub claim: u64,
    /// Its claim's order, to tell it from a later claim in the same place.
    pub claim_order: u64,
}

/// Places in the `SOCKETS` array, and how many a socket's record may be from its home.
pub const SOCKET_RECORDS: u32 = 1 << 17;
pub const SOCKET_PROBES: u32 = 8;

/// What the guard did with a conflicting connect, in [`ConflictEvent::action`].
pub mod action {
    pub const REJECTED: u32 = 1;
    pub const AUDITED: u32 = 2;
}

/// One refused or audited `connect()`, sent to user space through the `EVENTS` ring buffer.
/// Addresses and ports are in network order; an IPv4 address is in `*_addr[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConflictEvent {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub boot_ns: u64,
    /// The caller's thread group id (what user space calls the pid) in the upper 32 bits.
    pub pid_tgid: u64,
    /// The caller's cgroup v2 id.
    pub cgroup_id: u64,
    /// The network namespace's cookie.
    pub netns_cookie: u64,
    pub comm: [u8; 16],
    pub local_addr: [u32; 4],
    pub peer_addr: [u32; 4],
    pub local_port: u16,
    pub peer_port: u16,
    /// 4 or 6: the family of the 4-tuple (a v4-mapped connect is 4).
    pub family: u32,
    /// One of [`action`].
    pub action: u32,
    /// The errno the connect failed with (0 when audited).
    pub errno: u32,
    /// The caller's socket cookie: tells it apart from the holder in a socket dump.
    pub sock_cookie: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AttachMeta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConflictEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClaimKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClaimBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AgentState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Route4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Route6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetnsEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NamespaceIndex {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut tags = [0u64; 6];
        tags[0] = key.tag();
        tags[1] = ClaimKey {
            netns_cookie: 4097,
            ..key
        }
        .tag();
        tags[2] = ClaimKey {
            peer_port: 54u16.to_be(),
            ..key
        }
        .tag();
        tags[3] = ClaimKey {
            local_port: 53u16.to_be(),
            peer_port: 4444u16.to_be(),
            ..key
        }
        .tag();
        tags[4] = ClaimKey {
            local_addr: key.peer_addr,
            peer_addr: key.local_addr,
            ..key
        }
        .tag();
        tags[5] = ClaimKey { family: 6, ..key }.tag();
        for (i, a) in tags.iter().enumerate() {
            assert_ne!(*a, 0, "0 marks a free slot");
            assert!(claim_bucket(*a) < CLAIM_BUCKETS);
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(key.tag(), tags[0], "one tuple, one tag");
    }

    #[test]
    fn the_claim_table_layout_is_what_the_mapping_expects() {
        assert_eq!(core::mem::size_of::<ClaimSlot>(), 32);
        assert_eq!(core::mem::offset_of!(ClaimBucket, tags), 0);
        assert_eq!(core::mem::offset_of!(ClaimBucket, slots), 64);
        assert_eq!(core::mem::size_of::<ClaimBucket>(), 64 + 32 * CLAIM_WAYS);
        const { assert!(SEEDED_ORDER != 0, "0 marks a slot being written") };
    }

    #[test]
    fn a_namespace_index_vouches_only_for_its_namespace_within_its_lease() {
        let on = NamespaceIndex {
            version: 2,
            netns_cookie: 4097,
            indexed_since: 1_000,
            lease_until: 5_000,
            unindexed_at: 900,
        };
        assert!(on.complete_for(4097, 2_000));
        assert!(
            !on.complete_for(1, 2_000),
            "another namespace in the same slot"
        );
        assert!(!on.complete_for(4097, 5_000), "the lease ran out");
        let noted = NamespaceIndex {
            unindexed_at: 1_001,
            ..on
        };
        assert!(
            !noted.complete_for(4097, 2_000),
            "an unindexed connect, or a claim dropped for room, since"
        );
        let off = NamespaceIndex {
            indexed_since: 0,
            ..on
        };
        assert!(!off.complete_for(4097, 2_000));
        assert_eq!(namespace_slot(4097), namespace_slot(1));
        assert_eq!(core::mem::size_of::<NamespaceIndex>(), 64);
    }

    #[test]
    fn route_keys_put_the_cookie_first_then_the_address() {
        let key = route_key4(0x0102_0304_0506_0708, [127, 0, 0, 1]);
        assert_eq!(key, [1, 2, 3, 4, 5, 6, 7, 8, 127, 0, 0, 1]);
        let mut addr = [0u8; 16];
        addr[15] = 1;
        let key = route_key6(0x0102_0304_0506_0708, addr);
        assert_eq!(key[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(key[8..], addr);
    }

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
