//! Loading the embedded eBPF object and attaching its programs to a cgroup.
use std::fs::File;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink},
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

impl LoadedGuard {
    /// Loads the programs that refuse with any errno, or, on a kernel without
    /// `bpf_set_retval` in these hooks, those that refuse with EPERM (unless `need_set_retval`).
    /// The conflict-event ring buffer gets `events_buffer` bytes.
    pub fn load(need_set_retval: bool, events_buffer: u32) -> Result<LoadedGuard> {
        let mut ebpf = EbpfLoader::new()
            .set_max_entries(map_names::EVENTS, events_buffer)
            .load(OBJECT)
            .context("parsing udpguard's embedded eBPF object")?;
        let set_retval = match load_program(&mut ebpf, program_names::CONNECT4) {
            Ok(()) => true,
            Err(Error::VerifierRejected { ref log, .. }) if lacks_helper(log) => false,
            Err(err) => return Err(err),
        };
        if !set_retval && need_set_retval {
            return Err(Error::NoSetRetval);
        }
        let names = programs(set_retval);
        for name in names {
            if name != program_names::CONNECT4 {
                load_program(&mut ebpf, name)?;
            }
        }
        Ok(LoadedGuard { ebpf, set_retval })
    }

    /// Attaches connect4 and connect6 to the cgroup in multi mode (programs of other tools,
    /// Cilium's say, may sit on the same hooks) and hands back the links, not yet pinned.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<[FdLink; 2]> {
        let dir = File::open(&cgroup.path).map_err(crate::error::io(format!(
            "opening {}",
            cgroup.path.display()
        )))?;
        let [v4, v6] = programs(self.set_retval);
        Ok([self.attach_one(v4, &dir)?, self.attach_one(v6, &dir)?])
    }

    fn attach_one(&mut self, name: &str, cgroup: &File) -> Result<FdLink> {
        let program = program_mut(&mut self.ebpf, name)?;
        // A cgroup *link* always joins the hook's multi-program list (the kernel refuses
        // flags on link_create), so Single here still lets other programs sit beside ours.
        let id = program
            .attach(cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name}"))?;
        let link = program
            .take_link(id)
            .with_context(|| format!("taking the {name} link"))?;
        Ok(FdLink::try_from(link).with_context(|| format!("{name} was not attached by a link"))?)
    }
}

/// The connect4 and connect6 programs to use.
const fn programs(set_retval: bool) -> [&'static str; 2] {
    if set_retval {
        [program_names::CONNECT4, program_names::CONNECT6]
    } else {
        [program_names::CONNECT4_PLAIN, program_names::CONNECT6_PLAIN]
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?;
    Ok(program
        .try_into()
        .with_context(|| format!("{name} is not a cgroup sock_addr program"))?)
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    match program_mut(ebpf, name)?.load() {
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
                log: verifier_log.to_string(),
            })
        }
        Err(err) => Err(anyhow::Error::new(err)
            .context(format!("loading {name}"))
            .into()),
    }
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
    fn recognises_a_missing_helper() {
        assert!(lacks_helper(
            "0: (85) call bpf_set_retval#187\nunknown func bpf_set_retval#187"
        ));
        assert!(!lacks_helper("R1 invalid mem access 'scalar'"));
    }
}
