//! A pinned memory-mappable BPF array (`BPF_F_MMAPABLE`) mapped into this process. Its u64
//! words are shared with the programs, so every access is atomic, as theirs are.
use std::{os::fd::AsFd as _, path::Path, ptr::NonNull, sync::atomic::AtomicU64};

use anyhow::Context as _;
use aya::maps::MapData;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

pub struct SharedArray {
    base: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is shared memory that every access treats as concurrently written.
unsafe impl Send for SharedArray {}

impl SharedArray {
    /// Maps the first `len` bytes of the array pinned at `path` (`what` names it in errors),
    /// read-only for commands that only look.
    pub fn open(path: &Path, what: &str, len: usize, writable: bool) -> anyhow::Result<Self> {
        let map = MapData::from_pin(path)
            .with_context(|| format!("opening the {what} {}", path.display()))?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a shared mapping of the map's memory, at most its size; unmapped on drop.
        let base = unsafe {
            mmap(
                None,
                len.try_into().with_context(|| format!("{what} size"))?,
                prot,
                MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .with_context(|| format!("mapping the {what} {}", path.display()))?;
        Ok(SharedArray {
            base: base.cast(),
            len,
            writable,
        })
    }

    /// Fails unless mapped for writing.
    pub fn ensure_writable(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.writable, "the map is mapped read-only");
        Ok(())
    }

    /// The u64 at byte `offset`, as an atomic over the mapping.
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len,
            "word {offset} out of the map"
        );
        // SAFETY: an aligned u64 inside the mapping, which lives as long as `self`. A
        // read-only mapping is only ever loaded from (every store goes through
        // `ensure_writable` first).
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }
}

impl Drop for SharedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, not used after this.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}
