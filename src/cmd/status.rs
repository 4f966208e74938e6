//! `aspen status`: the cluster as its MDS members see it.

use std::path::PathBuf;

use aspen_mds::admin;
use aspen_proto::cluster::ClusterConfig;
use aspen_proto::mds::MdsResponse;
use clap::Args;

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long, default_value = "cluster.json")]
    config: PathBuf,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(&args.config)?;
    println!("fsid: {}", cluster.fsid);
    let views = admin::status(&cluster).await?;
    let leader = views.iter().find_map(|(_, view)| match view {
        Ok(MdsResponse::Status(status)) => status.leader,
        _ => None,
    });
    match leader {
        Some(id) => println!("leader: mds.{id}"),
        None => println!("leader: none (no quorum)"),
    }
    let up = views
        .iter()
        .filter(|(_, v)| matches!(v, Ok(MdsResponse::Status(_))))
        .count();
    println!("mds: {up} of {} members up", views.len());
    let newest = views
        .iter()
        .filter_map(|(_, view)| match view {
            Ok(MdsResponse::Status(status)) => Some(status),
            _ => None,
        })
        .max_by_key(|status| status.osdmap_epoch);
    if let Some(status) = newest {
        println!(
            "osd map: epoch {}, {} osds: {} up, {} in; {} pools",
            status.osdmap_epoch, status.osds, status.osds_up, status.osds_in, status.pools
        );
    }
    for (entry, view) in &views {
        match view {
            Ok(MdsResponse::Status(status)) => println!(
                "  mds.{} {:?}: up, term {}, applied {}",
                entry.raft_id,
                entry.member.addrs,
                status.term,
                status
                    .last_applied
                    .map_or("-".to_string(), |i| i.to_string())
            ),
            Ok(other) => println!(
                "  mds.{} {:?}: answered {other:?}",
                entry.raft_id, entry.member.addrs
            ),
            Err(problem) => println!(
                "  mds.{} {:?}: down ({problem})",
                entry.raft_id, entry.member.addrs
            ),
        }
    }
    println!(
        "health: {}",
        if leader.is_some() && up == views.len() {
            "HEALTH_OK"
        } else {
            "HEALTH_WARN"
        }
    );
    Ok(())
}
