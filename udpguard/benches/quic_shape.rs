//! Benchmark (issue 19): what udpguard costs a QUIC-server-shaped workload.
//!
//! In a throw-away [`Sandbox`], one unconnected socket is bound to 127.0.0.1:4433 (the
//! listener), and every client has a socket of its own bound to the same port (SO_REUSEADDR,
//! SO_REUSEPORT) and connected to the client's address: 100,000 clients by default, held by
//! worker processes in the guarded cgroup (a process may have 20,000 fds here). The clients are
//! connected once, before any guard; then, in each timed window, every worker lets its oldest
//! client leave (close) and a new one arrive (socket, bind, connect) as fast as it can, so the
//! port keeps its 100,000 connected sockets. Measured: clients per second (one arrival and one
//! departure each), for no guard, `udpguard attach` and `udpguard run` in interleaved rounds,
//! the cost against no guard in the same run, the programs' time per client from the kernel's
//! BPF stats (a separate window), the agent's CPU time per client and the guard's counters.
//!
//! Run (as root): `cargo bench -p udpguard --bench quic_shape`
//! Options (after `--`): `--clients N` (default 100000), `--processes N` (default 8),
//! `--rounds N` (default 3), `--ms N` per timed window (default 3000), `--stats-ms N`
//! (default 1000), `--json`.
use std::{collections::BTreeMap, process::ExitCode};

use anyhow::{Context as _, bail};
use serde::Serialize;
use udpguard::sandbox::Sandbox;

// Shared with connect_cost and resolver; each bench uses its own part of them.
#[allow(dead_code)]
#[path = "connect_cost/bpf_stats.rs"]
mod bpf_stats;
#[path = "quic_shape/clients.rs"]
mod clients;
#[allow(dead_code)]
#[path = "connect_cost/setups.rs"]
mod setups;
#[allow(dead_code)]
#[path = "connect_cost/stats.rs"]
mod stats;
#[allow(dead_code)]
#[path = "resolver/workload.rs"]
mod workload;

use crate::{
    bpf_stats::{Counts, StatsOn},
    clients::{Churn, Clients, WORKER_ARG, worker_main},
    workload::{
        ProgramCost, Setup, Setups, check_stop, counters, counters_delta, effective_programs,
        fast_path_namespaces, median_costs, program_costs, stop_on_signals, thousands,
    },
};

struct Options {
    clients: usize,
    processes: usize,
    rounds: usize,
    ms: u64,
    stats_ms: u64,
    json: bool,
}

impl Options {
    /// Tolerant: cargo passes `--bench`; that and a bench filter are ignored.
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options {
            clients: 100_000,
            processes: 8,
            rounds: 3,
            ms: 3_000,
            stats_ms: 1_000,
            json: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .with_context(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--clients" => options.clients = value("--clients")?.parse()?,
                "--processes" => options.processes = value("--processes")?.parse()?,
                "--rounds" => options.rounds = value("--rounds")?.parse()?,
                "--ms" => options.ms = value("--ms")?.parse()?,
                "--stats-ms" => options.stats_ms = value("--stats-ms")?.parse()?,
                "--json" => options.json = true,
                _ => {}
            }
        }
        anyhow::ensure!(options.rounds > 0, "--rounds must be at least 1");
        Ok(options)
    }
}

#[derive(Serialize)]
struct Measured {
    setup: Setup,
    round: usize,
    churn: Churn,
    agent_cpu_ns_per_client: Option<f64>,
    counters: BTreeMap<String, u64>,
    fast_path_namespaces: Option<usize>,
    programs: Vec<ProgramCost>,
}

#[derive(Serialize)]
struct Summary {
    setup: Setup,
    median_per_second: f64,
    /// Median clients per second of no guard over this setup's.
    cost: f64,
    round_costs: Vec<f64>,
    agent_cpu_ns_per_client: Option<f64>,
    failures: u64,
    counters: BTreeMap<String, u64>,
    programs: Vec<ProgramCost>,
    program_ns_per_client: f64,
}

#[derive(Serialize)]
struct Report {
    clients: usize,
    processes: usize,
    rounds: usize,
    ms: u64,
    runs: Vec<Measured>,
    summary: Vec<Summary>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(WORKER_ARG) => worker_main(&args[1..]),
        _ => Options::parse(&args).and_then(|options| orchestrate(&options)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quic_shape: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn orchestrate(options: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root: it makes a cgroup and a network namespace and loads BPF programs \
             (run: sudo cargo bench -p udpguard --bench quic_shape)"
        );
    }
    stop_on_signals();
    let sandbox = Sandbox::new("quic-shape")?;
    // SAFETY: single-threaded here; the guard's library code reads this to find its pins.
    unsafe { std::env::set_var("UDPGUARD_PIN_ROOT", &sandbox.pin_root) };
    eprintln!(
        "quic_shape: sandbox {}; connecting {} clients in {} processes",
        sandbox.name, options.clients, options.processes
    );
    let mut clients = Clients::start(&sandbox, options.clients, options.processes)?;
    let mut setups = Setups::new(&sandbox, None)?;
    let mut runs = Vec::new();
    for round in 0..options.rounds {
        for setup in Setup::order(round) {
            check_stop()?;
            let measured = measure(options, &sandbox, &mut clients, &mut setups, setup, round)?;
            eprintln!(
                "quic_shape: round {} {:>16}: {:>8} clients/s{}",
                round + 1,
                setup.label(),
                thousands(measured.churn.per_second),
                measured
                    .agent_cpu_ns_per_client
                    .map(|ns| format!(", agent {ns:.0} ns/client"))
                    .unwrap_or_default()
            );
            runs.push(measured);
        }
    }
    setups.finish()?;
    drop(clients);
    drop(sandbox);

    let summary = summarize(&runs);
    let report = Report {
        clients: options.clients,
        processes: options.processes,
        rounds: options.rounds,
        ms: options.ms,
        runs,
        summary,
    };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    let failures: u64 = report.summary.iter().map(|s| s.failures).sum();
    if failures > 0 {
        bail!("{failures} client connects failed in a workload that has no conflicts");
    }
    Ok(())
}

fn measure(
    options: &Options,
    sandbox: &Sandbox,
    clients: &mut Clients,
    setups: &mut Setups,
    setup: Setup,
    round: usize,
) -> anyhow::Result<Measured> {
    setups.set(setup)?;
    if setup == Setup::Run {
        setups.wait_fast_path(|| clients.churn(20).map(drop))?;
    }
    clients.churn(200)?; // warm-up

    let counters_before = counters();
    let cpu_before = setups.agent_cpu_ns()?;
    let churn = clients.churn(options.ms)?;
    let cpu_after = setups.agent_cpu_ns()?;
    let counters = counters_delta(&counters_before, &workload::counters());
    let fast_path_namespaces = fast_path_namespaces();
    let agent_cpu_ns_per_client = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| (after - before) as f64 / churn.clients.max(1) as f64);

    let programs = if setup == Setup::NoGuard {
        Vec::new()
    } else {
        let programs = effective_programs(&sandbox.cgroup)?;
        let on = StatsOn::enable()?;
        let before = Counts::read()?;
        let window = clients.churn(options.stats_ms)?;
        let after = Counts::read()?;
        drop(on);
        program_costs(&programs, &before, &after, window.clients)?
    };
    Ok(Measured {
        setup,
        round,
        churn,
        agent_cpu_ns_per_client,
        counters,
        fast_path_namespaces,
        programs,
    })
}

fn summarize(runs: &[Measured]) -> Vec<Summary> {
    let of = |setup: Setup| runs.iter().filter(move |r| r.setup == setup);
    let base: Vec<f64> = of(Setup::NoGuard).map(|r| r.churn.per_second).collect();
    let base_median = stats::median(&base);
    Setup::ALL
        .iter()
        .map(|&setup| {
            let rates: Vec<f64> = of(setup).map(|r| r.churn.per_second).collect();
            let median_per_second = stats::median(&rates);
            let round_costs = of(setup)
                .filter_map(|r| {
                    of(Setup::NoGuard)
                        .find(|b| b.round == r.round)
                        .map(|b| b.churn.per_second / r.churn.per_second)
                })
                .collect();
            let cpu: Vec<f64> = of(setup)
                .filter_map(|r| r.agent_cpu_ns_per_client)
                .collect();
            let mut counters = BTreeMap::new();
            for run in of(setup) {
                for (k, v) in &run.counters {
                    *counters.entry(k.clone()).or_insert(0) += v;
                }
            }
            let programs = median_costs(&of(setup).map(|r| r.programs.clone()).collect::<Vec<_>>());
            Summary {
                setup,
                median_per_second,
                cost: base_median / median_per_second,
                round_costs,
                agent_cpu_ns_per_client: (!cpu.is_empty()).then(|| stats::median(&cpu)),
                failures: of(setup).map(|r| r.churn.failures).sum(),
                counters,
                program_ns_per_client: programs.iter().map(|p| p.ns_per_unit).sum(),
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
        "\nQUIC-shaped workload ({} clients connected on one port, {} processes, {} rounds of \
         {} ms; a client = one arrival and one departure; cost = median rate of no guard / \
         median rate)\n",
        report.clients, report.processes, report.rounds, report.ms
    );
    let _ = writeln!(
        out,
        "| setup | clients per second (median) | cost | cost per round | BPF ns/client | agent CPU ns/client | failed |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|");
    for s in &report.summary {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3}x | {} | {} | {} | {} |",
            s.setup.label(),
            thousands(s.median_per_second),
            s.cost,
            s.round_costs
                .iter()
                .map(|c| format!("{c:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            if s.programs.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", s.program_ns_per_client)
            },
            s.agent_cpu_ns_per_client
                .map_or("-".to_string(), |ns| format!("{ns:.0}")),
            s.failures,
        );
    }
    let _ = writeln!(
        out,
        "\nPrograms (BPF stats, median over the rounds' windows)\n\n| setup | program | hook | ns per run | runs per client | ns per client |\n|---|---|---|---:|---:|---:|"
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
