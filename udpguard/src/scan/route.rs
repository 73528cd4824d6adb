//! Which interface a peer's datagrams arrive on, from the kernel's routing
//! table (`RTM_GETROUTE`, what `ip route get` asks).
//!
//! Only needed when some socket of a duplicate group is bound to a device:
//! the kernel's receive lookup then depends on the incoming interface, which
//! is taken to be the one the route back to the peer leaves by.

use std::io;
use std::net::IpAddr;

use netlink_packet_route::route::RouteAttribute;

use crate::sys::rtnl::Rtnl;

/// Route queries in the network namespace the lookup was opened in.
pub struct RouteLookup {
    rtnl: Rtnl,
}

impl RouteLookup {
    /// Opens a route socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            rtnl: Rtnl::open()?,
        })
    }

    /// The interface index the route from `local` to `remote` leaves by
    /// (`ip route get <remote> from <local>`); `None` when there is no route.
    pub fn egress_ifindex(&mut self, local: IpAddr, remote: IpAddr) -> io::Result<Option<u32>> {
        let route = self.rtnl.get_route(remote, Some(local))?;
        Ok(route.and_then(|route| {
            route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_traffic_uses_lo() {
        // SAFETY: the argument is a NUL-terminated string.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(lo, 0, "no lo interface");
        let mut routes = RouteLookup::open().unwrap();
        let egress = routes
            .egress_ifindex("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap())
            .unwrap();
        assert_eq!(egress, Some(lo));
    }
}
