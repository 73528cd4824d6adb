//! Pure logic of the route mirror: whether a namespace's routing can be mirrored at all, and
//! which destination prefixes the mirror needs, each with one address the kernel can be asked
//! about on its behalf.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::{
    route::{RouteAttribute, RouteMessage},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};

/// The tables the kernel's default rules consult: local, main, default.
const DEFAULT_TABLES: [u32; 3] = [255, 254, 253];

/// A destination prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// True when `addr` lies in this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// True when `other` is a strictly more specific prefix inside this one.
    fn encloses(&self, other: &Prefix) -> bool {
        other.len > self.len && self.contains(other.addr)
    }
}

/// True when the rules are the kernel's defaults (local, then main, then default, with no
/// selectors): only then does one lookup per destination decide the route. Policy routing,
/// VRFs (l3mdev rules) and marks make the source depend on more than the destination.
pub fn default_rules(rules: &[RuleMessage]) -> bool {
    rules.iter().all(|rule| {
        let table = rule.attributes.iter().find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        });
        let table = table.unwrap_or(u32::from(rule.header.table));
        let selects = rule.header.dst_len != 0
            || rule.header.src_len != 0
            || rule.header.tos != 0
            || rule.attributes.iter().any(|a| {
                !matches!(
                    a,
                    RuleAttribute::Table(_)
                        | RuleAttribute::Priority(_)
                        | RuleAttribute::Protocol(_)
                        // -1: not set (the kernel reports it on every rule)
                        | RuleAttribute::SuppressPrefixLen(u32::MAX)
                )
            });
        rule.header.action == RuleAction::ToTable && DEFAULT_TABLES.contains(&table) && !selects
    })
}

/// The destination prefixes of the routes in the default tables, each once.
pub fn prefixes(routes: &[RouteMessage]) -> Vec<Prefix> {
    let mut prefixes: Vec<Prefix> = routes
        .iter()
        .filter(|r| DEFAULT_TABLES.contains(&table_of(r)))
        .map(prefix_of)
        .collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// True when some route for `prefix` in the default tables spreads over several next hops:
/// the kernel then picks one per flow, and with it possibly a different source.
pub fn is_multipath(prefix: &Prefix, routes: &[RouteMessage]) -> bool {
    routes.iter().any(|r| {
        DEFAULT_TABLES.contains(&table_of(r))
            && prefix_of(r) == *prefix
            && r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::MultiPath(hops) if hops.len() > 1))
    })
}

/// True when some route for `prefix` in the default tables names its source explicitly.
pub fn has_preferred_source(prefix: &Prefix, routes: &[RouteMessage]) -> bool {
    routes.iter().any(|r| {
        DEFAULT_TABLES.contains(&table_of(r))
            && prefix_of(r) == *prefix
            && r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::PrefSource(_)))
    })
}

/// An address in `prefix` that no more specific prefix of `all` covers: the kernel's answer
/// for it is its answer for every destination this prefix alone decides. `None` when more
/// specific prefixes cover all the candidates tried (then nothing reaches this prefix's entry
/// that they do not catch first, as far as the mirror can tell: it gets no entry).
pub fn representative(prefix: &Prefix, all: &[Prefix]) -> Option<IpAddr> {
    let inner: Vec<&Prefix> = all.iter().filter(|p| prefix.encloses(p)).collect();
    candidates(prefix)
        .into_iter()
        .find(|addr| !inner.iter().any(|p| p.contains(*addr)))
}

/// Addresses to try in a prefix: just after the start, the middle, just before the end, and
/// the ends themselves for the smallest prefixes (network and broadcast-like addresses can be
/// special, so they come last).
fn candidates(prefix: &Prefix) -> Vec<IpAddr> {
    match prefix.addr {
        IpAddr::V4(addr) => {
            let bits = 32 - u32::from(prefix.len);
            let base = u64::from(u32::from(addr)) & !((1u64 << bits) - 1);
            let size = 1u64 << bits;
            let offsets = [
                1,
                2,
                size / 2 + 1,
                size / 3 + 7,
                size.saturating_sub(2),
                0,
                size - 1,
            ];
            let mut out: Vec<IpAddr> = offsets
                .iter()
                .filter(|&&o| o < size)
                .map(|&o| IpAddr::V4(Ipv4Addr::from((base + o) as u32)))
                .collect();
            out.dedup();
            out
        }
        IpAddr::V6(addr) => {
            let bits = 128 - u32::from(prefix.len);
            let size = if bits == 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            let base = u128::from(addr) & !size;
            let offsets = [
                1,
                2,
                size / 2 + 1,
                size / 3 + 7,
                size.saturating_sub(1),
                0,
                size,
            ];
            let mut out: Vec<IpAddr> = offsets
                .iter()
                .filter(|&&o| o <= size)
                .map(|&o| IpAddr::V6(Ipv6Addr::from(base.wrapping_add(o))))
                .collect();
            out.dedup();
            out
        }
    }
}

fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn prefix_of(route: &RouteMessage) -> Prefix {
    let len = route.header.destination_prefix_length;
    let v4 = route.header.address_family == netlink_packet_route::AddressFamily::Inet;
    let addr = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => match d {
                netlink_packet_route::route::RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
                netlink_packet_route::route::RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or(if v4 {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        });
    Prefix { addr, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        let (addr, len) = s.split_once('/').unwrap();
        Prefix {
            addr: addr.parse().unwrap(),
            len: len.parse().unwrap(),
        }
    }

    fn rule(table: u8, priority: Option<u32>, extra: Vec<RuleAttribute>) -> RuleMessage {
        let mut rule = RuleMessage::default();
        rule.header.table = table;
        rule.header.action = RuleAction::ToTable;
        rule.attributes = vec![
            RuleAttribute::Table(table.into()),
            RuleAttribute::SuppressPrefixLen(u32::MAX),
        ];
        rule.attributes
            .extend(priority.map(RuleAttribute::Priority));
        rule.attributes.extend(extra);
        rule
    }

    #[test]
    fn the_kernels_default_rules_can_be_mirrored() {
        let defaults = vec![
            rule(255, None, vec![]),
            rule(254, Some(32766), vec![]),
            rule(253, Some(32767), vec![]),
        ];
        assert!(default_rules(&defaults));
    }

    #[test]
    fn policy_routing_cannot_be_mirrored() {
        let mut marked = vec![rule(254, Some(32766), vec![])];
        marked.push(rule(100, Some(100), vec![RuleAttribute::FwMark(1)]));
        assert!(!default_rules(&marked));
        let other_table = vec![rule(100, Some(1000), vec![])];
        assert!(!default_rules(&other_table));
        let vrf = vec![rule(0, Some(1000), vec![RuleAttribute::L3MDev(true)])];
        assert!(!default_rules(&vrf));
        let by_source = vec![rule(
            254,
            Some(10),
            vec![RuleAttribute::Source("10.0.0.1".parse().unwrap())],
        )];
        assert!(!default_rules(&by_source));
    }

    #[test]
    fn prefixes_contain_their_addresses() {
        assert!(p("127.0.0.0/8").contains("127.9.8.7".parse().unwrap()));
        assert!(!p("127.0.0.0/8").contains("128.0.0.1".parse().unwrap()));
        assert!(p("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(p("fd00::/64").contains("fd00::5".parse().unwrap()));
        assert!(!p("fd00::/64").contains("fd00:0:0:1::5".parse().unwrap()));
        assert!(p("::/0").contains("::1".parse().unwrap()));
        assert!(!p("127.0.0.0/8").contains("::1".parse().unwrap()));
    }

    #[test]
    fn a_representative_avoids_more_specific_prefixes() {
        let all = [p("127.0.0.0/8"), p("127.0.0.1/32"), p("127.0.0.2/32")];
        let rep = representative(&all[0], &all).unwrap();
        assert!(all[0].contains(rep));
        assert!(!all[1].contains(rep) && !all[2].contains(rep));
        assert_eq!(
            representative(&p("127.0.0.1/32"), &all),
            Some("127.0.0.1".parse().unwrap())
        );
        let v6 = [p("::/0"), p("::1/128")];
        let rep = representative(&v6[0], &v6).unwrap();
        assert_ne!(rep, "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_prefix_wholly_covered_by_more_specific_ones_needs_no_entry() {
        let all = [p("10.0.0.0/31"), p("10.0.0.0/32"), p("10.0.0.1/32")];
        assert_eq!(representative(&all[0], &all), None);
    }
}
