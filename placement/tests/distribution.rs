//! Large-sample figures: load proportional to weight over a million PGs,
//! and how much data adding, removing or failing one OSD moves. Each test
//! prints its figures (run with `--nocapture` to see them).

mod common;

use aspen_placement::analysis::{self, MovementReport};
use aspen_placement::crush::{CompiledMap, CrushMap, DEFAULT_RULE};
use aspen_placement::{OsdId, PgId, PoolId, Weight};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The CRUSH inputs of PGs `0..count` of pool 1.
fn pg_inputs(count: u32) -> impl Iterator<Item = u32> + Clone {
    (0..count).map(|seed| {
        PgId {
            pool: PoolId(1),
            seed,
        }
        .placement_input()
    })
}

fn movement(
    before: &CrushMap,
    after: &CrushMap,
    rule: &str,
    size: usize,
    pgs: u32,
) -> MovementReport {
    let (a, b) = (compile(before), compile(after));
    analysis::movement(
        (&a, &a.all_in()),
        (&b, &b.all_in()),
        rule,
        size,
        pg_inputs(pgs),
    )
    .unwrap()
}

fn print_movement(what: &str, report: &MovementReport) {
    println!(
        "{what}: moved {:.4}% of replicas, optimum {:.4}%, ratio {:.3}",
        report.moved_fraction() * 100.0,
        report.optimal_fraction * 100.0,
        report.ratio_to_optimal()
    );
}

#[test]
fn load_is_proportional_to_weight_over_a_million_pgs() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let hosts: Vec<Vec<f64>> = (0..50)
        .map(|_| {
            (0..20)
                .map(|_| (rng.random_range(100..=400) as f64) / 100.0)
                .collect()
        })
        .collect();
    let map = compile(&map_with_weights(&hosts));
    let weights = map.all_in();
    let pgs = 1_000_000u32;
    // Two halves on two threads, merged.
    let halves: Vec<_> = std::thread::scope(|scope| {
        let map = &map;
        let weights = &weights;
        [0..pgs / 2, pgs / 2..pgs]
            .map(|range| {
                scope.spawn(move || {
                    let inputs = range.map(|seed| {
                        PgId {
                            pool: PoolId(1),
                            seed,
                        }
                        .placement_input()
                    });
                    analysis::utilization(map, weights, DEFAULT_RULE, 3, inputs).unwrap()
                })
            })
            .map(|h| h.join().unwrap())
            .to_vec()
    });
    let mut report = halves[0].clone();
    for (total, other) in report.devices.iter_mut().zip(&halves[1].devices) {
        total.count += other.count;
        total.expected += other.expected;
    }
    report.mappings += halves[1].mappings;
    report.short_mappings += halves[1].short_mappings;
    let worst = report.worst().unwrap();
    let expected: Vec<f64> = report.devices.iter().map(|d| d.expected).collect();
    println!(
        "1,000,000 PGs x 3 over 1,000 OSDs (weights 1.00-4.00): worst {} {:+.2}% ({} vs {:.0} expected), stddev {:.1} replicas, expected {:.0}..{:.0}",
        worst.osd,
        worst.deviation() * 100.0,
        worst.count,
        worst.expected,
        report.stddev(),
        expected.iter().cloned().fold(f64::MAX, f64::min),
        expected.iter().cloned().fold(0.0, f64::max),
    );
    assert_eq!(report.short_mappings, 0);
    assert!(worst.deviation().abs() <= 0.10, "{worst:?}");
}

#[test]
fn adding_one_osd_moves_the_optimum_to_the_new_osd() {
    let scenarios: [(&str, CrushMap, &str, u32); 3] = [
        ("10x4, add to host3", uniform(10, 4), "host3", 300_000),
        ("50x20, add to host7", uniform(50, 20), "host7", 400_000),
        ("50x20, add a new host", uniform(50, 20), "hostNew", 400_000),
    ];
    for (what, before, host, pgs) in scenarios {
        let mut after = before.clone();
        if after.bucket(host).is_none() {
            after.add_bucket(host, "host", "default").unwrap();
        }
        let new_osd = OsdId(5000);
        after.add_device(new_osd, Weight::ONE, host).unwrap();
        let report = movement(&before, &after, DEFAULT_RULE, 3, pgs);
        print_movement(what, &report);
        println!(
            "  {:.2}% of the moved replicas went to the new OSD",
            report.share_gained_by(new_osd) * 100.0
        );
        assert!(report.ratio_to_optimal() <= 1.2, "{what}");
        assert!(report.share_gained_by(new_osd) >= 0.95, "{what}");
    }
}

#[test]
fn adding_a_host_matches_the_optimum() {
    let before = uniform(50, 20);
    let after = uniform(51, 20);
    let report = movement(&before, &after, DEFAULT_RULE, 3, 400_000);
    print_movement("50x20, add a host of 20", &report);
    let to_new_host: u64 = report
        .gained
        .iter()
        .filter(|(o, _)| o.0 >= 1000)
        .map(|(_, c)| c)
        .sum();
    println!(
        "  {:.2}% of the moved replicas went to the new host",
        100.0 * to_new_host as f64 / report.moved as f64
    );
    assert!(report.ratio_to_optimal() <= 1.2);
    assert_eq!(to_new_host, report.moved);
}

fn replicas_on(map: &CompiledMap, osd: OsdId, pgs: u32) -> u64 {
    let report =
        analysis::utilization(map, &map.all_in(), DEFAULT_RULE, 3, pg_inputs(pgs)).unwrap();
    report.devices.iter().find(|d| d.osd == osd).unwrap().count
}

#[test]
fn removing_or_outing_one_osd_moves_only_its_replicas() {
    let pgs = 300_000;
    let before = uniform(10, 4);
    let victim = OsdId(13);
    let compiled = compile(&before);
    let on_victim = replicas_on(&compiled, victim, pgs);

    let out_weights = all_in_but(&compiled, victim);
    let outed = analysis::movement(
        (&compiled, &compiled.all_in()),
        (&compiled, &out_weights),
        DEFAULT_RULE,
        3,
        pg_inputs(pgs),
    )
    .unwrap();
    let mut removed_map = before.clone();
    removed_map.remove_device(victim).unwrap();
    let removed = movement(&before, &removed_map, DEFAULT_RULE, 3, pgs);
    for (what, report) in [("out osd.13", &outed), ("remove osd.13", &removed)] {
        print_movement(what, report);
        println!(
            "  {} replicas were on it, {} moved ({:.3}x)",
            on_victim,
            report.moved,
            report.moved as f64 / on_victim as f64
        );
        assert!(report.moved as f64 <= 1.05 * on_victim as f64, "{what}");
        assert_eq!(
            report.lost.keys().collect::<Vec<_>>(),
            vec![&victim],
            "{what}"
        );
    }
}

#[test]
fn indep_changes_only_the_failed_position() {
    let mut map = uniform(10, 4);
    add_rule(
        &mut map,
        "ec",
        &["take default", "chooseleaf indep 0 type host", "emit"],
    );
    let compiled = compile(&map);
    let victim = OsdId(21);
    let out = all_in_but(&compiled, victim);
    let rule = compiled.rule("ec").unwrap();
    let (mut failed_positions, mut other_positions_changed) = (0u64, 0u64);
    for x in pg_inputs(200_000) {
        let before = compiled.select(rule, x, 6, &compiled.all_in()).unwrap();
        let after = compiled.select(rule, x, 6, &out).unwrap();
        for (b, a) in before.iter().zip(&after) {
            if *b == Some(victim) {
                failed_positions += 1;
                assert!(a.is_some() && *a != Some(victim));
            } else if b != a {
                other_positions_changed += 1;
            }
        }
    }
    println!(
        "indep size 6 on 10x4, osd.21 out: {failed_positions} positions refilled, {other_positions_changed} other positions changed"
    );
    assert!(failed_positions > 0);
    assert_eq!(other_positions_changed, 0);
}
