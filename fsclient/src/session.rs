//! The client's session with the MDS group: opened at mount, renewed well
//! inside the MDS's session timeout, closed at unmount. Open handles belong
//! to it. Namespace calls go through [`Session::mutate`] (each mutation with
//! its own request id, so a retried call is answered, not applied twice)
//! and [`Session::ask`] (reads); any transport failure is `EIO` to the
//! caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aspen_osd::client::ObjectClient;
use aspen_proto::Errno;
use aspen_proto::cluster::{ClusterConfig, MdsClient};
use aspen_proto::fs::Caller;
use aspen_proto::mds::{MdsRequest, MdsResponse, NsOp, NsReply, SessionId};
use tokio::task::JoinHandle;

use crate::vfs::Vfs;

/// How often the session is renewed (the MDS ends it after 60 s without).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// Why a client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cluster configuration: {0}")]
    Config(String),
    #[error("cannot reach the cluster: {0}")]
    Unreachable(String),
    #[error("the MDS refused: {0}")]
    Refused(String),
}

/// Connects to the cluster `config` describes and opens a session.
pub async fn connect(config: &ClusterConfig) -> Result<Arc<Vfs>, ClientError> {
    let (transport, mds) = config
        .connect()
        .await
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mds = Arc::new(mds);
    let objects = ObjectClient::new(transport, mds.clone())
        .await
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let session = Session::open(mds).await?;
    Ok(Vfs::new(session, Arc::new(objects)))
}

/// An open MDS session.
pub struct Session {
    mds: Arc<MdsClient>,
    id: SessionId,
    next_request: AtomicU64,
    renewer: JoinHandle<()>,
}

impl Session {
    /// This session's id at the MDS.
    pub fn id(&self) -> SessionId {
        self.id
    }

    pub async fn open(mds: Arc<MdsClient>) -> Result<Session, ClientError> {
        let id = match mds.call(&MdsRequest::OpenSession).await {
            Ok(MdsResponse::Session(id)) => id,
            Ok(other) => return Err(ClientError::Refused(format!("{other:?}"))),
            Err(error) => return Err(ClientError::Unreachable(error.to_string())),
        };
        let renewer = tokio::spawn(renew(mds.clone(), id));
        Ok(Session {
            mds,
            id,
            next_request: AtomicU64::new(1),
            renewer,
        })
    }

    /// Applies a namespace mutation as `caller`.
    pub async fn mutate(&self, caller: &Caller, op: NsOp) -> Result<NsReply, Errno> {
        let request = MdsRequest::Mutate {
            caller: caller.clone(),
            session: self.id,
            request: self.next_request.fetch_add(1, Ordering::Relaxed),
            op,
        };
        match self.ask(&request).await? {
            MdsResponse::Reply(result) => result,
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a request to the MDS leader.
    pub async fn ask(&self, request: &MdsRequest) -> Result<MdsResponse, Errno> {
        match self.mds.call(request).await {
            Ok(MdsResponse::Failed(problem)) => {
                tracing::warn!("MDS failed a request: {problem}");
                Err(Errno::EIO)
            }
            Ok(response) => Ok(response),
            Err(error) => {
                tracing::warn!("MDS unreachable: {error}");
                Err(Errno::EIO)
            }
        }
    }

    /// Ends the session (its handles are released by the MDS).
    pub async fn close(&self) {
        self.renewer.abort();
        let _ = self
            .mds
            .call(&MdsRequest::CloseSession { session: self.id })
            .await;
        self.mds.close().await;
    }
}

/// An answer of the wrong kind: logged, and `EIO` to the caller.
pub(crate) fn unexpected(response: &MdsResponse) -> Errno {
    tracing::warn!("unexpected MDS answer: {response:?}");
    Errno::EIO
}

async fn renew(mds: Arc<MdsClient>, session: SessionId) {
    loop {
        tokio::time::sleep(RENEW_INTERVAL).await;
        match mds.call(&MdsRequest::RenewSession { session }).await {
            Ok(MdsResponse::Unit(Ok(()))) => {}
            Ok(MdsResponse::Unit(Err(errno))) => {
                tracing::error!("the MDS ended session {}: {errno}", session.0);
                return;
            }
            Ok(other) => tracing::warn!("renewing the session: {other:?}"),
            Err(error) => tracing::warn!("renewing the session: {error}"),
        }
    }
}
