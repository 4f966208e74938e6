//! Client endpoints that act for a registered key. iroh allows one live
//! endpoint per endpoint id: two processes bound with the same key (two
//! mounts of one cluster config, or `aspen status` beside a mount) share
//! one path state at every peer, which can send one process's packets to
//! the other. So a client process binds a fresh key of its own and sends
//! a [`Delegation`] (the registered key's signature over that fresh id)
//! on the first stream of each connection it opens, waiting for the
//! server's answer before any request goes. A server admits the
//! connection only when the signature checks and the signing key is on
//! its allow-list, and from then on treats the connection as that key's
//! ([`Principals`]).
//!
//! The signature names the endpoint it is for, and that endpoint's secret
//! key is needed to complete the QUIC handshake as it, so a delegation
//! seen on the wire is of no use to anyone else.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::{EndpointId, SecretKey, Signature};

/// What a delegation starts with (its format's version is the last byte).
const MAGIC: [u8; 8] = *b"aspndlg1";

/// The signed message's prefix (domain separation from any other use of
/// the key).
const CONTEXT: &[u8] = b"aspen delegation v1: endpoint ";

/// A delegation on the wire: magic, principal, endpoint, signature.
pub const DELEGATION_LEN: usize = MAGIC.len() + 32 + 32 + Signature::LENGTH;

/// A server's answer to a delegation it took.
const TAKEN: [u8; 1] = [1];

/// How long a server waits for a connecting endpoint's delegation (and
/// the endpoint for the server's answer).
pub const DELEGATION_WAIT: Duration = Duration::from_secs(2);

/// How many connections may wait at once for their delegation to be read
/// (more are refused: each holds a task and buffers).
pub const MAX_PENDING_DELEGATIONS: usize = 64;

/// Why a delegation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DelegationError {
    #[error("a delegation is {DELEGATION_LEN} bytes, not {0}")]
    Length(usize),
    #[error("not a delegation (bad magic)")]
    Magic,
    #[error("the key bytes are not a valid public key")]
    Key,
    #[error("the delegation is for endpoint {named}, not {connected}")]
    OtherEndpoint {
        named: EndpointId,
        connected: EndpointId,
    },
    #[error("the signature does not check")]
    Signature,
    #[error("no delegation arrived: {0}")]
    Missing(String),
    #[error("the delegation is for {0}, which is not registered")]
    Unregistered(EndpointId),
    #[error("the endpoint already acts for another key")]
    OtherPrincipal,
}

/// A registered key's word that an endpoint acts for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    pub principal: EndpointId,
    pub endpoint: EndpointId,
    signature: Signature,
}

fn signed_message(endpoint: &EndpointId) -> Vec<u8> {
    [CONTEXT, endpoint.as_bytes().as_slice()].concat()
}

impl Delegation {
    /// `principal` delegates to `endpoint`.
    pub fn sign(principal: &SecretKey, endpoint: EndpointId) -> Delegation {
        Delegation {
            principal: principal.public(),
            endpoint,
            signature: principal.sign(&signed_message(&endpoint)),
        }
    }

    pub fn encode(&self) -> [u8; DELEGATION_LEN] {
        let mut bytes = [0u8; DELEGATION_LEN];
        let (magic, rest) = bytes.split_at_mut(MAGIC.len());
        let (principal, rest) = rest.split_at_mut(32);
        let (endpoint, signature) = rest.split_at_mut(32);
        magic.copy_from_slice(&MAGIC);
        principal.copy_from_slice(self.principal.as_bytes());
        endpoint.copy_from_slice(self.endpoint.as_bytes());
        signature.copy_from_slice(&self.signature.to_bytes());
        bytes
    }

    /// Parses `bytes` and checks that it is a valid delegation to
    /// `connected` (the endpoint that sent it).
    pub fn verify(bytes: &[u8], connected: EndpointId) -> Result<Delegation, DelegationError> {
        let bytes: &[u8; DELEGATION_LEN] = bytes
            .try_into()
            .map_err(|_| DelegationError::Length(bytes.len()))?;
        let (magic, rest) = bytes.split_at(MAGIC.len());
        let (principal, rest) = rest.split_at(32);
        let (endpoint, signature) = rest.split_at(32);
        if magic != MAGIC {
            return Err(DelegationError::Magic);
        }
        let key = |b: &[u8]| {
            let b: &[u8; 32] = b.try_into().map_err(|_| DelegationError::Key)?;
            EndpointId::from_bytes(b).map_err(|_| DelegationError::Key)
        };
        let (principal, endpoint) = (key(principal)?, key(endpoint)?);
        if endpoint != connected {
            return Err(DelegationError::OtherEndpoint {
                named: endpoint,
                connected,
            });
        }
        let signature: &[u8; Signature::LENGTH] = signature
            .try_into()
            .map_err(|_| DelegationError::Signature)?;
        let signature = Signature::from_bytes(signature);
        principal
            .verify(&signed_message(&endpoint), &signature)
            .map_err(|_| DelegationError::Signature)?;
        Ok(Delegation {
            principal,
            endpoint,
            signature,
        })
    }

    /// Sends this delegation on the first stream of `conn` and waits for
    /// the server to take it (so no request can overtake it).
    pub(crate) async fn send(&self, conn: &Connection) -> Result<(), String> {
        let (mut send, mut recv): (SendStream, RecvStream) =
            conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&self.encode())
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(DELEGATION_WAIT, recv.read_to_end(TAKEN.len()))
            .await
            .map_err(|_| format!("not taken within {DELEGATION_WAIT:?}"))?
            .map_err(|e| e.to_string())?;
        if answer != TAKEN {
            return Err("not taken".into());
        }
        Ok(())
    }

    /// Reads the delegation `conn`'s remote sends on its first stream and,
    /// if it is valid and `admissible`, says it was taken; all within
    /// [`DELEGATION_WAIT`].
    pub(crate) async fn receive(
        conn: &Connection,
        admissible: impl Fn(&Delegation) -> bool,
    ) -> Result<Delegation, DelegationError> {
        let missing = |e: &dyn std::fmt::Display| DelegationError::Missing(e.to_string());
        let exchange = async {
            let (mut send, mut recv): (SendStream, RecvStream) =
                conn.accept_bi().await.map_err(|e| missing(&e))?;
            let bytes = recv
                .read_to_end(DELEGATION_LEN)
                .await
                .map_err(|e| missing(&e))?;
            let delegation = Delegation::verify(&bytes, conn.remote_id())?;
            if !admissible(&delegation) {
                return Err(DelegationError::Unregistered(delegation.principal));
            }
            send.write_all(&TAKEN).await.map_err(|e| missing(&e))?;
            send.finish().map_err(|e| missing(&e))?;
            Ok(delegation)
        };
        tokio::time::timeout(DELEGATION_WAIT, exchange)
            .await
            .map_err(|_| missing(&format!("none within {DELEGATION_WAIT:?}")))?
    }
}

/// The principal each delegated endpoint connected to this one acts for,
/// kept while it has a connection open.
#[derive(Clone, Debug, Default)]
pub struct Principals(Arc<RwLock<HashMap<EndpointId, (EndpointId, usize)>>>);

impl Principals {
    /// Who `remote` acts for: its principal if it came with a delegation,
    /// itself otherwise.
    pub fn of(&self, remote: EndpointId) -> EndpointId {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&remote)
            .map_or(remote, |(principal, _)| *principal)
    }

    /// Records `delegation` for as long as `conn` stays open (refused if
    /// its endpoint already acts for another key on an open connection).
    pub(crate) fn admit(
        &self,
        delegation: &Delegation,
        conn: &Connection,
    ) -> Result<(), DelegationError> {
        let endpoint = delegation.endpoint;
        {
            let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
            let entry = map.entry(endpoint).or_insert((delegation.principal, 0));
            if entry.0 != delegation.principal {
                return Err(DelegationError::OtherPrincipal);
            }
            entry.1 += 1;
        }
        let closed = conn.weak_handle().closed();
        let principals = self.clone();
        tokio::spawn(async move {
            closed.await;
            principals.release(endpoint);
        });
        Ok(())
    }

    fn release(&self, endpoint: EndpointId) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&endpoint) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delegation_verifies_for_its_endpoint_only() {
        let principal = SecretKey::generate();
        let endpoint = SecretKey::generate().public();
        let delegation = Delegation::sign(&principal, endpoint);
        let bytes = delegation.encode();
        assert_eq!(Delegation::verify(&bytes, endpoint), Ok(delegation));
        let other = SecretKey::generate().public();
        assert!(matches!(
            Delegation::verify(&bytes, other),
            Err(DelegationError::OtherEndpoint { .. })
        ));
    }

    #[test]
    fn a_forged_or_damaged_delegation_is_refused() {
        let principal = SecretKey::generate();
        let endpoint = SecretKey::generate().public();
        let bytes = Delegation::sign(&principal, endpoint).encode();

        // Another key's claim to be the principal.
        let mut forged = bytes;
        forged[MAGIC.len()..MAGIC.len() + 32]
            .copy_from_slice(SecretKey::generate().public().as_bytes());
        assert_eq!(
            Delegation::verify(&forged, endpoint),
            Err(DelegationError::Signature)
        );

        let mut flipped = bytes;
        flipped[DELEGATION_LEN - 1] ^= 1;
        assert_eq!(
            Delegation::verify(&flipped, endpoint),
            Err(DelegationError::Signature)
        );

        let mut magic = bytes;
        magic[0] ^= 1;
        assert_eq!(
            Delegation::verify(&magic, endpoint),
            Err(DelegationError::Magic)
        );
        assert_eq!(
            Delegation::verify(&bytes[..DELEGATION_LEN - 1], endpoint),
            Err(DelegationError::Length(DELEGATION_LEN - 1))
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let endpoint = SecretKey::generate().public();
            let _ = Delegation::verify(&bytes, endpoint);
        }
    }
}
