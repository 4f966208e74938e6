//! Aspen's shared vocabulary: the identifiers and data shapes every daemon
//! and client agree on.
//!
//! It owns inode and object naming ([`ids`]), file layouts, which turn a
//! byte range of a file into object extents ([`layout`]), the filesystem
//! vocabulary and errno ([`fs`], [`errno`]), and the transport every daemon
//! and client speaks ([`transport`]: iroh endpoints with persistent keys and
//! an allow-list, length-prefixed frames, one QUIC stream per request).
//!
//! # Boundary
//! `aspen-proto` sits directly above `aspen-placement` (whose ids it
//! re-exports) and below every daemon and client crate. It must never depend
//! on `mds`, `osd`, `fsclient` or the gateways.

pub mod acl;
pub mod caps;
pub mod cluster;
pub mod errno;
pub mod fs;
pub mod ids;
pub mod layout;
pub mod lock;
pub mod mds;
pub mod osd;
pub mod perm;
pub mod transport;

pub use aspen_placement::{Epoch, OsdId, PgId, PoolId};
pub use errno::Errno;
pub use ids::{InodeId, ObjectId, ObjectNo};
pub use layout::{FileLayout, LayoutError, ObjectExtent};
