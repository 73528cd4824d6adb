//! The source the kernel will give a wildcard-bound socket, as the agent (`udpguard run`)
//! mirrors each network namespace's routing into LPM tries. `bpf_fib_lookup` is not allowed
//! in these programs, so this is the only way to know the 4-tuple before the connect.
//!
//! Never acts on stale or partial data: without a live agent, in a namespace not loaded yet,
//! or where the mirror cannot model the kernel's choice, the answer is "unknown" and the
//! connect passes, counted.
use crate::Memo;
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    btf_maps::{Array, HashMap, LpmTrie, RingBuf, lpm_trie::Key},
    helpers::bpf_get_current_pid_tgid,
    macros::btf_map,
};
use udpguard_common::{
    AGENT_TIMEOUT_NS, AgentState, Counter, NetnsEvent, ROUTE_MODELED, Route4, Route6, netns_state,
    route_key4, route_key6,
};

const ROUTES_MAX: usize = 65536;
const NETNS_MAX: usize = 4096;

#[btf_map]
static ROUTES4: LpmTrie<[u8; 12], Route4, ROUTES_MAX> = LpmTrie::new();
#[btf_map]
static ROUTES6: LpmTrie<[u8; 24], Route6, ROUTES_MAX> = LpmTrie::new();
#[btf_map]
static NETNS: HashMap<u64, u32, NETNS_MAX> = HashMap::new();
#[btf_map]
static AGENT: Array<AgentState, 1> = Array::new();
#[btf_map]
static NETNS_EVENTS: RingBuf<NetnsEvent, { 16 * 1024 }> = RingBuf::new();

/// The source the kernel will choose for an IPv4 destination, in this namespace.
#[inline(always)]
pub fn source4(memo: &mut Memo, peer: u32) -> Result<u32, Counter> {
    let netns_cookie = namespace_ready(memo)?;
    let key = Key::new(64 + 32, route_key4(netns_cookie, peer.to_ne_bytes()));
    // SAFETY: the value is copied out at once.
    match ROUTES4.get(&key) {
        Some(route) if route.flags & ROUTE_MODELED != 0 => Ok(route.src),
        // No route (the kernel will refuse the connect) or a choice we cannot predict.
        _ => Err(Counter::WildcardUnmodeled),
    }
}

/// The source the kernel will choose for an IPv6 destination, in this namespace.
#[inline(always)]
pub fn source6(memo: &mut Memo, peer: &[u32; 4]) -> Result<[u32; 4], Counter> {
    let netns_cookie = namespace_ready(memo)?;
    let mut addr = [0u8; 16];
    for (i, word) in peer.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let key = Key::new(64 + 128, route_key6(netns_cookie, addr));
    // SAFETY: the value is copied out at once.
    match ROUTES6.get(&key) {
        Some(route) if route.flags & ROUTE_MODELED != 0 => Ok(route.src),
        _ => Err(Counter::WildcardUnmodeled),
    }
}

/// The namespace's cookie when a live agent mirrors its routes.
#[inline(always)]
fn namespace_ready(memo: &mut Memo) -> Result<u64, Counter> {
    // Route data is trusted only while the agent that keeps it current is alive. (No agent at
    // all, as under `attach` alone, costs no clock read.)
    let heartbeat = AGENT.get(0).map_or(0, |a| a.heartbeat_ns);
    if heartbeat == 0 {
        return Err(Counter::Wildcard);
    }
    if (memo.now() as i64).wrapping_sub(heartbeat as i64) >= AGENT_TIMEOUT_NS as i64 {
        return Err(Counter::Wildcard);
    }
    let netns_cookie = memo.netns();
    // SAFETY: the value is copied out at once.
    match unsafe { NETNS.get(netns_cookie) }.copied() {
        Some(netns_state::READY) => Ok(netns_cookie),
        Some(netns_state::UNMODELED) => Err(Counter::WildcardUnmodeled),
        Some(_) => Err(Counter::WildcardNewNetns),
        None => {
            report_new_namespace(netns_cookie);
            Err(Counter::WildcardNewNetns)
        }
    }
}

/// True once an agent has run since the attach (its heartbeat is set before it vouches for
/// any namespace).
#[inline(always)]
pub fn agent_started() -> bool {
    AGENT.get(0).is_some_and(|a| a.heartbeat_ns != 0)
}

/// Makes sure the agent knows this namespace (its routes, and whether its fast path can be
/// turned on): reports it once.
#[inline(always)]
pub fn note_namespace(netns_cookie: u64) {
    // No agent has run since the attach: nobody to tell (it looks for namespaces itself when
    // it starts), and the common path skips a hash lookup.
    if !agent_started() {
        return;
    }
    // SAFETY: the value is not kept.
    if unsafe { NETNS.get(netns_cookie) }.is_none() {
        report_new_namespace(netns_cookie);
    }
}

/// Tells the agent about a namespace once: the first connect marks it pending.
#[inline(always)]
fn report_new_namespace(netns_cookie: u64) {
    if NETNS
        .insert(netns_cookie, netns_state::PENDING, BPF_NOEXIST.into())
        .is_ok()
    {
        let event = NetnsEvent {
            netns_cookie,
            pid_tgid: bpf_get_current_pid_tgid(),
        };
        if NETNS_EVENTS.output(event, 0).is_err() {
            // Not delivered: forget the namespace, so the next connect reports it again.
            let _ = NETNS.remove(netns_cookie);
        }
    }
}
