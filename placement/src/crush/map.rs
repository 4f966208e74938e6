//! The CRUSH map as people read and edit it (JSON): types, devices with
//! their weights, buckets naming their items, and rules.
//!
//! This form is only data; [`CrushMap::compile`](super::CrushMap::compile)
//! validates it and builds the structure placement runs on.

use serde::{Deserialize, Serialize};

use super::rule::{ChooseMode, Rule, Step};
use crate::{CrushError, OsdId, Weight};

/// Bucket types of a new map, lowest first; the first is the device type.
pub const DEFAULT_TYPES: [&str; 5] = ["osd", "host", "rack", "datacenter", "root"];
/// Name of the root bucket of a built map.
pub const DEFAULT_ROOT: &str = "default";
/// Name of the replicated rule of a built map.
pub const DEFAULT_RULE: &str = "replicated_rule";

/// A CRUSH map in its human-editable form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrushMap {
    /// Type names, lowest first. The first names devices (e.g. "osd").
    pub types: Vec<String>,
    pub devices: Vec<Device>,
    pub buckets: Vec<Bucket>,
    pub rules: Vec<Rule>,
}

/// A storage device (an OSD) and its CRUSH weight (usually its capacity in TiB).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: OsdId,
    pub name: String,
    pub weight: Weight,
}

/// A bucket: a named node of the hierarchy with a type (host, rack, ...)
/// and the names of its items (devices or other buckets). Its weight is the
/// sum of its items' weights. All buckets use the straw2 algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub items: Vec<String>,
}

impl CrushMap {
    /// An empty map with [`DEFAULT_TYPES`], a root bucket and the default
    /// replicated rule (one replica per host).
    pub fn new() -> CrushMap {
        CrushMap {
            types: DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
            devices: Vec::new(),
            buckets: vec![Bucket {
                name: DEFAULT_ROOT.to_string(),
                ty: "root".to_string(),
                items: Vec::new(),
            }],
            rules: vec![Rule {
                name: DEFAULT_RULE.to_string(),
                steps: vec![
                    Step::Take(DEFAULT_ROOT.to_string()),
                    Step::Choose {
                        leaf: true,
                        mode: ChooseMode::FirstN,
                        count: 0,
                        ty: "host".to_string(),
                    },
                    Step::Emit,
                ],
            }],
        }
    }

    /// `hosts` hosts of `osds_per_host` devices of weight `weight` under the
    /// root, devices numbered host by host from 0 (what `aspen crush build` makes).
    pub fn uniform(hosts: u32, osds_per_host: u32, weight: Weight) -> Result<CrushMap, CrushError> {
        let mut map = CrushMap::new();
        for host in 0..hosts {
            let host_name = format!("host{host}");
            map.add_bucket(&host_name, "host", DEFAULT_ROOT)?;
            for slot in 0..osds_per_host {
                let id = OsdId(host * osds_per_host + slot);
                map.add_device(id, weight, &host_name)?;
            }
        }
        Ok(map)
    }

    /// Parses the JSON form. The result is not yet validated: call
    /// [`compile`](Self::compile).
    pub fn from_json(text: &str) -> Result<CrushMap, CrushError> {
        serde_json::from_str(text).map_err(|e| CrushError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a crush map always serializes")
    }

    pub fn bucket(&self, name: &str) -> Option<&Bucket> {
        self.buckets.iter().find(|b| b.name == name)
    }

    pub fn device(&self, id: OsdId) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == id)
    }

    fn bucket_mut(&mut self, name: &str) -> Result<&mut Bucket, CrushError> {
        self.buckets
            .iter_mut()
            .find(|b| b.name == name)
            .ok_or_else(|| CrushError::UnknownBucket(name.to_string()))
    }

    /// Adds an empty bucket of type `ty` inside `parent`.
    pub fn add_bucket(&mut self, name: &str, ty: &str, parent: &str) -> Result<(), CrushError> {
        if self.name_in_use(name) {
            return Err(CrushError::DuplicateName(name.to_string()));
        }
        self.bucket_mut(parent)?.items.push(name.to_string());
        self.buckets.push(Bucket {
            name: name.to_string(),
            ty: ty.to_string(),
            items: Vec::new(),
        });
        Ok(())
    }

    /// Adds device `id` (named `osd.ID`) with `weight` inside bucket `parent`.
    pub fn add_device(
        &mut self,
        id: OsdId,
        weight: Weight,
        parent: &str,
    ) -> Result<(), CrushError> {
        let name = id.to_string();
        if self.device(id).is_some() {
            return Err(CrushError::DuplicateDeviceId(id.0));
        }
        if self.name_in_use(&name) {
            return Err(CrushError::DuplicateName(name));
        }
        self.bucket_mut(parent)?.items.push(name.clone());
        self.devices.push(Device { id, name, weight });
        Ok(())
    }

    /// Removes device `id` from the map and from its bucket.
    pub fn remove_device(&mut self, id: OsdId) -> Result<(), CrushError> {
        let index = self
            .devices
            .iter()
            .position(|d| d.id == id)
            .ok_or(CrushError::UnknownDevice(id))?;
        let device = self.devices.remove(index);
        for bucket in &mut self.buckets {
            bucket.items.retain(|item| *item != device.name);
        }
        Ok(())
    }

    /// Sets the CRUSH weight of device `id`.
    pub fn set_device_weight(&mut self, id: OsdId, weight: Weight) -> Result<(), CrushError> {
        let device = self
            .devices
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or(CrushError::UnknownDevice(id))?;
        device.weight = weight;
        Ok(())
    }

    /// The name of the bucket that lists `item`, if any.
    pub fn parent_of(&self, item: &str) -> Option<&str> {
        self.buckets
            .iter()
            .find(|b| b.items.iter().any(|i| i == item))
            .map(|b| b.name.as_str())
    }

    fn name_in_use(&self, name: &str) -> bool {
        self.bucket(name).is_some() || self.devices.iter().any(|d| d.name == name)
    }
}

impl Default for CrushMap {
    fn default() -> Self {
        CrushMap::new()
    }
}
