//! `aspen pg ls|scrub|deep-scrub|repair`: placement groups, their states,
//! and scrubbing them.

use std::path::PathBuf;

use aspen_mds::admin;
use aspen_osd::client::ObjectClient;
use aspen_placement::PgId;
use aspen_proto::cluster::ClusterConfig;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct PgArgs {
    #[command(subcommand)]
    command: PgCommand,
    #[arg(long, global = true, default_value = "cluster.json")]
    config: PathBuf,
}

#[derive(Subcommand)]
pub enum PgCommand {
    /// List every PG with its state, up and acting sets.
    Ls,
    /// Compare the copies of a PG's objects across its members.
    Scrub { pg: String },
    /// Scrub, re-reading and hashing every byte.
    DeepScrub { pg: String },
    /// Deep scrub, and rewrite bad copies from the good one.
    Repair { pg: String },
}

fn osds(set: &[Option<aspen_placement::OsdId>]) -> String {
    let names: Vec<String> = set
        .iter()
        .map(|o| o.map_or("-".into(), |o| o.0.to_string()))
        .collect();
    format!("[{}]", names.join(","))
}

pub async fn run(args: PgArgs) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(&args.config)?;
    match args.command {
        PgCommand::Ls => {
            println!(
                "{:<10} {:>8} {:<28} {:<12} acting",
                "pg", "objects", "state", "up"
            );
            for stat in admin::pg_stats(&cluster).await? {
                println!(
                    "{:<10} {:>8} {:<28} {:<12} {}",
                    stat.pg.to_string(),
                    stat.objects,
                    stat.state,
                    osds(&stat.up),
                    osds(&stat.acting)
                );
            }
        }
        PgCommand::Scrub { pg } => scrub(&cluster, &pg, false, false).await?,
        PgCommand::DeepScrub { pg } => scrub(&cluster, &pg, true, false).await?,
        PgCommand::Repair { pg } => scrub(&cluster, &pg, true, true).await?,
    }
    Ok(())
}

async fn scrub(cluster: &ClusterConfig, pg: &str, deep: bool, repair: bool) -> anyhow::Result<()> {
    let pg: PgId = pg
        .parse()
        .map_err(|e| anyhow::anyhow!("bad PG id {pg:?}: {e}"))?;
    let client = ObjectClient::connect(cluster).await?;
    let report = client.scrub(pg, deep, repair).await?;
    println!(
        "{pg}: {} objects, {} inconsistent, {} repaired",
        report.objects,
        report.inconsistent.len(),
        report.repaired
    );
    for (name, problem) in &report.inconsistent {
        println!("  {}: {problem}", String::from_utf8_lossy(name));
    }
    client.close().await;
    Ok(())
}
