//! What the scan knows about one connected UDP socket.

use std::net::SocketAddr;

use serde::Serialize;

/// Address family of a socket as the kernel created it (`AF_INET` or `AF_INET6`).
///
/// An `AF_INET6` socket connected with v4-mapped addresses is still `Ipv6` here,
/// even though its 4-tuple is printed as plain IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `AF_INET`.
    Ipv4,
    /// `AF_INET6`.
    Ipv6,
}

/// One ESTABLISHED (connected) UDP socket, as reported by `NETLINK_SOCK_DIAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedUdpSocket {
    /// Inode number of the socket (the `N` in `socket:[N]`).
    pub inode: u64,
    /// Owner uid the kernel recorded when the socket was created.
    pub uid: u32,
    /// Family of the socket itself.
    pub family: Family,
    /// Local (bound) address, exactly as the kernel reports it.
    pub local: SocketAddr,
    /// Remote (connected) address, exactly as the kernel reports it.
    pub remote: SocketAddr,
    /// Interface index the socket is bound to (`SO_BINDTODEVICE` or an IPv6
    /// scope), 0 when unbound.
    pub bound_ifindex: u32,
}
