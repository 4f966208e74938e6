//! Map builders shared by the placement tests.

#![allow(dead_code)]

use aspen_placement::crush::{CompiledMap, CrushMap, DeviceWeights, Rule, Step};
use aspen_placement::{OsdId, Weight};

/// `hosts` hosts with the given OSD weights each (one `Vec` per host).
pub fn map_with_weights(hosts: &[Vec<f64>]) -> CrushMap {
    let mut map = CrushMap::new();
    let mut next = 0;
    for (h, weights) in hosts.iter().enumerate() {
        let host = format!("host{h}");
        map.add_bucket(&host, "host", "default").unwrap();
        for w in weights {
            map.add_device(OsdId(next), Weight::from_f64(*w).unwrap(), &host)
                .unwrap();
            next += 1;
        }
    }
    map
}

pub fn uniform(hosts: u32, per_host: u32) -> CrushMap {
    CrushMap::uniform(hosts, per_host, Weight::ONE).unwrap()
}

/// Adds a rule made of the given step texts.
pub fn add_rule(map: &mut CrushMap, name: &str, steps: &[&str]) {
    map.rules.push(Rule {
        name: name.to_string(),
        steps: steps.iter().map(|s| s.parse::<Step>().unwrap()).collect(),
    });
}

pub fn with_indep_rule(mut map: CrushMap) -> CrushMap {
    add_rule(
        &mut map,
        "indep",
        &["take default", "chooseleaf indep 0 type host", "emit"],
    );
    map
}

/// The host bucket a device sits in.
pub fn host_of(map: &CrushMap, osd: OsdId) -> String {
    map.parent_of(&osd.to_string()).unwrap().to_string()
}

pub fn compile(map: &CrushMap) -> CompiledMap {
    map.compile().unwrap()
}

/// Every device in except `out`.
pub fn all_in_but(map: &CompiledMap, out: OsdId) -> DeviceWeights {
    map.device_weights(|o| if o == out { Weight::ZERO } else { Weight::ONE })
}
