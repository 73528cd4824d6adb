//! What is measured at one N: the interleaved timed rounds of every setup, then the programs'
//! own time in windows with the BPF stats on.
use std::{collections::HashMap, time::Instant};

use anyhow::ensure;
use udpguard::sandbox::Sandbox;

use crate::{
    bpf_stats::{ProgramIds, ProgramTime, ProgramTimes, StatsOn, program_counts, program_time},
    options::Options,
    report::{Level, Measured, fmt_ns},
    setups::{Guard, Setup},
    stats,
    worker::{Background, Batch, Worker},
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
    let size = |probe: Batch| (batch_ns / probe.ns_per_op).clamp(10.0, 1e6) as u64;
    worker.run(20)?;
    let ops = size(worker.run(20)?);
    worker.hold(true)?;
    worker.run(20)?;
    let hit_ops = size(worker.run(20)?);
    worker.hold(false)?;

    let mut times: HashMap<(Setup, bool), Vec<f64>> = HashMap::new();
    let timed = |worker: &mut Worker, setup: Setup, hit: bool, ops: u64| {
        worker.run((ops / 10).max(3))?; // warm-up, after a switch
        let batch = worker.run(ops)?;
        let expected = if hit && setup.refuses() { ops } else { 0 };
        ensure!(
            batch.refused == expected,
            "{} ({}): {} of {ops} connects refused, expected {expected}",
            setup.label(),
            if hit { "hit" } else { "miss" },
            batch.refused
        );
        anyhow::Ok(batch.ns_per_op)
    };
    for round in 0..options.rounds {
        // Rotate the order, so no setup always runs first after a (re)load.
        for k in 0..Setup::ALL.len() {
            let setup = Setup::ALL[(round + k) % Setup::ALL.len()];
            guard.set(setup)?;
            if setup == Setup::Fast {
                guard.wait_fast_path(worker)?;
            }
            let ns = timed(worker, setup, false, ops)?;
            times.entry((setup, false)).or_default().push(ns);
            if !matches!(setup, Setup::Audit | Setup::Floor) {
                worker.hold(true)?;
                let ns = timed(worker, setup, true, hit_ops)?;
                worker.hold(false)?;
                times.entry((setup, true)).or_default().push(ns);
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
    eprintln!(
        "connect_cost: {sockets} sockets done: no program {}, empty programs {} ({:.2}x), reference {} ({:.2}x), udpguard {} ({:.2}x), audit {} ({:.2}x), fast path {} ({:.2}x)",
        fmt_ns(level.no_program.ns_per_op),
        fmt_ns(level.floor.ns_per_op),
        level.floor.ratio.value,
        fmt_ns(level.reference.ns_per_op),
        level.reference.ratio.value,
        fmt_ns(level.enforce.ns_per_op),
        level.enforce.ratio.value,
        fmt_ns(level.audit.ns_per_op),
        level.audit.ratio.value,
        fmt_ns(level.fast.ns_per_op),
        level.fast.ratio.value,
    );
    Ok(level)
}

/// Program time per run of each setup (the hit path of those that refuse), stats on only
/// meanwhile: the median over [`STATS_WINDOWS`] windows of one batch each, interleaved.
pub fn program_windows(
    worker: &mut Worker,
    guard: &mut Guard<'_>,
    ops: u64,
    hit_ops: u64,
) -> anyhow::Result<HashMap<(Setup, bool), ProgramTimes>> {
    let (floor_ids, reference_ids) = guard.baseline_ids()?;
    let _stats = StatsOn::enable()?;
    let window =
        |worker: &mut Worker, ids: &ProgramIds, ops: u64| -> anyhow::Result<ProgramTimes> {
            worker.run((ops / 10).max(3))?;
            let before = program_counts()?;
            worker.run(ops)?;
            let after = program_counts()?;
            let time = |id: Option<u32>| {
                id.map_or(Ok(ProgramTime::default()), |id| {
                    program_time(&before, &after, id)
                })
            };
            let times = ProgramTimes {
                connect4: time(Some(ids.connect4))?,
                sock_create: time(ids.create)?,
                sock_release: time(ids.release)?,
            };
            ensure!(
                times.connect4.runs == ops,
                "connect4 ran {} times for {ops} connects: is something else in the cgroup?",
                times.connect4.runs
            );
            Ok(times)
        };
    let mut windows: HashMap<(Setup, bool), Vec<ProgramTimes>> = HashMap::new();
    let mut measure = |worker: &mut Worker, setup: Setup, ids: &ProgramIds, hit: bool| {
        if hit {
            worker.hold(true)?;
        }
        let times = window(worker, ids, if hit { hit_ops } else { ops });
        if hit {
            worker.hold(false)?;
        }
        windows.entry((setup, hit)).or_default().push(times?);
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
        guard.wait_fast_path(worker)?;
        measure(worker, Setup::Fast, &guard_ids, false)?;
    }
    Ok(windows
        .into_iter()
        .map(|(key, times)| (key, ProgramTimes::median(&times)))
        .collect())
}
