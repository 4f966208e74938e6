//! The client's session with the MDS group: opened at mount, renewed well
//! inside the MDS's session timeout, closed at unmount. Open handles and
//! caps belong to it. Namespace calls go through [`Session::cap`] (under
//! capabilities: the answer carries grants), [`Session::mutate`] and
//! [`Session::ask`]; each mutation carries its own request id, so a
//! retried call is answered, not applied twice. Any transport failure is
//! `EIO` to the caller.
//!
//! An evicted session is replaced by a new one ([`Session::reopen`]); its
//! generation tells handles of the old one apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aspen_osd::client::ObjectClient;
use aspen_proto::Errno;
use aspen_proto::caps::{CapEvents, CapOp, CapReply};
use aspen_proto::cluster::{ClusterConfig, MdsClient};
use aspen_proto::fs::Caller;
use aspen_proto::mds::{MdsRequest, MdsResponse, NsOp, NsReply, SessionId};
use tokio::sync::watch;
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
    id: AtomicU64,
    /// Counts the sessions this client has had (1 for the first).
    generation: AtomicU64,
    next_request: AtomicU64,
    /// Moves when the MDS says the session is gone.
    lost: watch::Sender<u64>,
    renewer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

async fn open_session(mds: &MdsClient) -> Result<SessionId, ClientError> {
    match mds.call(&MdsRequest::OpenSession).await {
        Ok(MdsResponse::Session(id)) => Ok(id),
        Ok(other) => Err(ClientError::Refused(format!("{other:?}"))),
        Err(error) => Err(ClientError::Unreachable(error.to_string())),
    }
}

impl Session {
    /// This session's id at the MDS.
    pub fn id(&self) -> SessionId {
        SessionId(self.id.load(Ordering::Acquire))
    }

    /// Which of this client's sessions is current.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub async fn open(mds: Arc<MdsClient>) -> Result<Arc<Session>, ClientError> {
        let id = open_session(&mds).await?;
        let session = Arc::new(Session {
            mds,
            id: AtomicU64::new(id.0),
            generation: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            lost: watch::channel(0).0,
            renewer: std::sync::Mutex::new(None),
        });
        let renewer = tokio::spawn(renew(Arc::downgrade(&session)));
        *session.renewer.lock().unwrap_or_else(|p| p.into_inner()) = Some(renewer);
        Ok(session)
    }

    /// Opens a new session in place of one the MDS ended (its handles,
    /// caps and locks are gone); the generation moves on.
    pub async fn reopen(&self) -> Result<SessionId, ClientError> {
        let id = open_session(&self.mds).await?;
        self.id.store(id.0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(id)
    }

    /// Follows the generations the MDS ended (moves to the one lost).
    pub fn watch_lost(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }

    /// Notes that the MDS no longer knows session `id` (an answer about a
    /// session already replaced changes nothing).
    fn mark_lost(&self, id: SessionId) {
        if id != self.id() {
            return;
        }
        let generation = self.generation();
        self.lost.send_if_modified(|lost| {
            let newer = *lost < generation;
            *lost = generation.max(*lost);
            newer
        });
    }

    fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// A request under capabilities, as `caller`. A session the MDS no
    /// longer knows is marked lost and the call fails with `ESTALE`.
    pub async fn cap(&self, caller: &Caller, op: CapOp) -> Result<CapReply, Errno> {
        let session = self.id();
        let request = MdsRequest::Cap {
            caller: caller.clone(),
            session,
            request: self.request_id(),
            op,
        };
        match self.ask(&request).await? {
            MdsResponse::Cap(reply) if reply.result == Err(Errno::ESTALE) => {
                self.mark_lost(session);
                Err(Errno::ESTALE)
            }
            MdsResponse::Cap(reply) => Ok(reply),
            other => Err(unexpected(&other)),
        }
    }

    /// The revocations the MDS has for this session after delivery id
    /// `after` of leader `instance` (waits a while for one).
    pub async fn events(&self, instance: u64, after: u64) -> Result<CapEvents, Errno> {
        let session = self.id();
        let request = MdsRequest::CapEvents {
            session,
            instance,
            after,
        };
        match self.ask(&request).await? {
            MdsResponse::CapEvents(events) => {
                if events.ended {
                    self.mark_lost(session);
                }
                Ok(events)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Applies a namespace mutation as `caller`, outside capabilities.
    pub async fn mutate(&self, caller: &Caller, op: NsOp) -> Result<NsReply, Errno> {
        let request = MdsRequest::Mutate {
            caller: caller.clone(),
            session: self.id(),
            request: self.request_id(),
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

    /// Ends the session (its handles and caps are released by the MDS).
    pub async fn close(&self) {
        if let Some(renewer) = self
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            renewer.abort();
        }
        let _ = self
            .mds
            .call(&MdsRequest::CloseSession { session: self.id() })
            .await;
        self.mds.close().await;
    }
}

/// An answer of the wrong kind: logged, and `EIO` to the caller.
pub(crate) fn unexpected(response: &MdsResponse) -> Errno {
    tracing::warn!("unexpected MDS answer: {response:?}");
    Errno::EIO
}

async fn renew(session: std::sync::Weak<Session>) {
    loop {
        tokio::time::sleep(RENEW_INTERVAL).await;
        let Some(session) = session.upgrade() else {
            return;
        };
        let id = session.id();
        let request = MdsRequest::RenewSession { session: id };
        match session.mds.call(&request).await {
            Ok(MdsResponse::Unit(Ok(()))) => {}
            Ok(MdsResponse::Unit(Err(errno))) => {
                tracing::error!("the MDS ended session {}: {errno}", id.0);
                session.mark_lost(id);
            }
            Ok(other) => tracing::warn!("renewing the session: {other:?}"),
            Err(error) => tracing::warn!("renewing the session: {error}"),
        }
    }
}
