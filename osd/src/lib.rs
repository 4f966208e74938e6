//! The Aspen object storage daemon (OSD).
//!
//! Built in layers, each testable alone:
//!
//! - [`extents`]: the pure extent map of one object (which byte ranges are
//!   backed by which stored content), with the reference changes each
//!   operation makes.
//! - [`content`]: content addressed by BLAKE3, appended to segment files and
//!   indexed in SQLite, verified on every read, reference counted and
//!   reclaimed by segment compaction.
//! - [`tree`]: the hash tree stored beside each chunk in a segment, so a
//!   small read hashes only the pieces it returns; `tree_cache` keeps the
//!   trees small reads checked, so the next small read of the chunk reads
//!   only its pieces.
//! - [`batch`]: group commit: concurrent mutations share one transaction
//!   and one sync, each undone alone if it fails.
//! - [`gathered_log`]: the SQLite VFS the store opens its database with,
//!   which writes a commit's log frames with one system call.
//! - [`store`]: the local object store: objects in pools (named by inode
//!   and object number, or free-form), their sizes, versions, attributes and
//!   extent maps in SQLite over the content store; durable when an
//!   operation returns.
//! - [`pglog`]: each PG's log of mutations, written in the same transaction
//!   as the mutation.
//! - [`server`]: the daemon: boot, heartbeats, map following, and the
//!   protocol service (primary ordering and replication, replica apply).
//! - [`client`]: the object client others use (object -> PG -> primary,
//!   retries across map changes).
//!
//! # Boundary
//! The OSD depends on `aspen-proto` (wire types, transport) and
//! `aspen-placement` (PGs, the OSD map). It must never depend on the MDS
//! crate: the MDS is reached only through the messages in `aspen-proto`.

mod batch;
pub mod bench;
pub mod client;
pub mod content;
pub mod extents;
pub mod gathered_log;
mod links;
pub mod pglog;
pub mod server;
pub mod store;
mod trails;
pub mod tree;
mod tree_cache;
