//! udpguard's kernel programs: refuse a UDP `connect()` that would give a second socket an
//! ESTABLISHED 4-tuple another socket already holds (only the newest would receive; the older
//! one silently starves).
//!
//! Six connect entry points share one decision, [`decide`], in three builds for three kinds of
//! kernel (user space loads the first that the kernel accepts):
//! - `udpguard_conn4`/`6`: claims (no race window) and the configured errno (`bpf_set_retval`,
//!   Linux 5.18+);
//! - `udpguard_conn4p`/`6p`: claims, EPERM only (64-bit BPF atomics, Linux 5.12+);
//! - `udpguard_conn4b`/`6b`: the kernel's lookup alone, EPERM only (older kernels).
//!
//! With claims, `udpguard_create` (cgroup/sock_create) and `udpguard_close`
//! (cgroup/sock_release) keep the socket records (see [`claims`]); `udpguard_watch4`/`6` run on
//! an ancestor cgroup for the agent's fast path (see [`watch`]).
#![no_std]
#![no_main]
// Compare-and-swap on a map value: the bpf target offers no `AtomicU64::compare_exchange`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod claims;
mod fastpath;
mod opaque;
mod ports;
mod routes;
mod watch;

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_ESTABLISHED, bpf_sock, bpf_sock_addr, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as TupleV4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as TupleV6,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_getsockopt,
            bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_set_retval, bpf_setsockopt,
            bpf_sk_lookup_udp, bpf_sk_release,
        },
    },
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockContext},
};
use udpguard_common::{
    AttachMeta, ClaimKey, Config, ConflictEvent, Counter, Counters, action, autobind,
    claims::DEVICE_UNKNOWN,
    config::flags,
    errno,
    events::cause,
    mode,
    reuse::{REUSE_READ_BYTES, ReuseBits},
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
/// 127.0.0.1 and ::1, as they lie in memory.
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);
/// Written and read by user space only; kept here so it is pinned beside the other maps.
#[map]
static META: Array<AttachMeta> = Array::with_max_entries(1, 0);
/// Conflict events for user space. Its size is set at load time (`--events-buffer`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(udpguard_common::config::DEFAULT_EVENTS_BUFFER, 0);

#[cgroup_sock_addr(connect4)]
pub fn udpguard_conn4(ctx: SockAddrContext) -> i32 {
    on_connect::<true, true>(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn udpguard_conn6(ctx: SockAddrContext) -> i32 {
    on_connect::<true, true>(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(connect4)]
pub fn udpguard_conn4p(ctx: SockAddrContext) -> i32 {
    on_connect::<false, true>(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn udpguard_conn6p(ctx: SockAddrContext) -> i32 {
    on_connect::<false, true>(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(connect4)]
pub fn udpguard_conn4b(ctx: SockAddrContext) -> i32 {
    on_connect::<false, false>(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn udpguard_conn6b(ctx: SockAddrContext) -> i32 {
    on_connect::<false, false>(&ctx, Hook::Connect6)
}

/// A new UDP socket gets its birth recorded: a fresh claim refuses only older sockets.
#[cgroup_sock(sock_create)]
pub fn udpguard_create(ctx: SockContext) -> i32 {
    // SAFETY: the context is the new socket; reading its type and protocol is allowed.
    unsafe {
        let sk = ctx.sock;
        if load(&(*sk).type_) == SOCK_DGRAM && load(&(*sk).protocol) == IPPROTO_UDP {
            claims::stamp_birth(sk.cast());
        }
    }
    ALLOW
}

/// A closing UDP socket lets go of its claim and its record (sock_release cannot read ports:
/// where the claim is comes from the socket's record).
#[cgroup_sock(sock_release)]
pub fn udpguard_close(ctx: SockContext) -> i32 {
    // SAFETY: the context is the closing socket.
    unsafe {
        let sk = ctx.sock;
        if load(&(*sk).type_) == SOCK_DGRAM && load(&(*sk).protocol) == IPPROTO_UDP {
            claims::release_socket(sk.cast());
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn udpguard_watch4(ctx: SockAddrContext) -> i32 {
    watch::on_connect(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn udpguard_watch6(ctx: SockAddrContext) -> i32 {
    watch::on_connect(&ctx);
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
    /// The socket shares its port with nobody (no reuse option): no tuple to check.
    Unshared { local_port: u16 },
    /// No holder seen yet; the claim decides. `looked_up`: the kernel's lookup found none;
    /// otherwise it was skipped, as the claims index every held tuple of the namespace (the
    /// fast path) and a claim of the tuple is what tells. `device`: see `ClaimSlot::device`.
    NoHolderSeen {
        tuple: Tuple,
        netns: u64,
        device: u32,
        looked_up: bool,
    },
    /// The caller itself holds the 4-tuple already.
    OwnTuple,
    /// Another ESTABLISHED socket holds the 4-tuple.
    Conflict(Tuple),
}

/// A connected UDP 4-tuple, addresses and ports in network order; an IPv4 address is in word
/// 0, the rest zero. A plain struct, every field set: an enum's unset payload can reach the
/// verifier as an uninitialized register.
#[derive(Clone, Copy)]
struct Tuple {
    v6: bool,
    local: [u32; 4],
    peer: [u32; 4],
    local_port: u16,
    peer_port: u16,
}

impl Tuple {
    #[inline(always)]
    fn v4(local: u32, peer: u32, local_port: u16, peer_port: u16) -> Tuple {
        Tuple {
            v6: false,
            local: [local, 0, 0, 0],
            peer: [peer, 0, 0, 0],
            local_port,
            peer_port,
        }
    }

    /// The tuple as the claim table and events hold it, in the network namespace `netns_cookie`.
    #[inline(always)]
    fn key(&self, netns_cookie: u64) -> ClaimKey {
        ClaimKey {
            netns_cookie,
            local_addr: self.local,
            peer_addr: self.peer,
            local_port: self.local_port,
            peer_port: self.peer_port,
            family: if self.v6 { 6 } else { 4 },
        }
    }
}

#[inline(always)]
fn on_connect<const SET_RETVAL: bool, const CLAIMS: bool>(
    ctx: &SockAddrContext,
    hook: Hook,
) -> i32 {
    let mut memo = Memo::new(ctx.sock_addr);
    // SAFETY: the kernel hands a valid bpf_sock_addr whose `sk` is a full socket.
    let verdict = unsafe { decide::<CLAIMS>(ctx.sock_addr, hook, &mut memo) };
    if !matches!(verdict, Verdict::NotUdp) && watched() {
        watch::mark(memo.cookie());
    }
    match verdict {
        Verdict::NotUdp => ALLOW,
        Verdict::NotChecked(reason) => {
            count(reason);
            // A socket that holds a tuple the claims lack: the namespace's index is incomplete.
            // (The kernel refuses a family mismatch; a multicast tuple never conflicts.)
            if !matches!(reason, Counter::FamilyMismatch | Counter::Multicast) {
                fastpath::note_unindexed(memo.netns());
            }
            ALLOW
        }
        Verdict::Autobind => {
            count(autobind(ctx, &mut memo));
            ALLOW
        }
        Verdict::Unshared { local_port } => {
            count(Counter::Unshared);
            // Only an agent vouches for a namespace's index; one that starts later seeds this
            // socket's tuple from its dump.
            if CLAIMS && routes::agent_started() {
                ports::note_unshared(memo.netns(), local_port);
            }
            ALLOW
        }
        Verdict::OwnTuple => {
            count(Counter::Checked);
            ALLOW
        }
        Verdict::Conflict(tuple) => {
            count(Counter::Checked);
            act_on_conflict::<SET_RETVAL>(ctx, &tuple, &mut memo, cause::HELD)
        }
        Verdict::NoHolderSeen {
            tuple,
            netns,
            device,
            looked_up,
        } => {
            // The lookup is skipped only where the claims index the namespace. (These values
            // go through `opaque`: the verifier then checks what follows once, not once per
            // way each was reached.)
            let indexed = opaque::flag(!looked_up);
            let device = opaque::word(device);
            let tuple = Tuple {
                v6: opaque::flag(tuple.v6),
                ..tuple
            };
            // The lookup cannot see device-bound holders: a device-bound connect is fully
            // checked only where the claims index the namespace.
            let sure = indexed || device == 0;
            let checked = if sure {
                Counter::Checked
            } else {
                Counter::DeviceBound
            };
            if !CLAIMS {
                count(checked);
                return ALLOW;
            }
            // No socket holds the tuple, or, where the claims index every held tuple, none
            // claims it; a racer may be about to. The first claim wins.
            // SAFETY: as in `decide`.
            let held = || indexed && unsafe { held_by_another(ctx.sock_addr, &tuple) };
            match claims::claim(&mut memo, &tuple.key(netns), device, indexed, held) {
                claims::Claimed::Ours { recorded } => {
                    count(checked);
                    if indexed {
                        count(Counter::Indexed);
                    }
                    if !recorded {
                        count(Counter::Unrecorded);
                    }
                    ALLOW
                }
                claims::Claimed::TakenOver { blind } => {
                    count(Counter::StaleClaims);
                    count(if blind { Counter::DeviceBound } else { checked });
                    ALLOW
                }
                claims::Claimed::Coexist { blind } => {
                    count(if blind { Counter::DeviceBound } else { checked });
                    ALLOW
                }
                claims::Claimed::Unrecorded => {
                    count(checked);
                    count(Counter::Unrecorded);
                    ALLOW
                }
                claims::Claimed::Held => {
                    count(Counter::Checked);
                    act_on_conflict::<SET_RETVAL>(ctx, &tuple, &mut memo, cause::HELD)
                }
                claims::Claimed::HeldByDevice => {
                    count(Counter::Checked);
                    act_on_conflict::<SET_RETVAL>(ctx, &tuple, &mut memo, cause::HELD_BY_DEVICE)
                }
                claims::Claimed::Lost => {
                    count(Counter::Checked);
                    count(Counter::Raced);
                    act_on_conflict::<SET_RETVAL>(ctx, &tuple, &mut memo, cause::RACED)
                }
            }
        }
    }
}

/// The guard's decision for one `connect()`. Each rule says why in one line.
#[inline(always)]
unsafe fn decide<const CLAIMS: bool>(
    ctx: *mut bpf_sock_addr,
    hook: Hook,
    memo: &mut Memo,
) -> Verdict {
    // SAFETY (whole function): ctx and ctx->sk are valid for reads, as the verifier checks.
    unsafe {
        // Only UDP datagram sockets can share a connected 4-tuple; TCP, UDP-Lite, ICMP pass.
        if load(&(*ctx).type_) != SOCK_DGRAM || load(&(*ctx).protocol) != IPPROTO_UDP {
            return Verdict::NotUdp;
        }
        let sk = (*ctx).__bindgen_anon_1.sk;
        // No local port yet: the kernel auto-binds one after this hook.
        let local_port = (load(&(*sk).src_port) as u16).to_be();
        if local_port == 0 {
            return Verdict::Autobind;
        }
        // Two sockets share an address and port only if both had SO_REUSEADDR (or both
        // SO_REUSEPORT) when the second bound: a socket with neither holds its port alone,
        // unless it cleared its option after binding beside shared sockets (an adversary's
        // way to take a victim's tuple): from a port shared ones connected from, check it.
        // (The older-kernel build, without atomics to note ports with, checks every socket.)
        if CLAIMS {
            let shared = shares_port(ctx);
            if !shared && !ports::shared_seen(memo.netns(), local_port) {
                return Verdict::Unshared { local_port };
            }
            if shared {
                ports::note_shared(memo.netns(), local_port);
            }
        }
        let tuple = match tuple_after_connect(ctx, sk, hook, memo) {
            Ok(tuple) => tuple,
            Err(reason) => return Verdict::NotChecked(reason),
        };
        // Re-connecting to the peer it already has changes nothing, even beside an older
        // duplicate made before the guard.
        if already_connected_to(sk, &tuple) {
            return Verdict::OwnTuple;
        }
        let netns = memo.netns();
        let device = device_after_connect(sk, &tuple);
        // Where the claims index every tuple held in the namespace, a tuple nobody claims has
        // no holder: the lookup (a walk of every socket on the port) is needed only when a
        // claim is there. Elsewhere the lookup comes first, and on a port an unshared socket
        // connected from (it holds its tuple without a claim).
        if CLAIMS
            && fastpath::index_complete(netns)
            && !ports::unshared_seen(netns, tuple.local_port)
        {
            return Verdict::NoHolderSeen {
                tuple,
                netns,
                device,
                looked_up: false,
            };
        }
        routes::note_namespace(netns);
        if held_by_another(ctx, &tuple) {
            Verdict::Conflict(tuple)
        } else {
            Verdict::NoHolderSeen {
                tuple,
                netns,
                device,
                looked_up: true,
            }
        }
    }
}

/// The kernel's own lookup, as for a datagram from the peer: true when another socket holds
/// the tuple ESTABLISHED. It cannot see sockets bound to a device (it looks up with no
/// incoming device); their claims stand for them.
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
        // ESTABLISHED is not enough: in an SO_REUSEPORT group the lookup can hand back the
        // group's pick, connected to another peer (4,053 false refusals in the QUIC-shaped
        // bench). Only a socket connected to this very peer holds the tuple.
        let holds = already_connected_to(holder, tuple);
        bpf_sk_release(holder.cast());
        holds
    }
}

/// The 4-tuple the socket will hold after this connect, as the kernel will store it, or why it
/// cannot be known yet.
#[inline(always)]
unsafe fn tuple_after_connect(
    ctx: *mut bpf_sock_addr,
    sk: *mut bpf_sock,
    hook: Hook,
    memo: &mut Memo,
) -> Result<Tuple, Counter> {
    // SAFETY: as in `decide`.
    unsafe {
        let local_port = (load(&(*sk).src_port) as u16).to_be();
        // `user_port` holds the port in network order in its low 16 bits.
        let peer_port = load(&(*ctx).user_port) as u16;
        match hook {
            Hook::Connect4 => tuple4(ctx, sk, memo, load(&(*ctx).user_ip4), local_port, peer_port),
            Hook::Connect6 => {
                let mut peer = load_ip6(&(*ctx).user_ip6);
                let bound = load_ip6(&(*sk).src_ip6);
                // `::` connects to the host itself: to ::1, or to 127.0.0.1 for a socket bound
                // to a v4-mapped address (the kernel rewrites the sockaddr).
                if peer == [0; 4] {
                    peer = if is_v4_mapped(&bound) {
                        [0, 0, V4_MAPPED_WORD, LOOPBACK4]
                    } else {
                        LOOPBACK6
                    };
                }
                // A v4-mapped peer: the datagrams are IPv4, so the holder may be an AF_INET
                // socket as well as a mapped AF_INET6 one; an IPv4 lookup finds both.
                if is_v4_mapped(&peer) {
                    return tuple4(ctx, sk, memo, peer[3], local_port, peer_port);
                }
                // A group is not a peer that sends: nobody starves.
                if is_multicast6(&peer) || is_multicast6(&bound) {
                    return Err(Counter::Multicast);
                }
                // Bound to a v4-mapped address, connecting to an IPv6 peer: the kernel refuses.
                if is_v4_mapped(&bound) {
                    return Err(Counter::FamilyMismatch);
                }
                let mut local = bound;
                // Bound to `::`: the kernel picks the source after this hook, from the routes.
                if local == [0; 4] {
                    wildcard_predictable(sk)?;
                    // A link-local peer's source depends on its scope, which the hook cannot read.
                    if is_link_local6(&peer) {
                        return Err(Counter::WildcardUnmodeled);
                    }
                    // ::1 is answered from ::1 (the same address is always preferred).
                    local = if peer == LOOPBACK6 {
                        LOOPBACK6
                    } else {
                        routes::source6(memo, &peer)?
                    };
                }
                Ok(Tuple {
                    v6: true,
                    local,
                    peer,
                    local_port,
                    peer_port,
                })
            }
        }
    }
}

/// The IPv4 4-tuple after a connect to `peer` (from an AF_INET socket, or a v4-mapped one).
#[inline(always)]
unsafe fn tuple4(
    ctx: *mut bpf_sock_addr,
    sk: *mut bpf_sock,
    memo: &mut Memo,
    peer: u32,
    local_port: u16,
    peer_port: u16,
) -> Result<Tuple, Counter> {
    // SAFETY: as in `decide`.
    unsafe {
        let bound = bound_ip4(ctx, sk)?;
        let (local, peer) = if peer == 0 {
            // 0.0.0.0 connects to the host itself: to the bound address, or, bound to
            // 0.0.0.0, from 127.0.0.1 to 127.0.0.1.
            if bound != 0 {
                (bound, bound)
            } else {
                (LOOPBACK4, LOOPBACK4)
            }
        } else {
            // A group or the broadcast address is not a peer that sends: nobody starves.
            if is_multicast4(peer) {
                return Err(Counter::Multicast);
            }
            let local = if bound == 0 {
                // Bound to 0.0.0.0 (or `::`): the kernel picks the source after this hook,
                // from the routes, as the agent's mirror predicts.
                wildcard_predictable(sk)?;
                routes::source4(memo, peer)?
            } else {
                bound
            };
            (local, peer)
        };
        // Bound to a group: datagrams to it reach every member.
        if is_multicast4(local) {
            return Err(Counter::Multicast);
        }
        Ok(Tuple::v4(local, peer, local_port, peer_port))
    }
}

/// The IPv4 address the socket is bound to (0 for the wildcard), for a connect to an IPv4 peer.
#[inline(always)]
unsafe fn bound_ip4(ctx: *mut bpf_sock_addr, sk: *mut bpf_sock) -> Result<u32, Counter> {
    // SAFETY: as in `decide`.
    unsafe {
        if load(&(*ctx).family) == AF_INET {
            return Ok(load(&(*sk).src_ip4));
        }
        // An AF_INET6 socket: `src_ip4` holds a placeholder unless the bound address is
        // v4-mapped, so read the IPv6 address it was bound to.
        let local6 = load_ip6(&(*sk).src_ip6);
        if local6 != [0; 4] && !is_v4_mapped(&local6) {
            // Bound to a native IPv6 address: the kernel refuses an IPv4 peer.
            return Err(Counter::FamilyMismatch);
        }
        Ok(local6[3])
    }
}

/// The device the socket will be bound to after the connect: its own, or, for a link-local
/// IPv6 peer, the peer's scope (which the kernel binds it to, and the hook cannot read).
#[inline(always)]
unsafe fn device_after_connect(sk: *mut bpf_sock, tuple: &Tuple) -> u32 {
    // SAFETY: as in `decide`.
    let bound = unsafe { load(&(*sk).bound_dev_if) };
    if bound != 0 {
        return bound;
    }
    if tuple.v6 && is_link_local6(&tuple.peer) {
        DEVICE_UNKNOWN
    } else {
        0
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

/// What a connect's rules may need more than once from a helper (the namespace, the socket's
/// cookie, the time), each asked for at most once: a helper call costs ~30 ns on kernels with
/// return-thunk mitigations, and the compiler cannot merge two calls. 0 means not asked yet
/// (no cookie, namespace cookie or `CLOCK_MONOTONIC` reading is 0).
pub(crate) struct Memo {
    ctx: *mut bpf_sock_addr,
    netns: u64,
    cookie: u64,
    now: u64,
}

impl Memo {
    #[inline(always)]
    fn new(ctx: *mut bpf_sock_addr) -> Memo {
        Memo {
            ctx,
            netns: 0,
            cookie: 0,
            now: 0,
        }
    }

    /// The network namespace's cookie.
    #[inline(always)]
    pub(crate) fn netns(&mut self) -> u64 {
        if self.netns == 0 {
            self.netns = netns_cookie(self.ctx);
        }
        self.netns
    }

    /// The connecting socket's cookie.
    #[inline(always)]
    pub(crate) fn cookie(&mut self) -> u64 {
        if self.cookie == 0 {
            // SAFETY: a plain helper call on the program's own context.
            self.cookie = unsafe { bpf_get_socket_cookie(self.ctx.cast()) };
        }
        self.cookie
    }

    /// `CLOCK_MONOTONIC` nanoseconds, read once per connect.
    #[inline(always)]
    pub(crate) fn now(&mut self) -> u64 {
        if self.now == 0 {
            // SAFETY: a plain helper call.
            self.now = unsafe { bpf_ktime_get_ns() };
        }
        self.now
    }
}

/// True when a watch program sits on an ancestor cgroup and wants the guard's connects marked.
#[inline(always)]
fn watched() -> bool {
    CONFIG
        .get(0)
        .is_some_and(|config| config.flags & flags::WATCHED != 0)
}

/// With `--autobind unique`, clears an auto-binding socket's SO_REUSEADDR and SO_REUSEPORT so
/// the kernel's auto-bind picks a port no other socket holds (the application reads 0 for them
/// afterwards). Returns the reason the connect is not checked.
#[inline(always)]
fn autobind(ctx: &SockAddrContext, memo: &mut Memo) -> Counter {
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let unique = config.autobind == autobind::UNIQUE;
    let mut shared = false;
    for option in [SO_REUSEADDR, SO_REUSEPORT] {
        let on = option_on(ctx.sock_addr, option);
        if on && unique {
            let mut value: i32 = 0;
            // SAFETY: the option value lives on our stack for the call.
            unsafe {
                bpf_setsockopt(
                    ctx.sock_addr.cast(),
                    SOL_SOCKET,
                    option,
                    (&raw mut value).cast(),
                    size_of::<i32>() as i32,
                )
            };
        }
        shared |= on;
    }
    if unique {
        return Counter::AutobindUnique;
    }
    // A reuse socket's auto-bound port may be shared: it holds a tuple the claims lack.
    if shared {
        fastpath::note_unindexed(memo.netns());
    }
    Counter::Autobind
}

/// The word of the socket's first bytes that holds its reuse options, and their bits there;
/// set by user space at load time from the kernel's BTF (read-only then). A mask of 0: unknown.
#[unsafe(no_mangle)]
static REUSE_WORD: u32 = 0;
#[unsafe(no_mangle)]
static REUSE_MASK: u32 = 0;

/// True when the socket may share its address and port: SO_REUSEADDR or SO_REUSEPORT is on.
/// Where the kernel's BTF placed the two bit fields, one copy of the socket's first bytes
/// reads both (what getsockopt answers is whether they are non-zero); else two getsockopt
/// calls, ~100 ns each.
#[inline(always)]
fn shares_port(ctx: *mut bpf_sock_addr) -> bool {
    // SAFETY: read-only globals; volatile so the compiler keeps the load-time values.
    let bits = unsafe {
        ReuseBits {
            word: ptr::read_volatile(&REUSE_WORD),
            mask: ptr::read_volatile(&REUSE_MASK),
        }
    };
    if bits.mask != 0 {
        // SAFETY: ctx->sk is a full socket; the copy is checked by the kernel
        // (bpf_probe_read_kernel) and the connect hook holds the socket's lock.
        let sk = unsafe { (*ctx).__bindgen_anon_1.sk };
        let read = unsafe {
            bpf_probe_read_kernel::<[u32; (REUSE_READ_BYTES / 4) as usize]>(sk.cast_const().cast())
        };
        // A failed copy reads as shared, which only ever makes the guard check more.
        return read.map_or(true, |words| bits.shared(&words));
    }
    option_on(ctx, SO_REUSEADDR) || option_on(ctx, SO_REUSEPORT)
}

/// True when a SOL_SOCKET boolean option is on (and readable: an error reads as on, which
/// only ever makes the guard check more).
#[inline(always)]
fn option_on(ctx: *mut bpf_sock_addr, option: i32) -> bool {
    let mut value: i32 = 0;
    // SAFETY: the option value lives on our stack for the call; the connect hook holds the
    // socket's lock, as bpf_getsockopt wants.
    let read = unsafe {
        bpf_getsockopt(
            ctx.cast(),
            SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            size_of::<i32>() as i32,
        )
    };
    read != 0 || value != 0
}

/// `bpf_sk_lookup_udp` with the tuple reversed (a datagram from the peer), current netns.
#[inline(always)]
unsafe fn lookup(ctx: *mut bpf_sock_addr, tuple: &Tuple) -> *mut bpf_sock {
    // SAFETY: `raw` lives across the call and the size names the variant that was written.
    unsafe {
        let mut raw: bpf_sock_tuple = core::mem::zeroed();
        let size = if tuple.v6 {
            raw.__bindgen_anon_1.ipv6 = TupleV6 {
                saddr: tuple.peer,
                daddr: tuple.local,
                sport: tuple.peer_port,
                dport: tuple.local_port,
            };
            size_of::<TupleV6>()
        } else {
            raw.__bindgen_anon_1.ipv4 = TupleV4 {
                saddr: tuple.peer[0],
                daddr: tuple.local[0],
                sport: tuple.peer_port,
                dport: tuple.local_port,
            };
            size_of::<TupleV4>()
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
        if load(&(*sk).dst_port) != tuple.peer_port {
            return false;
        }
        if tuple.v6 {
            load_ip6(&(*sk).dst_ip6) == tuple.peer
        } else {
            load(&(*sk).dst_ip4) == tuple.peer[0]
        }
    }
}

/// Refuse (enforce) or count and let through (audit); either way, tell user space.
#[inline(always)]
fn act_on_conflict<const SET_RETVAL: bool>(
    ctx: &SockAddrContext,
    tuple: &Tuple,
    memo: &mut Memo,
    why: u32,
) -> i32 {
    let config = CONFIG.get(0).copied().unwrap_or_default();
    if config.mode == mode::AUDIT {
        count(Counter::Audited);
        // The audited socket becomes a second holder, which the claims cannot index.
        fastpath::note_unindexed(memo.netns());
        report(ctx, tuple, memo, action::AUDITED, 0, why);
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
    report(ctx, tuple, memo, action::REJECTED, errno, why);
    REFUSE
}

/// Sends a conflict event; when the ring buffer is full the event is dropped and counted,
/// never waited for. Only conflicts get here: the common path pays nothing for events.
#[inline(always)]
fn report(
    ctx: &SockAddrContext,
    tuple: &Tuple,
    memo: &mut Memo,
    action: u32,
    errno: u32,
    why: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<ConflictEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let key = tuple.key(memo.netns());
    // SAFETY: plain helper calls on the program's own context; `sk` is a full socket.
    let event = unsafe {
        ConflictEvent {
            boot_ns: bpf_ktime_get_boot_ns(),
            pid_tgid: bpf_get_current_pid_tgid(),
            uid_gid: bpf_get_current_uid_gid(),
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
            sock_cookie: memo.cookie(),
            cause: why,
            device: load(&(*(*ctx.sock_addr).__bindgen_anon_1.sk).bound_dev_if),
        }
    };
    entry.write(event);
    entry.submit(0);
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
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

/// 224.0.0.0/4, or 255.255.255.255 (the first byte is the lowest in memory).
#[inline(always)]
fn is_multicast4(ip4: u32) -> bool {
    ip4 & 0xf0 == 0xe0 || ip4 == u32::MAX
}

/// ff00::/8.
#[inline(always)]
fn is_multicast6(ip6: &[u32; 4]) -> bool {
    ip6[0] & 0xff == 0xff
}

/// fe80::/10.
#[inline(always)]
fn is_link_local6(ip6: &[u32; 4]) -> bool {
    ip6[0] & 0xc0ff == 0x80fe
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
