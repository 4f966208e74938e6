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
    // Usage is reported to the leader only.
    let leading = views.iter().find_map(|(_, view)| match view {
        Ok(MdsResponse::Status(status)) if status.leader == Some(status.this) => Some(status),
        _ => None,
    });
    if let Some(status) = leading {
        println!(
            "space: {} used of {} raw",
            human_bytes(status.used),
            human_bytes(status.capacity)
        );
        if !status.pg_states.is_empty() {
            let total: u32 = status.pg_states.iter().map(|(_, n)| n).sum();
            let states: Vec<String> = status
                .pg_states
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect();
            println!("pgs: {total}: {}", states.join(", "));
        }
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

/// Bytes in binary units, one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
