//! The Aspen metadata service (MDS).
//!
//! The MDS holds the namespace, client sessions and the cluster map, and
//! replicates them with Raft. This crate is built in layers:
//!
//! - [`namespace`]: the deterministic namespace state machine over SQLite
//!   (directories, inodes, links, xattrs, open handles, strays, purge
//!   queue), with the permission checks and errnos of Linux on ext4.
//! - [`locks`]: the rules of advisory file locks (conflicts, ranges,
//!   deadlock), pure.
//! - [`caps`]: the rules of client capabilities (which caps a request
//!   conflicts with, grants, acknowledgements), pure.
//! - [`raft`]: openraft's log and state machine stores over SQLite; the
//!   state machine applies [`raft::Command`]s to the namespace.
//!
//! # Boundary
//! The MDS depends on `aspen-proto` and `aspen-placement`. Nothing in it is
//! used by clients except through the wire messages in `aspen-proto`;
//! `fsclient` and the gateways must never depend on this crate.

pub mod admin;
pub mod bench;
pub mod caps;
pub mod locks;
pub mod namespace;
pub mod raft;
pub mod server;
mod sql;
