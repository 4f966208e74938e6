//! One iroh endpoint per process: a persistent secret key (its node id)
//! for a daemon, a fresh one acting for the cluster config's key for a
//! client ([`super::delegation`]); no relays, no discovery, direct
//! addresses only, and an allow-list of node ids that may connect.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use iroh::endpoint::{
    AfterHandshakeOutcome, Connection, EndpointHooks, PortmapperConfig, Side, VarInt, presets,
};
use iroh::{Endpoint, EndpointAddr, EndpointId, NetReportConfig, RelayMode, SecretKey};

use super::delegation::{Delegation, MAX_PENDING_DELEGATIONS, Principals};

/// QUIC close code sent to a peer that is not on the allow-list.
pub const NOT_AUTHORIZED: u32 = 403;

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("secret key file {path}: {problem}")]
    Key { path: String, problem: String },
    #[error("binding the endpoint: {0}")]
    Bind(String),
    #[error("connecting to {peer}: {problem}")]
    Connect { peer: EndpointId, problem: String },
}

/// Reads the 32-byte secret key at `path`, or creates one (mode 0600).
pub fn load_or_create_secret_key(path: &Path) -> Result<SecretKey, TransportError> {
    let fail = |problem: String| TransportError::Key {
        path: path.display().to_string(),
        problem,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|b: Vec<u8>| fail(format!("{} bytes, expected 32", b.len())))?;
            Ok(SecretKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = SecretKey::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(e.to_string()))?;
            file.write_all(&key.to_bytes())
                .map_err(|e| fail(e.to_string()))?;
            file.sync_all().map_err(|e| fail(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// The node ids allowed to connect. Shared: changing it takes effect for
/// every later connection.
#[derive(Clone, Debug, Default)]
pub struct AuthorizedKeys(Arc<RwLock<HashSet<EndpointId>>>);

impl AuthorizedKeys {
    pub fn new(ids: impl IntoIterator<Item = EndpointId>) -> AuthorizedKeys {
        AuthorizedKeys(Arc::new(RwLock::new(ids.into_iter().collect())))
    }

    pub fn allow(&self, id: EndpointId) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    pub fn revoke(&self, id: &EndpointId) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    pub fn replace(&self, ids: impl IntoIterator<Item = EndpointId>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ids.into_iter().collect();
    }

    pub fn contains(&self, id: &EndpointId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
}

/// Refuses incoming connections from node ids not on the allow-list,
/// unless they bring a delegation from a key on it; sends this endpoint's
/// own delegation, if it has one, on each connection it opens.
#[derive(Debug)]
struct Gate {
    authorized: AuthorizedKeys,
    principals: Principals,
    delegation: Option<Delegation>,
    /// Turns for connections waiting for their delegation to be read.
    pending: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    async fn admit(&self, conn: &Connection) -> AfterHandshakeOutcome {
        let remote = conn.remote_id();
        if self.authorized.contains(&remote) {
            return AfterHandshakeOutcome::Accept;
        }
        let Ok(_turn) = self.pending.try_acquire() else {
            return refuse(remote, "too many connections waiting to be admitted");
        };
        let registered = |d: &Delegation| self.authorized.contains(&d.principal);
        let admitted = Delegation::receive(conn, registered)
            .await
            .and_then(|delegation| self.principals.admit(&delegation, conn));
        match admitted {
            Ok(()) => AfterHandshakeOutcome::Accept,
            Err(error) => refuse(remote, &error.to_string()),
        }
    }
}

fn refuse(remote: EndpointId, why: &str) -> AfterHandshakeOutcome {
    tracing::warn!(peer = %remote, why, "refusing a connection from an unknown node");
    rejection(b"not authorized")
}

fn rejection(reason: &[u8]) -> AfterHandshakeOutcome {
    AfterHandshakeOutcome::Reject {
        error_code: VarInt::from_u32(NOT_AUTHORIZED),
        reason: reason.to_vec(),
    }
}

impl EndpointHooks for Gate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        match (conn.side(), &self.delegation) {
            (Side::Server, _) => self.admit(conn).await,
            (Side::Client, Some(delegation)) => match delegation.send(conn).await {
                Ok(()) => AfterHandshakeOutcome::Accept,
                Err(problem) => {
                    tracing::warn!(peer = %conn.remote_id(), problem, "could not send the delegation");
                    rejection(b"no delegation")
                }
            },
            (Side::Client, None) => AfterHandshakeOutcome::Accept,
        }
    }
}

/// A bound endpoint and the keys allowed to reach it.
#[derive(Clone, Debug)]
pub struct Transport {
    pub endpoint: Endpoint,
    pub authorized: AuthorizedKeys,
    /// Whom each delegated endpoint connected here acts for.
    pub principals: Principals,
}

impl Transport {
    /// Binds an endpoint with key `secret` on `addr` (port 0 picks one)
    /// serving `alpns`. For a daemon: no other live endpoint may have the
    /// same key.
    pub async fn bind(
        secret: SecretKey,
        addr: SocketAddr,
        alpns: Vec<Vec<u8>>,
        authorized: AuthorizedKeys,
    ) -> Result<Transport, TransportError> {
        Transport::bind_with(secret, None, addr, alpns, authorized).await
    }

    /// Binds a client endpoint with a fresh key of its own that acts for
    /// `principal` (a registered key that other processes may be using at
    /// the same time): see [`super::delegation`].
    pub async fn bind_delegated(
        principal: &SecretKey,
        addr: SocketAddr,
        authorized: AuthorizedKeys,
    ) -> Result<Transport, TransportError> {
        let secret = SecretKey::generate();
        let delegation = Delegation::sign(principal, secret.public());
        Transport::bind_with(secret, Some(delegation), addr, vec![], authorized).await
    }

    async fn bind_with(
        secret: SecretKey,
        delegation: Option<Delegation>,
        addr: SocketAddr,
        alpns: Vec<Vec<u8>>,
        authorized: AuthorizedKeys,
    ) -> Result<Transport, TransportError> {
        let principals = Principals::default();
        let gate = Gate {
            authorized: authorized.clone(),
            principals: principals.clone(),
            delegation,
            pending: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_DELEGATIONS)),
        };
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(secret)
            .relay_mode(RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr(addr)
            .map_err(|e| TransportError::Bind(e.to_string()))?
            .portmapper_config(PortmapperConfig::Disabled)
            .net_report_config(NetReportConfig::minimal())
            .alpns(alpns)
            .hooks(gate)
            // QUIC's ACK frequency extension (acknowledging every 8th
            // packet) stays off although it made small reads and writes
            // 5-10% faster (bench/RESULTS.md, 2026-12-06): noq 1.4.0 writes
            // its ACK_FREQUENCY frame without checking the room left in the
            // packet, and a connection whose packet was full panicked in
            // its driver and aborted the whole process (`aspen up` laying
            // out files with 1 MiB writes).
            .bind()
            .await
            .map_err(|e| TransportError::Bind(e.to_string()))?;
        Ok(Transport {
            endpoint,
            authorized,
            principals,
        })
    }

    pub fn id(&self) -> EndpointId {
        self.endpoint.id()
    }

    /// The addresses the endpoint is bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// How peers reach this endpoint.
    pub fn addr(&self) -> EndpointAddr {
        peer_addr(self.id(), &self.local_addrs())
    }

    pub async fn connect(
        &self,
        peer: EndpointAddr,
        alpn: &[u8],
    ) -> Result<Connection, TransportError> {
        let id = peer.id;
        self.endpoint
            .connect(peer, alpn)
            .await
            .map_err(|e| TransportError::Connect {
                peer: id,
                problem: e.to_string(),
            })
    }

    pub async fn close(&self) {
        self.endpoint.close().await;
    }
}

/// The address of a peer from its node id and socket addresses.
pub fn peer_addr(id: EndpointId, sockets: &[SocketAddr]) -> EndpointAddr {
    sockets.iter().fold(EndpointAddr::new(id), |addr, socket| {
        addr.with_ip_addr(*socket)
    })
}
