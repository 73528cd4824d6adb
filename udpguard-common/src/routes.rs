//! The route mirror: the agent (`udpguard run`) keeps each network namespace's routing in LPM
//! tries, so the programs know the source the kernel will give a wildcard-bound socket (the
//! 4-tuple it will hold) before the connect. `bpf_fib_lookup` is not allowed in these hooks.

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

/// A network namespace the kernel saw a connect in, unknown to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsEvent {
    pub netns_cookie: u64,
    /// The connecting process (thread group id in the upper 32 bits): its /proc/<pid>/ns/net
    /// is the way into the namespace.
    pub pid_tgid: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
    unsafe impl aya::Pod for super::AgentState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Route4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Route6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetnsEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
