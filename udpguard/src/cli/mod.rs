//! The command line: one module per verb, each owning its arguments, its output and its exit
//! status; [`main`] is the table from verb to module. The library below knows nothing of
//! clap and prints nothing.
mod attach;
mod detach;
mod events;
mod generate;
mod metrics;
mod run;
mod scan;
mod status;

use std::{
    fmt::{Display, Write as _},
    process::ExitCode,
};

use clap::{
    CommandFactory as _, FromArgMatches as _, Parser, Subcommand, builder::TypedValueParser as _,
};
use udpguard::settings::Choice;

/// Refuses UDP connect()s that would give two sockets the same 4-tuple.
#[derive(Parser)]
#[command(name = "udpguard", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the guard to a cgroup (again: apply mode/errno in place). It stays after exit.
    Attach(attach::Args),
    /// Detach the guard and remove its pins.
    Detach(detach::Args),
    /// List attachments: cgroup, mode, errno, programs, counters.
    Status(status::Args),
    /// Find duplicate connected UDP 4-tuples that already exist (no BPF needed).
    Scan(scan::Args),
    /// The host agent: attach (or adopt), stream conflict events, serve /metrics, until SIGTERM.
    Run(run::Args),
    /// Stream the conflict events of an existing attachment (changes nothing).
    Events(events::Args),
    /// Print the Prometheus metrics once, from the pinned counters (changes nothing).
    Metrics(metrics::Args),
    /// Print the completion script for bash, zsh, fish, elvish or powershell (the .deb installs
    /// bash's, zsh's and fish's).
    Completions(generate::CompletionsArgs),
    /// Write a man page for udpguard and each verb into a directory (the .deb installs them).
    Man(generate::ManArgs),
}

/// The command line as clap sees it: the derived one with the build's identity as its
/// version (`-V`: version and commit; `--version`: also the eBPF object's hash, the one
/// `status` compares with the pinned programs').
fn command() -> clap::Command {
    let commit = env!("UDPGUARD_GIT_COMMIT");
    let short_commit = &commit[..commit.len().min(12)];
    let object = udpguard::loader::object_sha256()
        .iter()
        .fold(String::new(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        });
    let version = env!("CARGO_PKG_VERSION");
    Cli::command()
        .version(format!("{version} (commit {short_commit})"))
        .long_version(format!(
            "{version}\ncommit: {commit}\neBPF object sha256: {object}"
        ))
}

pub fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|err| err.exit());
    match cli.command {
        Command::Attach(args) => attach::run(&args),
        Command::Detach(args) => detach::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Scan(args) => scan::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Events(args) => events::run(&args),
        Command::Metrics(args) => metrics::run(&args),
        Command::Completions(args) => generate::completions(&args, command()),
        Command::Man(args) => generate::man(&args, command()),
    }
}

/// A verb's error: the message on stderr (it says what to do), exit status 1.
fn failed(err: impl Display) -> ExitCode {
    eprintln!("udpguard: {err}");
    ExitCode::FAILURE
}

/// The value parser of a setting named by a word (`--mode enforce`), listing the words in
/// `--help`.
fn choice<T: Choice + Clone + Send + Sync>() -> impl clap::builder::TypedValueParser<Value = T> {
    clap::builder::PossibleValuesParser::new(T::ALL.iter().map(|c| c.word()))
        .map(|word| T::from_word(&word).expect("clap offers only these words"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        super::command().debug_assert();
    }
}
