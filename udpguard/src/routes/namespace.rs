//! Network namespaces as the mirror sees them: entered on a dedicated thread, known by their
//! cookie (what the kernel programs see) and their nsfs inode.
use std::{fs::File, io, os::fd::AsFd as _, os::unix::fs::MetadataExt as _, path::Path};

use nix::sched::{CloneFlags, setns};

/// The nsfs identity of a namespace file: (device, inode).
pub fn identity(ns: &File) -> io::Result<(u64, u64)> {
    let meta = ns.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Moves the calling thread into the namespace (threads have their own).
pub fn enter(ns: &File) -> io::Result<()> {
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// True while some process other than us is in the namespace, or it is bind-mounted (as
/// `ip netns add` does): once neither holds, the namespace is gone but for our own sockets.
pub fn in_use(identity: (u64, u64)) -> bool {
    let me = std::process::id().to_string();
    let held_by =
        |path: &Path| std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == identity);
    let processes = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for entry in processes {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.bytes().all(|b| b.is_ascii_digit())
            && name != me
            && held_by(&entry.path().join("ns/net"))
        {
            return true;
        }
    }
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| held_by(&e.path()))
}
