//! The OSD protocol service. As a PG's primary it checks the caller's map
//! epoch, orders each mutation in the PG log (in turn per PG, overlapping
//! once ordered: see [`super::gate`]), applies it locally and on every
//! other acting member at once, and
//! acknowledges only when all of them have it durable (and never with fewer
//! acting members than the pool's min_size). As a replica it applies what
//! the PG's primary sends, in log order. Reads are served by the primary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_placement::{OsdId, PgId, PgMapping};
use aspen_proto::mds::ClusterMap;
use aspen_proto::osd::{
    LogEntry, LogVersion, MAX_OBJECT_NAME_LEN, ObjectInfo, ObjectOp, ObjectRef, OsdError,
    OsdRequest, OsdResponse, PgFlags, PgReport, ReplicaEntry,
};
use aspen_proto::transport::{Bytes, EndpointId, FrameError, RpcClient, Service, Transport};
use tokio::sync::watch;

use crate::links::Links;
use crate::store::{self, Body, ObjectKey, ObjectStat, ObjectStore, ReplicaItem, StoreError};

use super::gate::{InFlight, Ordered, PgGates, Quiet};
use super::replicator::{BATCHED_BODY_MAX, Replicators};
use super::space::Space;

/// How long a request naming a newer map epoch waits for this OSD to
/// learn it.
pub const MAP_CATCH_UP: Duration = Duration::from_secs(5);
/// How long a replica may take to apply one message of entries.
pub const REPLICATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A PG this OSD leads: its pool's size, its mapping and acting members.
pub(super) struct Led {
    pub pg: PgId,
    pub pool_size: usize,
    pub min_size: usize,
    pub mapping: PgMapping,
    pub acting: Vec<OsdId>,
}

pub struct OsdService {
    pub(super) id: OsdId,
    pub(super) store: Arc<ObjectStore>,
    pub(super) maps: watch::Receiver<Arc<ClusterMap>>,
    /// Each PG's mutations in log order, overlapping once ordered.
    pub(super) gates: PgGates,
    links: Links,
    /// The queues of entries bound for each replica.
    replicators: Replicators,
    /// The PGs this OSD leads and the acting set it last recovered each
    /// for: a PG serves only while its acting set is still that one.
    active: Mutex<HashMap<PgId, Vec<OsdId>>>,
    /// The newest log position of PGs this OSD leads, taken in PG order by
    /// each logged op (recovery forgets it).
    newest: Mutex<HashMap<PgId, LogVersion>>,
    /// Wakes the peering loop when a PG needs peering without a map change
    /// (a replica failed an op).
    pub(super) repeer: tokio::sync::Notify,
    /// The store's space budget: writes past the full ratio are refused.
    space: Arc<Space>,
    /// PGs being recovered now (true: a member is being backfilled).
    pub(super) recovering: Mutex<HashMap<PgId, bool>>,
    /// PGs none of whose recorded holders could be heard from.
    pub(super) incomplete: Mutex<std::collections::HashSet<PgId>>,
    /// PGs whose backfill task is running.
    pub(super) backfilling: Mutex<std::collections::HashSet<PgId>>,
    /// PGs whose last scrub found disagreeing copies.
    pub(super) inconsistent: Mutex<std::collections::HashSet<PgId>>,
}

fn failed(error: OsdError) -> (OsdResponse, Vec<u8>) {
    (OsdResponse::Failed(error), Vec::new())
}

impl From<StoreError> for OsdError {
    fn from(error: StoreError) -> OsdError {
        match error {
            StoreError::NotFound => OsdError::NotFound,
            StoreError::NoAttr => OsdError::NoAttr,
            StoreError::Invalid(why) => OsdError::Invalid(why),
            StoreError::Corrupt(why) => OsdError::Corrupt(why),
            StoreError::NoSpace => OsdError::NoSpace,
            StoreError::Gap(why) | StoreError::Diverged(why) => OsdError::Unavailable(why),
            StoreError::Sqlite(error)
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                OsdError::NoSpace
            }
            other => OsdError::Io(other.to_string()),
        }
    }
}

fn info(stat: ObjectStat) -> ObjectInfo {
    ObjectInfo {
        size: stat.size,
        version: stat.version,
        mtime_ns: stat.mtime_ns,
    }
}

/// Runs a store call on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, OsdError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(OsdError::from),
        Err(error) => Err(OsdError::Io(error.to_string())),
    }
}

impl OsdService {
    pub fn new(
        id: OsdId,
        transport: Transport,
        store: Arc<ObjectStore>,
        maps: watch::Receiver<Arc<ClusterMap>>,
        space: Arc<Space>,
    ) -> OsdService {
        OsdService {
            id,
            store,
            maps,
            gates: PgGates::default(),
            links: Links::new(transport),
            replicators: Replicators::default(),
            active: Mutex::new(HashMap::new()),
            newest: Mutex::new(HashMap::new()),
            repeer: tokio::sync::Notify::new(),
            recovering: Mutex::new(HashMap::new()),
            inconsistent: Mutex::new(std::collections::HashSet::new()),
            backfilling: Mutex::new(std::collections::HashSet::new()),
            incomplete: Mutex::new(std::collections::HashSet::new()),
            space,
        }
    }

    /// The state of every PG this OSD leads, for its heartbeat (blocks on
    /// the store: call from a blocking thread).
    pub fn pg_reports(&self) -> Vec<PgReport> {
        let map = self.maps.borrow().clone();
        let epoch = map.osdmap.epoch().0;
        let recovering = self
            .recovering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let inconsistent = self
            .inconsistent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let incomplete = self
            .incomplete
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let objects = self.store.pg_object_counts().unwrap_or_default();
        let mut reports = Vec::new();
        for Led {
            pg,
            pool_size,
            min_size,
            mapping,
            acting,
        } in self.leading(&map)
        {
            let peered = self.is_active(pg, &acting);
            let down = acting.len() < min_size;
            let active = peered && !down;
            let remapped = mapping.acting != mapping.up;
            let degraded = acting.len() < pool_size;
            let held = objects.get(&pg).copied().unwrap_or(0);
            let waiting_for_holder = !peered && incomplete.contains(&pg);
            // Read the log position only for a PG that is not serving.
            let creating = !peered
                && !waiting_for_holder
                && held == 0
                && self
                    .store
                    .pg_last(pg)
                    .is_ok_and(|last| last == LogVersion::default());
            let flags = PgFlags {
                creating,
                down,
                incomplete: waiting_for_holder,
                peering: !peered && !waiting_for_holder && !creating,
                active,
                clean: active && !degraded && !remapped && !inconsistent.contains(&pg),
                degraded: active && degraded,
                recovering: recovering.get(&pg) == Some(&false),
                backfilling: recovering.get(&pg) == Some(&true),
                remapped,
                inconsistent: inconsistent.contains(&pg),
            };

            reports.push(PgReport {
                pg,
                epoch,
                flags,
                objects: held,
            });
        }
        reports
    }

    /// The PGs this OSD is acting primary of in `map`.
    pub(super) fn leading(&self, map: &ClusterMap) -> Vec<Led> {
        let mut led = Vec::new();
        for pool in map.osdmap.pools() {
            for pg in pool.pgs() {
                let Ok(mapping) = map.osdmap.pg_mapping(pg) else {
                    continue;
                };
                if mapping.acting_primary == Some(self.id) {
                    let acting = mapping.acting.iter().flatten().copied().collect();
                    led.push(Led {
                        pg,
                        pool_size: pool.size,
                        min_size: pool.min_size,
                        mapping,
                        acting,
                    });
                }
            }
        }
        led
    }

    /// `pg`'s newest log position (call in the PG's order).
    async fn last_logged(&self, pg: PgId) -> Result<LogVersion, OsdError> {
        let known = self
            .newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pg)
            .copied();
        if let Some(last) = known {
            return Ok(last);
        }
        let store = self.store.clone();
        blocking(move || store.pg_last(pg)).await
    }

    /// Records (`Some`) or forgets `pg`'s newest log position.
    pub(super) fn set_newest(&self, pg: PgId, newest: Option<LogVersion>) {
        let mut known = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        match newest {
            Some(at) => known.insert(pg, at),
            None => known.remove(&pg),
        };
    }

    /// Marks `pg` recovering (`Some(false)`), backfilling (`Some(true)`)
    /// or neither, for its reports.
    pub(super) fn set_recovering(&self, pg: PgId, state: Option<bool>) {
        let mut recovering = self.recovering.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(backfill) => recovering.insert(pg, backfill),
            None => recovering.remove(&pg),
        };
    }

    pub(super) fn set_incomplete(&self, pg: PgId, incomplete: bool) {
        let mut set = self.incomplete.lock().unwrap_or_else(|p| p.into_inner());
        if incomplete {
            set.insert(pg);
        } else {
            set.remove(&pg);
        }
    }

    pub(super) fn is_active(&self, pg: PgId, acting: &[OsdId]) -> bool {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.get(&pg).is_some_and(|recovered| recovered == acting)
    }

    pub(super) fn set_active(&self, pg: PgId, acting: Vec<OsdId>) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.insert(pg, acting);
    }

    pub(super) fn set_inactive(&self, pg: PgId) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.remove(&pg);
    }

    /// Forgets PGs this OSD no longer leads (leading one again means
    /// peering it again).
    pub(super) fn forget_all_but(&self, leading: &[PgId]) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.retain(|pg, _| leading.contains(pg));
    }

    /// Refuses a replication or recovery step unless `peer` is `pg`'s
    /// primary at `epoch` and this OSD is acting for it or, while being
    /// backfilled, in its up set.
    pub(super) async fn check_from_primary(
        &self,
        peer: &EndpointId,
        pg: PgId,
        epoch: u64,
    ) -> Result<(), OsdError> {
        let map = self.map_at_least(epoch).await;
        let mapping = map
            .osdmap
            .pg_mapping(pg)
            .map_err(|e| OsdError::Refused(e.to_string()))?;
        let primary = mapping.acting_primary.and_then(|p| map.address(p));
        if primary.map(|a| a.node_id.as_str()) != Some(peer.to_string().as_str()) {
            return Err(OsdError::Refused(format!(
                "{peer} is not the primary of {pg:?}"
            )));
        }
        let member = Some(self.id);
        if !mapping.acting.contains(&member) && !mapping.up.contains(&member) {
            return Err(OsdError::Refused(format!("not acting for {pg:?}")));
        }
        Ok(())
    }

    /// The current map, after waiting (a bounded time) for `epoch`.
    async fn map_at_least(&self, epoch: u64) -> Arc<ClusterMap> {
        let mut maps = self.maps.clone();
        let _ = tokio::time::timeout(
            MAP_CATCH_UP,
            maps.wait_for(|map| map.osdmap.epoch().0 >= epoch),
        )
        .await;
        self.maps.borrow().clone()
    }

    /// The RPC client for OSD `osd` at the address `map` gives it.
    pub(super) fn link(&self, map: &ClusterMap, osd: OsdId) -> Result<Arc<RpcClient>, OsdError> {
        self.link_for(map, osd, 0)
    }

    /// [`Self::link`] for a request that moves `bytes` (see [`crate::links`]).
    fn link_for(
        &self,
        map: &ClusterMap,
        osd: OsdId,
        bytes: u64,
    ) -> Result<Arc<RpcClient>, OsdError> {
        self.links
            .get_for(map, osd, bytes)
            .map_err(OsdError::Unavailable)
    }

    /// Cuts the links to the OSDs `map` shows down ([`Links::cut_down`]).
    pub(super) fn cut_links_to_down(&self, map: &ClusterMap) {
        self.links.cut_down(map);
    }

    /// A client's operation; `(epoch, session)` are the client's map epoch
    /// and MDS session.
    async fn op(
        &self,
        object: ObjectRef,
        (epoch, session): (u64, u64),
        op: ObjectOp,
        body: Vec<u8>,
    ) -> (OsdResponse, Vec<u8>) {
        if let Err(error) = op.validate(body.len()) {
            return failed(error);
        }
        if object.name.is_empty() || object.name.len() > MAX_OBJECT_NAME_LEN {
            return failed(OsdError::Invalid("bad object name length".into()));
        }
        let map = self.map_at_least(epoch).await;
        if session != 0 && map.osdmap.is_blocklisted(session) {
            return failed(OsdError::Fenced);
        }
        let map_epoch = map.osdmap.epoch().0;
        let Ok(pg) = map.osdmap.object_pg(object.pool, &object.name) else {
            return failed(OsdError::Invalid(format!("no pool {}", object.pool.0)));
        };
        let Ok(mapping) = map.osdmap.pg_mapping(pg) else {
            return failed(OsdError::Unavailable(format!("no mapping for {pg:?}")));
        };
        if mapping.acting_primary != Some(self.id) {
            return failed(OsdError::NotPrimary { epoch: map_epoch });
        }
        let acting: Vec<OsdId> = mapping.acting.iter().flatten().copied().collect();
        if !self.is_active(pg, &acting) {
            return failed(OsdError::Unavailable(format!("{pg:?} is peering")));
        }
        let key = ObjectKey {
            pg,
            name: object.name,
        };
        if op.is_mutation() {
            match self.mutate(&map, mapping, key, op, body).await {
                Ok(stat) => (OsdResponse::Done(stat), Vec::new()),
                Err(error) => failed(error),
            }
        } else {
            self.read(key, op).await.unwrap_or_else(failed)
        }
    }

    async fn read(&self, key: ObjectKey, op: ObjectOp) -> Result<(OsdResponse, Vec<u8>), OsdError> {
        let store = self.store.clone();
        match op {
            ObjectOp::Read { offset, len } => {
                let planned = (len <= READ_IN_TASK_MAX)
                    .then(|| unwound_now(|| store.try_plan_read(&key, offset, len)))
                    .flatten();
                let bytes = match planned {
                    Some(plan) => match plan? {
                        plan if plan.reads_segments() => {
                            match unwound(|| plan.assemble_cached())? {
                                Some(bytes) => bytes,
                                None => blocking(move || plan.assemble()).await?,
                            }
                        }
                        plan => unwound(|| plan.assemble())?,
                    },
                    None => blocking(move || store.read(&key, offset, len)).await?,
                };
                Ok((OsdResponse::Data, bytes))
            }
            ObjectOp::Stat => {
                let stat = blocking(move || store.stat(&key)).await?;
                Ok((OsdResponse::Stat(stat.map(info)), Vec::new()))
            }
            ObjectOp::GetAttr { name } => {
                let value = blocking(move || store.get_attr(&key, &name)).await?;
                Ok((OsdResponse::Attr(value), Vec::new()))
            }
            other => Err(OsdError::Invalid(format!("{other:?} is not a read"))),
        }
    }

    /// Orders `op` in the PG log and makes it durable on every acting member.
    /// The PG's next op may take its position once this one's entry is
    /// queued for the replicas and staged here, unless its body is too
    /// large for the ordered replica queues.
    async fn mutate(
        &self,
        map: &ClusterMap,
        mapping: PgMapping,
        key: ObjectKey,
        op: ObjectOp,
        body: Vec<u8>,
    ) -> Result<ObjectInfo, OsdError> {
        let pg = key.pg;
        let pool = map
            .osdmap
            .pool(pg.pool)
            .map_err(|e| OsdError::Invalid(e.to_string()))?;
        let acting: Vec<OsdId> = mapping.acting.iter().flatten().copied().collect();
        if acting.len() < pool.min_size {
            return Err(OsdError::Unavailable(format!(
                "{} of min_size {} acting",
                acting.len(),
                pool.min_size
            )));
        }
        // Hashed once, here, for this store and the replicas alike; before
        // the turn, which orders nothing by it.
        let (body, trees) = if body.len() > STAGE_IN_TASK_MAX {
            let op = op.clone();
            blocking(move || {
                let trees = store::write_trees(&op, &body);
                Ok((body, trees))
            })
            .await?
        } else {
            let trees = store::write_trees(&op, &body);
            (body, trees)
        };
        let turn = if body.len() <= BATCHED_BODY_MAX {
            Turn::Ordered(self.gates.ordered(pg).await)
        } else {
            Turn::Quiet(self.gates.quiet(pg).await)
        };
        if !self.is_active(pg, &acting) {
            return Err(OsdError::Unavailable(format!("{pg:?} is peering")));
        }
        if op.carries_body() {
            self.space.admit(body.len() as u64)?;
        }
        let last = self.last_logged(pg).await?;
        let entry = LogEntry {
            at: LogVersion {
                // Never below the last entry's: an op holding an older map
                // may be ordered after one holding a newer.
                epoch: map.osdmap.epoch().0.max(last.epoch),
                version: last.version + 1,
            },
            object: key.name.clone(),
            op,
        };
        let body = Bytes::from(body);
        // Every link first: nothing is sent unless it can go to all.
        let links = acting
            .iter()
            .copied()
            .filter(|osd| *osd != self.id)
            .map(|osd| Ok((osd, self.link_for(map, osd, body.len() as u64)?)))
            .collect::<Result<Vec<_>, OsdError>>()?;
        let replicas: Vec<_> = links
            .into_iter()
            .map(|(osd, client)| {
                let sent = self.replicators.send(
                    osd,
                    client,
                    pg,
                    entry.clone(),
                    body.clone(),
                    trees.clone(),
                );
                (osd, sent)
            })
            .collect();
        self.set_newest(pg, Some(entry.at));
        // A small change is staged on this task's thread if the store is
        // free (no thread hop), anything else on a blocking thread; the
        // task then waits for the batch's sync without holding a thread. The turn
        // stays with this task whatever happens, a panic in the store
        // included: the next op must not start before a failed one has
        // marked the PG for peering.
        let in_task = in_task_bytes(&entry.op, body.len()).is_some_and(|n| n <= STAGE_IN_TASK_MAX);
        let staged = match unwound_now(|| {
            in_task
                .then(|| self.store.try_stage_logged(&key, &entry, &body[..]))
                .flatten()
        }) {
            Some(staged) => staged.map_err(OsdError::from),
            None => {
                let (store, entry) = (self.store.clone(), entry.clone());
                blocking(move || {
                    unwound(|| {
                        let body = Body {
                            bytes: &body,
                            trees: &trees,
                        };
                        store.stage_logged(&key, &entry, body)
                    })
                })
                .await
            }
        };
        let (local, turn) = match staged {
            Ok(staged) => {
                let in_flight = turn.admit_next();
                let durable = self.store.durable_async(staged).await;
                (durable.map_err(OsdError::from), in_flight)
            }
            Err(error) => (Err(error), turn),
        };
        let local_refusal = local.as_ref().err().filter(|error| is_refusal(error));
        let mut refused_alike = 0;
        let mut problems = Vec::new();
        let mut replica_full = false;
        let members = replicas.len();
        for (osd, sent) in replicas {
            let error = match sent.await {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                Err(_) => OsdError::Unavailable("the replication task ended".into()),
            };
            replica_full |= error == OsdError::NoSpace;
            refused_alike += usize::from(local_refusal == Some(&error));
            problems.push(format!("osd.{}: {error}", osd.0));
        }
        if local_refusal.is_some() && refused_alike == members {
            // Every member refused it alike (say, a delete of an object
            // none has): nothing was logged anywhere, and a refusal comes
            // only from a failed stage, which kept the turn, so no later op
            // has taken a position: its version is free again.
            self.set_newest(pg, Some(last));
        } else if local.is_err() || !problems.is_empty() {
            // Some member (this one included) may now lack this entry that
            // others hold: peer again before the next op, so no member
            // falls silently behind and no version is handed out twice.
            self.peer_again(pg);
        }
        drop(turn);
        let stat = local?;
        if replica_full {
            return Err(OsdError::NoSpace);
        }
        if !problems.is_empty() {
            return Err(OsdError::Unavailable(problems.join("; ")));
        }
        Ok(stat.map(info).unwrap_or(ObjectInfo {
            size: 0,
            version: entry.at.version,
            mtime_ns: 0,
        }))
    }

    /// Stops `pg` serving until it has peered again. Its newest position
    /// stays until recovery forgets it: ops already ordered behind a failed
    /// one keep taking versions after theirs, which the store refuses as a
    /// gap if the failed one's batch was undone, rather than hand out a
    /// version twice.
    fn peer_again(&self, pg: PgId) {
        self.set_inactive(pg);
        self.repeer.notify_one();
    }

    /// Applies the entries PG primaries sent, each on its own (one commit
    /// and one sync for all): a result per entry.
    async fn replicate(
        &self,
        peer: EndpointId,
        entries: Vec<ReplicaEntry>,
        body: Vec<u8>,
    ) -> Result<Vec<Result<(), OsdError>>, OsdError> {
        ReplicaEntry::check_batch(&entries, body.len())?;
        let mut verdicts = Vec::with_capacity(entries.len());
        for replica in &entries {
            verdicts.push(self.admit_replica_entry(&peer, replica).await);
        }
        let mut pgs: Vec<PgId> = entries
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .map(|(replica, _)| replica.pg)
            .collect();
        pgs.sort_unstable();
        pgs.dedup();
        // In PG order, as every multi-PG locker does: no lock cycle.
        let mut ordered = Vec::with_capacity(pgs.len());
        for pg in &pgs {
            ordered.push(self.gates.serial(*pg).await);
        }
        let accepted: Vec<bool> = verdicts.iter().map(Result::is_ok).collect();
        // A resend of something already applied changes nothing.
        let taken: Vec<&ReplicaEntry> = entries
            .iter()
            .zip(&accepted)
            .filter_map(|(replica, accepted)| accepted.then_some(replica))
            .collect();
        let in_task = taken.len() <= STAGE_IN_TASK_ENTRIES_MAX
            && taken
                .iter()
                .map(|replica| in_task_bytes(&replica.entry.op, replica.body_len as usize))
                .sum::<Option<usize>>()
                .is_some_and(|n| n <= STAGE_IN_TASK_MAX);
        let staged = match unwound_now(|| {
            in_task
                .then(|| {
                    let items = accepted_items(&entries, &accepted, &body);
                    self.store.try_stage_replicated_each(&items).map(Ok)
                })
                .flatten()
        }) {
            Some(staged) => staged?,
            None => {
                let store = self.store.clone();
                blocking(move || {
                    let items = accepted_items(&entries, &accepted, &body);
                    unwound(|| Ok(store.stage_replicated_each(&items)))
                })
                .await?
            }
        };
        let mut applied = Vec::with_capacity(staged.len());
        for staged in staged {
            applied.push(match staged {
                Ok(staged) => self.store.durable_async(staged).await,
                Err(error) => Err(error),
            });
        }
        let mut applied = applied.into_iter();
        Ok(verdicts
            .into_iter()
            .map(|verdict| {
                verdict?;
                match applied.next() {
                    Some(result) => result.map(drop).map_err(OsdError::from),
                    None => Err(OsdError::Io("an entry went unapplied".into())),
                }
            })
            .collect())
    }

    /// Whether one replicated entry may be applied: well formed, from its
    /// PG's primary, and with room for its bytes.
    async fn admit_replica_entry(
        &self,
        peer: &EndpointId,
        replica: &ReplicaEntry,
    ) -> Result<(), OsdError> {
        let op = &replica.entry.op;
        if op.carries_body() {
            // Within the body's length (checked with the batch).
            op.validate(replica.body_len as usize)?;
        } else if replica.body_len != 0 {
            return Err(OsdError::Invalid(format!("{op:?} carries no bytes")));
        }
        self.check_from_primary(peer, replica.pg, replica.epoch)
            .await?;
        if op.carries_body() {
            self.space.admit(replica.body_len)?;
        }
        Ok(())
    }
}

/// The most body bytes a change may carry to be staged (and, on a
/// primary, hashed) on the async task that received it; larger ones are
/// hashed and staged on a blocking thread, so no runtime thread stalls for
/// long.
pub const STAGE_IN_TASK_MAX: usize = crate::content::SMALL_WRITE_MAX;

/// The largest read located on the async task that received it when the
/// store is free (larger ones, or any while the store is held, go to a
/// blocking thread whole): its SQLite lookups cost less than the two
/// thread wakeups a blocking thread takes. Its bytes are read on the task
/// too when none comes from a segment file, or when the page cache holds
/// all that do and they are little work (`ReadPlan::assemble_cached`);
/// otherwise on a blocking thread: a segment read waits for the disk when
/// cold, and a worker held that long stalls every connection it serves
/// (4 KiB cold random reads through the mount: 6.9-7.2k IOPS with every
/// segment read on the task, 8.1-8.3k on a blocking thread).
pub const READ_IN_TASK_MAX: u64 = crate::content::SMALL_WRITE_MAX as u64;

/// The most replicated entries staged together on the async task that
/// received them.
pub const STAGE_IN_TASK_ENTRIES_MAX: usize = 16;

/// The most pieces of a vectored write staged on an async task.
pub const STAGE_IN_TASK_PIECES_MAX: usize = 16;

/// The bytes that bound an op's work in the store, for an op that may be
/// staged on an async task: a write (its body; a vectored one of at most
/// [`STAGE_IN_TASK_PIECES_MAX`] pieces) or an attribute (its name and
/// value). `None` for the others: a delete, truncate or zero edits every
/// extent of the range it covers, however many the object has.
fn in_task_bytes(op: &ObjectOp, body_len: usize) -> Option<usize> {
    match op {
        ObjectOp::Write { .. } => Some(body_len),
        ObjectOp::WriteExtents { extents } if extents.len() <= STAGE_IN_TASK_PIECES_MAX => {
            Some(body_len)
        }
        ObjectOp::SetAttr { name, value } => Some(name.len() + value.len()),
        _ => None,
    }
}

/// The `accepted` entries with their pieces of `body` (each entry's bytes
/// follow the previous one's).
fn accepted_items<'a>(
    entries: &'a [ReplicaEntry],
    accepted: &[bool],
    body: &'a [u8],
) -> Vec<ReplicaItem<'a>> {
    let mut rest = body;
    let mut items = Vec::new();
    for (replica, accepted) in entries.iter().zip(accepted) {
        // The lengths add up to the body (checked before).
        let (bytes, after) = rest.split_at(replica.body_len as usize);
        rest = after;
        if *accepted {
            let key = ObjectKey {
                pg: replica.pg,
                name: replica.entry.object.clone(),
            };
            let body = Body {
                bytes,
                trees: &replica.trees,
            };
            items.push((key, &replica.entry, body));
        }
    }
    items
}

/// Whether a member's failure of an op depends only on the object state
/// every member shares, so that all refuse it alike and none logs it (a
/// member that lacks an earlier entry reports a gap instead).
fn is_refusal(error: &OsdError) -> bool {
    matches!(error, OsdError::NotFound)
}

/// Runs a store call that declines when the store is busy (`None`),
/// turning a panic into an error.
fn unwound_now<T>(
    call: impl FnOnce() -> Option<Result<T, StoreError>>,
) -> Option<Result<T, StoreError>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
        .unwrap_or_else(|_| Some(Err(StoreError::Io("the store call panicked".into()))))
}

/// Runs a store call, turning a panic into an error.
fn unwound<T>(call: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
        .unwrap_or_else(|_| Err(StoreError::Io("the store call panicked".into())))
}

/// How a mutation holds its PG: taking its position (the next op may
/// start once this one is on its way), in flight, or alone until it
/// finishes.
enum Turn {
    Ordered(Ordered),
    InFlight(#[allow(dead_code)] InFlight),
    Quiet(#[allow(dead_code)] Quiet),
}

impl Turn {
    /// What the op holds once its entry is on its way.
    fn admit_next(self) -> Turn {
        match self {
            Turn::Ordered(ordered) => Turn::InFlight(ordered.admit_next()),
            held => held,
        }
    }
}

impl Service for OsdService {
    type Request = OsdRequest;
    type Response = OsdResponse;

    async fn call(
        &self,
        peer: EndpointId,
        request: OsdRequest,
        body: Vec<u8>,
    ) -> (OsdResponse, Vec<u8>) {
        if matches!(
            request,
            OsdRequest::Op { .. } | OsdRequest::Replicate { .. }
        ) {
            self.space.serving();
        }
        match request {
            OsdRequest::Op {
                object,
                epoch,
                op,
                session,
            } => self.op(object, (epoch, session), op, body).await,
            OsdRequest::Replicate { entries } => match self.replicate(peer, entries, body).await {
                Ok(each) => (OsdResponse::ReplicatedEach(each), Vec::new()),
                Err(error) => failed(error),
            },
            recovery @ (OsdRequest::PgObjects { .. }
            | OsdRequest::GetObject { .. }
            | OsdRequest::PutObject { .. }
            | OsdRequest::Recovered { .. }) => self.recovery_request(peer, recovery, body).await,
            scrub @ (OsdRequest::Scrub { .. } | OsdRequest::ScrubObjects { .. }) => {
                self.scrub_request(peer, scrub).await
            }
            OsdRequest::ListPg { pg } => {
                let store = self.store.clone();
                match blocking(move || store.list(pg)).await {
                    Ok(names) => (OsdResponse::Names(names), Vec::new()),
                    Err(error) => failed(error),
                }
            }
        }
    }

    fn malformed(&self, error: &FrameError) -> OsdResponse {
        OsdResponse::Failed(OsdError::Refused(error.to_string()))
    }
}
