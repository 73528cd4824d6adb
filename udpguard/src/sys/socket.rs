//! What the scan knows about one connected UDP socket.

use std::net::{SocketAddr, SocketAddrV4};

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

/// A (local, remote) pair of socket addresses, with v4-mapped IPv6 addresses
/// folded to IPv4 so that sockets the kernel lets collide compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FourTuple {
    /// Local address:port.
    pub local: SocketAddr,
    /// Remote address:port.
    pub remote: SocketAddr,
}

impl FourTuple {
    /// The normalised 4-tuple of `socket`.
    pub fn of(socket: &ConnectedUdpSocket) -> Self {
        Self {
            local: fold_v4_mapped(socket.local),
            remote: fold_v4_mapped(socket.remote),
        }
    }

    /// Which family's lookup the kernel runs for datagrams on this tuple:
    /// IPv4 for plain and v4-mapped tuples, IPv6 otherwise.
    pub fn lookup_family(&self) -> Family {
        if self.local.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

/// Rewrites a v4-mapped IPv6 socket address (`[::ffff:127.0.0.1]:53`) as the
/// IPv4 address it stands for (`127.0.0.1:53`); other addresses are unchanged.
pub fn fold_v4_mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_leaves_real_ipv6_alone() {
        let addr: SocketAddr = "[2001:db8::1]:53".parse().unwrap();
        assert_eq!(fold_v4_mapped(addr), addr);
        // ::127.0.0.1 (v4-compatible, deprecated) is not v4-mapped.
        let compat: SocketAddr = "[::7f00:1]:53".parse().unwrap();
        assert_eq!(fold_v4_mapped(compat), compat);
    }
}
