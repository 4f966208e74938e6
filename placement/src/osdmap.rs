//! The OSD map: the epoch-versioned state placement is computed from.
//!
//! It holds the CRUSH map, the state of every OSD (up/down, in/out,
//! reweight), the pools and the `pg_temp` overrides. It changes only by
//! [`Incremental`]s, each of which yields the next epoch; a node that
//! applies the same incrementals to the same map gets the same map.
//!
//! Placement of a PG, as Ceph does it: CRUSH picks the *raw* set from the
//! OSDs that are in (out OSDs never get data); OSDs that are down are
//! removed from it to give the *up* set (a down OSD is a hole, not a reason
//! to move data until it is marked out); the *acting* set is the `pg_temp`
//! override when one is set (while a new member backfills; its members
//! that are down left out) and the up set otherwise. The primary is the
//! first member. A change that moves PGs can prime their `pg_temp` with
//! the members that hold them ([`OsdMap::change_priming_pg_temp`]).
//!
//! The map also lists the client sessions the OSDs must refuse (the
//! blocklist: sessions the MDS evicted, whose late writes must not land).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crush::{CompiledMap, CrushMap, DeviceWeights, MAX_REPLICAS, RuleId};
use crate::{MapError, OsdId, PgId, Pool, PoolId, Weight};

/// The version of an OSD map. Every change makes a new epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

/// The state of one OSD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsdState {
    /// Running and reachable.
    pub up: bool,
    /// Part of the data distribution; an out OSD is given no data.
    #[serde(rename = "in")]
    pub is_in: bool,
    /// Fraction of its CRUSH share it keeps while in (1.0 = all).
    pub reweight: Weight,
}

impl OsdState {
    /// A newly created OSD: in, but down until it boots.
    pub const NEW: OsdState = OsdState {
        up: false,
        is_in: true,
        reweight: Weight::ONE,
    };
}

/// One change to the OSD map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Adds an empty bucket (a host, rack, ...) inside `parent`.
    AddBucket {
        name: String,
        ty: String,
        parent: String,
    },
    /// Adds an OSD (down, in) with CRUSH `weight` inside bucket `host`.
    AddOsd {
        id: OsdId,
        weight: Weight,
        host: String,
    },
    /// Removes an OSD from the map and from CRUSH.
    RemoveOsd {
        id: OsdId,
    },
    MarkUp {
        id: OsdId,
    },
    MarkDown {
        id: OsdId,
    },
    MarkIn {
        id: OsdId,
    },
    MarkOut {
        id: OsdId,
    },
    /// Sets the fraction of its share an in OSD keeps (0.0..=1.0).
    Reweight {
        id: OsdId,
        reweight: Weight,
    },
    /// Sets the CRUSH weight (capacity) of an OSD.
    SetCrushWeight {
        id: OsdId,
        weight: Weight,
    },
    AddPool {
        pool: Pool,
    },
    RemovePool {
        id: PoolId,
    },
    /// Overrides the acting set of a PG; an empty list clears the override.
    SetPgTemp {
        pg: PgId,
        osds: Vec<OsdId>,
    },
    /// Replaces the whole CRUSH map.
    SetCrushMap {
        crush: CrushMap,
    },
    /// OSDs refuse every operation of this client session from now on
    /// (the oldest entry goes beyond [`MAX_BLOCKLIST`]).
    Blocklist {
        session: u64,
    },
}

/// The most client sessions the blocklist holds; session ids only grow,
/// so the oldest evicted session leaves first.
pub const MAX_BLOCKLIST: usize = 4096;

/// The changes that turn the map of epoch `epoch - 1` into epoch `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    pub epoch: Epoch,
    pub changes: Vec<Change>,
}

/// Where one PG lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgMapping {
    /// CRUSH's choice among the in OSDs, down ones removed. `None` marks an
    /// empty position (positional rules only).
    pub up: Vec<Option<OsdId>>,
    pub up_primary: Option<OsdId>,
    /// The OSDs serving the PG: `pg_temp` if set, else `up`.
    pub acting: Vec<Option<OsdId>>,
    pub acting_primary: Option<OsdId>,
}

/// The serialized form of an [`OsdMap`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OsdMapData {
    epoch: Epoch,
    crush: CrushMap,
    osds: BTreeMap<OsdId, OsdState>,
    pools: BTreeMap<PoolId, Pool>,
    #[serde(default)]
    pg_temp: BTreeMap<PgId, Vec<OsdId>>,
    #[serde(default)]
    blocklist: BTreeSet<u64>,
}

/// The OSD map, validated and ready to answer placement questions.
#[derive(Clone, Serialize, Deserialize)]
#[serde(into = "OsdMapData", try_from = "OsdMapData")]
pub struct OsdMap {
    data: OsdMapData,
    compiled: Arc<CompiledMap>,
    weights: Arc<DeviceWeights>,
    pool_rules: BTreeMap<PoolId, RuleId>,
}

impl std::fmt::Debug for OsdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.data.fmt(f)
    }
}

impl PartialEq for OsdMap {
    fn eq(&self, other: &OsdMap) -> bool {
        self.data == other.data
    }
}

impl From<OsdMap> for OsdMapData {
    fn from(map: OsdMap) -> OsdMapData {
        map.data
    }
}

impl TryFrom<OsdMapData> for OsdMap {
    type Error = MapError;

    fn try_from(data: OsdMapData) -> Result<OsdMap, MapError> {
        OsdMap::build(data)
    }
}

impl OsdMap {
    /// Epoch 1 of a cluster with `crush`: every CRUSH device becomes an OSD
    /// (down, in); no pools.
    pub fn new(crush: CrushMap) -> Result<OsdMap, MapError> {
        let osds = crush
            .devices
            .iter()
            .map(|d| (d.id, OsdState::NEW))
            .collect();
        OsdMap::build(OsdMapData {
            epoch: Epoch(1),
            crush,
            osds,
            pools: BTreeMap::new(),
            pg_temp: BTreeMap::new(),
            blocklist: BTreeSet::new(),
        })
    }

    fn build(data: OsdMapData) -> Result<OsdMap, MapError> {
        let compiled = data.crush.compile()?;
        for device in &data.crush.devices {
            if !data.osds.contains_key(&device.id) {
                return Err(MapError::UnknownOsd(device.id));
            }
        }
        let mut pool_rules = BTreeMap::new();
        for (id, pool) in &data.pools {
            if *id != pool.id {
                return Err(MapError::Malformed(format!(
                    "pool {} is filed under id {id}",
                    pool.id
                )));
            }
            pool.validate()?;
            pool_rules.insert(*id, compiled.rule(&pool.rule)?);
        }
        for (pg, osds) in &data.pg_temp {
            check_pg_temp(&data, *pg, osds)?;
        }
        let weights = compiled.device_weights(|osd| match data.osds.get(&osd) {
            Some(state) if state.is_in => state.reweight,
            _ => Weight::ZERO,
        });
        Ok(OsdMap {
            data,
            compiled: Arc::new(compiled),
            weights: Arc::new(weights),
            pool_rules,
        })
    }

    pub fn epoch(&self) -> Epoch {
        self.data.epoch
    }

    pub fn crush(&self) -> &CrushMap {
        &self.data.crush
    }

    pub fn compiled_crush(&self) -> &CompiledMap {
        &self.compiled
    }

    /// Reweights CRUSH sees: 0 for out OSDs.
    pub fn device_weights(&self) -> &DeviceWeights {
        &self.weights
    }

    pub fn osds(&self) -> &BTreeMap<OsdId, OsdState> {
        &self.data.osds
    }

    pub fn osd(&self, id: OsdId) -> Result<&OsdState, MapError> {
        self.data.osds.get(&id).ok_or(MapError::UnknownOsd(id))
    }

    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.data.pools.values()
    }

    pub fn pool(&self, id: PoolId) -> Result<&Pool, MapError> {
        self.data.pools.get(&id).ok_or(MapError::UnknownPool(id))
    }

    pub fn pool_by_name(&self, name: &str) -> Option<&Pool> {
        self.data.pools.values().find(|p| p.name == name)
    }

    pub fn pg_temp(&self) -> &BTreeMap<PgId, Vec<OsdId>> {
        &self.data.pg_temp
    }

    /// Whether OSDs must refuse client session `session` (it was evicted).
    pub fn is_blocklisted(&self, session: u64) -> bool {
        self.data.blocklist.contains(&session)
    }

    /// Applies `incremental`, which must carry the next epoch. All its
    /// changes apply, or none do.
    pub fn apply(&self, incremental: &Incremental) -> Result<OsdMap, MapError> {
        let current = self.data.epoch.0;
        if incremental.epoch.0 != current + 1 {
            return Err(MapError::EpochMismatch {
                current,
                got: incremental.epoch.0,
            });
        }
        if incremental.changes.is_empty() {
            return Err(MapError::EmptyIncremental);
        }
        let mut data = self.data.clone();
        data.epoch = incremental.epoch;
        for change in &incremental.changes {
            apply_change(&mut data, change)?;
        }
        let next = OsdMap::build(data)?;
        for change in &incremental.changes {
            if let Change::AddPool { pool } = change {
                next.compiled
                    .check_rule(next.pool_rules[&pool.id], pool.size)?;
            }
        }
        Ok(next)
    }

    /// [`OsdMap::change`], plus the `pg_temp` entries the changes call for
    /// (Ceph's primed pg_temp): a PG whose up set they move keeps being
    /// served by the members of its current acting set that stay up,
    /// while its new up members are backfilled; its primary clears the
    /// entry when they are. A PG that keeps too few of those members (fewer
    /// than min_size), or whose up set becomes its holders again, is served
    /// by its up set.
    pub fn change_priming_pg_temp(
        &self,
        changes: Vec<Change>,
    ) -> Result<(OsdMap, Incremental), MapError> {
        let (candidate, _) = self.change(changes.clone())?;
        let mut changes = changes;
        changes.extend(self.pg_temps_toward(&candidate));
        self.change(changes)
    }

    /// The `pg_temp` changes that keep the PGs `next` moves on the OSDs
    /// that hold them in this map.
    fn pg_temps_toward(&self, next: &OsdMap) -> Vec<Change> {
        let mut changes = Vec::new();
        for pool in next.pools() {
            let Ok(before) = self.pool(pool.id) else {
                continue;
            };
            for pg in pool.pgs().filter(|pg| pg.seed < before.pg_num) {
                let (Ok(now), Ok(then)) = (self.pg_mapping(pg), next.pg_mapping(pg)) else {
                    continue;
                };
                if now.up == then.up {
                    continue;
                }
                let holders: Vec<OsdId> = now
                    .acting
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|osd| next.osd(*osd).is_ok_and(|s| s.up))
                    .collect();
                let mut up: Vec<OsdId> = then.up.iter().flatten().copied().collect();
                let mut held = holders.clone();
                up.sort();
                held.sort();
                let wanted = (holders.len() >= pool.min_size && held != up).then_some(holders);
                match wanted {
                    Some(osds) if next.data.pg_temp.get(&pg) != Some(&osds) => {
                        changes.push(Change::SetPgTemp { pg, osds });
                    }
                    None if next.data.pg_temp.contains_key(&pg) => {
                        changes.push(Change::SetPgTemp {
                            pg,
                            osds: Vec::new(),
                        });
                    }
                    _ => {}
                }
            }
        }
        changes
    }

    /// Makes the incremental for `changes` at the next epoch and applies it.
    pub fn change(&self, changes: Vec<Change>) -> Result<(OsdMap, Incremental), MapError> {
        let incremental = Incremental {
            epoch: Epoch(self.data.epoch.0 + 1),
            changes,
        };
        let next = self.apply(&incremental)?;
        Ok((next, incremental))
    }

    /// The PG that holds object `name` in `pool`.
    pub fn object_pg(&self, pool: PoolId, name: &[u8]) -> Result<PgId, MapError> {
        Ok(self.pool(pool)?.pg_of(name))
    }

    /// Where PG `pg` lives.
    pub fn pg_mapping(&self, pg: PgId) -> Result<PgMapping, MapError> {
        let pool = self.pool(pg.pool)?;
        if pg.seed >= pool.pg_num {
            return Err(MapError::UnknownPg(pg));
        }
        let rule = self.pool_rules[&pg.pool];
        let raw = self
            .compiled
            .select(rule, pg.placement_input(), pool.size, &self.weights)?;
        let is_up = |osd: &OsdId| self.data.osds.get(osd).is_some_and(|s| s.up);
        let mut up: Vec<Option<OsdId>> = raw.into_iter().map(|o| o.filter(is_up)).collect();
        if !self.compiled.is_positional(rule) {
            up.retain(Option::is_some);
        }
        // A pg_temp member that went down leaves the acting set as it
        // leaves the up set; an override with no member up is ignored.
        let acting = match self.data.pg_temp.get(&pg) {
            Some(osds) if osds.iter().any(is_up) => {
                let mut acting: Vec<Option<OsdId>> =
                    osds.iter().map(|o| Some(*o).filter(is_up)).collect();
                if !self.compiled.is_positional(rule) {
                    acting.retain(Option::is_some);
                }
                acting
            }
            _ => up.clone(),
        };
        Ok(PgMapping {
            up_primary: first_member(&up),
            acting_primary: first_member(&acting),
            up,
            acting,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an osd map always serializes")
    }

    pub fn from_json(text: &str) -> Result<OsdMap, MapError> {
        let data: OsdMapData =
            serde_json::from_str(text).map_err(|e| MapError::Malformed(e.to_string()))?;
        OsdMap::build(data)
    }
}

fn first_member(set: &[Option<OsdId>]) -> Option<OsdId> {
    set.iter().flatten().next().copied()
}

fn osd_state(data: &mut OsdMapData, id: OsdId) -> Result<&mut OsdState, MapError> {
    data.osds.get_mut(&id).ok_or(MapError::UnknownOsd(id))
}

fn apply_change(data: &mut OsdMapData, change: &Change) -> Result<(), MapError> {
    match change {
        Change::AddBucket { name, ty, parent } => data.crush.add_bucket(name, ty, parent)?,
        Change::AddOsd { id, weight, host } => {
            if data.osds.contains_key(id) {
                return Err(MapError::DuplicateOsd(*id));
            }
            data.crush.add_device(*id, *weight, host)?;
            data.osds.insert(*id, OsdState::NEW);
        }
        Change::RemoveOsd { id } => {
            data.osds.remove(id).ok_or(MapError::UnknownOsd(*id))?;
            if data.crush.device(*id).is_some() {
                data.crush.remove_device(*id)?;
            }
            for osds in data.pg_temp.values_mut() {
                osds.retain(|o| o != id);
            }
            data.pg_temp.retain(|_, osds| !osds.is_empty());
        }
        Change::MarkUp { id } => osd_state(data, *id)?.up = true,
        Change::MarkDown { id } => osd_state(data, *id)?.up = false,
        Change::MarkIn { id } => osd_state(data, *id)?.is_in = true,
        Change::MarkOut { id } => osd_state(data, *id)?.is_in = false,
        Change::Reweight { id, reweight } => {
            osd_state(data, *id)?.reweight = (*reweight).min(Weight::ONE);
        }
        Change::SetCrushWeight { id, weight } => data.crush.set_device_weight(*id, *weight)?,
        Change::AddPool { pool } => {
            let taken = data.pools.contains_key(&pool.id)
                || data.pools.values().any(|p| p.name == pool.name);
            if taken {
                return Err(MapError::DuplicatePool(pool.id));
            }
            data.pools.insert(pool.id, pool.clone());
        }
        Change::RemovePool { id } => {
            data.pools.remove(id).ok_or(MapError::UnknownPool(*id))?;
            data.pg_temp.retain(|pg, _| pg.pool != *id);
        }
        Change::SetPgTemp { pg, osds } => {
            if osds.is_empty() {
                data.pg_temp.remove(pg);
            } else {
                data.pg_temp.insert(*pg, osds.clone());
            }
        }
        Change::SetCrushMap { crush } => {
            for device in &crush.devices {
                data.osds.entry(device.id).or_insert(OsdState::NEW);
            }
            data.crush = crush.clone();
        }
        Change::Blocklist { session } => {
            data.blocklist.insert(*session);
            while data.blocklist.len() > MAX_BLOCKLIST {
                data.blocklist.pop_first();
            }
        }
    }
    Ok(())
}

fn check_pg_temp(data: &OsdMapData, pg: PgId, osds: &[OsdId]) -> Result<(), MapError> {
    let bad = |problem: &str| MapError::BadPgTemp {
        pg,
        problem: problem.to_string(),
    };
    let pool = data
        .pools
        .get(&pg.pool)
        .ok_or(MapError::UnknownPool(pg.pool))?;
    if pg.seed >= pool.pg_num {
        return Err(MapError::UnknownPg(pg));
    }
    if osds.is_empty() || osds.len() > MAX_REPLICAS {
        return Err(bad(&format!("must list 1..={MAX_REPLICAS} OSDs")));
    }
    for (i, osd) in osds.iter().enumerate() {
        if !data.osds.contains_key(osd) {
            return Err(MapError::UnknownOsd(*osd));
        }
        if osds[..i].contains(osd) {
            return Err(bad("lists an OSD twice"));
        }
    }
    Ok(())
}
