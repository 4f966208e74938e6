//! Request/response over QUIC: each call opens a bidirectional stream,
//! writes one request frame, and reads one response frame. A server runs a
//! [`Service`] for every stream of every accepted connection, concurrently.
//!
//! Both ends read their receiving half up to its end before dropping it. A
//! half dropped before its FIN arrived makes QUIC send STOP_SENDING, and
//! the sender answer with RESET_STREAM: two packets and two wake-ups per
//! call that carry nothing (a third of an MDS follower's packets).

use std::sync::Arc;

use bytes::Bytes;
use iroh::endpoint::{Connection, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{EndpointAddr, EndpointId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::Transport;
use super::delegation::Principals;
use super::frame::{self, FrameError};

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// How long a call waits for its answer unless told otherwise.
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The QUIC error code of a connection closed because its peer is gone.
pub const PEER_GONE: u32 = 410;
/// How long a server that has answered waits for the end of the request's
/// stream (its client finishes the stream right after the request).
const REQUEST_END_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a server does with one request: its typed header, its body, and
/// who sent it (the caller's authenticated node id).
pub trait Service: Send + Sync + 'static {
    type Request: DeserializeOwned + Send;
    type Response: Serialize + Send + Sync;

    fn call(
        &self,
        peer: EndpointId,
        request: Self::Request,
        body: Vec<u8>,
    ) -> impl Future<Output = (Self::Response, Vec<u8>)> + Send;

    /// The reply to a request whose frame could not be read.
    fn malformed(&self, error: &FrameError) -> Self::Response;
}

/// An iroh protocol handler that serves every stream of every connection
/// with a [`Service`]; register it on a [`Router`] under its ALPN. The
/// service sees each caller as the key it acts for ([`Principals`]).
pub struct RpcProtocol<S> {
    service: Arc<S>,
    principals: Principals,
}

impl<S> RpcProtocol<S> {
    /// `service` for connections to `transport`.
    pub fn new(transport: &Transport, service: Arc<S>) -> RpcProtocol<S> {
        RpcProtocol {
            service,
            principals: transport.principals.clone(),
        }
    }
}

impl<S> std::fmt::Debug for RpcProtocol<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RpcProtocol")
    }
}

impl<S: Service> ProtocolHandler for RpcProtocol<S> {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let peer = self.principals.of(connection.remote_id());
        serve_connection(connection, peer, self.service.clone()).await;
        Ok(())
    }
}

/// Serves `service` under `alpn` on `transport` until the returned router
/// is shut down (or dropped).
pub fn serve<S: Service>(transport: &Transport, alpn: &'static [u8], service: Arc<S>) -> Router {
    Router::builder(transport.endpoint.clone())
        .accept(alpn, RpcProtocol::new(transport, service))
        .spawn()
}

async fn serve_connection<S: Service>(connection: Connection, peer: EndpointId, service: Arc<S>) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let service = service.clone();
        tokio::spawn(async move {
            let (response, body) = match frame::read::<_, S::Request>(&mut recv).await {
                Ok((request, body)) => service.call(peer, request, body).await,
                Err(error) => {
                    tracing::debug!(%peer, %error, "bad request frame");
                    (service.malformed(&error), Vec::new())
                }
            };
            if let Err(error) = frame::write(&mut send, &response, Bytes::from(body)).await {
                tracing::debug!(%peer, %error, "could not send a response");
                return;
            }
            // Dropped once finished, the send half's bytes are still sent
            // and resent until acknowledged; waiting for that (`stopped`)
            // only cost a task wake-up per call.
            let _ = send.finish();
            let _ = tokio::time::timeout(REQUEST_END_WAIT, frame::read_end(&mut recv)).await;
        });
    }
}

/// A client of one peer's service: connects on first use and reconnects
/// after the connection drops.
pub struct RpcClient {
    transport: Transport,
    peer: EndpointAddr,
    alpn: &'static [u8],
    connection: Mutex<Option<Connection>>,
}

impl RpcClient {
    pub fn new(transport: Transport, peer: EndpointAddr, alpn: &'static [u8]) -> RpcClient {
        RpcClient {
            transport,
            peer,
            alpn,
            connection: Mutex::new(None),
        }
    }

    pub fn peer(&self) -> EndpointId {
        self.peer.id
    }

    async fn connection(&self) -> Result<Connection, RpcError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(connection.clone());
        }
        let connection = self
            .transport
            .connect(self.peer.clone(), self.alpn)
            .await
            .map_err(|e| RpcError::Connect(e.to_string()))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Closes the connection, if there is one: every call in flight on it
    /// fails at once instead of at its time limit, and the next call dials
    /// afresh. For a peer known to be gone.
    pub async fn disconnect(&self) {
        if let Some(connection) = self.connection.lock().await.take() {
            connection.close(VarInt::from_u32(PEER_GONE), b"peer gone");
        }
    }

    /// Sends `request` with `body` and waits (up to [`DEFAULT_CALL_TIMEOUT`])
    /// for the response.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
        body: Bytes,
    ) -> Result<(Resp, Vec<u8>), RpcError> {
        self.call_within(DEFAULT_CALL_TIMEOUT, request, body).await
    }

    /// [`Self::call`] with its own time limit. A failed or late call drops
    /// the connection, so the next one dials afresh (the peer may have
    /// restarted, and a dead QUIC connection only notices at its idle timeout).
    pub async fn call_within<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        timeout: std::time::Duration,
        request: &Req,
        body: Bytes,
    ) -> Result<(Resp, Vec<u8>), RpcError> {
        let outcome = match tokio::time::timeout(timeout, self.exchange(request, body)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(RpcError::Timeout(timeout)),
        };
        if outcome.is_err() {
            *self.connection.lock().await = None;
        }
        outcome
    }

    async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
        body: Bytes,
    ) -> Result<(Resp, Vec<u8>), RpcError> {
        let connection = self.connection().await?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| RpcError::Stream(e.to_string()))?;
        frame::write(&mut send, request, body).await?;
        send.finish().map_err(|e| RpcError::Stream(e.to_string()))?;
        let response = frame::read(&mut recv).await?;
        frame::read_end(&mut recv).await?;
        Ok(response)
    }
}
