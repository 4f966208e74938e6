//! Where data lives in an Aspen cluster.
//!
//! This crate owns the CRUSH-like placement: the CRUSH map (a hierarchy of
//! typed buckets over devices, i.e. OSDs), the rules that pick devices from
//! it, pools and their placement groups (PGs), and the OSD map that ties them
//! together under an epoch.
//!
//! Given the same OSD map, every node computes the same answer for
//! "object → PG → ordered set of OSDs", so no node ever asks another where
//! something lives.
//!
//! # Boundary
//! The crate is pure: no I/O, no async, no clock, no randomness, no global
//! mutable state. It depends only on serde (for its data), blake3 (the object
//! name hash) and thiserror. It must never depend on the transport, on tokio,
//! or on any other Aspen crate: `aspen-proto` and everything above build on
//! it, never the other way round.
//!
//! # Map
//! - [`weight`]: 16.16 fixed-point weights.
//! - [`hash`]: the fixed hashes placement is defined by.
//! - [`crush`]: the CRUSH map, its validation, rules and the selection algorithm.
//! - [`pool`]: pools, PG ids, object name → PG.
//! - [`osdmap`]: the epoch-versioned OSD map and its incremental changes.
//! - [`analysis`]: utilization and movement reports over many PG mappings
//!   (what `aspen crush test|diff` print).

pub mod analysis;
pub mod crush;
mod error;
pub mod hash;
mod ln;
pub mod osdmap;
pub mod pool;
pub mod weight;

pub use crush::{CrushMap, Rule, Step};
pub use error::{CrushError, MapError};
pub use osdmap::{Change, Epoch, Incremental, OsdMap, OsdState, PgMapping};
pub use pool::{PgId, Pool, PoolId};
pub use weight::Weight;

/// Identifier of an object storage daemon (a CRUSH device).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct OsdId(pub u32);

impl std::fmt::Display for OsdId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "osd.{}", self.0)
    }
}
