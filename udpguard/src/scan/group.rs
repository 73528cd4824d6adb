//! Grouping connected UDP sockets by 4-tuple: the pure logic of the scan.
//!
//! Two sockets collide when the kernel's receive lookup cannot tell them apart,
//! which happens when their local and remote address:port are equal. An
//! `AF_INET6` socket connected with v4-mapped addresses (`::ffff:a.b.c.d`)
//! receives IPv4 traffic, so it collides with `AF_INET` sockets on the same
//! IPv4 tuple; [`FourTuple`] folds such addresses to plain IPv4 so they group
//! together.

use std::collections::{BTreeSet, HashMap};

use crate::sys::socket::{ConnectedUdpSocket, FourTuple};

/// Two or more connected sockets sharing one 4-tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateGroup {
    /// The shared tuple.
    pub tuple: FourTuple,
    /// The sockets on it, ordered by inode.
    pub sockets: Vec<ConnectedUdpSocket>,
}

/// The incoming interface to run the kernel's receive lookup for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// No socket is bound to a device, so the interface does not matter.
    Any,
    /// Every socket is bound to this device (an `SO_BINDTODEVICE` or the
    /// scope of an IPv6 link-local address): traffic for them arrives on it.
    Device(u32),
    /// Some sockets are bound to a device and some are not (or to different
    /// ones): the winner depends on where the peer's traffic arrives, which
    /// the route to the peer tells.
    FromRoute,
}

impl DuplicateGroup {
    /// Which interface the receive lookup must be asked about.
    pub fn ingress(&self) -> Ingress {
        let bound: BTreeSet<u32> = self.sockets.iter().map(|s| s.bound_ifindex).collect();
        let mut devices = bound.iter().copied();
        match (devices.next(), devices.next()) {
            (Some(0), None) | (None, _) => Ingress::Any,
            (Some(device), None) => Ingress::Device(device),
            _ => Ingress::FromRoute,
        }
    }
}

/// Groups `sockets` (all from one network namespace) by [`FourTuple`] and
/// returns the groups of two or more, ordered by tuple.
pub fn find_duplicates(
    sockets: impl IntoIterator<Item = ConnectedUdpSocket>,
) -> Vec<DuplicateGroup> {
    let mut by_tuple: HashMap<FourTuple, Vec<ConnectedUdpSocket>> = HashMap::new();
    for socket in sockets {
        by_tuple
            .entry(FourTuple::of(&socket))
            .or_default()
            .push(socket);
    }
    let mut groups: Vec<DuplicateGroup> = by_tuple
        .into_iter()
        .filter(|(_, sockets)| sockets.len() >= 2)
        .map(|(tuple, mut sockets)| {
            sockets.sort_by_key(|s| s.inode);
            DuplicateGroup { tuple, sockets }
        })
        .collect();
    groups.sort_by_key(|g| g.tuple);
    groups
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::sys::socket::Family;

    fn sock(inode: u64, local: &str, remote: &str) -> ConnectedUdpSocket {
        let local: SocketAddr = local.parse().unwrap();
        ConnectedUdpSocket {
            inode,
            uid: 0,
            family: if local.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            local,
            remote: remote.parse().unwrap(),
            bound_ifindex: 0,
        }
    }

    #[test]
    fn unique_tuples_make_no_groups() {
        let groups = find_duplicates(vec![
            sock(1, "127.0.0.1:5000", "127.0.0.2:53"),
            sock(2, "127.0.0.1:5001", "127.0.0.2:53"),
            sock(3, "127.0.0.1:5000", "127.0.0.2:54"),
            sock(4, "127.0.0.1:5000", "127.0.0.3:53"),
            sock(5, "[::1]:5000", "[::1]:53"),
        ]);
        assert!(groups.is_empty(), "{groups:?}");
    }

    #[test]
    fn equal_tuples_group_ordered_by_inode() {
        let groups = find_duplicates(vec![
            sock(30, "127.0.0.1:5000", "127.0.0.2:53"),
            sock(7, "127.0.0.1:9", "127.0.0.2:9"),
            sock(10, "127.0.0.1:5000", "127.0.0.2:53"),
            sock(20, "127.0.0.1:5000", "127.0.0.2:53"),
        ]);
        assert_eq!(groups.len(), 1);
        let inodes: Vec<u64> = groups[0].sockets.iter().map(|s| s.inode).collect();
        assert_eq!(inodes, [10, 20, 30]);
        assert_eq!(
            groups[0].tuple.local,
            "127.0.0.1:5000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            groups[0].tuple.remote,
            "127.0.0.2:53".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn v4_mapped_ipv6_socket_joins_the_ipv4_group_and_prints_as_ipv4() {
        let groups = find_duplicates(vec![
            sock(1, "127.0.0.1:5000", "127.0.0.2:53"),
            sock(2, "[::ffff:127.0.0.1]:5000", "[::ffff:127.0.0.2]:53"),
        ]);
        assert_eq!(groups.len(), 1);
        let group = &groups[0];
        assert_eq!(group.tuple.local.to_string(), "127.0.0.1:5000");
        assert_eq!(group.tuple.remote.to_string(), "127.0.0.2:53");
        assert_eq!(group.tuple.lookup_family(), Family::Ipv4);
        let families: Vec<Family> = group.sockets.iter().map(|s| s.family).collect();
        assert_eq!(families, [Family::Ipv4, Family::Ipv6]);
    }

    #[test]
    fn two_v4_mapped_sockets_group_as_ipv4() {
        let groups = find_duplicates(vec![
            sock(1, "[::ffff:10.0.0.1]:5000", "[::ffff:10.0.0.2]:53"),
            sock(2, "[::ffff:10.0.0.1]:5000", "[::ffff:10.0.0.2]:53"),
        ]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].tuple.local.to_string(), "10.0.0.1:5000");
        assert_eq!(groups[0].tuple.lookup_family(), Family::Ipv4);
    }

    #[test]
    fn ipv6_groups_keep_ipv6_and_do_not_mix_with_ipv4() {
        let groups = find_duplicates(vec![
            sock(1, "[::1]:5001", "[::1]:6001"),
            sock(2, "[::1]:5001", "[::1]:6001"),
            sock(3, "127.0.0.1:5001", "127.0.0.1:6001"),
        ]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].tuple.local.to_string(), "[::1]:5001");
        assert_eq!(groups[0].tuple.lookup_family(), Family::Ipv6);
        assert_eq!(groups[0].sockets.len(), 2);
    }

    #[test]
    fn ingress_depends_on_which_sockets_are_bound_to_a_device() {
        let unbound = sock(1, "127.0.0.1:5000", "127.0.0.2:53");
        let on = |inode, ifindex| ConnectedUdpSocket {
            inode,
            bound_ifindex: ifindex,
            ..unbound.clone()
        };
        let ingress = |sockets: Vec<ConnectedUdpSocket>| find_duplicates(sockets)[0].ingress();
        assert_eq!(ingress(vec![unbound.clone(), on(2, 0)]), Ingress::Any);
        assert_eq!(ingress(vec![on(1, 3), on(2, 3)]), Ingress::Device(3));
        assert_eq!(ingress(vec![unbound.clone(), on(2, 3)]), Ingress::FromRoute);
        assert_eq!(ingress(vec![on(1, 3), on(2, 4)]), Ingress::FromRoute);
    }
}
