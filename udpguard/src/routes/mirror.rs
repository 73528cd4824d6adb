//! The mirror's threads: a heartbeat (so the kernel stops trusting the data as soon as the
//! agent is gone), a reader of the kernel's "new namespace" reports, and one watcher per
//! namespace that re-mirrors its routes whenever routes, addresses, rules or links change.
use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{Map, MapData, RingBuf};
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressHeaderFlags, AddressScope},
    route::{RouteAttribute, RouteType},
};
use udpguard_common::{NetnsEvent, map_names, names::pin_of, netns_state};

use super::{
    maps::{Prediction, RouteMaps},
    model::{self, Prefix},
};
use crate::{
    attachment::Attachment,
    fastpath::{self, FastPathMaps},
    sys::{netns, rtnl::Rtnl},
    watch::Coverage,
};

/// How often the heartbeat is renewed (the kernel trusts it for `AGENT_TIMEOUT_NS`, 3 s).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often the threads look at the stop flag, and a watcher renews, sweeps or seeds its
/// namespace's fast path (route changes and namespace reports wake them at once). Each
/// wake-up of each namespace's thread costs CPU: 100 ms made an idle agent wake tens of times
/// a second.
const TICK: Duration = Duration::from_secs(1);
/// Changes come in bursts (an address brings its routes): wait this long for the rest.
const SETTLE: Duration = Duration::from_millis(30);
/// How often the discovery thread looks for watched namespaces that nothing holds any more.
const LIVENESS: Duration = Duration::from_secs(2);

type Shared = Arc<Mutex<RouteMaps>>;

/// What every watcher shares.
#[derive(Clone)]
struct Context {
    maps: Shared,
    /// The fast path's maps (None without claims: a kernel without 64-bit BPF atomics).
    fast: Option<Arc<Mutex<FastPathMaps>>>,
    stop: Arc<AtomicBool>,
    /// Whether every connect in the guarded namespaces is seen (see `crate::watch`).
    coverage: Arc<Coverage>,
}

impl Context {
    /// Turns the fast path off in one namespace.
    fn withdraw(&self, cookie: u64) {
        if let Some(fast) = &self.fast {
            fast.lock().unwrap().withdraw(cookie);
        }
    }
}

/// A running mirror; [`RouteMirror::stop`] ends it and tells the kernel at once.
pub struct RouteMirror {
    context: Context,
    threads: Vec<JoinHandle<()>>,
    watchers: Watchers,
}

/// One watched namespace: its cookie, the state last published, its thread, and whether
/// nothing but us holds it any more (set by the discovery thread's liveness pass).
struct Watcher {
    cookie: u64,
    state: Arc<AtomicU32>,
    thread: JoinHandle<()>,
    gone: Arc<AtomicBool>,
}

/// Namespaces being watched, by nsfs identity.
type Watchers = Arc<Mutex<HashMap<(u64, u64), Watcher>>>;

impl RouteMirror {
    /// Starts mirroring for the attachment (and keeping its fast path, where `coverage`
    /// allows): the agent's own namespace at once, others when the kernel reports them.
    pub fn start(attachment: &Attachment, coverage: Arc<Coverage>) -> anyhow::Result<RouteMirror> {
        let dir = &attachment.dir;
        let fast = if attachment.features().claims() {
            let mut fast = FastPathMaps::open(attachment)?;
            fast.withdraw_all();
            Some(Arc::new(Mutex::new(fast)))
        } else {
            None
        };
        let mut maps = RouteMaps::open(dir)?;
        // Start clean: every namespace is reported again on its next wildcard connect.
        maps.forget_all();
        maps.clear_routes();
        maps.set_heartbeat(crate::clock::monotonic_ns())?;
        let reports = MapData::from_pin(dir.join(pin_of(map_names::NETNS_EVENTS)))
            .context("opening the namespace reports")?;
        let mut reports = RingBuf::try_from(Map::RingBuf(reports))?;

        let context = Context {
            maps: Arc::new(Mutex::new(maps)),
            fast,
            stop: Arc::new(AtomicBool::new(false)),
            coverage,
        };
        let mirror = RouteMirror {
            context: context.clone(),
            threads: Vec::new(),
            watchers: Arc::new(Mutex::new(HashMap::new())),
        };
        let own = File::open("/proc/self/ns/net").context("opening our network namespace")?;
        watch(&mirror.watchers, &context, own, None)?;

        let (stop, maps) = (Arc::clone(&context.stop), Arc::clone(&context.maps));
        let watched = Arc::clone(&mirror.watchers);
        let heartbeat = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match maps
                    .lock()
                    .unwrap()
                    .set_heartbeat(crate::clock::monotonic_ns())
                {
                    Ok(()) => crate::health::AGENT.heartbeat(),
                    Err(e) => tracing::warn!("route mirror heartbeat: {e:#}"),
                }
                crate::health::AGENT.set_mirrored(watched.lock().unwrap().len());
                std::thread::sleep(HEARTBEAT);
            }
        });
        let (watchers, shared) = (Arc::clone(&mirror.watchers), context.clone());
        let discovery = std::thread::spawn(move || {
            let mut looked = std::time::Instant::now();
            while !shared.stop.load(Ordering::Relaxed) {
                if looked.elapsed() >= LIVENESS {
                    mark_gone(&watchers);
                    looked = std::time::Instant::now();
                }
                let mut events = Vec::new();
                while let Some(item) = reports.next() {
                    if item.len() >= size_of::<NetnsEvent>() {
                        // SAFETY: the kernel wrote a NetnsEvent; read it unaligned.
                        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
                    }
                }
                for event in events {
                    on_report(&watchers, &shared, event);
                }
                // Woken by the kernel's next report (a namespace is loaded within moments of
                // its first connect), or after a tick to look at the stop flag.
                wait_readable(&reports, TICK);
            }
        });
        let mut mirror = mirror;
        mirror.threads = vec![heartbeat, discovery];
        Ok(mirror)
    }

    /// Stops every thread and tells the kernel the data is no longer kept current.
    pub fn stop(self) {
        self.context.stop.store(true, Ordering::Relaxed);
        if let Some(fast) = &self.context.fast {
            fast.lock().unwrap().withdraw_all();
        }
        let _ = self.context.maps.lock().unwrap().set_heartbeat(0);
        for thread in self.threads {
            let _ = thread.join();
        }
        let watchers: Vec<_> = self.watchers.lock().unwrap().drain().collect();
        for (_, watcher) in watchers {
            let _ = watcher.thread.join();
        }
        let mut maps = self.context.maps.lock().unwrap();
        maps.forget_all();
        maps.clear_routes();
    }
}

/// Marks the watched namespaces that nothing but us holds any more: their watchers stop.
fn mark_gone(watchers: &Watchers) {
    let wanted = watchers.lock().unwrap().keys().copied().collect();
    let held = netns::held_of(&wanted);
    for (identity, watcher) in watchers.lock().unwrap().iter() {
        if !held.contains(identity) {
            watcher.gone.store(true, Ordering::Relaxed);
        }
    }
}

/// Gives freed memory back to the system (glibc keeps it in its arenas otherwise: a burst of
/// namespaces would leave the agent at its peak).
fn trim_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// Waits until the ring buffer has something to read, at most `most`.
fn wait_readable(ring: &RingBuf<MapData>, most: Duration) {
    use std::os::fd::AsRawFd as _;
    let mut poll = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; an error or a timeout only ends the wait.
    unsafe { libc::poll(&mut poll, 1, most.as_millis() as libc::c_int) };
}

/// A namespace the kernel saw a wildcard connect in: enter it through the reporting process.
fn on_report(watchers: &Watchers, context: &Context, event: NetnsEvent) {
    let maps = &context.maps;
    let pid = event.pid_tgid >> 32;
    let ns = File::open(netns::path_of_pid(pid))
        .ok()
        .or_else(|| namespace_with_cookie(event.netns_cookie));
    let Some(ns) = ns else {
        // Gone: forget the namespace, so its next connect reports it again.
        maps.lock().unwrap().forget(event.netns_cookie);
        return;
    };
    let Ok(identity) = netns::identity(&ns) else {
        return;
    };
    let known = watchers
        .lock()
        .unwrap()
        .get(&identity)
        .map(|w| (w.cookie, w.state.load(Ordering::Relaxed)));
    match known {
        // Already watched (its entry was dropped meanwhile): publish its state again.
        Some((cookie, state)) if cookie == event.netns_cookie && state != 0 => {
            let _ = maps.lock().unwrap().set_state(cookie, state);
        }
        Some(_) => {}
        None => {
            if let Err(e) = watch(watchers, context, ns, Some(event.netns_cookie)) {
                tracing::warn!("cannot watch the routes of the namespace of pid {pid}: {e:#}");
                maps.lock().unwrap().forget(event.netns_cookie);
            }
        }
    }
}

/// The reporting process has exited already: find its namespace among those on the host (a
/// process or a bind mount holds it) by its cookie.
fn namespace_with_cookie(cookie: u64) -> Option<File> {
    let discovery = netns::discover().ok()?;
    discovery.namespaces.iter().find_map(|candidate| {
        let found = netns::open_in(candidate, netns::current_cookie);
        match found {
            Ok(c) if c == cookie => File::open(&candidate.path).ok(),
            _ => None,
        }
    })
}

/// Starts a watcher thread inside the namespace `ns`.
fn watch(
    watchers: &Watchers,
    context: &Context,
    ns: File,
    expected_cookie: Option<u64>,
) -> anyhow::Result<()> {
    let identity = netns::identity(&ns)?;
    let state = Arc::new(AtomicU32::new(0));
    let gone = Arc::new(AtomicBool::new(false));
    let (context_, state_, gone_) = (context.clone(), Arc::clone(&state), Arc::clone(&gone));
    let watchers_ = Arc::clone(watchers);
    let (cookie_tx, cookie_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let cookie = netns::enter(&ns)
            .map_err(anyhow::Error::from)
            .and_then(|()| netns::current_cookie());
        let cookie = match cookie {
            Ok(c) if expected_cookie.is_none_or(|e| e == c) => c,
            _ => {
                let _ = cookie_tx.send(None);
                return;
            }
        };
        let _ = cookie_tx.send(Some(cookie));
        if let Err(e) = mirror_namespace(&context_, &state_, &gone_, cookie, identity) {
            tracing::warn!("route mirror for netns cookie {cookie} stopped: {e:#}");
            context_.withdraw(cookie);
            context_.maps.lock().unwrap().forget(cookie);
        }
        // Done (the namespace is gone, or the mirror stops): its entry goes, and with it this
        // thread's handle, so its stack is freed as it exits.
        if !context_.stop.load(Ordering::Relaxed) {
            watchers_.lock().unwrap().remove(&identity);
            trim_memory();
        }
    });
    match cookie_rx.recv().ok().flatten() {
        Some(cookie) => {
            watchers.lock().unwrap().insert(
                identity,
                Watcher {
                    cookie,
                    state,
                    thread,
                    gone,
                },
            );
            Ok(())
        }
        None => {
            let _ = thread.join();
            anyhow::bail!("its cookie is not the one the kernel reported")
        }
    }
}

/// The watcher's loop, on a thread inside the namespace.
fn mirror_namespace(
    context: &Context,
    state: &AtomicU32,
    gone: &AtomicBool,
    cookie: u64,
    identity: (u64, u64),
) -> anyhow::Result<()> {
    let (maps, stop) = (&context.maps, &context.stop);
    // Subscribe before reading, so no change slips between the two.
    let mut changes = crate::sys::rtnl::Changes::subscribe(TICK)?;
    let mut rtnl = Rtnl::open()?;
    let mut written = BTreeSet::new();
    loop {
        let (new_state, entries) = predict_namespace(&mut rtnl)?;
        {
            let mut maps = maps.lock().unwrap();
            // Pending while half-written: wildcard connects pass rather than use a mix.
            maps.set_state(cookie, netns_state::PENDING)?;
            maps.write(cookie, &entries, &written)?;
            maps.set_state(cookie, new_state)?;
        }
        state.store(new_state, Ordering::Relaxed);
        written = entries.iter().map(|(p, _)| *p).collect();
        tracing::debug!(
            "netns {cookie}: {} route entries, state {new_state}",
            written.len()
        );

        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Some(fast) = context.fast.as_ref() {
                let on = fastpath::refresh(fast, cookie, identity, &context.coverage);
                if let Err(e) = on {
                    tracing::warn!("netns {cookie}: fast path off: {e:#}");
                    context.withdraw(cookie);
                }
            }
            if changes.wait()? {
                std::thread::sleep(SETTLE);
                while changes.wait_briefly()? {}
                break;
            }
            if gone.load(Ordering::Relaxed) {
                context.withdraw(cookie);
                let mut maps = maps.lock().unwrap();
                maps.write(cookie, &[], &written)?;
                maps.forget(cookie);
                return Ok(());
            }
        }
    }
}

/// The namespace's state and every prefix's prediction, as the kernel answers.
fn predict_namespace(rtnl: &mut Rtnl) -> anyhow::Result<(u32, Vec<(Prefix, Prediction)>)> {
    let rules = [
        rtnl.rules(AddressFamily::Inet)?,
        rtnl.rules(AddressFamily::Inet6)?,
    ];
    if !rules.iter().all(|r| model::default_rules(r)) {
        return Ok((netns_state::UNMODELED, Vec::new()));
    }
    let mut entries = predict_family(rtnl, AddressFamily::Inet, false)?;
    let one_v6_source = global_v6_addresses(rtnl)? <= 1;
    entries.extend(predict_family(rtnl, AddressFamily::Inet6, one_v6_source)?);
    Ok((netns_state::READY, entries))
}

fn predict_family(
    rtnl: &mut Rtnl,
    family: AddressFamily,
    one_v6_source: bool,
) -> anyhow::Result<Vec<(Prefix, Prediction)>> {
    let routes = rtnl.routes(family)?;
    let prefixes = model::prefixes(&routes);
    let mut out = Vec::with_capacity(prefixes.len());
    for prefix in &prefixes {
        let Some(representative) = model::representative(prefix, &prefixes) else {
            continue;
        };
        let prediction = if model::is_multipath(prefix, &routes) {
            Prediction::Unmodeled
        } else {
            let source = ask_kernel(rtnl, representative)?;
            // IPv6 picks among a link's addresses by destination (RFC 6724): one answer is
            // the answer for the whole prefix only for a single address, an explicit source,
            // or a namespace with one global address.
            let exact = prefix.addr.is_ipv4()
                || prefix.len == 128
                || model::has_preferred_source(prefix, &routes)
                || one_v6_source;
            match source {
                Some(src) if exact => Prediction::Source(src),
                _ => Prediction::Unmodeled,
            }
        };
        out.push((*prefix, prediction));
    }
    Ok(out)
}

/// The source the kernel picks for a connect to `dst` from a wildcard-bound socket.
fn ask_kernel(rtnl: &mut Rtnl, dst: IpAddr) -> anyhow::Result<Option<IpAddr>> {
    let Some(route) = rtnl.get_route(dst, None)? else {
        return Ok(None);
    };
    if !matches!(route.header.kind, RouteType::Unicast | RouteType::Local) {
        return Ok(None);
    }
    Ok(route.attributes.iter().find_map(|a| match a {
        RouteAttribute::PrefSource(netlink_packet_route::route::RouteAddress::Inet(a)) => {
            Some(IpAddr::V4(*a))
        }
        RouteAttribute::PrefSource(netlink_packet_route::route::RouteAddress::Inet6(a)) => {
            Some(IpAddr::V6(*a))
        }
        _ => None,
    }))
}

/// How many usable global-scope IPv6 addresses the namespace has.
fn global_v6_addresses(rtnl: &mut Rtnl) -> anyhow::Result<usize> {
    let unusable = AddressHeaderFlags::Tentative
        | AddressHeaderFlags::Dadfailed
        | AddressHeaderFlags::Deprecated;
    Ok(rtnl
        .addresses(AddressFamily::Inet6)?
        .iter()
        .filter(|a| {
            a.header.scope == AddressScope::Universe && (a.header.flags & unusable).is_empty()
        })
        .filter(|a| {
            a.attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(_)))
        })
        .count())
}
