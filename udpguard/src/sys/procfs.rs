//! Which processes hold a socket: the `/proc/<pid>/fd` walk `ss -p` does.
//!
//! The kernel keeps no socket → process map; the only way to find a socket's
//! owners is to read every open file of every process and match the
//! `socket:[INODE]` links. That walk dominates the cost of a scan, so it only
//! looks for the inodes asked for, reads links relative to an open
//! `/proc/<pid>/fd` directory (no path walk per descriptor) and spreads the
//! processes over a few threads.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

/// Upper bound on walker threads; the walk is syscall-bound, more do not help.
const MAX_WALKER_THREADS: usize = 8;

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Process {
    /// Process id (thread group id).
    pub pid: u32,
    /// Command name from `/proc/<pid>/comm`.
    pub comm: String,
}

/// Result of the walk.
#[derive(Debug, Default)]
pub struct SocketOwners {
    /// The processes holding each wanted inode, ordered by pid (a socket
    /// inherited across `fork` has several). Inodes nobody visible holds are absent.
    pub by_inode: HashMap<u64, Vec<Process>>,
    /// How many processes' open files could not be read (not permitted: not
    /// root, or another user's process). Their sockets' owners are missing.
    pub unreadable_processes: usize,
}

/// Finds the processes that have any of `inodes` open.
pub fn find_socket_owners(inodes: &HashSet<u64>) -> io::Result<SocketOwners> {
    if inodes.is_empty() {
        return Ok(SocketOwners::default());
    }
    let pids = list_pids()?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WALKER_THREADS)
        .min(pids.len().max(1));

    // Processes differ wildly in descriptor count, so threads take the next
    // pid from a shared cursor rather than a fixed share.
    let cursor = AtomicUsize::new(0);
    let found: Mutex<Vec<(u64, u32)>> = Mutex::new(Vec::new());
    let unreadable = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut hits = Vec::new();
                let mut denied = 0;
                let mut link = [0u8; 64];
                loop {
                    let index = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(&pid) = pids.get(index) else { break };
                    match socket_inodes_of(pid, inodes, &mut link, &mut hits) {
                        Ok(()) => {}
                        Err(e) if is_permission_error(&e) => denied += 1,
                        // The process exited meanwhile: nothing to report.
                        Err(_) => {}
                    }
                }
                unreadable.fetch_add(denied, Ordering::Relaxed);
                found.lock().unwrap_or_else(|p| p.into_inner()).extend(hits);
            });
        }
    });

    let found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut comms: HashMap<u32, String> = HashMap::new();
    let mut by_inode: HashMap<u64, Vec<Process>> = HashMap::new();
    for (inode, pid) in found {
        let comm = comms.entry(pid).or_insert_with(|| read_comm(pid)).clone();
        by_inode
            .entry(inode)
            .or_default()
            .push(Process { pid, comm });
    }
    for processes in by_inode.values_mut() {
        processes.sort();
        processes.dedup();
    }
    Ok(SocketOwners {
        by_inode,
        unreadable_processes: unreadable.into_inner(),
    })
}

/// Every numeric entry of `/proc`.
fn list_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Appends `(inode, pid)` for each descriptor of `pid` that is one of `inodes`
/// (once per descriptor; duplicates are removed later). Fails with a
/// permission error when the descriptors of `pid` may not be read.
fn socket_inodes_of(
    pid: u32,
    inodes: &HashSet<u64>,
    link: &mut [u8; 64],
    hits: &mut Vec<(u64, u32)>,
) -> io::Result<()> {
    let path = CString::new(format!("/proc/{pid}/fd")).expect("no NUL in a /proc path");
    let mut fds = Directory::open(&path)?;
    let dir_fd = fds.fd();
    while let Some(name) = fds.next_name() {
        if !name.to_bytes().first().is_some_and(u8::is_ascii_digit) {
            continue; // "." and ".."
        }
        // SAFETY: `dir_fd` is open for as long as `fds` lives, `name` is a
        // NUL-terminated string, and `link` is writable for its full length.
        let length = unsafe {
            libc::readlinkat(dir_fd, name.as_ptr(), link.as_mut_ptr().cast(), link.len())
        };
        let Ok(length) = usize::try_from(length) else {
            let error = io::Error::last_os_error();
            if is_permission_error(&error) {
                // The directory lists but its links are not ours to read.
                return Err(error);
            }
            continue; // the descriptor was closed meanwhile
        };
        if let Some(inode) = parse_socket_link(&link[..length])
            && inodes.contains(&inode)
        {
            hits.push((inode, pid));
        }
    }
    Ok(())
}

/// The inode of a `socket:[12345]` link target; `None` for anything else.
pub fn parse_socket_link(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `/proc/<pid>/comm` without its newline; "?" if the process is gone.
fn read_comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

fn is_permission_error(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// An open directory read with `readdir(3)`, whose descriptor can anchor
/// `*at` calls.
struct Directory {
    dir: NonNull<libc::DIR>,
}

impl Directory {
    fn open(path: &CStr) -> io::Result<Self> {
        // SAFETY: `path` is a valid NUL-terminated string.
        let dir = unsafe { libc::opendir(path.as_ptr()) };
        NonNull::new(dir)
            .map(|dir| Self { dir })
            .ok_or_else(io::Error::last_os_error)
    }

    /// The directory's file descriptor, valid while `self` lives.
    fn fd(&self) -> libc::c_int {
        // SAFETY: `self.dir` is an open directory stream.
        unsafe { libc::dirfd(self.dir.as_ptr()) }
    }

    /// The next entry's name; `None` at the end (or on a read error, which for
    /// `/proc/<pid>/fd` means the process exited).
    fn next_name(&mut self) -> Option<&CStr> {
        // SAFETY: `self.dir` is an open directory stream; the entry stays valid
        // until the next `readdir` on it, which the `&mut self` borrow prevents.
        unsafe {
            let entry = libc::readdir(self.dir.as_ptr());
            if entry.is_null() {
                None
            } else {
                Some(CStr::from_ptr((*entry).d_name.as_ptr()))
            }
        }
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        // SAFETY: `self.dir` is open and closed exactly once, here.
        unsafe {
            libc::closedir(self.dir.as_ptr());
        }
    }
}

/// The task directories (`/proc/<pid>/task/<tid>`) of every thread of every process but
/// this one (its threads enter other namespaces on its own business).
pub fn others_tasks() -> impl Iterator<Item = std::path::PathBuf> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(move |p| {
            p.file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()) && name != me)
        })
        .flat_map(|p| {
            std::fs::read_dir(p.path().join("task"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|task| task.path())
}

/// The CPU time process `pid` has used (user + system, all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime + stime` from a `/proc/<pid>/stat` line: fields 14 and 15, counted after the
/// command name, which is in parentheses and may hold spaces and parentheses itself.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A task's (or process's) cgroup v2 directory, from its `cgroup` file, under `root`.
pub fn cgroup_of(task: &std::path::Path, root: &std::path::Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(task.join("cgroup")).ok()?;
    let relative = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(relative.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4321 (a (b) c) S 1 4321 4321 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("4321 (x) S 1"), None);
    }

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(parse_socket_link(b"socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link(b"socket:[]"), None);
        assert_eq!(parse_socket_link(b"socket:[12x]"), None);
        assert_eq!(parse_socket_link(b"pipe:[12345]"), None);
        assert_eq!(parse_socket_link(b"/dev/null"), None);
        assert_eq!(parse_socket_link(b"anon_inode:[eventfd]"), None);
    }

    #[test]
    fn finds_its_own_socket() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .unwrap()
            .ino();
        let owners = find_socket_owners(&HashSet::from([inode])).unwrap();
        let me = std::process::id();
        let processes = &owners.by_inode[&inode];
        assert!(processes.iter().any(|p| p.pid == me), "{processes:?}");
    }
}
