use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "udpguard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find duplicate connected UDP 4-tuples that already exist (no BPF needed).
    Scan(udpguard::scan::ScanArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Scan(args) => udpguard::scan::run(&args),
    };
    std::process::exit(code);
}
