//! Loading the embedded eBPF object and attaching its programs to a cgroup.
//!
//! The object holds three builds of the connect programs (see `udpguard-ebpf/src/main.rs`).
//! A probe (a tiny program with a 64-bit compare-and-swap) says whether the kernel has the
//! atomics the claims need (Linux 5.12); where it has, the loader uses the first build the
//! verifier accepts. [`Features`] says what is off and why. That is the one compatibility
//! check: everything else reads it. `UDPGUARD_FORCE_COMPAT=1` forces the older-kernel build.
use std::{fs::File, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, ProgramError, links::FdLink,
    },
};
use sha2::{Digest as _, Sha256};
use udpguard_common::{
    map_names,
    meta::features,
    names::{global_names, link_pins, pin_of},
    program_names,
};

use crate::{
    cgroup::Cgroup,
    error::{Error, Result},
    tables::TableSizes,
};

/// The eBPF object built from `udpguard-ebpf` by the build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udpguard"));

/// The identity of this binary's kernel programs: pins made from another object differ.
pub fn object_sha256() -> [u8; 32] {
    Sha256::digest(OBJECT).into()
}

/// The environment variable that, set to `1`, forces the older-kernel mode (the lookup alone:
/// no claims, no fast path, EPERM only) on any kernel, so that mode is tested on new ones.
pub const FORCE_COMPAT_ENV: &str = "UDPGUARD_FORCE_COMPAT";

/// True when [`FORCE_COMPAT_ENV`] asks for the older-kernel mode.
pub fn compat_forced() -> bool {
    std::env::var_os(FORCE_COMPAT_ENV).is_some_and(|v| v == "1")
}

/// The environment variable that, set to `1`, makes the programs read the reuse options with
/// `bpf_getsockopt` even where the kernel's BTF places them (as on a kernel without BTF), so
/// that way is tested on kernels with BTF.
pub const REUSE_BY_GETSOCKOPT_ENV: &str = "UDPGUARD_REUSE_BY_GETSOCKOPT";

/// Where the programs read the reuse options: from the kernel's BTF, unless
/// [`REUSE_BY_GETSOCKOPT_ENV`] says otherwise; a mask of 0 keeps `bpf_getsockopt`.
fn reuse_read() -> (u32, u32) {
    if std::env::var_os(REUSE_BY_GETSOCKOPT_ENV).is_some_and(|v| v == "1") {
        return (0, 0);
    }
    crate::sys::btf::reuse_bits().map_or((0, 0), |bits| (bits.word, bits.mask))
}

/// What the loaded programs can do on this kernel (bits of `udpguard_common::meta::features`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features(pub u32);

impl Features {
    /// Refusals with any errno (`bpf_set_retval`, Linux 5.18+).
    pub const fn set_retval(self) -> bool {
        self.0 & features::SET_RETVAL != 0
    }

    /// Claims: no race window, and the agent's fast path (64-bit BPF atomics, Linux 5.12+).
    pub const fn claims(self) -> bool {
        self.0 & features::CLAIMS != 0
    }

    /// The claims are off because [`FORCE_COMPAT_ENV`] said so, not for want of atomics.
    pub const fn forced_compat(self) -> bool {
        self.0 & features::FORCED_COMPAT != 0
    }

    /// The build in use, for `status --json`: `full` (claims, any errno), `eperm-only`
    /// (claims, EPERM only) or `compat` (the kernel's lookup alone, EPERM only).
    pub const fn mode(self) -> &'static str {
        if self.set_retval() {
            "full"
        } else if self.claims() {
            "eperm-only"
        } else {
            "compat"
        }
    }

    /// What is off, and why, for `attach`, `status`, the agent and metrics to say plainly.
    pub fn off(self) -> Vec<Off> {
        let kernel = kernel_version();
        let no_atomics = if self.forced_compat() {
            format!("forced by {FORCE_COMPAT_ENV}=1 (kernel {kernel} has BPF atomic fetch ops)")
        } else {
            format!("kernel {kernel} lacks BPF atomic fetch ops (64-bit cmpxchg/xchg), needs 5.12")
        };
        let mut off = Vec::new();
        if !self.claims() {
            off.push(Off {
                feature: "race_protection",
                what: "race protection is off: two sockets connecting to one tuple at the same \
                       instant can both get through (a duplicate of an already connected \
                       socket is still refused, by the kernel's lookup)",
                why: no_atomics.clone(),
            });
            off.push(Off {
                feature: "fast_path",
                what: "the fast path is off: every UDP connect runs the kernel's lookup (a walk \
                       of the sockets on its local port)",
                why: no_atomics.clone(),
            });
            off.push(Off {
                feature: "device_bound_holders",
                what: "sockets bound to a device (SO_BINDTODEVICE) are not protected: the \
                       kernel's lookup cannot see them and no claim stands for them, so a \
                       connect beside one goes ahead (counted device_bound)",
                why: no_atomics,
            });
        }
        if crate::sys::netns::current_cookie().is_err() {
            off.push(Off {
                feature: "wildcard_bound",
                what: "wildcard-bound sockets (0.0.0.0 / [::], most clients) are not checked, \
                       even with `udpguard run`: its route mirror must learn each network \
                       namespace's cookie, and they pass (counted wildcard)",
                why: format!("kernel {kernel} has no SO_NETNS_COOKIE, needs 5.14"),
            });
        }
        if !self.set_retval() {
            let why = if self.forced_compat() {
                format!(
                    "forced by {FORCE_COMPAT_ENV}=1 (the older-kernel build refuses with EPERM)"
                )
            } else {
                format!("kernel {kernel} has no bpf_set_retval for connect hooks, needs 5.18")
            };
            off.push(Off {
                feature: "errno_choice",
                what: "refusals are EPERM only (--errno eaddrinuse/eaddrnotavail cannot be used)",
                why,
            });
        }
        off
    }

    /// [`Self::off`] as sentences.
    pub fn missing(self) -> Vec<String> {
        self.off().iter().map(Off::to_string).collect()
    }

    /// The connect programs of this build.
    const fn connect_programs(self) -> [&'static str; 2] {
        if self.set_retval() {
            [program_names::CONNECT4, program_names::CONNECT6]
        } else if self.claims() {
            [program_names::CONNECT4_PLAIN, program_names::CONNECT6_PLAIN]
        } else {
            [program_names::CONNECT4_BASIC, program_names::CONNECT6_BASIC]
        }
    }
}

/// One thing the programs cannot do here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Off {
    /// A short name (`race_protection`, `fast_path`, `device_bound_holders`, `wildcard_bound`,
    /// `errno_choice`), for metrics labels.
    pub feature: &'static str,
    /// What is off and what that means.
    pub what: &'static str,
    /// Why it is off.
    pub why: String,
}

impl std::fmt::Display for Off {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}

/// This kernel's version, major.minor (`5.10`), from its release (`5.10.0-46-amd64`).
fn kernel_version() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version: Vec<&str> = release.trim().splitn(3, ['.', '-']).take(2).collect();
    if version.len() == 2 {
        version.join(".")
    } else {
        "(unknown version)".to_string()
    }
}

/// The object, loaded into the kernel, programs verified but not yet attached.
pub struct LoadedGuard {
    pub ebpf: Ebpf,
    pub features: Features,
    pub sizes: TableSizes,
}

/// The attached programs' links, not yet pinned, with the names to pin them under.
pub type Links = Vec<(&'static str, FdLink)>;

impl LoadedGuard {
    /// Loads the best build of the programs this kernel accepts (failing if `need_set_retval`
    /// and it has no `bpf_set_retval`), with an `events_buffer`-byte ring buffer and tables of
    /// `sizes` (not made without claims). Without 64-bit atomic fetch operations (probed), or
    /// with [`FORCE_COMPAT_ENV`]`=1`, that is the older-kernel build: the lookup alone.
    pub fn load(
        need_set_retval: bool,
        events_buffer: u32,
        sizes: TableSizes,
    ) -> Result<LoadedGuard> {
        crate::sys::bpf::raise_memlock_limit();
        // The claims need 64-bit atomic fetch operations (Linux 5.12): a real probe decides,
        // before anything is sized for them.
        let forced = compat_forced();
        let atomics = !forced
            && crate::sys::bpf::atomic_fetch_supported()
                .context("probing the kernel for BPF atomic fetch operations")?;
        if !atomics {
            if need_set_retval {
                return Err(Error::NoSetRetval);
            }
            let features = Features(if forced { features::FORCED_COMPAT } else { 0 });
            let none = TableSizes::for_sockets(1);
            let mut ebpf = load_object(events_buffer, none)?;
            for name in features.connect_programs() {
                load_connect(&mut ebpf, name)?;
            }
            return Ok(LoadedGuard {
                ebpf,
                features,
                sizes: none,
            });
        }
        let mut ebpf = load_object(events_buffer, sizes)?;
        // The best build first; each fallback only for the verifier's word that this kernel
        // lacks what the build before needs.
        let (features, mut loaded) = match load_connect(&mut ebpf, program_names::CONNECT4) {
            Ok(()) => (
                Features(features::SET_RETVAL | features::CLAIMS),
                Some(program_names::CONNECT4),
            ),
            Err(Error::VerifierRejected { ref log, .. }) if lacks_atomics(log) => {
                (Features(0), None)
            }
            Err(Error::VerifierRejected { ref log, .. }) if lacks_helper(log) => {
                match load_connect(&mut ebpf, program_names::CONNECT4_PLAIN) {
                    Ok(()) => (
                        Features(features::CLAIMS),
                        Some(program_names::CONNECT4_PLAIN),
                    ),
                    Err(Error::VerifierRejected { ref log, .. }) if lacks_atomics(log) => {
                        (Features(0), None)
                    }
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        };
        if !features.set_retval() && need_set_retval {
            return Err(Error::NoSetRetval);
        }
        let (sizes, mut ebpf) = if features.claims() {
            (sizes, ebpf)
        } else {
            // No claims: load again without their tables (they would only take memory).
            let none = TableSizes::for_sockets(1);
            loaded = None;
            (none, load_object(events_buffer, none)?)
        };
        for name in features.connect_programs() {
            if Some(name) != loaded {
                load_connect(&mut ebpf, name)?;
            }
        }
        if features.claims() {
            for name in [program_names::CREATE, program_names::RELEASE] {
                let program: &mut CgroupSock = program(&mut ebpf, name)?;
                verified(name, program.load())?;
            }
        }
        Ok(LoadedGuard {
            ebpf,
            features,
            sizes,
        })
    }

    /// Attaches the programs to the cgroup (connect4, connect6, and with claims sock_create
    /// and sock_release) and hands back the links, not yet pinned.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<Links> {
        let dir = File::open(&cgroup.path).map_err(crate::error::io(format!(
            "opening {}",
            cgroup.path.display()
        )))?;
        let [v4, v6] = self.features.connect_programs();
        let mut links = vec![
            (
                link_pins::CONNECT4,
                attach_sock_addr(&mut self.ebpf, v4, &dir)?,
            ),
            (
                link_pins::CONNECT6,
                attach_sock_addr(&mut self.ebpf, v6, &dir)?,
            ),
        ];
        if self.features.claims() {
            for (pin, name) in [
                (link_pins::CREATE, program_names::CREATE),
                (link_pins::RELEASE, program_names::RELEASE),
            ] {
                let program: &mut CgroupSock = program(&mut self.ebpf, name)?;
                let id = program
                    .attach(&dir, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name}"))?;
                let link = program.take_link(id).context("taking the link")?;
                links.push((pin, FdLink::try_from(link).context("not a link")?));
            }
        }
        Ok(links)
    }
}

/// The object with its tables sized (`sizes`) and its ring buffer (`events_buffer` bytes).
fn load_object(events_buffer: u32, sizes: TableSizes) -> Result<Ebpf> {
    let claim_mask = sizes.claim_buckets - 1;
    let record_mask = sizes.records - 1;
    let (reuse_word, reuse_mask) = reuse_read();
    Ok(EbpfLoader::new()
        // Ask for the verifier's log, so a rejection can show it.
        .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
        .map_max_entries(map_names::EVENTS, events_buffer)
        .map_max_entries(map_names::CLAIMS, sizes.claim_buckets)
        .map_max_entries(map_names::RECORDS, sizes.records)
        .override_global(global_names::CLAIM_MASK, &claim_mask, true)
        .override_global(global_names::RECORD_MASK, &record_mask, true)
        .override_global(global_names::REUSE_WORD, &reuse_word, true)
        .override_global(global_names::REUSE_MASK, &reuse_mask, true)
        .load(OBJECT)
        .context("loading udpguard's maps from its embedded eBPF object")?)
}

/// A cgroup *link* always joins the hook's multi-program list (the kernel refuses flags on
/// link_create), so Single still lets other tools' programs sit beside ours.
fn attach_sock_addr(ebpf: &mut Ebpf, name: &'static str, cgroup: &File) -> Result<FdLink> {
    let program: &mut CgroupSockAddr = program(ebpf, name)?;
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching {name}"))?;
    let link = program.take_link(id).context("taking the link")?;
    Ok(FdLink::try_from(link).context("not a link")?)
}

/// The watch programs (see `udpguard-ebpf/src/watch.rs`), loaded against the maps of the
/// attachment pinned in `dir` and attached to `scope`; their links, not yet pinned.
pub fn attach_watch(dir: &Path, scope: &Cgroup) -> Result<Links> {
    let namespaces = dir.join(pin_of(map_names::NAMESPACES));
    let seen = dir.join(pin_of(map_names::SEEN));
    crate::sys::bpf::raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
        // Maps the watch programs do not use, as small as they go.
        .map_max_entries(map_names::EVENTS, 4096)
        .map_max_entries(map_names::BIRTHS, 1)
        .map_max_entries(map_names::UNSHARED_PORTS, 1)
        .map_max_entries(map_names::SHARED_PORTS, 1)
        .map_pin_path(map_names::NAMESPACES, &namespaces)
        .map_pin_path(map_names::SEEN, &seen)
        .load(OBJECT)
        .context("loading udpguard's watch programs")?;
    let dir = File::open(&scope.path).map_err(crate::error::io(format!(
        "opening {}",
        scope.path.display()
    )))?;
    let mut links = Links::new();
    for (pin, name) in [
        ("watch4", program_names::WATCH4),
        ("watch6", program_names::WATCH6),
    ] {
        load_connect(&mut ebpf, name)?;
        links.push((pin, attach_sock_addr(&mut ebpf, name, &dir)?));
    }
    Ok(links)
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

/// The verifier's words for a 64-bit compare-and-swap or exchange it does not know (before
/// Linux 5.12 they were reserved encodings of the atomic add).
fn lacks_atomics(log: &str) -> bool {
    [
        "uses reserved fields",
        "invalid atomic opcode",
        "unknown opcode",
    ]
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
    fn recognises_a_missing_helper_and_missing_atomics() {
        assert!(lacks_helper(
            "0: (85) call bpf_set_retval#187\nunknown func bpf_set_retval#187"
        ));
        assert!(!lacks_helper("R1 invalid mem access 'scalar'"));
        assert!(lacks_atomics(
            "12: (db) lock *(u64 *)(r1 +0) += r2\nBPF_STX uses reserved fields"
        ));
        assert!(!lacks_atomics("R1 invalid mem access 'scalar'"));
    }

    #[test]
    fn each_build_names_its_connect_programs() {
        let all = Features(features::SET_RETVAL | features::CLAIMS);
        assert_eq!(all.connect_programs()[0], program_names::CONNECT4);
        assert_eq!(
            Features(features::CLAIMS).connect_programs()[1],
            program_names::CONNECT6_PLAIN
        );
        assert_eq!(
            Features(0).connect_programs()[0],
            program_names::CONNECT4_BASIC
        );
        assert!(all.missing().is_empty());
        assert_eq!(all.mode(), "full");
        assert_eq!(Features(features::CLAIMS).mode(), "eperm-only");
        let compat = Features(0);
        assert_eq!(compat.mode(), "compat");
        let off: Vec<&str> = compat.off().iter().map(|o| o.feature).collect();
        assert_eq!(
            off,
            [
                "race_protection",
                "fast_path",
                "device_bound_holders",
                "errno_choice"
            ]
        );
        assert!(
            compat.missing()[0].contains("needs 5.12"),
            "{:?}",
            compat.missing()
        );
        let forced = Features(features::FORCED_COMPAT);
        assert_eq!(forced.mode(), "compat");
        assert!(forced.missing()[0].contains("UDPGUARD_FORCE_COMPAT=1"));
    }

    #[test]
    fn the_kernel_version_is_major_and_minor() {
        let version = kernel_version();
        assert_eq!(version.split('.').count(), 2, "{version}");
    }
}
