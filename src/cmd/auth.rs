//! `aspen auth add|ls|rm`: the cluster's key registry.

use std::path::PathBuf;

use aspen_mds::admin;
use aspen_proto::cluster::ClusterConfig;
use aspen_proto::mds::Role;
use aspen_proto::transport::{EndpointId, load_or_create_secret_key};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
    #[arg(long, global = true, default_value = "cluster.json")]
    config: PathBuf,
}

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Register a key: give its node id, or a key file (created if missing).
    Add {
        name: String,
        #[arg(long, conflicts_with = "key_file")]
        node_id: Option<EndpointId>,
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long, default_value = "client")]
        role: Role,
    },
    /// List registered keys.
    Ls,
    /// Unregister a key.
    Rm { name: String },
}

pub async fn run(args: AuthArgs) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(&args.config)?;
    match args.command {
        AuthCommand::Add {
            name,
            node_id,
            key_file,
            role,
        } => {
            let node_id = match (node_id, key_file) {
                (Some(id), _) => id,
                (None, Some(path)) => load_or_create_secret_key(&path)?.public(),
                (None, None) => anyhow::bail!("give --node-id or --key-file"),
            };
            admin::auth_add(&cluster, &name, node_id, role).await?;
            println!("{name} ({role}) registered: {node_id}");
        }
        AuthCommand::Ls => {
            for key in admin::auth_list(&cluster).await? {
                println!(
                    "{:<20} {:<7} {}",
                    key.name,
                    key.role.to_string(),
                    key.node_id
                );
            }
        }
        AuthCommand::Rm { name } => {
            admin::auth_remove(&cluster, &name).await?;
            println!("{name} removed");
        }
    }
    Ok(())
}
