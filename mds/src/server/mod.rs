//! The MDS daemon: one iroh endpoint serving the client protocol and Raft
//! traffic, the Raft node over the SQLite stores, and the steps that create
//! a group (`initialize`) or grow it (`add_member` through the client
//! protocol).

pub mod monitor;
pub mod purge;
pub mod raft_net;
pub mod reads;
pub mod revoke;
pub mod service;
pub mod sessions;
pub mod writes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aspen_proto::mds::MdsMember;
use aspen_proto::transport::{
    ALPN_MDS, ALPN_RAFT, AuthorizedKeys, EndpointId, Router, RpcProtocol, Transport,
    load_or_create_secret_key,
};
use monitor::OsdMonitor;
use raft_net::{Network, Raft, RaftService};
use reads::ReadBarrier;
use revoke::Revoker;
use service::MdsService;
use sessions::SessionClock;
use writes::WriteBatcher;

use crate::namespace::StoreError;
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{Command, Response};

/// Raft heartbeat period.
pub const HEARTBEAT_MS: u64 = 200;
/// Raft election timeout range.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (1_000, 2_000);
/// Log entries between snapshots.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 5_000;
/// Log entries kept behind a snapshot (so a slightly lagging member catches
/// up from the log rather than from a snapshot).
pub const LOG_KEPT_AFTER_SNAPSHOT: u64 = 1_000;
/// File names inside an MDS data directory.
pub const KEY_FILE: &str = "mds.key";
pub const LOG_FILE: &str = "raft-log.db";

/// Why the daemon could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Transport(#[from] aspen_proto::transport::TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("opening the raft log: {0}")]
    Log(#[from] rusqlite::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
}

/// How to run one MDS.
#[derive(Clone, Debug)]
pub struct MdsConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub raft_id: u64,
    /// Node ids allowed before the replicated registry says so (the other
    /// members, so a new group can form).
    pub peers: Vec<EndpointId>,
    /// How long a client session lives without renewal.
    pub session_timeout: Duration,
    /// How long a session may take to answer a cap revocation before it
    /// is evicted.
    pub revoke_timeout: Duration,
    /// How long an OSD may be silent before it is marked down, and then
    /// down before it is marked out.
    pub osd_grace: (Duration, Duration),
    /// Log entries between snapshots, and entries kept behind one.
    pub snapshots: (u64, u64),
}

/// A running MDS.
pub struct MdsServer {
    pub raft: Raft,
    pub transport: Transport,
    pub state: StateMachineStore,
    pub raft_id: u64,
    router: Router,
    /// The background loops (session and OSD sweeps, the purger), stopped
    /// at shutdown so nothing keeps the endpoint alive.
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// The node id of the key in `data_dir`, creating the key if needed.
pub fn node_id(data_dir: &Path) -> Result<EndpointId, ServerError> {
    Ok(load_or_create_secret_key(&data_dir.join(KEY_FILE))?.public())
}

fn raft_config(snapshots: (u64, u64)) -> Result<Arc<openraft::Config>, ServerError> {
    let config = openraft::Config {
        cluster_name: "aspen-mds".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshots.0),
        max_in_snapshot_log_to_keep: snapshots.1,
        purge_batch_size: 1,
        ..Default::default()
    };
    Ok(Arc::new(
        config
            .validate()
            .map_err(|e| ServerError::Raft(e.to_string()))?,
    ))
}

impl MdsServer {
    pub async fn start(config: MdsConfig) -> Result<MdsServer, ServerError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ServerError::Store(StoreError::Corrupt(e.to_string())))?;
        let secret = load_or_create_secret_key(&config.data_dir.join(KEY_FILE))?;
        let authorized = AuthorizedKeys::new(config.peers.iter().copied());
        let alpns = vec![ALPN_MDS.to_vec(), ALPN_RAFT.to_vec()];
        let transport = Transport::bind(secret, config.listen, alpns, authorized).await?;
        let log = LogStore::open(&config.data_dir.join(LOG_FILE), config.raft_id)?;
        let state = StateMachineStore::open(&config.data_dir)?
            .applying_durable_entries_of(log.durability());
        let network = Network::new(transport.clone(), log.durability());
        let raft = Raft::new(
            config.raft_id,
            raft_config(config.snapshots)?,
            network,
            log,
            state.clone(),
        )
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
        // From here on the allow-list follows the replicated registry, plus
        // the configured peers until they appear in it.
        let seeded = transport.authorized.clone();
        state.keep_authorized(seeded.clone())?;
        for peer in &config.peers {
            seeded.allow(*peer);
        }
        let clock = Arc::new(SessionClock::new(config.session_timeout));
        let revoker = Arc::new(Revoker::new(config.revoke_timeout));
        let mut background = vec![tokio::spawn(sessions::sweep(
            raft.clone(),
            state.clone(),
            clock.clone(),
        ))];
        let monitor = Arc::new(OsdMonitor::new(config.osd_grace.0, config.osd_grace.1));
        background.push(tokio::spawn(monitor::sweep(
            raft.clone(),
            state.clone(),
            monitor.clone(),
        )));
        background.push(tokio::spawn(purge::drain(
            raft.clone(),
            state.clone(),
            transport.clone(),
            config.raft_id,
        )));
        let service = MdsService {
            raft: raft.clone(),
            state: state.clone(),
            raft_id: config.raft_id,
            sessions: clock,
            monitor,
            reads: ReadBarrier::new(raft.clone(), service::refusal),
            writes: WriteBatcher::new(raft.clone()),
            lock_waits: Default::default(),
            revoker,
            membership_changes: Default::default(),
        };
        let router = Router::builder(transport.endpoint.clone())
            .accept(ALPN_MDS, RpcProtocol::new(&transport, Arc::new(service)))
            .accept(
                ALPN_RAFT,
                RpcProtocol::new(
                    &transport,
                    Arc::new(RaftService {
                        raft: raft.clone(),
                        seed_members: config.peers.clone(),
                    }),
                ),
            )
            .spawn();
        Ok(MdsServer {
            raft,
            transport,
            state,
            raft_id: config.raft_id,
            router,
            background,
        })
    }

    /// This member as others reach it.
    pub fn member(&self) -> MdsMember {
        MdsMember {
            node_id: self.transport.id().to_string(),
            addrs: self.transport.local_addrs(),
        }
    }

    /// Forms a new group of `members` (run once, on one of them).
    pub async fn initialize(&self, members: BTreeMap<u64, MdsMember>) -> Result<(), ServerError> {
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ServerError::Raft(e.to_string()))
    }

    /// Waits until the group has a leader and returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ServerError> {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(leader) = metrics.borrow_and_update().current_leader {
                    return leader;
                }
                if metrics.changed().await.is_err() {
                    return u64::MAX;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(leader) if leader != u64::MAX => Ok(leader),
            _ => Err(ServerError::NoLeader(timeout)),
        }
    }

    /// Replicates a command through this member, which must lead.
    pub async fn propose(&self, command: Command) -> Result<Response, ServerError> {
        let written = self
            .raft
            .client_write(command)
            .await
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        Ok(written.data)
    }

    /// Stops serving and stops the Raft node.
    pub async fn shutdown(self) {
        for task in &self.background {
            task.abort();
        }
        // Gone before this returns, with the database handles they hold
        // (the databases are opened exclusively).
        for task in self.background {
            let _ = task.await;
        }
        let _ = self.router.shutdown().await;
        let _ = self.raft.shutdown().await;
        self.transport.close().await;
    }
}
