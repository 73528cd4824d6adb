//! Which interface a peer's datagrams arrive on, from the kernel's routing
//! table (`RTM_GETROUTE`, what `ip route get` asks).
//!
//! Only needed when some socket of a duplicate group is bound to a device:
//! the kernel's receive lookup then depends on the incoming interface, which
//! is taken to be the one the route back to the peer leaves by.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// A `NETLINK_ROUTE` socket for route queries, bound to the network namespace
/// it was opened in.
pub struct RouteLookup {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl RouteLookup {
    /// Opens a route socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
            buffer: vec![0; 16 * 1024],
        })
    }

    /// The interface index the route from `local` to `remote` leaves by
    /// (`ip route get <remote> from <local>`); `None` when there is no route.
    pub fn egress_ifindex(&mut self, local: IpAddr, remote: IpAddr) -> io::Result<Option<u32>> {
        let mut request = RouteMessage::default();
        let full_length = if remote.is_ipv4() { 32 } else { 128 };
        request.header.address_family = if remote.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        request.header.destination_prefix_length = full_length;
        request.header.source_prefix_length = full_length;
        request.attributes = vec![
            RouteAttribute::Destination(remote.into()),
            RouteAttribute::Source(local.into()),
        ];

        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.sequence;
        let mut message =
            NetlinkMessage::new(header, RouteNetlinkMessage::GetRoute(request).into());
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;

        loop {
            let received = self.socket.recv(&mut &mut self.buffer[..], 0)?;
            let received = received.min(self.buffer.len());
            let mut offset = 0;
            while offset < received {
                let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &self.buffer[offset..received],
                )
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = answer.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += length.next_multiple_of(4);
                if answer.header.sequence_number != self.sequence {
                    continue; // a late answer to an earlier question
                }
                match answer.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                        return Ok(route.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Oif(index) => Some(*index),
                            _ => None,
                        }));
                    }
                    // No route (unreachable, prohibited, ...): no interface.
                    NetlinkPayload::Error(_) => return Ok(None),
                    _ => {}
                }
            }
        }
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
