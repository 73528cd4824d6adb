//! Benchmark (issue 19): what udpguard costs a real resolver.
//!
//! In a throw-away [`Sandbox`] (child cgroup + network namespace), an authority Unbound
//! answers every name under a test zone, and a forwarding Unbound with `udp-connect: yes` (a
//! fresh bound and connected UDP socket per upstream query) forwards to it; dnsperf asks the
//! forwarder for names that never repeat, so every query goes upstream. All three run in the
//! guarded cgroup. Four setups run in interleaved rounds (each round starts with a different
//! one): no guard, empty programs on the guard's hooks (the floor any guard there pays),
//! `udpguard attach` (the programs alone), and `udpguard run` (the agent as its own process). Reported per setup: the median
//! queries per second and its cost against no guard in the same run (median qps of no guard
//! over the setup's), the guard's program time per query from the kernel's BPF stats (per
//! program: ns per run and runs per query, read in a separate window after each timed run, as
//! the stats' clock reads are off while it is timed), the agent's own CPU time per query
//! (/proc/<pid>/stat), and the guard's counters (it must refuse nothing).
//!
//! Run (as root): `cargo bench -p udpguard --bench resolver`
//! Options (after `--`): `--rounds N` (default 3), `--seconds S` per timed run (default 8),
//! `--stats-seconds S` (default 3), `--setups floor,attach,run` (default all; no guard always runs),
//! `--json`. `UDPGUARD_BENCH_LOG=1` shows the servers' and
//! the agent's logs.
use std::{collections::BTreeMap, process::ExitCode};

use anyhow::{Context as _, bail};
use serde::Serialize;
use udpguard::sandbox::Sandbox;

// Shared with connect_cost and quic_shape; each bench uses its own part of them.
#[allow(dead_code)]
#[path = "connect_cost/bpf_stats.rs"]
mod bpf_stats;
#[allow(dead_code)]
#[path = "connect_cost/setups.rs"]
mod setups;
#[allow(dead_code)]
#[path = "connect_cost/stats.rs"]
mod stats;
#[path = "resolver/unbound.rs"]
mod unbound;
#[allow(dead_code)]
#[path = "resolver/workload.rs"]
mod workload;

use crate::{
    bpf_stats::{Counts, StatsOn},
    unbound::{Perf, Servers, dnsperf},
    workload::{
        ProgramCost, Setup, Setups, TempDir, check_stop, counters, counters_delta,
        effective_programs, fast_path_namespaces, median_costs, program_costs, stop_on_signals,
        thousands,
    },
};

struct Options {
    rounds: usize,
    seconds: f64,
    stats_seconds: f64,
    json: bool,
    /// Only these setups (`--setups attach,run`; no guard is always measured, as the base).
    only: Option<Vec<Setup>>,
}

impl Options {
    /// Tolerant: cargo passes `--bench`; that and a bench filter are ignored.
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options {
            rounds: 3,
            seconds: 8.0,
            stats_seconds: 3.0,
            json: false,
            only: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .with_context(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--rounds" => options.rounds = value("--rounds")?.parse()?,
                "--seconds" => options.seconds = value("--seconds")?.parse()?,
                "--stats-seconds" => options.stats_seconds = value("--stats-seconds")?.parse()?,
                "--json" => options.json = true,
                "--setups" => {
                    let list = value("--setups")?;
                    let mut only = vec![Setup::NoGuard];
                    for name in list.split(',') {
                        only.push(match name {
                            "floor" => Setup::Floor,
                            "attach" => Setup::Attach,
                            "run" => Setup::Run,
                            "no-guard" => continue,
                            _ => bail!("--setups: no setup '{name}' (floor, attach, run)"),
                        });
                    }
                    options.only = Some(only);
                }
                _ => {}
            }
        }
        anyhow::ensure!(options.rounds > 0, "--rounds must be at least 1");
        Ok(options)
    }
}

/// One timed run.
#[derive(Serialize)]
struct Measured {
    setup: Setup,
    round: usize,
    perf: Perf,
    /// The forwarder's CPU time (its one thread, the guard's programs included) per query.
    forwarder_cpu_ns_per_query: f64,
    agent_cpu_ns_per_query: Option<f64>,
    counters: BTreeMap<String, u64>,
    fast_path_namespaces: Option<usize>,
    /// From the stats window after the timed run (empty with no guard).
    programs: Vec<ProgramCost>,
    stats_queries: u64,
}

/// One setup over all rounds.
#[derive(Serialize)]
struct Summary {
    setup: Setup,
    median_qps: f64,
    /// Median qps of no guard over this setup's (1.056 = 5.6% fewer queries per second).
    cost: f64,
    /// The same, round by round.
    round_costs: Vec<f64>,
    /// Median forwarder CPU per query.
    forwarder_cpu_ns_per_query: f64,
    /// Over no guard's (1.01 = the forwarder spends 1% more CPU on a query): steadier than the
    /// qps ratio, which the machine's other work moves.
    cpu_cost: f64,
    agent_cpu_ns_per_query: Option<f64>,
    checked_per_query: f64,
    /// Sum over all rounds of every counter.
    counters: BTreeMap<String, u64>,
    programs: Vec<ProgramCost>,
    program_ns_per_query: f64,
}

#[derive(Serialize)]
struct Report {
    rounds: usize,
    seconds: f64,
    runs: Vec<Measured>,
    summary: Vec<Summary>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Options::parse(&args).and_then(|options| orchestrate(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("resolver: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn orchestrate(options: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root: it makes a cgroup and a network namespace and loads BPF programs \
             (run: sudo cargo bench -p udpguard --bench resolver)"
        );
    }
    stop_on_signals();
    let sandbox = Sandbox::new("resolver")?;
    // SAFETY: single-threaded here; the guard's library code reads this to find its pins.
    unsafe { std::env::set_var("UDPGUARD_PIN_ROOT", &sandbox.pin_root) };
    let dir = TempDir::new("resolver")?;
    let servers = Servers::start(&sandbox, &dir.0)?;
    let mut setups = Setups::new(&sandbox, Some(workload::OTHERS_CPU))?;
    eprintln!(
        "resolver: sandbox {}; {} rounds of {} s per setup",
        sandbox.name, options.rounds, options.seconds
    );
    let mut runs = Vec::new();
    for round in 0..options.rounds {
        for setup in Setup::order(round) {
            if options
                .only
                .as_ref()
                .is_some_and(|only| !only.contains(&setup))
            {
                continue;
            }
            check_stop()?;
            let measured = measure(
                options,
                &sandbox,
                &dir,
                &mut setups,
                servers.forwarder_pid(),
                setup,
                round,
            )?;
            eprintln!(
                "resolver: round {} {:>22}: {:>8} qps, forwarder {:.2} us/query{}",
                round + 1,
                setup.label(),
                thousands(measured.perf.qps),
                measured.forwarder_cpu_ns_per_query / 1000.0,
                measured
                    .agent_cpu_ns_per_query
                    .map(|ns| format!(", agent {ns:.0} ns/query"))
                    .unwrap_or_default()
            );
            runs.push(measured);
        }
    }
    setups.finish()?;
    drop(servers);
    drop(sandbox);

    let summary = summarize(&runs);
    let report = Report {
        rounds: options.rounds,
        seconds: options.seconds,
        runs,
        summary,
    };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    let refused: u64 = report
        .summary
        .iter()
        .map(|s| s.counters.get("rejected").copied().unwrap_or(0))
        .sum();
    if refused > 0 {
        bail!("the guard refused {refused} connects of a workload that has no conflicts");
    }
    Ok(())
}

fn measure(
    options: &Options,
    sandbox: &Sandbox,
    dir: &TempDir,
    setups: &mut Setups,
    forwarder: u32,
    setup: Setup,
    round: usize,
) -> anyhow::Result<Measured> {
    setups.set(setup)?;
    // Warm up. (The forwarder's upstream sockets have no reuse option: they share their port
    // with nobody, so the guard has no tuple to check and the agent no namespace to load.)
    dnsperf(sandbox, &dir.0, 1.0)?;

    let counters_before = counters();
    let cpu_before = setups.agent_cpu_ns()?;
    let forwarder_before = workload::cpu_ns(forwarder)?;
    let perf = dnsperf(sandbox, &dir.0, options.seconds)?;
    let forwarder_after = workload::cpu_ns(forwarder)?;
    let cpu_after = setups.agent_cpu_ns()?;
    let forwarder_cpu_ns_per_query =
        forwarder_after.saturating_sub(forwarder_before) as f64 / perf.completed.max(1) as f64;
    let counters = counters_delta(&counters_before, &workload::counters());
    let fast_path_namespaces = fast_path_namespaces();
    let agent_cpu_ns_per_query = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| (after - before) as f64 / perf.completed.max(1) as f64);

    let (programs, stats_queries) = if setup == Setup::NoGuard {
        (Vec::new(), 0)
    } else {
        let programs = effective_programs(&sandbox.cgroup)?;
        let on = StatsOn::enable()?;
        let before = Counts::read()?;
        let perf = dnsperf(sandbox, &dir.0, options.stats_seconds)?;
        let after = Counts::read()?;
        drop(on);
        (
            program_costs(&programs, &before, &after, perf.completed)?,
            perf.completed,
        )
    };
    Ok(Measured {
        setup,
        round,
        perf,
        forwarder_cpu_ns_per_query,
        agent_cpu_ns_per_query,
        counters,
        fast_path_namespaces,
        programs,
        stats_queries,
    })
}

fn summarize(runs: &[Measured]) -> Vec<Summary> {
    let of = |setup: Setup| runs.iter().filter(move |r| r.setup == setup);
    let base: Vec<f64> = of(Setup::NoGuard).map(|r| r.perf.qps).collect();
    let base_median = stats::median(&base);
    let base_cpu: Vec<f64> = of(Setup::NoGuard)
        .map(|r| r.forwarder_cpu_ns_per_query)
        .collect();
    let base_cpu_median = stats::median(&base_cpu);
    Setup::ALL
        .iter()
        .filter(|&&setup| of(setup).next().is_some())
        .map(|&setup| {
            let qps: Vec<f64> = of(setup).map(|r| r.perf.qps).collect();
            let median_qps = stats::median(&qps);
            let round_costs = of(setup)
                .filter_map(|r| {
                    of(Setup::NoGuard)
                        .find(|b| b.round == r.round)
                        .map(|b| b.perf.qps / r.perf.qps)
                })
                .collect();
            let cpu: Vec<f64> = of(setup).filter_map(|r| r.agent_cpu_ns_per_query).collect();
            let forwarder: Vec<f64> = of(setup).map(|r| r.forwarder_cpu_ns_per_query).collect();
            let forwarder_cpu_ns_per_query = stats::median(&forwarder);
            let mut counters = BTreeMap::new();
            for run in of(setup) {
                for (k, v) in &run.counters {
                    *counters.entry(k.clone()).or_insert(0) += v;
                }
            }
            let queries: u64 = of(setup).map(|r| r.perf.completed).sum();
            let programs = median_costs(&of(setup).map(|r| r.programs.clone()).collect::<Vec<_>>());
            Summary {
                setup,
                median_qps,
                cost: base_median / median_qps,
                round_costs,
                forwarder_cpu_ns_per_query,
                cpu_cost: forwarder_cpu_ns_per_query / base_cpu_median,
                agent_cpu_ns_per_query: (!cpu.is_empty()).then(|| stats::median(&cpu)),
                checked_per_query: counters.get("checked").copied().unwrap_or(0) as f64
                    / queries.max(1) as f64,
                counters,
                program_ns_per_query: programs.iter().map(|p| p.ns_per_unit).sum(),
                programs,
            }
        })
        .collect()
}

fn table(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nResolver workload ({} rounds, {} s per run; cost = median qps of no guard / median qps)\n",
        report.rounds, report.seconds
    );
    let _ = writeln!(
        out,
        "| setup | queries per second (median) | cost | cost per round | forwarder CPU us/query | CPU cost | BPF ns/query | agent CPU ns/query | checked/query | refused |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for s in &report.summary {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3}x | {} | {:.2} | {:.3}x | {} | {} | {:.2} | {} |",
            s.setup.label(),
            thousands(s.median_qps),
            s.cost,
            s.round_costs
                .iter()
                .map(|c| format!("{c:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            s.forwarder_cpu_ns_per_query / 1000.0,
            s.cpu_cost,
            if s.programs.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", s.program_ns_per_query)
            },
            s.agent_cpu_ns_per_query
                .map_or("-".to_string(), |ns| format!("{ns:.0}")),
            s.checked_per_query,
            s.counters.get("rejected").copied().unwrap_or(0),
        );
    }
    let _ = writeln!(
        out,
        "\nPrograms (BPF stats, median over the rounds' windows)\n\n| setup | program | hook | ns per run | runs per query | ns per query |\n|---|---|---|---:|---:|---:|"
    );
    for s in &report.summary {
        for p in &s.programs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.0} |",
                s.setup.label(),
                p.name,
                p.attach_type,
                p.ns_per_run,
                p.runs_per_unit,
                p.ns_per_unit
            );
        }
    }
    let _ = writeln!(out, "\nCounters (all rounds)\n");
    for s in &report.summary {
        if !s.counters.is_empty() {
            let _ = writeln!(out, "- {}: {:?}", s.setup.label(), s.counters);
        }
    }
    out
}
