//! The Raft state machine in SQLite: the namespace tables plus the last
//! applied log id and membership, all changed in one transaction per batch
//! of entries, so a crash never separates "applied" from its effects.
//!
//! Snapshots are SQLite backups of the whole database (openraft ships the
//! file to a lagging member, which restores it with SQLite's backup API).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::log_store::DurableLog;
use super::{
    Command, Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, decode, encode, replies,
};
use aspen_placement::crush::{CrushMap, DEFAULT_ROOT};
use aspen_placement::{Change, OsdId, OsdMap, PgId, Pool};
use aspen_proto::caps::{CapOp, CapReply, Revoke};
use aspen_proto::fs::{Caller, Timestamp};
use aspen_proto::lock::Lock;
use aspen_proto::mds::{ClusterMap, KeyEntry, NsOp, OsdAddress, SessionId};
use aspen_proto::transport::{AuthorizedKeys, EndpointId};
use aspen_proto::{Errno, InodeId};

use crate::caps::{CapOutcome, HeldCap};
use crate::locks;
use crate::namespace::{self, Namespace, OpContext, StoreError};
use crate::sql::{CachedStatements, durable_checkpoint};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sm_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, node_id TEXT NOT NULL UNIQUE, role BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id INTEGER PRIMARY KEY, client TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS osd_addresses (osd INTEGER PRIMARY KEY, address BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS locks (ino INTEGER NOT NULL, session INTEGER NOT NULL, lock BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS locks_by_ino ON locks (ino);
CREATE INDEX IF NOT EXISTS locks_by_session ON locks (session);
CREATE TABLE IF NOT EXISTS pg_holders (pool INTEGER NOT NULL, seed INTEGER NOT NULL, holders BLOB NOT NULL, PRIMARY KEY (pool, seed));
";
const OSDMAP: &str = "osdmap";
const NEXT_SESSION: &str = "next_session";
/// The OSD map epoch that blocklisted the last evicted session.
const EPOCH_BARRIER: &str = "epoch_barrier";
const FSID: &str = "fsid";
const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
const STATE_FILE: &str = "state.db";
const SNAPSHOT_DIR: &str = "snapshots";

fn sm_error(verb: ErrorVerb, error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&error)).into()
}

fn snapshot_error(verb: ErrorVerb, error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&error)).into()
}

/// The snapshot files kept on disk: `<id>.db` and its `<id>.meta`.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    path: PathBuf,
}

struct Inner {
    namespace: Namespace,
    /// The endpoint allow-list kept equal to registered keys plus members.
    authorized: Option<AuthorizedKeys>,
    current: Option<StoredSnapshot>,
    receiving: Option<PathBuf>,
    snapshots_built: u64,
    /// Log entries applied since the last durable checkpoint.
    applied_since_checkpoint: u64,
}

impl Drop for Inner {
    /// SQLite checkpoints on close without syncing at `synchronous = OFF`
    /// and then deletes the log: leave nothing for it to copy.
    fn drop(&mut self) {
        if let Err(error) = durable_checkpoint(self.namespace.connection()) {
            tracing::warn!(%error, "state machine final checkpoint failed");
        }
    }
}

/// Applied log entries between two durable checkpoints of the database.
pub const CHECKPOINT_EVERY_ENTRIES: u64 = 1024;

/// The state machine store. Clones share the database.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<Inner>>,
    snapshot_dir: PathBuf,
    epoch: Arc<tokio::sync::watch::Sender<u64>>,
    /// Counts applied entries that may have freed an advisory lock.
    locks_changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Counts applied entries that may have changed who holds which cap.
    caps_changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// The member's log: no entry is applied before it is durable there.
    log: Option<DurableLog>,
}

impl StateMachineStore {
    /// Has every apply wait until its entries are durable in `log`, which a
    /// leader reports durable before they are (see
    /// [`super::log_store`]).
    pub fn applying_durable_entries_of(mut self, log: DurableLog) -> StateMachineStore {
        self.log = Some(log);
        self
    }

    /// Opens (creating if needed) the state machine kept in `dir`.
    pub fn open(dir: &Path) -> Result<StateMachineStore, StoreError> {
        let snapshot_dir = dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| {
            StoreError::Corrupt(format!("creating {}: {e}", snapshot_dir.display()))
        })?;
        let namespace = Namespace::open(&dir.join(STATE_FILE))?;
        // Applying need not wait for the disk: the Raft log is durable, and
        // after a crash openraft re-applies from the last applied id this
        // database kept. Durable checkpoints bound how far back that is, and
        // one runs before a snapshot lets the log be purged.
        namespace
            .connection()
            .pragma_update(None, "synchronous", "OFF")?;
        namespace
            .connection()
            .pragma_update(None, "wal_autocheckpoint", 0)?;
        namespace.connection().execute_batch(SCHEMA)?;
        namespace.connection().execute_batch(replies::SCHEMA)?;
        let current = newest_snapshot(&snapshot_dir);
        let epoch = load_osdmap(namespace.connection())?.epoch().0;
        Ok(StateMachineStore {
            log: None,
            epoch: Arc::new(tokio::sync::watch::channel(epoch).0),
            locks_changed: Arc::new(tokio::sync::watch::channel(0).0),
            caps_changed: Arc::new(tokio::sync::watch::channel(0).0),
            inner: Arc::new(Mutex::new(Inner {
                namespace,
                authorized: None,
                current,
                receiving: None,
                snapshots_built: 0,
                applied_since_checkpoint: 0,
            })),
            snapshot_dir,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a read against the namespace as applied so far.
    pub fn read<T>(&self, read: impl FnOnce(&Namespace) -> T) -> T {
        read(&self.lock().namespace)
    }

    /// The key registry.
    pub fn keys(&self) -> Result<Vec<KeyEntry>, StoreError> {
        load_keys(self.lock().namespace.connection())
    }

    /// Open sessions and the node id of the client that owns each.
    pub fn sessions(&self) -> Result<Vec<(SessionId, String)>, StoreError> {
        let inner = self.lock();
        let mut statement = inner
            .namespace
            .connection()
            .prepare_cached("SELECT id, client FROM sessions ORDER BY id")?;
        let rows = statement.query_map([], |r| {
            Ok((
                SessionId(r.get::<_, i64>(0)? as u64),
                r.get::<_, String>(1)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The node id of the client that owns `session`, if it is open.
    pub fn session_owner(&self, session: SessionId) -> Result<Option<String>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .namespace
            .connection()
            .query_row_cached(
                "SELECT client FROM sessions WHERE id = ?1",
                [session.0 as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The cluster map: the OSD map and the OSDs' addresses.
    pub fn cluster_map(&self) -> Result<ClusterMap, StoreError> {
        let inner = self.lock();
        let conn = inner.namespace.connection();
        let osdmap = load_osdmap(conn)?;
        let mut statement =
            conn.prepare_cached("SELECT address FROM osd_addresses ORDER BY osd")?;
        let rows = statement.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut addresses = Vec::new();
        for row in rows {
            addresses
                .push(decode(&row?).map_err(|e| StoreError::Corrupt(format!("osd address: {e}")))?);
        }
        let keys = load_keys(conn)?;
        Ok(ClusterMap {
            osdmap,
            addresses,
            keys,
        })
    }

    /// The advisory locks held on `ino`.
    pub fn locks(&self, ino: InodeId) -> Result<Vec<Lock>, StoreError> {
        load_locks(self.lock().namespace.connection(), ino)
    }

    /// The OSDs that held `pg` complete when it last went active.
    pub fn pg_holders(&self, pg: PgId) -> Result<Vec<OsdId>, StoreError> {
        let inner = self.lock();
        let bytes: Option<Vec<u8>> = inner
            .namespace
            .connection()
            .query_row_cached(
                "SELECT holders FROM pg_holders WHERE pool = ?1 AND seed = ?2",
                params![pg.pool.0, pg.seed],
                |r| r.get(0),
            )
            .optional()?;
        match bytes {
            Some(bytes) => {
                decode(&bytes).map_err(|e| StoreError::Corrupt(format!("pg holders: {e}")))
            }
            None => Ok(Vec::new()),
        }
    }

    /// Moves whenever applied entries may have freed an advisory lock.
    pub fn watch_locks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.locks_changed.subscribe()
    }

    /// Moves whenever applied entries may have changed caps.
    pub fn watch_caps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.caps_changed.subscribe()
    }

    /// The cap `session` holds on `ino`.
    pub fn cap_of(&self, session: SessionId, ino: InodeId) -> Result<Option<HeldCap>, StoreError> {
        let inner = self.lock();
        let held = namespace::caps::held(inner.namespace.connection(), ino)?;
        Ok(held.into_iter().find(|cap| cap.session == session))
    }

    /// Runs `read` and names the caps of other sessions that buffer
    /// changes to the inodes it reports reading, in one look at the state.
    pub fn read_checked<T>(
        &self,
        read: impl FnOnce(&Namespace) -> Result<(T, Vec<InodeId>), StoreError>,
    ) -> Result<(T, Vec<(SessionId, Revoke)>), StoreError> {
        let inner = self.lock();
        let (value, inodes) = read(&inner.namespace)?;
        let conflicts = namespace::caps::read_conflicts(inner.namespace.connection(), &inodes)?;
        Ok((value, conflicts))
    }

    /// Follows the OSD map's epoch as entries apply.
    pub fn watch_epoch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// The filesystem id, once set.
    pub fn fsid(&self) -> Result<Option<String>, StoreError> {
        let conn = &self.lock().namespace;
        let bytes: Option<Vec<u8>> = conn
            .connection()
            .query_row_cached("SELECT value FROM sm_meta WHERE key = ?1", [FSID], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Tells map watchers the OSD map epoch of a restored snapshot.
    fn publish_epoch(&self, inner: &Inner) {
        if let Ok(map) = load_osdmap(inner.namespace.connection()) {
            self.epoch
                .send_if_modified(|epoch| std::mem::replace(epoch, map.epoch().0) != map.epoch().0);
        }
    }

    /// Keeps `authorized` equal to the registered keys and the group's
    /// members from now on.
    pub fn keep_authorized(&self, authorized: AuthorizedKeys) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.authorized = Some(authorized);
        refresh_authorized(&inner)
    }
}

/// Rewrites the allow-list from the registry and the membership.
fn refresh_authorized(inner: &Inner) -> Result<(), StoreError> {
    let Some(authorized) = &inner.authorized else {
        return Ok(());
    };
    let conn = inner.namespace.connection();
    let mut ids: Vec<String> = load_keys(conn)?.into_iter().map(|k| k.node_id).collect();
    let membership: StoredMembership = read_meta(conn, MEMBERSHIP)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .unwrap_or_default();
    ids.extend(
        membership
            .membership()
            .nodes()
            .map(|(_, node)| node.node_id.clone()),
    );
    authorized.replace(ids.iter().filter_map(|id| id.parse::<EndpointId>().ok()));
    Ok(())
}

impl StateMachineStore {
    /// The path of a complete, durable copy of a received snapshot. Usually
    /// `snapshot` is the file [`RaftStateMachine::begin_receiving_snapshot`]
    /// handed out; any other file is copied first.
    async fn take_received_file(
        &self,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<PathBuf, StorageError> {
        use std::os::unix::fs::MetadataExt;
        use tokio::io::AsyncSeekExt;
        let write_error = |e| snapshot_error(ErrorVerb::Write, e);
        let receiving = self.lock().receiving.take();
        let received_inode = snapshot.metadata().await.map_err(write_error)?.ino();
        if let Some(path) = &receiving
            && std::fs::metadata(path).is_ok_and(|m| m.ino() == received_inode)
        {
            snapshot.sync_all().await.map_err(write_error)?;
            return Ok(path.clone());
        }
        if let Some(path) = receiving {
            let _ = std::fs::remove_file(path);
        }
        let path = self
            .snapshot_dir
            .join(format!("installing-{received_inode}.db"));
        let mut copy = tokio::fs::File::create(&path).await.map_err(write_error)?;
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(write_error)?;
        tokio::io::copy(&mut *snapshot, &mut copy)
            .await
            .map_err(write_error)?;
        copy.sync_all().await.map_err(write_error)?;
        Ok(path)
    }
}

/// The snapshot with the highest log id among `<id>.meta` files.
fn newest_snapshot(dir: &Path) -> Option<StoredSnapshot> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "meta"))
        .filter_map(|e| {
            let meta: SnapshotMeta = decode(&std::fs::read(e.path()).ok()?).ok()?;
            let path = e.path().with_extension("db");
            path.exists().then_some(StoredSnapshot { meta, path })
        })
        .max_by_key(|s| s.meta.last_log_id)
}

fn read_meta<T: for<'de> serde::Deserialize<'de>>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let bytes: Option<Vec<u8>> = conn
        .query_row_cached("SELECT value FROM sm_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| sm_error(ErrorVerb::Read, e))?;
    bytes
        .map(|b| decode(&b).map_err(|e| sm_error(ErrorVerb::Read, e)))
        .transpose()
}

fn write_meta<T: serde::Serialize>(
    conn: &Connection,
    key: &str,
    value: &T,
) -> Result<(), StorageError> {
    let bytes = encode(value).map_err(|e| sm_error(ErrorVerb::Write, e))?;
    conn.execute_cached(
        "INSERT INTO sm_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
        params![key, bytes],
    )
    .map_err(|e| sm_error(ErrorVerb::Write, e))?;
    Ok(())
}

fn applied(conn: &Connection) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let last = read_meta::<Option<LogId>>(conn, LAST_APPLIED)?.flatten();
    let membership = read_meta(conn, MEMBERSHIP)?.unwrap_or_default();
    Ok((last, membership))
}

/// Ends `session` with its handles, caps, locks and remembered replies;
/// false if it was not open.
fn close_session(conn: &Connection, session: SessionId) -> Result<bool, StoreError> {
    let removed = conn.execute_cached("DELETE FROM sessions WHERE id = ?1", [session.0 as i64])?;
    if removed == 0 {
        return Ok(false);
    }
    conn.execute_cached("DELETE FROM locks WHERE session = ?1", [session.0 as i64])?;
    let end = NsOp::EndSession { session };
    let ctx = OpContext {
        caller: Caller::root(),
        now: Timestamp::default(),
        session,
    };
    namespace::apply_within(conn, &end, &ctx)?.map_err(|e| StoreError::Corrupt(e.to_string()))?;
    replies::forget(conn, session)?;
    Ok(true)
}

/// Applies a request under capabilities; a mutation with a request id is
/// answered from the reply cache when it was applied before (without
/// grants: the client caches nothing from a repeated answer).
fn apply_cap(
    conn: &Connection,
    op: &CapOp,
    ctx: &OpContext,
    request: u64,
    version: u64,
) -> Result<Response, StoreError> {
    let barrier = read_counter(conn, EPOCH_BARRIER)?.unwrap_or(0);
    let cached = request != 0 && matches!(op, CapOp::Mutate(_) | CapOp::MutateMany(_));
    if cached && let Some(result) = replies::recall(conn, ctx.session, request)? {
        let reply = CapReply {
            result,
            grants: Vec::new(),
            attrs: Vec::new(),
            version,
            barrier,
        };
        return Ok(Response::Cap(CapOutcome::Answer(reply)));
    }
    let mut outcome = namespace::caps::apply(conn, op, ctx, version)?;
    if let CapOutcome::Answer(reply) = &mut outcome {
        reply.barrier = barrier;
        if cached {
            replies::remember(conn, ctx.session, request, &reply.result)?;
        }
    }
    Ok(Response::Cap(outcome))
}

/// Applies one command inside the batch transaction, at `version`.
fn apply_command(
    conn: &Connection,
    command: &Command,
    version: u64,
) -> Result<Response, StoreError> {
    match command {
        Command::Namespace { op, ctx, request } => {
            let cached = *request != 0;
            if cached && let Some(reply) = replies::recall(conn, ctx.session, *request)? {
                return Ok(Response::Namespace(reply));
            }
            let reply = match namespace::caps::mutate(conn, op, ctx, false, version)? {
                CapOutcome::Answer(answer) => answer.result,
                conflict => return Ok(Response::Cap(conflict)),
            };
            if cached {
                replies::remember(conn, ctx.session, *request, &reply)?;
            }
            Ok(Response::Namespace(reply))
        }
        Command::Cap { op, ctx, request } => apply_cap(conn, op, ctx, *request, version),
        Command::Evict(session) => {
            let closed = close_session(conn, *session)?;
            let response = change_map(conn, vec![Change::Blocklist { session: session.0 }])?;
            if let Response::Epoch(Ok(epoch)) = &response {
                write_counter(conn, EPOCH_BARRIER, *epoch)?;
            }
            if !closed {
                return Ok(Response::Epoch(Err(format!("no session {}", session.0))));
            }
            Ok(response)
        }
        Command::Batch(commands) => commands
            .iter()
            .enumerate()
            .map(|(position, command)| {
                apply_command(conn, command, super::version(version >> 16, position))
            })
            .collect::<Result<_, _>>()
            .map(Response::Batch),
        Command::SetFsid(fsid) => {
            conn.execute_cached(
                "INSERT OR IGNORE INTO sm_meta (key, value) VALUES (?1, ?2)",
                params![FSID, fsid.as_bytes()],
            )?;
            Ok(Response::Done(Ok(())))
        }
        Command::AddKey(entry) => {
            let role = encode(&entry.role).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let added = conn.execute_cached(
                "INSERT OR IGNORE INTO keys (name, node_id, role) VALUES (?1, ?2, ?3)",
                params![entry.name, entry.node_id, role],
            )?;
            Ok(Response::Done(if added == 1 {
                Ok(())
            } else {
                Err(Errno::EEXIST)
            }))
        }
        Command::RemoveKey(name) => {
            let removed = conn.execute_cached("DELETE FROM keys WHERE name = ?1", [name])?;
            Ok(Response::Done(if removed == 1 {
                Ok(())
            } else {
                Err(Errno::ENOENT)
            }))
        }
        Command::OpenSession { client } => {
            let id = next_session(conn)?;
            conn.execute_cached(
                "INSERT INTO sessions (id, client) VALUES (?1, ?2)",
                params![id.0 as i64, client],
            )?;
            Ok(Response::Session(id))
        }
        Command::CloseSession(session) => Ok(Response::Done(if close_session(conn, *session)? {
            Ok(())
        } else {
            Err(Errno::ENOENT)
        })),
        Command::PurgeDone(seq) => {
            conn.execute_cached("DELETE FROM purge_queue WHERE seq <= ?1", [*seq as i64])?;
            Ok(Response::Done(Ok(())))
        }
        Command::ClusterChanges(changes) => change_map(conn, changes.clone()),
        Command::SetLock { ino, request } => {
            let mut held = load_locks(conn, *ino)?;
            let granted = locks::apply(&mut held, request);
            if granted.is_ok() {
                store_locks(conn, *ino, &held)?;
            }
            Ok(Response::Lock(granted))
        }
        Command::ReleaseLocks { ino, owner, flavor } => {
            let mut held = load_locks(conn, *ino)?;
            locks::release_owner(&mut held, *owner, *flavor);
            store_locks(conn, *ino, &held)?;
            Ok(Response::Done(Ok(())))
        }
        Command::PgActivated { pg, holders } => {
            let bytes = encode(holders).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            conn.execute_cached(
                "INSERT INTO pg_holders (pool, seed, holders) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (pool, seed) DO UPDATE SET holders = ?3",
                params![pg.pool.0, pg.seed, bytes],
            )?;
            Ok(Response::Done(Ok(())))
        }
        Command::PgBackfilled { osd, pg, up } => {
            let map = load_osdmap(conn)?;
            let current = map.pg_mapping(*pg).ok();
            let still = current.is_some_and(|m| m.acting_primary == Some(*osd) && m.up == *up)
                && map.pg_temp().contains_key(pg);
            if !still {
                return Ok(Response::Epoch(Err(format!(
                    "{pg:?} moved since osd.{} backfilled it",
                    osd.0
                ))));
            }
            change_map(
                conn,
                vec![Change::SetPgTemp {
                    pg: *pg,
                    osds: Vec::new(),
                }],
            )
        }
        Command::OsdBoot {
            osd,
            node_id,
            addrs,
            host,
            weight,
            capacity,
        } => {
            let map = load_osdmap(conn)?;
            let mut changes = Vec::new();
            if map.crush().bucket(host).is_none() {
                changes.push(Change::AddBucket {
                    name: host.clone(),
                    ty: "host".into(),
                    parent: DEFAULT_ROOT.into(),
                });
            }
            if map.osd(*osd).is_err() {
                changes.push(Change::AddOsd {
                    id: *osd,
                    weight: *weight,
                    host: host.clone(),
                });
            }
            changes.push(Change::MarkUp { id: *osd });
            let address = OsdAddress {
                osd: *osd,
                node_id: node_id.clone(),
                addrs: addrs.clone(),
                capacity: *capacity,
            };
            let bytes = encode(&address).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let response = change_map(conn, changes)?;
            if matches!(response, Response::Epoch(Ok(_))) {
                conn.execute_cached(
                    "INSERT INTO osd_addresses (osd, address) VALUES (?1, ?2) ON CONFLICT (osd) DO UPDATE SET address = ?2",
                    params![osd.0, bytes],
                )?;
            }
            Ok(response)
        }
    }
}

/// The OSD map (an empty one with the default CRUSH map before the first change).
fn load_osdmap(conn: &Connection) -> Result<OsdMap, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .query_row_cached("SELECT value FROM sm_meta WHERE key = ?1", [OSDMAP], |r| {
            r.get(0)
        })
        .optional()?;
    match bytes {
        Some(bytes) => decode(&bytes).map_err(|e| StoreError::Corrupt(format!("osd map: {e}"))),
        None => OsdMap::new(CrushMap::new()).map_err(|e| StoreError::Corrupt(e.to_string())),
    }
}

/// Applies `changes` as one new epoch, with the `pg_temp` entries that
/// keep moved PGs on their holders until they are backfilled; a refused
/// change leaves the map.
fn change_map(conn: &Connection, changes: Vec<Change>) -> Result<Response, StoreError> {
    let pools_renewed: Vec<u32> = changes
        .iter()
        .filter_map(|change| match change {
            Change::AddPool {
                pool: Pool { id, .. },
            }
            | Change::RemovePool { id } => Some(id.0),
            _ => None,
        })
        .collect();
    let (next, _) = match load_osdmap(conn)?.change_priming_pg_temp(changes) {
        Ok(changed) => changed,
        Err(error) => return Ok(Response::Epoch(Err(error.to_string()))),
    };
    // A new or removed pool starts with no PG history.
    for pool in pools_renewed {
        conn.execute_cached("DELETE FROM pg_holders WHERE pool = ?1", [pool])?;
    }
    let bytes = encode(&next).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.execute_cached(
        "INSERT INTO sm_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
        params![OSDMAP, bytes],
    )?;
    Ok(Response::Epoch(Ok(next.epoch().0)))
}

/// The advisory locks held on `ino`.
fn load_locks(conn: &Connection, ino: InodeId) -> Result<Vec<Lock>, StoreError> {
    let mut statement = conn.prepare_cached("SELECT lock FROM locks WHERE ino = ?1")?;
    let rows = statement.query_map([ino.0 as i64], |r| r.get::<_, Vec<u8>>(0))?;
    let mut held = Vec::new();
    for row in rows {
        held.push(decode(&row?).map_err(|e| StoreError::Corrupt(format!("lock: {e}")))?);
    }
    Ok(held)
}

/// Replaces the advisory locks held on `ino`.
fn store_locks(conn: &Connection, ino: InodeId, held: &[Lock]) -> Result<(), StoreError> {
    conn.execute_cached("DELETE FROM locks WHERE ino = ?1", [ino.0 as i64])?;
    for lock in held {
        let bytes = encode(lock).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        conn.execute_cached(
            "INSERT INTO locks (ino, session, lock) VALUES (?1, ?2, ?3)",
            params![ino.0 as i64, lock.owner.session as i64, bytes],
        )?;
    }
    Ok(())
}

/// Takes the next session id (ids are never reused).
fn next_session(conn: &Connection) -> Result<SessionId, StoreError> {
    let id = read_counter(conn, NEXT_SESSION)?.unwrap_or(1);
    write_counter(conn, NEXT_SESSION, id + 1)?;
    Ok(SessionId(id))
}

/// A number kept in `sm_meta`.
fn read_counter(conn: &Connection, key: &str) -> Result<Option<u64>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .query_row_cached("SELECT value FROM sm_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(bytes
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes))
}

fn write_counter(conn: &Connection, key: &str, value: u64) -> Result<(), StoreError> {
    conn.execute_cached(
        "INSERT INTO sm_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
        params![key, value.to_le_bytes().to_vec()],
    )?;
    Ok(())
}

/// Whether applying `entry` can change who may connect.
fn changes_access(entry: &Entry) -> bool {
    match &entry.payload {
        EntryPayload::Membership(_) => true,
        EntryPayload::Normal(command) => command.changes_access(),
        EntryPayload::Blank => false,
    }
}

/// The registered keys.
fn load_keys(conn: &Connection) -> Result<Vec<KeyEntry>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT name, node_id, role FROM keys ORDER BY name")?;
    let rows = statement.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut keys = Vec::new();
    for row in rows {
        let (name, node_id, role) = row?;
        let role = decode(&role).map_err(|e| StoreError::Corrupt(format!("key {name}: {e}")))?;
        keys.push(KeyEntry {
            name,
            node_id,
            role,
        });
    }
    Ok(keys)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        applied(self.lock().namespace.connection())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(log), Some(last)) = (&self.log, entries.last()) {
            log.wait_for(last.log_id)
                .await
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        }
        let mut inner = self.lock();
        let tx = inner
            .namespace
            .connection_mut()
            .transaction()
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let mut responses = Vec::new();
        let mut access_changed = false;
        let mut locks_touched = false;
        let mut caps_touched = false;
        let mut last_applied = None;
        for entry in entries {
            access_changed |= changes_access(&entry);
            caps_touched |= matches!(&entry.payload, EntryPayload::Normal(c) if c.touches_caps());
            let log_id = entry.log_id;
            let response = match &entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(command) => {
                    apply_command(&tx, command, super::version(log_id.index, 0)).map_err(|e| {
                        StorageError::from(StorageIOError::apply(log_id, AnyError::new(&e)))
                    })?
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(log_id), membership.clone());
                    write_meta(&tx, MEMBERSHIP, &stored)?;
                    Response::None
                }
            };
            last_applied = Some(log_id);
            locks_touched |= matches!(&entry.payload,
                EntryPayload::Normal(command) if command.may_free_locks(&response));
            responses.push(response);
        }
        if last_applied.is_some() {
            write_meta(&tx, LAST_APPLIED, &last_applied)?;
        }
        tx.commit().map_err(|e| sm_error(ErrorVerb::Write, e))?;
        inner.applied_since_checkpoint += responses.len() as u64;
        // The entries are in the log and snapshots checkpoint on their own:
        // a failed checkpoint here is retried with the next apply.
        if inner.applied_since_checkpoint >= CHECKPOINT_EVERY_ENTRIES {
            match durable_checkpoint(inner.namespace.connection()) {
                Ok(()) => inner.applied_since_checkpoint = 0,
                Err(error) => tracing::warn!(%error, "state machine checkpoint failed"),
            }
        }
        if access_changed {
            refresh_authorized(&inner).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        }
        let new_epoch = responses.iter().rev().find_map(|response| match response {
            Response::Epoch(Ok(epoch)) => Some(*epoch),
            _ => None,
        });
        if let Some(epoch) = new_epoch {
            self.epoch.send_replace(epoch);
        }
        if locks_touched {
            self.locks_changed.send_modify(|n| *n += 1);
        }
        if caps_touched {
            self.caps_changed.send_modify(|n| *n += 1);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let mut inner = self.lock();
        inner.snapshots_built += 1;
        let path = self
            .snapshot_dir
            .join(format!("receiving-{}.db", inner.snapshots_built));
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        inner.receiving = Some(path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let received = self.take_received_file(snapshot).await?;
        let mut inner = self.lock();
        let stored = keep_snapshot(&self.snapshot_dir, meta, &received)?;
        inner
            .namespace
            .connection_mut()
            .restore("main", &stored.path, None::<fn(rusqlite::backup::Progress)>)
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        // The log behind the snapshot may be purged next.
        durable_checkpoint(inner.namespace.connection())
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        inner.applied_since_checkpoint = 0;
        replace_current(&mut inner, stored);
        refresh_authorized(&inner).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        self.publish_epoch(&inner);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(current) = self.lock().current.clone() else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&current.path)
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Moves a snapshot file to `<id>.db` and writes its `<id>.meta`.
fn keep_snapshot(
    dir: &Path,
    meta: &SnapshotMeta,
    file: &Path,
) -> Result<StoredSnapshot, StorageError> {
    let path = dir.join(format!("{}.db", meta.snapshot_id));
    std::fs::rename(file, &path).map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
    let bytes = encode(meta).map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
    std::fs::write(path.with_extension("meta"), bytes)
        .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
    Ok(StoredSnapshot {
        meta: meta.clone(),
        path,
    })
}

/// Makes `stored` the current snapshot and deletes the previous one.
fn replace_current(inner: &mut Inner, stored: StoredSnapshot) {
    if let Some(old) = inner.current.replace(stored.clone())
        && old.path != stored.path
    {
        let _ = std::fs::remove_file(old.path.with_extension("meta"));
        let _ = std::fs::remove_file(&old.path);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let stored = {
            let mut inner = self.lock();
            let conn = inner.namespace.connection();
            let (last_log_id, last_membership) = applied(conn)?;
            inner.snapshots_built += 1;
            let snapshot_id = match last_log_id {
                Some(id) => format!(
                    "snapshot-{}-{}-{}",
                    id.leader_id.term, id.index, inner.snapshots_built
                ),
                None => format!("snapshot-empty-{}", inner.snapshots_built),
            };
            let building = self.snapshot_dir.join(format!("{snapshot_id}.building"));
            // The log up to this snapshot may be purged next: the state it
            // covers must be on disk first.
            durable_checkpoint(inner.namespace.connection())
                .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
            inner.applied_since_checkpoint = 0;
            inner
                .namespace
                .connection()
                .backup("main", &building, None::<fn(rusqlite::backup::Progress)>)
                .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            let stored = keep_snapshot(&self.snapshot_dir, &meta, &building)?;
            replace_current(&mut inner, stored.clone());
            stored
        };
        let file = tokio::fs::File::open(&stored.path)
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(file),
        })
    }
}
