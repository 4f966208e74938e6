//! The OSD map: epochs, incremental changes, up/acting sets and pg_temp.

mod common;

use aspen_placement::{
    Change, CrushError, Epoch, Incremental, MapError, OsdId, OsdMap, PgId, Pool, PoolId, Weight,
};
use common::*;

fn pool(id: u32, size: usize, rule: &str) -> Pool {
    Pool {
        id: PoolId(id),
        name: format!("pool{id}"),
        pg_num: 32,
        size,
        min_size: 1,
        rule: rule.to_string(),
    }
}

/// 5 hosts x 2 OSDs, all up and in, with a size-3 replicated pool 1.
fn cluster() -> OsdMap {
    let map = OsdMap::new(with_indep_rule(uniform(5, 2))).unwrap();
    let mut changes = vec![Change::AddPool {
        pool: pool(1, 3, "replicated_rule"),
    }];
    changes.extend((0..10).map(|id| Change::MarkUp { id: OsdId(id) }));
    map.change(changes).unwrap().0
}

fn pg(seed: u32) -> PgId {
    PgId {
        pool: PoolId(1),
        seed,
    }
}

#[test]
fn a_new_map_starts_at_epoch_one_with_osds_down_and_in() {
    let map = OsdMap::new(uniform(3, 1)).unwrap();
    assert_eq!(map.epoch(), Epoch(1));
    assert_eq!(map.osds().len(), 3);
    assert!(
        map.osds()
            .values()
            .all(|s| !s.up && s.is_in && s.reweight == Weight::ONE)
    );
    let (map, _) = map
        .change(vec![Change::AddPool {
            pool: pool(1, 3, "replicated_rule"),
        }])
        .unwrap();
    let mapping = map.pg_mapping(pg(0)).unwrap();
    assert!(mapping.up.is_empty(), "down OSDs are not in the up set");
    assert_eq!(mapping.up_primary, None);
}

#[test]
fn every_change_makes_one_new_epoch() {
    let mut map = cluster();
    let changes = [
        Change::AddBucket {
            name: "host9".into(),
            ty: "host".into(),
            parent: "default".into(),
        },
        Change::AddOsd {
            id: OsdId(90),
            weight: Weight::ONE,
            host: "host9".into(),
        },
        Change::MarkUp { id: OsdId(90) },
        Change::MarkDown { id: OsdId(3) },
        Change::MarkOut { id: OsdId(3) },
        Change::MarkIn { id: OsdId(3) },
        Change::Reweight {
            id: OsdId(4),
            reweight: Weight::from_f64(0.5).unwrap(),
        },
        Change::SetCrushWeight {
            id: OsdId(5),
            weight: Weight::from_f64(2.0).unwrap(),
        },
        Change::AddPool {
            pool: pool(2, 2, "indep"),
        },
        Change::SetPgTemp {
            pg: pg(1),
            osds: vec![OsdId(0), OsdId(2), OsdId(4)],
        },
        Change::SetPgTemp {
            pg: pg(1),
            osds: vec![],
        },
        Change::RemovePool { id: PoolId(2) },
        Change::RemoveOsd { id: OsdId(90) },
    ];
    for change in changes {
        let before = map.epoch();
        let (next, incremental) = map.change(vec![change.clone()]).unwrap();
        assert_eq!(next.epoch(), Epoch(before.0 + 1), "{change:?}");
        assert_eq!(incremental.epoch, next.epoch());
        // Replaying the incremental on the old map gives the same map.
        assert_eq!(map.apply(&incremental).unwrap(), next);
        map = next;
    }
    let state = map.osd(OsdId(3)).unwrap();
    assert!(!state.up && state.is_in);
    assert_eq!(
        map.osd(OsdId(4)).unwrap().reweight,
        Weight::from_f64(0.5).unwrap()
    );
    assert_eq!(
        map.crush().device(OsdId(5)).unwrap().weight,
        Weight::from_f64(2.0).unwrap()
    );
    assert!(map.osd(OsdId(90)).is_err() && map.crush().device(OsdId(90)).is_none());
}

#[test]
fn incrementals_must_follow_the_current_epoch_and_apply_whole() {
    let map = cluster();
    let skip = Incremental {
        epoch: Epoch(map.epoch().0 + 2),
        changes: vec![Change::MarkDown { id: OsdId(0) }],
    };
    assert_eq!(
        map.apply(&skip).unwrap_err(),
        MapError::EpochMismatch {
            current: map.epoch().0,
            got: skip.epoch.0
        }
    );
    assert_eq!(map.change(vec![]).unwrap_err(), MapError::EmptyIncremental);
    // The second change fails, so the first does not happen either.
    let err = map
        .change(vec![
            Change::MarkDown { id: OsdId(0) },
            Change::MarkDown { id: OsdId(77) },
        ])
        .unwrap_err();
    assert_eq!(err, MapError::UnknownOsd(OsdId(77)));
    assert!(map.osd(OsdId(0)).unwrap().up);
}

#[test]
fn bad_changes_are_errors() {
    let map = cluster();
    let cases = [
        (
            Change::AddOsd {
                id: OsdId(0),
                weight: Weight::ONE,
                host: "host0".into(),
            },
            "duplicate osd",
        ),
        (
            Change::AddOsd {
                id: OsdId(50),
                weight: Weight::ONE,
                host: "nowhere".into(),
            },
            "unknown host",
        ),
        (
            Change::AddPool {
                pool: pool(1, 3, "replicated_rule"),
            },
            "duplicate pool",
        ),
        (
            Change::AddPool {
                pool: pool(2, 3, "no_such_rule"),
            },
            "unknown rule",
        ),
        (
            Change::AddPool {
                pool: pool(2, 6, "replicated_rule"),
            },
            "more hosts than exist",
        ),
        (
            Change::AddPool {
                pool: Pool {
                    pg_num: 0,
                    ..pool(2, 3, "replicated_rule")
                },
            },
            "bad pool",
        ),
        (Change::RemovePool { id: PoolId(9) }, "unknown pool"),
        (
            Change::SetPgTemp {
                pg: pg(99),
                osds: vec![OsdId(0)],
            },
            "unknown pg",
        ),
        (
            Change::SetPgTemp {
                pg: pg(1),
                osds: vec![OsdId(0), OsdId(0)],
            },
            "osd twice",
        ),
        (
            Change::SetPgTemp {
                pg: pg(1),
                osds: vec![OsdId(70)],
            },
            "unknown osd",
        ),
        (Change::MarkUp { id: OsdId(70) }, "unknown osd"),
    ];
    for (change, what) in cases {
        assert!(map.change(vec![change]).is_err(), "{what} accepted");
    }
    let err = map
        .change(vec![Change::AddPool {
            pool: pool(2, 6, "replicated_rule"),
        }])
        .unwrap_err();
    assert!(matches!(
        err,
        MapError::Crush(CrushError::NotEnoughDomains {
            needed: 6,
            available: 5,
            ..
        })
    ));
}

#[test]
fn a_down_osd_leaves_the_up_set_and_an_out_osd_is_replaced() {
    let map = cluster();
    let healthy = map.pg_mapping(pg(7)).unwrap();
    assert_eq!(healthy.up.len(), 3);
    assert_eq!(healthy.acting, healthy.up);
    let primary = healthy.up_primary.unwrap();
    assert_eq!(Some(primary), healthy.up[0]);

    let (down, _) = map.change(vec![Change::MarkDown { id: primary }]).unwrap();
    let degraded = down.pg_mapping(pg(7)).unwrap();
    assert_eq!(
        degraded.up,
        healthy.up[1..].to_vec(),
        "degraded: the others move up, nothing new"
    );
    assert_eq!(degraded.up_primary, healthy.up[1]);

    let (out, _) = down.change(vec![Change::MarkOut { id: primary }]).unwrap();
    let remapped = out.pg_mapping(pg(7)).unwrap();
    assert_eq!(remapped.up.len(), 3, "out: CRUSH picks a replacement");
    assert!(!remapped.up.contains(&Some(primary)));
    for member in &healthy.up[1..] {
        assert!(remapped.up.contains(member), "the surviving replicas stay");
    }
}

#[test]
fn positional_pools_keep_a_hole_for_a_down_osd() {
    let (map, _) = cluster()
        .change(vec![Change::AddPool {
            pool: pool(2, 4, "indep"),
        }])
        .unwrap();
    let ec = PgId {
        pool: PoolId(2),
        seed: 3,
    };
    let healthy = map.pg_mapping(ec).unwrap();
    let victim = healthy.up[1].unwrap();
    let (down, _) = map.change(vec![Change::MarkDown { id: victim }]).unwrap();
    let degraded = down.pg_mapping(ec).unwrap();
    assert_eq!(
        degraded.up,
        vec![healthy.up[0], None, healthy.up[2], healthy.up[3]]
    );
}

#[test]
fn pg_temp_overrides_the_acting_set() {
    let map = cluster();
    let up = map.pg_mapping(pg(2)).unwrap().up;
    let temp: Vec<OsdId> = (0..10)
        .map(OsdId)
        .filter(|o| !up.contains(&Some(*o)))
        .take(3)
        .collect();
    let (map, _) = map
        .change(vec![Change::SetPgTemp {
            pg: pg(2),
            osds: temp.clone(),
        }])
        .unwrap();
    let mapping = map.pg_mapping(pg(2)).unwrap();
    assert_eq!(mapping.up, up);
    assert_eq!(
        mapping.acting,
        temp.iter().copied().map(Some).collect::<Vec<_>>()
    );
    assert_eq!(mapping.acting_primary, Some(temp[0]));
    // Removing an OSD drops it from every pg_temp.
    let (map, _) = map.change(vec![Change::RemoveOsd { id: temp[0] }]).unwrap();
    assert_eq!(map.pg_temp()[&pg(2)], temp[1..].to_vec());
    let (map, _) = map
        .change(vec![Change::SetPgTemp {
            pg: pg(2),
            osds: vec![],
        }])
        .unwrap();
    assert!(map.pg_temp().is_empty());
}

#[test]
fn objects_map_to_pgs_of_their_pool() {
    let map = cluster();
    let first = map.object_pg(PoolId(1), b"10000000001.00000000").unwrap();
    assert_eq!(
        first,
        map.object_pg(PoolId(1), b"10000000001.00000000").unwrap()
    );
    assert_eq!(first.pool, PoolId(1));
    assert!(first.seed < 32);
    assert_eq!(
        map.object_pg(PoolId(5), b"x").unwrap_err(),
        MapError::UnknownPool(PoolId(5))
    );
    assert_eq!(
        map.pg_mapping(pg(32)).unwrap_err(),
        MapError::UnknownPg(pg(32))
    );
}

#[test]
fn maps_and_incrementals_round_trip_through_json() {
    let map = cluster();
    let (map, incremental) = map
        .change(vec![
            Change::MarkOut { id: OsdId(2) },
            Change::SetPgTemp {
                pg: pg(4),
                osds: vec![OsdId(1), OsdId(3)],
            },
        ])
        .unwrap();
    let text = map.to_json();
    let back = OsdMap::from_json(&text).unwrap();
    assert_eq!(back, map);
    for seed in 0..32 {
        assert_eq!(
            back.pg_mapping(pg(seed)).unwrap(),
            map.pg_mapping(pg(seed)).unwrap()
        );
    }
    let wire = serde_json::to_string(&incremental).unwrap();
    assert_eq!(
        serde_json::from_str::<Incremental>(&wire).unwrap(),
        incremental
    );
}

#[test]
fn malformed_osd_maps_are_errors() {
    let good = cluster().to_json();
    let cases = [
        "{}".to_string(),
        good.replace("\"rule\": \"replicated_rule\"", "\"rule\": \"nope\""),
        good.replace("\"pg_num\": 32", "\"pg_num\": 0"),
        good.replacen("\"up\": true", "\"up\": 7", 1),
        good[..good.len() - 10].to_string(),
    ];
    for text in cases.iter().skip(1) {
        assert!(OsdMap::from_json(text).is_err(), "accepted: {text}");
    }
    assert!(matches!(
        OsdMap::from_json(&cases[0]),
        Err(MapError::Malformed(_))
    ));
}

#[test]
fn a_change_that_moves_pgs_keeps_them_on_their_holders_until_backfilled() {
    let map = cluster();
    let leaving = OsdId(3);
    let held_by_leaving = |p: &PgId| map.pg_mapping(*p).unwrap().up.contains(&Some(leaving));
    let pgs: Vec<PgId> = (0..32).map(pg).collect();
    assert!(pgs.iter().any(held_by_leaving));

    let (next, _) = map
        .change_priming_pg_temp(vec![Change::MarkOut { id: leaving }])
        .unwrap();
    for p in &pgs {
        let (before, after) = (map.pg_mapping(*p).unwrap(), next.pg_mapping(*p).unwrap());
        if held_by_leaving(p) {
            assert!(
                !after.up.contains(&Some(leaving)),
                "{p:?} still up on the out OSD"
            );
            assert_eq!(
                after.acting, before.acting,
                "{p:?} moved before its backfill"
            );
        } else {
            assert!(!next.pg_temp().contains_key(p), "{p:?} did not move");
        }
    }

    // The primary clears an entry once the up set is backfilled: nothing
    // is primed again.
    let first = *next.pg_temp().keys().next().unwrap();
    let (done, _) = next
        .change_priming_pg_temp(vec![Change::SetPgTemp {
            pg: first,
            osds: vec![],
        }])
        .unwrap();
    let mapping = done.pg_mapping(first).unwrap();
    assert_eq!(mapping.acting, mapping.up);
    assert_eq!(done.pg_temp().len(), next.pg_temp().len() - 1);

    // A holder that goes down leaves the acting set.
    let (down, _) = next
        .change_priming_pg_temp(vec![Change::MarkDown { id: leaving }])
        .unwrap();
    for p in down.pg_temp().keys() {
        let mapping = down.pg_mapping(*p).unwrap();
        assert!(!mapping.acting.contains(&Some(leaving)));
        assert_eq!(mapping.acting.len(), 2, "{p:?}: {mapping:?}");
    }

    // Marked in again, the PGs move back to their holders: the entries go.
    let (back, _) = next
        .change_priming_pg_temp(vec![Change::MarkIn { id: leaving }])
        .unwrap();
    assert!(back.pg_temp().is_empty(), "{:?}", back.pg_temp());
}

#[test]
fn blocklisted_sessions_are_kept_newest_first_and_survive_json() {
    let map = cluster();
    let (map, _) = map.change(vec![Change::Blocklist { session: 7 }]).unwrap();
    assert!(map.is_blocklisted(7));
    assert!(!map.is_blocklisted(8));
    let json = serde_json::to_string(&map).unwrap();
    let back: OsdMap = serde_json::from_str(&json).unwrap();
    assert!(back.is_blocklisted(7));
    let many: Vec<Change> = (100..100 + aspen_placement::osdmap::MAX_BLOCKLIST as u64)
        .map(|session| Change::Blocklist { session })
        .collect();
    let (full, _) = map.change(many).unwrap();
    assert!(!full.is_blocklisted(7), "the oldest session leaves first");
    assert!(full.is_blocklisted(100));
}
