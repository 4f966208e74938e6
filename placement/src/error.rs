//! Errors of the placement crate: every bad map, rule or change is reported
//! as one of these, never as a panic.

use crate::{OsdId, PgId, PoolId};

/// A CRUSH map, rule or mapping request that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrushError {
    #[error("malformed crush map: {0}")]
    Malformed(String),
    #[error("the crush map defines no types (the first type is the device type)")]
    NoTypes,
    #[error("type {0:?} is defined twice")]
    DuplicateType(String),
    #[error("unknown type {0:?}")]
    UnknownType(String),
    #[error("name {0:?} is used by more than one device or bucket")]
    DuplicateName(String),
    #[error("device id {0} is used twice")]
    DuplicateDeviceId(u32),
    #[error("device id {id} is above the limit {limit}")]
    DeviceIdTooLarge { id: u32, limit: u32 },
    #[error("{what}: {count} is above the limit {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("bucket {bucket:?} has the device type {ty:?}; buckets need a bucket type")]
    BucketHasDeviceType { bucket: String, ty: String },
    #[error("bucket {bucket:?} lists unknown item {item:?}")]
    UnknownItem { bucket: String, item: String },
    #[error("unknown bucket {0:?}")]
    UnknownBucket(String),
    #[error("unknown device {0}")]
    UnknownDevice(OsdId),
    #[error("{item:?} is listed in both {first:?} and {second:?}: an item has one parent")]
    MultipleParents {
        item: String,
        first: String,
        second: String,
    },
    #[error("the hierarchy has a cycle through {0:?}")]
    Cycle(String),
    #[error("the hierarchy under {bucket:?} is deeper than {limit} levels")]
    TooDeep { bucket: String, limit: usize },
    #[error("bucket {0:?} weighs more than the maximum weight")]
    WeightOverflow(String),
    #[error("rule {0:?} is defined twice")]
    DuplicateRule(String),
    #[error("unknown rule {0:?}")]
    UnknownRule(String),
    #[error("cannot parse rule step {text:?}: {problem}")]
    BadStep { text: String, problem: String },
    #[error("rule {rule:?}, step {step}: {problem}")]
    BadRule {
        rule: String,
        step: usize,
        problem: String,
    },
    #[error(
        "rule {rule:?} asks for {needed} distinct {domain:?} buckets, but only {available} with weight exist"
    )]
    NotEnoughDomains {
        rule: String,
        domain: String,
        needed: usize,
        available: usize,
    },
    #[error("bucket {0:?} has zero total weight: nothing can be placed under it")]
    ZeroWeight(String),
    #[error("size {size} is outside 1..={limit}")]
    BadSize { size: usize, limit: usize },
}

/// An OSD map or an incremental change that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error(transparent)]
    Crush(#[from] CrushError),
    #[error("malformed osd map: {0}")]
    Malformed(String),
    #[error("{0} does not exist")]
    UnknownOsd(OsdId),
    #[error("{0} already exists")]
    DuplicateOsd(OsdId),
    #[error("pool {0} does not exist")]
    UnknownPool(PoolId),
    #[error("pool id {0} or its name is already used")]
    DuplicatePool(PoolId),
    #[error("pool {pool}: {problem}")]
    BadPool { pool: String, problem: String },
    #[error("pg {0} does not exist")]
    UnknownPg(PgId),
    #[error("pg_temp for {pg}: {problem}")]
    BadPgTemp { pg: PgId, problem: String },
    #[error("incremental for epoch {got} does not follow epoch {current}")]
    EpochMismatch { current: u64, got: u64 },
    #[error("an incremental must carry at least one change")]
    EmptyIncremental,
}
