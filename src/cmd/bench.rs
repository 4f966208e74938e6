//! `aspen bench mds`: metadata operations against a running cluster.

use std::path::PathBuf;

use aspen_mds::{admin, bench};
use aspen_osd::client::ObjectClient;
use aspen_proto::cluster::ClusterConfig;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Creates, stats and unlinks of empty files; serial create latency.
    Mds(MdsBenchArgs),
    /// 4 MiB object writes and reads, 4 KiB random writes and reads.
    Osd(OsdBenchArgs),
}

#[derive(Args)]
pub struct OsdBenchArgs {
    #[arg(long, default_value = "cluster.json")]
    config: PathBuf,
    /// The pool to write in.
    #[arg(long, default_value = "data")]
    pool: String,
    /// 4 MiB objects to write and read.
    #[arg(long, default_value_t = 64)]
    objects: usize,
    /// 4 KiB operations per random workload.
    #[arg(long, default_value_t = 4000)]
    small_ops: usize,
    #[arg(long, default_value_t = 16)]
    depth: usize,
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
        BenchCommand::Osd(args) => {
            let cluster = ClusterConfig::load(&args.config)?;
            let client = std::sync::Arc::new(ObjectClient::connect(&cluster).await?);
            let pool = client
                .map()
                .await
                .osdmap
                .pool_by_name(&args.pool)
                .map(|p| p.id)
                .ok_or_else(|| anyhow::anyhow!("no pool {:?}", args.pool))?;
            aspen_osd::bench::run(
                client.clone(),
                pool,
                args.objects,
                args.small_ops,
                args.depth.max(1),
                |result| {
                    println!(
                        "{}, depth {}: {:.0} ops/s {:.1} MiB/s",
                        result.workload, result.depth, result.ops_per_sec, result.mib_per_sec
                    )
                },
            )
            .await?;
            client.close().await;
        }
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
