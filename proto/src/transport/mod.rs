//! The transport every Aspen process uses: an iroh endpoint per process
//! ([`endpoint`]), client endpoints that act for a registered key
//! ([`delegation`]), bounded length-prefixed frames ([`frame`]), and
//! request/response calls with one QUIC stream per request ([`rpc`]).
//!
//! Why a stream per request: QUIC streams are cheap and independent, so
//! concurrent requests on one connection need no request ids and one slow
//! reply never holds up another. On this machine a new stream costs
//! 96–218 µs against 91–158 µs for a round trip on an open one
//! (`../shared/STACK.md`).

pub mod delegation;
pub mod endpoint;
pub mod frame;
pub mod rpc;

/// A frame body: shared, so sending it copies nothing.
pub use bytes::Bytes;
pub use endpoint::{AuthorizedKeys, Transport, TransportError, load_or_create_secret_key};
pub use frame::{FrameError, MAX_BODY_LEN, MAX_HEADER_LEN};
pub use iroh::protocol::Router;
pub use iroh::{EndpointAddr, EndpointId, SecretKey};
pub use rpc::{RpcClient, RpcError, RpcProtocol, Service, serve};

/// ALPN of the MDS client protocol.
pub const ALPN_MDS: &[u8] = b"aspen/mds/1";
/// ALPN of Raft traffic between MDS members.
pub const ALPN_RAFT: &[u8] = b"aspen/raft/1";
/// ALPN of the OSD protocol.
pub const ALPN_OSD: &[u8] = b"aspen/osd/1";
