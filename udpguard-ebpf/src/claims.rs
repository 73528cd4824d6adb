//! Claims close the race the kernel's lookup alone leaves open: two sockets connecting to the
//! same tuple at once both pass the lookup, because neither is hashed as connected until after
//! this hook. Before a connect goes ahead it claims its tuple in a map shared by all CPUs.
//!
//! A claim is a hint and the lookup is the truth. A newcomer that finds another socket's fresh
//! claim does not refuse on it: it repeats the lookup until the claimant shows up as the
//! ESTABLISHED holder (a real conflict) or has had [`SETTLE_NS`] to get there (then the claim
//! is stale: its connect failed, or it disconnected, which runs no hook). So a claim can delay
//! a connect by at most [`SETTLE_NS`] and never refuses one on its own. Claims are released
//! when their socket closes or connects elsewhere, so the common cases never wait.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg},
    ptr::{self, addr_of},
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    btf_maps::{LruHashMap, SkStorage},
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_storage_get},
    macros::btf_map,
    programs::SockAddrContext,
};
use udpguard_common::{Claim, ClaimKey, SocketClaim};

/// How long a claimant may take from its hook to being hashed as connected. It takes
/// microseconds; past this, its claim is stale.
const SETTLE_NS: i64 = 100_000;

/// Lookups a newcomer makes while a claimant settles (a bounded loop for the verifier).
const SETTLE_LOOKUPS: u32 = 256;

/// Capacity of the claim map: LRU, so it can never fill up and refuse to claim.
const CLAIMS_MAX: usize = 65536;

#[btf_map]
static CLAIMS: LruHashMap<ClaimKey, Claim, CLAIMS_MAX> = LruHashMap::new();

/// Per-socket storage: the claim the socket holds. Freed with the socket.
#[btf_map]
static SOCKET_CLAIMS: SkStorage<SocketClaim> = SkStorage::new();

/// Whether the caller may go ahead.
pub enum Claimed {
    /// The tuple is the caller's now.
    Ours,
    /// A racing socket's connect to the tuple went through first.
    Lost,
}

/// Claims `key` for the connecting socket. `holder_appeared` repeats the kernel's lookup: true
/// when another socket now holds the tuple ESTABLISHED. On success the socket's previous claim
/// (if it held another tuple) is released, since it is moving away from it.
#[inline(always)]
pub fn claim(ctx: &SockAddrContext, key: &ClaimKey, holder_appeared: impl Fn() -> bool) -> Claimed {
    // SAFETY: a plain helper call on the program's own context.
    let me = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if !insert(key, me) && !settle(key, me, holder_appeared) {
        return Claimed::Lost;
    }
    remember(ctx, key, me);
    Claimed::Ours
}

/// Puts a new claim in the map; false when one is there already.
#[inline(always)]
fn insert(key: &ClaimKey, me: u64) -> bool {
    // SAFETY: a plain helper call.
    let since_ns = unsafe { bpf_ktime_get_ns() };
    let claim = Claim {
        owner: me,
        since_ns,
    };
    CLAIMS.insert(key, claim, BPF_NOEXIST.into()).is_ok()
}

/// Waits out another socket's claim: false as soon as the lookup shows a holder; true once the
/// claim is ours (already, gone, or taken over when stale).
#[inline(always)]
fn settle(key: &ClaimKey, me: u64, holder_appeared: impl Fn() -> bool) -> bool {
    for _ in 0..SETTLE_LOOKUPS {
        let Some(claim) = CLAIMS.get_ptr_mut(key) else {
            // Released meanwhile (its socket closed or moved on): claim it afresh.
            if insert(key, me) {
                return true;
            }
            continue;
        };
        // SAFETY: a pointer into a live map value.
        match unsafe { take_if_stale(claim, me) } {
            Some(taken) if taken => return true,
            Some(_) => {}
            None => {
                if holder_appeared() {
                    return false;
                }
            }
        }
    }
    // The claimant has had every lookup and still is not hashed: let the lookup's answer stand.
    true
}

/// `Some(true)` when the claim is (now) ours, `Some(false)` when a racer took it over just
/// now, `None` while its owner may still be connecting.
#[inline(always)]
unsafe fn take_if_stale(claim: *mut Claim, me: u64) -> Option<bool> {
    // SAFETY: the caller passes a valid pointer into a map value, 8-byte aligned.
    unsafe {
        if ptr::read_volatile(&(*claim).owner) == me {
            return Some(true);
        }
        let since = &raw mut (*claim).since_ns;
        let seen = ptr::read_volatile(since);
        let now = bpf_ktime_get_ns();
        // Signed: another CPU's clock reading may be later than ours.
        if (now as i64).wrapping_sub(seen as i64) < SETTLE_NS {
            return None;
        }
        // Two newcomers finding the same stale claim: the swap lets exactly one take it.
        let (_, swapped) =
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                since, seen, now,
            );
        if swapped {
            ptr::write_volatile(&mut (*claim).owner, me);
        }
        Some(swapped)
    }
}

/// Records the socket's claim in its storage, releasing the one it held before.
#[inline(always)]
fn remember(ctx: &SockAddrContext, key: &ClaimKey, me: u64) {
    // SAFETY: the helper returns null or a pointer to this socket's storage.
    let slot = unsafe { SOCKET_CLAIMS.get_or_insert_ptr_mut(ctx, None) };
    if slot.is_null() {
        return;
    }
    // SAFETY: non-null storage of this socket; only this socket's hooks write it.
    unsafe {
        let previous = *slot;
        if previous.key.family != 0 && previous.key != *key {
            release(&previous);
        }
        *slot = SocketClaim {
            key: *key,
            owner: me,
        };
    }
}

/// Drops a socket's claim, unless another socket has taken it over since.
#[inline(always)]
fn release(held: &SocketClaim) {
    if let Some(claim) = CLAIMS.get_ptr(held.key) {
        // SAFETY: a pointer into a live map value.
        if unsafe { ptr::read_volatile(&(*claim).owner) } == held.owner {
            let _ = CLAIMS.remove(held.key);
        }
    }
}

/// Releases the claim of `sk` (a `struct bpf_sock` context or a BTF `struct sock`), if any,
/// and marks its slot empty (sock_release may not delete storage; it goes with the socket).
#[inline(always)]
pub unsafe fn release_socket(sk: *mut c_void) {
    let map = addr_of!(SOCKET_CLAIMS).cast_mut().cast();
    // SAFETY: `sk` is a socket the verifier accepts for socket storage.
    unsafe {
        let slot = bpf_sk_storage_get(map, sk, ptr::null_mut(), 0).cast::<SocketClaim>();
        if slot.is_null() {
            return;
        }
        let held = *slot;
        if held.key.family != 0 {
            release(&held);
            (*slot).key.family = 0;
        }
    }
}
