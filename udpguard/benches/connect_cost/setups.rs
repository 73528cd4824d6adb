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
use udpguard::{guard, loader::program, routes::RouteMirror, settings::Mode};

use crate::{bpf_stats::ProgramIds, worker::Worker};

/// Room for every conflict event of the hit batches between two drains.
pub const EVENTS_BUFFER: u32 = 16 << 20;

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

    /// After switching to [`Setup::Fast`]: connects until the agent has loaded the sandbox's
    /// namespace (a checked connect reports it) and turned the fast path on there.
    pub fn wait_fast_path(&self, worker: &mut Worker) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            worker.run(20)?;
            let on = udpguard::status::collect()
                .attachments
                .first()
                .and_then(|a| a.fast_path_namespaces)
                .unwrap_or(0);
            if on > 0 {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the fast path never turned on");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The baselines' program ids (see [`Baselines::program_ids`]).
    pub fn baseline_ids(&mut self) -> anyhow::Result<(ProgramIds, u32)> {
        self.baselines.program_ids()
    }

    /// The attachment's pin directory (there is one: the sandbox has its own pin root).
    fn pin_dir(&self) -> anyhow::Result<PathBuf> {
        let status = udpguard::status::collect();
        let attachment = status
            .attachments
            .first()
            .context("nothing attached to the sandbox")?;
        Ok(attachment.pin_dir.clone())
    }

    /// Empties the conflict-event ring buffer (as `udpguard run` would) and returns the
    /// attachment's `events_lost` counter.
    pub fn drain_events(&self) -> anyhow::Result<u64> {
        let mut events = udpguard::attachment::open_events(&self.pin_dir()?)?;
        while events.next().is_some() {}
        let status = udpguard::status::collect();
        Ok(status
            .attachments
            .first()
            .and_then(|a| a.counters.get("events_lost").copied())
            .unwrap_or(0))
    }

    /// The ids of the attached programs: connect4 (from `status`), sock_create and
    /// sock_release (from their pinned links).
    pub fn program_ids(&self) -> anyhow::Result<ProgramIds> {
        let status = udpguard::status::collect();
        let attachment = status
            .attachments
            .first()
            .context("nothing attached to the sandbox")?;
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

/// The baselines' own eBPF object (udpguard-ebpf's `baselines.rs`), built beside udpguard's
/// but never part of it.
pub static BASELINES: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udpguard-baselines"));

/// Names of the programs in [`BASELINES`].
mod program_names {
    /// Empty programs on connect4, sock_create and sock_release: the floor.
    pub const FLOOR: [&str; 3] = ["floor_connect4", "floor_create", "floor_release"];
    /// The reference design's connect4 (lookup, EPERM).
    pub const REFERENCE: &str = "reference_connect4";
}

/// The programs udpguard is measured against: loaded once from their own object, attached to
/// the sandbox's cgroup while their setup runs.
pub struct Baselines {
    ebpf: aya::Ebpf,
    floor: Option<(CgroupSockAddrLinkId, CgroupSockLinkId, CgroupSockLinkId)>,
    reference: Option<CgroupSockAddrLinkId>,
}

impl Baselines {
    fn load() -> anyhow::Result<Baselines> {
        let mut ebpf = aya::Ebpf::load(BASELINES).context("loading the baselines' eBPF object")?;
        let [connect4, create, release] = program_names::FLOOR;
        for name in [connect4, program_names::REFERENCE] {
            program::<CgroupSockAddr>(&mut ebpf, name)?.load()?;
        }
        for name in [create, release] {
            program::<CgroupSock>(&mut ebpf, name)?.load()?;
        }
        Ok(Baselines {
            ebpf,
            floor: None,
            reference: None,
        })
    }

    /// Attaches the programs of `setup` ([`Setup::Floor`] or [`Setup::Reference`]).
    fn attach(&mut self, setup: Setup, cgroup: &Path) -> anyhow::Result<()> {
        let dir =
            std::fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mode = CgroupAttachMode::Single;
        let [connect4, create, release] = program_names::FLOOR;
        match setup {
            Setup::Floor => {
                self.floor = Some((
                    program::<CgroupSockAddr>(&mut self.ebpf, connect4)?.attach(&dir, mode)?,
                    program::<CgroupSock>(&mut self.ebpf, create)?.attach(&dir, mode)?,
                    program::<CgroupSock>(&mut self.ebpf, release)?.attach(&dir, mode)?,
                ));
            }
            Setup::Reference => {
                let program = program::<CgroupSockAddr>(&mut self.ebpf, program_names::REFERENCE)?;
                self.reference = Some(program.attach(&dir, mode)?);
            }
            _ => bail!("{} is not a baseline", setup.label()),
        }
        Ok(())
    }

    /// Detaches whatever is attached.
    fn detach(&mut self) -> anyhow::Result<()> {
        let [connect4, create, release] = program_names::FLOOR;
        if let Some((connect4_link, create_link, release_link)) = self.floor.take() {
            program::<CgroupSockAddr>(&mut self.ebpf, connect4)?.detach(connect4_link)?;
            program::<CgroupSock>(&mut self.ebpf, create)?.detach(create_link)?;
            program::<CgroupSock>(&mut self.ebpf, release)?.detach(release_link)?;
        }
        if let Some(link) = self.reference.take() {
            program::<CgroupSockAddr>(&mut self.ebpf, program_names::REFERENCE)?.detach(link)?;
        }
        Ok(())
    }

    /// The floor's program ids, and the reference's connect4.
    fn program_ids(&mut self) -> anyhow::Result<(ProgramIds, u32)> {
        let [connect4, create, release] = program_names::FLOOR;
        let floor = ProgramIds {
            connect4: program::<CgroupSockAddr>(&mut self.ebpf, connect4)?
                .info()?
                .id(),
            create: Some(program::<CgroupSock>(&mut self.ebpf, create)?.info()?.id()),
            release: Some(program::<CgroupSock>(&mut self.ebpf, release)?.info()?.id()),
        };
        let reference = program::<CgroupSockAddr>(&mut self.ebpf, program_names::REFERENCE)?
            .info()?
            .id();
        Ok((floor, reference))
    }
}
