//! Aspen's shared vocabulary: the identifiers and data shapes every daemon
//! and client agree on.
//!
//! Today it owns inode and object naming ([`ids`]) and file layouts, which
//! turn a byte range of a file into object extents ([`layout`]). The wire
//! messages, framing, errno mapping and transport helpers join it with the
//! MDS.
//!
//! # Boundary
//! `aspen-proto` sits directly above `aspen-placement` (whose ids it
//! re-exports) and below every daemon and client crate. It must never depend
//! on `mds`, `osd`, `fsclient` or the gateways.

pub mod errno;
pub mod fs;
pub mod ids;
pub mod layout;

pub use aspen_placement::{Epoch, OsdId, PgId, PoolId};
pub use errno::Errno;
pub use ids::{InodeId, ObjectId, ObjectNo};
pub use layout::{FileLayout, LayoutError, ObjectExtent};
