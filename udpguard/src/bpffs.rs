//! The BPF filesystem where attachments keep their pins, and the lock that guards it.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use crate::error::{Error, Result, io};

/// Where bpffs is mounted by convention.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

/// The directory holding one sub-directory per attachment. `UDPGUARD_PIN_ROOT` moves it
/// (tests use it to keep their attachments apart); it must be on a bpffs.
pub fn pin_root() -> PathBuf {
    std::env::var_os("UDPGUARD_PIN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(DEFAULT_MOUNT).join("udpguard"))
}

/// True when `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure the pin root exists on a bpffs, mounting bpffs at its parent when missing.
pub fn ensure_pin_root() -> Result<PathBuf> {
    let root = pin_root();
    let mount_point = root.parent().unwrap_or(Path::new(DEFAULT_MOUNT));
    if !is_bpffs(mount_point) {
        std::fs::create_dir_all(mount_point).map_err(|source| Error::NoBpffs {
            path: mount_point.to_path_buf(),
            source,
        })?;
        mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| Error::NoBpffs {
            path: mount_point.to_path_buf(),
            source: errno.into(),
        })?;
    }
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    Ok(root)
}

/// An exclusive lock on the pin root, held while an attachment is built or removed, so that
/// concurrent `attach`/`detach` runs take turns instead of corrupting each other's pins.
pub struct PinLock {
    _lock: Flock<File>,
}

impl PinLock {
    /// Blocks until the lock is ours.
    pub fn acquire(root: &Path) -> Result<PinLock> {
        let dir = File::open(root).map_err(io(format!("opening {}", root.display())))?;
        let lock = Flock::lock(dir, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io(format!("locking {}", root.display()))(errno.into()))?;
        Ok(PinLock { _lock: lock })
    }
}
