//! Every name the kernel programs and user space must agree on, in one place: the maps (the
//! eBPF object's symbols), the pins an attachment keeps them under, the programs and their
//! link pins, and the load-time globals.

/// Names of the maps in the eBPF object (its statics).
pub mod map_names {
    /// [`crate::Config`], one entry: mode, errno, autobind, flags, changed in place.
    pub const CONFIG: &str = "CONFIG";
    /// [`crate::Counters`], one per-CPU entry, summed in user space.
    pub const COUNTERS: &str = "COUNTERS";
    /// [`crate::AttachMeta`], one entry, written once by user space at attach time.
    pub const META: &str = "META";
    /// Ring buffer of [`crate::ConflictEvent`]s, one per refused or audited connect.
    pub const EVENTS: &str = "EVENTS";
    /// Array of [`crate::ClaimBucket`]s (memory-mappable), sized at load time.
    pub const CLAIMS: &str = "CLAIMS";
    /// Array of [`crate::SocketRecord`]s, sized at load time.
    pub const RECORDS: &str = "RECORDS";
    /// Array of [`crate::Birth`]s, [`crate::BIRTH_SLOTS`] of them, direct-mapped by cookie,
    /// and the claim clock ([`crate::CLAIM_CLOCK`]).
    pub const BIRTHS: &str = "BIRTHS";
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
    /// Array of [`crate::NamespaceIndex`]es (memory-mappable), one per
    /// [`crate::namespace_slot`].
    pub const NAMESPACES: &str = "NAMESPACES";
    /// Bitmap (an array of `u64`, memory-mappable): the local ports unshared sockets connected
    /// from, per chunk of namespaces (see [`crate::ports`]).
    pub const UNSHARED_PORTS: &str = "UNSHARED_PORTS";
    /// Bitmap, likewise: the local ports shared sockets (with a reuse option) connected from.
    pub const SHARED_PORTS: &str = "SHARED_PORTS";
    /// Per-CPU array of one socket cookie: the last connect the guard's programs saw on this
    /// CPU, for the watch program on an ancestor cgroup.
    pub const SEEN: &str = "SEEN";
}

/// Every map an attachment pins, and the name of its pin in the attachment's directory.
pub const MAP_PINS: [(&str, &str); 16] = [
    (map_names::CONFIG, "config"),
    (map_names::COUNTERS, "counters"),
    (map_names::META, "meta"),
    (map_names::EVENTS, "events"),
    (map_names::CLAIMS, "claims"),
    (map_names::RECORDS, "records"),
    (map_names::BIRTHS, "births"),
    (map_names::ROUTES4, "routes4"),
    (map_names::ROUTES6, "routes6"),
    (map_names::NETNS, "netns"),
    (map_names::AGENT, "agent"),
    (map_names::NETNS_EVENTS, "netns_events"),
    (map_names::NAMESPACES, "namespaces"),
    (map_names::UNSHARED_PORTS, "unshared_ports"),
    (map_names::SHARED_PORTS, "shared_ports"),
    (map_names::SEEN, "seen"),
];

/// The pin name of a map (panics for a name not in [`MAP_PINS`]: a programming error).
pub const fn pin_of(map: &str) -> &'static str {
    let mut i = 0;
    while i < MAP_PINS.len() {
        if str_eq(MAP_PINS[i].0, map) {
            return MAP_PINS[i].1;
        }
        i += 1;
    }
    panic!("a map without a pin name")
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Names of the programs in the eBPF object. They start with `udpguard_` so that `bpftool
/// cgroup tree` (and other agents that prune foreign programs) can tell them apart; the kernel
/// keeps 15 characters of a program's name.
pub mod program_names {
    /// cgroup/connect4, refusing with the configured errno through `bpf_set_retval`.
    pub const CONNECT4: &str = "udpguard_conn4";
    /// cgroup/connect6, likewise.
    pub const CONNECT6: &str = "udpguard_conn6";
    /// cgroup/connect4, refusing with EPERM only (kernels without `bpf_set_retval`).
    pub const CONNECT4_PLAIN: &str = "udpguard_conn4p";
    /// cgroup/connect6, likewise.
    pub const CONNECT6_PLAIN: &str = "udpguard_conn6p";
    /// cgroup/connect4 without claims (kernels without 64-bit BPF atomics): the lookup only.
    pub const CONNECT4_BASIC: &str = "udpguard_conn4b";
    /// cgroup/connect6, likewise.
    pub const CONNECT6_BASIC: &str = "udpguard_conn6b";
    /// cgroup/sock_create: records a new UDP socket's birth.
    pub const CREATE: &str = "udpguard_create";
    /// cgroup/sock_release: releases the closing socket's claim and record.
    pub const RELEASE: &str = "udpguard_close";
    /// cgroup/connect4 on an ancestor cgroup: notes connects the guard did not see.
    pub const WATCH4: &str = "udpguard_watch4";
    /// cgroup/connect6, likewise.
    pub const WATCH6: &str = "udpguard_watch6";
    /// Every name, for a check that the object holds them.
    pub const ALL: [&str; 10] = [
        CONNECT4,
        CONNECT6,
        CONNECT4_PLAIN,
        CONNECT6_PLAIN,
        CONNECT4_BASIC,
        CONNECT6_BASIC,
        CREATE,
        RELEASE,
        WATCH4,
        WATCH6,
    ];
}

/// The pins of an attachment's links: its connect4, connect6, sock_create and sock_release
/// programs (the last two only with claims).
pub mod link_pins {
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const CREATE: &str = "create";
    pub const RELEASE: &str = "release";
    pub const ALL: [&str; 4] = [CONNECT4, CONNECT6, CREATE, RELEASE];
}

/// Globals of the eBPF object that user space sets when it loads it (read-only afterwards:
/// the verifier knows their values).
pub mod global_names {
    /// Buckets in the claim table, less one (a power of two, less one).
    pub const CLAIM_MASK: &str = "CLAIM_MASK";
    /// Places in the socket records, less one.
    pub const RECORD_MASK: &str = "RECORD_MASK";
    /// The word of the socket's first bytes that holds its reuse options (see `reuse`).
    pub const REUSE_WORD: &str = "REUSE_WORD";
    /// The bits of both reuse options in that word; 0: ask `bpf_getsockopt`.
    pub const REUSE_MASK: &str = "REUSE_MASK";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_one_pin_and_program_names_fit_the_kernel() {
        for (i, (map, pin)) in MAP_PINS.iter().enumerate() {
            assert_eq!(pin_of(map), *pin);
            assert!(MAP_PINS[i + 1..].iter().all(|(m, p)| m != map && p != pin));
            assert!(!pin.contains('.'), "bpffs refuses names with a dot");
        }
        for name in program_names::ALL {
            assert!(name.len() <= 15, "{name}: the kernel keeps 15 characters");
            assert!(name.starts_with("udpguard_"));
        }
    }
}
