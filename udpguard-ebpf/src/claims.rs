//! Claims close the race the kernel's lookup alone leaves open: two sockets connecting to the
//! same tuple at once both pass the lookup, because neither is hashed as connected until after
//! this hook. Before a connect goes ahead it claims its tuple in a table shared by all CPUs:
//! a slot is won with one compare-and-swap, so exactly one of two racers gets the claim, and no
//! program ever waits for another CPU (a VM's vCPU can be paused mid-write for milliseconds).
//!
//! A newcomer that finds another socket's claim and no holder in the lookup cannot tell a
//! racer still on its way to the hash from a claimant that has left without a hook running
//! (connect failed, or `connect(AF_UNSPEC)`). It decides by two facts:
//! - a claim older than `Config::fresh_jiffies` (10 ms) is stale, whatever its story: taken
//!   over;
//! - a fresh claim refuses only a socket born before it, as every racer's was. Births tick one
//!   clock (`ORDER`) and claims read it, so a socket created after the claim (a newcomer taking
//!   a tuple its holder just dropped) takes the claim over.
//!
//! Claims are released when their socket closes or connects elsewhere, so the common cases
//! never get here. Everything is an array (no hash-map update on any path: those cost
//! ~200 ns each), and the only clock read is `jiffies`, which the verifier inlines.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg, atomic_xadd, atomic_xchg},
    ptr::{self, null_mut},
};

use aya_ebpf::{
    btf_maps::Array,
    helpers::generated::{bpf_get_socket_cookie, bpf_jiffies64},
    macros::btf_map,
    programs::SockAddrContext,
};
use udpguard_common::{
    CLAIM_BUCKETS, CLAIM_WAYS, ClaimBucket, ClaimKey, ClaimSlot, SOCKET_PROBES, SOCKET_RECORDS,
    SocketRecord, claim_bucket,
};

use crate::{CONFIG, fastpath};

/// `BPF_F_MMAPABLE`: the agent seeds the table through a shared mapping, with the same steps.
const MMAPABLE: usize = 1 << 10;

#[btf_map]
static CLAIMS: Array<ClaimBucket, { CLAIM_BUCKETS as usize }, MMAPABLE> = Array::new();

/// UDP sockets by cookie (probing from `cookie % SOCKET_RECORDS`): their birth, and the claim
/// each holds. Written at `sock_create`, freed at `sock_release`. A socket without a record
/// (created before the attach, or no free place) counts as old and releases no claim on close,
/// which only ever makes the guard more careful.
#[btf_map]
static SOCKETS: Array<SocketRecord, { SOCKET_RECORDS as usize }> = Array::new();

/// The order clock: one tick per socket birth; a claim's order is the next tick.
#[btf_map]
static ORDER: Array<u64, 1> = Array::new();

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
    /// No claim could be recorded (the bucket is full of fresh claims): nobody else claims
    /// the tuple, but the claims will not know this socket holds it.
    Unrecorded,
}

/// A slot's `order` while it is being written (claimed, taken over or released): readers
/// treat it as a claim in progress.
const WRITING: u64 = 0;

/// What a bucket says of a tag: one of the kinds below, the way, and a copy of its slot. A
/// plain struct, every field set: an enum's unset payload can reach the verifier as an
/// uninitialized register.
struct Found {
    kind: u32,
    way: usize,
    slot: Snapshot,
}

/// A claim: a copy of one way's (its tag and its slot), or the caller's, about to be written.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    tag: u64,
    order: u64,
    since_jiffies: u64,
    owner: u64,
    netns_cookie: u64,
}

/// A claim of the tag (its slot a consistent copy, `order == WRITING` while being written).
const CLAIM: u32 = 1;
/// No claim; the way is free.
const FREE: u32 = 2;
/// No claim and no free way; the way holds a stale claim of another tuple.
const STALE: u32 = 3;
/// No claim and no room.
const FULL: u32 = 4;

/// Claims `key` for the connecting socket. `held` (the kernel's lookup) is asked only when a
/// claim is there already. On success the socket's previous claim (if it held another tuple)
/// is released, since it is moving away from it.
///
/// Lock-free: a slot is won with one compare-and-swap (its tag when free, its order when
/// taken over), and written with `order` last, so a reader sees a whole claim or one in
/// progress. Nothing ever waits for another CPU.
#[inline(always)]
pub fn claim(ctx: &SockAddrContext, key: &ClaimKey, held: impl Fn() -> bool) -> Claimed {
    // SAFETY: a plain helper call on the program's own context.
    let me = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let tag = key.tag();
    let place = claim_bucket(tag);
    let Some(bucket) = CLAIMS.get_ptr_mut(place) else {
        return Claimed::Unrecorded;
    };
    let record = record_of(me);
    let mine = Snapshot {
        tag,
        order: WRITING, // its place on the order clock is taken when it is written
        // SAFETY: `jiffies`, inlined by the verifier.
        since_jiffies: unsafe { bpf_jiffies64() },
        owner: me,
        netns_cookie: key.netns_cookie,
    };
    // Twice: a free way another CPU wins first is looked at again.
    for _ in 0..2 {
        // SAFETY: as above.
        let found = unsafe { find(bucket, tag, mine.since_jiffies) };
        let (way, seen) = (found.way, found.slot);
        let order = match found.kind {
            CLAIM if seen.order != WRITING && seen.owner == me => {
                return Claimed::Ours; // our own claim: a re-connect to the same tuple
            }
            CLAIM => return contest(bucket, way, &seen, &mine, record, place, &held),
            // SAFETY: as above.
            FREE => match unsafe { take_free(bucket, way, &mine) } {
                Some(order) => order,
                None => continue,
            },
            // SAFETY: as above.
            STALE => match unsafe { take_over(bucket, way, &seen, &mine) } {
                Some(order) => {
                    // A claim that may be a held tuple's is gone: its namespace's index is
                    // incomplete.
                    fastpath::note_unindexed(seen.netns_cookie);
                    order
                }
                None => continue,
            },
            _ => return Claimed::Unrecorded,
        };
        // SAFETY: as above; `way` is ours.
        unsafe {
            // A racer that saw another way free may hold the tag elsewhere: of two such, at
            // least one sees the other (each looks after its swap) and backs off.
            if claimed_elsewhere(bucket, way, tag) {
                free(bucket, way);
                return Claimed::Lost;
            }
            remember(record, place, way, order, me);
        }
        return Claimed::Ours;
    }
    Claimed::Unrecorded
}

/// Decides on another socket's claim `seen`, per the rules at the top of this file.
#[inline(always)]
fn contest(
    bucket: *mut ClaimBucket,
    way: usize,
    seen: &Snapshot,
    mine: &Snapshot,
    record: *mut SocketRecord,
    place: u32,
    held: &impl Fn() -> bool,
) -> Claimed {
    if held() {
        return Claimed::Held;
    }
    // Being written: a racer is claiming the tuple this instant.
    if seen.order == WRITING {
        return Claimed::Lost;
    }
    let is_fresh = fresh_at(mine.since_jiffies, seen.since_jiffies, fresh_jiffies());
    // SAFETY: `record` is null or this socket's own record.
    if is_fresh && unsafe { born(record) } < seen.order {
        return Claimed::Lost; // born before the claim: it may be racing its claimant
    }
    // Stale, or we are newer: take it over, unless another newcomer does first.
    // SAFETY: `bucket` points into the table.
    match unsafe { take_over(bucket, way, seen, mine) } {
        Some(order) => {
            // SAFETY: this socket's own record.
            unsafe { remember(record, place, way, order, mine.owner) };
            Claimed::TakenOver
        }
        None => Claimed::Lost,
    }
}

/// The claim of `tag` in the bucket, else room for one. The common cases (a claim, or a free
/// way) read the tag line alone.
#[inline(always)]
unsafe fn find(bucket: *mut ClaimBucket, tag: u64, now: u64) -> Found {
    let mut room = Found {
        kind: FULL,
        way: 0,
        slot: Snapshot::default(),
    };
    for way in 0..CLAIM_WAYS {
        // SAFETY: the caller passes a pointer into the table.
        let seen = unsafe { ptr::read_volatile(tag_at(bucket, way)) };
        if seen == tag {
            return Found {
                kind: CLAIM,
                way,
                // SAFETY: as above.
                slot: unsafe { snapshot(bucket, way) },
            };
        }
        if seen == 0 && room.kind == FULL {
            room.kind = FREE;
            room.way = way;
        }
    }
    if room.kind == FREE {
        return room;
    }
    // No claim and no free way: a stale claim of another tuple may make room.
    let fresh = fresh_jiffies();
    for way in 0..CLAIM_WAYS {
        // SAFETY: as above.
        let slot = unsafe { snapshot(bucket, way) };
        if slot.order != WRITING && !fresh_at(now, slot.since_jiffies, fresh) {
            return Found {
                kind: STALE,
                way,
                slot,
            };
        }
    }
    room
}

/// A way's tag (`way` masked in bounds, as the verifier wants to see).
#[inline(always)]
unsafe fn tag_at(bucket: *mut ClaimBucket, way: usize) -> *mut u64 {
    // SAFETY: the caller passes a pointer into the table.
    unsafe { &raw mut (*bucket).tags[way & (CLAIM_WAYS - 1)] }
}

/// A way's slot (`way` masked in bounds, as the verifier wants to see).
#[inline(always)]
unsafe fn slot_at(bucket: *mut ClaimBucket, way: usize) -> *mut ClaimSlot {
    // SAFETY: the caller passes a pointer into the table.
    unsafe { &raw mut (*bucket).slots[way & (CLAIM_WAYS - 1)] }
}

/// A consistent copy of a slot: `order` is read before and after the rest, and a slot that
/// changed meanwhile reads as being written.
#[inline(always)]
unsafe fn snapshot(bucket: *mut ClaimBucket, way: usize) -> Snapshot {
    // SAFETY: the caller passes a pointer into the table.
    unsafe {
        let (slot, tag) = (slot_at(bucket, way), tag_at(bucket, way));
        let order = ptr::read_volatile(&(*slot).order);
        let mut copy = Snapshot {
            tag: ptr::read_volatile(tag),
            order,
            since_jiffies: ptr::read_volatile(&(*slot).since_jiffies),
            owner: ptr::read_volatile(&(*slot).owner),
            netns_cookie: ptr::read_volatile(&(*slot).netns_cookie),
        };
        if ptr::read_volatile(&(*slot).order) != order || ptr::read_volatile(tag) != copy.tag {
            copy.order = WRITING;
        }
        copy
    }
}

/// Wins a free way for the caller's claim and writes it; its order, or None if another CPU
/// won the way.
#[inline(always)]
unsafe fn take_free(bucket: *mut ClaimBucket, way: usize, mine: &Snapshot) -> Option<u64> {
    // SAFETY: the caller passes a pointer into the table.
    unsafe {
        // A free way's order is WRITING already: readers see a claim in progress at once.
        if !atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(tag_at(bucket, way), 0, mine.tag).1 {
            return None;
        }
        Some(publish(slot_at(bucket, way), mine))
    }
}

/// Wins a claimed way by swapping its order for WRITING, if it still holds the claim `seen`,
/// and writes the caller's claim there.
#[inline(always)]
unsafe fn take_over(
    bucket: *mut ClaimBucket,
    way: usize,
    seen: &Snapshot,
    mine: &Snapshot,
) -> Option<u64> {
    // SAFETY: the caller passes a pointer into the table.
    unsafe {
        let slot = slot_at(bucket, way);
        let order = &raw mut (*slot).order;
        if !atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(order, seen.order, WRITING).1 {
            return None;
        }
        // Orders repeat when no socket was born between two claims: make sure it is the same
        // claim, else put it back.
        if ptr::read_volatile(tag_at(bucket, way)) != seen.tag
            || ptr::read_volatile(&(*slot).owner) != seen.owner
        {
            atomic_xchg::<u64, { SeqCst }>(order, seen.order);
            return None;
        }
        ptr::write_volatile(tag_at(bucket, way), mine.tag);
        Some(publish(slot, mine))
    }
}

/// Writes a won slot's claim, `order` last (a full barrier): the claim is whole from then on.
#[inline(always)]
unsafe fn publish(slot: *mut ClaimSlot, mine: &Snapshot) -> u64 {
    let order = next_order();
    // SAFETY: the caller won the slot.
    unsafe {
        ptr::write_volatile(&raw mut (*slot).since_jiffies, mine.since_jiffies);
        ptr::write_volatile(&raw mut (*slot).owner, mine.owner);
        ptr::write_volatile(&raw mut (*slot).netns_cookie, mine.netns_cookie);
        atomic_xchg::<u64, { SeqCst }>(&raw mut (*slot).order, order);
    }
    order
}

/// True when another way of the bucket holds `tag`.
#[inline(always)]
unsafe fn claimed_elsewhere(bucket: *mut ClaimBucket, mine: usize, tag: u64) -> bool {
    let mut found = false;
    for way in 0..CLAIM_WAYS {
        // SAFETY: the caller passes a pointer into the table.
        found |= way != mine && unsafe { ptr::read_volatile(&(*bucket).tags[way]) } == tag;
    }
    found
}

/// Frees a way the caller holds: order to WRITING first, so nobody reads a half-free claim.
#[inline(always)]
unsafe fn free(bucket: *mut ClaimBucket, way: usize) {
    // SAFETY: the caller passes a pointer into the table and holds the way.
    unsafe {
        let slot = slot_at(bucket, way);
        atomic_xchg::<u64, { SeqCst }>(&raw mut (*slot).order, WRITING);
        ptr::write_volatile(&raw mut (*slot).owner, 0);
        ptr::write_volatile(&raw mut (*slot).since_jiffies, 0);
        ptr::write_volatile(&raw mut (*slot).netns_cookie, 0);
        atomic_xchg::<u64, { SeqCst }>(tag_at(bucket, way), 0);
    }
}

/// Notes in the socket's record where its claim is, releasing the one it held before.
#[inline(always)]
unsafe fn remember(record: *mut SocketRecord, place: u32, way: usize, order: u64, me: u64) {
    if record.is_null() {
        return;
    }
    let claim = place as u64 * CLAIM_WAYS as u64 + way as u64 + 1;
    // SAFETY: the socket's own record; its connects and close are serialized by the kernel.
    unsafe {
        let (previous, previous_order) = ((*record).claim, (*record).claim_order);
        (*record).claim = claim;
        (*record).claim_order = order;
        if previous != 0 && previous != claim {
            release(previous, previous_order, me);
        }
    }
}

/// Frees a claim (`claim` as a record holds it), unless another socket has taken it over.
#[inline(always)]
fn release(claim: u64, order: u64, owner: u64) {
    let place = ((claim - 1) / CLAIM_WAYS as u64) as u32;
    let way = ((claim - 1) % CLAIM_WAYS as u64) as usize;
    let Some(bucket) = CLAIMS.get_ptr_mut(place) else {
        return;
    };
    // SAFETY: a pointer into the table; the swap of its order makes the way ours.
    unsafe {
        let slot = slot_at(bucket, way);
        let order_word = &raw mut (*slot).order;
        if !atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(order_word, order, WRITING).1 {
            return; // taken over: not ours to free
        }
        if ptr::read_volatile(&(*slot).owner) != owner {
            atomic_xchg::<u64, { SeqCst }>(order_word, order); // a later claim, same order
            return;
        }
        free(bucket, way);
    }
}

/// A birth: one tick of the order clock; returns the clock after it. (An atomic add without
/// fetch: the only kind the BPF CPU version these programs are built for has.)
#[inline(always)]
fn tick() -> u64 {
    match ORDER.get_ptr_mut(0) {
        // SAFETY: an aligned u64 in a map value.
        Some(clock) => unsafe {
            atomic_xadd::<u64, u64, { SeqCst }>(clock, 1);
            ptr::read_volatile(clock)
        },
        None => 0,
    }
}

/// A claim's order: the next tick, so a socket born before it is older and one born after it
/// is not (never `WRITING`; a seeded claim's order is 1 too, told apart by its owner 0).
#[inline(always)]
fn next_order() -> u64 {
    // SAFETY: an aligned u64 in a map value.
    ORDER
        .get_ptr(0)
        .map_or(0, |clock| unsafe { ptr::read_volatile(clock) })
        + 1
}

/// True when a claim made at `since` is fresh at `now`. Signed: `now` was read before the look
/// at the slot, so a claim made since (on another CPU, in a later tick) is ahead of it, and
/// fresh.
#[inline(always)]
fn fresh_at(now: u64, since: u64, fresh: u64) -> bool {
    (now.wrapping_sub(since) as i64) <= fresh as i64
}

#[inline(always)]
fn fresh_jiffies() -> u64 {
    match CONFIG.get(0) {
        Some(config) if config.fresh_jiffies != 0 => config.fresh_jiffies as u64,
        // Not configured: 10 ms at the lowest common tick rate (100 Hz), plus one tick.
        _ => 2,
    }
}

/// The socket's record, or null when it has none.
#[inline(always)]
fn record_of(cookie: u64) -> *mut SocketRecord {
    for probe in 0..SOCKET_PROBES {
        let index = (cookie as u32).wrapping_add(probe) & (SOCKET_RECORDS - 1);
        if let Some(record) = SOCKETS.get_ptr_mut(index) {
            // SAFETY: a pointer into the records array.
            if unsafe { ptr::read_volatile(&(*record).cookie) } == cookie {
                return record;
            }
        }
    }
    null_mut()
}

/// The socket's birth on the order clock; 0 (older than any claim) without a record.
#[inline(always)]
unsafe fn born(record: *mut SocketRecord) -> u64 {
    // SAFETY: the caller passes null or the socket's own record.
    if record.is_null() {
        0
    } else {
        unsafe { (*record).born }
    }
}

/// Records a new UDP socket and its birth (`ctx` is a cgroup/sock_create context).
#[inline(always)]
pub unsafe fn stamp_birth(ctx: *mut c_void) {
    // SAFETY: a plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let born = tick();
    for probe in 0..SOCKET_PROBES {
        let index = (cookie as u32).wrapping_add(probe) & (SOCKET_RECORDS - 1);
        let Some(record) = SOCKETS.get_ptr_mut(index) else {
            continue;
        };
        // SAFETY: a pointer into the records array; the swap makes the free place ours.
        unsafe {
            if atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(&raw mut (*record).cookie, 0, cookie).1 {
                (*record).born = born;
                (*record).claim = 0;
                (*record).claim_order = 0;
                return;
            }
        }
    }
    // No free place: the socket goes unrecorded, and counts as old.
}

/// Releases the claim of a closing socket and frees its record (`ctx` is a
/// cgroup/sock_release context).
#[inline(always)]
pub unsafe fn release_socket(ctx: *mut c_void) {
    // SAFETY: a plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let record = record_of(cookie);
    if record.is_null() {
        return;
    }
    // SAFETY: the socket's own record.
    unsafe {
        let claim = (*record).claim;
        if claim != 0 {
            release(claim, (*record).claim_order, cookie);
        }
        atomic_xchg::<u64, { SeqCst }>(&raw mut (*record).cookie, 0);
    }
}
