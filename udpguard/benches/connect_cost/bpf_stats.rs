//! The kernel's BPF run-time stats: turning them on (BPF_ENABLE_STATS, else the sysctl) and
//! reading each program's run time and run count.
use std::{collections::HashMap, os::fd::OwnedFd};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::stats;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Whether kernel.bpf_stats_enabled is already 1 (then every program run pays the stats' clock
/// reads, also in the timed batches).
pub fn already_on() -> bool {
    std::fs::read_to_string(BPF_STATS_SYSCTL).is_ok_and(|v| v.trim() != "0")
}

/// Keeps the kernel's BPF run-time stats on: with BPF_ENABLE_STATS, which turns them off again
/// when the fd closes (also if the bench dies), else with the sysctl, restored on drop.
pub struct StatsOn {
    _fd: Option<OwnedFd>,
    sysctl_was: Option<String>,
}

impl StatsOn {
    pub fn enable() -> anyhow::Result<StatsOn> {
        if let Ok(fd) = aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            return Ok(StatsOn {
                _fd: Some(fd),
                sysctl_was: None,
            });
        }
        let was = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(BPF_STATS_SYSCTL, "1").context("setting kernel.bpf_stats_enabled=1")?;
        Ok(StatsOn {
            _fd: None,
            sysctl_was: Some(was.trim().to_string()),
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Some(was) = &self.sysctl_was {
            let _ = std::fs::write(BPF_STATS_SYSCTL, was.as_bytes());
        }
    }
}

/// The programs a setup has on the three hooks, whose run times are read.
pub struct ProgramIds {
    pub connect4: u32,
    /// None for a setup without these hooks (the reference design).
    pub create: Option<u32>,
    pub release: Option<u32>,
}

/// run_time_ns and run_cnt of every loaded program, by id.
pub struct Counts(HashMap<u32, (u64, u64)>);

impl Counts {
    pub fn read() -> anyhow::Result<Counts> {
        aya::programs::loaded_programs()
            .map(|info| {
                let info = info?;
                Ok((
                    info.id(),
                    (info.run_time().as_nanos() as u64, info.run_count()),
                ))
            })
            .collect::<anyhow::Result<_>>()
            .map(Counts)
    }
}

/// A program's mean time per run over a window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProgramTime {
    pub ns_per_run: f64,
    pub runs: u64,
}

impl ProgramTime {
    pub fn between(before: &Counts, after: &Counts, id: u32) -> anyhow::Result<ProgramTime> {
        let (Some(&(t0, n0)), Some(&(t1, n1))) = (before.0.get(&id), after.0.get(&id)) else {
            bail!("program {id} disappeared");
        };
        let runs = n1 - n0;
        Ok(ProgramTime {
            ns_per_run: if runs == 0 {
                0.0
            } else {
                (t1 - t0) as f64 / runs as f64
            },
            runs,
        })
    }
}

/// The programs' time per run for one setup and path.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProgramTimes {
    pub connect4: ProgramTime,
    pub sock_create: ProgramTime,
    pub sock_release: ProgramTime,
}

impl ProgramTimes {
    /// The time per run of the programs `ids` names over the window between two readings;
    /// zero (and no runs) on a hook without a program.
    pub fn between(before: &Counts, after: &Counts, ids: &ProgramIds) -> anyhow::Result<Self> {
        let time = |id: Option<u32>| {
            id.map_or(Ok(ProgramTime::default()), |id| {
                ProgramTime::between(before, after, id)
            })
        };
        Ok(ProgramTimes {
            connect4: time(Some(ids.connect4))?,
            sock_create: time(ids.create)?,
            sock_release: time(ids.release)?,
        })
    }

    /// Each program's median time per run over several windows, and its runs in all.
    pub fn median(windows: &[ProgramTimes]) -> ProgramTimes {
        let of = |pick: fn(&ProgramTimes) -> ProgramTime| {
            let times: Vec<ProgramTime> = windows.iter().map(pick).collect();
            let ns: Vec<f64> = times.iter().map(|t| t.ns_per_run).collect();
            ProgramTime {
                ns_per_run: stats::median(&ns),
                runs: times.iter().map(|t| t.runs).sum(),
            }
        };
        ProgramTimes {
            connect4: of(|t| t.connect4),
            sock_create: of(|t| t.sock_create),
            sock_release: of(|t| t.sock_release),
        }
    }

    /// Program time per operation: one run of each.
    pub fn total(&self) -> f64 {
        self.connect4.ns_per_run + self.sock_create.ns_per_run + self.sock_release.ns_per_run
    }
}
