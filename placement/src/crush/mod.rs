//! The CRUSH map and the selection algorithm.
//!
//! - [`map`]: the human-editable map (JSON) and helpers that edit it.
//! - [`rule`]: rules and their steps in crushtool's text form.
//! - [`compile`]: validation, limits, and the flattened form placement runs on.
//! - [`select`]: running a rule for one input ("consistent straw2"; its
//!   module docs explain the algorithm and why it moves the least data).

pub mod compile;
pub mod map;
pub mod rule;
pub mod select;

pub use compile::{CompiledMap, RuleId};
pub use map::{Bucket, CrushMap, DEFAULT_ROOT, DEFAULT_RULE, DEFAULT_TYPES, Device};
pub use rule::{ChooseMode, MAX_REPLICAS, Rule, Step};
pub use select::DeviceWeights;
