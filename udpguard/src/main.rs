//! The `udpguard` binary: the command line is in `cli/`, one module per verb.
use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}
