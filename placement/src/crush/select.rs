//! Running a rule: choosing devices for one placement input `x`.
//!
//! # Consistent straw2
//! Every device draws a cost `-log2(u) / weight` from its own uniform hash
//! `u = hash(x, r, device)`; the smallest cost wins (this is straw2, whose
//! "largest `ln(u) / weight`" is the same ranking). A bucket's draw is the
//! best draw among the devices below it. Because the minimum of exponential
//! costs with rates `w1, w2, ...` is itself exponential with rate
//! `w1 + w2 + ...`, each bucket wins exactly as often as a straw2 item of its
//! total weight would, at every level; and because a bucket's draw *is* one of
//! its devices' draws, descending into the winner lands on that device.
//!
//! What this buys over drawing once per bucket: when a device is added,
//! removed, reweighted or marked out, the only draw that changes is that
//! device's, so the only PG replicas that move are those that move to or
//! from that device. Classic CRUSH also moves replicas between the other
//! devices of the changed host. The price is that a choose step hashes every
//! device under the bucket it starts from: O(devices) per mapping, about a
//! microsecond per thousand devices.
//!
//! # Modes
//! - `firstn`: the working bucket's failure domains are ranked by their best
//!   eligible draw with `r = 0`, and the first `N` win. Collisions cannot
//!   happen (each domain is ranked once) and rejected devices are simply
//!   not candidates, so there are no retry loops: the work is bounded by
//!   the map's size limits.
//! - `indep`: position `p` ranks domains with its own stream `r = p`. Homes
//!   are assigned from crush weights alone (position order breaks ties), so
//!   they do not depend on which devices are up or in; each position then
//!   takes the best eligible device of its home. A position whose home has
//!   no eligible device takes the best free domain by its own ranking, or
//!   stays empty. One device failing therefore changes only its own position.
//!
//! Eligibility: a device is a candidate when its CRUSH weight is non-zero
//! and its reweight accepts `x`: reweight 0 (out) never does, 1.0 always
//! does, and in between a fixed per-(x, device) hash rejects that fraction.

use super::compile::{CompiledMap, CompiledStep, Domain, RuleId};
use super::rule::{ChooseMode, MAX_REPLICAS, Step};
use crate::hash::{draw_bits, draw_stream, reject_bits};
use crate::ln::cost;
use crate::{CrushError, OsdId, Weight};

/// Per-device reweights (0 = out, 1.0 = fully in) in the compiled map's
/// device order. Build with [`CompiledMap::device_weights`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceWeights(Vec<u32>);

impl DeviceWeights {
    /// The reweights in the compiled map's device order (see
    /// [`CompiledMap::placed_devices`]).
    pub fn iter(&self) -> impl Iterator<Item = Weight> + '_ {
        self.0.iter().map(|&raw| Weight::from_raw(raw))
    }
}

/// A draw's rank: smaller wins; the leaf index breaks exact ties.
type DrawKey = (u128, usize);

/// A chosen failure domain, the device under it, and the draw stream that
/// chose them.
#[derive(Clone, Copy)]
struct Pick {
    domain: usize,
    leaf: usize,
    r: u32,
}

/// An item of a rule's working set: a node and the draw stream that chose
/// it, which the steps below it continue (so `choose host` + `choose osd`
/// lands where `chooseleaf host` does).
#[derive(Clone, Copy)]
struct Chosen {
    node: usize,
    r: u32,
}

const FULLY_IN: u32 = Weight::ONE.raw();

impl CompiledMap {
    /// The rule named `name`.
    pub fn rule(&self, name: &str) -> Result<RuleId, CrushError> {
        self.rules
            .iter()
            .position(|r| r.name == name)
            .map(RuleId)
            .ok_or_else(|| CrushError::UnknownRule(name.to_string()))
    }

    pub fn rule_name(&self, rule: RuleId) -> &str {
        &self.rules[rule.0].name
    }

    /// Whether `rule` keeps fixed positions (has an `indep` step), so that
    /// its results may hold empty positions.
    pub fn is_positional(&self, rule: RuleId) -> bool {
        self.rules[rule.0].positional
    }

    /// The devices placed in the hierarchy, with their CRUSH weights.
    pub fn placed_devices(&self) -> impl Iterator<Item = (OsdId, Weight)> + '_ {
        self.leaves
            .iter()
            .map(|l| (l.osd, Weight::from_raw(l.weight)))
    }

    /// Reweights for every placed device, from `reweight` (values above 1.0
    /// count as 1.0).
    pub fn device_weights(&self, reweight: impl Fn(OsdId) -> Weight) -> DeviceWeights {
        DeviceWeights(
            self.leaves
                .iter()
                .zip(&self.crush_only)
                .map(|(l, &weighted)| reweight(l.osd).raw().min(weighted))
                .collect(),
        )
    }

    /// Every placed device fully in.
    pub fn all_in(&self) -> DeviceWeights {
        DeviceWeights(self.crush_only.clone())
    }

    /// Checks that `rule` can place `size` replicas when every device is in:
    /// each choose step must find enough weighted failure domains.
    pub fn check_rule(&self, rule: RuleId, size: usize) -> Result<(), CrushError> {
        check_size(size)?;
        let compiled = &self.rules[rule.0];
        let mut inputs: Vec<usize> = Vec::new();
        for step in &compiled.steps {
            match *step {
                CompiledStep::Take(bucket) => {
                    self.check_weighted(bucket)?;
                    inputs = vec![bucket];
                }
                CompiledStep::Choose { count, ty, .. } => {
                    let needed = Step::resolve_count(count, size);
                    let mut next = Vec::new();
                    for &bucket in &inputs {
                        let weighted: Vec<usize> = self
                            .domains_of(bucket, ty)
                            .iter()
                            .filter(|d| self.nodes[d.node].weight > 0)
                            .map(|d| d.node)
                            .collect();
                        if weighted.len() < needed {
                            return Err(CrushError::NotEnoughDomains {
                                rule: compiled.name.clone(),
                                domain: self.types[ty].clone(),
                                needed,
                                available: weighted.len(),
                            });
                        }
                        next.extend(weighted);
                    }
                    inputs = next;
                }
                CompiledStep::Emit => inputs.clear(),
            }
        }
        Ok(())
    }

    /// Runs `rule` for input `x` and pool size `size`: the chosen devices in
    /// order, at most `size` of them. `None` marks an `indep` position that
    /// could not be filled. Fewer than `size` devices come back when not
    /// enough are eligible.
    pub fn select(
        &self,
        rule: RuleId,
        x: u32,
        size: usize,
        weights: &DeviceWeights,
    ) -> Result<Vec<Option<OsdId>>, CrushError> {
        check_size(size)?;
        let compiled = &self.rules[rule.0];
        let mut working: Vec<Option<Chosen>> = Vec::new();
        let mut result: Vec<Option<OsdId>> = Vec::with_capacity(size);
        for step in &compiled.steps {
            match *step {
                CompiledStep::Take(bucket) => {
                    self.check_weighted(bucket)?;
                    working = vec![Some(Chosen { node: bucket, r: 0 })];
                }
                CompiledStep::Choose {
                    leaf,
                    mode,
                    count,
                    ty,
                } => {
                    let wanted = Step::resolve_count(count, size);
                    working = self.choose_step(&working, leaf, mode, wanted, ty, x, weights);
                }
                CompiledStep::Emit => {
                    let emitted = working
                        .drain(..)
                        .map(|c| c.and_then(|c| self.nodes[c.node].device));
                    result.extend(emitted);
                }
            }
        }
        result.truncate(size);
        drop_duplicates(&mut result);
        if !compiled.positional {
            result.retain(Option::is_some);
        }
        Ok(result)
    }

    #[allow(clippy::too_many_arguments)]
    fn choose_step(
        &self,
        working: &[Option<Chosen>],
        leaf: bool,
        mode: ChooseMode,
        wanted: usize,
        ty: usize,
        x: u32,
        weights: &DeviceWeights,
    ) -> Vec<Option<Chosen>> {
        let chosen = |pick: Pick| Chosen {
            node: if leaf {
                self.leaves[pick.leaf].node
            } else {
                pick.domain
            },
            r: pick.r,
        };
        let mut next = Vec::new();
        for item in working {
            let Some(parent) = *item else {
                if mode == ChooseMode::Indep {
                    next.extend(std::iter::repeat_n(None, wanted));
                }
                continue;
            };
            let domains = self.domains_of(parent.node, ty);
            match mode {
                ChooseMode::FirstN => {
                    let picks = self.choose_firstn(domains, wanted, x, parent.r, weights);
                    next.extend(picks.into_iter().map(|p| Some(chosen(p))));
                }
                ChooseMode::Indep => {
                    let picks = self.choose_indep(domains, wanted, x, parent.r, weights);
                    next.extend(picks.into_iter().map(|p| p.map(chosen)));
                }
            }
        }
        next
    }

    fn domains_of(&self, bucket: usize, ty: usize) -> &[Domain] {
        self.domains
            .get(&(bucket, ty))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn check_weighted(&self, bucket: usize) -> Result<(), CrushError> {
        if self.nodes[bucket].weight == 0 {
            return Err(CrushError::ZeroWeight(self.nodes[bucket].name.clone()));
        }
        Ok(())
    }

    /// The `wanted` domains with the best eligible draws in stream `r`, best first.
    fn choose_firstn(
        &self,
        domains: &[Domain],
        wanted: usize,
        x: u32,
        r: u32,
        weights: &DeviceWeights,
    ) -> Vec<Pick> {
        let stream = draw_stream(x, r);
        let mut ranked: Vec<(DrawKey, Pick)> = Vec::with_capacity(wanted + 1);
        for d in domains {
            let Some((key, leaf)) = self.best_leaf(d, stream, x, &weights.0) else {
                continue;
            };
            if ranked.len() == wanted && ranked.last().is_none_or(|(worst, _)| key >= *worst) {
                continue;
            }
            let at = ranked.partition_point(|(k, _)| *k < key);
            ranked.insert(
                at,
                (
                    key,
                    Pick {
                        domain: d.node,
                        leaf,
                        r,
                    },
                ),
            );
            ranked.truncate(wanted);
        }
        ranked.into_iter().map(|(_, pick)| pick).collect()
    }

    /// `wanted` fixed positions (see the module docs). Position `p` draws in
    /// stream `r + p * MAX_REPLICAS`, so position 0 continues its parent's
    /// stream and nested positions never share one.
    fn choose_indep(
        &self,
        domains: &[Domain],
        wanted: usize,
        x: u32,
        r: u32,
        weights: &DeviceWeights,
    ) -> Vec<Option<Pick>> {
        let position_r = |p: usize| r.wrapping_add((p * MAX_REPLICAS) as u32);
        let rs: Vec<u32> = (0..wanted).map(position_r).collect();
        let streams: Vec<u64> = rs.iter().map(|&r| draw_stream(x, r)).collect();
        let mut used: Vec<usize> = Vec::with_capacity(wanted);
        let homes: Vec<Option<usize>> = streams
            .iter()
            .map(|&stream| {
                let home = self.best_domain(domains, &used, stream, x, &self.crush_only);
                used.extend(home);
                home
            })
            .collect();
        let mut picks: Vec<Option<Pick>> = homes
            .iter()
            .zip(streams.iter().zip(&rs))
            .map(|(home, (&stream, &r))| {
                let d = &domains[(*home)?];
                let (_, leaf) = self.best_leaf(d, stream, x, &weights.0)?;
                Some(Pick {
                    domain: d.node,
                    leaf,
                    r,
                })
            })
            .collect();
        for (pick, (&stream, &r)) in picks.iter_mut().zip(streams.iter().zip(&rs)) {
            if pick.is_some() {
                continue;
            }
            if let Some(replacement) = self.best_domain(domains, &used, stream, x, &weights.0) {
                used.push(replacement);
                let d = &domains[replacement];
                *pick = self
                    .best_leaf(d, stream, x, &weights.0)
                    .map(|(_, leaf)| Pick {
                        domain: d.node,
                        leaf,
                        r,
                    });
            }
        }
        picks
    }

    /// Index of the domain with the best draw among those not in `taken`.
    fn best_domain(
        &self,
        domains: &[Domain],
        taken: &[usize],
        stream: u64,
        x: u32,
        weights: &[u32],
    ) -> Option<usize> {
        domains
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken.contains(i))
            .filter_map(|(i, d)| {
                self.best_leaf(d, stream, x, weights)
                    .map(|(key, _)| (key, i))
            })
            .min()
            .map(|(_, i)| i)
    }

    /// The best draw among the candidate devices of `domain`: weighted
    /// devices that `weights` accepts for `x`.
    #[inline]
    fn best_leaf(
        &self,
        domain: &Domain,
        stream: u64,
        x: u32,
        weights: &[u32],
    ) -> Option<(DrawKey, usize)> {
        if domain.uniform {
            return self.best_leaf_uniform(domain, stream, x, weights);
        }
        let mut best: Option<(DrawKey, usize)> = None;
        for index in domain.leaves.clone() {
            if !accepts(weights[index], self.salts[index], x) {
                continue;
            }
            let key = self.draw(stream, index);
            if best.is_none_or(|(b, _)| key < b) {
                best = Some((key, index));
            }
        }
        best
    }

    /// [`Self::best_leaf`] for a domain whose devices weigh the same: the
    /// cost falls as the hash rises, so the largest hash (then the lowest
    /// leaf index) wins, and only its cost is computed. Same result, no
    /// logarithm and no unpredictable branch in the loop.
    #[inline]
    fn best_leaf_uniform(
        &self,
        domain: &Domain,
        stream: u64,
        x: u32,
        weights: &[u32],
    ) -> Option<(DrawKey, usize)> {
        let mut best = 0u64;
        for index in domain.leaves.clone() {
            let salt = self.salts[index];
            if accepts(weights[index], salt, x) {
                let hash = u64::from(draw_bits(stream, salt));
                best = best.max((hash << 32) | u64::from(!(index as u32)));
            }
        }
        if best == 0 {
            return None;
        }
        let index = !(best as u32) as usize;
        Some((self.draw(stream, index), index))
    }

    /// The rank of leaf `index`'s draw in `stream`: its cost scaled by its
    /// inverse weight, then its index (exact ties are astronomically rare,
    /// but must still be decided the same way everywhere).
    #[inline]
    fn draw(&self, stream: u64, index: usize) -> DrawKey {
        let cost = u128::from(cost(draw_bits(stream, self.salts[index])));
        (cost * u128::from(self.leaves[index].inv_weight), index)
    }
}

/// Whether a device with this reweight (0 for out or zero CRUSH weight)
/// takes input `x`.
#[inline]
fn accepts(reweight: u32, salt: u64, x: u32) -> bool {
    reweight >= FULLY_IN || (reweight > 0 && reject_bits(x, salt) < reweight)
}

fn check_size(size: usize) -> Result<(), CrushError> {
    if size == 0 || size > MAX_REPLICAS {
        return Err(CrushError::BadSize {
            size,
            limit: MAX_REPLICAS,
        });
    }
    Ok(())
}

/// A device emitted twice (a rule taking overlapping buckets) keeps its
/// first position; later copies become holes.
fn drop_duplicates(result: &mut [Option<OsdId>]) {
    for i in 1..result.len() {
        if result[i].is_some() && result[..i].contains(&result[i]) {
            result[i] = None;
        }
    }
}
