//! Who holds the tuple a conflicting `connect()` wanted: the process owning the ESTABLISHED
//! socket that already has it.
//!
//! 1. Enter the caller's network namespace: the one of `/proc/<pid>/ns/net`, confirmed by its
//!    cookie (`SO_NETNS_COOKIE`) against the event's, since the pid may be gone or reused; if
//!    it is not that one, any namespace on the host with that cookie.
//! 2. Ask `NETLINK_SOCK_DIAG` the kernel's exact lookup of the tuple. In enforce mode it
//!    answers the holder. In audit mode the caller's connect went through, and the kernel
//!    answers the caller (the newest socket wins), so the sockets on the tuple are listed
//!    and the holder is one whose cookie is not the caller's.
//! 3. Map the socket's inode to processes through `/proc/*/fd`.
//!
//! Best effort, never a wrong name: any doubt gives `None`.
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
};

use anyhow::Context as _;

use super::record::{Conflict, Holder};
use crate::sys::{
    netns::{self, NetworkNamespace},
    procfs,
    sock_diag::{CookiedSocket, SockDiag},
    socket::FourTuple,
};

/// How many namespace cookies a finder remembers before it forgets them all.
const MAX_REMEMBERED_NAMESPACES: usize = 4096;

/// Finds holders; remembers which namespace has which cookie.
#[derive(Default)]
pub struct HolderFinder {
    /// Network namespaces by cookie: each was confirmed when found, and is again on use.
    namespaces: HashMap<u64, NetworkNamespace>,
}

impl HolderFinder {
    /// The holder of `conflict`'s tuple; `None` when it cannot be told for sure.
    pub fn find(&mut self, conflict: &Conflict) -> Option<Holder> {
        match self.try_find(conflict) {
            Ok(holder) => holder,
            Err(error) => {
                tracing::debug!(
                    "no holder for {} -> {}: {error:#}",
                    conflict.local,
                    conflict.remote
                );
                None
            }
        }
    }

    fn try_find(&mut self, conflict: &Conflict) -> anyhow::Result<Option<Holder>> {
        let Some(mut diag) = self.sock_diag_in(conflict.netns_cookie, conflict.pid)? else {
            return Ok(None);
        };
        let tuple = FourTuple {
            local: conflict.local,
            remote: conflict.remote,
        };
        let Some(inode) = holding_inode(&mut diag, &tuple, conflict.sock_cookie)? else {
            return Ok(None);
        };
        let owners =
            procfs::find_socket_owners(&HashSet::from([inode])).context("cannot read /proc")?;
        let processes = owners.by_inode.get(&inode).cloned().unwrap_or_default();
        Ok(processes.first().map(|first| Holder {
            pid: first.pid,
            comm: first.comm.clone(),
            inode,
            others: processes.len() - 1,
        }))
    }

    /// A sock_diag socket in the network namespace whose cookie is `cookie`, trying the
    /// caller's (`pid`) first; `None` if no namespace has that cookie any more.
    fn sock_diag_in(&mut self, cookie: u64, pid: u32) -> anyhow::Result<Option<SockDiag>> {
        if let Some(namespace) = namespace_of_pid(pid)
            && let Some(diag) = self.open_if_cookie(&namespace, cookie)
        {
            return Ok(Some(diag));
        }
        if let Some(namespace) = self.namespaces.get(&cookie).cloned() {
            if let Some(diag) = self.open_if_cookie(&namespace, cookie) {
                return Ok(Some(diag));
            }
            self.namespaces.remove(&cookie);
        }
        // The caller is gone (or its pid reused): look through every namespace on the host.
        let discovery = netns::discover().context("cannot list the network namespaces")?;
        for namespace in discovery.namespaces {
            if let Some(diag) = self.open_if_cookie(&namespace, cookie) {
                return Ok(Some(diag));
            }
        }
        Ok(None)
    }

    /// Opens a sock_diag socket in `namespace` if its cookie is `cookie`; remembers the
    /// cookie of every namespace it opens.
    fn open_if_cookie(&mut self, namespace: &NetworkNamespace, cookie: u64) -> Option<SockDiag> {
        let opened = netns::open_in(namespace, || {
            Ok((SockDiag::open()?, netns::current_cookie()?))
        });
        match opened {
            Ok((diag, found)) => {
                if self.namespaces.len() >= MAX_REMEMBERED_NAMESPACES {
                    // Namespaces come and go (containers): start over rather than grow.
                    self.namespaces.clear();
                }
                self.namespaces.insert(found, namespace.clone());
                (found == cookie).then_some(diag)
            }
            Err(error) => {
                tracing::debug!("network namespace {}: {error:#}", namespace.name);
                None
            }
        }
    }
}

/// The inode of a socket other than the caller's (`caller_cookie`) that is connected on
/// exactly `tuple`: the one the kernel's lookup returns, else (when that is the caller's
/// own, as in audit mode) the oldest other one on the tuple.
fn holding_inode(
    diag: &mut SockDiag,
    tuple: &FourTuple,
    caller_cookie: u64,
) -> anyhow::Result<Option<u64>> {
    let holds = |s: &CookiedSocket| s.cookie != caller_cookie && FourTuple::of(&s.socket) == *tuple;
    let receiving = diag
        .receiving_socket(tuple, 0)
        .context("exact sock_diag lookup")?;
    if let Some(socket) = receiving.filter(holds) {
        return Ok(Some(socket.socket.inode));
    }
    let on_tuple = diag.connected_on(tuple).context("sock_diag dump")?;
    // Inodes grow with time: the lowest is the socket that had the tuple first.
    Ok(on_tuple
        .iter()
        .filter(|s| holds(s))
        .map(|s| s.socket.inode)
        .min())
}

/// The network namespace of process `pid`, if it still exists.
fn namespace_of_pid(pid: u32) -> Option<NetworkNamespace> {
    let path = crate::sys::netns::path_of_pid(pid.into());
    let inode = std::fs::metadata(&path).ok()?.ino();
    Some(NetworkNamespace {
        name: format!("pid {pid}"),
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_cookie_is_stable_and_nonzero() {
        let first = netns::current_cookie().unwrap();
        assert_ne!(first, 0);
        assert_eq!(netns::current_cookie().unwrap(), first);
    }

    #[test]
    fn finds_the_namespace_of_this_process() {
        let me = namespace_of_pid(std::process::id()).unwrap();
        assert_eq!(Some(me.inode), netns::current_inode().ok());
        assert!(namespace_of_pid(u32::MAX).is_none());
    }
}
