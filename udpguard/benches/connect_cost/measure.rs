//! What is measured at one N: the interleaved timed rounds of every setup, then the programs'
//! own time in windows with the BPF stats on.
use std::{collections::HashMap, fmt::Write as _, time::Instant};

use anyhow::ensure;
use udpguard::sandbox::Sandbox;

use crate::{
    bpf_stats::{Counts, ProgramIds, ProgramTimes, StatsOn},
    options::Options,
    report::{Level, Measured, fmt_ns},
    setups::{Guard, Setup},
    stats,
    worker::{Background, Worker},
};

/// Windows with the BPF stats on, per N; each program's time is the median over them.
pub const STATS_WINDOWS: usize = 7;

/// Everything measured at one N.
pub fn measure_level(
    options: &Options,
    sandbox: &Sandbox,
    worker: &mut Worker,
    background: &mut Background,
    guard: &mut Guard<'_>,
    sockets: usize,
    events_lost: &mut u64,
) -> anyhow::Result<Level> {
    // The background sockets are made with nothing attached (their connects would each walk
    // all the others); they are in the sandbox's cgroup all the same.
    guard.set(Setup::NoProgram)?;
    let started = Instant::now();
    background.grow(sandbox, sockets)?;
    eprintln!(
        "connect_cost: {sockets} background sockets ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    // Batch sizes: about `batch_ms` with no program.
    let batch_ns = options.batch_ms as f64 * 1e6;
    let size = |worker: &mut Worker, hit: bool| {
        worker.on_path(hit, |worker| {
            worker.run(20)?;
            let probe = worker.run(20)?;
            Ok((batch_ns / probe.ns_per_op).clamp(10.0, 1e6) as u64)
        })
    };
    let ops = size(worker, false)?;
    let hit_ops = size(worker, true)?;

    let mut times: HashMap<(Setup, bool), Vec<f64>> = HashMap::new();
    let mut timed = |worker: &mut Worker, setup: Setup, hit: bool| {
        let ops = if hit { hit_ops } else { ops };
        let batch = worker.on_path(hit, |worker| {
            worker.warm_up(ops)?;
            worker.run(ops)
        })?;
        let expected = if hit && setup.refuses() { ops } else { 0 };
        ensure!(
            batch.refused == expected,
            "{} ({}): {} of {ops} connects refused, expected {expected}",
            setup.label(),
            if hit { "hit" } else { "miss" },
            batch.refused
        );
        times.entry((setup, hit)).or_default().push(batch.ns_per_op);
        anyhow::Ok(())
    };
    for round in 0..options.rounds {
        // Rotate the order, so no setup always runs first after a (re)load.
        for k in 0..Setup::ALL.len() {
            let setup = Setup::ALL[(round + k) % Setup::ALL.len()];
            guard.set(setup)?;
            if setup == Setup::Fast {
                guard.wait_fast_path(|| worker.run(20).map(drop))?;
            }
            timed(worker, setup, false)?;
            if !matches!(setup, Setup::Audit | Setup::Floor) {
                timed(worker, setup, true)?;
                if setup.refuses() && !setup.is_baseline() {
                    *events_lost = (*events_lost).max(guard.drain_events()?);
                }
            }
        }
    }
    let measured = |setup: Setup, hit: bool| {
        let base = &times[&(Setup::NoProgram, hit)];
        let these = &times[&(setup, hit)];
        Measured {
            ns_per_op: stats::mean(these),
            ratio: stats::ratio_of_means(these, base),
        }
    };
    let mut level = Level {
        sockets,
        ops_per_batch: ops,
        hit_ops_per_batch: hit_ops,
        no_program: measured(Setup::NoProgram, false),
        floor: measured(Setup::Floor, false),
        reference: measured(Setup::Reference, false),
        hit_reference: measured(Setup::Reference, true),
        enforce: measured(Setup::Enforce, false),
        audit: measured(Setup::Audit, false),
        fast: measured(Setup::Fast, false),
        hit_no_program: measured(Setup::NoProgram, true),
        hit_enforce: measured(Setup::Enforce, true),
        hit_fast: measured(Setup::Fast, true),
        ..Level::default()
    };

    // The programs' own time, from the kernel's stats, in windows of their own.
    match program_windows(worker, guard, ops, hit_ops) {
        Ok(times) => {
            let of = |setup, hit| times.get(&(setup, hit)).copied();
            level.programs_floor = of(Setup::Floor, false);
            level.programs_reference = of(Setup::Reference, false).map(|t| t.connect4);
            level.programs_hit_reference = of(Setup::Reference, true).map(|t| t.connect4);
            level.programs_enforce = of(Setup::Enforce, false);
            level.programs_hit = of(Setup::Enforce, true);
            level.programs_audit = of(Setup::Audit, false);
            level.programs_fast = of(Setup::Fast, false);
        }
        Err(err) => eprintln!("connect_cost: no BPF run-time stats: {err:#}"),
    }
    *events_lost = (*events_lost).max(guard.drain_events()?);
    let mut done = format!(
        "connect_cost: {sockets} sockets done: no program {}",
        fmt_ns(level.no_program.ns_per_op)
    );
    for (name, m) in [
        ("empty programs", level.floor),
        ("reference", level.reference),
        ("udpguard", level.enforce),
        ("audit", level.audit),
        ("fast path", level.fast),
    ] {
        let _ = write!(
            done,
            ", {name} {} ({:.2}x)",
            fmt_ns(m.ns_per_op),
            m.ratio.value
        );
    }
    eprintln!("{done}");
    Ok(level)
}

/// Program time per run of each setup (the hit path of those that refuse), stats on only
/// meanwhile: the median over [`STATS_WINDOWS`] windows of one batch each, interleaved.
fn program_windows(
    worker: &mut Worker,
    guard: &mut Guard<'_>,
    ops: u64,
    hit_ops: u64,
) -> anyhow::Result<HashMap<(Setup, bool), ProgramTimes>> {
    let (floor_ids, reference_ids) = guard.baseline_ids()?;
    let _stats = StatsOn::enable()?;
    let mut windows: HashMap<(Setup, bool), Vec<ProgramTimes>> = HashMap::new();
    let mut measure = |worker: &mut Worker, setup: Setup, ids: &ProgramIds, hit: bool| {
        let ops = if hit { hit_ops } else { ops };
        let times = worker.on_path(hit, |worker| {
            worker.warm_up(ops)?;
            let before = Counts::read()?;
            worker.run(ops)?;
            let after = Counts::read()?;
            ProgramTimes::between(&before, &after, ids)
        })?;
        ensure!(
            times.connect4.runs == ops,
            "connect4 ran {} times for {ops} connects: is something else in the cgroup?",
            times.connect4.runs
        );
        windows.entry((setup, hit)).or_default().push(times);
        anyhow::Ok(())
    };
    for _ in 0..STATS_WINDOWS {
        guard.set(Setup::Floor)?;
        measure(worker, Setup::Floor, &floor_ids, false)?;
        guard.set(Setup::Reference)?;
        measure(worker, Setup::Reference, &reference_ids, false)?;
        measure(worker, Setup::Reference, &reference_ids, true)?;
        // Loaded afresh after the baselines; then switched in place, same programs.
        guard.set(Setup::Enforce)?;
        let guard_ids = guard.program_ids()?;
        measure(worker, Setup::Enforce, &guard_ids, false)?;
        measure(worker, Setup::Enforce, &guard_ids, true)?;
        guard.set(Setup::Audit)?;
        measure(worker, Setup::Audit, &guard_ids, false)?;
        guard.set(Setup::Fast)?;
        guard.wait_fast_path(|| worker.run(20).map(drop))?;
        measure(worker, Setup::Fast, &guard_ids, false)?;
    }
    Ok(windows
        .into_iter()
        .map(|(key, times)| (key, ProgramTimes::median(&times)))
        .collect())
}
