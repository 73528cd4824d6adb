//! Facts about an attachment that user space keeps with its pins (`META`, one entry).

/// What the loaded programs can do on this kernel: bits of [`AttachMeta::features`].
pub mod features {
    /// The programs refuse through `bpf_set_retval` (any errno; Linux 5.18+), not EPERM only.
    pub const SET_RETVAL: u32 = 1;
    /// The claims run (64-bit compare-and-swap in BPF, Linux 5.12+): no race window, and the
    /// fast path can be used.
    pub const CLAIMS: u32 = 2;
    /// The claims are off because `UDPGUARD_FORCE_COMPAT=1` asked for the older-kernel mode,
    /// not because the kernel lacks 64-bit atomic fetch operations (testing that mode on a
    /// new kernel).
    pub const FORCED_COMPAT: u32 = 4;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachMeta {
    /// Layout version of this struct; 0 means "never written".
    pub version: u32,
    /// Bits of [`features`].
    pub features: u32,
    /// The cgroup's id (its inode in cgroup2), which names the pin directory.
    pub cgroup_id: u64,
    /// SHA-256 of the eBPF object the programs were loaded from.
    pub object_sha256: [u8; 32],
    /// When the attachment was made, seconds since the epoch.
    pub attached_at: u64,
    /// Buckets in the claim table (a power of two; 0 without claims).
    pub claim_buckets: u32,
    /// Places in the socket records (a power of two; 0 without claims).
    pub records: u32,
}

impl AttachMeta {
    pub const VERSION: u32 = 2;

    /// True when the programs refuse with any errno.
    pub const fn set_retval(&self) -> bool {
        self.features & features::SET_RETVAL != 0
    }

    /// True when the claims run.
    pub const fn claims(&self) -> bool {
        self.features & features::CLAIMS != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid.
unsafe impl aya::Pod for AttachMeta {}
