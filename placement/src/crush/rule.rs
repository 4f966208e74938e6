//! Rules and their steps, in the text form crushtool users know:
//! `take default`, `chooseleaf firstn 0 type host`, `emit`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CrushError;

/// The most replicas or positions one step may ask for, and the largest pool size.
pub const MAX_REPLICAS: usize = 16;
/// The most steps in one rule.
pub const MAX_RULE_STEPS: usize = 32;

/// A named placement rule: a program of steps run for each PG.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub steps: Vec<Step>,
}

/// How a choose step fills its positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChooseMode {
    /// An ordered list: when a member fails, the next candidate moves up.
    FirstN,
    /// Fixed positions: a failed position is refilled on its own or left
    /// empty; the other positions never shift (erasure-coded pools).
    Indep,
}

/// One step of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Start from a named bucket.
    Take(String),
    /// Pick `count` distinct buckets of type `ty` below each working bucket
    /// (`leaf`: and one device below each of them). `count <= 0` means the
    /// pool size minus `|count|`.
    Choose {
        leaf: bool,
        mode: ChooseMode,
        count: i32,
        ty: String,
    },
    /// Append the working set to the result.
    Emit,
}

impl Step {
    /// The number of items a choose step asks for with pool size `size`.
    pub fn resolve_count(count: i32, size: usize) -> usize {
        if count > 0 {
            count as usize
        } else {
            size.saturating_sub(count.unsigned_abs() as usize)
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Take(bucket) => write!(f, "take {bucket}"),
            Step::Emit => write!(f, "emit"),
            Step::Choose {
                leaf,
                mode,
                count,
                ty,
            } => {
                let verb = if *leaf { "chooseleaf" } else { "choose" };
                let mode = match mode {
                    ChooseMode::FirstN => "firstn",
                    ChooseMode::Indep => "indep",
                };
                write!(f, "{verb} {mode} {count} type {ty}")
            }
        }
    }
}

impl FromStr for Step {
    type Err = CrushError;

    fn from_str(text: &str) -> Result<Step, CrushError> {
        let bad = |problem: &str| CrushError::BadStep {
            text: text.to_string(),
            problem: problem.to_string(),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["take", bucket] => Ok(Step::Take(bucket.to_string())),
            ["emit"] => Ok(Step::Emit),
            [verb @ ("choose" | "chooseleaf"), mode, count, "type", ty] => {
                let mode = match *mode {
                    "firstn" => ChooseMode::FirstN,
                    "indep" => ChooseMode::Indep,
                    _ => return Err(bad("the mode must be firstn or indep")),
                };
                let count: i32 = count
                    .parse()
                    .map_err(|_| bad("the count must be an integer"))?;
                if count.unsigned_abs() as usize > MAX_REPLICAS {
                    return Err(bad(&format!("the count must be within ±{MAX_REPLICAS}")));
                }
                Ok(Step::Choose {
                    leaf: *verb == "chooseleaf",
                    mode,
                    count,
                    ty: ty.to_string(),
                })
            }
            ["take"] | ["take", ..] => Err(bad("expected: take BUCKET")),
            ["choose" | "chooseleaf", ..] => {
                Err(bad("expected: choose|chooseleaf firstn|indep N type TYPE"))
            }
            _ => Err(bad("unknown step (take, choose, chooseleaf, emit)")),
        }
    }
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Step, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_text() {
        for text in [
            "take default",
            "choose firstn 3 type rack",
            "chooseleaf indep -1 type host",
            "chooseleaf firstn 0 type host",
            "emit",
        ] {
            let step: Step = text.parse().unwrap();
            assert_eq!(step.to_string(), text);
        }
    }

    #[test]
    fn malformed_steps_are_errors() {
        for text in [
            "",
            "take",
            "take a b",
            "choose sideways 3 type host",
            "choose firstn three type host",
            "choose firstn 3 host",
            "chooseleaf firstn 99 type host",
            "launch",
        ] {
            assert!(
                matches!(text.parse::<Step>(), Err(CrushError::BadStep { .. })),
                "{text:?} parsed"
            );
        }
    }

    #[test]
    fn counts_resolve_against_the_pool_size() {
        assert_eq!(Step::resolve_count(2, 3), 2);
        assert_eq!(Step::resolve_count(0, 3), 3);
        assert_eq!(Step::resolve_count(-1, 3), 2);
        assert_eq!(Step::resolve_count(-4, 3), 0);
    }
}
