//! Backfill under `pg_temp`. When a map change moves a PG, the MDS keeps
//! it on the members that hold it (a `pg_temp` acting set) and the PG goes
//! on serving. Its primary copies the PG to the up members that lack it
//! while writes continue, then catches up what changed meanwhile in a last
//! pass with the PG quiet and asks the MDS to drop the `pg_temp`; from the
//! next epoch the up set serves the PG, and peering there finds every
//! member already current.

use std::collections::HashMap;
use std::sync::Arc;

use aspen_placement::{OsdId, PgId};
use aspen_proto::cluster::MdsClient;
use aspen_proto::mds::{ClusterMap, MdsRequest, MdsResponse};
use aspen_proto::osd::OsdError;

use super::peering::{PEERING_RETRY, ask_mds};
use super::service::OsdService;

/// A PG this OSD serves through a `pg_temp`, and the up members to fill.
pub(super) struct Backfill {
    pg: PgId,
    up: Vec<Option<OsdId>>,
    targets: Vec<OsdId>,
}

impl OsdService {
    /// The PGs this OSD leads and serves through a `pg_temp` entry.
    fn backfills_due(&self, map: &ClusterMap) -> Vec<Backfill> {
        self.leading(map)
            .into_iter()
            .filter(|led| map.osdmap.pg_temp().contains_key(&led.pg))
            .filter(|led| self.is_active(led.pg, &led.acting))
            .map(|led| Backfill {
                pg: led.pg,
                targets: led
                    .mapping
                    .up
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|osd| !led.acting.contains(osd))
                    .collect(),
                up: led.mapping.up,
            })
            .collect()
    }

    /// Starts a backfill for every due PG that has none running.
    pub(super) fn start_backfills(self: &Arc<Self>, map: &Arc<ClusterMap>, mds: &Arc<MdsClient>) {
        for job in self.backfills_due(map) {
            let fresh = self
                .backfilling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.pg);
            if !fresh {
                continue;
            }
            let (service, map, mds) = (self.clone(), map.clone(), mds.clone());
            tokio::spawn(async move {
                let pg = job.pg;
                let outcome = service.backfill(&map, &mds, job).await;
                service
                    .backfilling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&pg);
                service.set_recovering(pg, None);
                if let Err(error) = outcome {
                    tracing::warn!(?pg, %error, "backfill stopped; will retry");
                    tokio::time::sleep(PEERING_RETRY).await;
                    service.repeer.notify_one();
                }
            });
        }
    }

    async fn backfill(
        &self,
        map: &ClusterMap,
        mds: &MdsClient,
        job: Backfill,
    ) -> Result<(), OsdError> {
        let pg = job.pg;
        self.set_recovering(pg, Some(true));
        self.copy_pg_to(map, pg, &job.targets).await?;
        let _quiet = self.gates.quiet(pg).await;
        if self.maps.borrow().osdmap.epoch() != map.osdmap.epoch() {
            return Err(OsdError::Unavailable(format!("{pg:?}: the map moved")));
        }
        self.copy_pg_to(map, pg, &job.targets).await?;
        let request = MdsRequest::PgBackfilled {
            osd: self.id,
            pg,
            up: job.up,
        };
        match ask_mds(mds, &request).await? {
            MdsResponse::Epoch(Ok(_)) => Ok(()),
            MdsResponse::Epoch(Err(why)) => Err(OsdError::Unavailable(why)),
            other => Err(OsdError::Unavailable(format!("the MDS said {other:?}"))),
        }
    }

    /// Makes every target's copy of `pg` equal to this OSD's.
    async fn copy_pg_to(
        &self,
        map: &ClusterMap,
        pg: PgId,
        targets: &[OsdId],
    ) -> Result<(), OsdError> {
        let (newest, ours) = self.member_objects(map, pg, self.id).await?;
        let mut members = Vec::with_capacity(targets.len());
        for target in targets {
            members.push((*target, self.member_objects(map, pg, *target).await?));
        }
        let wanted: HashMap<Vec<u8>, _> = ours.into_iter().collect();
        self.bring_up_to_date(map, pg, (self.id, newest, &wanted), members)
            .await
    }
}
