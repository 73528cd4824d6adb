//! One attachment's state in the bpffs: a directory per cgroup, `cgroup-<id>`, holding the
//! pinned links (which keep the programs attached after the CLI exits) and maps.
//!
//! A directory is built complete under a temporary name and renamed into place, so a reader
//! never sees half of one; writers hold [`crate::bpffs::PinLock`].
use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::links::{FdLink, PinnedLink},
};
use udpguard_common::{
    AttachMeta, Config, Counters, map_names,
    names::{MAP_PINS, link_pins, pin_of},
};

use crate::{
    cgroup::Cgroup,
    error::{Result, io},
    faults,
    loader::{LoadedGuard, object_sha256},
    settings::Settings,
    sys::bpf,
    tables::TableSizes,
};

/// The pins of links inside an attachment directory: the guard's (see `link_pins`), and the
/// watch the agent puts on an ancestor cgroup for its fast path.
pub const WATCH_PINS: [&str; 2] = ["watch4", "watch6"];
/// Prefixes of directories being built or torn down; never read as attachments.
/// (bpffs refuses names with a dot, so these are not hidden files.)
const BUILDING: &str = "building-";
const RETIRING: &str = "retiring-";

/// The path of a map's pin in an attachment directory.
pub fn map_pin(dir: &Path, map: &str) -> PathBuf {
    dir.join(pin_of(map))
}

/// The directory name of the attachment to a cgroup.
pub fn dir_name(cgroup_id: u64) -> String {
    format!("cgroup-{cgroup_id}")
}

/// The cgroup id an attachment directory name stands for.
pub fn parse_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix("cgroup-")?.parse().ok()
}

/// What a directory under the pin root is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DirKind {
    /// An attachment (`cgroup-<id>`).
    Attached,
    /// Left by an `attach` that was killed while it built the directory: its links, if any
    /// were attached, enforce, but nothing reads its events or keeps it.
    Building,
    /// Left by an `attach` or `detach` that was killed while it took an attachment down.
    Retiring,
}

/// The kind and cgroup id of a directory name under the pin root.
pub fn parse_any_dir_name(name: &str) -> Option<(DirKind, u64)> {
    if let Some(id) = parse_dir_name(name) {
        return Some((DirKind::Attached, id));
    }
    let (kind, rest) = if let Some(rest) = name.strip_prefix(BUILDING) {
        (DirKind::Building, rest)
    } else {
        (DirKind::Retiring, name.strip_prefix(RETIRING)?)
    };
    Some((kind, rest.split('-').next()?.parse().ok()?))
}

/// Every directory under the pin root that udpguard made: attachments, and what interrupted
/// runs left (which `status` shows and `detach` removes).
pub fn list_all(root: &Path) -> Vec<(DirKind, u64, PathBuf)> {
    let mut dirs: Vec<_> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let (kind, id) = parse_any_dir_name(entry.file_name().to_str()?)?;
            Some((kind, id, entry.path()))
        })
        .collect();
    dirs.sort_by_key(|(kind, id, path)| (*id, *kind as u8, path.clone()));
    dirs
}

/// Every attachment directory under the pin root, by cgroup id.
pub fn list_dirs(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut dirs: Vec<_> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let id = parse_dir_name(entry.file_name().to_str()?)?;
            Some((id, entry.path()))
        })
        .collect();
    dirs.sort();
    dirs
}

/// Loads the programs, attaches them to `cgroup` and pins everything in a new attachment
/// directory, replacing `old` (if any) only once the new one is attached: no gap in between.
pub fn create(
    root: &Path,
    cgroup: &Cgroup,
    settings: Settings,
    events_buffer: u32,
    sizes: TableSizes,
    old: Option<&Path>,
) -> Result<LoadedGuard> {
    let mut guard = LoadedGuard::load(settings.errno.needs_set_retval(), events_buffer, sizes)?;
    let meta = AttachMeta {
        version: AttachMeta::VERSION,
        features: guard.features.0,
        cgroup_id: cgroup.id,
        object_sha256: object_sha256(),
        attached_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        claim_buckets: guard.sizes.claim_buckets,
        records: guard.sizes.records,
    };
    write_one(&mut guard, map_names::CONFIG, settings.to_config(0))?;
    write_one(&mut guard, map_names::META, meta)?;
    faults::point("attach:loaded");

    let building = root.join(format!("{BUILDING}{}-{}", cgroup.id, std::process::id()));
    fs::create_dir(&building).map_err(io(format!("creating {}", building.display())))?;
    faults::point("attach:building");
    let built = pin_all(&mut guard, cgroup, &building);
    if let Err(err) = built {
        // The links are dropped unpinned, which detaches them.
        let _ = remove(&building);
        return Err(err);
    }
    faults::point("attach:pinned");
    let target = root.join(dir_name(cgroup.id));
    if let Some(old) = old {
        let retiring = root.join(format!("{RETIRING}{}-{}", cgroup.id, std::process::id()));
        fs::rename(old, &retiring).map_err(io(format!("moving {} away", old.display())))?;
        faults::point("attach:retired");
        fs::rename(&building, &target).map_err(io(format!("renaming to {}", target.display())))?;
        faults::point("attach:renamed");
        remove(&retiring)?;
    } else {
        fs::rename(&building, &target).map_err(io(format!("renaming to {}", target.display())))?;
    }
    Ok(guard)
}

fn write_one<T: aya::Pod>(guard: &mut LoadedGuard, name: &str, value: T) -> Result<()> {
    let map = guard
        .ebpf
        .map_mut(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))?;
    let mut array: Array<_, T> = Array::try_from(map).with_context(|| format!("map {name}"))?;
    array
        .set(0, value, 0)
        .with_context(|| format!("writing map {name}"))?;
    Ok(())
}

fn pin_all(guard: &mut LoadedGuard, cgroup: &Cgroup, dir: &Path) -> Result<()> {
    for (name, pin) in MAP_PINS {
        let map = guard
            .ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?;
        map.pin(dir.join(pin))
            .with_context(|| format!("pinning map {name} in {}", dir.display()))?;
    }
    faults::point("attach:maps");
    for (pin, link) in guard.attach(cgroup)? {
        link.pin(dir.join(pin))
            .with_context(|| format!("pinning link {pin} in {}", dir.display()))?;
        faults::point("attach:link");
    }
    Ok(())
}

/// Detaches the link pinned at `path` at once and removes the pin (nothing there: nothing to do).
pub fn detach_link(path: &Path) -> Result<()> {
    let Ok(link) = bpf::obj_get(path) else {
        return Ok(());
    };
    bpf::link_detach(&link).map_err(io(format!("detaching {}", path.display())))?;
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Detaches an attachment's programs at once and removes its directory (already gone, as
/// when another detach got there first: nothing to do).
pub fn remove(dir: &Path) -> Result<()> {
    for pin in link_pins::ALL.into_iter().chain(WATCH_PINS) {
        let path = dir.join(pin);
        if let Ok(link) = bpf::obj_get(&path) {
            bpf::link_detach(&link).map_err(io(format!("detaching {}", path.display())))?;
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("removing {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// How many of the links pinned in `dir` are attached now.
pub fn attached_links(dir: &Path) -> usize {
    link_pins::ALL
        .into_iter()
        .chain(WATCH_PINS)
        .filter(|pin| bpf::obj_get(&dir.join(pin)).is_ok())
        .count()
}

/// Where one of an attachment's links stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Pinned and attached to its cgroup.
    Attached,
    /// Pinned, but detached by someone else (`bpftool link detach`, another agent's sweep):
    /// its program no longer runs.
    Removed,
    /// No pin (or one that cannot be opened).
    Missing,
}

/// The state of each of the guard's links in `dir` (connect4 and connect6 always; create and
/// release when pinned: they exist only with claims).
pub fn link_states(dir: &Path) -> Vec<(&'static str, LinkState)> {
    link_pins::ALL
        .into_iter()
        .filter_map(|pin| {
            let state = match bpf::obj_get(&dir.join(pin)) {
                Err(_) => LinkState::Missing,
                Ok(link) => match bpf::link_info(&link) {
                    Ok(info) if info.cgroup_id == 0 => LinkState::Removed,
                    Ok(_) => LinkState::Attached,
                    Err(_) => LinkState::Missing,
                },
            };
            let always = pin == link_pins::CONNECT4 || pin == link_pins::CONNECT6;
            (always || state != LinkState::Missing).then_some((pin, state))
        })
        .collect()
}

/// Re-attaches every link in `dir` that someone else detached: a new link of the same program
/// to `cgroup`, pinned in place of the old one. Returns the pins re-attached. Call with the
/// lock held.
pub fn reattach_removed(dir: &Path, cgroup: &Cgroup) -> Result<Vec<&'static str>> {
    let mut done = Vec::new();
    for (pin, state) in link_states(dir) {
        if state != LinkState::Removed {
            continue;
        }
        let path = dir.join(pin);
        let what = |doing: &str| format!("{doing} the {pin} link in {}", dir.display());
        let old = bpf::obj_get(&path).map_err(io(what("opening")))?;
        let info = bpf::link_info(&old).map_err(io(what("reading")))?;
        let program =
            bpf::prog_get_fd_by_id(info.prog_id).map_err(io(what("opening the program of")))?;
        let target = fs::File::open(&cgroup.path)
            .map_err(io(format!("opening {}", cgroup.path.display())))?;
        let link = bpf::link_create(&program, &target, info.attach_type)
            .map_err(io(what("re-attaching")))?;
        // Pinned beside the old pin, then renamed over it: the pin is never missing.
        let fresh = dir.join(format!("{pin}-reattached"));
        let _ = fs::remove_file(&fresh);
        bpf::obj_pin(&link, &fresh).map_err(io(what("pinning")))?;
        fs::rename(&fresh, &path).map_err(io(what("replacing the pin of")))?;
        done.push(pin);
    }
    Ok(done)
}

/// Takes an attachment down as one is built: renamed out of its place first (so no reader sees
/// half of it, and a detach killed midway leaves a `retiring-` directory that `status` shows),
/// then its links detached and its pins removed. Call with the lock held.
pub fn retire(root: &Path, dir: &Path, cgroup_id: u64) -> Result<()> {
    let retiring = root.join(format!("{RETIRING}{cgroup_id}-{}", std::process::id()));
    fs::rename(dir, &retiring).map_err(io(format!("moving {} away", dir.display())))?;
    faults::point("detach:retired");
    remove(&retiring)
}

/// Removes what interrupted runs left for the cgroup `cgroup_id` (call with the lock held);
/// returns how many directories.
pub fn remove_leftovers_of(root: &Path, cgroup_id: u64) -> Result<usize> {
    let mut removed = 0;
    for (kind, id, dir) in list_all(root) {
        if kind != DirKind::Attached && id == cgroup_id {
            remove(&dir)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes what an interrupted `attach` left behind (call with the lock held).
pub fn remove_leftovers(root: &Path) -> Result<()> {
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(BUILDING) || name.starts_with(RETIRING) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// The conflict events of the attachment in `dir`, for a reader in user space.
pub fn open_events(dir: &Path) -> Result<RingBuf<MapData>> {
    let path = map_pin(dir, map_names::EVENTS);
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(RingBuf::try_from(aya::maps::Map::RingBuf(map)).context("events map")?)
}

/// An attachment opened from its pins.
pub struct Attachment {
    pub dir: PathBuf,
    pub meta: AttachMeta,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counters>,
}

impl Attachment {
    /// Opens the pins in `dir`. Fails for pins of an incompatible udpguard version.
    pub fn open(dir: &Path) -> Result<Attachment> {
        let map = |name: &str| {
            let path = map_pin(dir, name);
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
        };
        let meta: Array<MapData, AttachMeta> =
            Array::try_from(aya::maps::Map::Array(map(map_names::META)?)).context("meta map")?;
        let config = Array::try_from(aya::maps::Map::Array(map(map_names::CONFIG)?))
            .context("config map")?;
        let counters =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map(map_names::COUNTERS)?))
                .context("counters map")?;
        Ok(Attachment {
            dir: dir.to_path_buf(),
            meta: meta.get(&0, 0).context("reading meta")?,
            config,
            counters,
        })
    }

    /// True when the pinned programs came from this binary's eBPF object.
    pub fn matches_binary(&self) -> bool {
        self.meta.version == AttachMeta::VERSION && self.meta.object_sha256 == object_sha256()
    }

    pub fn settings(&self) -> Result<Settings> {
        let config = self.config.get(&0, 0).context("reading config")?;
        Ok(Settings::from_config(config))
    }

    /// Changes mode, errno and auto-bind policy in place (the programs read them on every
    /// connect that needs them), keeping the flags the agent manages.
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        let flags = self.config.get(&0, 0).context("reading config")?.flags;
        self.config
            .set(0, settings.to_config(flags), 0)
            .context("writing config")?;
        Ok(())
    }

    /// Sets or clears bits of the config's `flags` (the agent's), keeping the settings.
    pub fn set_flags(&mut self, set: u32, clear: u32) -> Result<()> {
        let mut config = self.config.get(&0, 0).context("reading config")?;
        config.flags = (config.flags | set) & !clear;
        self.config.set(0, config, 0).context("writing config")?;
        Ok(())
    }

    /// The sizes the tables were loaded with (None without claims: the older-kernel build).
    pub fn sizes(&self) -> Option<TableSizes> {
        (self.meta.claim_buckets != 0 && self.features().claims())
            .then(|| TableSizes::loaded(self.meta.claim_buckets, self.meta.records))
    }

    /// What the programs can do on this kernel.
    pub fn features(&self) -> crate::loader::Features {
        crate::loader::Features(self.meta.features)
    }

    /// The claim table, mapped read-only or for the agent's seeding.
    pub fn claim_table(&self, writable: bool) -> anyhow::Result<crate::claims::ClaimTable> {
        crate::claims::ClaimTable::open(&self.dir, self.meta.claim_buckets, writable)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let per_cpu = self.counters.get(&0, 0).context("reading counters")?;
        let mut total = Counters::default();
        for cpu in per_cpu.iter() {
            for (sum, value) in total.values.iter_mut().zip(cpu.values) {
                *sum += value;
            }
        }
        Ok(total)
    }

    /// The ids of the attached connect4 and connect6 programs (None if a link is gone).
    pub fn program_ids(&self) -> [Option<u32>; 2] {
        [link_pins::CONNECT4, link_pins::CONNECT6].map(|pin| {
            let link: FdLink = PinnedLink::from_pin(self.dir.join(pin)).ok()?.into();
            link.info().ok().map(|info| info.program_id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip() {
        assert_eq!(parse_dir_name(&dir_name(4242)), Some(4242));
        assert_eq!(parse_dir_name("building-4242-7"), None);
        assert_eq!(parse_dir_name("cgroup-x"), None);
    }
}
