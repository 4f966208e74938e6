//! Raft traffic between MDS members over the transport (ALPN
//! `aspen/raft/1`): the network openraft sends through, and the service
//! that hands incoming messages to the local Raft. Only group members may
//! send Raft messages.

// openraft's network trait fixes the (large) error type.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aspen_proto::transport::frame::FrameError;
use aspen_proto::transport::{
    ALPN_RAFT, Bytes, EndpointId, RpcClient, Service, Transport, endpoint::peer_addr,
};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::raft::log_store::DurableLog;
use crate::raft::{MdsNode, TypeConfig};

pub type Raft = openraft::Raft<TypeConfig>;

/// How long a vote or append may take before the member counts as unreachable.
pub const RAFT_RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long one snapshot chunk may take.
pub const SNAPSHOT_RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A Raft message. It travels in the frame's body, not its header: log
/// entries and snapshot chunks are larger than a header may be.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The frame header of a Raft message: which kind the body holds.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftCall {
    Append,
    Vote,
    Snapshot,
}

impl RaftRequest {
    fn call(&self) -> RaftCall {
        match self {
            RaftRequest::Append(_) => RaftCall::Append,
            RaftRequest::Vote(_) => RaftCall::Vote,
            RaftRequest::Snapshot(_) => RaftCall::Snapshot,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The sender is not a member, or the frame was unreadable.
    Refused(String),
}

/// Serves Raft messages from other members.
pub struct RaftService {
    pub raft: Raft,
    /// Members named in the local configuration: accepted before this node
    /// has learnt the membership from the log (a new group, a joining node).
    pub seed_members: Vec<EndpointId>,
}

impl RaftService {
    fn is_member(&self, peer: &EndpointId) -> bool {
        if self.seed_members.contains(peer) {
            return true;
        }
        let peer = peer.to_string();
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .nodes()
            .any(|(_, node)| node.node_id == peer)
    }
}

impl Service for RaftService {
    type Request = RaftCall;
    type Response = RaftResponse;

    async fn call(
        &self,
        peer: EndpointId,
        _call: RaftCall,
        body: Vec<u8>,
    ) -> (RaftResponse, Vec<u8>) {
        if !self.is_member(&peer) {
            return (
                RaftResponse::Refused(format!("{peer} is not a member")),
                Vec::new(),
            );
        }
        let request = match postcard::from_bytes::<RaftRequest>(&body) {
            Ok(request) => request,
            Err(error) => return (RaftResponse::Refused(error.to_string()), Vec::new()),
        };
        let response = match request {
            RaftRequest::Append(rpc) => RaftResponse::Append(self.raft.append_entries(rpc).await),
            RaftRequest::Vote(rpc) => RaftResponse::Vote(self.raft.vote(rpc).await),
            RaftRequest::Snapshot(rpc) => {
                RaftResponse::Snapshot(self.raft.install_snapshot(rpc).await)
            }
        };
        (response, Vec::new())
    }

    fn malformed(&self, error: &FrameError) -> RaftResponse {
        RaftResponse::Refused(error.to_string())
    }
}

/// Hands openraft a link to each member. Links are cached per member:
/// openraft asks for a fresh one for every leadership check of a read, and
/// a new QUIC connection per read would cost a handshake each time.
#[derive(Clone)]
pub struct Network {
    transport: Transport,
    links: Arc<Mutex<Links>>,
    /// This member's log: as leader it tells followers of no commit past
    /// what it holds on disk (see [`crate::raft::log_store`]).
    log: DurableLog,
}

/// Each member's address as last seen, and the client dialling it.
type Links = HashMap<u64, (MdsNode, Arc<RpcClient>)>;

impl Network {
    pub fn new(transport: Transport, log: DurableLog) -> Network {
        Network {
            transport,
            links: Arc::default(),
            log,
        }
    }

    fn link(&self, target: u64, node: &MdsNode, id: EndpointId) -> Arc<RpcClient> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, client)) = links.get(&target)
            && known == node
        {
            return client.clone();
        }
        let client = Arc::new(RpcClient::new(
            self.transport.clone(),
            peer_addr(id, &node.addrs),
            ALPN_RAFT,
        ));
        links.insert(target, (node.clone(), client.clone()));
        client
    }
}

/// The link to one member.
pub struct Peer {
    target: u64,
    client: Option<Arc<RpcClient>>,
    problem: String,
    log: DurableLog,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &MdsNode) -> Peer {
        let (client, problem) = match node.node_id.parse::<EndpointId>() {
            Ok(id) => (Some(self.link(target, node, id)), String::new()),
            Err(error) => (None, format!("bad node id {:?}: {error}", node.node_id)),
        };
        Peer {
            target,
            client,
            problem,
            log: self.log.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<u64, MdsNode, E>>;

impl Peer {
    async fn send<E: std::error::Error>(&self, request: RaftRequest) -> RpcResult<RaftResponse, E> {
        let Some(client) = &self.client else {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(self.problem.clone()),
            )));
        };
        let timeout = match request {
            RaftRequest::Snapshot(_) => SNAPSHOT_RPC_TIMEOUT,
            _ => RAFT_RPC_TIMEOUT,
        };
        let body =
            postcard::to_stdvec(&request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let (response, _): (RaftResponse, Vec<u8>) = client
            .call_within(timeout, &request.call(), Bytes::from(body))
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match response {
            RaftResponse::Refused(reason) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(reason),
            ))),
            other => Ok(other),
        }
    }

    fn unexpected<T, E: std::error::Error>(&self) -> RpcResult<T, E> {
        Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other("mismatched raft response"),
        )))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        // A later message (the next entries, or a heartbeat) carries the
        // rest of the commit once the log is durable that far.
        rpc.leader_commit = self.log.clamp(rpc.leader_commit);
        match self.send(RaftRequest::Append(rpc)).await? {
            RaftResponse::Append(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => self.unexpected(),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        match self.send(RaftRequest::Snapshot(rpc)).await? {
            RaftResponse::Snapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => self.unexpected(),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, RaftError<u64>> {
        match self.send(RaftRequest::Vote(rpc)).await? {
            RaftResponse::Vote(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => self.unexpected(),
        }
    }
}
