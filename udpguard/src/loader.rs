//! Loading the embedded eBPF object and attaching its programs to a cgroup.
use std::fs::File;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, ProgramError, links::FdLink,
    },
};
use sha2::{Digest as _, Sha256};
use udpguard_common::{map_names, program_names};

use crate::{
    cgroup::Cgroup,
    error::{Error, Result},
};

/// The eBPF object built from `udpguard-ebpf` by the build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udpguard"));

/// The identity of this binary's kernel programs: pins made from another object differ.
pub fn object_sha256() -> [u8; 32] {
    Sha256::digest(OBJECT).into()
}

/// The object, loaded into the kernel, programs verified but not yet attached.
pub struct LoadedGuard {
    pub ebpf: Ebpf,
    /// Whether the programs refuse through `bpf_set_retval` (any errno) or with EPERM only.
    pub set_retval: bool,
}

/// The attached programs' links, not yet pinned, with the names to pin them under.
pub type Links = [(&'static str, FdLink); 4];

impl LoadedGuard {
    /// Loads the programs that refuse with any errno, or, on a kernel without
    /// `bpf_set_retval` in these hooks, those that refuse with EPERM (unless `need_set_retval`).
    /// The conflict-event ring buffer gets `events_buffer` bytes.
    pub fn load(need_set_retval: bool, events_buffer: u32) -> Result<LoadedGuard> {
        let mut ebpf = EbpfLoader::new()
            // Ask for the verifier's log, so a rejection can show it.
            .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
            .map_max_entries(map_names::EVENTS, events_buffer)
            .load(OBJECT)
            .context("loading udpguard's maps from its embedded eBPF object")?;
        let set_retval = match load_connect(&mut ebpf, program_names::CONNECT4) {
            Ok(()) => true,
            Err(Error::VerifierRejected { ref log, .. }) if lacks_helper(log) => false,
            Err(err) => return Err(err),
        };
        if !set_retval && need_set_retval {
            return Err(Error::NoSetRetval);
        }
        for name in connect_programs(set_retval) {
            if name != program_names::CONNECT4 {
                load_connect(&mut ebpf, name)?;
            }
        }
        for name in [program_names::CREATE, program_names::RELEASE] {
            let program: &mut CgroupSock = program(&mut ebpf, name)?;
            verified(name, program.load())?;
        }
        Ok(LoadedGuard { ebpf, set_retval })
    }

    /// Attaches connect4, connect6, sock_create and sock_release to the cgroup and hands back
    /// the links, not yet pinned.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<Links> {
        let dir = File::open(&cgroup.path).map_err(crate::error::io(format!(
            "opening {}",
            cgroup.path.display()
        )))?;
        let [v4, v6] = connect_programs(self.set_retval);
        // A cgroup *link* always joins the hook's multi-program list (the kernel refuses
        // flags on link_create), so Single still lets other tools' programs sit beside ours.
        let mut connect = |name: &'static str| -> Result<FdLink> {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let id = program
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name}"))?;
            let link = program.take_link(id).context("taking the link")?;
            Ok(FdLink::try_from(link).context("not a link")?)
        };
        let (v4, v6) = (connect(v4)?, connect(v6)?);

        let mut sock = |name: &'static str| -> Result<FdLink> {
            let program: &mut CgroupSock = program(&mut self.ebpf, name)?;
            let id = program
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name}"))?;
            let link = program.take_link(id).context("taking the link")?;
            Ok(FdLink::try_from(link).context("not a link")?)
        };
        let (create, release) = (sock(program_names::CREATE)?, sock(program_names::RELEASE)?);

        Ok([
            ("connect4", v4),
            ("connect6", v6),
            ("create", create),
            ("release", release),
        ])
    }
}

/// The connect4 and connect6 programs to use.
const fn connect_programs(set_retval: bool) -> [&'static str; 2] {
    if set_retval {
        [program_names::CONNECT4, program_names::CONNECT6]
    } else {
        [program_names::CONNECT4_PLAIN, program_names::CONNECT6_PLAIN]
    }
}

/// The program `name` of the object, as its type `P` (`CgroupSockAddr`, `CgroupSock`).
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?;
    Ok(program
        .try_into()
        .with_context(|| format!("{name} has an unexpected program type"))?)
}

fn load_connect(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let program: &mut CgroupSockAddr = program(ebpf, name)?;
    verified(name, program.load())
}

/// Turns a load error into one that names the program and shows the verifier's log.
fn verified(name: &'static str, loaded: Result<(), ProgramError>) -> Result<()> {
    match loaded {
        Ok(()) => Ok(()),
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            if io_error.raw_os_error() == Some(libc::EINVAL) && !cgroup_sock_addr_supported() {
                return Err(Error::KernelTooOld);
            }
            Err(Error::VerifierRejected {
                program: name,
                cause: io_error,
                log: log_tail(&verifier_log.to_string(), LOG_TAIL_LINES),
            })
        }
        Err(err) => Err(anyhow::Error::new(err)
            .context(format!("loading {name}"))
            .into()),
    }
}

/// How much of a verifier log an error shows: the reason is at its end.
const LOG_TAIL_LINES: usize = 40;

/// The last `lines` lines of a verifier log, saying how many were left out.
fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    if all.len() <= lines {
        return log.to_string();
    }
    let cut = all.len() - lines;
    format!("[{cut} earlier lines left out]\n{}", all[cut..].join("\n"))
}

/// The verifier's words for a helper this kernel does not offer to the program type.
fn lacks_helper(log: &str) -> bool {
    ["unknown func", "invalid func", "cannot use helper"]
        .iter()
        .any(|words| log.contains(words))
}

fn cgroup_sock_addr_supported() -> bool {
    aya::sys::is_program_supported(aya::programs::ProgramType::CgroupSockAddr).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_embedded_and_hashed() {
        assert!(
            OBJECT.starts_with(b"\x7fELF"),
            "the eBPF object is not an ELF file"
        );
        assert_eq!(object_sha256(), object_sha256());
    }

    #[test]
    fn shows_the_end_of_a_long_verifier_log() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let tail = log_tail(&log, 3);
        assert_eq!(
            tail,
            "[97 earlier lines left out]\nline 98\nline 99\nline 100"
        );
        assert_eq!(log_tail("short\n", 3), "short\n");
    }

    #[test]
    fn recognises_a_missing_helper() {
        assert!(lacks_helper(
            "0: (85) call bpf_set_retval#187\nunknown func bpf_set_retval#187"
        ));
        assert!(!lacks_helper("R1 invalid mem access 'scalar'"));
    }
}
