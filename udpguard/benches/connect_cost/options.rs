//! The command line.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};

pub struct Options {
    pub json: bool,
    pub rounds: usize,
    pub batch_ms: u64,
    pub sockets: Vec<usize>,
    pub svg: Option<PathBuf>,
}

impl Options {
    /// Tolerant: cargo passes `--bench`, and a bench filter may follow; those are ignored.
    pub fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options {
            json: false,
            rounds: 21,
            batch_ms: 40,
            sockets: vec![0, 1_000, 10_000],
            svg: Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .expect("the crate is in a workspace")
                    .join("docs/connect_cost.svg"),
            ),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .with_context(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--json" => options.json = true,
                "--quick" => {
                    options.rounds = 5;
                    options.sockets = vec![0, 1_000];
                }
                "--rounds" => options.rounds = value(arg)?.parse().context("--rounds")?,
                "--batch-ms" => options.batch_ms = value(arg)?.parse().context("--batch-ms")?,
                "--sockets" => {
                    options.sockets = value(arg)?
                        .split(',')
                        .map(|n| n.trim().replace('_', "").parse())
                        .collect::<Result<_, _>>()
                        .context("--sockets takes a list like 0,1000,10000")?;
                }
                "--svg" => options.svg = Some(value(arg)?.into()),
                "--no-svg" => options.svg = None,
                "--help" | "-h" => {
                    println!(
                        "cargo bench -p udpguard --bench connect_cost -- [--json] [--rounds N] \
                         [--batch-ms N] [--sockets 0,1000,10000] [--svg PATH | --no-svg] [--quick]"
                    );
                    std::process::exit(0);
                }
                "--bench" => {}
                other if other.starts_with('-') => eprintln!("connect_cost: ignoring {other}"),
                _ => {} // a bench name filter
            }
        }
        ensure!(options.rounds > 0, "--rounds must be at least 1");
        ensure!(
            options.sockets.iter().all(|&n| n <= 200_000),
            "at most 200,000 background sockets"
        );
        options.sockets.sort_unstable();
        options.sockets.dedup();
        Ok(options)
    }
}
