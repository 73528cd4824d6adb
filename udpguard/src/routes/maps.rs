//! The pinned maps the mirror writes: routes per namespace, namespace states, the heartbeat.
use std::{collections::BTreeSet, net::IpAddr, path::Path};

use anyhow::Context as _;
use aya::maps::{
    Array, HashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use udpguard_common::{AgentState, Route4, Route6, route_key4, route_key6};

use super::model::Prefix;
use udpguard_common::{map_names, names::pin_of};

/// What the mirror predicts for one prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The kernel will choose this source.
    Source(IpAddr),
    /// It cannot say for sure: wildcard connects to these destinations pass, counted.
    Unmodeled,
}

pub struct RouteMaps {
    routes4: LpmTrie<MapData, [u8; 12], Route4>,
    routes6: LpmTrie<MapData, [u8; 24], Route6>,
    netns: HashMap<MapData, u64, u32>,
    agent: Array<MapData, AgentState>,
}

impl RouteMaps {
    pub fn open(dir: &Path) -> anyhow::Result<RouteMaps> {
        let open = |map: &str| {
            let pin = pin_of(map);
            MapData::from_pin(dir.join(pin)).with_context(|| {
                format!(
                    "opening {}/{pin} (attached by an older udpguard? attach again)",
                    dir.display()
                )
            })
        };
        Ok(RouteMaps {
            routes4: LpmTrie::try_from(Map::LpmTrie(open(map_names::ROUTES4)?))?,
            routes6: LpmTrie::try_from(Map::LpmTrie(open(map_names::ROUTES6)?))?,
            netns: HashMap::try_from(Map::HashMap(open(map_names::NETNS)?))?,
            agent: Array::try_from(Map::Array(open(map_names::AGENT)?))?,
        })
    }

    /// `CLOCK_MONOTONIC` nanoseconds now (what `bpf_ktime_get_ns` reads), or 0 to say the
    /// agent is gone.
    pub fn set_heartbeat(&mut self, heartbeat_ns: u64) -> anyhow::Result<()> {
        self.agent.set(0, AgentState { heartbeat_ns }, 0)?;
        Ok(())
    }

    pub fn set_state(&mut self, netns_cookie: u64, state: u32) -> anyhow::Result<()> {
        self.netns.insert(netns_cookie, state, 0)?;
        Ok(())
    }

    pub fn forget(&mut self, netns_cookie: u64) {
        let _ = self.netns.remove(&netns_cookie);
    }

    /// Forgets every namespace (each is reported again on its next wildcard connect).
    pub fn forget_all(&mut self) {
        let cookies: Vec<u64> = self.netns.keys().filter_map(Result::ok).collect();
        for cookie in cookies {
            self.forget(cookie);
        }
    }

    /// Writes a namespace's predictions and removes the entries of `stale` it no longer has.
    pub fn write(
        &mut self,
        netns_cookie: u64,
        entries: &[(Prefix, Prediction)],
        stale: &BTreeSet<Prefix>,
    ) -> anyhow::Result<()> {
        for (prefix, prediction) in entries {
            self.insert(netns_cookie, prefix, *prediction)?;
        }
        let current: BTreeSet<Prefix> = entries.iter().map(|(p, _)| *p).collect();
        for prefix in stale.difference(&current) {
            self.remove(netns_cookie, prefix);
        }
        Ok(())
    }

    fn insert(
        &mut self,
        cookie: u64,
        prefix: &Prefix,
        prediction: Prediction,
    ) -> anyhow::Result<()> {
        let len = 64 + u32::from(prefix.len);
        match (prefix.addr, prediction) {
            (IpAddr::V4(addr), prediction) => {
                let route = match prediction {
                    Prediction::Source(IpAddr::V4(src)) => Route4 {
                        src: u32::from_ne_bytes(src.octets()),
                        flags: udpguard_common::ROUTE_MODELED,
                    },
                    _ => Route4::default(),
                };
                self.routes4
                    .insert(&Key::new(len, route_key4(cookie, addr.octets())), route, 0)?;
            }
            (IpAddr::V6(addr), prediction) => {
                let route = match prediction {
                    Prediction::Source(IpAddr::V6(src)) => {
                        let o = src.octets();
                        let word =
                            |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                        Route6 {
                            src: [word(0), word(4), word(8), word(12)],
                            flags: udpguard_common::ROUTE_MODELED,
                        }
                    }
                    _ => Route6::default(),
                };
                self.routes6
                    .insert(&Key::new(len, route_key6(cookie, addr.octets())), route, 0)?;
            }
        }
        Ok(())
    }

    fn remove(&mut self, cookie: u64, prefix: &Prefix) {
        let len = 64 + u32::from(prefix.len);
        let _ = match prefix.addr {
            IpAddr::V4(a) => self
                .routes4
                .remove(&Key::new(len, route_key4(cookie, a.octets()))),
            IpAddr::V6(a) => self
                .routes6
                .remove(&Key::new(len, route_key6(cookie, a.octets()))),
        };
    }

    /// Removes every route entry (of every namespace).
    pub fn clear_routes(&mut self) {
        let keys4: Vec<_> = self.routes4.keys().filter_map(Result::ok).collect();
        for key in keys4 {
            let _ = self.routes4.remove(&key);
        }
        let keys6: Vec<_> = self.routes6.keys().filter_map(Result::ok).collect();
        for key in keys6 {
            let _ = self.routes6.remove(&key);
        }
    }
}
