//! Replication of the MDS state with openraft: the type configuration,
//! the commands the log carries, and the two SQLite stores openraft drives
//! (the log in [`log_store`], the state machine in [`state_machine`]).

// openraft's traits fix the error type (`StorageError`, 200+ bytes); the
// helpers here return it too rather than convert at every call.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod replies;
pub mod state_machine;

use aspen_proto::Errno;
use serde::{Deserialize, Serialize};

use aspen_placement::{Change, OsdId, PgId, Weight};
use aspen_proto::InodeId;
use aspen_proto::lock::{Lock, LockFlavor, LockOwner, LockRequest};
use aspen_proto::mds::{KeyEntry, SessionId};

use crate::caps::CapOutcome;
use crate::namespace::{NsOp, NsReply, OpContext};
use aspen_proto::caps::CapOp;

pub use aspen_proto::mds::MdsMember as MdsNode;

/// What the Raft log carries: one replicated change of MDS state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Namespace {
        op: NsOp,
        ctx: OpContext,
        /// The client's request id in `ctx.session` (0: none), for
        /// answering retries from the reply cache.
        request: u64,
    },
    /// Names the filesystem; only the first one counts.
    SetFsid(String),
    /// Registers a key (`EEXIST` if the name or node id is taken).
    AddKey(KeyEntry),
    /// Unregisters a key by name (`ENOENT` if unknown).
    RemoveKey(String),
    /// Opens a session for the client with this node id.
    OpenSession { client: String },
    /// Ends a session and releases its handles (`ENOENT` if unknown).
    CloseSession(SessionId),
    /// Changes the OSD map (one new epoch for all of them).
    ClusterChanges(Vec<Change>),
    /// An OSD started: added if new (with its host bucket), marked up, its
    /// addresses recorded.
    OsdBoot {
        osd: OsdId,
        node_id: String,
        addrs: Vec<std::net::SocketAddr>,
        host: String,
        weight: Weight,
        capacity: u64,
    },
    /// The purge queue's items up to and including this sequence number
    /// were carried out: their objects are gone.
    PurgeDone(u64),
    /// Commands of concurrent clients, applied in order in one log entry;
    /// each succeeds or fails on its own.
    Batch(Vec<Command>),
    // Variants are encoded by position in the Raft log: new ones go last.
    /// Drops `pg`'s `pg_temp` entry if `osd` still leads it and its up set
    /// is still `up` (the one `osd` backfilled).
    PgBackfilled {
        osd: OsdId,
        pg: PgId,
        up: Vec<Option<OsdId>>,
    },
    /// Takes, converts or drops an advisory lock on `ino`
    /// ([`Response::Lock`]: the conflicting lock if it cannot be granted).
    SetLock { ino: InodeId, request: LockRequest },
    /// Drops every lock of `owner` in `flavor` on `ino` (a close).
    ReleaseLocks {
        ino: InodeId,
        owner: LockOwner,
        flavor: LockFlavor,
    },
    /// Records the OSDs that hold `pg` complete as it goes active.
    PgActivated { pg: PgId, holders: Vec<OsdId> },
    /// A request under capabilities ([`Response::Cap`]); `request` as in
    /// [`Command::Namespace`].
    Cap {
        op: CapOp,
        ctx: OpContext,
        request: u64,
    },
    /// Ends a session that stopped answering (or renewing) and fences it:
    /// its handles, caps and locks go, and the OSD map blocklists it.
    Evict(SessionId),
}

impl Command {
    /// Whether applying this changes who may connect.
    pub(crate) fn changes_access(&self) -> bool {
        match self {
            Command::AddKey(_) | Command::RemoveKey(_) => true,
            Command::Batch(commands) => commands.iter().any(Command::changes_access),
            _ => false,
        }
    }

    /// Whether applying it can change who holds which cap (revocations
    /// waiting on the leader look again).
    pub(crate) fn touches_caps(&self) -> bool {
        match self {
            Command::Cap { .. }
            | Command::Namespace { .. }
            | Command::CloseSession(_)
            | Command::Evict(_) => true,
            Command::Batch(commands) => commands.iter().any(Command::touches_caps),
            _ => false,
        }
    }

    /// Whether applying it, with `response` as the outcome, can have freed
    /// an advisory lock (waiters look again). A refused lock request
    /// changed nothing: counting it would wake its own waiter, which asks
    /// again at once, in a loop of Raft writes.
    pub(crate) fn may_free_locks(&self, response: &Response) -> bool {
        match (self, response) {
            (Command::SetLock { .. }, Response::Lock(granted)) => granted.is_ok(),
            (Command::ReleaseLocks { .. } | Command::CloseSession(_) | Command::Evict(_), _) => {
                true
            }
            (Command::Batch(commands), Response::Batch(responses)) => commands
                .iter()
                .zip(responses)
                .any(|(command, response)| command.may_free_locks(response)),
            _ => false,
        }
    }
}

/// The state machine's answer to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Returned for entries that carry no command (blank and membership).
    None,
    Namespace(Result<NsReply, Errno>),
    Done(Result<(), Errno>),
    Session(SessionId),
    /// The OSD map's new epoch, or why the change was refused.
    Epoch(Result<u64, String>),
    /// The answers to a [`Command::Batch`], in order.
    Batch(Vec<Response>),
    /// A lock was granted, or the held lock that conflicts with it.
    Lock(Result<(), Lock>),
    /// A request under capabilities, or a mutation that other sessions'
    /// caps hold up.
    Cap(CapOutcome),
}

/// Where an applied command stands in the MDS's history: its log index,
/// and its place in a batch (reads see a whole entry: [`READ_POSITION`]).
pub fn version(index: u64, position: usize) -> u64 {
    (index << 16) | position as u64
}

/// The position a read at some log index takes (after every batch member).
pub const READ_POSITION: usize = 0xFFFF;

openraft::declare_raft_types!(
    /// openraft's type configuration for the MDS group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = MdsNode,
        SnapshotData = tokio::fs::File,
);

/// Shorthands for openraft's generic types.
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, MdsNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, MdsNode>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<u64>;

/// Encodes a value for storage (postcard).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_proto::lock::LockKind;

    fn set_lock() -> Command {
        Command::SetLock {
            ino: InodeId(7),
            request: LockRequest {
                owner: LockOwner {
                    session: 1,
                    owner: 2,
                },
                pid: 3,
                flavor: LockFlavor::Posix,
                kind: Some(LockKind::Exclusive),
                start: 0,
                end: u64::MAX,
            },
        }
    }

    #[test]
    fn only_a_lock_change_that_happened_wakes_lock_waiters() {
        let holder = Lock {
            owner: LockOwner {
                session: 4,
                owner: 5,
            },
            pid: 6,
            flavor: LockFlavor::Posix,
            kind: LockKind::Shared,
            start: 0,
            end: 10,
        };
        let refused = Response::Lock(Err(holder));
        let granted = Response::Lock(Ok(()));
        assert!(!set_lock().may_free_locks(&refused));
        assert!(set_lock().may_free_locks(&granted));
        let batch = Command::Batch(vec![set_lock(), set_lock()]);
        let one_granted = Response::Batch(vec![refused.clone(), granted]);
        assert!(batch.may_free_locks(&one_granted));
        let none_granted = Response::Batch(vec![refused.clone(), refused]);
        assert!(!batch.may_free_locks(&none_granted));
        let release = Command::ReleaseLocks {
            ino: InodeId(7),
            owner: LockOwner {
                session: 1,
                owner: 2,
            },
            flavor: LockFlavor::Posix,
        };
        assert!(release.may_free_locks(&Response::Done(Ok(()))));
    }
}
