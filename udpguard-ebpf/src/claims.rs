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
    ptr::{self, addr_of},
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::{LruHashMap, SkStorage},
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_storage_get},
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

/// Per-socket storage: when the socket was created, and the claim it holds. Freed with it.
#[btf_map]
static SOCKET_CLAIMS: SkStorage<SocketClaim> = SkStorage::new();

/// Whether the caller may go ahead.
pub enum Claimed {
    /// The tuple is the caller's now.
    Ours,
    /// The tuple is the caller's, taken over from a claim no connected socket backs.
    TakenOver,
    /// Another socket claimed the tuple first and may be connecting to it right now.
    Lost,
}

/// Claims `key` for the connecting socket. On success the socket's previous claim (if it held
/// another tuple) is released, since it is moving away from it.
#[inline(always)]
pub fn claim(ctx: &SockAddrContext, key: &ClaimKey) -> Claimed {
    // SAFETY: plain helper calls on the program's own context.
    let (me, now) = unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            bpf_ktime_get_ns(),
        )
    };
    // SAFETY: null or this socket's own storage, created if missing (zeroed).
    let mine = unsafe { SOCKET_CLAIMS.get_or_insert_ptr_mut(ctx, None) };
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
    } else {
        match CLAIMS.get_ptr_mut(key) {
            // SAFETY: a pointer into a live map value; `mine` is null or valid.
            Some(claim) => unsafe { contest(claim, me, now, created_ns(mine)) },
            // Released between our insert and this look (its socket closed): a racer is
            // re-inserting it now, or nobody is; refusing would be a guess.
            None => Claimed::TakenOver,
        }
    };
    if !matches!(claimed, Claimed::Lost) && !mine.is_null() {
        // SAFETY: this socket's own storage; only its own hooks write it.
        unsafe { remember(mine, key, me) };
    }
    claimed
}

/// When the socket was created, as `sock_create` recorded; 0 (older than any claim) when it
/// predates the attachment.
#[inline(always)]
unsafe fn created_ns(mine: *mut SocketClaim) -> u64 {
    // SAFETY: the caller passes null or valid storage.
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

/// Records the socket's claim in its storage, releasing the one it held before.
#[inline(always)]
unsafe fn remember(mine: *mut SocketClaim, key: &ClaimKey, me: u64) {
    // SAFETY: the caller passes this socket's own storage.
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

fn socket_claims() -> *mut c_void {
    addr_of!(SOCKET_CLAIMS).cast_mut().cast()
}

/// Stamps a new socket's birth time (`sk` is a cgroup/sock_create context).
#[inline(always)]
pub unsafe fn stamp_birth(sk: *mut c_void) {
    // SAFETY: `sk` is the new socket; storage is created zeroed.
    unsafe {
        let slot = bpf_sk_storage_get(
            socket_claims(),
            sk,
            ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
        .cast::<SocketClaim>();
        if !slot.is_null() {
            (*slot).created_ns = bpf_ktime_get_ns();
        }
    }
}

/// Releases the claim of a closing socket (`sk` is a cgroup/sock_release context) and marks
/// its slot empty (sock_release may not delete storage; it goes with the socket).
#[inline(always)]
pub unsafe fn release_socket(sk: *mut c_void) {
    // SAFETY: `sk` is the closing socket.
    unsafe {
        let slot =
            bpf_sk_storage_get(socket_claims(), sk, ptr::null_mut(), 0).cast::<SocketClaim>();
        if slot.is_null() || (*slot).key.family == 0 {
            return;
        }
        release(&(*slot).key, (*slot).owner);
        (*slot).key.family = 0;
    }
}
