//! Empty programs on the guard's three hooks, loaded only by the `connect_cost` benchmark: what
//! any program on connect4, sock_create and sock_release costs on this kernel (the cgroup's
//! program array, the call into the program and its return), measured in the same run as the
//! guard, so the guard's own share can be read apart from it.
use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};

use crate::ALLOW;

#[cgroup_sock_addr(connect4)]
pub fn floor_connect4(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock(sock_create)]
pub fn floor_create(_ctx: SockContext) -> i32 {
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn floor_release(_ctx: SockContext) -> i32 {
    ALLOW
}
