//! OSDs as an operator runs them: one MDS and three `aspen osd` processes
//! on 127.0.0.1, a pool of size 3; objects written through the object
//! client read back intact, live on every member of their PG's acting set,
//! and spread over all OSDs.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aspen_osd::bench::pattern as payload;
use aspen_osd::client::ObjectClient;
use aspen_placement::{OsdId, PoolId};
use aspen_proto::cluster::ClusterConfig;
use aspen_proto::transport::Bytes;
use common::{Daemons, aspen, create_data_pool, eventually, ok, start_mds, start_osds, status};

async fn object_client(config: &str) -> ObjectClient {
    let cluster = ClusterConfig::load(std::path::Path::new(config)).unwrap();
    ObjectClient::connect(&cluster).await.unwrap()
}

#[test]
fn three_osds_replicate_objects_of_a_size_3_pool() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| -> PathBuf { root.path().join(name) };
    let mut daemons = Daemons::new();
    let config = start_mds(root.path(), &mut daemons);
    let config = config.as_str();
    start_osds(root.path(), &mut daemons, config, 3);
    // A pool can be placed once there are hosts for its three copies.
    create_data_pool(config, 32);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = object_client(config).await;
        let pool = PoolId(1);
        let mut written = Vec::new();
        for n in 0..60u64 {
            let name = format!("{n:x}.00000000").into_bytes();
            let len = [1usize << 10, 70 << 10, 1 << 20][n as usize % 3];
            let offset = (n % 4) * 4096;
            let data = payload(n, len);
            let info = client
                .write(pool, &name, offset, Bytes::copy_from_slice(&data))
                .await
                .unwrap();
            assert_eq!(info.size, offset + len as u64);
            written.push((name, offset, data));
        }
        for (name, offset, data) in &written {
            let back = client
                .read(pool, name, 0, offset + data.len() as u64)
                .await
                .unwrap();
            assert!(back[..*offset as usize].iter().all(|b| *b == 0));
            assert_eq!(
                &back[*offset as usize..],
                &data[..],
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // Each object lives on every member of its PG's acting set, and the
        // objects are spread over all three OSDs as primaries.
        let map = client.map().await;
        let mut primaries = BTreeSet::new();
        for (name, _, _) in &written {
            let pg = map.osdmap.object_pg(pool, name).unwrap();
            let mapping = map.osdmap.pg_mapping(pg).unwrap();
            let acting: Vec<OsdId> = mapping.acting.iter().flatten().copied().collect();
            assert_eq!(acting.len(), 3);
            primaries.insert(mapping.acting_primary.unwrap());
            for osd in acting {
                let names = client.list_pg(osd, pg).await.unwrap();
                assert!(
                    names.contains(name),
                    "osd.{} lacks an object of {pg:?}",
                    osd.0
                );
            }
        }
        assert_eq!(primaries.len(), 3, "every OSD is primary for some objects");
        // Truncate, punch and delete go through the PG log too.
        let (name, _, _) = &written[2];
        client.truncate(pool, name, 100).await.unwrap();
        client.zero(pool, name, 0, 50).await.unwrap();
        let back = client.read(pool, name, 0, 1000).await.unwrap();
        assert_eq!(back.len(), 100);
        assert!(back[..50].iter().all(|b| *b == 0));
        client.delete(pool, name).await.unwrap();
        assert_eq!(client.stat(pool, name).await.unwrap(), None);
        assert!(matches!(
            client.read(pool, name, 0, 10).await,
            Err(aspen_osd::client::ClientError::Osd(
                aspen_proto::osd::OsdError::NotFound
            ))
        ));

        // A vectored write: pieces in order (a later one over an earlier
        // one wins), one op, replicated like any other.
        let name = b"vec.00000000".to_vec();
        let pieces = [(0u64, 4096u64), (8192, 100), (1 << 20, 70_000), (0, 10)];
        let body = payload(77, pieces.iter().map(|(_, len)| *len as usize).sum());
        let info = client
            .write_extents(pool, &name, pieces.to_vec(), Bytes::copy_from_slice(&body))
            .await
            .unwrap();
        assert_eq!(info.size, (1 << 20) + 70_000);
        let mut expected = vec![0u8; info.size as usize];
        let mut rest = &body[..];
        for (offset, len) in pieces {
            let (piece, after) = rest.split_at(len as usize);
            expected[offset as usize..(offset + len) as usize].copy_from_slice(piece);
            rest = after;
        }
        assert_eq!(
            client.read(pool, &name, 0, info.size).await.unwrap(),
            expected
        );
        let pg = client.map().await.osdmap.object_pg(pool, &name).unwrap();
        assert_scrubs_clean(config, pg);
        hot_object_writes_overlap_in_log_order(config).await;
        refusals_keep_the_pg_serving(config).await;
        // Pieces that do not add up to the body are refused.
        let refused = client
            .write_extents(pool, &name, vec![(0, 5)], Bytes::from_static(b"four"))
            .await;
        assert!(
            matches!(
                refused,
                Err(aspen_osd::client::ClientError::Osd(
                    aspen_proto::osd::OsdError::Invalid(_)
                ))
            ),
            "{refused:?}"
        );
    });
    let shown = ok(aspen(&["status", "--config", config]));
    assert!(shown.contains("space:"), "{shown}");

    // kill -9 osd.1: writes wait until the MDS marks it down, then go to
    // the two others; restarted, it is recovered with what it missed.
    daemons.kill(2);
    let late: Vec<(Vec<u8>, Vec<u8>)> = runtime.block_on(async {
        let client = object_client(config).await;
        let mut late = Vec::new();
        for n in 100..130u64 {
            let name = format!("{n:x}.00000000").into_bytes();
            let data = payload(n, 20 << 10);
            client
                .write(PoolId(1), &name, 0, Bytes::copy_from_slice(&data))
                .await
                .unwrap();
            late.push((name, data));
        }
        late
    });
    let shown = ok(aspen(&["status", "--config", config]));
    assert!(shown.contains("3 osds: 2 up"), "{shown}");
    eventually("degraded PGs", 60, || {
        let pgs = ok(aspen(&["pg", "ls", "--config", config]));
        pgs.contains("active+degraded").then_some(())
    });
    daemons.spawn(
        2,
        &["osd", "--data", dir("osd1").to_str().unwrap()],
        &dir("osd1-restarted.log"),
    );
    eventually("osd.1 back up", 60, || {
        let out = status(config);
        out.contains("3 osds: 3 up, 3 in").then_some(())
    });
    runtime.block_on(async {
        let client = object_client(config).await;
        let pool = PoolId(1);
        let deadline = Instant::now() + Duration::from_secs(60);
        'recovered: loop {
            client.refresh_map().await;
            let map = client.map().await;
            let mut missing = 0;
            for (name, _) in &late {
                let pg = map.osdmap.object_pg(pool, name).unwrap();
                let acting = map.osdmap.pg_mapping(pg).unwrap().acting;
                if acting.contains(&Some(OsdId(1)))
                    && !client
                        .list_pg(OsdId(1), pg)
                        .await
                        .unwrap_or_default()
                        .contains(name)
                {
                    missing += 1;
                }
            }
            if missing == 0 {
                break 'recovered;
            }
            assert!(
                Instant::now() < deadline,
                "osd.1 still lacks {missing} objects"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for (name, data) in &late {
            assert_eq!(&client.read(pool, name, 0, 1 << 20).await.unwrap(), data);
        }
        // Writes acknowledged before the kill are intact too, and every PG
        // is clean again.
        for n in [0u64, 1, 3, 4, 5] {
            let name = format!("{n:x}.00000000").into_bytes();
            let len = [1usize << 10, 70 << 10, 1 << 20][n as usize % 3];
            let back = client.read(pool, &name, 0, 2 << 20).await.unwrap();
            let offset = (n % 4) * 4096;
            assert_eq!(&back[offset as usize..], &payload(n, len)[..]);
        }
    });
    eventually("every PG active+clean", 60, || {
        let status = ok(aspen(&["status", "--config", config]));
        status.contains("pgs: 32: 32 active+clean").then_some(())
    });

    // A flipped byte on one member: never returned, found by a deep scrub,
    // fixed by repair.
    runtime.block_on(async {
        let client = object_client(config).await;
        let pool = PoolId(1);
        let name = b"scrub.00000000".to_vec();
        let data = payload(999, 100 << 10);
        client
            .write(pool, &name, 0, Bytes::copy_from_slice(&data))
            .await
            .unwrap();
        let map = client.map().await;
        let pg = map.osdmap.object_pg(pool, &name).unwrap();
        let mapping = map.osdmap.pg_mapping(pg).unwrap();
        let primary = mapping.acting_primary.unwrap();
        let replica = mapping
            .acting
            .iter()
            .flatten()
            .copied()
            .find(|o| *o != primary)
            .unwrap();
        flip_a_byte_of(&dir(&format!("osd{}", replica.0)), &data[50_000..50_064]);
        assert_eq!(client.read(pool, &name, 0, 200 << 10).await.unwrap(), data);
        let pg_name = pg.to_string();
        let found = ok(aspen(&["pg", "deep-scrub", &pg_name, "--config", config]));
        assert!(found.contains("1 inconsistent"), "{found}");
        assert!(
            found.contains(&format!("differs on osd.{}", replica.0))
                || found.contains("unreadable"),
            "{found}"
        );
        eventually("the PG reported inconsistent", 60, || {
            let pgs = ok(aspen(&["pg", "ls", "--config", config]));
            pgs.lines()
                .any(|l| l.starts_with(&format!("{pg_name} ")) && l.contains("inconsistent"))
                .then_some(())
        });
        let repaired = ok(aspen(&["pg", "repair", &pg_name, "--config", config]));
        assert!(repaired.contains("1 repaired"), "{repaired}");
        let clean = ok(aspen(&["pg", "deep-scrub", &pg_name, "--config", config]));
        assert!(clean.contains("0 inconsistent"), "{clean}");
        // Damage on the primary: the read fails rather than return it.
        flip_a_byte_of(&dir(&format!("osd{}", primary.0)), &data[10_000..10_064]);
        match client.read(pool, &name, 0, 200 << 10).await {
            Err(aspen_osd::client::ClientError::Osd(aspen_proto::osd::OsdError::Corrupt(_))) => {}
            other => panic!("a damaged primary copy must not be returned: {other:?}"),
        }
        ok(aspen(&["pg", "repair", &pg_name, "--config", config]));
        assert_eq!(client.read(pool, &name, 0, 200 << 10).await.unwrap(), data);
    });
}

/// Many concurrent writes to one object, overlapping each other, small
/// ones (which the primary lets overlap in flight) mixed with large ones
/// (which wait for the PG to be quiet): the object ends as the writes
/// applied in the order of the versions they were acknowledged with, and
/// every member holds the same copy.
async fn hot_object_writes_overlap_in_log_order(config: &str) {
    const WRITES: u64 = 96;
    const CONCURRENT: usize = 16;
    let pool = PoolId(1);
    let name = b"hot.00000000".to_vec();
    let write_of = |n: u64| {
        let len = if n % 20 == 7 { 300 << 10 } else { 4 << 10 };
        ((n % 6) * 2048, payload(1000 + n, len))
    };
    let client = std::sync::Arc::new(object_client(config).await);
    let mut running = tokio::task::JoinSet::new();
    let mut acknowledged = Vec::new();
    for n in 0..WRITES {
        if running.len() == CONCURRENT {
            acknowledged.push(running.join_next().await.unwrap().unwrap());
        }
        let (client, name) = (client.clone(), name.clone());
        let (offset, data) = write_of(n);
        running.spawn(async move {
            let info = client
                .write(pool, &name, offset, Bytes::copy_from_slice(&data))
                .await
                .unwrap();
            (info.version, n)
        });
    }
    while let Some(done) = running.join_next().await {
        acknowledged.push(done.unwrap());
    }
    acknowledged.sort();
    let versions: BTreeSet<u64> = acknowledged.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions.len(), WRITES as usize, "one version per write");
    let mut expected = Vec::new();
    for (_, n) in &acknowledged {
        let (offset, data) = write_of(*n);
        let end = offset as usize + data.len();
        if expected.len() < end {
            expected.resize(end, 0);
        }
        expected[offset as usize..end].copy_from_slice(&data);
    }
    let back = client
        .read(pool, &name, 0, expected.len() as u64)
        .await
        .unwrap();
    assert!(back == expected, "the last write of each byte wins");
    let pg = client.map().await.osdmap.object_pg(pool, &name).unwrap();
    assert_scrubs_clean(config, pg);
}

/// An op every member refuses alike (a delete of an object none has, as
/// a purge of a sparse file sends) logs nothing and leaves its PG serving:
/// the ops after it on the same PG go through without the client having to
/// wait and send them again, and the PG's copies agree.
async fn refusals_keep_the_pg_serving(config: &str) {
    let pool = PoolId(1);
    let client = object_client(config).await;
    let retried_before = client.retries();
    let not_found = |result: Result<(), aspen_osd::client::ClientError>| {
        matches!(
            result,
            Err(aspen_osd::client::ClientError::Osd(
                aspen_proto::osd::OsdError::NotFound
            ))
        )
    };
    let names: Vec<Vec<u8>> = (0..12u64)
        .map(|n| format!("refused-{n}.00000000").into_bytes())
        .collect();
    for (n, name) in names.iter().enumerate() {
        assert!(not_found(client.delete(pool, name).await), "never written");
        let data = payload(2000 + n as u64, 4096);
        client
            .write(pool, name, 0, Bytes::copy_from_slice(&data))
            .await
            .unwrap();
        assert_eq!(client.read(pool, name, 0, 4096).await.unwrap(), data);
        client.delete(pool, name).await.unwrap();
        assert!(not_found(client.delete(pool, name).await), "already gone");
        client
            .write(pool, name, 0, Bytes::copy_from_slice(&data))
            .await
            .unwrap();
    }
    assert_eq!(
        client.retries(),
        retried_before,
        "no op had to be sent again"
    );
    let map = client.map().await;
    let pgs: BTreeSet<_> = names
        .iter()
        .map(|name| map.osdmap.object_pg(pool, name).unwrap())
        .collect();
    for pg in pgs {
        assert_scrubs_clean(config, pg);
    }
}

/// Deep-scrubs `pg`: every member holds the same objects, intact.
fn assert_scrubs_clean(config: &str, pg: aspen_placement::PgId) {
    let scrubbed = ok(aspen(&[
        "pg",
        "deep-scrub",
        &pg.to_string(),
        "--config",
        config,
    ]));
    assert!(scrubbed.contains("0 inconsistent"), "{scrubbed}");
}

/// Flips one byte of the first place `needle` is stored in an OSD's segments.
fn flip_a_byte_of(osd_dir: &std::path::Path, needle: &[u8]) {
    let segments = osd_dir.join("store").join("segments");
    for entry in std::fs::read_dir(&segments).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + 7] ^= 0x20;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("the bytes are in no segment of {}", osd_dir.display());
}
