//! The agent's half of the O(1) no-conflict path (the reasoning is in
//! `udpguard_common::namespaces`, the kernel's half in `udpguard-ebpf/src/fastpath.rs`). For a
//! network namespace it vouches that the claims index every held tuple: the sockets connected
//! before are added to the claims from a socket dump, and every connect since was seen, by the
//! guard's programs or, below the cgroup root, by the watch (which notes the others' connects
//! in the kernel). A periodic dump checks the claims against the sockets and withdraws if one
//! is missing.
use std::{
    collections::HashMap as StdHashMap,
    mem::offset_of,
    path::Path,
    sync::atomic::{AtomicU64, Ordering::SeqCst},
    time::{Duration, Instant},
};

use udpguard_common::{
    ClaimKey, INDEX_LEASE_SECS, NAMESPACE_SLOTS, NamespaceIndex, PORT_NOTE_WORDS, map_names,
    names::pin_of, namespace_slot, port_note_bit,
};

use crate::{
    attachment::Attachment,
    claims::{ClaimTable, Dumped, Seeded},
    clock,
    shared_map::SharedArray,
    sys::{sock_diag::SockDiag, socket::ConnectedUdpSocket},
};

/// A connect in flight when the index is seeded may be hashed after the dump: the index
/// counts as seeded this much before the dump began, so such a connect, if the claims cannot
/// hold it, is noted after the seeding time and keeps the fast path off.
const IN_FLIGHT_MARGIN_SECS: u64 = 1;

/// How often the agent dumps a namespace that has the fast path: to check that the claims hold
/// every held tuple, and to clear unowned claims (seeded ones, whose sockets the programs did
/// not see born and so release nothing on close, and ones let go by a socket that moved)
/// whose tuples nobody holds any more.
const SEED_SWEEP: Duration = Duration::from_secs(10);

/// How long after a seeding that could not turn the fast path on the agent tries again.
const SEED_RETRY: Duration = Duration::from_secs(30);

/// How long after finding a task outside the watched cgroup in a namespace the agent looks
/// again (a walk of every task in /proc: every second, it was most of an idle agent's CPU).
const COVERAGE_RETRY: Duration = Duration::from_secs(5);

/// The `NAMESPACES` array, mapped: the agent's word per namespace slot, and the programs'
/// notes of unindexed connects.
pub struct NamespaceTable {
    map: SharedArray,
}

impl NamespaceTable {
    pub fn open(dir: &Path, writable: bool) -> anyhow::Result<NamespaceTable> {
        let len = NAMESPACE_SLOTS as usize * size_of::<NamespaceIndex>();
        let path = dir.join(pin_of(map_names::NAMESPACES));
        let map = SharedArray::open(&path, "fast-path namespace table", len, writable)?;
        Ok(NamespaceTable { map })
    }

    fn word(&self, slot: u32, offset: usize) -> &AtomicU64 {
        assert!(slot < NAMESPACE_SLOTS);
        self.map
            .word(slot as usize * size_of::<NamespaceIndex>() + offset)
    }

    /// A consistent copy of a slot (the programs' reads, in the same order). A slot caught
    /// mid-write a few times over (its writer may have died there) reads as empty: off, as the
    /// programs see it.
    fn read(&self, slot: u32) -> NamespaceIndex {
        let field = |offset| self.word(slot, offset).load(SeqCst);
        for _ in 0..100 {
            let version = field(offset_of!(NamespaceIndex, version));
            let copy = NamespaceIndex {
                version,
                netns_cookie: field(offset_of!(NamespaceIndex, netns_cookie)),
                indexed_since: field(offset_of!(NamespaceIndex, indexed_since)),
                lease_until: field(offset_of!(NamespaceIndex, lease_until)),
                unindexed_at: field(offset_of!(NamespaceIndex, unindexed_at)),
            };
            if version & 1 == 0 && field(offset_of!(NamespaceIndex, version)) == version {
                return copy;
            }
            std::thread::yield_now();
        }
        NamespaceIndex::default()
    }

    /// True when the programs take the fast path in this namespace now.
    pub fn is_on(&self, netns_cookie: u64) -> bool {
        let Ok(now) = clock::jiffies() else {
            return false;
        };
        self.read(namespace_slot(netns_cookie))
            .complete_for(netns_cookie, now)
    }

    /// How many namespaces the fast path is on in (what `status` shows).
    pub fn namespaces_on(&self) -> usize {
        let Ok(now) = clock::jiffies() else {
            return 0;
        };
        (0..NAMESPACE_SLOTS)
            .map(|slot| self.read(slot))
            .filter(|copy| copy.complete_for(copy.netns_cookie, now))
            .count()
    }

    /// Writes the cookie and seeding time of a slot as a pair, under its version (the agent
    /// is the only writer; a version left odd by a writer that died is taken up as is).
    fn write_pair(&self, slot: u32, netns_cookie: u64, indexed_since: u64) {
        let version = self.word(slot, offset_of!(NamespaceIndex, version));
        let writing = version.load(SeqCst) | 1;
        version.store(writing, SeqCst); // odd: being written
        self.word(slot, offset_of!(NamespaceIndex, netns_cookie))
            .store(netns_cookie, SeqCst);
        self.word(slot, offset_of!(NamespaceIndex, indexed_since))
            .store(indexed_since, SeqCst);
        version.store(writing + 1, SeqCst);
    }

    /// Vouches for a namespace, seeded at `since`; false when its slot is another's.
    fn vouch(&self, netns_cookie: u64, since: u64) -> anyhow::Result<bool> {
        self.map.ensure_writable()?;
        let slot = namespace_slot(netns_cookie);
        let holder = self.read(slot).netns_cookie;
        if holder != 0 && holder != netns_cookie {
            return Ok(false);
        }
        self.renew(netns_cookie)?;
        self.write_pair(slot, netns_cookie, since.max(1));
        Ok(true)
    }

    /// Extends the lease of a namespace the agent vouches for.
    fn renew(&self, netns_cookie: u64) -> anyhow::Result<()> {
        self.map.ensure_writable()?;
        let slot = namespace_slot(netns_cookie);
        let until = clock::jiffies()? + clock::ticks(INDEX_LEASE_SECS);
        self.word(slot, offset_of!(NamespaceIndex, lease_until))
            .store(until, SeqCst);
        Ok(())
    }

    /// Withdraws the agent's word for a namespace (if its slot holds it).
    fn withdraw(&self, netns_cookie: u64) -> anyhow::Result<()> {
        self.map.ensure_writable()?;
        let slot = namespace_slot(netns_cookie);
        if self.read(slot).netns_cookie == netns_cookie {
            self.write_pair(slot, 0, 0);
        }
        Ok(())
    }
}

/// A port-note bitmap (`UNSHARED_PORTS`, `SHARED_PORTS`; see `udpguard_common::ports`),
/// mapped read-only.
struct PortNotes {
    map: SharedArray,
}

impl PortNotes {
    fn open(dir: &Path, map: &str) -> anyhow::Result<PortNotes> {
        let len = PORT_NOTE_WORDS as usize * size_of::<u64>();
        let path = dir.join(pin_of(map));
        let map = SharedArray::open(&path, "port-note bitmap", len, false)?;
        Ok(PortNotes { map })
    }

    /// True when the programs noted this local port (network order) of the namespace.
    fn noted(&self, netns_cookie: u64, port: u16) -> bool {
        let (word, bit) = port_note_bit(netns_cookie, port);
        self.map.word(word as usize * size_of::<u64>()).load(SeqCst) & bit != 0
    }
}

pub struct FastPathMaps {
    namespaces: NamespaceTable,
    claims: ClaimTable,
    unshared_ports: PortNotes,
    /// Per namespace with the fast path: when it was last dumped.
    swept: StdHashMap<u64, Instant>,
    /// The dumps since the last walk of the claim table, by namespace.
    dumped: StdHashMap<u64, Dumped>,
    /// When the claim table was last walked.
    walked: Instant,
    /// Per namespace whose seeding could not turn the fast path on (no room, its slot
    /// taken): not before when to try again, rather than dump it every second.
    retry: StdHashMap<u64, Instant>,
}

impl FastPathMaps {
    /// Opens the attachment's fast-path maps for the agent (`status` reads
    /// [`NamespaceTable`] alone, read-only).
    pub fn open(attachment: &Attachment) -> anyhow::Result<FastPathMaps> {
        Ok(FastPathMaps {
            namespaces: NamespaceTable::open(&attachment.dir, true)?,
            claims: attachment.claim_table(true)?,
            unshared_ports: PortNotes::open(&attachment.dir, map_names::UNSHARED_PORTS)?,
            swept: StdHashMap::new(),
            dumped: StdHashMap::new(),
            walked: Instant::now(),
            retry: StdHashMap::new(),
        })
    }

    /// Turns the fast path off in one namespace.
    pub fn withdraw(&mut self, netns_cookie: u64) {
        if let Err(e) = self.namespaces.withdraw(netns_cookie) {
            tracing::warn!("netns {netns_cookie}: withdrawing the fast path: {e:#}");
        }
    }

    /// Turns it off everywhere.
    pub fn withdraw_all(&mut self) {
        for slot in 0..NAMESPACE_SLOTS {
            let cookie = self.namespaces.read(slot).netns_cookie;
            if cookie != 0 {
                self.withdraw(cookie);
            }
        }
    }

    /// True when the namespace's index is seeded, vouched for, and nothing unindexed happened
    /// since.
    pub fn is_on(&self, netns_cookie: u64) -> bool {
        self.namespaces.is_on(netns_cookie)
    }

    /// True when the namespace's last dump is [`SEED_SWEEP`] ago.
    fn sweep_due(&self, netns_cookie: u64) -> bool {
        self.swept
            .get(&netns_cookie)
            .is_none_or(|swept| swept.elapsed() >= SEED_SWEEP)
    }

    /// Notes a namespace's dump (`held`, begun at `jiffies`); once a sweep period has passed
    /// since the last, clears in one walk of the table the unowned claims of tuples no socket
    /// holds any more, in every namespace dumped since.
    fn sweep(
        &mut self,
        netns_cookie: u64,
        held: &StdHashMap<ClaimKey, u32>,
        jiffies: u64,
    ) -> anyhow::Result<()> {
        let tags = held.keys().map(ClaimKey::tag).collect();
        self.dumped.insert(netns_cookie, Dumped { tags, jiffies });
        self.swept.insert(netns_cookie, Instant::now());
        if self.walked.elapsed() >= SEED_SWEEP {
            let freed = self.claims.sweep(&self.dumped)?;
            if freed > 0 {
                tracing::debug!("{freed} unowned claims of tuples nobody holds cleared");
            }
            self.dumped.clear();
            self.walked = Instant::now();
        }
        Ok(())
    }
}

/// The connected UDP sockets of the current namespace that the claims index (a tuple with a
/// multicast or broadcast end never conflicts), as claim keys with their sockets' devices.
fn held_tuples(netns_cookie: u64) -> anyhow::Result<StdHashMap<ClaimKey, u32>> {
    Ok(SockDiag::open()?
        .dump_connected_udp()?
        .iter()
        .filter(|socket| unicast(socket))
        .map(|socket| (claim_key(netns_cookie, socket), socket.bound_ifindex))
        .collect())
}

/// True when both ends of the socket's tuple are unicast addresses.
fn unicast(socket: &ConnectedUdpSocket) -> bool {
    let plain = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => !a.is_multicast() && !a.is_broadcast(),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => !v4.is_multicast() && !v4.is_broadcast(),
            None => !a.is_multicast(),
        },
    };
    plain(socket.local.ip()) && plain(socket.remote.ip())
}

/// What one refresh of a namespace does, decided from the state under one lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Some connects in it go unseen (the watch is not running): fast path off.
    Withdraw,
    /// On, and checked recently: renew the lease only.
    Renew,
    /// On, and a check is due: renew the lease, dump the sockets, withdraw if the claims miss one.
    Check,
    /// Off, and a seeding failed a short while ago: stay off.
    Wait,
    /// Off: seed the claims from a dump and vouch for the namespace, if its connects are all seen.
    Seed,
}

/// What the state before a refresh calls for. Pure: `covered` (every connect in the cgroup is
/// seen, by the guard or the watch), `on` and `sweep_due` as [`FastPathMaps`] say,
/// `retry_pending` (a failed seeding's wait is not over). Whether this namespace's own tasks
/// are all seen is a walk of /proc, asked only by [`Step::Check`] and [`Step::Seed`], outside
/// the lock.
fn plan(covered: bool, on: bool, sweep_due: bool, retry_pending: bool) -> Step {
    match () {
        // Unseen connects make the index incomplete, whatever it held.
        () if !covered => Step::Withdraw,
        () if on && sweep_due => Step::Check,
        () if on => Step::Renew,
        // Seeding again at once would fail as it did: no room, or the slot another's.
        () if retry_pending => Step::Wait,
        () => Step::Seed,
    }
}

/// Brings one namespace (`netns`: its nsfs identity) up to date; runs on a thread inside it.
/// `coverage` says whether every connect in it is seen (by the guard at the cgroup root, or by
/// the watch). Decides under one lock what to do ([`plan`]), then does it; dumps are taken
/// without the lock (other namespaces' threads share it). Returns whether the fast path is on.
pub fn refresh(
    maps: &std::sync::Mutex<FastPathMaps>,
    netns_cookie: u64,
    netns: (u64, u64),
    coverage: &crate::watch::Coverage,
) -> anyhow::Result<bool> {
    let step = {
        let mut maps = maps.lock().unwrap();
        let step = plan(
            coverage.covered(),
            maps.is_on(netns_cookie),
            maps.sweep_due(netns_cookie),
            maps.retry
                .get(&netns_cookie)
                .is_some_and(|at| Instant::now() < *at),
        );
        match step {
            Step::Withdraw => maps.withdraw(netns_cookie),
            Step::Renew | Step::Check => maps.namespaces.renew(netns_cookie)?,
            Step::Wait | Step::Seed => {}
        }
        step
    };
    match step {
        Step::Withdraw | Step::Wait => Ok(false),
        Step::Renew => Ok(true),
        // The check is where a namespace the watch stopped covering loses the fast path.
        Step::Check if !coverage.covers(netns) => {
            maps.lock().unwrap().withdraw(netns_cookie);
            Ok(false)
        }
        Step::Check => check(maps, netns_cookie),
        // A namespace whose connects are not all seen is never vouched for.
        Step::Seed if !coverage.covers(netns) => {
            maps.lock()
                .unwrap()
                .retry
                .insert(netns_cookie, Instant::now() + COVERAGE_RETRY);
            Ok(false)
        }
        Step::Seed => seed(maps, netns_cookie),
    }
}

/// Dumps the namespace and withdraws its fast path if the claims miss a held tuple.
fn check(maps: &std::sync::Mutex<FastPathMaps>, netns_cookie: u64) -> anyhow::Result<bool> {
    let began = clock::jiffies()?;
    let held = held_tuples(netns_cookie)?;
    let mut maps = maps.lock().unwrap();
    // A tuple held from a port an unshared socket connected from need not be claimed: every
    // connect from that port is looked up.
    let missing = held
        .keys()
        .filter(|key| {
            !maps.claims.contains(key) && !maps.unshared_ports.noted(netns_cookie, key.local_port)
        })
        .count();
    if missing > 0 && maps.is_on(netns_cookie) {
        // The claims should hold every tuple here: something connected unseen.
        tracing::warn!(
            "netns {netns_cookie}: {missing} held tuple(s) missing from the claims; \
             fast path off until the next seeding"
        );
        maps.withdraw(netns_cookie);
        return Ok(false);
    }
    maps.sweep(netns_cookie, &held, began)?;
    Ok(true)
}

/// Seeds the claims from a dump and vouches for the namespace: what connected before the dump
/// is in it; what connects after goes through the programs, into the claims or noted as
/// unindexed.
fn seed(maps: &std::sync::Mutex<FastPathMaps>, netns_cookie: u64) -> anyhow::Result<bool> {
    let since = clock::jiffies()?.saturating_sub(clock::ticks(IN_FLIGHT_MARGIN_SECS));
    let held = held_tuples(netns_cookie)?;
    let mut maps = maps.lock().unwrap();
    let mut full = false;
    for (key, device) in &held {
        if maps.claims.seed(key, *device)? == Seeded::NoRoom {
            full = true;
        }
    }
    maps.swept.insert(netns_cookie, Instant::now());
    if full {
        tracing::info!(
            "netns {netns_cookie}: the claim table has no room for its {} connected sockets \
             (raise --max-sockets); fast path off, tried again in {}s",
            held.len(),
            SEED_RETRY.as_secs()
        );
        maps.retry.insert(netns_cookie, Instant::now() + SEED_RETRY);
        return Ok(false);
    }
    if !maps.namespaces.vouch(netns_cookie, since)? {
        tracing::debug!("netns {netns_cookie}: its slot is another namespace's, fast path off");
        maps.retry.insert(netns_cookie, Instant::now() + SEED_RETRY);
        return Ok(false);
    }
    maps.retry.remove(&netns_cookie);
    tracing::debug!(
        "netns {netns_cookie}: fast path on, {} connected sockets indexed",
        held.len()
    );
    Ok(maps.is_on(netns_cookie))
}

/// The claim key of a connected socket, as the programs make it.
fn claim_key(netns_cookie: u64, socket: &ConnectedUdpSocket) -> ClaimKey {
    ClaimKey::of(netns_cookie, socket.local, socket.remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `plan(covered, on, sweep_due, retry_pending)`, rule by rule.
    #[test]
    fn unseen_connects_withdraw_whatever_the_state() {
        for on in [false, true] {
            for due in [false, true] {
                assert_eq!(plan(false, on, due, false), Step::Withdraw);
            }
        }
    }

    #[test]
    fn an_indexed_namespace_is_renewed_and_checked_when_due() {
        assert_eq!(plan(true, true, false, false), Step::Renew);
        assert_eq!(plan(true, true, true, false), Step::Check);
        // A pending retry is about seeding; it never stops the checks of an indexed namespace.
        assert_eq!(plan(true, true, true, true), Step::Check);
    }

    #[test]
    fn seeding_waits_for_its_retry() {
        assert_eq!(plan(true, false, true, false), Step::Seed);
        assert_eq!(plan(true, false, false, false), Step::Seed);
        assert_eq!(plan(true, false, true, true), Step::Wait);
    }

    #[test]
    fn claim_keys_match_the_programs() {
        let socket = ConnectedUdpSocket {
            inode: 1,
            uid: 0,
            family: crate::sys::socket::Family::Ipv6,
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
