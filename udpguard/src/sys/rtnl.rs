//! A small `NETLINK_ROUTE` client on the rust-netlink crates: requests and dumps of routes and
//! rules, route queries (what `ip route get` asks), and change notifications. Everything works
//! in the network namespace of the thread that opened the socket.
use std::{io, net::IpAddr, time::Duration};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::AddressMessage,
    route::{RouteAttribute, RouteMessage},
    rule::RuleMessage,
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_ROUTE};

/// A request/answer `NETLINK_ROUTE` socket.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Rtnl {
    /// Opens a route socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&NetlinkAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            sequence: 0,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// The route the kernel would use to `dst` (from `src`, if given): `None` when there is
    /// none (unreachable, prohibited, ...). Its `PrefSource` is the source it would pick.
    pub fn get_route(
        &mut self,
        dst: IpAddr,
        src: Option<IpAddr>,
    ) -> io::Result<Option<RouteMessage>> {
        let mut request = RouteMessage::default();
        let full = if dst.is_ipv4() { 32 } else { 128 };
        request.header.address_family = family_of(dst);
        request.header.destination_prefix_length = full;
        request.attributes = vec![RouteAttribute::Destination(dst.into())];
        if let Some(src) = src {
            request.header.source_prefix_length = full;
            request.attributes.push(RouteAttribute::Source(src.into()));
        }
        match self.request(RouteNetlinkMessage::GetRoute(request), false) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(route) => Some(route),
                _ => None,
            })),
            Err(e) if is_no_route(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every route of one family, all tables.
    pub fn routes(&mut self, family: AddressFamily) -> io::Result<Vec<RouteMessage>> {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let answers = self.request(RouteNetlinkMessage::GetRoute(request), true)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(route) => Some(route),
                _ => None,
            })
            .collect())
    }

    /// Every address of one family.
    pub fn addresses(&mut self, family: AddressFamily) -> io::Result<Vec<AddressMessage>> {
        let mut request = AddressMessage::default();
        request.header.family = family;
        let answers = self.request(RouteNetlinkMessage::GetAddress(request), true)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(address) => Some(address),
                _ => None,
            })
            .collect())
    }

    /// Every policy routing rule of one family.
    pub fn rules(&mut self, family: AddressFamily) -> io::Result<Vec<RuleMessage>> {
        let mut request = RuleMessage::default();
        request.header.family = family;
        let answers = self.request(RouteNetlinkMessage::GetRule(request), true)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(rule) => Some(rule),
                _ => None,
            })
            .collect())
    }

    /// Sends one request and collects its answers (every part of a dump).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        dump: bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, message.into());
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;

        let mut answers = Vec::new();
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
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if !dump {
                            return Ok(answers);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(answers), // an acknowledgement
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A socket that receives a message whenever routes, addresses, rules or links change.
pub struct Changes {
    socket: Socket,
    buffer: Vec<u8>,
}

impl Changes {
    /// Subscribes, in the calling thread's network namespace. `wait` returns after `tick` at
    /// the latest, so the caller can look at its stop flag.
    pub fn subscribe(tick: Duration) -> io::Result<Changes> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for group in [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV4_RULE,
            libc::RTNLGRP_IPV6_IFADDR,
            libc::RTNLGRP_IPV6_ROUTE,
            libc::RTNLGRP_IPV6_RULE,
        ] {
            socket.add_membership(group)?;
        }
        let timeout = libc::timeval {
            tv_sec: tick.as_secs() as libc::time_t,
            tv_usec: tick.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid timeval of the size passed, on a socket we own.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Changes {
            socket,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// True when something changed (the notifications themselves are discarded: the caller
    /// reads the whole state again), false when `tick` passed quietly.
    pub fn wait(&mut self) -> io::Result<bool> {
        self.receive(0)
    }

    /// Like [`Changes::wait`], without waiting: drains what is queued.
    pub fn wait_briefly(&mut self) -> io::Result<bool> {
        self.receive(libc::MSG_DONTWAIT)
    }

    fn receive(&mut self, flags: i32) -> io::Result<bool> {
        match self.socket.recv(&mut &mut self.buffer[..], flags) {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            // Notifications overflowed the socket: something changed, read everything again.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

fn family_of(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The errors a route query gives when there is no usable route.
fn is_no_route(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL | libc::ESRCH)
    )
}
