//! Errors the user can act on: each message says what is wrong and what to do.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "udpguard needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON, or CAP_SYS_ADMIN) to {action}: run it with sudo"
    )]
    NotPrivileged { action: &'static str },

    #[error(
        "no cgroup v2 hierarchy is mounted (none in /proc/self/mounts): mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,

    #[error(
        "cgroup path {path} does not exist: create it (mkdir) or pass an existing cgroup v2 directory"
    )]
    CgroupMissing { path: PathBuf },

    #[error(
        "{path} is not a cgroup v2 directory (cgroup2 is mounted at {root}): pass a directory under it"
    )]
    NotCgroup2 { path: PathBuf, root: PathBuf },

    #[error(
        "no BPF filesystem at {path} and mounting one failed ({source}): run `mount -t bpf bpf {path}` as root"
    )]
    NoBpffs {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "the pin root {root} is not on a BPF filesystem ({parent} is no bpffs), and udpguard mounts one only at /sys/fs/bpf: mount a bpffs on {parent} (`mount -t bpf bpf {parent}`) or point UDPGUARD_PIN_ROOT into one"
    )]
    PinRootNotOnBpffs { root: PathBuf, parent: PathBuf },

    #[error(
        "the pin root {root} is not udpguard's to use: {why}; someone else made it or opened it up. Remove it (`rm -r {root}`: nothing of udpguard's can be in it) and run again"
    )]
    PinRootNotOurs { root: PathBuf, why: String },

    #[error(
        "the pin root {root} is locked by {holder} (waited {waited} s): another attach or detach is running, or is stuck; wait for it, or stop that process"
    )]
    Locked {
        root: PathBuf,
        waited: u64,
        holder: String,
    },

    #[error(
        "this kernel cannot run cgroup connect4/connect6 programs (needs Linux >= 5.7 with CONFIG_CGROUP_BPF)"
    )]
    KernelTooOld,

    #[error(
        "this kernel has no bpf_set_retval for connect hooks (needs Linux >= 5.18), so it can only refuse with EPERM: use --errno eperm"
    )]
    NoSetRetval,

    #[error("the kernel's verifier rejected {program}: {cause}\nverifier log:\n{log}")]
    VerifierRejected {
        program: &'static str,
        cause: std::io::Error,
        log: String,
    },

    #[error("nothing is attached to {cgroup}: `udpguard status` lists what is attached")]
    NotAttached { cgroup: PathBuf },

    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },

    /// Anything else from aya or the kernel, with its whole chain of causes.
    #[error("{0:#}")]
    Bpf(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        context: context.into(),
        source,
    }
}
