//! The claim table from user space (the kernel's half is `udpguard-ebpf/src/claims.rs`, the
//! layout and rules `udpguard_common::claims`). The table is a memory-mappable array: reading
//! it is a look at shared memory, and the agent seeds it with the same compare-and-swap steps
//! the programs take, so a seed never tears a program's claim.
use std::{
    collections::HashSet,
    mem::offset_of,
    sync::atomic::{AtomicU64, Ordering::SeqCst},
};

use udpguard_common::{
    CLAIM_WAYS, ClaimBucket, ClaimKey, ClaimSlot, SEEDED_ORDER,
    claims::{WRITING, disowned_at, primary_bucket, spill_bucket},
    map_names,
    names::pin_of,
};

use crate::shared_map::SharedArray;

/// What a namespace's dump said, for [`ClaimTable::sweep`].
#[derive(Debug, Default)]
pub struct Dumped {
    /// The tags of the tuples held.
    pub tags: HashSet<u64>,
    /// When the dump began (`jiffies`).
    pub jiffies: u64,
}

/// The attachment's claim table, mapped into this process.
pub struct ClaimTable {
    map: SharedArray,
    buckets: u32,
}

/// What seeding one tuple did.
#[derive(Debug, PartialEq, Eq)]
pub enum Seeded {
    /// Added, or a claim of the tuple was there already.
    Indexed,
    /// Its bucket and its spill bucket are full: the tuple cannot be indexed.
    NoRoom,
}

impl ClaimTable {
    /// Maps the table (of `buckets` buckets) of the attachment in `dir`, read-only (`status`)
    /// or for seeding.
    pub fn open(dir: &std::path::Path, buckets: u32, writable: bool) -> anyhow::Result<ClaimTable> {
        anyhow::ensure!(
            buckets.is_power_of_two(),
            "the attachment has no claim table (its kernel has no 64-bit BPF atomics)"
        );
        let len = buckets as usize * size_of::<ClaimBucket>();
        let path = dir.join(pin_of(map_names::CLAIMS));
        let map = SharedArray::open(&path, "claim table", len, writable)?;
        Ok(ClaimTable { map, buckets })
    }

    fn mask(&self) -> u32 {
        self.buckets - 1
    }

    /// How many tuples are claimed.
    pub fn count(&self) -> usize {
        (0..self.buckets)
            .flat_map(|b| (0..CLAIM_WAYS).map(move |w| (b, w)))
            .filter(|&(b, w)| self.tag(b, w).load(SeqCst) != 0)
            .count()
    }

    /// Claims the table holds in all.
    pub fn capacity(&self) -> usize {
        self.buckets as usize * CLAIM_WAYS
    }

    /// How many buckets have spilled claims into another.
    pub fn spilled_buckets(&self) -> usize {
        (0..self.buckets)
            .filter(|&b| self.spilled(b).load(SeqCst) != 0)
            .count()
    }

    /// True when a claim of the tuple is in the table (where the programs would look).
    pub fn contains(&self, key: &ClaimKey) -> bool {
        let tag = key.tag();
        let primary = primary_bucket(tag, self.mask());
        let spill = spill_bucket(tag, self.mask());
        let has = |bucket| (0..CLAIM_WAYS).any(|w| self.tag(bucket, w).load(SeqCst) == tag);
        has(primary) || (self.spilled(primary).load(SeqCst) != 0 && has(spill))
    }

    /// Adds a claim for a tuple some socket (bound to `device`, 0 for none) holds already, with
    /// no owner and the oldest order: it refuses nobody by itself, and a lookup confirms any
    /// conflict it points to (a device-bound one makes a duplicate count as not checked).
    pub fn seed(&self, key: &ClaimKey, device: u32) -> anyhow::Result<Seeded> {
        self.map.ensure_writable()?;
        if self.contains(key) {
            return Ok(Seeded::Indexed);
        }
        let tag = key.tag();
        let primary = primary_bucket(tag, self.mask());
        let spill = spill_bucket(tag, self.mask());
        // A program may win a free way first: look again, a few times.
        for _ in 0..CLAIM_WAYS {
            let Some((bucket, way)) = self.free_way(primary).or_else(|| self.free_way(spill))
            else {
                return Ok(Seeded::NoRoom);
            };
            let spills = bucket != primary;
            if spills {
                self.spilled(primary).fetch_add(1, SeqCst);
            }
            // Won like the programs win a free way; `order` (WRITING while free) goes last.
            let won = self
                .tag(bucket, way)
                .compare_exchange(0, tag, SeqCst, SeqCst)
                .is_ok();
            if won {
                let field = |offset| self.word(bucket, way, offset);
                field(offset_of!(ClaimSlot, owner)).store(0, SeqCst);
                field(offset_of!(ClaimSlot, netns_cookie)).store(key.netns_cookie, SeqCst);
                // The device and flags word (flags 0: unrecorded, its close is not seen).
                field(offset_of!(ClaimSlot, device)).store(device as u64, SeqCst);
                field(offset_of!(ClaimSlot, order)).store(SEEDED_ORDER, SeqCst);
                return Ok(Seeded::Indexed);
            }
            if spills {
                self.spilled(primary).fetch_sub(1, SeqCst);
            }
        }
        Ok(Seeded::NoRoom)
    }

    /// Frees the unowned old claims (seeded from a dump, or let go by a socket that moved) whose
    /// tuples no socket holds any more, in one pass over the table for every namespace in
    /// `held`: its held tags, from a dump that began at `jiffies` (a claim let go of after
    /// that may be a failed reconnect's, whose socket still holds its tuple: kept). A
    /// program's claim, or one a program has taken over meanwhile, is left alone. Returns how
    /// many were freed.
    pub fn sweep(&self, held: &std::collections::HashMap<u64, Dumped>) -> anyhow::Result<usize> {
        self.map.ensure_writable()?;
        let mut freed = 0;
        for bucket in 0..self.buckets {
            for way in 0..CLAIM_WAYS {
                let tag = self.tag(bucket, way).load(SeqCst);
                let field = |offset| self.word(bucket, way, offset);
                if tag == 0 || field(offset_of!(ClaimSlot, order)).load(SeqCst) != SEEDED_ORDER {
                    continue;
                }
                let netns = field(offset_of!(ClaimSlot, netns_cookie)).load(SeqCst);
                let Some(dump) = held.get(&netns) else {
                    continue;
                };
                let owner = field(offset_of!(ClaimSlot, owner)).load(SeqCst);
                let since_dump = disowned_at(owner)
                    .is_some_and(|at| !udpguard_common::time::before(at, dump.jiffies));
                if dump.tags.contains(&tag) || since_dump {
                    continue;
                }
                // Won like a program takes a claim over: its order swapped for WRITING.
                let order = field(offset_of!(ClaimSlot, order));
                if order
                    .compare_exchange(SEEDED_ORDER, WRITING, SeqCst, SeqCst)
                    .is_err()
                {
                    continue;
                }
                if field(offset_of!(ClaimSlot, owner)).load(SeqCst) != owner
                    || self.tag(bucket, way).load(SeqCst) != tag
                {
                    order.store(SEEDED_ORDER, SeqCst);
                    continue;
                }
                field(offset_of!(ClaimSlot, owner)).store(0, SeqCst);
                field(offset_of!(ClaimSlot, netns_cookie)).store(0, SeqCst);
                field(offset_of!(ClaimSlot, device)).store(0, SeqCst);
                self.tag(bucket, way).store(0, SeqCst);
                let primary = primary_bucket(tag, self.mask());
                if bucket != primary {
                    self.spilled(primary).fetch_sub(1, SeqCst);
                }
                freed += 1;
            }
        }
        Ok(freed)
    }

    fn free_way(&self, bucket: u32) -> Option<(u32, usize)> {
        (0..CLAIM_WAYS)
            .find(|&w| self.tag(bucket, w).load(SeqCst) == 0)
            .map(|w| (bucket, w))
    }

    fn spilled(&self, bucket: u32) -> &AtomicU64 {
        self.in_bucket(bucket, offset_of!(ClaimBucket, spilled))
    }

    /// A way's tag.
    fn tag(&self, bucket: u32, way: usize) -> &AtomicU64 {
        assert!(way < CLAIM_WAYS);
        self.in_bucket(bucket, offset_of!(ClaimBucket, tags) + way * 8)
    }

    /// One u64 word of a way's claim (its offset in [`ClaimSlot`]; `device` and `flags` share
    /// one).
    fn word(&self, bucket: u32, way: usize, offset: usize) -> &AtomicU64 {
        assert!(way < CLAIM_WAYS);
        let slot = offset_of!(ClaimBucket, slots) + way * size_of::<ClaimSlot>();
        self.in_bucket(bucket, slot + offset)
    }

    fn in_bucket(&self, bucket: u32, offset: usize) -> &AtomicU64 {
        assert!(bucket < self.buckets);
        self.map
            .word(bucket as usize * size_of::<ClaimBucket>() + offset)
    }
}
