//! Conflict events: one per refused or audited `connect()`, through the `EVENTS` ring buffer.

/// What the guard did with a conflicting connect, in [`ConflictEvent::action`].
pub mod action {
    pub const REJECTED: u32 = 1;
    pub const AUDITED: u32 = 2;
}

/// Why the connect conflicted, in [`ConflictEvent::cause`].
pub mod cause {
    /// The kernel's lookup found another socket holding the tuple ESTABLISHED.
    pub const HELD: u32 = 0;
    /// Another socket was connecting to the tuple at the same instant (its claim).
    pub const RACED: u32 = 1;
    /// A device-bound socket holds the tuple (its claim; the lookup cannot see it).
    pub const HELD_BY_DEVICE: u32 = 2;
}

/// One refused or audited `connect()`. Addresses and ports are in network order; an IPv4
/// address is in `*_addr[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConflictEvent {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub boot_ns: u64,
    /// The caller's thread group id (what user space calls the pid) in the upper 32 bits.
    pub pid_tgid: u64,
    /// The caller's gid in the upper 32 bits, uid in the lower.
    pub uid_gid: u64,
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
    /// One of [`cause`].
    pub cause: u32,
    /// The caller's device (`SO_BINDTODEVICE`), 0 for none.
    pub device: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
unsafe impl aya::Pod for ConflictEvent {}
