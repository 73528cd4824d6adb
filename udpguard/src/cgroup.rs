//! Finding cgroup v2 directories: the hierarchy's root, a cgroup's id, and a path from an id.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use crate::error::{Error, Result};

/// A cgroup v2 directory and its id (the inode number, which the kernel also uses as its id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: u64,
}

impl Cgroup {
    /// Checks that `path` is an existing cgroup v2 directory.
    pub fn open(path: &Path) -> Result<Cgroup> {
        let metadata = fs::metadata(path).map_err(|_| Error::CgroupMissing {
            path: path.to_path_buf(),
        })?;
        let is_cgroup2 = statfs(path)
            .map(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
            .unwrap_or(false);
        if !metadata.is_dir() || !is_cgroup2 {
            return Err(Error::NotCgroup2 {
                path: path.to_path_buf(),
                root: root().unwrap_or_else(|_| PathBuf::from("(nowhere)")),
            });
        }
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Cgroup {
            path,
            id: metadata.ino(),
        })
    }

    /// True for the root of the host's cgroup v2 hierarchy (id 1), where every process of the
    /// machine is: not a cgroup namespace's root, which only looks like one.
    pub fn is_host_root(&self) -> bool {
        self.id == 1
    }

    /// The cgroup given on the command line, or the root of the v2 hierarchy.
    pub fn open_or_root(path: Option<&Path>) -> Result<Cgroup> {
        match path {
            Some(path) => Cgroup::open(path),
            None => Cgroup::open(&root()?),
        }
    }
}

/// Where cgroup v2 is mounted, from /proc/self/mounts (`/sys/fs/cgroup` on modern distros,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(crate::error::io("reading /proc/self/mounts"))?;
    cgroup2_mount_point(&mounts).ok_or(Error::NoCgroup2)
}

/// The first cgroup2 mount point in a mounts table.
pub fn cgroup2_mount_point(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(crate::sys::mounts::unescape(target)))
    })
}

/// The path of the cgroup with this id under `root`, if it still exists.
pub fn path_of_id(root: &Path, id: u64) -> Option<PathBuf> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return Some(dir);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_point(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_in_unified_layout_and_unescapes() {
        let mounts = "cgroup2 /sys/fs/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_point(mounts),
            Some(PathBuf::from("/sys/fs/my cgroups"))
        );
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(cgroup2_mount_point("proc /proc proc rw 0 0\n"), None);
    }
}
