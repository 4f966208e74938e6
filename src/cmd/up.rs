//! `aspen up`: the embedded default cluster — one MDS and three OSDs on
//! 127.0.0.1, a size-3 pool, and the filesystem mounted — from one command.
//! Everything runs in this process and lives under `--data`; Ctrl-C
//! unmounts and stops it all, and the next `aspen up` on the same
//! directory finds every file again.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aspen_fsclient::fuse::{self, MountOptions};
use aspen_mds::admin;
use aspen_osd::server::{OSD_FILE, OsdFile, OsdServer};
use aspen_placement::Weight;
use aspen_placement::crush::DEFAULT_RULE;
use aspen_proto::cluster::ClusterConfig;
use clap::Args;

/// The OSDs of the embedded cluster; each is its own CRUSH host so that
/// the three copies of the pool can be placed on one machine.
pub const UP_OSDS: u32 = 3;
pub const UP_POOL: &str = "data";
pub const UP_PG_NUM: u32 = 64;
pub const UP_POOL_SIZE: usize = 3;
pub const UP_POOL_MIN_SIZE: usize = 2;
/// How long startup retries binding the MDS's address.
pub const MDS_BIND_WAIT: Duration = Duration::from_secs(15);
/// How long startup waits for the OSDs to register and the PGs to peer.
pub const UP_READY_WAIT: Duration = Duration::from_secs(120);

#[derive(Args)]
pub struct UpArgs {
    /// Where the cluster keeps everything.
    #[arg(long, default_value = "aspen-data")]
    data: PathBuf,
    /// Where to mount the filesystem (default: DATA/mnt).
    #[arg(long)]
    mount: Option<PathBuf>,
}

fn free_local_addr() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// Bytes each OSD may hold: an equal share of the free space under `data`.
fn osd_capacity(data: &Path) -> u64 {
    nix::sys::statvfs::statvfs(data)
        .map(|s| s.blocks_available() * s.fragment_size() / u64::from(UP_OSDS))
        .unwrap_or(10 << 30)
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data)?;
    let data = args.data.canonicalize()?;
    let mds_dir = data.join("mds");
    if !mds_dir.join(admin::MEMBER_FILE).exists() {
        admin::init(&mds_dir, free_local_addr()?).await?;
    }
    let mds = start_mds(&mds_dir).await?;
    let config_path = mds_dir.join(admin::CLUSTER_FILE);
    let cluster = ClusterConfig::load(&config_path)?;
    let mut osds = Vec::new();
    for id in 0..UP_OSDS {
        let dir = data.join(format!("osd.{id}"));
        if !dir.join(OSD_FILE).exists() {
            let file = OsdFile {
                id,
                listen: "127.0.0.1:0".parse()?,
                host: format!("up-host-{id}"),
                weight: Weight::ONE,
                capacity: osd_capacity(&data),
            };
            super::osd::create(&config_path, &dir, &file).await?;
        }
        osds.push(OsdServer::start(dir).await?);
    }
    ensure_pool(&cluster).await?;
    wait_for_clean_pgs(&cluster).await;
    let mountpoint = args.mount.unwrap_or_else(|| data.join("mnt"));
    std::fs::create_dir_all(&mountpoint)?;
    let vfs = aspen_fsclient::connect(&cluster).await?;
    let options = MountOptions {
        allow_other: nix::unistd::geteuid().is_root(),
        source: format!("aspen:{}", cluster.fsid),
        ..MountOptions::default()
    };
    let session = fuse::mount(
        vfs.clone(),
        tokio::runtime::Handle::current(),
        &mountpoint,
        &options,
    )?;
    println!("aspen is up: filesystem {}", cluster.fsid);
    println!(
        "  mds.1   {:?}  ({})",
        mds.transport.local_addrs(),
        mds_dir.display()
    );
    for osd in &osds {
        println!(
            "  osd.{}   {:?}  ({})",
            osd.id.0,
            osd.transport.local_addrs(),
            data.join(format!("osd.{}", osd.id.0)).display()
        );
    }
    println!(
        "  pool '{UP_POOL}': {UP_PG_NUM} PGs, {UP_POOL_SIZE} copies; configuration {}",
        config_path.display()
    );
    println!("  mounted at {}", mountpoint.display());
    println!("Ctrl-C unmounts and stops everything.");
    super::mount::serve_until_unmounted(session, &mountpoint).await;
    vfs.shutdown().await;
    for osd in osds {
        osd.shutdown().await;
    }
    mds.shutdown().await;
    println!("aspen is down; its data stays in {}", data.display());
    Ok(())
}

/// Starts the MDS; right after `init` its address may still be held by
/// the endpoint init used, so binding is retried for a while.
async fn start_mds(dir: &Path) -> anyhow::Result<aspen_mds::server::MdsServer> {
    let started = Instant::now();
    loop {
        match admin::run(dir).await {
            Ok(server) => return Ok(server),
            Err(error) if started.elapsed() > MDS_BIND_WAIT => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Creates the data pool once the OSDs have registered.
async fn ensure_pool(cluster: &ClusterConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let map = admin::cluster_map(cluster).await?;
        if map.osdmap.pools().next().is_some() {
            return Ok(());
        }
        match admin::create_pool(
            cluster,
            UP_POOL,
            UP_PG_NUM,
            UP_POOL_SIZE,
            UP_POOL_MIN_SIZE,
            DEFAULT_RULE,
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(error) if started.elapsed() > UP_READY_WAIT => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits (a bounded time) until every PG is active+clean.
async fn wait_for_clean_pgs(cluster: &ClusterConfig) {
    let started = Instant::now();
    while started.elapsed() < UP_READY_WAIT {
        if let Ok(stats) = admin::pg_stats(cluster).await
            && !stats.is_empty()
            && stats.iter().all(|pg| pg.state == "active+clean")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("PGs are not all active+clean yet; I/O waits for them");
}
