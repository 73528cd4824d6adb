//! The claim table and the socket records in the kernel (their layout and the rules are in
//! `udpguard_common::claims` and `::records`). Before a connect goes ahead it claims its tuple;
//! a way is won with one compare-and-swap and written with `order` last, so a reader sees a
//! whole claim or one in progress, and no program ever waits for another CPU (a VM's vCPU can
//! be paused mid-write for milliseconds).
//!
//! Claims are released when their socket closes (`sock_release`, through its record) or
//! connects elsewhere, so the common cases never meet another socket's claim. Everything is an
//! array sized at load time: no hash-map update on any path (those cost ~200 ns each), and no
//! number of sockets makes a legitimate connect fail: a claim or a record that finds no room
//! is counted (`unrecorded`) and only the race protection of that connect is lost.
//!
//! Buckets are passed around with their index: the verifier refuses arithmetic and
//! comparisons on map-value pointers to programs without extra privileges.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg, atomic_xadd, atomic_xchg},
    ptr::{self, null_mut},
};

use aya_ebpf::{
    btf_maps::Array,
    helpers::generated::{bpf_get_socket_cookie, bpf_jiffies64, bpf_ktime_get_ns},
    macros::btf_map,
};
use udpguard_common::{
    BIRTH_SLOTS, Birth, CLAIM_CLOCK, CLAIM_WAYS, ClaimBucket, ClaimKey, ClaimSlot, SEEDED_ORDER,
    SocketRecord, birth_slot,
    claims::{
        Claimant, Contest, DISOWNED, WRITING, claim_flags, claim_ref, contest, primary_bucket,
        spill_bucket, way_of_ref,
    },
    records::{RECORD_PROBES, reclaimable, record_flags},
    time::{FRESH_NS, fresh_at},
};

use crate::{Memo, fastpath, opaque};

/// The agent seeds the table through a shared mapping, with the same steps.
const MMAPABLE: usize = aya_ebpf::bindings::BPF_F_MMAPABLE as usize;

/// The claim table. Its size here is a placeholder: user space sets it at load time, and
/// [`CLAIM_MASK`] with it.
#[btf_map]
static CLAIMS: Array<ClaimBucket, 1, MMAPABLE> = Array::new();

/// Socket records by cookie (placeholder size, set at load time with [`RECORD_MASK`]).
#[btf_map]
static RECORDS: Array<SocketRecord, 1> = Array::new();

/// Births of the sockets created lately, direct-mapped by cookie, and after them the claim
/// clock (see `udpguard_common::records`).
#[btf_map]
static BIRTHS: Array<Birth, { BIRTH_SLOTS as usize + 1 }> = Array::new();

/// Buckets in `CLAIMS` less one; set by user space at load time (read-only then).
#[unsafe(no_mangle)]
static CLAIM_MASK: u32 = 0;
/// Places in `RECORDS` less one; set by user space at load time (read-only then).
#[unsafe(no_mangle)]
static RECORD_MASK: u32 = 0;

#[inline(always)]
fn claim_mask() -> u32 {
    // SAFETY: a read-only global; volatile so the compiler keeps the load-time value.
    unsafe { ptr::read_volatile(&CLAIM_MASK) }
}

#[inline(always)]
fn record_mask() -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(&RECORD_MASK) }
}

/// Whether the caller may go ahead.
pub enum Claimed {
    /// The tuple is the caller's now; `recorded` unless its close cannot release the claim.
    Ours { recorded: bool },
    /// The tuple is the caller's, taken over from a claim no connected socket backs;
    /// `blind` when that claim was a device-bound socket's whose holder cannot be ruled out.
    TakenOver { blind: bool },
    /// Another socket claimed the tuple first and may be connecting to it right now.
    Lost,
    /// A claim was there and the kernel's lookup found its ESTABLISHED holder.
    Held,
    /// A device-bound socket's claim stands for its holder (the lookup cannot see it).
    HeldByDevice,
    /// A claim of another device's socket: no conflict, and no claim of the caller's; `blind`
    /// when the devices could not be told apart (not checked).
    Coexist { blind: bool },
    /// No claim could be recorded: nobody else claims the tuple, but the claims will not know
    /// this socket holds it.
    Unrecorded,
}

/// A bucket of the table and its index.
#[derive(Clone, Copy)]
struct Bucket {
    ptr: *mut ClaimBucket,
    index: u32,
}

impl Bucket {
    #[inline(always)]
    fn at(index: u32) -> Option<Bucket> {
        Some(Bucket {
            ptr: CLAIMS.get_ptr_mut(index)?,
            index,
        })
    }

    /// A way's tag (`way` masked in bounds, as the verifier wants to see; no Rust bounds
    /// check, whose panic would be a loop the verifier refuses).
    #[inline(always)]
    fn tag(self, way: usize) -> *mut u64 {
        // SAFETY: `ptr` points into the table; the offset stays inside the bucket.
        unsafe { (&raw mut (*self.ptr).tags).cast::<u64>().add(way & 7) }
    }

    /// A way's slot (as above).
    #[inline(always)]
    fn slot(self, way: usize) -> *mut ClaimSlot {
        // SAFETY: as above (way 7 would be the bucket's padding, never used).
        unsafe {
            (&raw mut (*self.ptr).slots)
                .cast::<ClaimSlot>()
                .add(way & 7)
        }
    }

    #[inline(always)]
    fn spilled(self) -> *mut u64 {
        // SAFETY: `ptr` points into the table.
        unsafe { &raw mut (*self.ptr).spilled }
    }
}

/// What a bucket says of a tag: one of the kinds below, where, and a copy of its way. A plain
/// struct, every field set: an enum's unset payload can reach the verifier as an uninitialized
/// register.
#[derive(Clone, Copy)]
struct Found {
    kind: u32,
    bucket: Bucket,
    way: usize,
    copy: Snapshot,
}

/// A consistent copy of one way (its tag and its slot).
#[derive(Clone, Copy, Default)]
struct Snapshot {
    tag: u64,
    slot: ClaimSlot,
}

/// A claim of the tag (its slot a consistent copy, `order == WRITING` while being written).
const CLAIM: u32 = 1;
/// No claim; the way is free.
const FREE: u32 = 2;
/// No claim and no free way; the way holds a stale claim of another tuple.
const STALE: u32 = 3;
/// Nothing found.
const NONE: u32 = 4;

impl Found {
    #[inline(always)]
    fn none(bucket: Bucket) -> Found {
        Found {
            kind: NONE,
            bucket,
            way: 0,
            copy: Snapshot::default(),
        }
    }
}

/// Claims `key` for the connecting socket, bound to `device` (see `ClaimSlot::device`).
/// `held` (the kernel's lookup) is asked only when a claim is there already. On success the
/// socket's previous claim (if it held another tuple) is let go: it is moving away from it.
/// Where the claims index the namespace (`indexed`) that claim is kept, unowned and old, in
/// case the connect fails after this hook and the socket stays where it was: it refuses nobody
/// by itself, and the agent's sweep removes it once no socket holds its tuple.
#[inline(always)]
pub fn claim(
    memo: &mut Memo,
    key: &ClaimKey,
    device: u32,
    indexed: bool,
    held: impl FnOnce() -> bool,
) -> Claimed {
    // The claim's time is read here, not earlier in the connect: a socket born after it is
    // taken for a newcomer, so it must not be older than the moment the claim is made.
    // SAFETY: a plain helper call.
    let (me, now) = (memo.cookie(), unsafe { bpf_ktime_get_ns() });
    // Published before the claim can be seen: a socket created after this is a newcomer.
    publish_claim_clock(now);
    let tag = key.tag();
    let mask = claim_mask();
    let (Some(primary), Some(spill)) = (
        Bucket::at(primary_bucket(tag, mask)),
        Bucket::at(spill_bucket(tag, mask)),
    ) else {
        return Claimed::Unrecorded;
    };
    // A socket's record is made at its first claim, so its close releases what it claims.
    let mut record = record_of(me);
    if record.is_null() {
        record = make_record(me, now);
    }
    let recorded = !record.is_null();
    let mine = ClaimSlot {
        order: WRITING, // its identity (the claim time) is written last
        owner: me,
        netns_cookie: key.netns_cookie,
        device,
        flags: if recorded { claim_flags::RECORDED } else { 0 },
    };

    let found = find(primary, spill, tag);
    if found.kind == CLAIM {
        let seen = found.copy.slot;
        if seen.order != WRITING && seen.owner == me {
            return Claimed::Ours { recorded }; // its own claim: a re-connect to the same tuple
        }
        let claimant = Claimant {
            born: born_of(me),
            device,
            now,
        };
        return match contest(&seen, &claimant, FRESH_NS, held) {
            Contest::Held => Claimed::Held,
            Contest::HeldByDevice => Claimed::HeldByDevice,
            Contest::Lost => Claimed::Lost,
            Contest::Coexist { blind } => {
                fastpath::note_unindexed(key.netns_cookie);
                Claimed::Coexist { blind }
            }
            Contest::TakeOver { blind } => {
                match take_over(found.bucket, found.way, &found.copy, tag, &mine, now) {
                    Some(order) => {
                        remember(record, found.bucket, found.way, order, &mine, indexed);
                        Claimed::TakenOver { blind }
                    }
                    None => Claimed::Lost, // another newcomer took it first
                }
            }
        };
    }

    // No claim of the tuple: win room for one. Twice: a way another CPU wins first is looked
    // at again.
    for _ in 0..2 {
        let room = room(primary, spill, now);
        let order = match room.kind {
            FREE => take_free(room.bucket, room.way, tag, &mine, primary, now),
            STALE => {
                let won = take_over(room.bucket, room.way, &room.copy, tag, &mine, now);
                if won.is_some() {
                    // A claim that may be a held tuple's is gone: its namespace's index is
                    // incomplete.
                    fastpath::note_unindexed(room.copy.slot.netns_cookie);
                    crate::count(udpguard_common::Counter::Evicted);
                }
                won
            }
            _ => break,
        };
        let Some(order) = order else {
            // Lost the way to a racer of the same tuple: its claim stands there now. Taking
            // the next free way instead would make two claims that each see the other.
            // SAFETY: a pointer into the table.
            if unsafe { ptr::read_volatile(room.bucket.tag(room.way)) } == tag {
                return Claimed::Lost;
            }
            continue;
        };
        // A racer that saw another way free may hold the tag elsewhere. Of two such claims
        // the one at the lower place (the primary bucket before the spill, then the lower
        // way) stands: the other backs off when it sees it. The later of two swaps always sees
        // the earlier, and the earlier takes the lower free way, so neither both stand nor
        // both back off, unless a way below was freed between their two looks (then both
        // stand: a duplicate, never a refusal of every racer).
        if claimed_below(primary, room.bucket, room.way, tag) {
            free(room.bucket, room.way);
            return Claimed::Lost;
        }
        remember(record, room.bucket, room.way, order, &mine, indexed);
        return Claimed::Ours { recorded };
    }
    fastpath::note_unindexed(key.netns_cookie);
    Claimed::Unrecorded
}

/// The claim of `tag` in its primary bucket, or in its spill bucket when the primary has
/// spilled. The common case reads the primary's first cache line alone.
#[inline(always)]
fn find(primary: Bucket, spill: Bucket, tag: u64) -> Found {
    let found = find_in(primary, tag);
    // SAFETY: a pointer into the table.
    if found.kind == CLAIM || unsafe { ptr::read_volatile(primary.spilled()) } == 0 {
        return found;
    }
    find_in(spill, tag)
}

#[inline(always)]
fn find_in(bucket: Bucket, tag: u64) -> Found {
    for way in 0..CLAIM_WAYS {
        // SAFETY: a pointer into the table.
        if unsafe { ptr::read_volatile(bucket.tag(way)) } == tag {
            return Found {
                kind: CLAIM,
                bucket,
                way: opaque::way(way),
                copy: snapshot(bucket, way),
            };
        }
    }
    Found::none(bucket)
}

/// Room for a new claim: a free way of the primary, else of the spill bucket, else a stale
/// claim of another tuple (primary first), else none.
#[inline(always)]
fn room(primary: Bucket, spill: Bucket, now: u64) -> Found {
    let free = free_way(primary);
    if free.kind == FREE {
        return free;
    }
    let free = free_way(spill);
    if free.kind == FREE {
        return free;
    }
    let stale = stale_way(primary, now);
    if stale.kind == STALE {
        return stale;
    }
    stale_way(spill, now)
}

#[inline(always)]
fn free_way(bucket: Bucket) -> Found {
    for way in 0..CLAIM_WAYS {
        // SAFETY: a pointer into the table.
        if unsafe { ptr::read_volatile(bucket.tag(way)) } == 0 {
            return Found {
                kind: FREE,
                ..Found::none(bucket)
            }
            .at(opaque::way(way));
        }
    }
    Found::none(bucket)
}

#[inline(always)]
fn stale_way(bucket: Bucket, now: u64) -> Found {
    for way in 0..CLAIM_WAYS {
        let copy = snapshot(bucket, way);
        if copy.tag != 0 && copy.slot.order != WRITING && !fresh_at(now, copy.slot.order, FRESH_NS)
        {
            return Found {
                kind: STALE,
                bucket,
                way: opaque::way(way),
                copy,
            };
        }
    }
    Found::none(bucket)
}

impl Found {
    #[inline(always)]
    fn at(self, way: usize) -> Found {
        Found { way, ..self }
    }
}

/// A consistent copy of a way: `order` is read before and after the rest, and a way that
/// changed meanwhile reads as being written.
#[inline(always)]
fn snapshot(bucket: Bucket, way: usize) -> Snapshot {
    let (slot, tag) = (bucket.slot(way), bucket.tag(way));
    // SAFETY: pointers into the table.
    unsafe {
        let order = ptr::read_volatile(&(*slot).order);
        let mut copy = Snapshot {
            tag: ptr::read_volatile(tag),
            slot: ClaimSlot {
                order,
                owner: ptr::read_volatile(&(*slot).owner),
                netns_cookie: ptr::read_volatile(&(*slot).netns_cookie),
                device: ptr::read_volatile(&(*slot).device),
                flags: ptr::read_volatile(&(*slot).flags),
            },
        };
        if ptr::read_volatile(&(*slot).order) != order || ptr::read_volatile(tag) != copy.tag {
            copy.slot.order = WRITING;
        }
        copy
    }
}

/// Wins a free way for the caller's claim and writes it; its order, or None if another CPU
/// won the way. A claim that spills is counted in its primary first, so a reader that finds
/// the tag nowhere in the primary knows to look in the spill bucket.
#[inline(always)]
fn take_free(
    bucket: Bucket,
    way: usize,
    tag: u64,
    mine: &ClaimSlot,
    primary: Bucket,
    now: u64,
) -> Option<u64> {
    let spills = bucket.index != primary.index;
    // SAFETY: pointers into the table.
    unsafe {
        if spills {
            atomic_xadd::<u64, u64, { SeqCst }>(primary.spilled(), 1);
        }
        // A free way's order is WRITING already: readers see a claim in progress at once.
        if !atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(bucket.tag(way), 0, tag).1 {
            if spills {
                atomic_xadd::<u64, u64, { SeqCst }>(primary.spilled(), u64::MAX);
            }
            return None;
        }
    }
    Some(publish(bucket.slot(way), mine, now))
}

/// Wins a claimed way by swapping its order for WRITING, if it still holds the claim `seen`,
/// and writes the caller's claim of `tag` there: taking over a claim of the same tuple, or
/// evicting another tuple's.
#[inline(always)]
fn take_over(
    bucket: Bucket,
    way: usize,
    seen: &Snapshot,
    tag: u64,
    mine: &ClaimSlot,
    now: u64,
) -> Option<u64> {
    let slot = bucket.slot(way);
    // SAFETY: pointers into the table; the swap of its order makes the way ours.
    unsafe {
        let order = &raw mut (*slot).order;
        if !atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(order, seen.slot.order, WRITING).1 {
            return None;
        }
        // Two claims can share an order (made in one nanosecond): make sure it is the same
        // claim, else put it back.
        if ptr::read_volatile(bucket.tag(way)) != seen.tag
            || ptr::read_volatile(&(*slot).owner) != seen.slot.owner
        {
            atomic_xchg::<u64, { SeqCst }>(order, seen.slot.order);
            return None;
        }
        if seen.tag != tag {
            // An eviction: either claim may be a spilled one, counted in its own primary.
            spill_count(bucket, tag, 1);
            ptr::write_volatile(bucket.tag(way), tag);
            spill_count(bucket, seen.tag, u64::MAX);
        }
    }
    Some(publish(slot, mine, now))
}

/// Adds `delta` (1, or -1 as `u64::MAX`) to the spill count of `tag`'s primary when `tag`'s
/// claim is in `bucket` but that is not its primary.
#[inline(always)]
fn spill_count(bucket: Bucket, tag: u64, delta: u64) {
    let index = primary_bucket(tag, claim_mask());
    if index == bucket.index {
        return;
    }
    if let Some(primary) = Bucket::at(index) {
        // SAFETY: a pointer into the table.
        unsafe { atomic_xadd::<u64, u64, { SeqCst }>(primary.spilled(), delta) };
    }
}

/// Writes a won way's claim, `order` last (a full barrier): the claim is whole from then on.
#[inline(always)]
fn publish(slot: *mut ClaimSlot, mine: &ClaimSlot, now: u64) -> u64 {
    // Never WRITING, never the seeded order.
    let order = if now > 1 { now } else { 2 };
    // SAFETY: the caller won the way.
    unsafe {
        ptr::write_volatile(&raw mut (*slot).owner, mine.owner);
        ptr::write_volatile(&raw mut (*slot).netns_cookie, mine.netns_cookie);
        ptr::write_volatile(&raw mut (*slot).device, mine.device);
        ptr::write_volatile(&raw mut (*slot).flags, mine.flags);
        atomic_xchg::<u64, { SeqCst }>(&raw mut (*slot).order, order);
    }
    order
}

/// True when another way at a lower place than the caller's (`bucket`, `way`) holds `tag`:
/// the primary bucket's ways come before the spill bucket's, then by way.
#[inline(always)]
fn claimed_below(primary: Bucket, bucket: Bucket, way: usize, tag: u64) -> bool {
    let in_spill = bucket.index != primary.index;
    // Compared below as a copy of its own: a verifier before 6.8 explores both sides of
    // `6 > way` even where `way` is known to be 6 or 7, and the caller's `way`, narrowed to
    // nothing on that side, then addressed a slot the 6.1 verifier refused.
    let way = opaque::way(way);
    let mut found = false;
    for other in 0..CLAIM_WAYS {
        let below = in_spill || other < way;
        // SAFETY: a pointer into the table.
        found |= below && unsafe { ptr::read_volatile(primary.tag(other)) } == tag;
    }
    if in_spill {
        for other in 0..CLAIM_WAYS {
            // SAFETY: a pointer into the table.
            found |= other < way && unsafe { ptr::read_volatile(bucket.tag(other)) } == tag;
        }
    }
    found
}

/// Frees a way the caller holds: order to WRITING first, so nobody reads a half-free claim.
#[inline(always)]
fn free(bucket: Bucket, way: usize) {
    let slot = bucket.slot(way);
    // SAFETY: a pointer into the table; the caller holds the way.
    unsafe { atomic_xchg::<u64, { SeqCst }>(&raw mut (*slot).order, WRITING) };
    free_taken(bucket, way);
}

/// Frees a way whose order the caller has swapped to WRITING (so nobody else writes it, and
/// readers see it being written): clearing its tag is all it takes, as a free way's order is
/// WRITING and whoever wins it next writes every field before its order.
#[inline(always)]
fn free_taken(bucket: Bucket, way: usize) {
    // SAFETY: a pointer into the table; with its order WRITING only its owner writes the way.
    unsafe {
        let tag = ptr::read_volatile(bucket.tag(way));
        ptr::write_volatile(bucket.tag(way), 0);
        spill_count(bucket, tag, u64::MAX);
    }
}

/// Notes in the socket's record where its claim is, letting go of the one it held before
/// (released, or kept unowned where `indexed`: see [`claim`]).
#[inline(always)]
fn remember(
    record: *mut SocketRecord,
    bucket: Bucket,
    way: usize,
    order: u64,
    mine: &ClaimSlot,
    indexed: bool,
) {
    if record.is_null() {
        return;
    }
    let claim = claim_ref(bucket.index, way);
    // SAFETY: the socket's own record; its connects and close are serialized by the kernel.
    unsafe {
        let (previous, previous_order) = ((*record).claim, (*record).claim_order);
        (*record).claim_order = order;
        (*record).claim = claim;
        (*record).flags = if mine.device != 0 {
            record_flags::DEVICE_CLAIM
        } else {
            0
        };
        if previous != 0 && previous != claim {
            if indexed {
                disown(previous, previous_order, mine.owner);
            } else {
                release(previous, previous_order, mine.owner);
            }
        }
    }
}

/// Takes the way a record's claim (`claim`, `order`) points at, when it is still that socket's
/// (`owner`): its order swapped to WRITING. None when another socket has taken it over, the way
/// left as it was (a later claim may carry the same order: the owner tells them apart).
#[inline(always)]
fn take_own(claim: u32, order: u64, owner: u64) -> Option<(Bucket, usize)> {
    let (index, way) = way_of_ref(claim);
    let bucket = Bucket::at(index)?;
    let slot = bucket.slot(way);
    // SAFETY: a pointer into the table; the swap of its order makes the way ours.
    unsafe {
        let order_word = &raw mut (*slot).order;
        if !atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(order_word, order, WRITING).1 {
            return None;
        }
        if ptr::read_volatile(&(*slot).owner) != owner {
            atomic_xchg::<u64, { SeqCst }>(order_word, order);
            return None;
        }
    }
    Some((bucket, way))
}

/// Turns a claim (`claim` as a record holds it) into an unowned old one, as a seeded claim is,
/// unless another socket has taken it over.
#[inline(always)]
fn disown(claim: u32, order: u64, owner: u64) {
    let Some((bucket, way)) = take_own(claim, order, owner) else {
        return;
    };
    let slot = bucket.slot(way);
    // SAFETY: a pointer into the table; `take_own` made the way ours.
    unsafe {
        // When: the agent's sweep frees it only if a dump taken after this shows its tuple free.
        ptr::write_volatile(
            &raw mut (*slot).owner,
            DISOWNED | bpf_jiffies64() & !DISOWNED,
        );
        // Unrecorded now: a device-bound one no longer stands for a holder by itself.
        ptr::write_volatile(&raw mut (*slot).flags, 0);
        atomic_xchg::<u64, { SeqCst }>(&raw mut (*slot).order, SEEDED_ORDER);
    }
}

/// Frees a claim (`claim` as a record holds it), unless another socket has taken it over.
#[inline(always)]
fn release(claim: u32, order: u64, owner: u64) {
    if let Some((bucket, way)) = take_own(claim, order, owner) {
        free_taken(bucket, way);
    }
}

/// True when the claim a record points at is still its socket's.
#[inline(always)]
fn claim_in_place(record: &SocketRecord) -> bool {
    let (index, way) = way_of_ref(record.claim);
    let Some(bucket) = Bucket::at(index) else {
        return false;
    };
    let slot = bucket.slot(way);
    // SAFETY: a pointer into the table.
    unsafe {
        ptr::read_volatile(&(*slot).order) == record.claim_order
            && ptr::read_volatile(&(*slot).owner) == record.cookie
    }
}

/// The record of the socket with this cookie, or null.
#[inline(always)]
fn record_of(cookie: u64) -> *mut SocketRecord {
    let mask = record_mask();
    for probe in 0..RECORD_PROBES {
        let index = (cookie as u32).wrapping_add(probe) & mask;
        if let Some(record) = RECORDS.get_ptr_mut(index) {
            // SAFETY: a pointer into the records array.
            if unsafe { ptr::read_volatile(&(*record).cookie) } == cookie {
                return record;
            }
        }
    }
    null_mut()
}

/// Gives the socket a record at the first place from its cookie that is free or reusable (see
/// `records::reclaimable`), or null when none is. It is made as its socket claims: stamped
/// `now`, it is not reusable while the claim is made.
#[inline(always)]
fn make_record(cookie: u64, now: u64) -> *mut SocketRecord {
    let mask = record_mask();
    for probe in 0..RECORD_PROBES {
        let index = (cookie as u32).wrapping_add(probe) & mask;
        let Some(record) = RECORDS.get_ptr_mut(index) else {
            continue;
        };
        // SAFETY: a pointer into the records array; the swap of its cookie makes it ours.
        unsafe {
            let copy = SocketRecord {
                cookie: ptr::read_volatile(&(*record).cookie),
                claim_order: ptr::read_volatile(&(*record).claim_order),
                claim: ptr::read_volatile(&(*record).claim),
                flags: ptr::read_volatile(&(*record).flags),
            };
            if !reclaimable(&copy, now, FRESH_NS, || claim_in_place(&copy)) {
                continue;
            }
            let cookie_word = &raw mut (*record).cookie;
            if atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(cookie_word, copy.cookie, cookie).1 {
                (*record).claim_order = now;
                (*record).claim = 0;
                (*record).flags = 0;
                return record;
            }
        }
    }
    null_mut()
}

/// The socket's birth; 0 (older than any claim) when it was not seen born lately.
#[inline(always)]
fn born_of(cookie: u64) -> u64 {
    let Some(birth) = BIRTHS.get_ptr(birth_slot(cookie)) else {
        return 0;
    };
    // SAFETY: a pointer into the array. Its writer stores the cookie first and we read the
    // birth first, so a place being taken by the socket born BIRTH_SLOTS cookies later reads
    // as another's: no birth (old), never a wrong one.
    unsafe {
        let born = ptr::read_volatile(&(*birth).born);
        if ptr::read_volatile(&(*birth).cookie) == cookie {
            born
        } else {
            0
        }
    }
}

/// The claim clock: the order of the newest claim made (see `udpguard_common::records`).
#[inline(always)]
fn claim_clock() -> *mut u64 {
    match BIRTHS.get_ptr_mut(CLAIM_CLOCK) {
        Some(place) => unsafe { &raw mut (*place).born },
        None => null_mut(),
    }
}

/// Publishes a claim's order `now` on the claim clock. Stored only when it moves forward (a
/// plain store: two claims at once may leave the earlier one's time, which makes the sockets
/// created next count older than they are, only ever refused in a race).
#[inline(always)]
fn publish_claim_clock(now: u64) {
    let clock = claim_clock();
    if clock.is_null() {
        return;
    }
    // SAFETY: a pointer into the array.
    unsafe {
        if ptr::read_volatile(clock) < now {
            ptr::write_volatile(clock, now);
        }
    }
}

/// Notes a new UDP socket's birth (`ctx` is a cgroup/sock_create context): the claim clock,
/// in two plain stores; no clock read, no atomic, no probing.
#[inline(always)]
pub unsafe fn stamp_birth(ctx: *mut c_void) {
    let clock = claim_clock();
    if clock.is_null() {
        return;
    }
    // SAFETY: a plain helper call on the program's own context; pointers into the array.
    unsafe {
        let born = ptr::read_volatile(clock);
        let cookie = bpf_get_socket_cookie(ctx);
        if let Some(birth) = BIRTHS.get_ptr_mut(birth_slot(cookie)) {
            ptr::write_volatile(&raw mut (*birth).cookie, cookie);
            ptr::write_volatile(&raw mut (*birth).born, born);
        }
    }
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
        atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(&raw mut (*record).cookie, cookie, 0);
    }
}
