//! Every rule step, every fallback path, and every kind of bad input.

mod common;

use aspen_placement::crush::{CrushMap, MAX_REPLICAS, compile::*};
use aspen_placement::{CrushError, OsdId, Weight};
use common::*;

fn select(map: &CrushMap, rule: &str, x: u32, size: usize) -> Vec<Option<OsdId>> {
    let compiled = compile(map);
    compiled
        .select(compiled.rule(rule).unwrap(), x, size, &compiled.all_in())
        .unwrap()
}

fn error_of(map: &CrushMap) -> CrushError {
    map.compile().err().expect("the map should be rejected")
}

// ---- bad maps ----

#[test]
fn unknown_bucket_in_take() {
    let mut map = uniform(3, 2);
    add_rule(
        &mut map,
        "r",
        &["take nowhere", "chooseleaf firstn 0 type host", "emit"],
    );
    assert_eq!(error_of(&map), CrushError::UnknownBucket("nowhere".into()));
    // A device is not a bucket either.
    let mut map = uniform(3, 2);
    add_rule(&mut map, "r", &["take osd.0", "emit"]);
    assert_eq!(error_of(&map), CrushError::UnknownBucket("osd.0".into()));
}

#[test]
fn unknown_item_in_bucket() {
    let mut map = uniform(2, 2);
    map.buckets[1].items.push("ghost".into());
    assert!(matches!(error_of(&map), CrushError::UnknownItem { item, .. } if item == "ghost"));
}

#[test]
fn cycles_are_rejected() {
    let mut map = uniform(2, 2);
    map.add_bucket("rackA", "rack", "default").unwrap();
    map.add_bucket("rackB", "rack", "rackA").unwrap();
    // rackA -> rackB -> rackA, detached from the root.
    map.buckets[0].items.retain(|i| i != "rackA");
    map.buckets
        .iter_mut()
        .find(|b| b.name == "rackB")
        .unwrap()
        .items
        .push("rackA".into());
    assert!(matches!(error_of(&map), CrushError::Cycle(_)));
    // A bucket inside itself.
    let mut map = uniform(2, 2);
    map.buckets[1].items.push("host0".into());
    assert!(matches!(
        error_of(&map),
        CrushError::Cycle(_) | CrushError::MultipleParents { .. }
    ));
}

#[test]
fn an_item_has_one_parent() {
    let mut map = uniform(2, 2);
    map.buckets[2].items.push("osd.0".into());
    assert_eq!(
        error_of(&map),
        CrushError::MultipleParents {
            item: "osd.0".into(),
            first: "host0".into(),
            second: "host1".into()
        }
    );
}

#[test]
fn types_must_exist_and_buckets_are_not_devices() {
    let mut map = uniform(2, 2);
    map.buckets[1].ty = "galaxy".into();
    assert_eq!(error_of(&map), CrushError::UnknownType("galaxy".into()));
    let mut map = uniform(2, 2);
    map.buckets[1].ty = "osd".into();
    assert!(matches!(
        error_of(&map),
        CrushError::BucketHasDeviceType { .. }
    ));
    let mut map = uniform(2, 2);
    add_rule(
        &mut map,
        "r",
        &["take default", "chooseleaf firstn 0 type galaxy", "emit"],
    );
    assert_eq!(error_of(&map), CrushError::UnknownType("galaxy".into()));
    let mut map = uniform(2, 2);
    map.types.clear();
    assert_eq!(error_of(&map), CrushError::NoTypes);
    let mut map = uniform(2, 2);
    map.types.push("host".into());
    assert_eq!(error_of(&map), CrushError::DuplicateType("host".into()));
}

#[test]
fn custom_types_work() {
    let mut map = CrushMap::new();
    map.types = ["disk", "shelf", "root"].map(String::from).to_vec();
    map.buckets[0].ty = "root".into();
    for shelf in 0..4 {
        map.add_bucket(&format!("shelf{shelf}"), "shelf", "default")
            .unwrap();
        for d in 0..3 {
            map.add_device(OsdId(shelf * 3 + d), Weight::ONE, &format!("shelf{shelf}"))
                .unwrap();
        }
    }
    map.rules.clear();
    add_rule(
        &mut map,
        "r",
        &["take default", "chooseleaf firstn 0 type shelf", "emit"],
    );
    let chosen = select(&map, "r", 7, 3);
    assert_eq!(chosen.len(), 3);
    let shelves: std::collections::HashSet<_> = chosen.iter().map(|o| o.unwrap().0 / 3).collect();
    assert_eq!(shelves.len(), 3);
}

#[test]
fn duplicates_are_rejected() {
    let mut map = uniform(2, 2);
    map.devices[1].id = OsdId(0);
    assert_eq!(error_of(&map), CrushError::DuplicateDeviceId(0));
    let mut map = uniform(2, 2);
    map.buckets[2].name = "host0".into();
    assert_eq!(error_of(&map), CrushError::DuplicateName("host0".into()));
    let mut map = uniform(2, 2);
    let rule = map.rules[0].clone();
    map.rules.push(rule);
    assert_eq!(
        error_of(&map),
        CrushError::DuplicateRule("replicated_rule".into())
    );
    let mut map = uniform(2, 2);
    assert!(map.add_device(OsdId(0), Weight::ONE, "host0").is_err());
    assert!(map.add_bucket("host0", "host", "default").is_err());
    assert!(map.add_bucket("x", "host", "nowhere").is_err());
}

#[test]
fn limits_are_enforced() {
    let mut map = uniform(1, 1);
    map.devices[0].id = OsdId(MAX_DEVICE_ID);
    assert!(matches!(
        error_of(&map),
        CrushError::DeviceIdTooLarge { .. }
    ));

    let mut map = uniform(1, 1);
    map.buckets[1].items = vec!["x".into(); MAX_BUCKET_ITEMS + 1];
    assert!(matches!(error_of(&map), CrushError::TooMany { .. }));

    let mut map = uniform(1, 1);
    let mut parent = "default".to_string();
    for level in 0..=MAX_DEPTH {
        let name = format!("level{level}");
        map.add_bucket(&name, "rack", &parent).unwrap();
        parent = name;
    }
    map.add_device(OsdId(99), Weight::ONE, &parent).unwrap();
    assert!(matches!(error_of(&map), CrushError::TooDeep { .. }));

    let mut map = uniform(1, 1);
    map.devices[0].name = "x".repeat(MAX_NAME_LEN + 1);
    assert!(matches!(error_of(&map), CrushError::Malformed(_)));
}

#[test]
fn bucket_weight_overflow_is_an_error() {
    let map = map_with_weights(&[vec![65535.0, 65535.0]]);
    assert_eq!(error_of(&map), CrushError::WeightOverflow("host0".into()));
}

#[test]
fn zero_weight_tree_is_a_clear_error() {
    let map = map_with_weights(&[vec![0.0, 0.0], vec![0.0]]);
    let compiled = compile(&map);
    let rule = compiled.rule("replicated_rule").unwrap();
    let err = compiled.select(rule, 1, 3, &compiled.all_in()).unwrap_err();
    assert_eq!(err, CrushError::ZeroWeight("default".into()));
    assert_eq!(compiled.check_rule(rule, 3).unwrap_err(), err);
    // An empty root is a zero-weight tree too.
    let compiled = compile(&CrushMap::new());
    let rule = compiled.rule("replicated_rule").unwrap();
    assert!(matches!(
        compiled.select(rule, 1, 3, &compiled.all_in()),
        Err(CrushError::ZeroWeight(_))
    ));
}

#[test]
fn asking_for_more_failure_domains_than_exist() {
    let map = uniform(2, 4);
    let compiled = compile(&map);
    let rule = compiled.rule("replicated_rule").unwrap();
    assert_eq!(
        compiled.check_rule(rule, 3).unwrap_err(),
        CrushError::NotEnoughDomains {
            rule: "replicated_rule".into(),
            domain: "host".into(),
            needed: 3,
            available: 2
        }
    );
    assert!(compiled.check_rule(rule, 2).is_ok());
    // Mapping still works: firstn returns what exists...
    let chosen = compiled.select(rule, 5, 3, &compiled.all_in()).unwrap();
    assert_eq!(chosen.len(), 2);
    // ...and indep leaves the missing position empty.
    let map = with_indep_rule(uniform(2, 4));
    assert_eq!(
        select(&map, "indep", 5, 3)
            .iter()
            .filter(|o| o.is_none())
            .count(),
        1
    );
}

#[test]
fn sizes_outside_the_limit_are_errors() {
    let compiled = compile(&uniform(3, 1));
    let rule = compiled.rule("replicated_rule").unwrap();
    for size in [0, MAX_REPLICAS + 1] {
        assert!(matches!(
            compiled.select(rule, 1, size, &compiled.all_in()),
            Err(CrushError::BadSize { .. })
        ));
    }
}

#[test]
fn malformed_map_files_are_errors() {
    let good = uniform(2, 2).to_json();
    let cases = [
        "".to_string(),
        "not json".to_string(),
        "[]".to_string(),
        good.replace("\"weight\": 1.0", "\"weight\": -1.0"),
        good.replace("\"weight\": 1.0", "\"weight\": \"heavy\""),
        good.replace(
            "chooseleaf firstn 0 type host",
            "chooseleaf sideways 0 type host",
        ),
        good.replace("\"types\"", "\"typos\""),
        good.replacen("\"id\": 0", "\"id\": -4", 1),
        good[..good.len() / 2].to_string(),
    ];
    for text in cases {
        assert!(
            matches!(CrushMap::from_json(&text), Err(CrushError::Malformed(_))),
            "accepted: {text}"
        );
    }
}

#[test]
fn rule_structure_is_checked() {
    let cases: [&[&str]; 6] = [
        &["emit"],
        &["chooseleaf firstn 0 type host", "emit"],
        &["take default", "choose firstn 0 type host", "emit"],
        &["take default", "chooseleaf firstn 0 type host"],
        &[
            "take default",
            "chooseleaf firstn 0 type host",
            "choose firstn 1 type osd",
            "emit",
        ],
        &[],
    ];
    for steps in cases {
        let mut map = uniform(3, 2);
        add_rule(&mut map, "r", steps);
        assert!(
            matches!(error_of(&map), CrushError::BadRule { .. }),
            "{steps:?}"
        );
    }
}

#[test]
fn json_round_trip_keeps_the_map_and_its_mappings() {
    let mut map = map_with_weights(&[vec![1.0, 2.5], vec![0.75], vec![3.0, 1.0, 0.1]]);
    add_rule(
        &mut map,
        "two_steps",
        &[
            "take default",
            "choose firstn 2 type host",
            "choose firstn 1 type osd",
            "emit",
        ],
    );
    let text = map.to_json();
    let back = CrushMap::from_json(&text).unwrap();
    assert_eq!(back, map);
    assert_eq!(back.to_json(), text);
    for x in 0..200 {
        assert_eq!(
            select(&map, "replicated_rule", x, 3),
            select(&back, "replicated_rule", x, 3)
        );
    }
}

// ---- rule steps ----

#[test]
fn take_limits_the_choice_to_that_subtree() {
    let mut map = uniform(4, 2);
    map.add_bucket("other", "root", "default").unwrap();
    map.buckets[0].items.retain(|i| i != "other");
    map.add_bucket("hostX", "host", "other").unwrap();
    map.add_bucket("hostY", "host", "other").unwrap();
    map.add_device(OsdId(100), Weight::ONE, "hostX").unwrap();
    map.add_device(OsdId(101), Weight::ONE, "hostY").unwrap();
    add_rule(
        &mut map,
        "other",
        &["take other", "chooseleaf firstn 0 type host", "emit"],
    );
    for x in 0..100 {
        let chosen = select(&map, "other", x, 2);
        assert_eq!(chosen.len(), 2);
        assert!(chosen.iter().all(|o| o.unwrap().0 >= 100));
        assert!(
            select(&map, "replicated_rule", x, 3)
                .iter()
                .all(|o| o.unwrap().0 < 100)
        );
    }
}

#[test]
fn choose_host_then_osd_equals_chooseleaf_host() {
    let mut map = map_with_weights(&[
        vec![1.0, 2.0, 0.5],
        vec![1.0, 1.0],
        vec![4.0],
        vec![0.3, 0.3, 0.3, 0.3],
    ]);
    add_rule(
        &mut map,
        "two_steps",
        &[
            "take default",
            "choose firstn 0 type host",
            "chooseleaf firstn 1 type osd",
            "emit",
        ],
    );
    add_rule(
        &mut map,
        "two_indep",
        &[
            "take default",
            "choose indep 0 type host",
            "choose indep 1 type osd",
            "emit",
        ],
    );
    add_rule(
        &mut map,
        "leaf_indep",
        &["take default", "chooseleaf indep 0 type host", "emit"],
    );
    for x in 0..2000 {
        assert_eq!(
            select(&map, "two_steps", x, 3),
            select(&map, "replicated_rule", x, 3),
            "x={x}"
        );
        let indep = select(&map, "two_indep", x, 3);
        assert_eq!(indep.iter().flatten().count(), 3);
        assert_eq!(indep, select(&map, "leaf_indep", x, 3), "x={x}");
    }
}

#[test]
fn choose_devices_directly_ignores_hosts() {
    // Two hosts can hold only two replicas by host, but three by device.
    let mut map = uniform(2, 4);
    add_rule(
        &mut map,
        "flat",
        &["take default", "choose firstn 0 type osd", "emit"],
    );
    for x in 0..500 {
        let chosen: std::collections::HashSet<_> = select(&map, "flat", x, 3).into_iter().collect();
        assert_eq!(chosen.len(), 3);
        assert_eq!(select(&map, "replicated_rule", x, 3).len(), 2);
    }
}

#[test]
fn counts_relative_to_the_pool_size() {
    let mut map = uniform(6, 2);
    add_rule(
        &mut map,
        "minus_one",
        &["take default", "chooseleaf firstn -1 type host", "emit"],
    );
    add_rule(
        &mut map,
        "fixed_two",
        &["take default", "chooseleaf firstn 2 type host", "emit"],
    );
    add_rule(
        &mut map,
        "nothing",
        &["take default", "chooseleaf firstn -5 type host", "emit"],
    );
    assert_eq!(select(&map, "minus_one", 3, 4).len(), 3);
    assert_eq!(select(&map, "fixed_two", 3, 4).len(), 2);
    assert_eq!(
        select(&map, "fixed_two", 3, 1).len(),
        1,
        "never more than the pool size"
    );
    assert!(select(&map, "nothing", 3, 4).is_empty());
}

#[test]
fn several_emits_concatenate() {
    let mut map = uniform(4, 2);
    map.add_bucket("ssd", "root", "default").unwrap();
    map.buckets[0].items.retain(|i| i != "ssd");
    for h in 0..3 {
        map.add_bucket(&format!("ssd{h}"), "host", "ssd").unwrap();
        map.add_device(OsdId(100 + h), Weight::ONE, &format!("ssd{h}"))
            .unwrap();
    }
    add_rule(
        &mut map,
        "primary_on_ssd",
        &[
            "take ssd",
            "chooseleaf firstn 1 type host",
            "emit",
            "take default",
            "chooseleaf firstn -1 type host",
            "emit",
        ],
    );
    for x in 0..200 {
        let chosen = select(&map, "primary_on_ssd", x, 3);
        assert_eq!(chosen.len(), 3);
        assert!(chosen[0].unwrap().0 >= 100);
        assert!(chosen[1..].iter().all(|o| o.unwrap().0 < 100));
    }
}

#[test]
fn a_device_emitted_twice_is_kept_once() {
    let mut map = uniform(1, 1);
    add_rule(
        &mut map,
        "twice",
        &[
            "take default",
            "chooseleaf firstn 1 type host",
            "emit",
            "take default",
            "chooseleaf firstn 1 type host",
            "emit",
        ],
    );
    assert_eq!(select(&map, "twice", 9, 2), vec![Some(OsdId(0))]);
}

// ---- eligibility and fallback paths ----

#[test]
fn out_devices_are_never_chosen_and_firstn_closes_up() {
    let map = uniform(5, 2);
    let compiled = compile(&map);
    let rule = compiled.rule("replicated_rule").unwrap();
    let weights = compiled.device_weights(|osd| {
        if osd.0 % 2 == 0 {
            Weight::ZERO
        } else {
            Weight::ONE
        }
    });
    for x in 0..1000 {
        let chosen = compiled.select(rule, x, 3, &weights).unwrap();
        assert_eq!(chosen.len(), 3);
        assert!(chosen.iter().all(|o| o.unwrap().0 % 2 == 1));
    }
}

#[test]
fn zero_crush_weight_devices_are_never_chosen() {
    let map = map_with_weights(&[vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 0.0]]);
    for x in 0..1000 {
        let mut chosen = select(&map, "replicated_rule", x, 3);
        chosen.sort();
        assert_eq!(chosen, vec![Some(OsdId(0)), Some(OsdId(3)), Some(OsdId(4))]);
    }
}

#[test]
fn reweight_rejects_that_fraction() {
    let map = uniform(8, 1);
    let compiled = compile(&map);
    let rule = compiled.rule("replicated_rule").unwrap();
    let half = Weight::from_f64(0.5).unwrap();
    let weights = compiled.device_weights(|osd| if osd.0 == 0 { half } else { Weight::ONE });
    let count = |w: &aspen_placement::crush::DeviceWeights| {
        (0..40_000)
            .filter(|&x| {
                compiled
                    .select(rule, x, 1, w)
                    .unwrap()
                    .contains(&Some(OsdId(0)))
            })
            .count() as f64
    };
    let ratio = count(&weights) / count(&compiled.all_in());
    // Half of osd.0's draws are rejected: it keeps about half its share
    // (a bit more, since its lost share is spread over everyone, it included).
    println!("reweight 0.5 keeps {:.3} of the share", ratio);
    assert!((0.45..0.60).contains(&ratio), "{ratio}");
}

#[test]
fn indep_refills_a_failed_position_from_a_free_host() {
    let map = with_indep_rule(uniform(5, 1));
    let compiled = compile(&map);
    let rule = compiled.rule("indep").unwrap();
    for x in 0..300 {
        let before = compiled.select(rule, x, 3, &compiled.all_in()).unwrap();
        let failed = before[0].unwrap();
        let weights = all_in_but(&compiled, failed);
        let after = compiled.select(rule, x, 3, &weights).unwrap();
        assert_eq!(after[1..], before[1..], "x={x}");
        assert!(after[0].is_some() && after[0] != before[0] && !before.contains(&after[0]));
    }
}

#[test]
fn indep_leaves_a_hole_when_no_host_is_free() {
    let map = with_indep_rule(uniform(3, 1));
    let compiled = compile(&map);
    let rule = compiled.rule("indep").unwrap();
    for x in 0..300 {
        let before = compiled.select(rule, x, 3, &compiled.all_in()).unwrap();
        let failed = before[1].unwrap();
        let weights = all_in_but(&compiled, failed);
        let after = compiled.select(rule, x, 3, &weights).unwrap();
        assert_eq!(after, vec![before[0], None, before[2]]);
    }
}

#[test]
fn indep_moves_within_the_host_first() {
    let map = with_indep_rule(uniform(3, 3));
    let compiled = compile(&map);
    let rule = compiled.rule("indep").unwrap();
    for x in 0..300 {
        let before = compiled.select(rule, x, 3, &compiled.all_in()).unwrap();
        let failed = before[2].unwrap();
        let weights = all_in_but(&compiled, failed);
        let after = compiled.select(rule, x, 3, &weights).unwrap();
        assert_eq!(after[..2], before[..2]);
        assert_eq!(after[2].unwrap().0 / 3, failed.0 / 3, "same host");
    }
}
