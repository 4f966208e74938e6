//! Pools, placement groups and the object name → PG step.
//!
//! A pool has `pg_num` PGs. An object's PG is
//! `stable_mod(object_hash(pool, name), pg_num)`, and a PG's CRUSH input is
//! `pg_input(pool, seed)` (both in [`crate::hash`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::MapError;
use crate::crush::MAX_REPLICAS;
use crate::hash::{object_hash, pg_input, stable_mod};

/// The most PGs one pool may have.
pub const MAX_PG_NUM: u32 = 1 << 20;
/// The longest pool name, in bytes.
pub const MAX_POOL_NAME_LEN: usize = 128;

/// Identifier of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PoolId(pub u32);

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A placement group: PG `seed` of `pool`. Written `POOL.SEED` with the
/// seed in hex, as Ceph does (`1.2f`); human-readable formats (JSON) use that
/// text, binary ones the two numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgId {
    pub pool: PoolId,
    pub seed: u32,
}

impl Serialize for PgId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            (self.pool.0, self.seed).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for PgId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<PgId, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let (pool, seed) = <(u32, u32)>::deserialize(deserializer)?;
            Ok(PgId {
                pool: PoolId(pool),
                seed,
            })
        }
    }
}

impl PgId {
    /// The CRUSH input for this PG.
    pub fn placement_input(&self) -> u32 {
        pg_input(self.pool, self.seed)
    }
}

impl fmt::Display for PgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.pool.0, self.seed)
    }
}

/// Why a PG id does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a PG id (POOL.SEED, seed in hex, e.g. 1.2f)")]
pub struct BadPgId(pub String);

impl FromStr for PgId {
    type Err = BadPgId;

    fn from_str(text: &str) -> Result<PgId, BadPgId> {
        let bad = || BadPgId(text.to_string());
        let (pool, seed) = text.split_once('.').ok_or_else(bad)?;
        Ok(PgId {
            pool: PoolId(pool.parse().map_err(|_| bad())?),
            seed: u32::from_str_radix(seed, 16).map_err(|_| bad())?,
        })
    }
}

/// A replicated pool: its PGs are placed by `rule`, each on `size` OSDs;
/// a PG accepts writes while at least `min_size` of them are up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub id: PoolId,
    pub name: String,
    pub pg_num: u32,
    pub size: usize,
    pub min_size: usize,
    pub rule: String,
}

impl Pool {
    /// Checks the pool's own fields (the rule is checked against the map by
    /// [`crate::OsdMap`]).
    pub fn validate(&self) -> Result<(), MapError> {
        let bad = |problem: String| MapError::BadPool {
            pool: self.name.clone(),
            problem,
        };
        let name_ok = self.name.chars().all(|c| c.is_ascii_graphic());
        if self.name.is_empty() || self.name.len() > MAX_POOL_NAME_LEN || !name_ok {
            return Err(bad(format!(
                "the name must be 1..={MAX_POOL_NAME_LEN} printable ASCII characters"
            )));
        }
        if !(1..=MAX_PG_NUM).contains(&self.pg_num) {
            return Err(bad(format!("pg_num must be in 1..={MAX_PG_NUM}")));
        }
        if !(1..=MAX_REPLICAS).contains(&self.size) {
            return Err(bad(format!("size must be in 1..={MAX_REPLICAS}")));
        }
        if !(1..=self.size).contains(&self.min_size) {
            return Err(bad("min_size must be in 1..=size".to_string()));
        }
        Ok(())
    }

    /// The PG that holds the object called `name`.
    pub fn pg_of(&self, name: &[u8]) -> PgId {
        PgId {
            pool: self.id,
            seed: stable_mod(object_hash(self.id, name), self.pg_num),
        }
    }

    /// Every PG of the pool.
    pub fn pgs(&self) -> impl Iterator<Item = PgId> + '_ {
        (0..self.pg_num).map(|seed| PgId {
            pool: self.id,
            seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool {
            id: PoolId(3),
            name: "data".into(),
            pg_num: 100,
            size: 3,
            min_size: 2,
            rule: "replicated_rule".into(),
        }
    }

    #[test]
    fn pg_ids_print_and_parse() {
        let pg = PgId {
            pool: PoolId(1),
            seed: 0x2f,
        };
        assert_eq!(pg.to_string(), "1.2f");
        assert_eq!("1.2f".parse::<PgId>().unwrap(), pg);
        for bad in ["", "1", "x.1", "1.zz", "1.", ".1", "1.2.3"] {
            assert!(bad.parse::<PgId>().is_err(), "{bad:?}");
        }
    }

    fn pg_counts(pg_num: u32, objects: u32) -> Vec<u32> {
        let pool = Pool { pg_num, ..pool() };
        let mut counts = vec![0u32; pg_num as usize];
        for i in 0..objects {
            counts[pool.pg_of(format!("obj{i}").as_bytes()).seed as usize] += 1;
        }
        counts
    }

    #[test]
    fn objects_spread_evenly_over_a_power_of_two() {
        let counts = pg_counts(128, 128_000);
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn other_pg_counts_have_single_and_double_pgs() {
        // stable_mod with pg_num 100: seeds 36..64 each take the objects of
        // two of the 128 hash slots (their split halves do not exist yet).
        let counts = pg_counts(100, 128_000);
        for (seed, &count) in counts.iter().enumerate() {
            let expected = if (36..64).contains(&seed) { 2000 } else { 1000 };
            assert!(
                count.abs_diff(expected) < expected / 6,
                "seed {seed}: {count}"
            );
        }
    }

    #[test]
    fn bad_pools_are_rejected() {
        let cases: [fn(&mut Pool); 6] = [
            |p| p.pg_num = 0,
            |p| p.pg_num = MAX_PG_NUM + 1,
            |p| p.size = 0,
            |p| p.min_size = 4,
            |p| p.min_size = 0,
            |p| p.name = "has space".into(),
        ];
        for edit in cases {
            let mut p = pool();
            edit(&mut p);
            assert!(
                matches!(p.validate(), Err(MapError::BadPool { .. })),
                "{p:?}"
            );
        }
        assert!(pool().validate().is_ok());
    }
}
