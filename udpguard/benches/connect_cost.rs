//! Benchmark (issue 7): what udpguard adds to a UDP `connect()`.
//!
//! The measured operation is the reference design's loop body: `socket(AF_INET, SOCK_DGRAM)`,
//! `SO_REUSEADDR`, `bind(127.0.0.1:4444)`, `connect(127.0.0.1:1111)`, `close`. It runs in a
//! worker process inside a throw-away [`Sandbox`] (child cgroup + network namespace), while
//! helper processes in the same cgroup hold N other sockets connected from 127.0.0.1:4444 to
//! distinct peers: the sockets `bpf_sk_lookup_udp` walks when there is no conflict.
//!
//! For every N, six setups are measured in interleaved rounds (so they share the machine's
//! noise): no program attached, empty programs on the three hooks the guard uses (the floor any
//! program there pays: the cgroup's program array, the call and its return), the reference
//! design (one connect4 program: the lookup, EPERM), udpguard (enforce), udpguard in audit
//! mode, and udpguard with the agent's fast path on. Each round gives one batch per setup; the
//! table shows the mean time per operation and its ratio to "no program", with a 95% bootstrap
//! interval over rounds (why the mean: see `connect_cost/stats.rs`). The hit path (a
//! holder already has the 4-tuple, so the guard refuses the connect with EPERM) is measured the
//! same way against "no program" (where that connect succeeds and makes the duplicate).
//!
//! The programs' own time comes from the kernel's BPF run-time stats (run_time_ns / run_cnt of
//! the attached connect4, sock_create and sock_release programs), the median over separate
//! windows: the stats cost clock reads on every program run, so they are off while the batches
//! are timed.
//!
//! Run (as root): `cargo bench -p udpguard --bench connect_cost`
//! Options (after `--`): `--json`, `--rounds N`, `--batch-ms N`, `--sockets 0,1000,10000`,
//! `--svg PATH` (default docs/connect_cost.svg), `--no-svg`, `--quick`.
//!
//! This file wires the pieces in `connect_cost/`: `options.rs` (the command line), `worker.rs`
//! (the measured loop in its worker process, the background sockets' holders), `setups.rs`
//! (the setups, and switching the guard and the baselines between them), `measure.rs` (the
//! rounds and the stats windows at one N), `bpf_stats.rs` (BPF_ENABLE_STATS, the programs' run
//! times), `stats.rs` (means, ratios, intervals), `report.rs` (what is kept, the tables; the
//! JSON is the same structures) and `plot.rs` (the SVG).
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use udpguard::sandbox::Sandbox;

#[path = "connect_cost/bpf_stats.rs"]
mod bpf_stats;
#[path = "connect_cost/measure.rs"]
mod measure;
#[path = "connect_cost/options.rs"]
mod options;
#[path = "connect_cost/plot.rs"]
mod plot;
#[path = "connect_cost/report.rs"]
mod report;
#[path = "connect_cost/setups.rs"]
mod setups;
#[path = "connect_cost/stats.rs"]
mod stats;
#[path = "connect_cost/worker.rs"]
mod worker;

use crate::{
    measure::measure_level,
    options::Options,
    plot::plot,
    report::{Machine, Report, table},
    setups::{Guard, Setup},
    worker::{
        Background, HOLDER_ARG, WORKER_ARG, Worker, holder_main, stop_between_batches_on_signals,
        worker_main,
    },
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(WORKER_ARG) => worker_main(),
        Some(HOLDER_ARG) => holder_main(&args[1..]),
        _ => Options::parse(&args).and_then(|options| orchestrate(&options)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("connect_cost: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn orchestrate(options: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root: it makes a cgroup and a network namespace and loads BPF programs \
             (run: sudo cargo bench -p udpguard --bench connect_cost)"
        );
    }
    stop_between_batches_on_signals();
    let machine = Machine::probe();
    let bpf_stats_were_on = bpf_stats::already_on();
    let sandbox = Sandbox::new("connect-cost")?;
    // SAFETY: single-threaded; the guard's library code reads this to find its pins.
    unsafe { std::env::set_var("UDPGUARD_PIN_ROOT", &sandbox.pin_root) };
    eprintln!(
        "connect_cost: {}; sandbox {}; {} rounds of ~{} ms batches",
        machine.describe(),
        sandbox.name,
        options.rounds,
        options.batch_ms
    );
    if bpf_stats_were_on {
        eprintln!(
            "connect_cost: note: kernel.bpf_stats_enabled is already 1: the timed batches \
             include the stats' own cost"
        );
    }
    let mut worker = Worker::spawn(&sandbox)?;
    let mut background = Background::default();
    let mut guard = Guard::new(&sandbox.cgroup)?;
    let mut report = Report {
        machine,
        rounds: options.rounds,
        bpf_stats_were_on,
        events_lost: 0,
        levels: Vec::new(),
    };
    for &sockets in &options.sockets {
        let level = measure_level(
            options,
            &sandbox,
            &mut worker,
            &mut background,
            &mut guard,
            sockets,
            &mut report.events_lost,
        )?;
        report.levels.push(level);
    }
    guard.set(Setup::NoProgram)?;
    drop(worker);
    drop(background);
    drop(sandbox);

    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    if let Some(path) = &options.svg {
        std::fs::write(path, plot(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("connect_cost: plot written to {}", path.display());
    }
    Ok(())
}
