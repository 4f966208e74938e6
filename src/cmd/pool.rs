//! `aspen pool create|ls`: pools in the OSD map.

use std::path::PathBuf;

use aspen_mds::admin;
use aspen_placement::crush::DEFAULT_RULE;
use aspen_proto::cluster::ClusterConfig;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCommand,
    #[arg(long, global = true, default_value = "cluster.json")]
    config: PathBuf,
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Create a replicated pool.
    Create {
        name: String,
        #[arg(long, default_value_t = 128)]
        pg_num: u32,
        #[arg(long, default_value_t = 3)]
        size: usize,
        #[arg(long, default_value_t = 2)]
        min_size: usize,
        #[arg(long, default_value = DEFAULT_RULE)]
        rule: String,
    },
    /// List pools.
    Ls,
}

pub async fn run(args: PoolArgs) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(&args.config)?;
    match args.command {
        PoolCommand::Create {
            name,
            pg_num,
            size,
            min_size,
            rule,
        } => {
            let (pool, epoch) =
                admin::create_pool(&cluster, &name, pg_num, size, min_size, &rule).await?;
            println!(
                "pool {} '{}' created (osd map epoch {epoch})",
                pool.id, pool.name
            );
        }
        PoolCommand::Ls => {
            let map = admin::cluster_map(&cluster).await?;
            for pool in map.osdmap.pools() {
                println!(
                    "{} {:<16} pg_num {:<6} size {} min_size {} rule {}",
                    pool.id, pool.name, pool.pg_num, pool.size, pool.min_size, pool.rule
                );
            }
        }
    }
    Ok(())
}
