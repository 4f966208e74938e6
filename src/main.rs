//! The `aspen` command: parses arguments and wires Aspen's crates together.
//! It holds no logic of its own; each subcommand lives in `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

/// Aspen: a distributed filesystem.
#[derive(Parser)]
#[command(name = "aspen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, test and compare CRUSH maps (in the manner of crushtool).
    #[command(subcommand)]
    Crush(cmd::crush::CrushCommand),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crush(command) => cmd::crush::run(command),
    }
}
