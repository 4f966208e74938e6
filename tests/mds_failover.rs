//! Three `aspen mds` processes on 127.0.0.1 under a client that streams
//! creates: kill -9 of the leader loses no acknowledged create and a new
//! leader serves within 5 s; the old leader rejoins and catches up; a
//! member cut off from the majority (the other two stopped with SIGSTOP)
//! cannot commit.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod common;

use aspen_mds::admin;
use aspen_proto::cluster::ClusterConfig;
use aspen_proto::fs::{Caller, mode};
use aspen_proto::mds::{MdsRequest, MdsResponse, NsOp, SessionId};
use aspen_proto::{Errno, InodeId};
use common::{Daemons, aspen, free_addr};

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn leader(cluster: &ClusterConfig) -> Option<u64> {
    let views = admin::status(cluster).await.ok()?;
    views.into_iter().find_map(|(_, view)| match view {
        Ok(MdsResponse::Status(status)) => status.leader,
        _ => None,
    })
}

fn create(name: &str) -> MdsRequest {
    let op = NsOp::Mknod {
        parent: InodeId::ROOT,
        name: name.into(),
        mode: mode::S_IFREG | 0o644,
        umask: 0,
        rdev: 0,
    };
    MdsRequest::Mutate {
        caller: Caller::root(),
        session: SessionId(0),
        request: 0,
        op,
    }
}

/// Creates `name`, retrying through failovers; true once it is known to exist.
async fn create_until_acked(client: &aspen_proto::cluster::MdsClient, name: &str) -> bool {
    for _ in 0..100 {
        match client.call(&create(name)).await {
            Ok(MdsResponse::Reply(Ok(_))) | Ok(MdsResponse::Reply(Err(Errno::EEXIST))) => {
                return true;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

async fn names_in_root(client: &aspen_proto::cluster::MdsClient) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut offset = 0;
    loop {
        let request = MdsRequest::ReadDir {
            caller: Caller::root(),
            ino: InodeId::ROOT,
            offset,
            limit: 1000,
        };
        let Ok(MdsResponse::Entries(Ok(entries))) = client.call(&request).await else {
            panic!("readdir failed")
        };
        let Some(last) = entries.last() else {
            return names;
        };
        offset = last.offset;
        names.extend(
            entries
                .into_iter()
                .map(|e| String::from_utf8(e.name).unwrap()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_under_a_stream_of_creates() {
    let root = tempfile::tempdir().unwrap();
    let dir = |i: u64| root.path().join(format!("mds{i}"));
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    assert!(
        aspen(&[
            "mds",
            "init",
            "--data",
            dir(1).to_str().unwrap(),
            "--listen",
            &addrs[0]
        ])
        .status
        .success()
    );
    let config_path = dir(1).join("cluster.json");
    let config = config_path.to_str().unwrap().to_string();
    let mut daemons = Daemons::new();
    daemons.spawn(
        1,
        &["mds", "--data", dir(1).to_str().unwrap()],
        &root.path().join("1.log"),
    );
    for id in [2u64, 3] {
        let data = dir(id);
        let raft_id = id.to_string();
        let args = [
            "mds",
            "join",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &addrs[id as usize - 1],
            "--id",
            &raft_id,
            "--config",
            &config,
        ];
        daemons.spawn(id, &args, &root.path().join(format!("{id}.log")));
        eventually("the member to join", || {
            let text = std::fs::read_to_string(&config_path).unwrap_or_default();
            async move { text.contains(&format!("\"raft_id\": {id}")).then_some(()) }
        })
        .await;
    }
    let cluster = ClusterConfig::load(&config_path).unwrap();
    let client = admin::client(&cluster).await.unwrap();

    // Stream creates; kill -9 the leader midway.
    let mut acked = Vec::new();
    for i in 0..150 {
        let name = format!("before-{i:04}");
        assert!(create_until_acked(&client, &name).await);
        acked.push(name);
    }
    let old_leader = eventually("a leader", || async { leader(&cluster).await }).await;
    daemons.kill(old_leader);
    let killed_at = Instant::now();
    let first_after = "after-0000".to_string();
    assert!(create_until_acked(&client, &first_after).await);
    let failover = killed_at.elapsed();
    println!(
        "kill -9 of mds.{old_leader}: a new leader acknowledged a create after {} ms",
        failover.as_millis()
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    acked.push(first_after);
    for i in 1..150 {
        let name = format!("after-{i:04}");
        assert!(create_until_acked(&client, &name).await);
        acked.push(name);
    }
    let present = names_in_root(&client).await;
    let lost: Vec<_> = acked.iter().filter(|n| !present.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:?}");

    // The old leader rejoins and catches up.
    daemons.spawn(
        old_leader,
        &["mds", "--data", dir(old_leader).to_str().unwrap()],
        &root.path().join("restart.log"),
    );
    let old_member = cluster
        .mds
        .iter()
        .find(|m| m.raft_id == old_leader)
        .unwrap()
        .member
        .clone();
    let applied = |view: Result<MdsResponse, String>| match view {
        Ok(MdsResponse::Status(status)) => status.last_applied,
        _ => None,
    };
    let leader_now = eventually("a leader", || async { leader(&cluster).await }).await;
    let leader_member = cluster
        .mds
        .iter()
        .find(|m| m.raft_id == leader_now)
        .unwrap()
        .member
        .clone();
    let target = applied(
        client
            .call_member(&leader_member, &MdsRequest::Status)
            .await,
    )
    .unwrap();
    eventually("the restarted member to catch up", || {
        let (client, member) = (&client, old_member.clone());
        async move {
            let caught_up =
                applied(client.call_member(&member, &MdsRequest::Status).await)? >= target;
            caught_up.then_some(())
        }
    })
    .await;

    // Partition: stop the two others; the remaining member cannot commit.
    let lone = old_leader;
    let others: Vec<u64> = (1..=3).filter(|id| *id != lone).collect();
    for id in &others {
        daemons.signal(*id, "-STOP");
    }
    let lone_member = cluster
        .mds
        .iter()
        .find(|m| m.raft_id == lone)
        .unwrap()
        .member
        .clone();
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            client.call_member(&lone_member, &create("partitioned")),
        )
        .await;
        assert!(
            !matches!(attempt, Ok(Ok(MdsResponse::Reply(Ok(_))))),
            "a minority committed a create"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for id in &others {
        daemons.signal(*id, "-CONT");
    }
    assert!(
        create_until_acked(&client, "healed").await,
        "the group serves again once the majority is back"
    );
    client.close().await;
}
