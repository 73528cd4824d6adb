//! The guard's settings: the one-entry `CONFIG` array, which `attach` changes in place and the
//! programs read on every connect that needs them.

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

/// Bits of [`Config::flags`].
pub mod flags {
    /// A watch program sits on an ancestor cgroup (the agent's fast path below the cgroup
    /// root): the guard's connect programs mark each connect they see, so the watch can tell
    /// the connects of sockets outside the guarded cgroup (see `namespaces`).
    pub const WATCHED: u32 = 1;
}

/// The ring buffer's default size: room for about 2,500 conflict events between two reads.
pub const DEFAULT_EVENTS_BUFFER: u32 = 256 * 1024;

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
    /// Bits of [`flags`].
    pub flags: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
unsafe impl aya::Pod for Config {}
