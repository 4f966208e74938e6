//! The cluster configuration file that `aspen mds init` writes and every
//! client and daemon reads: the filesystem id, the MDS members and where
//! they listen, and the key file to connect with. And [`MdsClient`], which
//! finds the leader among those members.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::mds::{MdsMember, MdsRequest, MdsResponse};
use crate::transport::endpoint::peer_addr;
use crate::transport::{
    ALPN_MDS, AuthorizedKeys, Bytes, EndpointId, RpcClient, Transport, TransportError,
    load_or_create_secret_key,
};

/// How many members a call tries (following redirects) before giving up.
pub const MAX_CALL_ATTEMPTS: usize = 30;
/// Pause before retrying when no leader is known (an election is running).
pub const NO_LEADER_BACKOFF: Duration = Duration::from_millis(100);
/// How long one member may take to answer before the next is tried.
pub const MEMBER_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a cluster map request may wait (the MDS holds it up to 10 s).
pub const MAP_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a waiting lock request may take (the MDS holds it up to
/// [`crate::mds::LOCK_WAIT`]).
pub const LOCK_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a request under capabilities may take (the MDS answers
/// [`MdsResponse::Busy`] after [`crate::caps::BUSY_WAIT`] when it waits
/// for other sessions).
pub const CAP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a revocation poll may take (the MDS holds it up to
/// [`crate::caps::EVENT_WAIT`]).
pub const EVENT_REQUEST_TIMEOUT: Duration =
    Duration::from_millis(crate::caps::EVENT_WAIT.as_millis() as u64 + 1500);

/// A cluster configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
}

/// One MDS member in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub raft_id: u64,
    #[serde(flatten)]
    pub member: MdsMember,
}

/// The contents of `cluster.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub fsid: String,
    pub mds: Vec<MemberEntry>,
    /// The secret key file to connect with, relative to this file.
    pub key: PathBuf,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let fail = |problem: String| ConfigError::File {
            path: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut config: ClusterConfig =
            serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if config.key.is_relative() {
            config.key = path.parent().unwrap_or(Path::new(".")).join(&config.key);
        }
        Ok(config)
    }

    /// Writes the file atomically (a temporary file renamed over it), with
    /// the key path relative to the file when it lies beside it.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let fail = |problem: String| ConfigError::File {
            path: path.display().to_string(),
            problem,
        };
        let mut stored = self.clone();
        if let Ok(relative) = self
            .key
            .strip_prefix(path.parent().unwrap_or(Path::new(".")))
        {
            stored.key = relative.to_path_buf();
        }
        let text = serde_json::to_string_pretty(&stored).map_err(|e| fail(e.to_string()))?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text + "\n").map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|e| fail(e.to_string()))
    }

    /// The MDS members, as an [`MdsClient`] reaches them.
    pub fn members(&self) -> Vec<MdsMember> {
        self.mds.iter().map(|m| m.member.clone()).collect()
    }

    /// A client endpoint with the configured key (it only dials out) and
    /// an [`MdsClient`] of the group on it.
    pub async fn connect(&self) -> Result<(Transport, MdsClient), TransportError> {
        let key = load_or_create_secret_key(&self.key)?;
        let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let transport =
            Transport::bind_delegated(&key, any_port, AuthorizedKeys::default()).await?;
        let mds = MdsClient::new(transport.clone(), self.members());
        Ok((transport, mds))
    }

    /// The members' node ids (those that parse).
    pub fn member_ids(&self) -> Vec<EndpointId> {
        self.mds
            .iter()
            .filter_map(|m| m.member.node_id.parse().ok())
            .collect()
    }
}

/// Why a call to the MDS group failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no MDS member answered: {0}")]
    Unreachable(String),
}

/// Calls the MDS group: tries the last known leader, follows `NotLeader`
/// answers, and moves on to the next member when one is unreachable.
pub struct MdsClient {
    transport: Transport,
    members: Vec<MdsMember>,
    leader: Mutex<Option<MdsMember>>,
    clients: Mutex<HashMap<String, Arc<RpcClient>>>,
}

impl MdsClient {
    pub fn new(transport: Transport, members: Vec<MdsMember>) -> MdsClient {
        MdsClient {
            transport,
            members,
            leader: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
        }
    }

    async fn client(&self, member: &MdsMember) -> Result<Arc<RpcClient>, String> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&member.node_id) {
            return Ok(client.clone());
        }
        let id: EndpointId = member
            .node_id
            .parse()
            .map_err(|e| format!("bad node id {}: {e}", member.node_id))?;
        let client = Arc::new(RpcClient::new(
            self.transport.clone(),
            peer_addr(id, &member.addrs),
            ALPN_MDS,
        ));
        clients.insert(member.node_id.clone(), client.clone());
        Ok(client)
    }

    /// Closes the client's endpoint (politely, so peers see a clean close).
    pub async fn close(&self) {
        self.transport.close().await;
    }

    /// Sends `request` to one member, without redirects.
    pub async fn call_member(
        &self,
        member: &MdsMember,
        request: &MdsRequest,
    ) -> Result<MdsResponse, String> {
        let client = self.client(member).await?;
        let timeout = match request {
            MdsRequest::GetClusterMap { .. } => MAP_REQUEST_TIMEOUT,
            MdsRequest::SetLock { wait: true, .. } => LOCK_REQUEST_TIMEOUT,
            MdsRequest::Cap { .. } => CAP_REQUEST_TIMEOUT,
            MdsRequest::CapEvents { .. } => EVENT_REQUEST_TIMEOUT,
            _ => MEMBER_TIMEOUT,
        };
        let result: Result<(MdsResponse, Vec<u8>), _> =
            client.call_within(timeout, request, Bytes::new()).await;
        match result {
            Ok((response, _)) => Ok(response),
            Err(error) => {
                self.clients.lock().await.remove(&member.node_id);
                Err(error.to_string())
            }
        }
    }

    /// Sends `request` to the leader; a [`MdsResponse::Busy`] answer is
    /// sent again until the MDS answers otherwise.
    pub async fn call(&self, request: &MdsRequest) -> Result<MdsResponse, ClientError> {
        loop {
            match self.call_once(request).await? {
                MdsResponse::Busy => continue,
                response => return Ok(response),
            }
        }
    }

    async fn call_once(&self, request: &MdsRequest) -> Result<MdsResponse, ClientError> {
        let mut target = self.leader.lock().await.clone();
        let mut unreachable: Vec<String> = Vec::new();
        let mut next = 0;
        let mut last_problem = String::from("no members configured");
        for _ in 0..MAX_CALL_ATTEMPTS {
            let member = match target.take() {
                Some(member) => member,
                None => match self.next_member(&mut next, &unreachable) {
                    Some(member) => member,
                    None => {
                        // Everyone failed once: start over (they may be back).
                        unreachable.clear();
                        tokio::time::sleep(NO_LEADER_BACKOFF).await;
                        continue;
                    }
                },
            };
            match self.call_member(&member, request).await {
                // A hint at a member that just failed is stale (an election is
                // under way): wait a little and ask around instead.
                Ok(MdsResponse::NotLeader {
                    leader: Some((_, leader)),
                }) if !unreachable.contains(&leader.node_id) => target = Some(leader),
                Ok(MdsResponse::NotLeader { .. }) => tokio::time::sleep(NO_LEADER_BACKOFF).await,
                Ok(response) => {
                    *self.leader.lock().await = Some(member);
                    return Ok(response);
                }
                Err(problem) => {
                    last_problem = problem;
                    unreachable.push(member.node_id);
                }
            }
        }
        Err(ClientError::Unreachable(last_problem))
    }

    /// The next configured member, in turn, skipping those that just failed.
    fn next_member(&self, next: &mut usize, unreachable: &[String]) -> Option<MdsMember> {
        for _ in 0..self.members.len() {
            let member = &self.members[*next % self.members.len()];
            *next += 1;
            if !unreachable.contains(&member.node_id) {
                return Some(member.clone());
            }
        }
        None
    }
}
