//! `udpguard-race`: proves the guard leaves no race window. Threads behind a barrier race to
//! bind and connect one 4-tuple, round after round; a round in which two or more connects
//! succeed made a duplicate. Runs in its own sandbox (child cgroup + network namespace), first
//! without the guard as a control, then with it. Needs root.
//!
//!     udpguard-race [--racers 4] [--rounds 100000] [--control-rounds 1000] [--json]
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::{Command, ExitCode, Stdio},
    sync::{Arc, Barrier, Mutex},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};
use udpguard::{guard, sandbox::Sandbox};
use udpguard_common::Counter;

const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4444);
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1111);

#[derive(Parser)]
#[command(name = "udpguard-race", about)]
struct Cli {
    #[command(subcommand)]
    worker: Option<Worker>,
    /// threads racing in each round
    #[arg(long, default_value_t = 4)]
    racers: usize,
    /// rounds with the guard attached
    #[arg(long, default_value_t = 100_000)]
    rounds: u64,
    /// rounds without the guard (the control)
    #[arg(long, default_value_t = 1_000)]
    control_rounds: u64,
    /// print one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Worker {
    /// (internal) race inside the sandbox and print the tally as JSON
    #[command(hide = true)]
    Worker { racers: usize, rounds: u64 },
}

/// What one batch of rounds saw.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    racers: usize,
    rounds: u64,
    /// Rounds in which more than one connect succeeded.
    rounds_with_duplicates: u64,
    /// Successful connects beyond the first, over all rounds.
    duplicate_sockets: u64,
    /// Connects refused (EPERM from the guard).
    refused: u64,
    seconds: f64,
}

#[derive(Serialize)]
struct Report {
    without_guard: Tally,
    with_guard: Tally,
    /// Connects the guard refused through a racer's claim rather than the kernel's lookup.
    caught_by_claims: u64,
    /// Claims taken over as stale (older than 10 ms with no holder): a racer paused that long
    /// between its hook and the kernel hashing it looks like one whose connect failed.
    stale_claims: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.worker {
        Some(Worker::Worker { racers, rounds }) => race(racers, rounds).map(|tally| {
            println!(
                "{}",
                serde_json::to_string(&tally).expect("tally serializes")
            );
        }),
        None => orchestrate(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("udpguard-race: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Control rounds, then attach, then guarded rounds; fails if the guard let a duplicate by.
fn orchestrate(cli: &Cli) -> anyhow::Result<()> {
    let sandbox = Sandbox::new("race")?;
    // SAFETY: single-threaded so far; the guard's library code reads this to find its pins.
    unsafe { std::env::set_var("UDPGUARD_PIN_ROOT", &sandbox.pin_root) };
    let without_guard = run_worker(&sandbox, cli.racers, cli.control_rounds)?;
    guard::attach(&guard::AttachRequest {
        cgroup: Some(sandbox.cgroup.clone()),
        ..Default::default()
    })?;
    let with_guard = run_worker(&sandbox, cli.racers, cli.rounds)?;
    let counters = udpguard::status::collect()
        .attachments
        .first()
        .map(|a| a.counters.clone())
        .unwrap_or_default();
    let counter = |c: Counter| counters.get(c.name()).copied().unwrap_or(0);
    let report = Report {
        without_guard,
        with_guard,
        caught_by_claims: counter(Counter::Raced),
        stale_claims: counter(Counter::StaleClaims),
    };
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for (label, t) in [
            ("without the guard", &report.without_guard),
            ("with the guard   ", &report.with_guard),
        ] {
            println!(
                "{label}: {} racers x {} rounds: {} rounds with duplicates ({} extra sockets), {} refused, {:.1}s",
                t.racers,
                t.rounds,
                t.rounds_with_duplicates,
                t.duplicate_sockets,
                t.refused,
                t.seconds
            );
        }
        println!(
            "racers refused through a claim (the lookup alone would have let them by): {}; \
             claims taken over as stale: {}",
            report.caught_by_claims, report.stale_claims
        );
    }
    if report.with_guard.rounds_with_duplicates > 0 {
        bail!("the guard let duplicates through");
    }
    Ok(())
}

/// Runs this binary's worker inside the sandbox's cgroup and network namespace.
fn run_worker(sandbox: &Sandbox, racers: usize, rounds: u64) -> anyhow::Result<Tally> {
    let exe = std::env::current_exe().context("finding my own binary")?;
    let out = sandbox
        .command(exe, true)
        .args(["worker", &racers.to_string(), &rounds.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running the race worker")?;
    if !out.status.success() {
        bail!("the race worker failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading the worker's tally")
}

/// The race itself: `racers` threads, each round: bind, wait at the barrier, connect, report;
/// then all close before the next round.
fn race(racers: usize, rounds: u64) -> anyhow::Result<Tally> {
    bring_lo_up();
    let start = Barrier::new(racers);
    let done = Barrier::new(racers + 1);
    let results = Mutex::new(Vec::with_capacity(racers));
    let shared = Arc::new((start, done, results));
    let handles: Vec<_> = (0..racers)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let (start, done, results) = &*shared;
                for _ in 0..rounds {
                    let socket = bound_socket()?;
                    start.wait();
                    let outcome = socket.connect(&SocketAddr::V4(PEER).into());
                    results.lock().unwrap().push(outcome.is_ok());
                    done.wait(); // the round is tallied while every socket is still open
                    done.wait();
                    drop(socket);
                }
                Ok(())
            })
        })
        .collect();
    let (_, done, results) = &*shared;
    let mut tally = Tally {
        racers,
        rounds,
        ..Tally::default()
    };
    let began = Instant::now();
    for _ in 0..rounds {
        done.wait();
        let mut round = results.lock().unwrap();
        let connected = round.iter().filter(|ok| **ok).count() as u64;
        tally.refused += round.len() as u64 - connected;
        if connected > 1 {
            tally.rounds_with_duplicates += 1;
            tally.duplicate_sockets += connected - 1;
        }
        round.clear();
        drop(round);
        done.wait();
    }
    tally.seconds = began.elapsed().as_secs_f64();
    for handle in handles {
        handle.join().expect("racer panicked")?;
    }
    Ok(tally)
}

fn bound_socket() -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::V4(LOCAL).into())?;
    Ok(socket)
}

/// The sandbox's namespace has `lo` up already; this is for a namespace made by hand.
fn bring_lo_up() {
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
}
