//! The bpf(2) commands aya does not offer: opening a pinned object as a raw fd, detaching a
//! link at once (unpinning alone detaches it only after an RCU grace period), and what
//! re-attaching a link someone else detached takes (its info, its program, a new link, a pin).
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
