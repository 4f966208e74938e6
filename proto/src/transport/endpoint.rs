//! One iroh endpoint per process: a persistent secret key (its node id),
//! no relays, no discovery, direct addresses only, and an allow-list of
//! node ids that may connect.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use iroh::endpoint::{
    AfterHandshakeOutcome, Connection, EndpointHooks, PortmapperConfig, Side, VarInt, presets,
};
use iroh::{Endpoint, EndpointAddr, EndpointId, NetReportConfig, RelayMode, SecretKey};

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

/// Refuses incoming connections from node ids not on the allow-list.
#[derive(Debug)]
struct Gate(AuthorizedKeys);

impl EndpointHooks for Gate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        if conn.side() == Side::Server && !self.0.contains(&conn.remote_id()) {
            tracing::warn!(peer = %conn.remote_id(), "refusing a connection from an unknown node");
            return AfterHandshakeOutcome::Reject {
                error_code: VarInt::from_u32(NOT_AUTHORIZED),
                reason: b"not authorized".to_vec(),
            };
        }
        AfterHandshakeOutcome::Accept
    }
}

/// A bound endpoint and the keys allowed to reach it.
#[derive(Clone, Debug)]
pub struct Transport {
    pub endpoint: Endpoint,
    pub authorized: AuthorizedKeys,
}

impl Transport {
    /// Binds an endpoint on `addr` (port 0 picks one) serving `alpns`.
    pub async fn bind(
        secret: SecretKey,
        addr: SocketAddr,
        alpns: Vec<Vec<u8>>,
        authorized: AuthorizedKeys,
    ) -> Result<Transport, TransportError> {
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(secret)
            .relay_mode(RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr(addr)
            .map_err(|e| TransportError::Bind(e.to_string()))?
            .portmapper_config(PortmapperConfig::Disabled)
            .net_report_config(NetReportConfig::minimal())
            .alpns(alpns)
            .hooks(Gate(authorized.clone()))
            .bind()
            .await
            .map_err(|e| TransportError::Bind(e.to_string()))?;
        Ok(Transport {
            endpoint,
            authorized,
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
