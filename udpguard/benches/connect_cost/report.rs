//! The results: what is kept per N, the machine, the text tables (the JSON is the same
//! structures, serialized).
use serde::Serialize;

use crate::{
    bpf_stats::{ProgramTime, ProgramTimes},
    measure::STATS_WINDOWS,
    stats,
};

/// One setup at one N: time per operation, and its ratio to "no program" (paired by round).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Measured {
    pub ns_per_op: f64,
    pub ratio: stats::Ratio,
}

#[derive(Debug, Default, Serialize)]
pub struct Level {
    /// Other connected sockets on 127.0.0.1:4444.
    pub sockets: usize,
    pub ops_per_batch: u64,
    pub hit_ops_per_batch: u64,
    pub no_program: Measured,
    /// Empty programs on the same three hooks.
    pub floor: Measured,
    /// The reference design (one connect4 program, the full lookup).
    pub reference: Measured,
    pub hit_reference: Measured,
    pub enforce: Measured,
    pub audit: Measured,
    /// The refused connect (enforce) and the same operation with no program, where that
    /// connect succeeds and makes the duplicate.
    pub hit_no_program: Measured,
    pub hit_enforce: Measured,
    /// Enforce with the agent's O(1) no-conflict path on.
    pub fast: Measured,
    pub hit_fast: Measured,
    pub programs_enforce: Option<ProgramTimes>,
    pub programs_audit: Option<ProgramTimes>,
    pub programs_hit: Option<ProgramTimes>,
    pub programs_fast: Option<ProgramTimes>,
    pub programs_floor: Option<ProgramTimes>,
    pub programs_reference: Option<ProgramTime>,
    pub programs_hit_reference: Option<ProgramTime>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), Linux {}",
            self.cpus, self.cpu_model, self.kernel
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub rounds: usize,
    /// Whether kernel.bpf_stats_enabled was already 1 (then the timed batches include the
    /// stats' own cost).
    pub bpf_stats_were_on: bool,
    /// Conflict events dropped because the ring buffer was full (0 expected).
    pub events_lost: u64,
    pub levels: Vec<Level>,
}

/// "91 ns", "3.16 us", "606 us", "1.23 ms".
pub fn fmt_ns(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "us")
    } else {
        (ns / 1e6, "ms")
    };
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {unit}")
}

fn fmt_ratio(r: &stats::Ratio) -> String {
    format!("{:.2}x [{:.2}-{:.2}]", r.value, r.low, r.high)
}

/// "n/a" without the BPF stats.
fn fmt_or_na(ns: Option<f64>) -> String {
    ns.map_or_else(|| "n/a".into(), fmt_ns)
}

fn fmt_program(p: Option<ProgramTime>) -> String {
    fmt_or_na(p.map(|p| p.ns_per_run))
}

/// The programs' time per operation.
fn fmt_total(p: Option<ProgramTimes>) -> String {
    fmt_or_na(p.map(|p| p.total()))
}

/// A text table's layout: the columns' widths as they print (" | " between groups of columns,
/// " " inside one; every cell right-aligned), their names, and the length of the rule under
/// them.
struct Layout {
    columns: &'static str,
    names: &'static [&'static str],
    /// As long as it has always been printed: the programs and hit tables' rules are a few
    /// dashes wider than their rows.
    rule: usize,
}

/// Sockets | no program | time and ratio of each setup | c4 alone, c4 fast.
const SETUPS: Layout = Layout {
    columns: "8 | 10 | 10 18 | 10 18 | 10 18 | 10 18 | 10 18 | 9 9",
    names: &[
        "sockets",
        "no program",
        "empty x3",
        "ratio",
        "reference",
        "ratio",
        "udpguard",
        "ratio",
        "audit",
        "ratio",
        "fast path",
        "ratio",
        "c4 alone",
        "c4 fast",
    ],
    rule: 203,
};
const PROGRAMS: Layout = Layout {
    columns: "8 | 10 10 10 10 | 10 10 | 10 10 | 10 | 10 10 | 10",
    names: &[
        "sockets", "connect4", "create", "release", "per op", "audit c4", "per op", "fast c4",
        "per op", "hit c4", "empty c4", "per op", "ref c4",
    ],
    rule: 158,
};
const HIT: Layout = Layout {
    columns: "8 | 10 | 10 18 | 10 10 | 10 18 | 10",
    names: &[
        "sockets",
        "no program",
        "refused",
        "ratio",
        "connect4",
        "per op",
        "reference",
        "ratio",
        "ref c4",
    ],
    rule: 125,
};

impl Layout {
    fn row<S: AsRef<str>>(&self, out: &mut String, cells: &[S]) {
        let mut cells = cells.iter();
        let line: Vec<String> = self
            .columns
            .split(' ')
            .map(|token| match token.parse::<usize>() {
                Ok(width) => {
                    let cell = cells.next().expect("a cell for every column").as_ref();
                    format!("{cell:>width$}")
                }
                Err(_) => token.to_string(), // the "|" between groups
            })
            .collect();
        assert!(cells.next().is_none(), "a column for every cell");
        out.push_str(&line.join(" "));
        out.push('\n');
    }

    /// The column names and the rule under them.
    fn header(&self, out: &mut String) {
        self.row(out, self.names);
        out.push_str(&"-".repeat(self.rule));
        out.push('\n');
    }
}

pub fn table(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nconnect cost: socket + SO_REUSEADDR + bind 127.0.0.1:4444 + connect 127.0.0.1:1111 + close"
    );
    let _ = writeln!(
        out,
        "{}; mean per op over {} interleaved rounds; ratio to no program: ratio of the means [95% interval, bootstrap over rounds]",
        report.machine.describe(),
        report.rounds
    );
    let _ = writeln!(out);
    SETUPS.header(&mut out);
    for l in &report.levels {
        let mut cells = vec![l.sockets.to_string(), fmt_ns(l.no_program.ns_per_op)];
        for m in [l.floor, l.reference, l.enforce, l.audit, l.fast] {
            cells.extend([fmt_ns(m.ns_per_op), fmt_ratio(&m.ratio)]);
        }
        cells.extend([
            fmt_program(l.programs_enforce.map(|p| p.connect4)),
            fmt_program(l.programs_fast.map(|p| p.connect4)),
        ]);
        SETUPS.row(&mut out, &cells);
    }
    let _ = writeln!(
        out,
        "\nprogram time per run (BPF stats: run_time_ns / run_cnt, median of {STATS_WINDOWS} windows); \
         per op = connect4 + sock_create + sock_release:"
    );
    PROGRAMS.header(&mut out);
    for l in &report.levels {
        PROGRAMS.row(
            &mut out,
            &[
                l.sockets.to_string(),
                fmt_program(l.programs_enforce.map(|p| p.connect4)),
                fmt_program(l.programs_enforce.map(|p| p.sock_create)),
                fmt_program(l.programs_enforce.map(|p| p.sock_release)),
                fmt_total(l.programs_enforce),
                fmt_program(l.programs_audit.map(|p| p.connect4)),
                fmt_total(l.programs_audit),
                fmt_program(l.programs_fast.map(|p| p.connect4)),
                fmt_total(l.programs_fast),
                fmt_program(l.programs_hit.map(|p| p.connect4)),
                fmt_program(l.programs_floor.map(|p| p.connect4)),
                fmt_total(l.programs_floor),
                fmt_program(l.programs_reference),
            ],
        );
    }
    let _ = writeln!(
        out,
        "empty x3: empty programs on connect4, sock_create and sock_release, the floor of any \
         program on the three hooks the guard uses; reference: the reference design's connect4 \
         (the lookup, EPERM)"
    );
    let _ = writeln!(
        out,
        "\nhit path: a holder already has 127.0.0.1:4444 -> 127.0.0.1:1111; udpguard refuses the \
         loop's connect (EPERM); with no program it succeeds (a duplicate):"
    );
    HIT.header(&mut out);
    for l in &report.levels {
        HIT.row(
            &mut out,
            &[
                l.sockets.to_string(),
                fmt_ns(l.hit_no_program.ns_per_op),
                fmt_ns(l.hit_enforce.ns_per_op),
                fmt_ratio(&l.hit_enforce.ratio),
                fmt_program(l.programs_hit.map(|p| p.connect4)),
                fmt_total(l.programs_hit),
                fmt_ns(l.hit_reference.ns_per_op),
                fmt_ratio(&l.hit_reference.ratio),
                fmt_program(l.programs_hit_reference),
            ],
        );
    }
    if report.events_lost > 0 {
        let _ = writeln!(
            out,
            "\nnote: {} conflict events were lost (ring buffer full): some refusals took the \
             events_lost path",
            report.events_lost
        );
    }
    if report.bpf_stats_were_on {
        let _ = writeln!(
            out,
            "\nnote: kernel.bpf_stats_enabled was already 1: every timed batch with a program \
             includes the stats' clock reads"
        );
    }
    out
}
