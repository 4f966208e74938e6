//! Capabilities: what a client session may cache about an inode, and the
//! messages that grant, revoke and give them back.
//!
//! A session holding [`CapMode::Shared`] on an inode may cache its
//! attributes, its data pages and (for a directory) its entries; one
//! holding [`CapMode::Exclusive`] may also buffer writes and keep the size
//! and mtime they produce. Exclusive excludes every other session's cap on
//! the inode. The MDS revokes a cap before any other session's request that
//! would make the holder's cache wrong; the holder flushes what it buffered
//! and acknowledges, and only then does that request go on.

use serde::{Deserialize, Serialize};

use crate::errno::Errno;
use crate::fs::{Attr, Timestamp};
use crate::ids::InodeId;
use crate::mds::{NsOp, NsReply};

/// The longest a client may wait for the MDS's revocation events in one
/// request before it asks again.
pub const EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// The longest the MDS holds a request that waits for other sessions'
/// caps before it answers "busy" (the client sends it again).
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);
/// The most caps one release gives back.
pub const MAX_RELEASE: usize = 4096;
/// The most revocations one event reply carries.
pub const MAX_EVENTS: usize = 4096;
/// The most inode numbers one reservation takes.
pub const MAX_RESERVE: u32 = 1024;
/// The most size reports one [`CapOp::FlushMany`] carries.
pub const MAX_FLUSH_REPORTS: usize = 64;
/// The most namespace changes one [`CapOp::MutateMany`] carries.
pub const MAX_MUTATIONS: usize = 64;

/// How much a session may cache about an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CapMode {
    /// Cache attributes, data and directory entries for reading.
    Shared,
    /// Also buffer writes and keep size and mtime locally; no other
    /// session holds any cap on the inode.
    Exclusive,
}

/// A cap the MDS recorded for the session. `seq` grows with every grant,
/// so a revocation names the grant it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapGrant {
    pub ino: InodeId,
    pub mode: CapMode,
    pub seq: u64,
}

/// The MDS asks a session to bring its cap on `ino` (granted with `seq`
/// or earlier) down to `to` (`None`: give it up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoke {
    pub ino: InodeId,
    pub seq: u64,
    pub to: Option<CapMode>,
}

/// The size and mtime a session's buffered writes produced, reported by
/// the Exclusive holder once the bytes are on the OSDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    pub size: u64,
    pub mtime: Timestamp,
}

/// A request made under capabilities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CapOp {
    /// A namespace mutation; the session gets Shared on every inode it
    /// changed (Exclusive on a file it created or opened for writing).
    Mutate(NsOp),
    /// The changes a client answers itself ([`NsOp::CreateAs`] and
    /// [`NsOp::Unlink`]; at most [`MAX_MUTATIONS`]; `EINVAL` otherwise),
    /// each applied as its own [`CapOp::Mutate`] would be, in order. The
    /// MDS stops before the first that would have to wait for another
    /// session's caps (the client sends it and those after it again); a
    /// conflict of the first waits as a single mutation's does. The answer
    /// is [`NsReply::Mutated`], the result of each change applied, with
    /// the grants and attributes of them all.
    MutateMany(Vec<NsOp>),
    /// Resolves `name` in `parent`; Shared on both (on `parent` alone when
    /// the name is missing, so the absence may be cached too).
    Lookup { parent: InodeId, name: Vec<u8> },
    /// An inode's attributes; Shared on it.
    GetAttr { ino: InodeId },
    /// Asks for `mode` on `ino` (a writer wants Exclusive).
    Want { ino: InodeId, mode: CapMode },
    /// Answers a revocation: the cap is now `to`, after `flushed` (when
    /// the session held Exclusive and had written). With `pin`, the session
    /// has the inode open without a handle (it opened it under its cap) and
    /// takes one, so the inode outlives an unlink until it closes it (the
    /// answer is [`NsReply::Opened`]).
    Ack {
        ino: InodeId,
        seq: u64,
        to: Option<CapMode>,
        flushed: Option<Flushed>,
        pin: bool,
    },
    /// Takes a handle on an inode the session holds a cap on and has open
    /// without one (before it unlinks a name of it).
    Pin { ino: InodeId },
    /// Reports writes while keeping the Exclusive cap (fsync, close, timer).
    Flush { ino: InodeId, flushed: Flushed },
    /// [`CapOp::Flush`] for several inodes at once (at most
    /// [`MAX_FLUSH_REPORTS`]), each applied or refused on its own: the
    /// answer is [`NsReply::Reported`], one result per report, in order.
    FlushMany { reports: Vec<(InodeId, Flushed)> },
    /// Gives caps back (each up to the grant `seq` named).
    Release { caps: Vec<(InodeId, u64)> },
    /// Reserves up to [`MAX_RESERVE`] inode numbers for the session's own
    /// creates ([`NsOp::CreateAs`]); they lapse with the session.
    Reserve { count: u32 },
}

impl CapOp {
    /// Whether `ops` may make one [`CapOp::MutateMany`]: one to
    /// [`MAX_MUTATIONS`] of the changes it carries.
    pub fn valid_batch(ops: &[NsOp]) -> bool {
        let carried = |op: &NsOp| matches!(op, NsOp::CreateAs { .. } | NsOp::Unlink { .. });
        (1..=MAX_MUTATIONS).contains(&ops.len()) && ops.iter().all(carried)
    }

    /// Whether the op changes nothing but caps the session holds (and the
    /// size it reports): it can never wait for another session.
    pub fn is_own(&self) -> bool {
        matches!(
            self,
            CapOp::Ack { .. }
                | CapOp::Flush { .. }
                | CapOp::FlushMany { .. }
                | CapOp::Release { .. }
                | CapOp::Pin { .. }
                | CapOp::Reserve { .. }
        )
    }
}

/// The answer to a [`CapOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapReply {
    pub result: Result<NsReply, Errno>,
    /// Caps granted with this answer.
    pub grants: Vec<CapGrant>,
    /// The attributes of the inodes the request changed or was granted,
    /// as of `version`.
    pub attrs: Vec<Attr>,
    /// Where in the MDS's history this answer stands (a later answer about
    /// the same inode has a higher one).
    pub version: u64,
    /// The OSD map epoch a client must have before it touches file data
    /// (the map that fences the last evicted session).
    pub barrier: u64,
}

/// Revocations for one session, each with its delivery id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapEvents {
    /// Which leader's numbering the ids follow (a new leader starts anew).
    pub instance: u64,
    pub revokes: Vec<(u64, Revoke)>,
    /// The session is gone (evicted or timed out): its caps are void.
    pub ended: bool,
}
