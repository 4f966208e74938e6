//! Creating and growing an MDS group: what `aspen mds init`, `aspen mds`,
//! `aspen mds join` and `aspen mds remove` do. Each member's data directory
//! holds its key, its Raft stores and `member.json` (its Raft id, listen
//! address and the node ids it trusts before the registry says so).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aspen_placement::{Change, Pool, PoolId};
use aspen_proto::FileLayout;
use aspen_proto::cluster::{ClusterConfig, MdsClient, MemberEntry};
use aspen_proto::fs::{Caller, Timestamp};
use aspen_proto::mds::{
    ClusterMap, KeyEntry, MdsRequest, MdsResponse, NsOp, PgStat, Role, SessionId,
};
use aspen_proto::transport::{EndpointId, SecretKey, load_or_create_secret_key};
use serde::{Deserialize, Serialize};

use crate::namespace::OpContext;
use crate::raft::Command;
use crate::server::monitor::{OSD_DOWN_GRACE, OSD_OUT_GRACE};
use crate::server::revoke::REVOKE_TIMEOUT;
use crate::server::sessions::SESSION_TIMEOUT;
use crate::server::{
    LOG_KEPT_AFTER_SNAPSHOT, MdsConfig, MdsServer, SNAPSHOT_EVERY_ENTRIES, ServerError,
};

/// How long init and join wait for a leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);
pub const MEMBER_FILE: &str = "member.json";
pub const CLUSTER_FILE: &str = "cluster.json";
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// Mode of the root directory of a new filesystem.
pub const ROOT_MODE: u32 = 0o755;

/// Why an admin step failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("{0}")]
    Config(String),
    #[error("the MDS group refused: {0}")]
    Refused(String),
}

/// What a member remembers about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberFile {
    pub raft_id: u64,
    pub listen: SocketAddr,
    pub peers: Vec<String>,
}

fn config_error(path: &Path, e: impl std::fmt::Display) -> AdminError {
    AdminError::Config(format!("{}: {e}", path.display()))
}

impl MemberFile {
    pub fn load(data_dir: &Path) -> Result<MemberFile, AdminError> {
        let path = data_dir.join(MEMBER_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| config_error(&path, e))?;
        serde_json::from_str(&text).map_err(|e| config_error(&path, e))
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), AdminError> {
        let path = data_dir.join(MEMBER_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| config_error(&path, e))?;
        std::fs::write(&path, text).map_err(|e| config_error(&path, e))
    }

    pub fn server_config(&self, data_dir: &Path) -> MdsConfig {
        MdsConfig {
            data_dir: data_dir.to_path_buf(),
            listen: self.listen,
            raft_id: self.raft_id,
            peers: self.peers.iter().filter_map(|p| p.parse().ok()).collect(),
            session_timeout: SESSION_TIMEOUT,
            revoke_timeout: REVOKE_TIMEOUT,
            osd_grace: (OSD_DOWN_GRACE, OSD_OUT_GRACE),
            snapshots: (SNAPSHOT_EVERY_ENTRIES, LOG_KEPT_AFTER_SNAPSHOT),
        }
    }
}

/// A new filesystem id: 16 random bytes, hex.
fn new_fsid() -> String {
    let bytes = SecretKey::generate().to_bytes();
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

async fn propose_ok(server: &MdsServer, command: Command) -> Result<(), AdminError> {
    match server.propose(command).await? {
        crate::raft::Response::Done(Err(errno)) => Err(AdminError::Refused(errno.to_string())),
        crate::raft::Response::Namespace(Err(errno)) => Err(AdminError::Refused(errno.to_string())),
        _ => Ok(()),
    }
}

/// Creates a one-member group in `data_dir`: the fsid, the root directory,
/// the member's and an admin key in the registry, and `cluster.json` (which
/// connects with `admin.key`). Returns the path of `cluster.json`.
pub async fn init(data_dir: &Path, listen: SocketAddr) -> Result<PathBuf, AdminError> {
    if data_dir.join(MEMBER_FILE).exists() {
        return Err(AdminError::Config(format!(
            "{} already holds an MDS",
            data_dir.display()
        )));
    }
    let member_file = MemberFile {
        raft_id: 1,
        listen,
        peers: Vec::new(),
    };
    let server = MdsServer::start(member_file.server_config(data_dir)).await?;
    let result = bootstrap(&server, data_dir).await;
    let member = server.member();
    server.shutdown().await;
    let fsid = result?;
    member_file.save(data_dir)?;
    let cluster = ClusterConfig {
        fsid,
        mds: vec![MemberEntry { raft_id: 1, member }],
        key: PathBuf::from(ADMIN_KEY_FILE),
    };
    let path = data_dir.join(CLUSTER_FILE);
    cluster
        .save(&path)
        .map_err(|e| AdminError::Config(e.to_string()))?;
    Ok(path)
}

async fn bootstrap(server: &MdsServer, data_dir: &Path) -> Result<String, AdminError> {
    server
        .initialize(BTreeMap::from([(1, server.member())]))
        .await?;
    server.wait_for_leader(LEADER_WAIT).await?;
    let fsid = new_fsid();
    let admin =
        load_or_create_secret_key(&data_dir.join(ADMIN_KEY_FILE)).map_err(ServerError::from)?;
    propose_ok(server, Command::SetFsid(fsid.clone())).await?;
    let mds_key = KeyEntry {
        name: "mds.1".into(),
        node_id: server.member().node_id,
        role: Role::Mds,
    };
    propose_ok(server, Command::AddKey(mds_key)).await?;
    let admin_key = KeyEntry {
        name: "client.admin".into(),
        node_id: admin.public().to_string(),
        role: Role::Admin,
    };
    propose_ok(server, Command::AddKey(admin_key)).await?;
    let ctx = OpContext {
        caller: Caller::root(),
        now: Timestamp::now(),
        session: SessionId(0),
    };
    let format = NsOp::Format {
        mode: ROOT_MODE,
        uid: 0,
        gid: 0,
        layout: FileLayout::default(),
    };
    propose_ok(
        server,
        Command::Namespace {
            op: format,
            ctx,
            request: 0,
        },
    )
    .await?;
    Ok(fsid)
}

/// Changes the address the member in `data_dir` listens on.
pub fn set_listen(data_dir: &Path, listen: SocketAddr) -> Result<(), AdminError> {
    let mut member_file = MemberFile::load(data_dir)?;
    member_file.listen = listen;
    member_file.save(data_dir)
}

/// Starts the member kept in `data_dir`.
pub async fn run(data_dir: &Path) -> Result<MdsServer, AdminError> {
    let member_file = MemberFile::load(data_dir)?;
    Ok(MdsServer::start(member_file.server_config(data_dir)).await?)
}

/// A client of the group in `cluster`, with its configured key.
pub async fn client(cluster: &ClusterConfig) -> Result<MdsClient, AdminError> {
    let (_, mds) = cluster.connect().await.map_err(ServerError::from)?;
    Ok(mds)
}

/// Sends one request to the group's leader with a client closed afterwards.
async fn ask(cluster: &ClusterConfig, request: MdsRequest) -> Result<MdsResponse, AdminError> {
    let client = client(cluster).await?;
    let response = client.call(&request).await;
    client.close().await;
    response.map_err(|e| AdminError::Refused(e.to_string()))
}

/// The outcome of a request answered with `Unit`.
fn unit(response: MdsResponse) -> Result<(), AdminError> {
    match response {
        MdsResponse::Unit(Ok(())) => Ok(()),
        MdsResponse::Unit(Err(errno)) => Err(AdminError::Refused(errno.to_string())),
        other => Err(AdminError::Refused(format!("{other:?}"))),
    }
}

/// Starts a new member in `data_dir` with Raft id `raft_id` and adds it to
/// the group of `cluster_path` (registering its key first); rewrites
/// `cluster.json` with it. The member keeps running.
pub async fn join(
    data_dir: &Path,
    listen: SocketAddr,
    raft_id: u64,
    cluster_path: &Path,
) -> Result<MdsServer, AdminError> {
    let mut cluster =
        ClusterConfig::load(cluster_path).map_err(|e| AdminError::Config(e.to_string()))?;
    if cluster.mds.iter().any(|m| m.raft_id == raft_id) {
        return Err(AdminError::Config(format!(
            "member {raft_id} already exists"
        )));
    }
    let peers: Vec<String> = cluster
        .mds
        .iter()
        .map(|m| m.member.node_id.clone())
        .collect();
    let member_file = MemberFile {
        raft_id,
        listen,
        peers,
    };
    let server = MdsServer::start(member_file.server_config(data_dir)).await?;
    let member = server.member();
    let entry = KeyEntry {
        name: format!("mds.{raft_id}"),
        node_id: member.node_id.clone(),
        role: Role::Mds,
    };
    unit(ask(&cluster, MdsRequest::AuthAdd { entry }).await?)?;
    let add = MdsRequest::AddMember {
        raft_id,
        member: member.clone(),
    };
    unit(ask(&cluster, add).await?)?;
    member_file.save(data_dir)?;
    cluster.mds.push(MemberEntry { raft_id, member });
    cluster
        .save(cluster_path)
        .map_err(|e| AdminError::Config(e.to_string()))?;
    Ok(server)
}

/// Removes member `raft_id` from the group and from `cluster.json`.
pub async fn remove(raft_id: u64, cluster_path: &Path) -> Result<(), AdminError> {
    let mut cluster =
        ClusterConfig::load(cluster_path).map_err(|e| AdminError::Config(e.to_string()))?;
    unit(ask(&cluster, MdsRequest::RemoveMember { raft_id }).await?)?;
    let name = format!("mds.{raft_id}");
    unit(ask(&cluster, MdsRequest::AuthRemove { name }).await?)?;
    cluster.mds.retain(|m| m.raft_id != raft_id);
    cluster
        .save(cluster_path)
        .map_err(|e| AdminError::Config(e.to_string()))
}

/// Registers `node_id` under `name` with `role`.
pub async fn auth_add(
    cluster: &ClusterConfig,
    name: &str,
    node_id: EndpointId,
    role: Role,
) -> Result<(), AdminError> {
    let entry = KeyEntry {
        name: name.to_string(),
        node_id: node_id.to_string(),
        role,
    };
    unit(ask(cluster, MdsRequest::AuthAdd { entry }).await?)
}

pub async fn auth_remove(cluster: &ClusterConfig, name: &str) -> Result<(), AdminError> {
    let name = name.to_string();
    unit(ask(cluster, MdsRequest::AuthRemove { name }).await?)
}

pub async fn auth_list(cluster: &ClusterConfig) -> Result<Vec<KeyEntry>, AdminError> {
    match ask(cluster, MdsRequest::AuthList).await? {
        MdsResponse::Keys(keys) => Ok(keys),
        MdsResponse::Unit(Err(errno)) => Err(AdminError::Refused(errno.to_string())),
        other => Err(AdminError::Refused(format!("{other:?}"))),
    }
}

/// Each member's view of the group, or why it did not answer.
pub async fn status(
    cluster: &ClusterConfig,
) -> Result<Vec<(MemberEntry, Result<MdsResponse, String>)>, AdminError> {
    let client = client(cluster).await?;
    let mut views = Vec::new();
    for entry in &cluster.mds {
        let view = client.call_member(&entry.member, &MdsRequest::Status).await;
        views.push((entry.clone(), view));
    }
    client.close().await;
    Ok(views)
}

/// The current cluster map.
/// Every PG with its state.
pub async fn pg_stats(cluster: &ClusterConfig) -> Result<Vec<PgStat>, AdminError> {
    match ask(cluster, MdsRequest::PgStats).await? {
        MdsResponse::PgStats(stats) => Ok(stats),
        other => Err(AdminError::Refused(format!("{other:?}"))),
    }
}

pub async fn cluster_map(cluster: &ClusterConfig) -> Result<ClusterMap, AdminError> {
    match ask(cluster, MdsRequest::GetClusterMap { newer_than: 0 }).await? {
        MdsResponse::ClusterMap(map) => Ok(*map),
        other => Err(AdminError::Refused(format!("{other:?}"))),
    }
}

/// Applies `changes` to the OSD map; returns the new epoch.
pub async fn cluster_change(
    cluster: &ClusterConfig,
    changes: Vec<Change>,
) -> Result<u64, AdminError> {
    match ask(cluster, MdsRequest::ClusterChange { changes }).await? {
        MdsResponse::Epoch(Ok(epoch)) => Ok(epoch),
        MdsResponse::Epoch(Err(problem)) => Err(AdminError::Refused(problem)),
        MdsResponse::Unit(Err(errno)) => Err(AdminError::Refused(errno.to_string())),
        other => Err(AdminError::Refused(format!("{other:?}"))),
    }
}

/// Creates a pool with the next free id; returns it and the new epoch.
pub async fn create_pool(
    cluster: &ClusterConfig,
    name: &str,
    pg_num: u32,
    size: usize,
    min_size: usize,
    rule: &str,
) -> Result<(Pool, u64), AdminError> {
    let map = cluster_map(cluster).await?;
    let id = PoolId(map.osdmap.pools().map(|p| p.id.0 + 1).max().unwrap_or(1));
    let pool = Pool {
        id,
        name: name.to_string(),
        pg_num,
        size,
        min_size,
        rule: rule.to_string(),
    };
    let epoch = cluster_change(cluster, vec![Change::AddPool { pool: pool.clone() }]).await?;
    Ok((pool, epoch))
}
