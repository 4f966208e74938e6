//! `aspen bench mds`: metadata operations against a running cluster.

use std::path::PathBuf;

use aspen_mds::{admin, bench};
use aspen_proto::cluster::ClusterConfig;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Creates, stats and unlinks of empty files; serial create latency.
    Mds(MdsBenchArgs),
}

#[derive(Args)]
pub struct MdsBenchArgs {
    #[arg(long, default_value = "cluster.json")]
    config: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Mds(args) => {
            let cluster = ClusterConfig::load(&args.config)?;
            let client = admin::client(&cluster).await?;
            let name = format!("bench-{}", std::process::id());
            let report = bench::run(client, &name, args.files, args.concurrency.max(1))
                .await
                .map_err(anyhow::Error::msg)?;
            println!(
                "members {} files {} concurrency {}: creates/s {:.0} stats/s {:.0} unlinks/s {:.0} serial create p50 {:.2} ms p99 {:.2} ms",
                cluster.mds.len(),
                report.files,
                report.concurrency,
                report.creates_per_sec,
                report.stats_per_sec,
                report.unlinks_per_sec,
                report.serial_create.0.as_secs_f64() * 1e3,
                report.serial_create.1.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
