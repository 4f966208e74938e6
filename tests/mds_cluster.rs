//! The MDS as an operator runs it: `aspen mds init`, three `aspen mds`
//! processes on 127.0.0.1, `aspen auth`, `aspen status`, a kill -9 of the
//! leader, a restart, and `aspen mds remove`.

mod common;

use std::path::PathBuf;

use common::{Daemons, aspen, eventually, free_addr, ok, status};

fn leader_of(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("leader: mds."))
        .and_then(|id| id.trim().parse().ok())
}

#[test]
fn an_mds_group_forms_survives_kill_9_and_shrinks() {
    let root = tempfile::tempdir().unwrap();
    let dir = |i: u64| -> PathBuf { root.path().join(format!("mds{i}")) };
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let out = ok(aspen(&[
        "mds",
        "init",
        "--data",
        dir(1).to_str().unwrap(),
        "--listen",
        &addrs[0],
    ]));
    assert!(out.contains("created a cluster"), "{out}");
    let config = dir(1).join("cluster.json");
    let config = config.to_str().unwrap();
    let mut daemons = Daemons::new();
    daemons.spawn(
        1,
        &["mds", "--data", dir(1).to_str().unwrap()],
        &root.path().join("mds1.log"),
    );
    eventually("mds.1 to lead", 60, || {
        leader_of(&status(config)).filter(|l| *l == 1)
    });

    for id in [2u64, 3] {
        let data = dir(id);
        daemons.spawn(
            id,
            &[
                "mds",
                "join",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &addrs[id as usize - 1],
                "--id",
                &id.to_string(),
                "--config",
                config,
            ],
            &root.path().join(format!("mds{id}.log")),
        );
        eventually("the member to join", 60, || {
            let text = std::fs::read_to_string(config).ok()?;
            text.contains(&format!("\"raft_id\": {id}")).then_some(())
        });
    }
    let healthy = eventually("three members up", 60, || {
        let s = status(config);
        (s.contains("mds: 3 of 3 members up") && s.contains("HEALTH_OK")).then_some(s)
    });
    assert!(healthy.contains("fsid: "), "{healthy}");
    assert!(
        healthy.contains("osd map: epoch 1, 0 osds: 0 up, 0 in; 0 pools"),
        "{healthy}"
    );

    // Pools need OSDs: with none yet, a pool is refused with the reason.
    let refused = aspen(&["pool", "create", "data", "--config", config]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("bucket \"default\" has zero total weight"),
        "{message}"
    );
    assert_eq!(ok(aspen(&["pool", "ls", "--config", config])), "");

    // The key registry.
    let key = root.path().join("client.key");
    ok(aspen(&[
        "auth",
        "add",
        "client.test",
        "--key-file",
        key.to_str().unwrap(),
        "--config",
        config,
    ]));
    let listed = ok(aspen(&["auth", "ls", "--config", config]));
    assert!(
        listed.contains("client.test")
            && listed.contains("client.admin")
            && listed.contains("mds.3"),
        "{listed}"
    );
    let duplicate = aspen(&[
        "auth",
        "add",
        "client.test",
        "--key-file",
        key.to_str().unwrap(),
        "--config",
        config,
    ]);
    assert!(!duplicate.status.success(), "a name is registered once");

    // kill -9 the leader: another member takes over and writes still work.
    let old_leader = leader_of(&status(config)).unwrap();
    daemons.kill(old_leader);
    let new_leader = eventually("a new leader", 60, || {
        leader_of(&status(config)).filter(|l| *l != old_leader)
    });
    assert_ne!(new_leader, old_leader);
    let degraded = status(config);
    assert!(
        degraded.contains("mds: 2 of 3 members up") && degraded.contains("HEALTH_WARN"),
        "{degraded}"
    );
    ok(aspen(&["auth", "rm", "client.test", "--config", config]));
    assert!(!ok(aspen(&["auth", "ls", "--config", config])).contains("client.test"));

    // The killed member restarts from its data directory and rejoins.
    daemons.spawn(
        old_leader,
        &["mds", "--data", dir(old_leader).to_str().unwrap()],
        &root.path().join("restart.log"),
    );
    eventually("three members up again", 60, || {
        status(config)
            .contains("mds: 3 of 3 members up")
            .then_some(())
    });

    // Shrink back to two members.
    let victim = (1..=3).find(|id| *id != new_leader).unwrap();
    ok(aspen(&[
        "mds",
        "remove",
        "--id",
        &victim.to_string(),
        "--config",
        config,
    ]));
    daemons.kill(victim);
    let after = eventually("two members", 60, || {
        let s = status(config);
        s.contains("mds: 2 of 2 members up").then_some(s)
    });
    assert!(after.contains("HEALTH_OK"), "{after}");
}
