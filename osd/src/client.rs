//! The object client, used by the MDS (purges) and fsclient (file data):
//! it maps an object to its PG and the PG's acting primary with the
//! current cluster map, sends the operation there, and when the answer is
//! "not primary", the primary is unreachable or the PG is unavailable, it
//! fetches a newer map and retries, for at most [`OP_DEADLINE`].
//!
//! Public API only: nothing here depends on the OSD's server internals.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aspen_placement::{OsdId, PoolId};
use aspen_proto::InodeId;
use aspen_proto::cluster::{ClusterConfig, MdsClient};
use aspen_proto::ids::{ObjectId, ObjectNo};
use aspen_proto::layout::FileLayout;
use aspen_proto::mds::{ClusterMap, MdsRequest, MdsResponse};
use aspen_proto::osd::{
    ObjectInfo, ObjectOp, ObjectRef, OsdError, OsdRequest, OsdResponse, ScrubReport,
};
use aspen_proto::transport::{Bytes, RpcClient, Transport};
use tokio::sync::Mutex;

use crate::links::Links;

/// How long one operation keeps retrying through map changes.
pub const OP_DEADLINE: Duration = Duration::from_secs(60);
/// How long one attempt at one OSD may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a scrub may take.
pub const SCRUB_TIMEOUT: Duration = Duration::from_secs(600);
/// The pause before retrying when the map has not changed.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The OSD answered with an error that retrying does not fix.
    #[error(transparent)]
    Osd(#[from] OsdError),
    #[error("gave up after {0:?}: {1}")]
    Timeout(Duration, String),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Where the object client learns cluster maps: the MDS group over the
/// network, or (inside an MDS) its own replicated state.
pub trait MapSource: Send + Sync {
    /// The first map newer than `newer_than`, or the current one after a
    /// bounded wait.
    fn fetch(
        &self,
        newer_than: u64,
    ) -> Pin<Box<dyn Future<Output = Result<ClusterMap, ClientError>> + Send + '_>>;
}

impl MapSource for MdsClient {
    fn fetch(
        &self,
        newer_than: u64,
    ) -> Pin<Box<dyn Future<Output = Result<ClusterMap, ClientError>> + Send + '_>> {
        Box::pin(fetch_map(self, newer_than))
    }
}

pub struct ObjectClient {
    transport: Transport,
    maps: Arc<dyn MapSource>,
    map: Mutex<Arc<ClusterMap>>,
    links: Links,
    /// The MDS session operations are sent for (0: none).
    session: AtomicU64,
    /// The oldest map epoch an operation may be sent with.
    barrier: AtomicU64,
    /// Operations sent again (see [`ObjectClient::retries`]).
    retries: AtomicU64,
}

impl ObjectClient {
    /// A client that learns maps from `mds` (sends on `transport`).
    pub async fn new(
        transport: Transport,
        mds: Arc<MdsClient>,
    ) -> Result<ObjectClient, ClientError> {
        ObjectClient::with_maps(transport, mds).await
    }

    /// A client that learns maps from `maps` (sends on `transport`).
    pub async fn with_maps(
        transport: Transport,
        maps: Arc<dyn MapSource>,
    ) -> Result<ObjectClient, ClientError> {
        let map = maps.fetch(0).await?;
        Ok(ObjectClient {
            links: Links::new(transport.clone()),
            transport,
            maps,
            map: Mutex::new(Arc::new(map)),
            session: AtomicU64::new(0),
            barrier: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    /// How many times an operation was sent again: its primary was
    /// unreachable or no longer primary, or its PG was peering.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Sends operations for MDS session `session` from now on (OSDs refuse
    /// a session the MDS evicted).
    pub fn set_session(&self, session: u64) {
        self.session.store(session, Ordering::Relaxed);
    }

    /// Sends no operation with a map older than `epoch` (the map that
    /// fences an evicted session, so no OSD serves this client before it
    /// refuses that session).
    pub fn require_epoch(&self, epoch: u64) {
        self.barrier.fetch_max(epoch, Ordering::Relaxed);
    }

    /// Waits for a map at the barrier epoch, if the one held is older.
    async fn reach_barrier(&self) -> Result<(), ClientError> {
        let barrier = self.barrier.load(Ordering::Relaxed);
        let started = Instant::now();
        loop {
            let epoch = self.map().await.osdmap.epoch().0;
            if epoch >= barrier {
                return Ok(());
            }
            if started.elapsed() > OP_DEADLINE {
                let problem = format!("no map at epoch {barrier}");
                return Err(ClientError::Timeout(OP_DEADLINE, problem));
            }
            self.refresh(epoch).await?;
        }
    }

    /// A client with the key and MDS members `cluster.json` names.
    pub async fn connect(cluster: &ClusterConfig) -> Result<ObjectClient, ClientError> {
        let (transport, mds) = cluster
            .connect()
            .await
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        ObjectClient::new(transport, Arc::new(mds)).await
    }

    /// Closes the client's endpoint.
    pub async fn close(&self) {
        self.transport.close().await;
    }

    pub async fn map(&self) -> Arc<ClusterMap> {
        self.map.lock().await.clone()
    }

    /// Waits for a map newer than the one held (the MDS answers at once if
    /// there is one, and after its long-poll wait otherwise).
    async fn refresh(&self, seen: u64) -> Result<(), ClientError> {
        let map = self.maps.fetch(seen).await?;
        self.adopt(map).await;
        Ok(())
    }

    /// Keeps `map` if it is newer than the one held.
    async fn adopt(&self, map: ClusterMap) {
        let mut held = self.map.lock().await;
        if map.osdmap.epoch() > held.osdmap.epoch() {
            *held = Arc::new(map);
        }
    }

    async fn link(&self, map: &ClusterMap, osd: OsdId) -> Result<Arc<RpcClient>, String> {
        self.links.get(map, osd)
    }

    /// Sends one operation to the object's primary, following map changes
    /// (every attempt sends `body` itself, not a copy).
    pub async fn op(
        &self,
        object: &ObjectRef,
        op: ObjectOp,
        body: Bytes,
    ) -> Result<(OsdResponse, Vec<u8>), ClientError> {
        self.reach_barrier().await?;
        let started = Instant::now();
        loop {
            let map = self.map().await;
            let epoch = map.osdmap.epoch().0;
            // Whether a newer map is what the retry needs (a PG that is
            // peering just needs time).
            let (problem, needs_map) = match self.attempt(&map, object, &op, body.clone()).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(OsdError::NotPrimary { epoch: theirs })) => {
                    (format!("not the primary at epoch {theirs}"), true)
                }
                Ok(Err(OsdError::Unavailable(why))) => (why, false),
                Ok(Err(final_error)) => return Err(final_error.into()),
                Err(unreachable) => (unreachable, true),
            };
            if started.elapsed() > OP_DEADLINE {
                return Err(ClientError::Timeout(OP_DEADLINE, problem));
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RETRY_PAUSE).await;
            if needs_map {
                self.refresh(epoch).await?;
            } else {
                // A failed replica is marked down by a newer map: take it
                // if there is one, without waiting for it.
                self.refresh_if_newer().await;
            }
        }
    }

    /// Takes a newer map if the MDS has one now.
    pub async fn refresh_map(&self) {
        self.refresh_if_newer().await
    }

    async fn refresh_if_newer(&self) {
        let epoch = self.map().await.osdmap.epoch().0;
        if let Ok(Ok(map)) = tokio::time::timeout(RETRY_PAUSE, self.maps.fetch(epoch)).await {
            self.adopt(map).await;
        }
    }

    /// One try: `Err` when the primary could not be reached.
    async fn attempt(
        &self,
        map: &ClusterMap,
        object: &ObjectRef,
        op: &ObjectOp,
        body: Bytes,
    ) -> Result<Result<(OsdResponse, Vec<u8>), OsdError>, String> {
        let pg = map
            .osdmap
            .object_pg(object.pool, &object.name)
            .map_err(|e| e.to_string())?;
        let primary = map
            .osdmap
            .pg_mapping(pg)
            .map_err(|e| e.to_string())?
            .acting_primary
            .ok_or_else(|| format!("{pg:?} has no primary"))?;
        let moved = match op {
            ObjectOp::Read { len, .. } => *len,
            _ => body.len() as u64,
        };
        let client = self.links.get_for(map, primary, moved)?;
        let request = OsdRequest::Op {
            object: object.clone(),
            epoch: map.osdmap.epoch().0,
            op: op.clone(),
            session: self.session.load(Ordering::Relaxed),
        };
        match client
            .call_within::<_, OsdResponse>(ATTEMPT_TIMEOUT, &request, body)
            .await
        {
            Ok((OsdResponse::Failed(error), _)) => Ok(Err(error)),
            Ok(answer) => Ok(Ok(answer)),
            Err(error) => Err(format!("osd.{}: {error}", primary.0)),
        }
    }

    fn object(pool: PoolId, name: &[u8]) -> ObjectRef {
        ObjectRef {
            pool,
            name: name.to_vec(),
        }
    }

    async fn mutation(
        &self,
        pool: PoolId,
        name: &[u8],
        op: ObjectOp,
        body: Bytes,
    ) -> Result<ObjectInfo, ClientError> {
        match self.op(&ObjectClient::object(pool, name), op, body).await? {
            (OsdResponse::Done(info), _) => Ok(info),
            (other, _) => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn write(
        &self,
        pool: PoolId,
        name: &[u8],
        offset: u64,
        data: Bytes,
    ) -> Result<ObjectInfo, ClientError> {
        self.mutation(pool, name, ObjectOp::Write { offset }, data)
            .await
    }

    /// Writes `data` as pieces at each `(offset, len)` of `extents`, in
    /// one op (at most [`aspen_proto::osd::MAX_WRITE_EXTENTS`] pieces).
    pub async fn write_extents(
        &self,
        pool: PoolId,
        name: &[u8],
        extents: Vec<(u64, u64)>,
        data: Bytes,
    ) -> Result<ObjectInfo, ClientError> {
        self.mutation(pool, name, ObjectOp::WriteExtents { extents }, data)
            .await
    }

    pub async fn truncate(
        &self,
        pool: PoolId,
        name: &[u8],
        size: u64,
    ) -> Result<ObjectInfo, ClientError> {
        self.mutation(pool, name, ObjectOp::Truncate { size }, Bytes::new())
            .await
    }

    pub async fn zero(
        &self,
        pool: PoolId,
        name: &[u8],
        offset: u64,
        len: u64,
    ) -> Result<ObjectInfo, ClientError> {
        self.mutation(pool, name, ObjectOp::Zero { offset, len }, Bytes::new())
            .await
    }

    pub async fn delete(&self, pool: PoolId, name: &[u8]) -> Result<(), ClientError> {
        self.mutation(pool, name, ObjectOp::Delete, Bytes::new())
            .await
            .map(drop)
    }

    /// Up to `len` bytes at `offset` (fewer at the end; holes are zeros).
    pub async fn read(
        &self,
        pool: PoolId,
        name: &[u8],
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        match self
            .op(
                &ObjectClient::object(pool, name),
                ObjectOp::Read { offset, len },
                Bytes::new(),
            )
            .await?
        {
            (OsdResponse::Data, bytes) => Ok(bytes),
            (other, _) => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn stat(&self, pool: PoolId, name: &[u8]) -> Result<Option<ObjectInfo>, ClientError> {
        match self
            .op(
                &ObjectClient::object(pool, name),
                ObjectOp::Stat,
                Bytes::new(),
            )
            .await?
        {
            (OsdResponse::Stat(info), _) => Ok(info),
            (other, _) => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Scrubs `pg` at its primary (admin keys only), repairing when asked.
    pub async fn scrub(
        &self,
        pg: aspen_placement::PgId,
        deep: bool,
        repair: bool,
    ) -> Result<ScrubReport, ClientError> {
        let map = self.map().await;
        let primary = map
            .osdmap
            .pg_mapping(pg)
            .map_err(|e| ClientError::Unexpected(e.to_string()))?
            .acting_primary
            .ok_or_else(|| ClientError::Unexpected(format!("{pg:?} has no primary")))?;
        let client = self
            .link(&map, primary)
            .await
            .map_err(ClientError::Unexpected)?;
        let request = OsdRequest::Scrub { pg, deep, repair };
        match client
            .call_within::<_, OsdResponse>(SCRUB_TIMEOUT, &request, Bytes::new())
            .await
        {
            Ok((OsdResponse::Scrubbed(report), _)) => Ok(report),
            Ok((OsdResponse::Failed(error), _)) => Err(error.into()),
            Ok((other, _)) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Err(error) => Err(ClientError::Unexpected(error.to_string())),
        }
    }

    /// The objects OSD `osd` holds for `pg` (to check where data lives).
    pub async fn list_pg(
        &self,
        osd: OsdId,
        pg: aspen_placement::PgId,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let map = self.map().await;
        let client = self
            .link(&map, osd)
            .await
            .map_err(ClientError::Unexpected)?;
        match client
            .call::<_, OsdResponse>(&OsdRequest::ListPg { pg }, Bytes::new())
            .await
        {
            Ok((OsdResponse::Names(names), _)) => Ok(names),
            Ok((OsdResponse::Failed(error), _)) => Err(error.into()),
            Ok((other, _)) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Err(error) => Err(ClientError::Unexpected(error.to_string())),
        }
    }
}

/// The first cluster map newer than `newer_than` (the MDS answers at
/// once if it has one, else after its long-poll wait with the current one).
pub(crate) async fn fetch_map(mds: &MdsClient, newer_than: u64) -> Result<ClusterMap, ClientError> {
    match mds.call(&MdsRequest::GetClusterMap { newer_than }).await {
        Ok(MdsResponse::ClusterMap(map)) => Ok(*map),
        Ok(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
        Err(error) => Err(ClientError::Unexpected(error.to_string())),
    }
}

/// How many object operations one multi-object call keeps in flight.
pub const MAX_OPS_IN_FLIGHT: usize = 32;

/// Runs `ops` with at most [`MAX_OPS_IN_FLIGHT`] at once, handing each
/// result to `done` as it finishes; the first failure is the answer.
pub async fn run_bounded<T, F>(
    ops: impl IntoIterator<Item = F>,
    mut done: impl FnMut(T) -> Result<(), ClientError>,
) -> Result<(), ClientError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, ClientError>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut finish = |joined: Result<Result<T, ClientError>, tokio::task::JoinError>| {
        done(joined.map_err(|e| ClientError::Unexpected(e.to_string()))??)
    };
    for op in ops {
        tasks.spawn(op);
        if tasks.len() >= MAX_OPS_IN_FLIGHT
            && let Some(joined) = tasks.join_next().await
        {
            finish(joined)?;
        }
    }
    while let Some(joined) = tasks.join_next().await {
        finish(joined)?;
    }
    Ok(())
}

/// A missing object is already what a delete, truncate or zero wants.
pub fn ignore_missing<T>(result: Result<T, ClientError>) -> Result<(), ClientError> {
    match result {
        Ok(_) | Err(ClientError::Osd(OsdError::NotFound)) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Removes the data of file `ino` from `keep_size` up to `old_size`: the
/// object holding byte `keep_size` is cut there, the later ones deleted.
pub async fn cut_file(
    client: &Arc<ObjectClient>,
    ino: InodeId,
    layout: FileLayout,
    keep_size: u64,
    old_size: u64,
) -> Result<(), ClientError> {
    if keep_size >= old_size {
        return Ok(());
    }
    let pool = layout.pool();
    let name = |objno: u64| {
        ObjectId {
            pool,
            ino,
            objno: ObjectNo(objno),
        }
        .name()
        .into_bytes()
    };
    let mut first_deleted = keep_size / layout.object_size();
    let within = keep_size % layout.object_size();
    if within != 0 {
        ignore_missing(client.truncate(pool, &name(first_deleted), within).await)?;
        first_deleted += 1;
    }
    let deletions = (first_deleted..layout.objects_for_size(old_size)).map(|objno| {
        let (client, object) = (client.clone(), name(objno));
        async move { ignore_missing(client.delete(pool, &object).await) }
    });
    run_bounded(deletions, Ok).await
}
