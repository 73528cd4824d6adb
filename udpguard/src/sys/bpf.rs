//! The bpf(2) commands aya does not offer: opening a pinned object as a raw fd, detaching a
//! link at once (unpinning alone detaches it only after an RCU grace period), what
//! re-attaching a link someone else detached takes (its info, its program, a new link, a pin),
//! and the probe for 64-bit atomic fetch operations.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `union bpf_attr`, large enough for the commands used here, zero-filled.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BpfAttr,
            size_of::<BpfAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a pinned BPF object (map, program or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = BpfAttr([0; 128]);
    // obj_get: { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    attr.0[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches a link from its hook now; the link object lives on until its last reference goes.
pub fn link_detach(link: &OwnedFd) -> io::Result<()> {
    let mut attr = BpfAttr([0; 128]);
    // link_detach: { __u32 link_fd; }
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;

/// What the kernel says of a cgroup link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    pub link_id: u32,
    pub prog_id: u32,
    /// The cgroup it is attached to; 0 once someone detached it (`BPF_LINK_DETACH`).
    pub cgroup_id: u64,
    pub attach_type: u32,
}

/// Reads a link's `bpf_link_info` (the fields every cgroup link has).
pub fn link_info(link: &OwnedFd) -> io::Result<CgroupLinkInfo> {
    // bpf_link_info: { u32 type; u32 id; u32 prog_id; union (8-aligned, at 16) { cgroup:
    // { u64 cgroup_id; u32 attach_type; } } }: the first 32 bytes are enough.
    let mut info = [0u8; 32];
    let mut attr = BpfAttr([0; 128]);
    // info: { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let u32_at = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().unwrap());
    Ok(CgroupLinkInfo {
        link_id: u32_at(4),
        prog_id: u32_at(8),
        cgroup_id: u64::from_ne_bytes(info[16..24].try_into().unwrap()),
        attach_type: u32_at(24),
    })
}

/// Opens the program with this id.
pub fn prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = BpfAttr([0; 128]);
    // { __u32 prog_id; __u32 next_id; __u32 open_flags; }
    attr.0[..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches `prog` to the cgroup open as `cgroup` with a new link.
pub fn link_create(
    prog: &OwnedFd,
    cgroup: &impl std::os::fd::AsRawFd,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = BpfAttr([0; 128]);
    // link_create: { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; }
    attr.0[..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
    attr.0[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins a BPF object at `path` (a bpffs path that does not exist yet).
pub fn obj_pin(object: &OwnedFd, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = BpfAttr([0; 128]);
    // obj_pin: { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    attr.0[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr.0[8..12].copy_from_slice(&(object.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Lets this process lock as much memory as it may for BPF maps and programs. Kernels before
/// 5.11 charge them to `RLIMIT_MEMLOCK` (summed over every process of the user, pinned objects
/// included), whose default of 64 KiB or 8 MiB a few attachments outgrow, and the kernel then
/// refuses with EPERM; later kernels charge the memory cgroup and ignore the limit. Raises it
/// to unlimited where allowed (CAP_SYS_RESOURCE), else the soft limit to the hard one.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscalls on a valid rlimit struct.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return;
        }
        let mut current = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut current) == 0 {
            current.rlim_cur = current.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &current);
        }
    }
}

/// One BPF instruction: opcode, registers (destination in the low nibble), offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let regs = (dst & 0xf) | (src << 4);
    let [o0, o1] = off.to_le_bytes();
    let [i0, i1, i2, i3] = imm.to_le_bytes();
    u64::from_le_bytes([code, regs, o0, o1, i0, i1, i2, i3])
}

/// Whether this kernel's verifier accepts 64-bit `BPF_CMPXCHG` and `BPF_XCHG` (the atomic
/// fetch operations of Linux 5.12), which the claims are built on. A real probe: it loads a
/// five-instruction socket filter that compare-and-swaps and exchanges a stack slot, so a
/// distribution kernel that backported them counts as having them. Before 5.12 these
/// encodings were reserved fields of `BPF_XADD`, and the load fails with EINVAL.
pub fn atomic_fetch_supported() -> io::Result<bool> {
    raise_memlock_limit();
    const MOV64_IMM: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
    const STX_MEM_DW: u8 = 0x03 | 0x60 | 0x18; // BPF_STX | BPF_MEM | BPF_DW
    const ATOMIC_DW: u8 = 0x03 | 0xc0 | 0x18; // BPF_STX | BPF_ATOMIC | BPF_DW
    const EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT
    const CMPXCHG: i32 = 0xf0 | 0x01; // BPF_CMPXCHG | BPF_FETCH
    const XCHG: i32 = 0xe0 | 0x01; // BPF_XCHG | BPF_FETCH
    let insns: [u64; 7] = [
        insn(MOV64_IMM, 0, 0, 0, 0),         // r0 = 0
        insn(STX_MEM_DW, 10, 0, -8, 0),      // *(u64 *)(r10 - 8) = r0
        insn(MOV64_IMM, 1, 0, 0, 1),         // r1 = 1
        insn(ATOMIC_DW, 10, 1, -8, CMPXCHG), // r0 = cmpxchg(r10 - 8, r0, r1)
        insn(ATOMIC_DW, 10, 1, -8, XCHG),    // r1 = xchg(r10 - 8, r1)
        insn(MOV64_IMM, 0, 0, 0, 0),         // r0 = 0
        insn(EXIT, 0, 0, 0, 0),              // exit
    ];
    let license = c"GPL";
    let mut attr = BpfAttr([0; 128]);
    // prog_load: { u32 prog_type; u32 insn_cnt; u64 insns; u64 license; ... }
    attr.0[..4].copy_from_slice(&BPF_PROG_TYPE_SOCKET_FILTER.to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr.0[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => {
            // SAFETY: the kernel returned a new program fd that nothing else owns; dropped.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            Ok(true)
        }
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // r0 = cmpxchg_64(r10 - 8, r0, r1): db 1a f8 ff f1 00 00 00
        assert_eq!(
            insn(0xdb, 10, 1, -8, 0xf1).to_le_bytes(),
            [0xdb, 0x1a, 0xf8, 0xff, 0xf1, 0, 0, 0]
        );
    }
}
