//! Reports over many mappings: how evenly a rule spreads data
//! ([`utilization`]) and how much data a map change moves ([`movement`]).
//! These back `aspen crush test` and `aspen crush diff`, and the property
//! tests.
//!
//! Inputs are CRUSH inputs `x`, as crushtool's `--min-x/--max-x` are; pass
//! [`crate::PgId::placement_input`] values to measure a pool's real PGs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::crush::{CompiledMap, DeviceWeights};
use crate::{CrushError, OsdId, Weight};

/// How many replicas each device received.
#[derive(Clone, Debug, PartialEq)]
pub struct UtilizationReport {
    pub mappings: u64,
    pub size: usize,
    /// Mappings that got fewer than `size` devices.
    pub short_mappings: u64,
    pub devices: Vec<DeviceUse>,
}

/// One device's replica count against its weight-proportional expectation.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceUse {
    pub osd: OsdId,
    pub weight: Weight,
    pub count: u64,
    pub expected: f64,
}

impl DeviceUse {
    /// `count / expected - 1`, or 0 for a device expected to get nothing.
    pub fn deviation(&self) -> f64 {
        if self.expected == 0.0 {
            0.0
        } else {
            self.count as f64 / self.expected - 1.0
        }
    }
}

impl UtilizationReport {
    /// The device furthest from its expected share.
    pub fn worst(&self) -> Option<&DeviceUse> {
        self.devices
            .iter()
            .max_by(|a, b| a.deviation().abs().total_cmp(&b.deviation().abs()))
    }

    /// Standard deviation of `count - expected` over the devices expected to
    /// get data.
    pub fn stddev(&self) -> f64 {
        let used: Vec<&DeviceUse> = self.devices.iter().filter(|d| d.expected > 0.0).collect();
        if used.is_empty() {
            return 0.0;
        }
        let sum: f64 = used
            .iter()
            .map(|d| (d.count as f64 - d.expected).powi(2))
            .sum();
        (sum / used.len() as f64).sqrt()
    }
}

/// Effective weight (CRUSH weight × reweight) of every placed device.
fn effective_weights(map: &CompiledMap, weights: &DeviceWeights) -> BTreeMap<OsdId, f64> {
    map.placed_devices()
        .zip(weights.iter())
        .map(|((osd, weight), reweight)| (osd, weight.to_f64() * reweight.to_f64()))
        .collect()
}

/// Maps every input with `rule_name` and counts replicas per device.
pub fn utilization(
    map: &CompiledMap,
    weights: &DeviceWeights,
    rule_name: &str,
    size: usize,
    inputs: impl IntoIterator<Item = u32>,
) -> Result<UtilizationReport, CrushError> {
    let rule = map.rule(rule_name)?;
    let mut counts: HashMap<OsdId, u64> = HashMap::new();
    let (mut mappings, mut short_mappings, mut placed) = (0u64, 0u64, 0u64);
    for x in inputs {
        let chosen = map.select(rule, x, size, weights)?;
        let members = chosen.iter().flatten().count();
        mappings += 1;
        placed += members as u64;
        short_mappings += u64::from(members < size);
        for osd in chosen.into_iter().flatten() {
            *counts.entry(osd).or_default() += 1;
        }
    }
    let effective = effective_weights(map, weights);
    let total: f64 = effective.values().sum();
    let devices = map
        .placed_devices()
        .map(|(osd, weight)| DeviceUse {
            osd,
            weight,
            count: counts.get(&osd).copied().unwrap_or(0),
            expected: if total > 0.0 {
                placed as f64 * effective[&osd] / total
            } else {
                0.0
            },
        })
        .collect();
    Ok(UtilizationReport {
        mappings,
        size,
        short_mappings,
        devices,
    })
}

/// What a map change does to the placement of a set of inputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MovementReport {
    pub mappings: u64,
    /// Inputs whose device set changed.
    pub changed_mappings: u64,
    /// Replicas placed before the change.
    pub replicas: u64,
    /// (input, device) pairs present after the change but not before: each
    /// is one replica copied to a new place.
    pub moved: u64,
    /// Positions whose device changed (a reordering counts, a pure set
    /// comparison does not).
    pub positions_changed: u64,
    /// Where moved replicas went.
    pub gained: BTreeMap<OsdId, u64>,
    /// Where moved replicas came from.
    pub lost: BTreeMap<OsdId, u64>,
    /// The least fraction of replicas any placement must move: the total
    /// variation between the old and new weight-proportional shares.
    pub optimal_fraction: f64,
}

impl MovementReport {
    pub fn moved_fraction(&self) -> f64 {
        if self.replicas == 0 {
            0.0
        } else {
            self.moved as f64 / self.replicas as f64
        }
    }

    /// Moved fraction over the optimal fraction (1.0 is ideal).
    pub fn ratio_to_optimal(&self) -> f64 {
        if self.optimal_fraction == 0.0 {
            if self.moved == 0 { 1.0 } else { f64::INFINITY }
        } else {
            self.moved_fraction() / self.optimal_fraction
        }
    }

    /// Fraction of the moved replicas that went to `osd`.
    pub fn share_gained_by(&self, osd: OsdId) -> f64 {
        if self.moved == 0 {
            return 1.0;
        }
        self.gained.get(&osd).copied().unwrap_or(0) as f64 / self.moved as f64
    }
}

/// Total variation between two weight-proportional distributions.
fn optimal_fraction(before: &BTreeMap<OsdId, f64>, after: &BTreeMap<OsdId, f64>) -> f64 {
    let (total_before, total_after): (f64, f64) = (before.values().sum(), after.values().sum());
    if total_before == 0.0 || total_after == 0.0 {
        return 0.0;
    }
    let osds: BTreeSet<&OsdId> = before.keys().chain(after.keys()).collect();
    osds.into_iter()
        .map(|osd| {
            let old = before.get(osd).copied().unwrap_or(0.0) / total_before;
            let new = after.get(osd).copied().unwrap_or(0.0) / total_after;
            (new - old).max(0.0)
        })
        .sum()
}

/// One side of a comparison: a compiled map and the reweights to use.
pub type Side<'a> = (&'a CompiledMap, &'a DeviceWeights);

/// Maps every input before and after a change with `rule_name` and counts
/// what moved.
pub fn movement(
    before: Side<'_>,
    after: Side<'_>,
    rule_name: &str,
    size: usize,
    inputs: impl IntoIterator<Item = u32>,
) -> Result<MovementReport, CrushError> {
    let (old_rule, new_rule) = (before.0.rule(rule_name)?, after.0.rule(rule_name)?);
    let mut report = MovementReport {
        optimal_fraction: optimal_fraction(
            &effective_weights(before.0, before.1),
            &effective_weights(after.0, after.1),
        ),
        ..MovementReport::default()
    };
    for x in inputs {
        let old = before.0.select(old_rule, x, size, before.1)?;
        let new = after.0.select(new_rule, x, size, after.1)?;
        report.mappings += 1;
        report.replicas += old.iter().flatten().count() as u64;
        let positions = old.len().max(new.len());
        report.positions_changed +=
            (0..positions).filter(|&i| old.get(i) != new.get(i)).count() as u64;
        let gained: Vec<OsdId> = new
            .iter()
            .flatten()
            .filter(|o| !old.contains(&Some(**o)))
            .copied()
            .collect();
        let lost: Vec<OsdId> = old
            .iter()
            .flatten()
            .filter(|o| !new.contains(&Some(**o)))
            .copied()
            .collect();
        report.changed_mappings += u64::from(!gained.is_empty() || !lost.is_empty());
        report.moved += gained.len() as u64;
        for osd in gained {
            *report.gained.entry(osd).or_default() += 1;
        }
        for osd in lost {
            *report.lost.entry(osd).or_default() += 1;
        }
    }
    Ok(report)
}
