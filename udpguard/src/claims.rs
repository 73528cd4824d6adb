//! The claim table from user space (the kernel's half and its rules are in
//! `udpguard-ebpf/src/claims.rs`). The table is a memory-mappable array: reading it is a look
//! at shared memory, and the agent seeds it with the same compare-and-swap steps the programs
//! take, so a seed never tears a program's claim.
use std::{
    mem::offset_of,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use udpguard_common::{
    CLAIM_BUCKETS, CLAIM_WAYS, ClaimBucket, ClaimKey, ClaimSlot, SEEDED_ORDER, claim_bucket,
};

use crate::{attachment::CLAIMS_PIN, shared_map::SharedArray};

/// The attachment's claim table, mapped into this process.
pub struct ClaimTable {
    map: SharedArray,
}

/// What seeding one tuple did.
#[derive(Debug, PartialEq, Eq)]
pub enum Seeded {
    /// Added, or a claim of the tuple was there already.
    Indexed,
    /// The bucket is full: the tuple cannot be indexed.
    NoRoom,
}

impl ClaimTable {
    /// Maps the table of the attachment in `dir`, read-only (`status`) or for seeding.
    pub fn open(dir: &Path, writable: bool) -> anyhow::Result<ClaimTable> {
        let len = CLAIM_BUCKETS as usize * size_of::<ClaimBucket>();
        let map = SharedArray::open(&dir.join(CLAIMS_PIN), "claim table", len, writable)?;
        Ok(ClaimTable { map })
    }

    /// How many tuples are claimed.
    pub fn count(&self) -> usize {
        (0..CLAIM_BUCKETS)
            .flat_map(|b| (0..CLAIM_WAYS).map(move |w| (b, w)))
            .filter(|&(b, w)| self.tag(b, w).load(Ordering::Relaxed) != 0)
            .count()
    }

    /// Adds a claim for a tuple some socket holds already, with no owner and the oldest order:
    /// it refuses nobody by itself, and a lookup confirms any conflict it points to.
    pub fn seed(&self, key: &ClaimKey) -> anyhow::Result<Seeded> {
        self.map.ensure_writable()?;
        let tag = key.tag();
        let bucket = claim_bucket(tag);
        let field = |way, offset| self.word(bucket, way, offset);
        // A program may win a free way first: look again, a few times.
        for _ in 0..CLAIM_WAYS {
            let tags: Vec<u64> = (0..CLAIM_WAYS)
                .map(|w| self.tag(bucket, w).load(Ordering::SeqCst))
                .collect();
            if tags.contains(&tag) {
                return Ok(Seeded::Indexed);
            }
            let Some(way) = tags.iter().position(|&t| t == 0) else {
                return Ok(Seeded::NoRoom);
            };
            // Won like the programs win a free way; `order` (0 while free) is written last.
            let won = self
                .tag(bucket, way)
                .compare_exchange(0, tag, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if won {
                field(way, offset_of!(ClaimSlot, since_jiffies)).store(0, Ordering::SeqCst);
                field(way, offset_of!(ClaimSlot, owner)).store(0, Ordering::SeqCst);
                field(way, offset_of!(ClaimSlot, netns_cookie))
                    .store(key.netns_cookie, Ordering::SeqCst);
                field(way, offset_of!(ClaimSlot, order)).store(SEEDED_ORDER, Ordering::SeqCst);
                return Ok(Seeded::Indexed);
            }
        }
        Ok(Seeded::NoRoom)
    }

    /// Frees a seeded claim of the tuple once its socket is gone (a program's claim, or one a
    /// program has taken over, is left alone).
    pub fn unseed(&self, key: &ClaimKey) -> anyhow::Result<()> {
        self.map.ensure_writable()?;
        let tag = key.tag();
        let bucket = claim_bucket(tag);
        for way in 0..CLAIM_WAYS {
            let field = |offset| self.word(bucket, way, offset);
            if self.tag(bucket, way).load(Ordering::SeqCst) != tag {
                continue;
            }
            // Won like a program takes a claim over: its order swapped for "being written".
            let order = field(offset_of!(ClaimSlot, order));
            if order
                .compare_exchange(SEEDED_ORDER, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            if field(offset_of!(ClaimSlot, owner)).load(Ordering::SeqCst) != 0 {
                order.store(SEEDED_ORDER, Ordering::SeqCst);
                continue;
            }
            field(offset_of!(ClaimSlot, since_jiffies)).store(0, Ordering::SeqCst);
            field(offset_of!(ClaimSlot, netns_cookie)).store(0, Ordering::SeqCst);
            self.tag(bucket, way).store(0, Ordering::SeqCst);
        }
        Ok(())
    }

    /// A way's tag.
    fn tag(&self, bucket: u32, way: usize) -> &AtomicU64 {
        self.in_bucket(bucket, way, offset_of!(ClaimBucket, tags) + way * 8)
    }

    /// One u64 field of a way's claim (its offset in [`ClaimSlot`]).
    fn word(&self, bucket: u32, way: usize, offset: usize) -> &AtomicU64 {
        let slot = offset_of!(ClaimBucket, slots) + way * size_of::<ClaimSlot>();
        self.in_bucket(bucket, way, slot + offset)
    }

    fn in_bucket(&self, bucket: u32, way: usize, offset: usize) -> &AtomicU64 {
        assert!(bucket < CLAIM_BUCKETS && way < CLAIM_WAYS);
        self.map
            .word(bucket as usize * size_of::<ClaimBucket>() + offset)
    }
}
