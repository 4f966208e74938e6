//! Property tests over random maps: determinism, distinct failure domains,
//! ineligible OSDs never chosen, and minimal movement on every change.

mod common;

use std::collections::HashSet;

use aspen_placement::crush::{CompiledMap, CrushMap, DeviceWeights};
use aspen_placement::{Change, OsdId, OsdMap, PgId, Pool, PoolId, Weight};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const WEIGHTS: [f64; 6] = [0.25, 0.5, 1.0, 1.5, 2.0, 4.0];
const INPUTS_PER_CASE: u32 = 64;

fn arb_hosts() -> impl Strategy<Value = Vec<Vec<f64>>> {
    let weight = prop::sample::select(WEIGHTS.to_vec());
    prop::collection::vec(prop::collection::vec(weight, 1..=5), 1..=8)
}

fn device_count(hosts: &[Vec<f64>]) -> u32 {
    hosts.iter().map(|h| h.len() as u32).sum()
}

fn mappings(
    map: &CompiledMap,
    rule: &str,
    size: usize,
    weights: &DeviceWeights,
    base: u32,
) -> Vec<Vec<Option<OsdId>>> {
    let rule = map.rule(rule).unwrap();
    (0..INPUTS_PER_CASE)
        .map(|i| {
            map.select(
                rule,
                base.wrapping_add(i.wrapping_mul(0x9e37_79b9)),
                size,
                weights,
            )
            .unwrap()
        })
        .collect()
}

fn set(members: &[Option<OsdId>]) -> HashSet<OsdId> {
    members.iter().flatten().copied().collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn same_input_same_output(hosts in arb_hosts(), size in 1usize..=4, base in any::<u32>()) {
        let map = with_indep_rule(map_with_weights(&hosts));
        let reloaded = CrushMap::from_json(&map.to_json()).unwrap();
        let (a, b) = (compile(&map), compile(&reloaded));
        for rule in ["replicated_rule", "indep"] {
            let first = mappings(&a, rule, size, &a.all_in(), base);
            prop_assert_eq!(&first, &mappings(&a, rule, size, &a.all_in(), base));
            prop_assert_eq!(&first, &mappings(&b, rule, size, &b.all_in(), base));
        }
    }

    #[test]
    fn distinct_osds_in_distinct_hosts(hosts in arb_hosts(), size in 1usize..=4, base in any::<u32>()) {
        let map = with_indep_rule(map_with_weights(&hosts));
        let compiled = compile(&map);
        for rule in ["replicated_rule", "indep"] {
            for chosen in mappings(&compiled, rule, size, &compiled.all_in(), base) {
                let members: Vec<OsdId> = chosen.iter().flatten().copied().collect();
                prop_assert_eq!(members.len(), size.min(hosts.len()));
                let hosts_used: HashSet<String> = members.iter().map(|o| host_of(&map, *o)).collect();
                prop_assert_eq!(hosts_used.len(), members.len());
            }
        }
    }

    #[test]
    fn down_and_out_osds_are_never_chosen(
        hosts in arb_hosts(),
        size in 1usize..=4,
        down in prop::collection::vec(any::<bool>(), 40),
        out in prop::collection::vec(any::<bool>(), 40),
    ) {
        let crush = map_with_weights(&hosts);
        let mut changes = vec![Change::AddPool { pool: Pool {
            id: PoolId(1), name: "p".into(), pg_num: 64, size: size.min(hosts.len()), min_size: 1,
            rule: "replicated_rule".into(),
        }}];
        for id in 0..device_count(&hosts) {
            let id = OsdId(id);
            changes.push(if down[id.0 as usize] { Change::MarkDown { id } } else { Change::MarkUp { id } });
            if out[id.0 as usize] {
                changes.push(Change::MarkOut { id });
            }
        }
        let (map, _) = OsdMap::new(crush).unwrap().change(changes).unwrap();
        for seed in 0..64 {
            let mapping = map.pg_mapping(PgId { pool: PoolId(1), seed }).unwrap();
            for osd in mapping.up.iter().flatten() {
                let state = map.osd(*osd).unwrap();
                prop_assert!(state.up && state.is_in, "{} is down or out", osd);
            }
        }
    }

    #[test]
    fn adding_an_osd_moves_replicas_only_to_it(
        hosts in arb_hosts(), size in 1usize..=4, base in any::<u32>(),
        host_pick in any::<prop::sample::Index>(), weight in prop::sample::select(WEIGHTS.to_vec()),
        new_host in any::<bool>(),
    ) {
        let before = map_with_weights(&hosts);
        let mut after = before.clone();
        let new_osd = OsdId(1000);
        let host = if new_host {
            after.add_bucket("hostNew", "host", "default").unwrap();
            "hostNew".to_string()
        } else {
            format!("host{}", host_pick.index(hosts.len()))
        };
        after.add_device(new_osd, Weight::from_f64(weight).unwrap(), &host).unwrap();
        let (a, b) = (compile(&before), compile(&after));
        let old = mappings(&a, "replicated_rule", size, &a.all_in(), base);
        let new = mappings(&b, "replicated_rule", size, &b.all_in(), base);
        for (old, new) in old.iter().zip(&new) {
            let (old, new) = (set(old), set(new));
            let gained: Vec<_> = new.difference(&old).collect();
            prop_assert!(gained.iter().all(|o| **o == new_osd), "{:?} -> {:?}", old, new);
            prop_assert!(gained.len() <= 1);
        }
    }

    #[test]
    fn outing_or_removing_an_osd_moves_only_its_replicas(
        hosts in arb_hosts(), size in 1usize..=4, base in any::<u32>(),
        victim in any::<prop::sample::Index>(), remove in any::<bool>(),
    ) {
        prop_assume!(device_count(&hosts) > 1, "removing the only device empties the tree");
        let before = map_with_weights(&hosts);
        let victim = OsdId(victim.index(device_count(&hosts) as usize) as u32);
        let a = compile(&before);
        let old = mappings(&a, "replicated_rule", size, &a.all_in(), base);
        let new = if remove {
            let mut after = before.clone();
            after.remove_device(victim).unwrap();
            let b = compile(&after);
            mappings(&b, "replicated_rule", size, &b.all_in(), base)
        } else {
            mappings(&a, "replicated_rule", size, &all_in_but(&a, victim), base)
        };
        for (old, new) in old.iter().zip(&new) {
            let (old, new) = (set(old), set(new));
            let lost: Vec<_> = old.difference(&new).collect();
            prop_assert!(lost.iter().all(|o| **o == victim), "{:?} -> {:?}", old, new);
            prop_assert!(!new.contains(&victim));
        }
    }

    #[test]
    fn reweighting_an_osd_moves_data_only_to_or_from_it(
        hosts in arb_hosts(), size in 1usize..=4, base in any::<u32>(),
        victim in any::<prop::sample::Index>(), weight in prop::sample::select(WEIGHTS.to_vec()),
    ) {
        let before = map_with_weights(&hosts);
        let victim = OsdId(victim.index(device_count(&hosts) as usize) as u32);
        let mut after = before.clone();
        after.set_device_weight(victim, Weight::from_f64(weight).unwrap()).unwrap();
        let (a, b) = (compile(&before), compile(&after));
        let old = mappings(&a, "replicated_rule", size, &a.all_in(), base);
        let new = mappings(&b, "replicated_rule", size, &b.all_in(), base);
        for (old, new) in old.iter().zip(&new) {
            let (old, new) = (set(old), set(new));
            for moved in old.symmetric_difference(&new) {
                let involves_victim = *moved == victim || old.contains(&victim) != new.contains(&victim);
                prop_assert!(involves_victim, "{:?} -> {:?}", old, new);
            }
        }
    }

    #[test]
    fn indep_keeps_other_positions_when_one_osd_fails(
        hosts in arb_hosts(), size in 1usize..=4, base in any::<u32>(),
        victim in any::<prop::sample::Index>(),
    ) {
        let map = with_indep_rule(map_with_weights(&hosts));
        let victim = OsdId(victim.index(device_count(&hosts) as usize) as u32);
        let compiled = compile(&map);
        let old = mappings(&compiled, "indep", size, &compiled.all_in(), base);
        let new = mappings(&compiled, "indep", size, &all_in_but(&compiled, victim), base);
        for (old, new) in old.iter().zip(&new) {
            prop_assert_eq!(old.len(), new.len());
            for (before, after) in old.iter().zip(new) {
                if *before != Some(victim) {
                    prop_assert_eq!(before, after, "{:?} -> {:?}", old, new);
                }
            }
        }
    }
}
