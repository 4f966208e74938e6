//! Advisory file locks on the wire: who holds a lock, its kind and
//! family, and the byte range (POSIX `fcntl` locks and whole-file `flock`
//! locks). The rules that grant them live in the MDS.

use serde::{Deserialize, Serialize};

/// The last byte of a lock that runs to the end of the file (and past it).
pub const TO_END: u64 = u64::MAX;

/// Who holds a lock: a client session and the owner the kernel names in
/// it (a process's lock owner for fcntl locks, an open file for flock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockOwner {
    pub session: u64,
    pub owner: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// Which lock family: the two never conflict with each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockFlavor {
    Posix,
    Flock,
}

/// A held lock on bytes `start..=end` of one inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub owner: LockOwner,
    /// The process that took it, for F_GETLK.
    pub pid: u32,
    pub flavor: LockFlavor,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
}

/// A lock or unlock request on bytes `start..=end`; `kind: None` unlocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    pub owner: LockOwner,
    pub pid: u32,
    pub flavor: LockFlavor,
    pub kind: Option<LockKind>,
    pub start: u64,
    pub end: u64,
}
