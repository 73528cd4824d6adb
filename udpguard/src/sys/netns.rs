//! Network namespaces: find every one on the host, name it, and open a
//! sock_diag socket inside it.
//!
//! Namespaces are found two ways, deduplicated by their nsfs inode: the
//! `/proc/<pid>/ns/net` of every process, and nsfs bind mounts (the
//! `/run/netns/<name>` files `ip netns add` creates, which keep a namespace
//! alive with no process in it).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps its named namespaces.
const NAMED_NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// A network namespace to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkNamespace {
    /// How it is shown: the `ip netns` name, else the bind mount path, else
    /// `pid N` (the lowest pid in it).
    pub name: String,
    /// Its nsfs inode (the `N` in `net:[N]`), which identifies it.
    pub inode: u64,
    /// A file that refers to it, for `setns`.
    pub path: PathBuf,
}

/// The namespaces found, and how complete the search was.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Every distinct namespace found, ordered by name.
    pub namespaces: Vec<NetworkNamespace>,
    /// Processes whose namespace could not be read (not permitted); a
    /// namespace only they are in is missing.
    pub unreadable_processes: usize,
}

/// Why a namespace could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("cannot open {path}: {error}")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// The system error.
        error: io::Error,
    },
    /// The file now refers to another namespace (its process exited and the
    /// pid was reused).
    #[error("{path} no longer refers to the namespace found earlier (its process exited)")]
    Changed {
        /// The namespace file.
        path: PathBuf,
    },
    /// `setns` was refused.
    #[error("cannot enter it: {0} (entering a network namespace needs CAP_SYS_ADMIN: run as root)")]
    Enter(nix::Error),
}

/// The inode of the calling thread's network namespace.
pub fn current_inode() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Finds every network namespace visible from here.
pub fn discover() -> io::Result<Discovery> {
    // inode -> (rank of the name, name, path); the first of the best rank wins.
    let mut found: BTreeMap<u64, (NameRank, String, PathBuf)> = BTreeMap::new();
    let mut keep = |inode: u64, rank: NameRank, name: String, path: PathBuf| {
        if found
            .get(&inode)
            .is_none_or(|(old_rank, _, _)| rank < *old_rank)
        {
            found.insert(inode, (rank, name, path));
        }
    };

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for (inode, mount_point) in nsfs_net_mounts(&mountinfo) {
        let (rank, name) = name_of_mount(&mount_point);
        keep(inode, rank, name, mount_point);
    }

    let mut unreadable_processes = 0;
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let path = path_of_pid(pid.into());
        match std::fs::read_link(&path) {
            Ok(target) => {
                if let Some(inode) = target.to_str().and_then(|t| parse_ns_link(t, "net")) {
                    keep(inode, NameRank::Pid, format!("pid {pid}"), path);
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                unreadable_processes += 1;
            }
            Err(_) => {} // exited meanwhile
        }
    }

    let mut namespaces: Vec<NetworkNamespace> = found
        .into_iter()
        .map(|(inode, (_, name, path))| NetworkNamespace { name, inode, path })
        .collect();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Discovery {
        namespaces,
        unreadable_processes,
    })
}

/// Runs `open` inside `namespace` and returns what it made: used to open the
/// netlink sockets of a scan there.
///
/// Namespaces are per thread, so a short-lived thread enters the namespace
/// with `setns(CLONE_NEWNET)` and calls `open` there. A netlink socket stays
/// tied to the namespace it was created in for its whole life, so the
/// caller's thread can then use it without ever leaving its own namespace.
pub fn open_in<T: Send>(
    namespace: &NetworkNamespace,
    open: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    if current_inode().ok() == Some(namespace.inode) {
        return open();
    }
    let open_error = |error| NetnsError::Open {
        path: namespace.path.clone(),
        error,
    };
    let file = File::open(&namespace.path).map_err(open_error)?;
    if file.metadata().map_err(open_error)?.ino() != namespace.inode {
        return Err(NetnsError::Changed {
            path: namespace.path.clone(),
        }
        .into());
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
                open()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// How good a name is; lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NameRank {
    /// An `ip netns` name.
    IpNetns,
    /// Some other bind mount path.
    MountPath,
    /// Only known through a process.
    Pid,
}

/// The name a bind mount gives its namespace: the `ip netns` name for files in
/// `/run/netns`, else the mount path.
fn name_of_mount(mount_point: &Path) -> (NameRank, String) {
    let in_named_dir = mount_point
        .parent()
        .is_some_and(|dir| NAMED_NETNS_DIRS.iter().any(|d| dir == Path::new(d)));
    match mount_point.file_name().and_then(|n| n.to_str()) {
        Some(name) if in_named_dir => (NameRank::IpNetns, name.to_owned()),
        _ => (NameRank::MountPath, mount_point.display().to_string()),
    }
}

/// `(namespace inode, mount point)` of every nsfs mount of a network namespace
/// in a `/proc/<pid>/mountinfo` text.
fn nsfs_net_mounts(mountinfo: &str) -> Vec<(u64, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "36 35 0:4 net:[4026532281] /run/netns/x rw shared:5 - nsfs nsfs rw"
            let (mount, filesystem) = line.split_once(" - ")?;
            if filesystem.split(' ').next()? != "nsfs" {
                return None;
            }
            let mut fields = mount.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            let inode = parse_ns_link(root, "net")?;
            Some((
                inode,
                PathBuf::from(crate::sys::mounts::unescape(mount_point)),
            ))
        })
        .collect()
}

/// The inode in a namespace link such as `net:[4026531840]`, if of `kind`.
fn parse_ns_link(link: &str, kind: &str) -> Option<u64> {
    link.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux >= 5.14):
/// what the kernel programs put in events.
pub fn current_cookie() -> anyhow::Result<u64> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_UNIX)");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("getsockopt(SO_NETNS_COOKIE) (needs Linux >= 5.14)");
    }
    Ok(cookie)
}

/// The nsfs identity of a namespace file: (device, inode).
pub fn identity(ns: &File) -> io::Result<(u64, u64)> {
    let meta = ns.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Moves the calling thread into the namespace (threads have their own).
pub fn enter(ns: &File) -> io::Result<()> {
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Where process `pid`'s network namespace is named in /proc.
pub fn path_of_pid(pid: u64) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The nsfs identity (device, inode) of the network namespace of a task (`/proc/<pid>` or
/// `/proc/<pid>/task/<tid>`), if it still exists and may be read.
pub fn identity_of_task(task: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(task.join("ns/net"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Which of the namespaces `wanted` something other than us holds: it is bind-mounted (as
/// `ip netns add` does under /run/netns), or a task (thread) of another process is in it.
/// Bind mounts are looked at first and the walk of /proc stops once every wanted namespace is
/// found, so the usual answer ("all still held") costs a few lookups, not a statx per thread
/// on the host: an idle agent did that walk every two seconds.
pub fn held_of(wanted: &HashSet<(u64, u64)>) -> HashSet<(u64, u64)> {
    let mut held = HashSet::new();
    for mount in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(m) = std::fs::metadata(mount.path()) {
            let identity = (m.dev(), m.ino());
            if wanted.contains(&identity) {
                held.insert(identity);
            }
        }
    }
    if held.len() == wanted.len() {
        return held;
    }
    for task in crate::sys::procfs::others_tasks() {
        if let Some(identity) = identity_of_task(&task)
            && wanted.contains(&identity)
            && held.insert(identity)
            && held.len() == wanted.len()
        {
            break;
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_includes_the_current_namespace() {
        let current = current_inode().unwrap();
        let discovery = discover().unwrap();
        assert!(discovery.namespaces.iter().any(|n| n.inode == current));
    }

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
612 30 0:26 /netns /run/netns rw,nosuid shared:5 - tmpfs tmpfs rw
640 612 0:4 net:[4026532281] /run/netns/blue rw shared:210 - nsfs nsfs rw
641 30 0:4 net:[4026532281] /run/netns/blue rw shared:210 - nsfs nsfs rw
650 30 0:4 net:[4026532999] /run/docker/netns/with\\040space rw - nsfs nsfs rw
660 30 0:4 mnt:[4026532111] /run/mntns/x rw - nsfs nsfs rw
";

    #[test]
    fn finds_net_nsfs_mounts_only() {
        let mounts = nsfs_net_mounts(MOUNTINFO);
        assert_eq!(
            mounts,
            [
                (4026532281, PathBuf::from("/run/netns/blue")),
                (4026532281, PathBuf::from("/run/netns/blue")),
                (4026532999, PathBuf::from("/run/docker/netns/with space")),
            ]
        );
    }

    #[test]
    fn names_ip_netns_mounts_by_name_and_others_by_path() {
        assert_eq!(
            name_of_mount(Path::new("/run/netns/blue")),
            (NameRank::IpNetns, "blue".to_owned())
        );
        assert_eq!(
            name_of_mount(Path::new("/var/run/netns/red")),
            (NameRank::IpNetns, "red".to_owned())
        );
        assert_eq!(
            name_of_mount(Path::new("/run/docker/netns/abc")),
            (NameRank::MountPath, "/run/docker/netns/abc".to_owned())
        );
        assert!(NameRank::IpNetns < NameRank::MountPath && NameRank::MountPath < NameRank::Pid);
    }

    #[test]
    fn parses_namespace_links() {
        assert_eq!(parse_ns_link("net:[4026531840]", "net"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]", "net"), None);
        assert_eq!(parse_ns_link("net:[x]", "net"), None);
    }
}
