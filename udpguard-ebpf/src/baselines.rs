//! Programs the `connect_cost` benchmark measures udpguard against, in the same run: an object
//! of its own (`udpguard-baselines`), so that editing them never changes the shipped object,
//! whose hash is an attachment's identity.
//! - The floor: empty programs on the guard's three hooks, what any program on connect4,
//!   sock_create and sock_release costs on this kernel (the cgroup's program array, the call
//!   into the program and its return).
//! - The reference design udpguard grew from: one connect4 program that looks the 4-tuple up
//!   with `bpf_sk_lookup_udp` and refuses with EPERM when an ESTABLISHED socket holds it (IPv4,
//!   sockets bound to a full address and port only, racy).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_ESTABLISHED, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as TupleV4,
    },
    helpers::generated::{bpf_sk_lookup_udp, bpf_sk_release},
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_UDP: u32 = 17;

/// Reads a context field with one load of its own size, as the verifier wants.
#[inline(always)]
unsafe fn load<T: Copy>(field: &T) -> T {
    // SAFETY: `field` is a valid reference.
    unsafe { core::ptr::read_volatile(field) }
}

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

#[cgroup_sock_addr(connect4)]
pub fn reference_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr whose `sk` is a full socket; `tuple`
    // lives across the lookup, and a found socket is released.
    unsafe {
        let addr = ctx.sock_addr;
        if load(&(*addr).type_) != SOCK_DGRAM || load(&(*addr).protocol) != IPPROTO_UDP {
            return ALLOW;
        }
        let sk = (*addr).__bindgen_anon_1.sk;
        let mut tuple: bpf_sock_tuple = core::mem::zeroed();
        tuple.__bindgen_anon_1.ipv4 = TupleV4 {
            saddr: load(&(*addr).user_ip4),
            daddr: load(&(*sk).src_ip4),
            sport: load(&(*addr).user_port) as u16,
            dport: (load(&(*sk).src_port) as u16).to_be(),
        };
        let size = size_of::<TupleV4>() as u32;
        let found = bpf_sk_lookup_udp(addr.cast(), &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0);
        if found.is_null() {
            return ALLOW;
        }
        let established = load(&(*found).state) == BPF_TCP_ESTABLISHED;
        bpf_sk_release(found.cast());
        if established { REFUSE } else { ALLOW }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
