//! The setups measured, and switching the sandbox's cgroup between them: the guard (enforce,
//! audit, fast path) through the library, the baselines from their own eBPF object.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr,
    cgroup_sock::CgroupSockLinkId,
    cgroup_sock_addr::CgroupSockAddrLinkId,
    links::{FdLink, PinnedLink},
};
use udpguard::{
    guard, loader::program, routes::RouteMirror, settings::Mode, status::AttachmentStatus,
};

use crate::bpf_stats::ProgramIds;

/// Room for every conflict event of the hit batches between two drains.
const EVENTS_BUFFER: u32 = 16 << 20;

/// What is attached to the sandbox's cgroup while a batch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setup {
    NoProgram,
    /// Empty programs on the three hooks the guard uses: what any program there costs.
    Floor,
    /// The reference design's connect4 program.
    Reference,
    Enforce,
    Audit,
    /// Enforce, with the agent's route mirror vouching for the sandbox's namespace: the O(1)
    /// no-conflict path is on.
    Fast,
}

impl Setup {
    pub const ALL: [Setup; 6] = [
        Setup::NoProgram,
        Setup::Floor,
        Setup::Reference,
        Setup::Enforce,
        Setup::Audit,
        Setup::Fast,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Setup::NoProgram => "no program",
            Setup::Floor => "empty programs",
            Setup::Reference => "reference design",
            Setup::Enforce => "udpguard",
            Setup::Audit => "udpguard audit",
            Setup::Fast => "udpguard fast path",
        }
    }

    /// Whether this setup refuses a conflicting connect.
    pub fn refuses(self) -> bool {
        matches!(self, Setup::Reference | Setup::Enforce | Setup::Fast)
    }

    /// Whether this setup is a baseline program set rather than udpguard.
    pub fn is_baseline(self) -> bool {
        matches!(self, Setup::Floor | Setup::Reference)
    }
}

/// Attaches, switches and detaches the guard on the sandbox's cgroup.
pub struct Guard<'a> {
    cgroup: &'a Path,
    current: Setup,
    /// The agent's route mirror, running while the setup is [`Setup::Fast`].
    mirror: Option<RouteMirror>,
    baselines: Baselines,
}

impl Guard<'_> {
    /// With nothing attached; loads the baselines.
    pub fn new(cgroup: &Path) -> anyhow::Result<Guard<'_>> {
        Ok(Guard {
            cgroup,
            current: Setup::NoProgram,
            mirror: None,
            baselines: Baselines::load()?,
        })
    }

    pub fn set(&mut self, setup: Setup) -> anyhow::Result<()> {
        if setup == self.current {
            return Ok(());
        }
        if let Some(mirror) = self.mirror.take() {
            mirror.stop(); // the fast path goes off with it
        }
        if self.current.is_baseline() {
            self.baselines.detach()?;
        }
        let mode = match setup {
            Setup::NoProgram | Setup::Floor | Setup::Reference => {
                if !(self.current == Setup::NoProgram || self.current.is_baseline()) {
                    guard::detach(Some(self.cgroup))?;
                }
                if setup.is_baseline() {
                    self.baselines.attach(setup, self.cgroup)?;
                }
                self.current = setup;
                return Ok(());
            }
            Setup::Enforce | Setup::Fast => Mode::Enforce,
            Setup::Audit => Mode::Audit,
        };
        // Loads and attaches when nothing is attached; switches the mode in place otherwise.
        guard::attach(&guard::AttachRequest {
            cgroup: Some(self.cgroup.to_path_buf()),
            mode: Some(mode),
            events_buffer: Some(EVENTS_BUFFER),
            ..Default::default()
        })?;
        if setup == Setup::Fast {
            // At the cgroup root the guard sees every connect; the sandbox's namespace holds
            // only the bench's own processes, all in the guarded cgroup, so it counts as seen.
            let attachment = udpguard::attachment::Attachment::open(&self.pin_dir()?)?;
            let coverage = std::sync::Arc::new(udpguard::watch::Coverage::assumed());
            self.mirror = Some(RouteMirror::start(&attachment, coverage)?);
        }
        self.current = setup;
        Ok(())
    }

    /// After switching to [`Setup::Fast`] (or starting an agent): makes connects with
    /// `connect` until the agent has loaded the sandbox's namespace (a checked connect reports
    /// it) and turned the fast path on there.
    pub fn wait_fast_path(
        &self,
        mut connect: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            connect()?;
            let on = attached().and_then(|a| a.fast_path_namespaces).unwrap_or(0);
            if on > 0 {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the fast path never turned on");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The baselines' program ids (see [`Baselines::program_ids`]).
    pub fn baseline_ids(&mut self) -> anyhow::Result<(ProgramIds, ProgramIds)> {
        self.baselines.program_ids()
    }

    /// The attachment's pin directory.
    fn pin_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(attached()
            .context("nothing attached to the sandbox")?
            .pin_dir)
    }

    /// Empties the conflict-event ring buffer (as `udpguard run` would) and returns the
    /// attachment's `events_lost` counter.
    pub fn drain_events(&self) -> anyhow::Result<u64> {
        let mut events = udpguard::attachment::open_events(&self.pin_dir()?)?;
        while events.next().is_some() {}
        Ok(attached()
            .and_then(|a| a.counters.get("events_lost").copied())
            .unwrap_or(0))
    }

    /// The ids of the attached programs: connect4 (from `status`), sock_create and
    /// sock_release (from their pinned links).
    pub fn program_ids(&self) -> anyhow::Result<ProgramIds> {
        let attachment = attached().context("nothing attached to the sandbox")?;
        let link = |pin: &str| -> anyhow::Result<u32> {
            let link: FdLink = PinnedLink::from_pin(attachment.pin_dir.join(pin))
                .with_context(|| format!("opening the pinned link {pin}"))?
                .into();
            Ok(link.info()?.program_id())
        };
        Ok(ProgramIds {
            connect4: attachment
                .programs
                .connect4
                .context("no connect4 program attached")?,
            create: Some(link("create")?),
            release: Some(link("release")?),
        })
    }
}

/// The sandbox's attachment as `status` reports it (there is one at most: the sandbox has its
/// own pin root).
fn attached() -> Option<AttachmentStatus> {
    udpguard::status::collect().attachments.into_iter().next()
}

/// The baselines' own eBPF object (udpguard-ebpf's `baselines.rs`), built beside udpguard's
/// but never part of it.
static BASELINES: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udpguard-baselines"));

/// Names of the programs in [`BASELINES`]: empty programs on connect4, sock_create and
/// sock_release (the floor), and the reference design's connect4 (lookup, EPERM).
const FLOOR_CONNECT4: &str = "floor_connect4";
const FLOOR_CREATE: &str = "floor_create";
const FLOOR_RELEASE: &str = "floor_release";
const REFERENCE_CONNECT4: &str = "reference_connect4";

/// The programs udpguard is measured against: loaded once from their own object, attached to
/// the sandbox's cgroup while their setup runs.
struct Baselines {
    ebpf: aya::Ebpf,
    floor: Option<(CgroupSockAddrLinkId, CgroupSockLinkId, CgroupSockLinkId)>,
    reference: Option<CgroupSockAddrLinkId>,
}

impl Baselines {
    fn load() -> anyhow::Result<Baselines> {
        let mut baselines = Baselines {
            ebpf: aya::Ebpf::load(BASELINES).context("loading the baselines' eBPF object")?,
            floor: None,
            reference: None,
        };
        for name in [FLOOR_CONNECT4, REFERENCE_CONNECT4] {
            baselines.connect4(name)?.load()?;
        }
        for name in [FLOOR_CREATE, FLOOR_RELEASE] {
            baselines.sock(name)?.load()?;
        }
        Ok(baselines)
    }

    /// The connect4 program `name`.
    fn connect4(&mut self, name: &str) -> anyhow::Result<&mut CgroupSockAddr> {
        Ok(program(&mut self.ebpf, name)?)
    }

    /// The sock_create or sock_release program `name`.
    fn sock(&mut self, name: &str) -> anyhow::Result<&mut CgroupSock> {
        Ok(program(&mut self.ebpf, name)?)
    }

    /// Attaches the programs of `setup` ([`Setup::Floor`] or [`Setup::Reference`]).
    fn attach(&mut self, setup: Setup, cgroup: &Path) -> anyhow::Result<()> {
        let dir =
            std::fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mode = CgroupAttachMode::Single;
        match setup {
            Setup::Floor => {
                self.floor = Some((
                    self.connect4(FLOOR_CONNECT4)?.attach(&dir, mode)?,
                    self.sock(FLOOR_CREATE)?.attach(&dir, mode)?,
                    self.sock(FLOOR_RELEASE)?.attach(&dir, mode)?,
                ));
            }
            Setup::Reference => {
                self.reference = Some(self.connect4(REFERENCE_CONNECT4)?.attach(&dir, mode)?);
            }
            _ => bail!("{} is not a baseline", setup.label()),
        }
        Ok(())
    }

    /// Detaches whatever is attached.
    fn detach(&mut self) -> anyhow::Result<()> {
        if let Some((connect4, create, release)) = self.floor.take() {
            self.connect4(FLOOR_CONNECT4)?.detach(connect4)?;
            self.sock(FLOOR_CREATE)?.detach(create)?;
            self.sock(FLOOR_RELEASE)?.detach(release)?;
        }
        if let Some(link) = self.reference.take() {
            self.connect4(REFERENCE_CONNECT4)?.detach(link)?;
        }
        Ok(())
    }

    /// The floor's program ids, and the reference's (a connect4 alone).
    fn program_ids(&mut self) -> anyhow::Result<(ProgramIds, ProgramIds)> {
        let floor = ProgramIds {
            connect4: self.connect4(FLOOR_CONNECT4)?.info()?.id(),
            create: Some(self.sock(FLOOR_CREATE)?.info()?.id()),
            release: Some(self.sock(FLOOR_RELEASE)?.info()?.id()),
        };
        let reference = ProgramIds {
            connect4: self.connect4(REFERENCE_CONNECT4)?.info()?.id(),
            create: None,
            release: None,
        };
        Ok((floor, reference))
    }
}
