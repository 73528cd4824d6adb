//! `NETLINK_SOCK_DIAG` for UDP: dump the connected sockets of a network
//! namespace, and ask the kernel which socket its own receive lookup picks for
//! one exact 4-tuple.
//!
//! A netlink socket belongs to the network namespace its creating thread was
//! in, and every request on it is answered about that namespace; see
//! [`super::netns`] for opening one in another namespace.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

use super::socket::{ConnectedUdpSocket, Family, FourTuple};

/// `INET_DIAG_NOCOOKIE`: "match any socket" in an exact request.
const INET_DIAG_NOCOOKIE: [u8; 8] = [0xff; 8];

/// Receive buffer size. The kernel sizes dump batches to the reader's buffer,
/// up to 32 KiB; a larger buffer costs nothing and never truncates.
const RECV_BUFFER_BYTES: usize = 64 * 1024;

/// Why talking to `NETLINK_SOCK_DIAG` failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The netlink socket could not be created.
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(io::Error),
    /// The kernel has no UDP handler for sock_diag.
    #[error(
        "the kernel cannot list UDP sockets over NETLINK_SOCK_DIAG \
         (load the udp_diag module: `modprobe udp_diag`)"
    )]
    NoUdpDiag,
    /// Sending or receiving on the netlink socket failed.
    #[error("netlink {what} failed: {error}")]
    Io {
        /// "send" or "receive".
        what: &'static str,
        /// The system error.
        error: io::Error,
    },
    /// The kernel's answer did not parse.
    #[error("cannot parse the kernel's sock_diag answer: {0}")]
    Decode(String),
    /// The kernel answered the request with an error.
    #[error("the kernel refused the sock_diag request: {0}")]
    Kernel(io::Error),
}

/// A `NETLINK_SOCK_DIAG` socket, bound to the network namespace it was opened in.
pub struct SockDiag {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl SockDiag {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, SockDiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(SockDiagError::Open)?;
        socket.bind_auto().map_err(SockDiagError::Open)?;
        socket
            .connect(&NetlinkAddr::new(0, 0))
            .map_err(SockDiagError::Open)?;
        Ok(Self {
            socket,
            sequence: 0,
            buffer: vec![0; RECV_BUFFER_BYTES],
        })
    }

    /// Every ESTABLISHED (connected) UDP socket of both families.
    pub fn dump_connected_udp(&mut self) -> Result<Vec<ConnectedUdpSocket>, SockDiagError> {
        let mut sockets = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let request = udp_request(family, empty_socket_id(family));
            self.exchange(request, NLM_F_REQUEST | NLM_F_DUMP, |header| {
                if let Some(socket) = connected_socket_from(header) {
                    sockets.push(socket);
                }
            })
            .map_err(|e| match e {
                SockDiagError::Kernel(ref io) if io.raw_os_error() == Some(libc::ENOENT) => {
                    SockDiagError::NoUdpDiag
                }
                other => other,
            })?;
        }
        Ok(sockets)
    }

    /// Inode of the socket the kernel's UDP receive lookup
    /// (`__udp4_lib_lookup` / `__udp6_lib_lookup`) returns for datagrams from
    /// `tuple.remote` to `tuple.local` arriving on interface `ifindex` (0 when
    /// no socket is bound to a device and the interface does not matter);
    /// `None` when no socket matches.
    ///
    /// A request without `NLM_F_DUMP` makes the kernel run exactly that lookup.
    /// A v4-mapped tuple is already folded to IPv4 in [`FourTuple`], so it is
    /// looked up as `AF_INET`, the way IPv4 datagrams are delivered.
    pub fn receiving_inode(
        &mut self,
        tuple: &FourTuple,
        ifindex: u32,
    ) -> Result<Option<u64>, SockDiagError> {
        Ok(self
            .receiving_socket(tuple, ifindex)?
            .map(|found| found.socket.inode))
    }

    /// Like [`Self::receiving_inode`], but the whole socket and its cookie: the
    /// socket the kernel's receive lookup returns for `tuple`, which may be an
    /// unconnected one bound to the local port (compare its tuple).
    pub fn receiving_socket(
        &mut self,
        tuple: &FourTuple,
        ifindex: u32,
    ) -> Result<Option<CookiedSocket>, SockDiagError> {
        let family = match tuple.lookup_family() {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        };
        // The exact lookup takes the datagram's point of view: its source is
        // our remote end, its destination our local end ("src and dst are
        // swapped for historical reasons", net/ipv4/udp_diag.c).
        let id = SocketId {
            source_port: tuple.remote.port(),
            destination_port: tuple.local.port(),
            source_address: tuple.remote.ip(),
            destination_address: tuple.local.ip(),
            interface_id: ifindex,
            cookie: INET_DIAG_NOCOOKIE,
        };
        let mut found = None;
        match self.exchange(udp_request(family, id), NLM_F_REQUEST, |header| {
            found = cookied_socket_from(header);
        }) {
            Ok(()) => Ok(found),
            Err(SockDiagError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every ESTABLISHED UDP socket on exactly `tuple`, with its cookie; for an
    /// IPv4 tuple that includes `AF_INET6` sockets connected with v4-mapped
    /// addresses. The kernel filters the dump by port; addresses are matched here.
    pub fn connected_on(&mut self, tuple: &FourTuple) -> Result<Vec<CookiedSocket>, SockDiagError> {
        let families: &[u8] = match tuple.lookup_family() {
            Family::Ipv4 => &[AF_INET, AF_INET6],
            Family::Ipv6 => &[AF_INET6],
        };
        let mut sockets = Vec::new();
        for &family in families {
            let mut id = empty_socket_id(family);
            // In a dump request, "source" is the socket's own (local) end.
            id.source_port = tuple.local.port();
            id.destination_port = tuple.remote.port();
            self.exchange(
                udp_request(family, id),
                NLM_F_REQUEST | NLM_F_DUMP,
                |header| {
                    if let Some(found) = cookied_socket_from(header)
                        && FourTuple::of(&found.socket) == *tuple
                    {
                        sockets.push(found);
                    }
                },
            )?;
        }
        Ok(sockets)
    }

    /// Sends one request and feeds every socket in the answer to `on_socket`,
    /// until the dump ends (`NLMSG_DONE`) or, for a non-dump request, the one
    /// answer or error has arrived.
    fn exchange(
        &mut self,
        request: InetRequest,
        flags: u16,
        mut on_socket: impl FnMut(&InetResponseHeader),
    ) -> Result<(), SockDiagError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|error| SockDiagError::Io {
                what: "send",
                error,
            })?;

        let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            let received = loop {
                match self.socket.recv(&mut &mut self.buffer[..], 0) {
                    Ok(n) => break n.min(self.buffer.len()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        return Err(SockDiagError::Io {
                            what: "receive",
                            error,
                        });
                    }
                }
            };
            let mut offset = 0;
            while offset < received {
                let message =
                    NetlinkMessage::<SockDiagMessage>::deserialize(&self.buffer[offset..received])
                        .map_err(|e| SockDiagError::Decode(e.to_string()))?;
                let length = message.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += length.next_multiple_of(4);
                if message.header.sequence_number != sequence {
                    // A late answer to an earlier request; not ours.
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        on_socket(&response.header);
                        if !is_dump {
                            return Ok(());
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(()), // an ACK
                            Some(_) => Err(SockDiagError::Kernel(error.to_io())),
                        };
                    }
                    // Noop, Overrun, and answers of other kinds: nothing for us.
                    _ => {}
                }
            }
        }
    }
}

/// A socket from a sock_diag answer with its cookie, the kernel's unique id for
/// it (what `SO_COOKIE` and `bpf_get_socket_cookie` return).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookiedSocket {
    /// The socket.
    pub socket: ConnectedUdpSocket,
    /// Its cookie.
    pub cookie: u64,
}

/// Converts one answered socket, with its cookie.
fn cookied_socket_from(header: &InetResponseHeader) -> Option<CookiedSocket> {
    Some(CookiedSocket {
        socket: connected_socket_from(header)?,
        cookie: cookie_of(header.socket_id.cookie),
    })
}

/// The cookie in an `inet_diag_sockid`: two host-order `u32` words, low word first.
pub fn cookie_of(bytes: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let high = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    u64::from(high) << 32 | u64::from(low)
}

/// A UDP request for `family`, restricted to ESTABLISHED sockets.
fn udp_request(family: u8, socket_id: SocketId) -> InetRequest {
    InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::ESTABLISHED,
        socket_id,
    }
}

/// The all-zero socket id a dump request carries (no port filter).
fn empty_socket_id(family: u8) -> SocketId {
    if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    }
}

/// Converts one dumped socket; `None` for a family other than IPv4/IPv6.
fn connected_socket_from(header: &InetResponseHeader) -> Option<ConnectedUdpSocket> {
    let family = match header.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        _ => return None,
    };
    let id = &header.socket_id;
    let bound_ifindex = id.interface_id;
    Some(ConnectedUdpSocket {
        inode: u64::from(header.inode),
        uid: header.uid,
        family,
        local: socket_addr(id.source_address, id.source_port, bound_ifindex),
        remote: socket_addr(id.destination_address, id.destination_port, bound_ifindex),
        bound_ifindex,
    })
}

/// A socket address; an IPv6 link-local address gets the socket's interface as
/// its scope, since `fe80::1` on two links are different addresses.
fn socket_addr(ip: IpAddr, port: u16, ifindex: u32) -> SocketAddr {
    match ip {
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, ifindex))
        }
        _ => SocketAddr::new(ip, port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_words_are_host_order_low_first() {
        let cookie = 0x0000_0001_0000_0352_u64;
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
        bytes[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        assert_eq!(cookie_of(bytes), cookie);
    }

    #[test]
    fn link_local_gets_the_interface_as_scope() {
        let addr = socket_addr("fe80::1".parse().unwrap(), 53, 4);
        assert_eq!(addr.to_string(), "[fe80::1%4]:53");
        let addr = socket_addr("::1".parse().unwrap(), 53, 4);
        assert_eq!(addr.to_string(), "[::1]:53");
    }
}
