//! The OSD protocol (ALPN `aspen/osd/1`): object operations a client sends
//! to a PG's primary, and the replication messages the primary sends to
//! the other members of the acting set. Written bytes and read bytes travel
//! in the frame body.

use aspen_placement::{PgId, PoolId};
use serde::{Deserialize, Serialize};

/// The longest object name an OSD accepts.
pub const MAX_OBJECT_NAME_LEN: usize = 1024;
/// The most bytes one read or write carries.
pub const MAX_IO_LEN: u64 = 64 * 1024 * 1024;
/// The largest object: one frame carries a whole object when recovery
/// copies it, and scrub reads it in one piece.
pub const MAX_OBJECT_LEN: u64 = MAX_IO_LEN;
/// The most pieces one [`ObjectOp::WriteExtents`] carries (its list is in
/// the frame header, which is bounded).
pub const MAX_WRITE_EXTENTS: usize = 4096;
/// The most log entries one [`OsdRequest::Replicate`] carries.
pub const MAX_REPLICATE_BATCH: usize = 256;
/// Attribute limits.
pub const MAX_ATTR_NAME_LEN: usize = 255;
pub const MAX_ATTR_VALUE_LEN: usize = 64 * 1024;

/// An object: its pool and its name (file data objects are named by
/// [`crate::ObjectId::name`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub pool: PoolId,
    pub name: Vec<u8>,
}

/// One operation on one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectOp {
    /// Writes the frame body at `offset`.
    Write {
        offset: u64,
    },
    Read {
        offset: u64,
        len: u64,
    },
    Truncate {
        size: u64,
    },
    /// Makes a range a hole; the size does not change.
    Zero {
        offset: u64,
        len: u64,
    },
    Delete,
    Stat,
    SetAttr {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    GetAttr {
        name: Vec<u8>,
    },
    /// Writes the frame body in pieces, in order: `(offset, len)` each,
    /// their lengths adding up to the body's. One log entry, one
    /// replication and one sync for all of them (a client's write-back of
    /// many small extents of one object).
    WriteExtents {
        extents: Vec<(u64, u64)>,
    },
}

impl ObjectOp {
    /// Whether the op changes the object (and so is ordered in the PG log
    /// and replicated).
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            ObjectOp::Read { .. } | ObjectOp::Stat | ObjectOp::GetAttr { .. }
        )
    }

    /// Checks the bounds an OSD enforces before acting on the op;
    /// `body_len` is the length of the frame body.
    pub fn validate(&self, body_len: usize) -> Result<(), OsdError> {
        let invalid = |why: &str| Err(OsdError::Invalid(why.to_string()));
        match self {
            ObjectOp::WriteExtents { extents } => {
                if extents.is_empty() || extents.len() > MAX_WRITE_EXTENTS {
                    return invalid("a vectored write has 1 to 4096 pieces");
                }
                if body_len as u64 > MAX_IO_LEN {
                    return invalid("a write is at most 64 MiB");
                }
                let mut total = 0u64;
                for (offset, len) in extents {
                    if offset
                        .checked_add(*len)
                        .is_none_or(|end| end > MAX_OBJECT_LEN)
                    {
                        return invalid("the write ends past the largest object (64 MiB)");
                    }
                    total = total.saturating_add(*len);
                }
                if total != body_len as u64 {
                    return invalid("the pieces do not add up to the body");
                }
            }
            ObjectOp::Write { offset } => {
                if body_len as u64 > MAX_IO_LEN {
                    return invalid("a write is at most 64 MiB");
                }
                if offset
                    .checked_add(body_len as u64)
                    .is_none_or(|end| end > MAX_OBJECT_LEN)
                {
                    return invalid("the write ends past the largest object (64 MiB)");
                }
            }
            ObjectOp::Truncate { size } if *size > MAX_OBJECT_LEN => {
                return invalid("an object is at most 64 MiB");
            }
            ObjectOp::Zero { offset, len }
                if offset
                    .checked_add(*len)
                    .is_none_or(|end| end > MAX_OBJECT_LEN) =>
            {
                return invalid("the range ends past the largest object (64 MiB)");
            }
            ObjectOp::Read { len, .. } if *len > MAX_IO_LEN => {
                return invalid("a read is at most 64 MiB");
            }
            ObjectOp::SetAttr { name, value }
                if name.is_empty()
                    || name.len() > MAX_ATTR_NAME_LEN
                    || value.len() > MAX_ATTR_VALUE_LEN =>
            {
                return invalid("attribute name or value too long");
            }
            ObjectOp::GetAttr { name } if name.is_empty() || name.len() > MAX_ATTR_NAME_LEN => {
                return invalid("attribute name too long");
            }
            _ => {}
        }
        if !self.carries_body() && body_len != 0 {
            return invalid("only a write carries data");
        }
        Ok(())
    }

    /// Whether the op writes the frame body (the only ops that have one).
    pub fn carries_body(&self) -> bool {
        matches!(self, ObjectOp::Write { .. } | ObjectOp::WriteExtents { .. })
    }
}

/// A position in a PG's log: the map epoch the primary wrote it in and a
/// version that grows by one per logged op.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogVersion {
    pub epoch: u64,
    pub version: u64,
}

/// One logged mutation: where it sits in the PG log and what it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub at: LogVersion,
    pub object: Vec<u8>,
    pub op: ObjectOp,
}

/// One mutation a primary replicates, with the map epoch it was ordered
/// in and how many body bytes are its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    pub pg: PgId,
    pub epoch: u64,
    pub entry: LogEntry,
    pub body_len: u64,
    /// The BLAKE3 hash trees of the chunks the write's bytes are stored
    /// as in segment files (inline chunks have none), which the primary
    /// computed (the OSD store's `write_trees`), so
    /// a replica does not hash the bytes again; empty when the replica is
    /// to hash them itself. The store checks their length.
    pub trees: Vec<u8>,
}

impl ReplicaEntry {
    /// Checks the shape of a [`OsdRequest::Replicate`] before anything of
    /// it is used: 1 to [`MAX_REPLICATE_BATCH`] entries whose lengths add
    /// up to the body's.
    pub fn check_batch(entries: &[ReplicaEntry], body_len: usize) -> Result<(), OsdError> {
        if entries.is_empty() || entries.len() > MAX_REPLICATE_BATCH {
            return Err(OsdError::Invalid(format!(
                "{} entries (1 to {MAX_REPLICATE_BATCH})",
                entries.len()
            )));
        }
        let total = entries
            .iter()
            .try_fold(0u64, |sum, e| sum.checked_add(e.body_len));
        if total != Some(body_len as u64) {
            return Err(OsdError::Invalid(
                "the entries' lengths do not add up to the body".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OsdRequest {
    /// A client's operation, for the primary of the object's PG; `epoch`
    /// is the OSD map epoch the client chose the primary with, `session`
    /// the client's MDS session (0: none), refused once blocklisted.
    Op {
        object: ObjectRef,
        epoch: u64,
        op: ObjectOp,
        session: u64,
    },
    /// Primary to replica: apply these logged mutations (of different PGs
    /// this OSD leads), each on its own; the body holds their bytes one
    /// after the other. The answer is [`OsdResponse::ReplicatedEach`].
    Replicate { entries: Vec<ReplicaEntry> },
    /// The names of a PG's objects.
    ListPg { pg: PgId },
    /// Peering: this member's newest log position for `pg` and, in the
    /// body, its objects with the log position of each one's last change
    /// (postcard `Vec<(name, LogVersion)>`).
    PgObjects { pg: PgId },
    /// Recovery: a whole object (bytes in the body).
    GetObject { pg: PgId, name: Vec<u8> },
    /// Recovery, from the PG's primary at `epoch`: replace the object with
    /// this copy (bytes in the body, BLAKE3 `hash` of them), or delete it
    /// (`copy` None).
    PutObject {
        pg: PgId,
        epoch: u64,
        name: Vec<u8>,
        copy: Option<ObjectCopy>,
        hash: [u8; 32],
    },
    /// Recovery is complete on this member: its log position becomes `last`.
    Recovered {
        pg: PgId,
        epoch: u64,
        last: LogVersion,
    },
    /// Admin, to a PG's primary: compare the members' copies (`deep`:
    /// re-read and hash every byte), and with `repair` rewrite the bad ones.
    Scrub { pg: PgId, deep: bool, repair: bool },
    /// Primary to member: this member's objects for a scrub (postcard
    /// `Vec<ScrubEntry>` in the answer's body).
    ScrubObjects { pg: PgId, deep: bool },
}

/// What recovery copies besides an object's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCopy {
    pub size: u64,
    pub attrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The PG log position of the object's last change.
    pub at: LogVersion,
}

/// What a stat reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub size: u64,
    pub version: u64,
    pub mtime_ns: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum OsdError {
    #[error("no such object")]
    NotFound,
    #[error("no such attribute")]
    NoAttr,
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Stored data failed its check; nothing wrong was returned.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("i/o error: {0}")]
    Io(String),
    /// Fewer acting members than the pool's min_size, or a replica failed:
    /// the op was not acknowledged; retry later.
    #[error("placement group unavailable: {0}")]
    Unavailable(String),
    /// This OSD is not the primary at its map `epoch` (or is behind the
    /// caller's): refresh the map and resend.
    #[error("not the primary at epoch {epoch}")]
    NotPrimary { epoch: u64 },
    #[error("refused: {0}")]
    Refused(String),
    /// The OSD is at its full ratio (or its disk is full): the write was
    /// refused; deletes still go through.
    #[error("no space left on the OSD")]
    NoSpace,
    /// The client's session was evicted: the OSDs refuse it.
    #[error("the client session is blocklisted")]
    Fenced,
}

/// The most PG reports one heartbeat carries.
pub const MAX_PG_REPORTS: usize = 65_536;

/// A PG's state as its primary sees it, in Ceph's words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgFlags {
    /// Never written and not yet peered.
    pub creating: bool,
    /// Members are being compared; the PG does not serve yet.
    pub peering: bool,
    /// Serving reads and writes.
    pub active: bool,
    /// Active with as many copies as the pool asks for, where CRUSH wants them.
    pub clean: bool,
    /// Fewer acting members than the pool's size.
    pub degraded: bool,
    /// Copying objects a member missed.
    pub recovering: bool,
    /// Copying every object to a new member.
    pub backfilling: bool,
    /// The acting set differs from CRUSH's choice (up set).
    pub remapped: bool,
    /// A scrub found copies that disagree.
    pub inconsistent: bool,
    /// Fewer members are up than the pool's min_size: writes wait.
    pub down: bool,
    /// None of the OSDs that last held the PG complete is up: it waits for
    /// one rather than serve an empty or stale copy.
    pub incomplete: bool,
}

impl PgFlags {
    /// `active+clean`, `peering+recovering`, ...
    pub fn describe(&self) -> String {
        let names = [
            (self.creating, "creating"),
            (self.down, "down"),
            (self.incomplete, "incomplete"),
            (self.peering, "peering"),
            (self.active, "active"),
            (self.clean, "clean"),
            (self.degraded, "degraded"),
            (self.recovering, "recovering"),
            (self.backfilling, "backfilling"),
            (self.remapped, "remapped"),
            (self.inconsistent, "inconsistent"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        if set.is_empty() {
            "unknown".into()
        } else {
            set.join("+")
        }
    }
}

/// What a primary reports about one PG it leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgReport {
    pub pg: PgId,
    /// The map epoch the report is for.
    pub epoch: u64,
    pub flags: PgFlags,
    pub objects: u64,
}

/// What a scrub found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    pub objects: u64,
    /// Objects whose copies disagree (or could not be read), with what
    /// was wrong.
    pub inconsistent: Vec<(Vec<u8>, String)>,
    /// Copies rewritten from the good one (repair only).
    pub repaired: u64,
}

/// One object as a scrub compares it on one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubEntry {
    pub name: Vec<u8>,
    pub at: LogVersion,
    pub size: u64,
    /// BLAKE3 of the object's bytes (deep scrub), or why they could not
    /// be read.
    pub digest: Option<Result<[u8; 32], String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OsdResponse {
    /// A mutation is durable on every acting member.
    Done(ObjectInfo),
    /// Read bytes are in the body.
    Data,
    Stat(Option<ObjectInfo>),
    Attr(Vec<u8>),
    Names(Vec<Vec<u8>>),
    /// A recovery step is done.
    Replicated,
    /// A replica's answer to [`OsdRequest::Replicate`]: one per entry, in
    /// order (each durable when `Ok`).
    ReplicatedEach(Vec<Result<(), OsdError>>),
    /// A member's newest log position (its objects in the body).
    PgObjects {
        last: LogVersion,
    },
    /// A whole object (bytes in the body, with their BLAKE3 hash), or
    /// `None` if it does not exist.
    Object {
        copy: Option<ObjectCopy>,
        hash: [u8; 32],
    },
    Scrubbed(ScrubReport),
    /// A member's scrub entries are in the body.
    ScrubObjects,
    Failed(OsdError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_writes_are_bounded_before_use() {
        let write = |extents: Vec<(u64, u64)>| ObjectOp::WriteExtents { extents };
        assert!(write(vec![(0, 4), (100, 6)]).validate(10).is_ok());
        assert!(write(vec![(0, 4), (100, 6)]).validate(11).is_err(), "sum");
        assert!(write(vec![]).validate(0).is_err(), "empty");
        assert!(write(vec![(MAX_OBJECT_LEN - 1, 2)]).validate(2).is_err());
        assert!(write(vec![(u64::MAX, 1)]).validate(1).is_err());
        assert!(write(vec![(0, u64::MAX), (0, 2)]).validate(1).is_err());
        let many = vec![(0, 1); MAX_WRITE_EXTENTS + 1];
        assert!(write(many).validate(MAX_WRITE_EXTENTS + 1).is_err());
        let most = vec![(0, 1); MAX_WRITE_EXTENTS];
        assert!(write(most).validate(MAX_WRITE_EXTENTS).is_ok());
    }

    #[test]
    fn ops_are_bounded_before_use() {
        assert!(ObjectOp::Write { offset: 0 }.validate(10).is_ok());
        assert!(ObjectOp::Write { offset: u64::MAX }.validate(10).is_err());
        // Objects end at MAX_OBJECT_LEN: recovery copies one in a frame.
        assert!(
            ObjectOp::Write {
                offset: MAX_OBJECT_LEN - 10
            }
            .validate(10)
            .is_ok()
        );
        assert!(
            ObjectOp::Write {
                offset: MAX_OBJECT_LEN - 9
            }
            .validate(10)
            .is_err()
        );
        assert!(
            ObjectOp::Truncate {
                size: MAX_OBJECT_LEN + 1
            }
            .validate(0)
            .is_err()
        );
        let past = ObjectOp::Zero {
            offset: MAX_OBJECT_LEN,
            len: 1,
        };
        assert!(past.validate(0).is_err());
        assert!(
            ObjectOp::Read {
                offset: 0,
                len: MAX_IO_LEN + 1
            }
            .validate(0)
            .is_err()
        );
        assert!(
            ObjectOp::Delete.validate(1).is_err(),
            "only writes carry data"
        );
        let long = vec![b'x'; MAX_ATTR_NAME_LEN + 1];
        assert!(ObjectOp::GetAttr { name: long }.validate(0).is_err());
        assert!(ObjectOp::Stat.validate(0).is_ok());
        assert!(!ObjectOp::Stat.is_mutation());
        assert!(ObjectOp::Zero { offset: 0, len: 1 }.is_mutation());
    }

    #[test]
    fn a_replicate_batch_is_checked_before_use() {
        let entry = |body_len| ReplicaEntry {
            pg: PgId {
                pool: PoolId(1),
                seed: 0,
            },
            epoch: 1,
            entry: LogEntry {
                at: LogVersion::default(),
                object: b"o".to_vec(),
                op: ObjectOp::Write { offset: 0 },
            },
            body_len,
            trees: Vec::new(),
        };
        assert!(ReplicaEntry::check_batch(&[entry(3), entry(4)], 7).is_ok());
        assert!(ReplicaEntry::check_batch(&[], 0).is_err(), "empty");
        assert!(ReplicaEntry::check_batch(&[entry(3), entry(4)], 8).is_err());
        assert!(ReplicaEntry::check_batch(&[entry(3), entry(4)], 6).is_err());
        assert!(
            ReplicaEntry::check_batch(&[entry(u64::MAX), entry(2)], 1).is_err(),
            "lengths that overflow"
        );
        let many = vec![entry(0); MAX_REPLICATE_BATCH + 1];
        assert!(ReplicaEntry::check_batch(&many, 0).is_err());
        let most = vec![entry(0); MAX_REPLICATE_BATCH];
        assert!(ReplicaEntry::check_batch(&most, 0).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = postcard::from_bytes::<OsdRequest>(&bytes);
            let _ = postcard::from_bytes::<OsdResponse>(&bytes);
        }
    }
}
