//! The SVG plot of the time per operation against the number of background sockets.
use crate::report::{Level, Measured, Report};

pub fn plot(report: &Report) -> String {
    let xs: Vec<usize> = report.levels.iter().map(|l| l.sockets).collect();
    // One line per setup; `noted` ones carry their ratio to "no program" at every point.
    let line = |label, color, dashed, noted: bool, pick: fn(&Level) -> Measured| {
        let measured: Vec<Measured> = report.levels.iter().map(pick).collect();
        svg::Series {
            label,
            color,
            dashed,
            values: measured.iter().map(|m| m.ns_per_op).collect(),
            notes: if noted {
                measured
                    .iter()
                    .map(|m| format!("{:.2}x", m.ratio.value))
                    .collect()
            } else {
                Vec::new()
            },
        }
    };
    let series = [
        line("no program", "#555555", false, false, |l| l.no_program),
        line("empty programs", "#999999", true, false, |l| l.floor),
        line("reference design", "#ff7f0e", true, false, |l| l.reference),
        line("udpguard", "#d62728", false, true, |l| l.enforce),
        line("udpguard audit", "#1f77b4", true, false, |l| l.audit),
        line("fast path (agent)", "#2ca02c", false, true, |l| l.fast),
    ];
    svg::chart(
        "UDP bind + connect + close vs connected sockets on the local port",
        &[
            &format!("measured on {}", report.machine.describe()),
            &format!(
                "mean per operation over {} interleaved rounds; labels: udpguard / no program",
                report.rounds
            ),
        ],
        &xs,
        &series,
    )
}

/// A line chart in plain SVG: categorical x (evenly spaced), logarithmic y (nanoseconds).
mod svg {
    use std::fmt::Write as _;

    pub struct Series<'a> {
        pub label: &'a str,
        pub color: &'a str,
        pub dashed: bool,
        /// Nanoseconds, one per x.
        pub values: Vec<f64>,
        /// Optional text above each point.
        pub notes: Vec<String>,
    }

    const WIDTH: f64 = 760.0;
    const HEIGHT: f64 = 460.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 170.0;
    const TOP: f64 = 56.0;
    const BOTTOM: f64 = 60.0;

    fn escape(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }

    fn time_label(ns: f64) -> String {
        if ns >= 1e6 {
            format!("{} ms", ns / 1e6)
        } else if ns >= 1e3 {
            format!("{} µs", ns / 1e3)
        } else {
            format!("{ns} ns")
        }
    }

    fn thousands(n: usize) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    /// The 1-2-5 steps (1, 2, 5, 10, 20, ...) from the one at or below `lo` to the one at or
    /// above `hi`.
    fn ticks(lo: f64, hi: f64) -> Vec<f64> {
        let first_decade = lo.log10().floor() as i32 - 1;
        let last_decade = hi.log10().ceil() as i32 + 1;
        let all: Vec<f64> = (first_decade..=last_decade)
            .flat_map(|d| [1.0, 2.0, 5.0].map(|step| step * 10f64.powi(d)))
            .collect();
        let start = all.iter().rposition(|&t| t <= lo).unwrap_or(0);
        let end = all.iter().position(|&t| t >= hi).unwrap_or(all.len() - 1);
        all[start..=end].to_vec()
    }

    /// `subtitle` lines are printed under the title.
    pub fn chart(title: &str, subtitle: &[&str], xs: &[usize], series: &[Series<'_>]) -> String {
        let values = series.iter().flat_map(|s| s.values.iter().copied());
        let (lo, hi) = values
            .filter(|v| *v > 0.0)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (1e3, 1e4) };
        let ticks = ticks(lo * 0.95, hi * 1.05);
        let (axis_lo, axis_hi) = (ticks[0].log10(), ticks[ticks.len() - 1].log10());
        let axis_hi = if axis_hi > axis_lo {
            axis_hi
        } else {
            axis_lo + 1.0
        };
        let top = TOP + 16.0 * subtitle.len() as f64;
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - top - BOTTOM;
        let x_at = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / xs.len().max(1) as f64;
        let y_at = |ns: f64| top + plot_h * (1.0 - (ns.log10() - axis_lo) / (axis_hi - axis_lo));

        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
            WIDTH / 2.0,
            escape(title)
        );
        for (i, line) in subtitle.iter().enumerate() {
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
                WIDTH / 2.0,
                48.0 + 16.0 * i as f64,
                escape(line)
            );
        }
        // Horizontal grid on the 1-2-5 steps; decades darker.
        for &ns in &ticks {
            let y = y_at(ns);
            let decade = (ns.log10() - ns.log10().round()).abs() < 1e-9;
            let (stroke, width) = if decade {
                ("#bbbbbb", 1.0)
            } else {
                ("#e4e4e4", 0.8)
            };
            let _ = writeln!(
                out,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}" stroke-width="{width}"/>"#,
                LEFT + plot_w
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                time_label(ns)
            );
        }
        // Axes and x labels.
        let _ = writeln!(
            out,
            r#"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        for (i, &x) in xs.iter().enumerate() {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x_at(i),
                top + plot_h + 18.0,
                thousands(x)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">other connected sockets on 127.0.0.1:4444 (evenly spaced)</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 14.0
        );
        let _ = writeln!(
            out,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">time per operation (log scale)</text>"#,
            top + plot_h / 2.0
        );
        // The series.
        for (n, s) in series.iter().enumerate() {
            // Notes of alternate series go above left and below right of their points: close
            // values (as at 0 sockets) keep their labels apart, and off the rising lines.
            let noted_before = series[..n].iter().filter(|s| !s.notes.is_empty()).count();
            let (note_dx, note_dy, anchor) = if noted_before % 2 == 0 {
                (-8.0, -8.0, "end")
            } else {
                (8.0, 17.0, "start")
            };
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let points: Vec<String> = s
                .values
                .iter()
                .enumerate()
                .map(|(i, &v)| format!("{:.1},{:.1}", x_at(i), y_at(v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                points.join(" "),
                s.color
            );
            for (i, &v) in s.values.iter().enumerate() {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}" stroke="{}" stroke-width="1.5"><title>{}: {}</title></circle>"#,
                    x_at(i),
                    y_at(v),
                    if s.dashed { "white" } else { s.color },
                    s.color,
                    escape(s.label),
                    crate::report::fmt_ns(v).replace(" us", " µs")
                );
                if let Some(note) = s.notes.get(i) {
                    let _ = writeln!(
                        out,
                        r#"<text x="{:.1}" y="{:.1}" fill="{}" text-anchor="{anchor}">{}</text>"#,
                        x_at(i) + note_dx,
                        y_at(v) + note_dy,
                        s.color,
                        escape(note)
                    );
                }
            }
            // Legend.
            let ly = top + 16.0 + 22.0 * n as f64;
            let lx = LEFT + plot_w + 16.0;
            let _ = writeln!(
                out,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#,
                lx + 28.0,
                s.color
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}">{}</text>"#,
                lx + 34.0,
                ly + 4.0,
                escape(s.label)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}
