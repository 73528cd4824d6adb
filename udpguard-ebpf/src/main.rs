//! udpguard's kernel programs: refuse a UDP `connect()` that would give a second socket an
//! ESTABLISHED 4-tuple another socket already holds (only the newest would receive; the older
//! one silently starves).
//!
//! Four entry points share one decision, [`decide`]:
//! - `connect4` / `connect6` refuse with the configured errno through `bpf_set_retval`;
//! - `connect4_plain` / `connect6_plain` refuse with EPERM only, for kernels without it.
//!
//! `create` (cgroup/sock_create) and `release` (cgroup/sock_release) keep the per-socket
//! records of the claims that close the race (see [`claims`]).
#![no_std]
#![no_main]
// Compare-and-swap on a map value: the bpf target offers no `AtomicU64::compare_exchange`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod baselines;
mod claims;
mod fastpath;
mod routes;

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_ESTABLISHED, bpf_sock, bpf_sock_addr, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as TupleV4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as TupleV6,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_getsockopt,
            bpf_ktime_get_boot_ns, bpf_set_retval, bpf_setsockopt, bpf_sk_lookup_udp,
            bpf_sk_release,
        },
    },
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockContext},
};
use udpguard_common::{
    AttachMeta, ClaimKey, Config, ConflictEvent, Counter, Counters, action, autobind, errno, mode,
};

/// Return values of a cgroup sock_addr program.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const AF_INET: u32 = 2;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_UDP: u32 = 17;
const SOL_SOCKET: i32 = 1;
const SO_REUSEADDR: i32 = 2;
const SO_REUSEPORT: i32 = 15;
/// `::ffff:0:0/96`: the third word of a v4-mapped IPv6 address, as it lies in memory.
const V4_MAPPED_WORD: u32 = 0x0000_ffff_u32.to_be();

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);
/// Written and read by user space only; kept here so it is pinned beside the other maps.
#[map]
static META: Array<AttachMeta> = Array::with_max_entries(1, 0);
/// Conflict events for user space. Its size is set at load time (`--events-buffer`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    on_connect::<true>(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    on_connect::<true>(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4_plain(ctx: SockAddrContext) -> i32 {
    on_connect::<false>(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6_plain(ctx: SockAddrContext) -> i32 {
    on_connect::<false>(&ctx, Hook::Connect6)
}

/// A new UDP socket gets its birth recorded: a fresh claim refuses only older sockets.
#[cgroup_sock(sock_create)]
pub fn create(ctx: SockContext) -> i32 {
    // SAFETY: the context is the new socket; reading its type and protocol is allowed.
    unsafe {
        let sk = ctx.sock;
        if load(&(*sk).type_) == SOCK_DGRAM && load(&(*sk).protocol) == IPPROTO_UDP {
            claims::stamp_birth(sk.cast());
        }
    }
    ALLOW
}

/// A closing socket lets go of its claim (sock_release cannot read ports: where the claim is
/// comes from the socket's record).
#[cgroup_sock(sock_release)]
pub fn release(ctx: SockContext) -> i32 {
    // SAFETY: the context is the closing socket.
    unsafe { claims::release_socket(ctx.sock.cast()) };
    ALLOW
}

#[derive(Clone, Copy)]
enum Hook {
    /// An IPv4 sockaddr: from an AF_INET socket, or an AF_INET6 one given an AF_INET sockaddr.
    Connect4,
    /// An IPv6 sockaddr, v4-mapped peers included.
    Connect6,
}

/// What [`decide`] found.
enum Verdict {
    /// Not a UDP socket: none of our business, not counted.
    NotUdp,
    /// A UDP connect that could not be checked, and why.
    NotChecked(Counter),
    /// The socket gets its port from this connect (auto-bind): see [`autobind`].
    Autobind,
    /// Checked: no other socket holds the 4-tuple (`indexed: false`), or the fast path is on
    /// and the claims will tell (`indexed: true`).
    Unique {
        tuple: Tuple,
        netns: u64,
        indexed: bool,
    },
    /// Checked: the caller itself holds the 4-tuple already.
    AlreadyHeld,
    /// Checked: another ESTABLISHED socket holds the 4-tuple.
    Conflict(Tuple),
}

/// A connected UDP 4-tuple, addresses and ports in network order.
enum Tuple {
    V4 {
        local: u32,
        peer: u32,
        local_port: u16,
        peer_port: u16,
    },
    V6 {
        local: [u32; 4],
        peer: [u32; 4],
        local_port: u16,
        peer_port: u16,
    },
}

impl Tuple {
    /// The tuple as the claim map and events hold it, in the network namespace `netns_cookie`.
    #[inline(always)]
    fn key(&self, netns_cookie: u64) -> ClaimKey {
        let (family, local_addr, peer_addr, local_port, peer_port) = match *self {
            Tuple::V4 {
                local,
                peer,
                local_port,
                peer_port,
            } => (4, [local, 0, 0, 0], [peer, 0, 0, 0], local_port, peer_port),
            Tuple::V6 {
                local,
                peer,
                local_port,
                peer_port,
            } => (6, local, peer, local_port, peer_port),
        };
        ClaimKey {
            netns_cookie,
            local_addr,
            peer_addr,
            local_port,
            peer_port,
            family,
        }
    }
}

#[inline(always)]
fn on_connect<const SET_RETVAL: bool>(ctx: &SockAddrContext, hook: Hook) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr whose `sk` is a full socket.
    let verdict = unsafe { decide(ctx.sock_addr, hook) };
    match verdict {
        Verdict::NotUdp => ALLOW,
        Verdict::NotChecked(reason) => {
            count(reason);
            // A wildcard socket the mirror could not place will hold a tuple the claims lack.
            if reason != Counter::FamilyMismatch {
                fastpath::note_unindexed(netns_cookie(ctx.sock_addr));
            }
            ALLOW
        }
        Verdict::Autobind => {
            count(autobind(ctx));
            ALLOW
        }
        Verdict::AlreadyHeld => {
            count(Counter::Checked);
            ALLOW
        }
        Verdict::Conflict(tuple) => {
            count(Counter::Checked);
            act_on_conflict::<SET_RETVAL>(ctx, &tuple)
        }
        Verdict::Unique {
            tuple,
            netns,
            indexed,
        } => {
            count(Counter::Checked);
            // No socket holds the tuple, or, where the claims index every held tuple, none
            // claims it; a racer may be about to. The first claim wins.
            // SAFETY: as in `decide`.
            let held = || indexed && unsafe { held_by_another(ctx.sock_addr, &tuple) };
            match claims::claim(ctx, &tuple.key(netns), held) {
                claims::Claimed::Ours => {
                    if indexed {
                        count(Counter::Indexed);
                    }
                    ALLOW
                }
                claims::Claimed::TakenOver => {
                    count(Counter::StaleClaims);
                    ALLOW
                }
                claims::Claimed::Held => act_on_conflict::<SET_RETVAL>(ctx, &tuple),
                claims::Claimed::Lost => {
                    count(Counter::Raced);
                    act_on_conflict::<SET_RETVAL>(ctx, &tuple)
                }
                claims::Claimed::Unrecorded => {
                    // Nobody claims the tuple, but the claims will not know it is held.
                    fastpath::note_unindexed(netns);
                    ALLOW
                }
            }
        }
    }
}

/// The guard's decision for one `connect()`. Each rule says why in one line.
#[inline(always)]
unsafe fn decide(ctx: *mut bpf_sock_addr, hook: Hook) -> Verdict {
    // SAFETY (whole function): ctx and ctx->sk are valid for reads, as the verifier checks.
    unsafe {
        // Only UDP datagram sockets can share a connected 4-tuple; TCP, UDP-Lite, ICMP pass.
        if load(&(*ctx).type_) != SOCK_DGRAM || load(&(*ctx).protocol) != IPPROTO_UDP {
            return Verdict::NotUdp;
        }
        let sk = (*ctx).__bindgen_anon_1.sk;
        let tuple = match tuple_after_connect(ctx, sk, hook) {
            Ok(tuple) => tuple,
            Err(Counter::Autobind) => return Verdict::Autobind,
            Err(reason) => return Verdict::NotChecked(reason),
        };
        // Re-connecting to the peer it already has changes nothing, even beside an older
        // duplicate made before the guard.
        if already_connected_to(sk, &tuple) {
            return Verdict::AlreadyHeld;
        }
        // Where the claims index every tuple held in the namespace, a tuple nobody claims has
        // no holder: the lookup (a walk of every socket on the port) is needed only when a
        // claim is there. Elsewhere the lookup comes first.
        let netns = netns_cookie(ctx);
        if fastpath::index_complete(netns) {
            return Verdict::Unique {
                tuple,
                netns,
                indexed: true,
            };
        }
        routes::note_namespace(netns);
        if held_by_another(ctx, &tuple) {
            Verdict::Conflict(tuple)
        } else {
            Verdict::Unique {
                tuple,
                netns,
                indexed: false,
            }
        }
    }
}

/// The kernel's own lookup, as for a datagram from the peer: true when another socket holds
/// the tuple ESTABLISHED.
#[inline(always)]
unsafe fn held_by_another(ctx: *mut bpf_sock_addr, tuple: &Tuple) -> bool {
    // SAFETY: as in `decide`.
    unsafe {
        // It returns the ESTABLISHED holder when there is one, else an unconnected socket
        // (which receives only what no connected socket takes: no conflict). It cannot be the
        // caller ESTABLISHED: that case returned earlier.
        let holder = lookup(ctx, tuple);
        if holder.is_null() {
            return false;
        }
        let holder_connected = load(&(*holder).state) == BPF_TCP_ESTABLISHED;
        bpf_sk_release(holder.cast());
        holder_connected
    }
}

/// The 4-tuple the socket will hold after this connect, or why it cannot be known yet.
#[inline(always)]
unsafe fn tuple_after_connect(
    ctx: *mut bpf_sock_addr,
    sk: *mut bpf_sock,
    hook: Hook,
) -> Result<Tuple, Counter> {
    // SAFETY: as in `decide`.
    unsafe {
        // No local port yet: the kernel auto-binds one after this hook.
        let local_port = (load(&(*sk).src_port) as u16).to_be();
        if local_port == 0 {
            return Err(Counter::Autobind);
        }
        // `user_port` holds the port in network order in its low 16 bits.
        let peer_port = load(&(*ctx).user_port) as u16;
        match hook {
            Hook::Connect4 => {
                let peer = load(&(*ctx).user_ip4);
                Ok(Tuple::V4 {
                    local: local_ip4(ctx, sk, peer)?,
                    peer,
                    local_port,
                    peer_port,
                })
            }
            Hook::Connect6 => {
                let peer = load_ip6(&(*ctx).user_ip6);
                if is_v4_mapped(&peer) {
                    // A v4-mapped peer: the datagrams are IPv4, so the holder may be an AF_INET
                    // socket as well as a mapped AF_INET6 one; an IPv4 lookup finds both.
                    return Ok(Tuple::V4 {
                        local: local_ip4(ctx, sk, peer[3])?,
                        peer: peer[3],
                        local_port,
                        peer_port,
                    });
                }
                let mut local = load_ip6(&(*sk).src_ip6);
                // Bound to `::`: the kernel picks the source after this hook, from the routes.
                if local == [0; 4] {
                    wildcard_predictable(sk)?;
                    local = routes::source6(netns_cookie(ctx), &peer)?;
                }
                // Bound to a v4-mapped address, connecting to an IPv6 peer: the kernel refuses.
                if is_v4_mapped(&local) {
                    return Err(Counter::FamilyMismatch);
                }
                Ok(Tuple::V6 {
                    local,
                    peer,
                    local_port,
                    peer_port,
                })
            }
        }
    }
}

/// The socket's local IPv4 address after a connect to an IPv4 `peer`.
#[inline(always)]
unsafe fn local_ip4(ctx: *mut bpf_sock_addr, sk: *mut bpf_sock, peer: u32) -> Result<u32, Counter> {
    // SAFETY: as in `decide`.
    unsafe {
        let local = if load(&(*ctx).family) == AF_INET {
            load(&(*sk).src_ip4)
        } else {
            // An AF_INET6 socket: `src_ip4` holds a placeholder unless the bound address is
            // v4-mapped, so read the IPv6 address it was bound to.
            let local6 = load_ip6(&(*sk).src_ip6);
            if local6 != [0; 4] && !is_v4_mapped(&local6) {
                // Bound to a native IPv6 address: the kernel refuses an IPv4 peer.
                return Err(Counter::FamilyMismatch);
            }
            local6[3]
        };
        // Bound to 0.0.0.0 (or `::`): the kernel picks the source after this hook, from the
        // routes, as the agent's mirror predicts.
        if local == 0 {
            wildcard_predictable(sk)?;
            return routes::source4(netns_cookie(ctx), peer);
        }
        Ok(local)
    }
}

/// A device-bound or marked socket's route can differ from the namespace's plain routes.
#[inline(always)]
unsafe fn wildcard_predictable(sk: *mut bpf_sock) -> Result<(), Counter> {
    // SAFETY: as in `decide`.
    unsafe {
        if load(&(*sk).bound_dev_if) != 0 || load(&(*sk).mark) != 0 {
            return Err(Counter::WildcardUnmodeled);
        }
    }
    Ok(())
}

#[inline(always)]
fn netns_cookie(ctx: *mut bpf_sock_addr) -> u64 {
    // SAFETY: a plain helper call on the program's own context.
    unsafe { bpf_get_netns_cookie(ctx.cast()) }
}

/// With `--autobind unique`, clears an auto-binding socket's SO_REUSEADDR and SO_REUSEPORT so
/// the kernel's auto-bind picks a port no other socket holds (the application reads 0 for them
/// afterwards). Returns the reason the connect is not checked.
#[inline(always)]
fn autobind(ctx: &SockAddrContext) -> Counter {
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let unique = config.autobind == autobind::UNIQUE;
    let mut shared = false;
    for option in [SO_REUSEADDR, SO_REUSEPORT] {
        let mut value: i32 = 0;
        let size = size_of::<i32>() as i32;
        // SAFETY: the option value lives on our stack for the calls.
        unsafe {
            let ctx = ctx.sock_addr.cast();
            let on = bpf_getsockopt(ctx, SOL_SOCKET, option, (&raw mut value).cast(), size) == 0
                && value != 0;
            if on && unique {
                value = 0;
                bpf_setsockopt(ctx, SOL_SOCKET, option, (&raw mut value).cast(), size);
            }
            shared |= on;
        }
    }
    if unique {
        return Counter::AutobindUnique;
    }
    // A reuse socket's auto-bound port may be shared: it holds a tuple the claims lack.
    if shared {
        fastpath::note_unindexed(netns_cookie(ctx.sock_addr));
    }
    Counter::Autobind
}

/// `bpf_sk_lookup_udp` with the tuple reversed (a datagram from the peer), current netns.
#[inline(always)]
unsafe fn lookup(ctx: *mut bpf_sock_addr, tuple: &Tuple) -> *mut bpf_sock {
    // SAFETY: `raw` lives across the call and the size names the variant that was written.
    unsafe {
        let mut raw: bpf_sock_tuple = core::mem::zeroed();
        let size = match *tuple {
            Tuple::V4 {
                local,
                peer,
                local_port,
                peer_port,
            } => {
                raw.__bindgen_anon_1.ipv4 = TupleV4 {
                    saddr: peer,
                    daddr: local,
                    sport: peer_port,
                    dport: local_port,
                };
                size_of::<TupleV4>()
            }
            Tuple::V6 {
                local,
                peer,
                local_port,
                peer_port,
            } => {
                raw.__bindgen_anon_1.ipv6 = TupleV6 {
                    saddr: peer,
                    daddr: local,
                    sport: peer_port,
                    dport: local_port,
                };
                size_of::<TupleV6>()
            }
        };
        bpf_sk_lookup_udp(
            ctx.cast(),
            &mut raw,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// True when the caller is already connected to this tuple's peer (the local address is its
/// own by construction).
#[inline(always)]
unsafe fn already_connected_to(sk: *mut bpf_sock, tuple: &Tuple) -> bool {
    // SAFETY: as in `decide`.
    unsafe {
        if load(&(*sk).state) != BPF_TCP_ESTABLISHED {
            return false;
        }
        match *tuple {
            Tuple::V4 {
                peer, peer_port, ..
            } => load(&(*sk).dst_port) == peer_port && load(&(*sk).dst_ip4) == peer,
            Tuple::V6 {
                peer, peer_port, ..
            } => load(&(*sk).dst_port) == peer_port && load_ip6(&(*sk).dst_ip6) == peer,
        }
    }
}

/// Refuse (enforce) or count and let through (audit); either way, tell user space.
#[inline(always)]
fn act_on_conflict<const SET_RETVAL: bool>(ctx: &SockAddrContext, tuple: &Tuple) -> i32 {
    let config = CONFIG.get(0).copied().unwrap_or_default();
    if config.mode == mode::AUDIT {
        count(Counter::Audited);
        // The audited socket becomes a second holder, which the claims cannot index.
        fastpath::note_unindexed(netns_cookie(ctx.sock_addr));
        report(ctx, tuple, action::AUDITED, 0);
        return ALLOW;
    }
    count(Counter::Rejected);
    // Without bpf_set_retval a refusal is always EPERM.
    let errno = if SET_RETVAL {
        config.errno
    } else {
        errno::EPERM
    };
    if errno != errno::EPERM {
        // SAFETY: a plain helper call; the programs that make it load only where it exists.
        unsafe { bpf_set_retval(-(errno as i32)) };
    }
    report(ctx, tuple, action::REJECTED, errno);
    REFUSE
}

/// Sends a conflict event; when the ring buffer is full the event is dropped and counted,
/// never waited for. Only conflicts get here: the common path pays nothing for events.
#[inline(always)]
fn report(ctx: &SockAddrContext, tuple: &Tuple, action: u32, errno: u32) {
    let Some(mut entry) = EVENTS.reserve::<ConflictEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let key = tuple.key(netns_cookie(ctx.sock_addr));
    // SAFETY: plain helper calls on the program's own context.
    let event = unsafe {
        ConflictEvent {
            boot_ns: bpf_ktime_get_boot_ns(),
            pid_tgid: bpf_get_current_pid_tgid(),
            cgroup_id: bpf_get_current_cgroup_id(),
            netns_cookie: key.netns_cookie,
            comm: bpf_get_current_comm().unwrap_or_default(),
            local_addr: key.local_addr,
            peer_addr: key.peer_addr,
            local_port: key.local_port,
            peer_port: key.peer_port,
            family: key.family,
            action,
            errno,
            sock_cookie: bpf_get_socket_cookie(ctx.sock_addr.cast()),
        }
    };
    entry.write(event);
    entry.submit(0);
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(counters) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot: no other program touches it while this one runs.
        if let Some(value) = unsafe { (*counters).values.get_mut(counter as usize) } {
            *value += 1;
        }
    }
}

/// Reads a context field with one load of its own size (the verifier checks access sizes,
/// and merged or split loads of context fields are refused).
#[inline(always)]
unsafe fn load<T: Copy>(field: &T) -> T {
    // SAFETY: `field` is a valid reference.
    unsafe { ptr::read_volatile(field) }
}

#[inline(always)]
unsafe fn load_ip6(words: &[u32; 4]) -> [u32; 4] {
    // SAFETY: `words` is a valid reference.
    unsafe {
        [
            load(&words[0]),
            load(&words[1]),
            load(&words[2]),
            load(&words[3]),
        ]
    }
}

#[inline(always)]
fn is_v4_mapped(ip6: &[u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
