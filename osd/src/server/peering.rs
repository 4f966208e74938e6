//! Peering and recovery. For every PG it is primary of, an OSD makes the
//! acting set agree before it serves the PG: it asks each member for its
//! newest log position and its objects (each with the log position of its
//! last change); the member with the newest position is authoritative;
//! every other member gets each object it lacks or holds at another
//! position copied from the authoritative one (verified by BLAKE3 on
//! arrival), loses objects the authoritative one does not have, and takes
//! its log position. A PG serves reads and writes only once this finished
//! for its current acting set; until then clients are told to retry.
//!
//! The MDS records each PG's holders (its acting set when it last went
//! active); peering also asks those of them that are up but no longer
//! acting, and a PG none of whose holders is up stays incomplete instead
//! of serving an empty or stale copy.
//!
//! Recovery copies whole objects, so a member that missed writes, a new
//! member and a member holding writes that were never acknowledged (rolled
//! back) are all brought to the same state. Up members outside a `pg_temp`
//! acting set are filled by `backfill` while the PG serves.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aspen_placement::{OsdId, PgId};
use aspen_proto::cluster::MdsClient;
use aspen_proto::mds::{ClusterMap, MdsRequest, MdsResponse, Role};
use aspen_proto::osd::{LogVersion, ObjectCopy, OsdError, OsdRequest, OsdResponse};
use aspen_proto::transport::{Bytes, EndpointId};
use tokio::sync::watch;

use super::service::{OsdService, blocking};
use crate::store::ObjectKey;

/// How long to wait before retrying a PG whose recovery failed (a member
/// unreachable until the MDS marks it down).
pub const PEERING_RETRY: Duration = Duration::from_secs(1);
/// How long one recovery step at one member may take.
pub const RECOVERY_STEP_TIMEOUT: Duration = Duration::from_secs(60);

type Objects = Vec<(Vec<u8>, LogVersion)>;

fn hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

impl OsdService {
    /// The PGs this OSD leads whose acting set it has not recovered yet.
    fn pgs_to_peer(&self, map: &ClusterMap) -> Vec<(PgId, Vec<OsdId>)> {
        let led = self.leading(map);
        let leading: Vec<PgId> = led.iter().map(|l| l.pg).collect();
        let pending = led
            .into_iter()
            .filter(|l| !self.is_active(l.pg, &l.acting))
            .map(|l| (l.pg, l.acting))
            .collect();
        self.forget_all_but(&leading);
        pending
    }

    /// A member's newest log position and objects.
    pub(super) async fn member_objects(
        &self,
        map: &ClusterMap,
        pg: PgId,
        osd: OsdId,
    ) -> Result<(LogVersion, Objects), OsdError> {
        if osd == self.id {
            let store = self.store.clone();
            return blocking(move || Ok((store.pg_last(pg)?, store.pg_objects(pg)?))).await;
        }
        let client = self.link(map, osd)?;
        match client
            .call_within::<_, OsdResponse>(
                RECOVERY_STEP_TIMEOUT,
                &OsdRequest::PgObjects { pg },
                Bytes::new(),
            )
            .await
        {
            Ok((OsdResponse::PgObjects { last }, body)) => {
                let objects =
                    postcard::from_bytes(&body).map_err(|e| OsdError::Corrupt(e.to_string()))?;
                Ok((last, objects))
            }
            Ok((OsdResponse::Failed(error), _)) => Err(error),
            Ok((other, _)) => Err(OsdError::Unavailable(format!("osd.{}: {other:?}", osd.0))),
            Err(error) => Err(OsdError::Unavailable(format!("osd.{}: {error}", osd.0))),
        }
    }

    /// A whole object from member `osd`.
    pub(super) async fn fetch(
        &self,
        map: &ClusterMap,
        pg: PgId,
        osd: OsdId,
        name: &[u8],
    ) -> Result<(Option<ObjectCopy>, Vec<u8>), OsdError> {
        if osd == self.id {
            let store = self.store.clone();
            let key = ObjectKey {
                pg,
                name: name.to_vec(),
            };
            let state = blocking(move || store.object_state(&key)).await?;
            return Ok(match state {
                Some((copy, data)) => (Some(copy), data),
                None => (None, Vec::new()),
            });
        }
        let client = self.link(map, osd)?;
        let request = OsdRequest::GetObject {
            pg,
            name: name.to_vec(),
        };
        match client
            .call_within::<_, OsdResponse>(RECOVERY_STEP_TIMEOUT, &request, Bytes::new())
            .await
        {
            Ok((OsdResponse::Object { copy, hash: sent }, body)) => {
                if hash(&body) != sent {
                    return Err(OsdError::Corrupt(format!(
                        "a copy from osd.{} failed its hash",
                        osd.0
                    )));
                }
                Ok((copy, body))
            }
            Ok((OsdResponse::Failed(error), _)) => Err(error),
            Ok((other, _)) => Err(OsdError::Unavailable(format!("osd.{}: {other:?}", osd.0))),
            Err(error) => Err(OsdError::Unavailable(format!("osd.{}: {error}", osd.0))),
        }
    }

    /// Installs a copy (or a deletion) of an object on member `osd`.
    pub(super) async fn install(
        &self,
        map: &ClusterMap,
        pg: PgId,
        osd: OsdId,
        name: &[u8],
        (copy, data): (Option<ObjectCopy>, Vec<u8>),
    ) -> Result<(), OsdError> {
        if osd == self.id {
            let store = self.store.clone();
            let key = ObjectKey {
                pg,
                name: name.to_vec(),
            };
            return blocking(move || store.install_object(&key, copy.as_ref(), &data)).await;
        }
        let request = OsdRequest::PutObject {
            pg,
            epoch: map.osdmap.epoch().0,
            name: name.to_vec(),
            copy,
            hash: hash(&data),
        };
        self.step(map, osd, &request, Bytes::from(data)).await
    }

    async fn step(
        &self,
        map: &ClusterMap,
        osd: OsdId,
        request: &OsdRequest,
        body: Bytes,
    ) -> Result<(), OsdError> {
        let client = self.link(map, osd)?;
        match client
            .call_within::<_, OsdResponse>(RECOVERY_STEP_TIMEOUT, request, body)
            .await
        {
            Ok((OsdResponse::Replicated, _)) => Ok(()),
            Ok((OsdResponse::Failed(error), _)) => Err(error),
            Ok((other, _)) => Err(OsdError::Unavailable(format!("osd.{}: {other:?}", osd.0))),
            Err(error) => Err(OsdError::Unavailable(format!("osd.{}: {error}", osd.0))),
        }
    }

    /// Makes every member of `acting` equal to the most up-to-date copy
    /// among them and the PG's recorded holders, and records `acting` as
    /// its holders; then lets it serve. With no recorded holder reachable the
    /// PG is incomplete: serving it would serve an empty or stale copy.
    async fn recover(
        &self,
        map: &ClusterMap,
        mds: &MdsClient,
        pg: PgId,
        acting: &[OsdId],
    ) -> Result<(), OsdError> {
        let recorded = pg_holders(mds, pg).await?;
        let _quiet = self.gates.quiet(pg).await;
        // An op that learned the acting set before this change must not
        // serve the PG from here on: it is active again only below, once
        // its current members agree, before anything else takes the PG.
        self.set_inactive(pg);
        self.bring_members_together(map, mds, pg, acting, &recorded)
            .await?;
        self.set_active(pg, acting.to_vec());
        Ok(())
    }

    /// The body of [`OsdService::recover`], run while the PG is quiet and
    /// out of service.
    async fn bring_members_together(
        &self,
        map: &ClusterMap,
        mds: &MdsClient,
        pg: PgId,
        acting: &[OsdId],
        recorded: &[OsdId],
    ) -> Result<(), OsdError> {
        let mut members = Vec::new();
        for osd in acting {
            members.push((*osd, self.member_objects(map, pg, *osd).await?));
        }
        let mut candidates = members.clone();
        for holder in recorded.iter().filter(|h| !acting.contains(h)) {
            if map.osdmap.osd(*holder).is_ok_and(|s| s.up)
                && let Ok(objects) = self.member_objects(map, pg, *holder).await
            {
                candidates.push((*holder, objects));
            }
        }
        let heard_from_holder =
            recorded.is_empty() || candidates.iter().any(|(osd, _)| recorded.contains(osd));
        self.set_incomplete(pg, !heard_from_holder);
        if !heard_from_holder {
            return Err(OsdError::Unavailable(format!(
                "{pg:?} is incomplete: none of its holders {recorded:?} is up"
            )));
        }
        let Some((authority, (newest, wanted))) = candidates
            .into_iter()
            .max_by_key(|(osd, (last, _))| (*last, *osd == self.id))
        else {
            return Ok(());
        };
        let wanted: HashMap<Vec<u8>, LogVersion> = wanted.into_iter().collect();
        let outcome = self
            .bring_up_to_date(map, pg, (authority, newest, &wanted), members)
            .await;
        self.set_recovering(pg, None);
        self.set_newest(pg, None);
        outcome?;
        let same_holders = BTreeSet::from_iter(acting) == BTreeSet::from_iter(recorded);
        if !same_holders {
            record_holders(mds, self.id, pg, acting.to_vec()).await?;
        }
        Ok(())
    }

    /// Copies to every member what it lacks next to the authority.
    pub(super) async fn bring_up_to_date(
        &self,
        map: &ClusterMap,
        pg: PgId,
        (authority, newest, wanted): (OsdId, LogVersion, &HashMap<Vec<u8>, LogVersion>),
        members: Vec<(OsdId, (LogVersion, Objects))>,
    ) -> Result<(), OsdError> {
        for (osd, (last, held)) in members {
            if osd == authority {
                continue;
            }
            let held: HashMap<Vec<u8>, LogVersion> = held.into_iter().collect();
            let stale = wanted
                .iter()
                .filter(|(name, at)| held.get(*name) != Some(at))
                .map(|(n, _)| n);
            let extra = held.keys().filter(|name| !wanted.contains_key(*name));
            let names: Vec<&Vec<u8>> = stale.chain(extra).collect();
            if !names.is_empty() {
                // A member with no log at all is being filled from scratch.
                self.set_recovering(pg, Some(last == LogVersion::default()));
            }
            for name in names {
                let copy = self.fetch(map, pg, authority, name).await?;
                self.install(map, pg, osd, name, copy).await?;
            }
            if last != newest {
                if osd == self.id {
                    let store = self.store.clone();
                    blocking(move || store.set_pg_last(pg, newest)).await?;
                } else {
                    let request = OsdRequest::Recovered {
                        pg,
                        epoch: map.osdmap.epoch().0,
                        last: newest,
                    };
                    self.step(map, osd, &request, Bytes::new()).await?;
                }
            }
        }
        Ok(())
    }

    fn peer_is_osd(map: &ClusterMap, peer: &EndpointId) -> bool {
        map.role_of(peer) == Some(Role::Osd)
    }

    /// Serves the recovery requests other OSDs send.
    pub(super) async fn recovery_request(
        &self,
        peer: EndpointId,
        request: OsdRequest,
        body: Vec<u8>,
    ) -> (OsdResponse, Vec<u8>) {
        match self.answer_recovery(peer, request, body).await {
            Ok(answer) => answer,
            Err(error) => (OsdResponse::Failed(error), Vec::new()),
        }
    }

    async fn answer_recovery(
        &self,
        peer: EndpointId,
        request: OsdRequest,
        body: Vec<u8>,
    ) -> Result<(OsdResponse, Vec<u8>), OsdError> {
        let map = self.maps.borrow().clone();
        if !OsdService::peer_is_osd(&map, &peer) {
            return Err(OsdError::Refused(format!("{peer} is not an OSD")));
        }
        let store = self.store.clone();
        match request {
            OsdRequest::PgObjects { pg } => {
                let (last, objects) =
                    blocking(move || Ok((store.pg_last(pg)?, store.pg_objects(pg)?))).await?;
                let body =
                    postcard::to_stdvec(&objects).map_err(|e| OsdError::Io(e.to_string()))?;
                Ok((OsdResponse::PgObjects { last }, body))
            }
            OsdRequest::GetObject { pg, name } => {
                let key = ObjectKey { pg, name };
                let state = blocking(move || store.object_state(&key)).await?;
                let (copy, data) = match state {
                    Some((copy, data)) => (Some(copy), data),
                    None => (None, Vec::new()),
                };
                Ok((
                    OsdResponse::Object {
                        copy,
                        hash: hash(&data),
                    },
                    data,
                ))
            }
            OsdRequest::PutObject {
                pg,
                epoch,
                name,
                copy,
                hash: sent,
            } => {
                self.check_from_primary(&peer, pg, epoch).await?;
                if hash(&body) != sent {
                    return Err(OsdError::Corrupt(
                        "the copy failed its hash in transit".into(),
                    ));
                }
                let _quiet = self.gates.quiet(pg).await;
                let key = ObjectKey { pg, name };
                blocking(move || store.install_object(&key, copy.as_ref(), &body)).await?;
                Ok((OsdResponse::Replicated, Vec::new()))
            }
            OsdRequest::Recovered { pg, epoch, last } => {
                self.check_from_primary(&peer, pg, epoch).await?;
                blocking(move || store.set_pg_last(pg, last)).await?;
                Ok((OsdResponse::Replicated, Vec::new()))
            }
            other => Err(OsdError::Invalid(format!(
                "{other:?} is not a recovery request"
            ))),
        }
    }
}

/// Peers every PG this OSD leads whenever the map changes, retrying the
/// ones that failed, and backfills the PGs it serves through `pg_temp`.
pub async fn peer_loop(
    service: Arc<OsdService>,
    mut maps: watch::Receiver<Arc<ClusterMap>>,
    mds: Arc<MdsClient>,
) {
    loop {
        let map = maps.borrow_and_update().clone();
        let mut failed = false;
        for (pg, acting) in service.pgs_to_peer(&map) {
            if maps.has_changed().unwrap_or(true) {
                break;
            }
            match service.recover(&map, &mds, pg, &acting).await {
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(?pg, %error, "recovery failed; will retry");
                    failed = true;
                }
            }
        }
        if failed {
            let _ = tokio::time::timeout(PEERING_RETRY, maps.changed()).await;
            continue;
        }
        service.start_backfills(&map, &mds);
        tokio::select! {
            changed = maps.changed() => if changed.is_err() { return },
            _ = service.repeer.notified() => {}
        }
    }
}

/// Sends a PG step's request to the MDS; an unreachable MDS makes the
/// step fail for now (it is retried).
pub(super) async fn ask_mds(
    mds: &MdsClient,
    request: &MdsRequest,
) -> Result<MdsResponse, OsdError> {
    mds.call(request)
        .await
        .map_err(|error| OsdError::Unavailable(format!("the MDS: {error}")))
}

/// The OSDs that held `pg` complete when it last went active.
async fn pg_holders(mds: &MdsClient, pg: PgId) -> Result<Vec<OsdId>, OsdError> {
    match ask_mds(mds, &MdsRequest::PgHolders { pg }).await? {
        MdsResponse::PgHolders(holders) => Ok(holders),
        other => Err(OsdError::Unavailable(format!("PG holders: {other:?}"))),
    }
}

/// Records `holders` as the members that hold `pg` complete (before it
/// serves from them).
async fn record_holders(
    mds: &MdsClient,
    osd: OsdId,
    pg: PgId,
    holders: Vec<OsdId>,
) -> Result<(), OsdError> {
    let request = MdsRequest::PgActivated { osd, pg, holders };
    match ask_mds(mds, &request).await? {
        MdsResponse::Unit(Ok(())) => Ok(()),
        other => Err(OsdError::Unavailable(format!(
            "recording holders: {other:?}"
        ))),
    }
}
