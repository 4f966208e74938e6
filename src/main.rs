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
    /// Run or manage a metadata server (MDS).
    Mds(cmd::mds::MdsArgs),
    /// Run or manage an object storage daemon (OSD).
    Osd(cmd::osd::OsdArgs),
    /// Placement groups: states, scrub and repair.
    Pg(cmd::pg::PgArgs),
    /// Manage the cluster's key registry.
    Auth(cmd::auth::AuthArgs),
    /// Measure a running cluster.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Manage pools.
    Pool(cmd::pool::PoolArgs),
    /// Show the cluster's health and members.
    Status(cmd::status::StatusArgs),
    /// Mount the filesystem with FUSE.
    Mount(cmd::mount::MountArgs),
    /// Run an MDS and three OSDs on this machine with the filesystem mounted.
    Up(cmd::up::UpArgs),
}

impl Command {
    /// The runtime threads the command asks for (default: one per core).
    fn workers(&self) -> Option<usize> {
        match self {
            Command::Osd(args) => args.workers(),
            Command::Mds(args) => args.workers(),
            _ => None,
        }
    }

    /// Daemons must outlive a closed pipe or socket; the other commands
    /// print a report and are done.
    fn runs_a_daemon(&self) -> bool {
        matches!(
            self,
            Command::Mds(_) | Command::Osd(_) | Command::Mount(_) | Command::Up(_)
        )
    }
}

/// A report piped into `head` or `grep -q` ends quietly once its reader
/// goes, as Unix tools do, instead of panicking in `println!` (Rust starts
/// programs with SIGPIPE ignored).
fn end_quietly_when_the_reader_goes() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installs no handler function (only the default action), so
    // nothing can run in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Every daemon and the mount allocate per request (frames, futures, RPC
/// bodies) from many threads; mimalloc's thread-local free lists serve
/// that with less work than glibc's arenas (bench/RESULTS.md, 2026-12-06:
/// O_DIRECT 4 KiB random reads +7-12%, at level sequential rates). It
/// also reuses freed MiB-sized buffers, which glibc mapped afresh by
/// default.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let command = Cli::parse_from(cmd::mount::helper_args(std::env::args_os())).command;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = command.workers() {
        runtime.worker_threads(workers);
    }
    // The command runs as a task on the workers, not on this thread inside
    // `block_on`: there, every reply a worker received had to wake this
    // thread before the command could go on.
    runtime
        .enable_all()
        .build()?
        .block_on(async { tokio::spawn(run(command)).await? })
}

async fn run(command: Command) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser warns when a mount it serves was already unmounted
                // (as `aspen mount` does on SIGTERM): not worth a line.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser::mnt=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if !command.runs_a_daemon() {
        end_quietly_when_the_reader_goes();
    }
    match command {
        Command::Crush(command) => cmd::crush::run(command),
        Command::Mds(args) => cmd::mds::run(args).await,
        Command::Osd(args) => cmd::osd::run(args).await,
        Command::Pg(args) => cmd::pg::run(args).await,
        Command::Auth(args) => cmd::auth::run(args).await,
        Command::Bench(command) => cmd::bench::run(command).await,
        Command::Pool(args) => cmd::pool::run(args).await,
        Command::Status(args) => cmd::status::run(args).await,
        Command::Mount(args) => cmd::mount::run(args).await,
        Command::Up(args) => cmd::up::run(args).await,
    }
}
