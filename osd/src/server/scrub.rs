//! Scrub and repair, run by a PG's primary on an admin's request. A light
//! scrub compares each member's objects: which exist, the log position of
//! their last change and their size. A deep scrub also re-reads every
//! object on every member (which re-hashes each chunk against its name) and
//! compares BLAKE3 digests of the whole objects. The good copy of an object
//! is the one most members hold (the primary's on a tie); repair installs
//! it on the others. A PG with disagreeing copies reports `inconsistent`
//! until a repair or a clean scrub.

use std::collections::{BTreeMap, BTreeSet};

use aspen_placement::{OsdId, PgId};
use aspen_proto::mds::{ClusterMap, Role};
use aspen_proto::osd::{OsdError, OsdRequest, OsdResponse, ScrubEntry, ScrubReport};
use aspen_proto::transport::{Bytes, EndpointId};

use super::peering::RECOVERY_STEP_TIMEOUT;
use super::service::{OsdService, blocking};
use crate::store::{ObjectKey, ObjectStore, StoreError};

/// One object as seen on one member (`None`: the member lacks it).
type Copy = Option<(
    aspen_proto::osd::LogVersion,
    u64,
    Option<Result<[u8; 32], String>>,
)>;

/// This member's scrub entries for `pg` (reads every object when `deep`).
fn local_scrub_entries(
    store: &ObjectStore,
    pg: PgId,
    deep: bool,
) -> Result<Vec<ScrubEntry>, StoreError> {
    let mut entries = Vec::new();
    for (name, at) in store.pg_objects(pg)? {
        let key = ObjectKey {
            pg,
            name: name.clone(),
        };
        let size = store.stat(&key)?.map_or(0, |s| s.size);
        let digest = deep.then(|| match store.read(&key, 0, size) {
            Ok(bytes) => Ok(*blake3::hash(&bytes).as_bytes()),
            Err(error) => Err(error.to_string()),
        });
        entries.push(ScrubEntry {
            name,
            at,
            size,
            digest,
        });
    }
    Ok(entries)
}

impl OsdService {
    async fn member_scrub_entries(
        &self,
        map: &ClusterMap,
        pg: PgId,
        osd: OsdId,
        deep: bool,
    ) -> Result<Vec<ScrubEntry>, OsdError> {
        if osd == self.id {
            let store = self.store.clone();
            return blocking(move || local_scrub_entries(&store, pg, deep)).await;
        }
        let client = self.link(map, osd)?;
        let request = OsdRequest::ScrubObjects { pg, deep };
        match client
            .call_within::<_, OsdResponse>(RECOVERY_STEP_TIMEOUT, &request, Bytes::new())
            .await
        {
            Ok((OsdResponse::ScrubObjects, body)) => {
                postcard::from_bytes(&body).map_err(|e| OsdError::Corrupt(e.to_string()))
            }
            Ok((OsdResponse::Failed(error), _)) => Err(error),
            Ok((other, _)) => Err(OsdError::Unavailable(format!("osd.{}: {other:?}", osd.0))),
            Err(error) => Err(OsdError::Unavailable(format!("osd.{}: {error}", osd.0))),
        }
    }

    /// Scrubs `pg` (this OSD must lead it), repairing when asked.
    async fn scrub(&self, pg: PgId, deep: bool, repair: bool) -> Result<ScrubReport, OsdError> {
        let map = self.maps.borrow().clone();
        let mapping = map
            .osdmap
            .pg_mapping(pg)
            .map_err(|e| OsdError::Invalid(e.to_string()))?;
        if mapping.acting_primary != Some(self.id) {
            return Err(OsdError::NotPrimary {
                epoch: map.osdmap.epoch().0,
            });
        }
        let acting: Vec<OsdId> = mapping.acting.iter().flatten().copied().collect();
        let _quiet = self.gates.quiet(pg).await;
        // Before peering settles, a copy that outvotes the authoritative
        // one could be installed over it.
        if !self.is_active(pg, &acting) {
            return Err(OsdError::Unavailable(format!("{pg:?} is peering")));
        }
        let mut views: BTreeMap<Vec<u8>, BTreeMap<OsdId, Copy>> = BTreeMap::new();
        for osd in &acting {
            for entry in self.member_scrub_entries(&map, pg, *osd, deep).await? {
                views
                    .entry(entry.name)
                    .or_default()
                    .insert(*osd, Some((entry.at, entry.size, entry.digest)));
            }
        }
        let mut report = ScrubReport {
            objects: views.len() as u64,
            ..ScrubReport::default()
        };
        for (name, mut copies) in views {
            for osd in &acting {
                copies.entry(*osd).or_insert(None);
            }
            let Some((good, problem)) = judge(&copies, self.id) else {
                continue;
            };
            report.inconsistent.push((name.clone(), problem));
            if repair && let Some(good) = good {
                let source = copies
                    .iter()
                    .find(|(_, copy)| **copy == good)
                    .map(|(osd, _)| *osd)
                    .expect("the good copy is held somewhere");
                let fixed = self.fetch(&map, pg, source, &name).await?;
                for (osd, copy) in &copies {
                    if *copy != good {
                        self.install(&map, pg, *osd, &name, fixed.clone()).await?;
                        report.repaired += 1;
                    }
                }
            }
        }
        let mut inconsistent = self.inconsistent.lock().unwrap_or_else(|p| p.into_inner());
        if report.inconsistent.is_empty() || repair {
            inconsistent.remove(&pg);
        } else {
            inconsistent.insert(pg);
        }
        Ok(report)
    }

    /// Answers the scrub requests: `Scrub` from an admin, `ScrubObjects`
    /// from another OSD.
    pub(super) async fn scrub_request(
        &self,
        peer: EndpointId,
        request: OsdRequest,
    ) -> (OsdResponse, Vec<u8>) {
        let map = self.maps.borrow().clone();
        let role = map.role_of(&peer);
        let outcome = match request {
            OsdRequest::Scrub { pg, deep, repair } if role == Some(Role::Admin) => self
                .scrub(pg, deep, repair)
                .await
                .map(|report| (OsdResponse::Scrubbed(report), Vec::new())),
            OsdRequest::ScrubObjects { pg, deep } if role == Some(Role::Osd) => {
                let store = self.store.clone();
                blocking(move || local_scrub_entries(&store, pg, deep))
                    .await
                    .and_then(|entries| {
                        postcard::to_stdvec(&entries).map_err(|e| OsdError::Io(e.to_string()))
                    })
                    .map(|body| (OsdResponse::ScrubObjects, body))
            }
            _ => Err(OsdError::Refused(format!("{peer} may not do that"))),
        };
        outcome.unwrap_or_else(|error| (OsdResponse::Failed(error), Vec::new()))
    }
}

/// The good copy and what is wrong, or `None` when all copies agree. The
/// good copy is the most common readable one (the primary's on a tie);
/// there is none to repair from when no copy is readable.
fn judge(copies: &BTreeMap<OsdId, Copy>, primary: OsdId) -> Option<(Option<Copy>, String)> {
    let distinct: BTreeSet<String> = copies.values().map(|c| format!("{c:?}")).collect();
    if distinct.len() == 1 {
        return None;
    }
    let readable = |copy: &Copy| {
        copy.as_ref()
            .is_some_and(|(_, _, digest)| !matches!(digest, Some(Err(_))))
    };
    let votes = |copy: &Copy| copies.values().filter(|c| *c == copy).count();
    let good = copies
        .iter()
        .filter(|(_, copy)| readable(copy))
        .max_by_key(|(osd, copy)| (votes(copy), **osd == primary))
        .map(|(_, copy)| copy.clone());
    let bad: Vec<String> = copies
        .iter()
        .filter(|(_, copy)| Some(*copy) != good.as_ref())
        .map(|(osd, copy)| match copy {
            None => format!("missing on osd.{}", osd.0),
            Some((_, _, Some(Err(error)))) => format!("unreadable on osd.{}: {error}", osd.0),
            Some(_) => format!("differs on osd.{}", osd.0),
        })
        .collect();
    Some((good, bad.join("; ")))
}
