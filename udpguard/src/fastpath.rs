//! The agent's half of the O(1) no-conflict path (the kernel's half and the reasoning are in
//! `udpguard-ebpf/src/fastpath.rs`). For a network namespace it vouches that the claims index
//! every held tuple: every process there is in the guarded cgroup, and the sockets connected
//! before are added to the claims from a socket dump. It withdraws as soon as either stops
//! being true; the programs themselves notice connects the claims cannot index.
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData};
use udpguard_common::{ClaimKey, UNINDEXED_SLOTS};

use crate::{
    attachment::{INDEXED_SINCE_PIN, UNINDEXED_AT_PIN},
    claims::{ClaimTable, Seeded},
    scan::{sock_diag::SockDiag, socket::ConnectedUdpSocket},
};

/// A connect in flight when the index is seeded may be hashed after the dump: the index
/// counts as seeded this much before the dump began, so such a connect, if the claims cannot
/// hold it, is noted after the seeding time and keeps the fast path off.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(1);

/// How often seeded claims of sockets that have closed since are cleared (sockets the programs
/// did not see born release no claim on close).
const SEED_SWEEP: Duration = Duration::from_secs(10);

pub struct FastPathMaps {
    indexed_since: HashMap<MapData, u64, u64>,
    unindexed_at: Array<MapData, u64>,
    claims: ClaimTable,
    /// Per namespace: the tuples seeded and still held at the last sweep, and when that was.
    seeded: StdHashMap<u64, (Instant, HashSet<ClaimKey>)>,
}

impl FastPathMaps {
    pub fn open(dir: &Path) -> anyhow::Result<FastPathMaps> {
        let open = |pin: &str| {
            MapData::from_pin(dir.join(pin))
                .with_context(|| format!("opening {}/{pin}", dir.display()))
        };
        Ok(FastPathMaps {
            indexed_since: HashMap::try_from(Map::HashMap(open(INDEXED_SINCE_PIN)?))?,
            unindexed_at: Array::try_from(Map::Array(open(UNINDEXED_AT_PIN)?))?,
            claims: ClaimTable::open(dir, true)?,
            seeded: StdHashMap::new(),
        })
    }

    /// Turns the fast path off in one namespace.
    pub fn withdraw(&mut self, netns_cookie: u64) {
        let _ = self.indexed_since.remove(&netns_cookie);
    }

    /// Turns it off everywhere.
    pub fn withdraw_all(&mut self) {
        let cookies: Vec<u64> = self.indexed_since.keys().filter_map(Result::ok).collect();
        for cookie in cookies {
            self.withdraw(cookie);
        }
    }

    /// True when the namespace's index is seeded and nothing unindexed happened since.
    pub fn is_on(&self, netns_cookie: u64) -> bool {
        let Ok(since) = self.indexed_since.get(&netns_cookie, 0) else {
            return false;
        };
        let before_since = |slot: u32| {
            self.unindexed_at
                .get(&slot, 0)
                .is_ok_and(|at| (at as i64).wrapping_sub(since as i64) < 0)
        };
        before_since(netns_cookie as u32 & (UNINDEXED_SLOTS - 1)) && before_since(UNINDEXED_SLOTS)
    }

    /// How many namespaces the fast path is on in.
    pub fn namespaces_on(&self) -> usize {
        let cookies: Vec<u64> = self.indexed_since.keys().filter_map(Result::ok).collect();
        cookies.into_iter().filter(|c| self.is_on(*c)).count()
    }

    /// True when the namespace has seeded claims and the last sweep is [`SEED_SWEEP`] ago.
    fn sweep_due(&self, netns_cookie: u64) -> bool {
        self.seeded
            .get(&netns_cookie)
            .is_some_and(|(swept, seeded)| !seeded.is_empty() && swept.elapsed() >= SEED_SWEEP)
    }

    /// Clears the seeded claims of tuples no socket in the namespace holds any more (`held`:
    /// a dump taken after the seeding).
    fn sweep(&mut self, netns_cookie: u64, held: &HashSet<ClaimKey>) -> anyhow::Result<()> {
        let Some((swept, seeded)) = self.seeded.get_mut(&netns_cookie) else {
            return Ok(());
        };
        for key in seeded.difference(held) {
            self.claims.unseed(key)?;
        }
        seeded.retain(|key| held.contains(key));
        *swept = Instant::now();
        Ok(())
    }
}

/// The claim keys of the connected UDP sockets in the current namespace.
fn held_tuples(netns_cookie: u64) -> anyhow::Result<HashSet<ClaimKey>> {
    Ok(SockDiag::open()?
        .dump_connected_udp()?
        .iter()
        .map(|socket| claim_key(netns_cookie, socket))
        .collect())
}

/// Brings one namespace's fast path up to date; runs on a thread inside that namespace.
/// Returns whether it is on.
pub fn refresh(
    maps: &std::sync::Mutex<FastPathMaps>,
    netns_cookie: u64,
    netns: (u64, u64),
    guarded: &Path,
    now_ns: u64,
) -> anyhow::Result<bool> {
    if !every_process_inside(netns, guarded) {
        maps.lock().unwrap().withdraw(netns_cookie);
        return Ok(false);
    }
    if maps.lock().unwrap().is_on(netns_cookie) {
        if maps.lock().unwrap().sweep_due(netns_cookie) {
            // Dumped without the lock: other namespaces' threads share it.
            let held = held_tuples(netns_cookie)?;
            maps.lock().unwrap().sweep(netns_cookie, &held)?;
        }
        return Ok(true);
    }
    // Seed: what connected before now is in the dump; what connects after goes through the
    // programs, into the claims or noted as unindexed.
    let since = now_ns.saturating_sub(IN_FLIGHT_MARGIN.as_nanos() as u64);
    let held = held_tuples(netns_cookie)?;
    let mut maps = maps.lock().unwrap();
    // Added to what earlier seedings left, so the sweep clears those too once they close.
    let mut seeded = maps
        .seeded
        .remove(&netns_cookie)
        .map_or_else(HashSet::new, |(_, seeded)| seeded);
    let mut full = false;
    for key in &held {
        match maps.claims.seed(key)? {
            Seeded::Indexed => _ = seeded.insert(*key),
            Seeded::NoRoom => full = true,
        }
    }
    maps.seeded.insert(netns_cookie, (Instant::now(), seeded));
    if full {
        tracing::debug!("netns {netns_cookie}: a claim bucket is full, fast path stays off");
        return Ok(false);
    }
    maps.indexed_since.insert(netns_cookie, since, 0)?;
    tracing::debug!(
        "netns {netns_cookie}: fast path on, {} connected sockets indexed",
        held.len()
    );
    Ok(maps.is_on(netns_cookie))
}

/// The claim key of a connected socket, as the programs make it (a v4-mapped IPv6 socket's
/// tuple is IPv4).
fn claim_key(netns_cookie: u64, socket: &ConnectedUdpSocket) -> ClaimKey {
    let (local, local_family) = words(socket.local.ip());
    let (peer, _) = words(socket.remote.ip());
    ClaimKey {
        netns_cookie,
        local_addr: local,
        peer_addr: peer,
        local_port: socket.local.port().to_be(),
        peer_port: socket.remote.port().to_be(),
        family: local_family,
    }
}

/// An address as the programs hold it: network-order bytes in native `u32` words, IPv4 (and
/// v4-mapped IPv6) in the first word.
fn words(addr: std::net::IpAddr) -> ([u32; 4], u32) {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    match addr {
        std::net::IpAddr::V4(a) => ([word(&a.octets()), 0, 0, 0], 4),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => ([word(&v4.octets()), 0, 0, 0], 4),
            None => {
                let o = a.octets();
                (
                    [
                        word(&o[0..4]),
                        word(&o[4..8]),
                        word(&o[8..12]),
                        word(&o[12..16]),
                    ],
                    6,
                )
            }
        },
    }
}

/// True when every process in the namespace (but us: the agent makes no UDP connections) is
/// in the guarded cgroup or below it.
fn every_process_inside(netns: (u64, u64), guarded: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(root) = crate::cgroup::root() else {
        return false;
    };
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str() else { continue };
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let in_namespace = std::fs::metadata(entry.path().join("ns/net"))
            .is_ok_and(|m| (m.dev(), m.ino()) == netns);
        if !in_namespace {
            continue;
        }
        match cgroup_of(&entry.path(), &root) {
            Some(cgroup) if cgroup.starts_with(guarded) => {}
            // Outside, or gone before we could tell: not vouched for.
            _ => return false,
        }
    }
    true
}

/// A process's cgroup v2 directory, from /proc/<pid>/cgroup.
fn cgroup_of(proc_dir: &Path, root: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(proc_dir.join("cgroup")).ok()?;
    let relative = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(relative.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_keys_match_the_programs() {
        let socket = ConnectedUdpSocket {
            inode: 1,
            uid: 0,
            family: crate::scan::socket::Family::Ipv6,
            local: "[::ffff:127.0.0.1]:4444".parse().unwrap(),
            remote: "[::ffff:127.0.0.2]:53".parse().unwrap(),
            bound_ifindex: 0,
        };
        let key = claim_key(7, &socket);
        assert_eq!(key.family, 4);
        assert_eq!(key.local_addr[0].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(key.peer_addr[0].to_ne_bytes(), [127, 0, 0, 2]);
        assert_eq!(key.local_port, 4444u16.to_be());
        assert_eq!(key.peer_port, 53u16.to_be());
    }
}
