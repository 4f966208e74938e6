//! Validation of a [`CrushMap`] and the flattened form placement runs on.
//!
//! Devices are laid out in depth-first order, so the devices under any
//! bucket are one contiguous range of [`Leaf`]s; each bucket also keeps,
//! for every type a rule chooses, its topmost descendants of that type (its
//! failure domains) with their leaf ranges.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::map::CrushMap;
use super::rule::{ChooseMode, MAX_RULE_STEPS, Step};
use crate::hash::device_salt;
use crate::{CrushError, OsdId};

/// The most devices in a map.
pub const MAX_DEVICES: usize = 65_536;
/// Device ids must be below this.
pub const MAX_DEVICE_ID: u32 = 1 << 20;
/// The most buckets in a map.
pub const MAX_BUCKETS: usize = 16_384;
/// The most items one bucket may list.
pub const MAX_BUCKET_ITEMS: usize = 4_096;
/// The most types in a map.
pub const MAX_TYPES: usize = 32;
/// The most levels from a root bucket down to a device.
pub const MAX_DEPTH: usize = 16;
/// The most rules in a map.
pub const MAX_RULES: usize = 256;
/// The longest type, device, bucket or rule name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Index of a rule in a compiled map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleId(pub(crate) usize);

pub(crate) struct Node {
    pub name: String,
    pub type_index: usize,
    /// Sum of the device weights below (raw 16.16).
    pub weight: u64,
    pub device: Option<OsdId>,
    pub children: Vec<usize>,
}

pub(crate) struct Leaf {
    pub node: usize,
    pub osd: OsdId,
    pub weight: u32,
    /// `floor((2^64 - 1) / weight)`, or 0 for a zero weight (never chosen).
    pub inv_weight: u64,
}

/// A failure domain: a bucket (or device) and the leaves below it.
pub(crate) struct Domain {
    pub node: usize,
    pub leaves: Range<usize>,
    /// All weighted leaves below have one weight, so the largest hash wins
    /// and only the winner's cost needs computing.
    pub uniform: bool,
}

pub(crate) enum CompiledStep {
    Take(usize),
    Choose {
        leaf: bool,
        mode: ChooseMode,
        count: i32,
        ty: usize,
    },
    Emit,
}

pub(crate) struct CompiledRule {
    pub name: String,
    pub steps: Vec<CompiledStep>,
    /// Has an `indep` step: results keep empty positions instead of closing up.
    pub positional: bool,
}

/// A validated CRUSH map, ready to place data. Build it with
/// [`CrushMap::compile`].
pub struct CompiledMap {
    pub(crate) types: Vec<String>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) leaves: Vec<Leaf>,
    pub(crate) domains: HashMap<(usize, usize), Vec<Domain>>,
    pub(crate) rules: Vec<CompiledRule>,
    /// Each leaf's draw salt, kept apart from [`Leaf`] so the draw loop
    /// reads one dense array.
    pub(crate) salts: Vec<u64>,
    /// Reweights that accept every weighted leaf: eligibility by CRUSH
    /// weight alone.
    pub(crate) crush_only: Vec<u32>,
}

impl CrushMap {
    /// Validates the map and builds its compiled form.
    pub fn compile(&self) -> Result<CompiledMap, CrushError> {
        let types = compile_types(&self.types)?;
        let (mut nodes, by_name) = compile_nodes(self, &types)?;
        let roots = link_children(self, &mut nodes, &by_name)?;
        let mut leaves = Vec::new();
        let mut ranges = vec![0..0; nodes.len()];
        for root in roots {
            lay_out(&mut nodes, &mut leaves, &mut ranges, root, 0)?;
        }
        let rules = compile_rules(self, &types, &by_name, &nodes)?;
        let domains = compile_domains(&nodes, &leaves, &ranges, &rules);
        Ok(CompiledMap {
            types: self.types.clone(),
            salts: leaves.iter().map(|l| device_salt(l.osd.0)).collect(),
            crush_only: leaves
                .iter()
                .map(|l| {
                    if l.weight == 0 {
                        0
                    } else {
                        crate::Weight::ONE.raw()
                    }
                })
                .collect(),
            nodes,
            leaves,
            domains,
            rules,
        })
    }

    /// Checks the map without keeping the compiled form.
    pub fn validate(&self) -> Result<(), CrushError> {
        self.compile().map(drop)
    }
}

fn check_name(name: &str) -> Result<(), CrushError> {
    let printable = name.chars().all(|c| c.is_ascii_graphic());
    if name.is_empty() || name.len() > MAX_NAME_LEN || !printable {
        return Err(CrushError::Malformed(format!(
            "name {name:?} must be 1..={MAX_NAME_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

fn check_count(what: &'static str, count: usize, limit: usize) -> Result<(), CrushError> {
    if count > limit {
        return Err(CrushError::TooMany { what, count, limit });
    }
    Ok(())
}

fn compile_types(names: &[String]) -> Result<HashMap<&str, usize>, CrushError> {
    if names.is_empty() {
        return Err(CrushError::NoTypes);
    }
    check_count("types", names.len(), MAX_TYPES)?;
    let mut types = HashMap::new();
    for (index, name) in names.iter().enumerate() {
        check_name(name)?;
        if types.insert(name.as_str(), index).is_some() {
            return Err(CrushError::DuplicateType(name.clone()));
        }
    }
    Ok(types)
}

/// One node per device, then one per bucket, with names checked unique.
fn compile_nodes<'m>(
    map: &'m CrushMap,
    types: &HashMap<&str, usize>,
) -> Result<(Vec<Node>, HashMap<&'m str, usize>), CrushError> {
    check_count("devices", map.devices.len(), MAX_DEVICES)?;
    check_count("buckets", map.buckets.len(), MAX_BUCKETS)?;
    let mut nodes = Vec::with_capacity(map.devices.len() + map.buckets.len());
    let mut by_name = HashMap::new();
    let mut ids = HashSet::new();
    for device in &map.devices {
        check_name(&device.name)?;
        if device.id.0 >= MAX_DEVICE_ID {
            return Err(CrushError::DeviceIdTooLarge {
                id: device.id.0,
                limit: MAX_DEVICE_ID,
            });
        }
        if !ids.insert(device.id) {
            return Err(CrushError::DuplicateDeviceId(device.id.0));
        }
        if by_name.insert(device.name.as_str(), nodes.len()).is_some() {
            return Err(CrushError::DuplicateName(device.name.clone()));
        }
        nodes.push(Node {
            name: device.name.clone(),
            type_index: 0,
            weight: u64::from(device.weight.raw()),
            device: Some(device.id),
            children: Vec::new(),
        });
    }
    for bucket in &map.buckets {
        check_name(&bucket.name)?;
        check_count("items in one bucket", bucket.items.len(), MAX_BUCKET_ITEMS)?;
        let type_index = *types
            .get(bucket.ty.as_str())
            .ok_or_else(|| CrushError::UnknownType(bucket.ty.clone()))?;
        if type_index == 0 {
            return Err(CrushError::BucketHasDeviceType {
                bucket: bucket.name.clone(),
                ty: bucket.ty.clone(),
            });
        }
        if by_name.insert(bucket.name.as_str(), nodes.len()).is_some() {
            return Err(CrushError::DuplicateName(bucket.name.clone()));
        }
        nodes.push(Node {
            name: bucket.name.clone(),
            type_index,
            weight: 0,
            device: None,
            children: Vec::new(),
        });
    }
    Ok((nodes, by_name))
}

/// Resolves bucket items to nodes, checks that every item has one parent
/// and that there is no cycle; returns the root buckets.
fn link_children(
    map: &CrushMap,
    nodes: &mut [Node],
    by_name: &HashMap<&str, usize>,
) -> Result<Vec<usize>, CrushError> {
    let mut parent: Vec<Option<usize>> = vec![None; nodes.len()];
    let first_bucket = map.devices.len();
    for (offset, bucket) in map.buckets.iter().enumerate() {
        let index = first_bucket + offset;
        for item in &bucket.items {
            let child = *by_name
                .get(item.as_str())
                .ok_or_else(|| CrushError::UnknownItem {
                    bucket: bucket.name.clone(),
                    item: item.clone(),
                })?;
            if let Some(previous) = parent[child] {
                return Err(CrushError::MultipleParents {
                    item: item.clone(),
                    first: nodes[previous].name.clone(),
                    second: bucket.name.clone(),
                });
            }
            parent[child] = Some(index);
            nodes[index].children.push(child);
        }
    }
    let roots: Vec<usize> = (first_bucket..nodes.len())
        .filter(|&b| parent[b].is_none())
        .collect();
    // With one parent per item, a bucket that no root reaches sits on a cycle.
    let mut reached = vec![false; nodes.len()];
    let mut stack = roots.clone();
    while let Some(node) = stack.pop() {
        reached[node] = true;
        stack.extend(nodes[node].children.iter().copied());
    }
    if let Some(lost) = (first_bucket..nodes.len()).find(|&b| !reached[b]) {
        return Err(CrushError::Cycle(nodes[lost].name.clone()));
    }
    Ok(roots)
}

/// Depth-first layout: appends the devices under `node` to `leaves`,
/// records each node's leaf range and sums bucket weights.
fn lay_out(
    nodes: &mut [Node],
    leaves: &mut Vec<Leaf>,
    ranges: &mut [Range<usize>],
    node: usize,
    depth: usize,
) -> Result<(), CrushError> {
    if depth > MAX_DEPTH {
        return Err(CrushError::TooDeep {
            bucket: nodes[node].name.clone(),
            limit: MAX_DEPTH,
        });
    }
    let start = leaves.len();
    if let Some(osd) = nodes[node].device {
        let weight = nodes[node].weight as u32;
        leaves.push(Leaf {
            node,
            osd,
            weight,
            inv_weight: if weight == 0 {
                0
            } else {
                u64::MAX / u64::from(weight)
            },
        });
    } else {
        let children = nodes[node].children.clone();
        let mut total = 0u64;
        for child in children {
            lay_out(nodes, leaves, ranges, child, depth + 1)?;
            total += nodes[child].weight;
        }
        if total > u64::from(u32::MAX) {
            return Err(CrushError::WeightOverflow(nodes[node].name.clone()));
        }
        nodes[node].weight = total;
    }
    ranges[node] = start..leaves.len();
    Ok(())
}

/// Kind of items in a rule's working set, tracked to validate step order.
#[derive(Clone, Copy, PartialEq)]
enum Working {
    Nothing,
    Buckets,
    Devices,
}

fn compile_rules(
    map: &CrushMap,
    types: &HashMap<&str, usize>,
    by_name: &HashMap<&str, usize>,
    nodes: &[Node],
) -> Result<Vec<CompiledRule>, CrushError> {
    check_count("rules", map.rules.len(), MAX_RULES)?;
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(map.rules.len());
    for rule in &map.rules {
        check_name(&rule.name)?;
        if !names.insert(rule.name.as_str()) {
            return Err(CrushError::DuplicateRule(rule.name.clone()));
        }
        check_count("steps in one rule", rule.steps.len(), MAX_RULE_STEPS)?;
        let bad = |step: usize, problem: &str| CrushError::BadRule {
            rule: rule.name.clone(),
            step,
            problem: problem.to_string(),
        };
        let mut working = Working::Nothing;
        let mut steps = Vec::with_capacity(rule.steps.len());
        for (i, step) in rule.steps.iter().enumerate() {
            let compiled = match step {
                Step::Take(bucket) => {
                    let node = *by_name
                        .get(bucket.as_str())
                        .filter(|&&n| nodes[n].device.is_none())
                        .ok_or_else(|| CrushError::UnknownBucket(bucket.clone()))?;
                    working = Working::Buckets;
                    CompiledStep::Take(node)
                }
                Step::Choose {
                    leaf,
                    mode,
                    count,
                    ty,
                } => {
                    if working != Working::Buckets {
                        return Err(bad(
                            i,
                            "choose needs buckets to choose from: put a take first",
                        ));
                    }
                    let ty = *types
                        .get(ty.as_str())
                        .ok_or_else(|| CrushError::UnknownType(ty.clone()))?;
                    working = if *leaf || ty == 0 {
                        Working::Devices
                    } else {
                        Working::Buckets
                    };
                    CompiledStep::Choose {
                        leaf: *leaf,
                        mode: *mode,
                        count: *count,
                        ty,
                    }
                }
                Step::Emit => {
                    match working {
                        Working::Devices => {}
                        Working::Buckets => {
                            return Err(bad(
                                i,
                                "emit would output buckets: end with chooseleaf, or choose the device type",
                            ));
                        }
                        Working::Nothing => return Err(bad(i, "emit has nothing to emit")),
                    }
                    working = Working::Nothing;
                    CompiledStep::Emit
                }
            };
            steps.push(compiled);
        }
        if working != Working::Nothing || steps.is_empty() {
            return Err(bad(rule.steps.len(), "a rule must end with emit"));
        }
        let positional = steps.iter().any(|s| {
            matches!(
                s,
                CompiledStep::Choose {
                    mode: ChooseMode::Indep,
                    ..
                }
            )
        });
        rules.push(CompiledRule {
            name: rule.name.clone(),
            steps,
            positional,
        });
    }
    Ok(rules)
}

/// For every bucket and every type some rule chooses: the topmost
/// descendants of that type.
fn compile_domains(
    nodes: &[Node],
    leaves: &[Leaf],
    ranges: &[Range<usize>],
    rules: &[CompiledRule],
) -> HashMap<(usize, usize), Vec<Domain>> {
    let leaf_weights: Vec<u32> = leaves.iter().map(|l| l.weight).collect();
    let chosen_types: HashSet<usize> = rules
        .iter()
        .flat_map(|r| &r.steps)
        .filter_map(|s| match s {
            CompiledStep::Choose { ty, .. } => Some(*ty),
            _ => None,
        })
        .collect();
    let uniform = |leaves: &Range<usize>| {
        let mut weights = leaf_weights[leaves.clone()].iter().filter(|&&w| w > 0);
        let first = weights.next();
        weights.all(|w| Some(w) == first)
    };
    let mut domains = HashMap::new();
    for (bucket, node) in nodes.iter().enumerate() {
        if node.device.is_some() {
            continue;
        }
        for &ty in &chosen_types {
            let mut found = Vec::new();
            let mut stack: Vec<usize> = node.children.iter().rev().copied().collect();
            while let Some(n) = stack.pop() {
                if nodes[n].type_index == ty {
                    found.push(Domain {
                        node: n,
                        leaves: ranges[n].clone(),
                        uniform: uniform(&ranges[n]),
                    });
                } else {
                    stack.extend(nodes[n].children.iter().rev().copied());
                }
            }
            domains.insert((bucket, ty), found);
        }
    }
    domains
}
