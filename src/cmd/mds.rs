//! `aspen mds [init|join|remove]`: run or manage a metadata server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aspen_mds::admin;
use aspen_mds::server::MdsServer;
use clap::{Args, Subcommand};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MdsArgs {
    #[command(subcommand)]
    command: Option<MdsCommand>,
    /// Run the member kept in this data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Listen here from now on (the other members must be told: its address
    /// is part of the membership).
    #[arg(long, requires = "data")]
    listen: Option<SocketAddr>,
    /// Threads that serve the member (default: one per core). Where the
    /// members of a group share a machine's few cores, one each spares them
    /// the switching (bench/RESULTS.md, 2026-12-05).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
}

impl MdsArgs {
    /// The runtime threads asked for, if any.
    pub fn workers(&self) -> Option<usize> {
        self.workers.map(usize::from)
    }
}

#[derive(Subcommand)]
pub enum MdsCommand {
    /// Create a new cluster: a one-member MDS group, the filesystem, an admin key and cluster.json.
    Init {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7001")]
        listen: SocketAddr,
    },
    /// Start a new member and add it to the group (it keeps running).
    Join {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        /// The new member's Raft id (unique in the group).
        #[arg(long)]
        id: u64,
        #[arg(long, default_value = "cluster.json")]
        config: PathBuf,
    },
    /// Remove a member from the group.
    Remove {
        #[arg(long)]
        id: u64,
        #[arg(long, default_value = "cluster.json")]
        config: PathBuf,
    },
}

pub async fn run(args: MdsArgs) -> anyhow::Result<()> {
    if let (Some(data), Some(listen)) = (&args.data, args.listen) {
        admin::set_listen(data, listen)?;
    }
    match (args.command, args.data) {
        (Some(MdsCommand::Init { data, listen }), _) => {
            let cluster = admin::init(&data, listen).await?;
            println!(
                "created a cluster; its configuration is {}",
                cluster.display()
            );
            println!(
                "start the metadata server with: aspen mds --data {}",
                data.display()
            );
        }
        (
            Some(MdsCommand::Join {
                data,
                listen,
                id,
                config,
            }),
            _,
        ) => {
            let server = admin::join(&data, listen, id, &config).await?;
            println!("mds.{id} joined; {} lists it", config.display());
            serve_until_stopped(server, &data).await;
        }
        (Some(MdsCommand::Remove { id, config }), _) => {
            admin::remove(id, &config).await?;
            println!("mds.{id} removed");
        }
        (None, Some(data)) => serve_until_stopped(admin::run(&data).await?, &data).await,
        (None, None) => {
            anyhow::bail!("give --data DIR to run a member, or a subcommand (init, join, remove)")
        }
    }
    Ok(())
}

async fn serve_until_stopped(server: MdsServer, data: &Path) {
    println!(
        "mds.{} serving from {} on {:?}",
        server.raft_id,
        data.display(),
        server.transport.local_addrs()
    );
    super::wait_for_stop_signal().await;
    server.shutdown().await;
}
