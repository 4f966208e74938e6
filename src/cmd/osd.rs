//! `aspen osd`: run an object storage daemon, create one, and take OSDs in
//! and out of the map.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aspen_mds::admin;
use aspen_osd::server::{CLUSTER_FILE, OsdFile, OsdServer, node_id};
use aspen_placement::{Change, OsdId, Weight};
use aspen_proto::cluster::ClusterConfig;
use aspen_proto::mds::Role;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct OsdArgs {
    #[command(subcommand)]
    command: Option<OsdCommand>,
    /// Run the OSD kept in this data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Threads that serve its network and small changes (default: one per
    /// core). Where several OSDs share a machine's few cores, one each
    /// spares them the switching (bench/RESULTS.md, 2026-12-03).
    #[arg(long, requires = "data", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
}

impl OsdArgs {
    /// The runtime threads asked for, if any.
    pub fn workers(&self) -> Option<usize> {
        self.workers.map(usize::from)
    }
}

#[derive(Subcommand)]
pub enum OsdCommand {
    /// Create an OSD: its data directory, key (registered as osd.ID) and osd.json.
    Add {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        id: u32,
        #[arg(long, default_value = "cluster.json")]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The CRUSH host bucket it goes in (default: this machine's name).
        #[arg(long)]
        host: Option<String>,
        /// CRUSH weight (by convention its capacity in TiB).
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
        /// Bytes its store may hold.
        #[arg(long, default_value_t = 100 << 30)]
        capacity: u64,
    },
    /// Mark an OSD out: its PGs move to other OSDs.
    Out {
        id: u32,
        #[arg(long, default_value = "cluster.json")]
        config: PathBuf,
    },
    /// Mark an OSD in again.
    In {
        id: u32,
        #[arg(long, default_value = "cluster.json")]
        config: PathBuf,
    },
    /// Remove an OSD from the map and unregister its key.
    Rm {
        id: u32,
        #[arg(long, default_value = "cluster.json")]
        config: PathBuf,
    },
}

pub async fn run(args: OsdArgs) -> anyhow::Result<()> {
    match (args.command, args.data) {
        (Some(command), _) => manage(command).await,
        (None, Some(data)) => {
            let server = OsdServer::start(data.clone()).await?;
            println!(
                "osd.{} serving from {} on {:?}",
                server.id.0,
                data.display(),
                server.transport.local_addrs()
            );
            super::wait_for_stop_signal().await;
            server.shutdown().await;
            Ok(())
        }
        (None, None) => anyhow::bail!("give --data DIR to run an OSD, or a subcommand"),
    }
}

async fn manage(command: OsdCommand) -> anyhow::Result<()> {
    match command {
        OsdCommand::Add {
            data,
            id,
            config,
            listen,
            host,
            weight,
            capacity,
        } => {
            let host = host.unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into())
            });
            let file = OsdFile {
                id,
                listen,
                host,
                weight: Weight::from_f64(weight)?,
                capacity,
            };
            create(&config, &data, &file).await?;
            println!(
                "osd.{id} created in {}; run it with: aspen osd --data {}",
                data.display(),
                data.display()
            );
        }
        OsdCommand::Out { id, config } => {
            change(&config, Change::MarkOut { id: OsdId(id) }).await?
        }
        OsdCommand::In { id, config } => change(&config, Change::MarkIn { id: OsdId(id) }).await?,
        OsdCommand::Rm { id, config } => {
            change(&config, Change::RemoveOsd { id: OsdId(id) }).await?;
            let cluster = ClusterConfig::load(&config)?;
            admin::auth_remove(&cluster, &format!("osd.{id}")).await?;
        }
    }
    Ok(())
}

/// Creates OSD `file.id` in `data`: registers its key as `osd.ID` and
/// writes `osd.json` and a copy of the cluster configuration there.
pub async fn create(config: &Path, data: &Path, file: &OsdFile) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(config)?;
    std::fs::create_dir_all(data)?;
    let name = format!("osd.{}", file.id);
    admin::auth_add(&cluster, &name, node_id(data)?, Role::Osd).await?;
    std::fs::copy(config, data.join(CLUSTER_FILE))?;
    file.save(data)?;
    Ok(())
}

async fn change(config: &std::path::Path, change: Change) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(config)?;
    let epoch = admin::cluster_change(&cluster, vec![change]).await?;
    println!("osd map epoch {epoch}");
    Ok(())
}
