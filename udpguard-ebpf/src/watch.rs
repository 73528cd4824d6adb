//! The watch: where the agent's fast path serves a cgroup below the cgroup root, sockets
//! outside it can connect in the same namespaces (a process there, or a thread of one that
//! `setns()`ed in), and the claims would not hold their tuples. The agent attaches these
//! programs to an ancestor cgroup that holds every such process (the root by default); they
//! run after the guard's own programs for a guarded socket's connect, and alone for another's.
//! The guard's connect programs mark each connect they see on this CPU with the socket's
//! cookie; a connect without the mark is an outsider's, and its namespace's index is noted
//! incomplete at that moment, before the connect can hold anything.
use aya_ebpf::{
    btf_maps::PerCpuArray, helpers::generated::bpf_get_socket_cookie, macros::btf_map,
    programs::SockAddrContext,
};

use crate::{IPPROTO_UDP, SOCK_DGRAM, fastpath, load, netns_cookie};

/// The cookie of the last socket whose connect the guard's programs saw on this CPU.
#[btf_map]
static SEEN: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Called by the guard's connect programs (when a watch is on): the connect of the socket with
/// this cookie is seen.
#[inline(always)]
pub fn mark(cookie: u64) {
    if let Some(seen) = SEEN.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *seen = cookie };
    }
}

/// The watch program's body: a UDP connect the guard did not mark is an outsider's.
#[inline(always)]
pub fn on_connect(ctx: &SockAddrContext) {
    let addr = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr.
    let udp =
        unsafe { load(&(*addr).type_) == SOCK_DGRAM && load(&(*addr).protocol) == IPPROTO_UDP };
    if !udp {
        return;
    }
    // SAFETY: a plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(addr.cast()) };
    let Some(seen) = SEEN.get_ptr_mut(0) else {
        fastpath::note_unindexed(netns_cookie(addr));
        return;
    };
    // SAFETY: this CPU's slot. Another connect may have run on this CPU in between (this task
    // preempted): then the mark is another socket's, and this one counts as unseen, which is
    // only ever more careful.
    unsafe {
        if *seen == cookie {
            *seen = 0;
            return;
        }
    }
    fastpath::note_unindexed(netns_cookie(addr));
}
