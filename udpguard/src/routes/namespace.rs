//! Network namespaces as the mirror sees them: entered on a dedicated thread, known by their
//! cookie (what the kernel programs see) and their nsfs inode.
use std::{
    collections::HashSet, fs::File, io, os::fd::AsFd as _, os::unix::fs::MetadataExt as _,
    path::Path,
};

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

/// The namespaces something other than us holds: a task (thread) of another process is in
/// it, or it is bind-mounted (as `ip netns add` does under /run/netns). One pass over /proc for
/// every namespace the mirror watches: a namespace missing from it is gone but for our own
/// threads and sockets.
pub fn in_use() -> HashSet<(u64, u64)> {
    let me = std::process::id().to_string();
    let mut held = HashSet::new();
    let mut note = |path: &Path| {
        if let Ok(m) = std::fs::metadata(path) {
            held.insert((m.dev(), m.ino()));
        }
    };
    for process in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = process.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        for task in std::fs::read_dir(process.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            note(&task.path().join("ns/net"));
        }
    }
    for mount in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        note(&mount.path());
    }
    held
}
