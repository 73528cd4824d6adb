//! Claims close the race the kernel's lookup alone leaves open: two sockets connecting to the
//! same tuple at once both pass the lookup, because neither is hashed as connected until after
//! this hook. Before a connect goes ahead it claims its tuple in a map shared by all CPUs
//! (`BPF_NOEXIST`: exactly one wins).
//!
//! A newcomer that finds another socket's claim and no holder in the lookup cannot tell a
//! racer still on its way to the hash from a claimant that has left without a hook running
//! (connect failed, or `connect(AF_UNSPEC)`). It decides by two facts:
//! - a claim older than [`FRESH_NS`] is stale, whatever its story: taken over;
//! - a fresh claim refuses only a socket that already existed when the claim was made, as
//!   every racer's did. A socket created after it (a newcomer taking a tuple its holder just
//!   dropped) takes the claim over.
//! Claims are released when their socket closes or connects elsewhere, so the common cases
//! never get here.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg},
    ptr,
};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    btf_maps::{HashMap, LruHashMap},
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::btf_map,
    programs::SockAddrContext,
};
use udpguard_common::{Claim, ClaimKey, SocketClaim};

/// How long a claim stays able to refuse: longer than a connect can take from this hook to the
/// hash even when its CPU is descheduled (a VM's vCPU can be paused for milliseconds).
const FRESH_NS: i64 = 10_000_000;

/// Capacity of the claim map: LRU, so it can never fill up and refuse to claim.
const CLAIMS_MAX: usize = 65536;

#[btf_map]
static CLAIMS: LruHashMap<ClaimKey, Claim, CLAIMS_MAX> = LruHashMap::new();

/// Sockets the claims know, by cookie: when each was created, and the claim it holds. Added
/// by `sock_create`, removed by `sock_release`. A preallocated hash, not socket-local storage:
/// allocating that costs about a microsecond per socket, this a few map operations. A socket
/// missing here (created before the attach, or the map full) counts as old and releases no
/// claim on close, which only ever makes the guard more careful.
#[btf_map]
static SOCKETS: HashMap<u64, SocketClaim, SOCKETS_MAX> = HashMap::new();

/// UDP sockets alive in the cgroup that the claims can keep records for.
const SOCKETS_MAX: usize = 65536;

/// Whether the caller may go ahead.
pub enum Claimed {
    /// The tuple is the caller's now.
    Ours,
    /// The tuple is the caller's, taken over from a claim no connected socket backs.
    TakenOver,
    /// Another socket claimed the tuple first and may be connecting to it right now.
    Lost,
    /// A claim was there and the kernel's lookup found its ESTABLISHED holder.
    Held,
}

/// Claims `key` for the connecting socket. `held` (the kernel's lookup) is asked only when a
/// claim is there already. On success the socket's previous claim (if it held another tuple)
/// is released, since it is moving away from it.
#[inline(always)]
pub fn claim(ctx: &SockAddrContext, key: &ClaimKey, held: impl Fn() -> bool) -> Claimed {
    // SAFETY: plain helper calls on the program's own context.
    let (me, now) = unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            bpf_ktime_get_ns(),
        )
    };
    let mine = SOCKETS.get_ptr_mut(me).unwrap_or(ptr::null_mut());
    let claimed = if CLAIMS
        .insert(
            key,
            Claim {
                owner: me,
                since_ns: now,
            },
            BPF_NOEXIST.into(),
        )
        .is_ok()
    {
        Claimed::Ours
    } else if held() {
        Claimed::Held
    } else {
        match CLAIMS.get_ptr_mut(key) {
            // SAFETY: a pointer into a live map value; `mine` is null or valid.
            Some(claim) => unsafe { contest(claim, me, now, created_ns(mine)) },
            // Released between our insert and this look (its socket closed): a racer is
            // re-inserting it now, or nobody is; refusing would be a guess.
            None => Claimed::TakenOver,
        }
    };
    if matches!(claimed, Claimed::Ours | Claimed::TakenOver) && !mine.is_null() {
        // SAFETY: this socket's own record; only its own hooks write it.
        unsafe { remember(mine, key, me) };
    }
    claimed
}

/// When the socket was created, as `sock_create` recorded; 0 (older than any claim) when it
/// has no record.
#[inline(always)]
unsafe fn created_ns(mine: *mut SocketClaim) -> u64 {
    // SAFETY: the caller passes null or a valid record.
    if mine.is_null() {
        0
    } else {
        unsafe { (*mine).created_ns }
    }
}

/// Decides on another socket's claim, per the rules at the top of this file.
#[inline(always)]
unsafe fn contest(claim: *mut Claim, me: u64, now: u64, my_birth: u64) -> Claimed {
    // SAFETY: the caller passes a valid pointer into a map value, 8-byte aligned.
    unsafe {
        if ptr::read_volatile(&(*claim).owner) == me {
            return Claimed::Ours; // our own claim: a re-connect to the same tuple
        }
        let since = &raw mut (*claim).since_ns;
        let seen = ptr::read_volatile(since);
        // Signed: another CPU's clock reading may be later than ours.
        let fresh = (now as i64).wrapping_sub(seen as i64) < FRESH_NS;
        if fresh && (my_birth as i64).wrapping_sub(seen as i64) <= 0 {
            return Claimed::Lost;
        }
        // Two newcomers taking over the same claim: the swap lets exactly one have it.
        let (_, swapped) =
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                since, seen, now,
            );
        if !swapped {
            return Claimed::Lost;
        }
        ptr::write_volatile(&mut (*claim).owner, me);
        Claimed::TakenOver
    }
}

/// Records the socket's claim in its record, releasing the one it held before.
#[inline(always)]
unsafe fn remember(mine: *mut SocketClaim, key: &ClaimKey, me: u64) {
    // SAFETY: the caller passes this socket's own record.
    unsafe {
        let previous = (*mine).key;
        if previous.family != 0 && previous != *key {
            release(&previous, me);
        }
        (*mine).key = *key;
        (*mine).owner = me;
    }
}

/// Drops a socket's claim, unless another socket has taken it over since.
#[inline(always)]
fn release(key: &ClaimKey, owner: u64) {
    if let Some(claim) = CLAIMS.get_ptr(key) {
        // SAFETY: a pointer into a live map value.
        if unsafe { ptr::read_volatile(&(*claim).owner) } == owner {
            let _ = CLAIMS.remove(key);
        }
    }
}

/// Records a new UDP socket and its birth time (`ctx` is a cgroup/sock_create context).
#[inline(always)]
pub unsafe fn stamp_birth(ctx: *mut c_void) {
    // SAFETY: plain helper calls on the program's own context.
    let (cookie, now) = unsafe { (bpf_get_socket_cookie(ctx), bpf_ktime_get_ns()) };
    let record = SocketClaim {
        created_ns: now,
        ..SocketClaim::default()
    };
    // Full: the socket goes unrecorded, and counts as old.
    let _ = SOCKETS.insert(cookie, record, BPF_ANY.into());
}

/// Releases the claim of a closing socket and forgets it (`ctx` is a cgroup/sock_release
/// context).
#[inline(always)]
pub unsafe fn release_socket(ctx: *mut c_void) {
    // SAFETY: a plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let Some(record) = SOCKETS.get_ptr(cookie) else {
        return;
    };
    // SAFETY: a pointer into a live map value, copied out at once.
    let held = unsafe { *record };
    if held.key.family != 0 {
        release(&held.key, held.owner);
    }
    let _ = SOCKETS.remove(cookie);
}
