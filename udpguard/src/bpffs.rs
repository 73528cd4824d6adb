//! The BPF filesystem where attachments keep their pins, and the lock that guards it.
//!
//! The pin root (`/sys/fs/bpf/udpguard`) is root's alone: root-owned, mode 0700, so nobody
//! else can plant an attachment there, read it, or hold its lock. udpguard mounts a bpffs only
//! at `/sys/fs/bpf` itself, and only where nothing is mounted: it never mounts over a directory
//! that is not its own. One it did not make, or that others can write, is refused with what to
//! do about it.
use std::{
    fs::File,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, SYSFS_MAGIC, statfs},
};

use crate::error::{Error, Result, io};

/// Where bpffs is mounted by convention.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

/// The directory inside the pin root that writers lock (a directory: bpffs holds nothing
/// else but pins).
const LOCK_DIR: &str = "lock";

/// How long a writer waits for a holder of the lock that makes no progress before it says who
/// holds it. The wait starts again when the lock changes hands or its holder uses CPU: a queue
/// of writers (six attaches at once on a host at load 9, where one attach can take more than
/// 10 s) all get their turn; a stuck one (asleep, gone with a child holding the lock) is named.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The directory holding one sub-directory per attachment. `UDPGUARD_PIN_ROOT` moves it
/// (tests use it to keep their attachments apart); its parent must be a bpffs.
pub fn pin_root() -> PathBuf {
    std::env::var_os("UDPGUARD_PIN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(DEFAULT_MOUNT).join("udpguard"))
}

/// True when `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure the pin root exists on a bpffs and is ours; returns it. Mounts a bpffs at
/// `/sys/fs/bpf` when nothing is mounted there (the directory sysfs provides for it).
pub fn ensure_pin_root() -> Result<PathBuf> {
    let root = pin_root();
    let parent = root
        .parent()
        .unwrap_or(Path::new(DEFAULT_MOUNT))
        .to_path_buf();
    if !is_bpffs(&parent) {
        let sysfs_mount_point = parent == Path::new(DEFAULT_MOUNT)
            && statfs(&parent).is_ok_and(|fs| fs.filesystem_type() == SYSFS_MAGIC);
        if !sysfs_mount_point {
            return Err(Error::PinRootNotOnBpffs { root, parent });
        }
        mount(
            Some("bpf"),
            &parent,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| Error::NoBpffs {
            path: parent.clone(),
            source: errno.into(),
        })?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(&root) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io(format!("creating {}", root.display()))(e));
        }
        _ => {}
    }
    check_ours(&root, true)?;
    Ok(root)
}

/// Checks that the pin root is root's alone (for commands that only look: `tighten` false).
/// A root-owned one others can read (made by an older udpguard) is made 0700 when `tighten`.
pub fn check_ours(root: &Path, tighten: bool) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(root).map_err(io(format!("reading {}", root.display())))?;
    if !meta.is_dir() {
        return Err(Error::PinRootNotOurs {
            root: root.to_path_buf(),
            why: "it is not a directory".into(),
        });
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(Error::PinRootNotOurs {
            root: root.to_path_buf(),
            why: format!("it is owned by uid {}, not by uid {me}", meta.uid()),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::PinRootNotOurs {
            root: root.to_path_buf(),
            why: format!("others can write to it (mode {mode:04o})"),
        });
    }
    if mode & 0o077 != 0 && tighten {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("making {} 0700", root.display())))?;
    }
    Ok(())
}

/// An exclusive lock on the pin root, held while an attachment is built or removed, so that
/// concurrent `attach`/`detach` runs take turns instead of corrupting each other's pins.
pub struct PinLock {
    _lock: Flock<File>,
}

impl PinLock {
    /// Waits for the lock (until its holder makes no progress for [`LOCK_WAIT`], then says
    /// who holds it).
    pub fn acquire(root: &Path) -> Result<PinLock> {
        let dir = root.join(LOCK_DIR);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io(format!("creating {}", dir.display()))(e));
            }
            _ => {}
        }
        let mut started = Instant::now();
        let mut file = File::open(&dir).map_err(io(format!("opening {}", dir.display())))?;
        let ino = file.metadata().map(|meta| meta.ino()).unwrap_or(0);
        let locker = || {
            let locks = std::fs::read_to_string("/proc/locks").ok()?;
            lock_holder(&locks, ino)
        };
        let mut holder = None;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(PinLock { _lock: lock }),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => file = back,
                Err((_, errno)) => {
                    return Err(io(format!("locking {}", dir.display()))(errno.into()));
                }
            }
            let now_held_by = locker();
            let progress = now_held_by.map(|pid| (pid, crate::sys::procfs::cpu_ticks(pid)));
            if progress != holder {
                holder = progress;
                started = Instant::now();
            }
            if started.elapsed() >= LOCK_WAIT {
                return Err(Error::Locked {
                    root: root.to_path_buf(),
                    waited: started.elapsed().as_secs(),
                    holder: holder_of(&dir).unwrap_or_else(|| "an unknown process".into()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Who holds a flock on `path`: the locker /proc/locks names, or, when that process has
/// exited (a child inherited the lock with its file descriptor), the processes that have the
/// directory open. "pid N (comm), uid U".
fn holder_of(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let locker = lock_holder(&locks, meta.ino())?;
    let describe = |pid: u32| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
        Some(format!("pid {pid} ({}), uid {uid}", comm.trim()))
    };
    if let Some(holder) = describe(locker) {
        return Some(holder);
    }
    let openers: Vec<String> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        })
        .filter_map(describe)
        .collect();
    (!openers.is_empty()).then(|| openers.join(", "))
}

/// The pid holding a FLOCK on the inode `ino`, in a /proc/locks table.
fn lock_holder(locks: &str, ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"; a waiter's line starts "1: ->".
        let (kind, pid, file) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
        let inode: u64 = file.rsplit(':').next()?.parse().ok()?;
        (*kind == "FLOCK" && inode == ino).then(|| pid.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 00:1d:42 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4321 00:2a:5678 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 999 00:2a:5678 0 EOF\n";
        assert_eq!(lock_holder(locks, 5678), Some(4321));
        assert_eq!(lock_holder(locks, 42), None, "a POSIX lock is another kind");
        assert_eq!(lock_holder(locks, 1), None);
    }
}
