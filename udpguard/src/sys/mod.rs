//! What udpguard asks of the operating system, one module per interface: the bpf(2) calls aya
//! does not make ([`bpf`]), the kernel's BTF ([`btf`]), rtnetlink ([`rtnl`]), `NETLINK_SOCK_DIAG` ([`sock_diag`]),
//! network namespaces ([`netns`]), /proc ([`procfs`]) and the mount tables ([`mounts`]).
pub mod bpf;
pub mod btf;
pub mod mounts;
pub mod netns;
pub mod procfs;
pub mod rtnl;
pub mod sock_diag;
pub mod socket;
