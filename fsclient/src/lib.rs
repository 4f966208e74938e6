//! Aspen's filesystem client.
//!
//! Boundary: this crate talks to the cluster only through its protocols —
//! the MDS protocol in `aspen-proto` (namespace, sessions) and the public
//! object client of `aspen-osd` (file data). It never depends on MDS or OSD
//! server internals, and the frontends never talk to the cluster except
//! through [`Vfs`].
//!
//! - [`session`]: the client's MDS session (opened, renewed, replaced
//!   when the MDS ends it, closed) and the namespace calls made in it.
//! - [`caps`]: what the session's capabilities let it cache (attributes,
//!   directory entries, unreported writes), pure bookkeeping.
//! - [`writeback`]: buffered writes as byte extents, pure bookkeeping.
//! - [`data`]: file bytes over objects — split by the file's layout and
//!   issued concurrently; holes read as zeros.
//! - [`vfs`]: the inode-level VFS API the frontends translate one to one:
//!   the cache under caps, open files, write-back, revocations.
//! - [`fuse`]: the FUSE frontend (`aspen mount`).

pub mod caps;
pub mod data;
pub mod fuse;
pub mod session;
pub mod vfs;
pub mod writeback;

pub use session::{ClientError, connect};
pub use vfs::Vfs;
