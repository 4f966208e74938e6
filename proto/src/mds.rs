//! The MDS protocol (ALPN `aspen/mds/1`): namespace operations and their
//! replies, the cluster's member list, and the request and response frames
//! clients and admin tools send to an MDS.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use aspen_placement::{Change, OsdId, OsdMap, PgId, Weight};

use crate::caps::{CapEvents, CapOp, CapReply};
use crate::lock::{Lock, LockFlavor, LockRequest};

use crate::errno::Errno;
use crate::fs::{Attr, Caller, DirEntry, SetAttr, StatFs, Timestamp};
use crate::ids::InodeId;
use crate::layout::FileLayout;

/// Identifies a client session (open handles belong to one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// Identifies an open file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HandleId(pub u64);
/// A namespace mutation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsOp {
    /// Creates the root directory of a new filesystem.
    Format {
        mode: u32,
        uid: u32,
        gid: u32,
        layout: FileLayout,
    },
    SetAttr {
        ino: InodeId,
        changes: SetAttr,
    },
    /// Regular files, FIFOs, sockets and devices; the type is in `mode`.
    Mknod {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        rdev: u64,
    },
    Mkdir {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
    },
    Symlink {
        parent: InodeId,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Link {
        ino: InodeId,
        new_parent: InodeId,
        new_name: Vec<u8>,
    },
    Unlink {
        parent: InodeId,
        name: Vec<u8>,
    },
    Rmdir {
        parent: InodeId,
        name: Vec<u8>,
    },
    Rename {
        parent: InodeId,
        name: Vec<u8>,
        new_parent: InodeId,
        new_name: Vec<u8>,
        flags: u32,
    },
    SetXattr {
        ino: InodeId,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    RemoveXattr {
        ino: InodeId,
        name: Vec<u8>,
    },
    /// Opens an existing inode (files and directories).
    Open {
        ino: InodeId,
        flags: u32,
    },
    /// Opens `name` in `parent`, creating a regular file if it is missing.
    Create {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        flags: u32,
    },
    Release {
        handle: HandleId,
    },
    /// Data was written through `handle` (opened for writing by this
    /// session) up to byte `end`: the size grows to cover it, mtime and
    /// ctime move, and setuid and setgid go unless root wrote.
    Written {
        handle: HandleId,
        end: u64,
    },
    /// Releases every handle of a session (it closed or timed out).
    EndSession {
        session: SessionId,
    },
    /// Creates regular file `name` in `parent` as inode `ino`, which the
    /// session reserved ([`crate::caps::CapOp::Reserve`]), at time `now`:
    /// a create the client answered itself under its Exclusive cap on
    /// `parent`, sent afterwards. No handle is taken (the client's open
    /// is its own, pinned like any open made under a cap).
    CreateAs {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        ino: InodeId,
        now: Timestamp,
    },
}

/// What a successful mutation returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsReply {
    Done,
    /// The attributes of the inode the operation created or changed.
    Attr(Attr),
    Opened {
        attr: Attr,
        handle: HandleId,
    },
    /// Inode numbers reserved for the session, each with its generation.
    Reserved(Vec<(InodeId, u64)>),
    /// The result of each report of a `CapOp::FlushMany`, in its order.
    Reported(Vec<Result<(), Errno>>),
    /// The result of each change of a `CapOp::MutateMany` the MDS applied,
    /// in its order (its first changes, perhaps not all).
    Mutated(Vec<Result<NsReply, Errno>>),
}
/// One member of the MDS group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdsMember {
    /// The member's iroh node id (public key), hex.
    pub node_id: String,
    pub addrs: Vec<SocketAddr>,
}

impl std::fmt::Display for MdsMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {:?}", self.node_id, self.addrs)
    }
}

/// A request to an MDS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MdsRequest {
    /// A namespace change, replicated before it is answered.
    Mutate {
        caller: Caller,
        session: SessionId,
        /// The client's id for this mutation in its session, so a retry is
        /// answered with the first reply instead of applied twice (0: no
        /// such protection, for callers without a session).
        request: u64,
        op: NsOp,
    },
    Lookup {
        caller: Caller,
        parent: InodeId,
        name: Vec<u8>,
    },
    GetAttr {
        ino: InodeId,
    },
    ReadDir {
        caller: Caller,
        ino: InodeId,
        offset: u64,
        limit: u32,
    },
    ReadLink {
        ino: InodeId,
    },
    Access {
        caller: Caller,
        ino: InodeId,
        mask: u32,
    },
    GetXattr {
        caller: Caller,
        ino: InodeId,
        name: Vec<u8>,
    },
    ListXattr {
        caller: Caller,
        ino: InodeId,
    },
    StatFs,
    /// F_GETLK: the first lock on `ino` that keeps `request` from being
    /// granted ([`MdsResponse::Lock`]).
    GetLock {
        session: SessionId,
        ino: InodeId,
        request: LockRequest,
    },
    /// F_SETLK (`wait: false`: EAGAIN on a conflict) or F_SETLKW (`wait`:
    /// answered when granted, EDEADLK if the wait could never end, or
    /// EAGAIN after [`LOCK_WAIT`] so the client asks again).
    SetLock {
        session: SessionId,
        ino: InodeId,
        request: LockRequest,
        wait: bool,
    },
    /// Drops every lock `owner` of the session holds in `flavor` on `ino`
    /// (the close of a file by a process that locked it).
    ReleaseLocks {
        session: SessionId,
        ino: InodeId,
        owner: u64,
        flavor: LockFlavor,
    },
    /// The group's health and membership.
    Status,
    /// Opens a client session (open handles belong to one).
    OpenSession,
    /// Keeps a session alive; an unrenewed session ends after the MDS's
    /// session timeout, releasing its handles.
    RenewSession {
        session: SessionId,
    },
    CloseSession {
        session: SessionId,
    },
    /// An OSD (key `osd.ID`, role osd) starts: it is added to the map if
    /// new, marked up, and its addresses recorded.
    OsdBoot {
        osd: OsdId,
        addrs: Vec<SocketAddr>,
        host: String,
        weight: Weight,
        /// Bytes the OSD's store may hold.
        capacity: u64,
    },
    /// An OSD is alive, and holds `used` bytes.
    OsdHeartbeat {
        osd: OsdId,
        used: u64,
        /// The state of each PG it leads (at most [`crate::osd::MAX_PG_REPORTS`]).
        pgs: Vec<crate::osd::PgReport>,
    },
    /// The acting primary of `pg` has backfilled the PG's up set `up`: its
    /// `pg_temp` entry can go, so the up set serves it.
    PgBackfilled {
        osd: OsdId,
        pg: PgId,
        up: Vec<Option<OsdId>>,
    },
    /// The OSDs that held `pg` complete when it last went active (empty
    /// for a PG that never did): peering must hear from one of them.
    PgHolders {
        pg: PgId,
    },
    /// `osd`, primary of `pg`, is about to serve it from `holders` (its
    /// acting set, every member now complete); answered once recorded.
    PgActivated {
        osd: OsdId,
        pg: PgId,
        holders: Vec<OsdId>,
    },
    /// Every PG with its state (from its primary's last report), up and
    /// acting sets.
    PgStats,
    /// The cluster map once its epoch is above `newer_than` (waits up to the
    /// MDS's map wait, then answers with the current map).
    GetClusterMap {
        newer_than: u64,
    },
    /// Admin: change the OSD map (pools, out/in, reweight, CRUSH).
    ClusterChange {
        changes: Vec<Change>,
    },
    /// Admin: register a key.
    AuthAdd {
        entry: KeyEntry,
    },
    /// Admin: unregister a key by name.
    AuthRemove {
        name: String,
    },
    /// Admin: the key registry.
    AuthList,
    /// Admin: add an MDS member (its key must be registered with role mds).
    AddMember {
        raft_id: u64,
        member: MdsMember,
    },
    /// Admin: remove an MDS member.
    RemoveMember {
        raft_id: u64,
    },
    /// A request under capabilities ([`MdsResponse::Cap`]); `request`
    /// names a mutation for the reply cache as in [`MdsRequest::Mutate`].
    Cap {
        caller: Caller,
        session: SessionId,
        request: u64,
        op: CapOp,
    },
    /// The session's pending revocations with delivery ids above `after`
    /// in the numbering `instance` (all of them when the leader's instance
    /// differs); waits up to [`crate::caps::EVENT_WAIT`] for one.
    CapEvents {
        session: SessionId,
        instance: u64,
        after: u64,
    },
}

/// The group as one member sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdsStatus {
    pub fsid: String,
    pub this: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub members: Vec<(u64, MdsMember)>,
    pub osdmap_epoch: u64,
    pub osds: u32,
    pub osds_up: u32,
    pub osds_in: u32,
    pub pools: u32,
    /// Raw bytes the OSDs that are in may hold, and hold now (as their
    /// heartbeats last said).
    pub capacity: u64,
    pub used: u64,
    /// How many PGs are in each state (`active+clean`: 128, ...).
    pub pg_states: Vec<(String, u32)>,
}

/// The longest an F_SETLKW waits at the MDS before the client is told to
/// ask again. Short, because between two asks the client checks whether
/// the waiting process was interrupted by a signal (and gives up then).
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long after an F_SETLKW's ask ran out the MDS still counts its owner
/// as waiting (for deadlock detection): the client asks again at once.
pub const LOCK_REASK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// An MDS's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MdsResponse {
    Reply(Result<NsReply, Errno>),
    Attr(Result<Attr, Errno>),
    Entries(Result<Vec<DirEntry>, Errno>),
    Bytes(Result<Vec<u8>, Errno>),
    Names(Result<Vec<Vec<u8>>, Errno>),
    Unit(Result<(), Errno>),
    StatFs(StatFs),
    Status(MdsStatus),
    Keys(Vec<KeyEntry>),
    Session(SessionId),
    ClusterMap(Box<ClusterMap>),
    /// The new map epoch after a change, or why the change was refused.
    Epoch(Result<u64, String>),
    /// This member cannot answer: ask the leader (if one is known).
    NotLeader {
        leader: Option<(u64, MdsMember)>,
    },
    PgStats(Vec<PgStat>),
    PgHolders(Vec<OsdId>),
    /// A conflicting lock, or none.
    Lock(Result<Option<Lock>, Errno>),
    /// The request could not be served (storage failure, malformed frame).
    Failed(String),
    Cap(CapReply),
    CapEvents(CapEvents),
    /// The request waits for other sessions to give up caps: send it again
    /// (the MDS keeps counting their time).
    Busy,
}

/// One PG as `aspen pg ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgStat {
    pub pg: aspen_placement::PgId,
    /// `active+clean`, ...; `down` without a primary; `unknown` before the
    /// primary reported.
    pub state: String,
    pub up: Vec<Option<OsdId>>,
    pub acting: Vec<Option<OsdId>>,
    pub objects: u64,
}

/// What a registered key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Cluster administration (auth, membership) and everything else.
    Admin,
    /// An MDS group member.
    Mds,
    /// An object storage daemon.
    Osd,
    /// A filesystem client.
    Client,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Mds => "mds",
            Role::Osd => "osd",
            Role::Client => "client",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "admin" => Ok(Role::Admin),
            "mds" => Ok(Role::Mds),
            "osd" => Ok(Role::Osd),
            "client" => Ok(Role::Client),
            other => Err(format!("unknown role {other:?} (admin, mds, osd, client)")),
        }
    }
}

/// One entry of the key registry: a name, the key's node id, its role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub name: String,
    pub node_id: String,
    pub role: Role,
}

/// Where an OSD listens, and the capacity it registered with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsdAddress {
    pub osd: OsdId,
    pub node_id: String,
    pub addrs: Vec<SocketAddr>,
    /// Bytes its store may hold.
    pub capacity: u64,
}

/// The cluster map: the OSD map, the OSDs' addresses, and the registered
/// keys (public node ids and roles: whom OSDs let connect).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub osdmap: OsdMap,
    pub addresses: Vec<OsdAddress>,
    pub keys: Vec<KeyEntry>,
}

impl ClusterMap {
    /// Where OSD `osd` listens.
    pub fn address(&self, osd: OsdId) -> Option<&OsdAddress> {
        self.addresses.iter().find(|a| a.osd == osd)
    }

    /// The role of the registered key with node id `peer`.
    pub fn role_of(&self, peer: &crate::transport::EndpointId) -> Option<Role> {
        role_of(&self.keys, peer)
    }
}

/// The role of the key with node id `peer` in `keys`.
pub fn role_of(keys: &[KeyEntry], peer: &crate::transport::EndpointId) -> Option<Role> {
    let peer = peer.to_string();
    keys.iter().find(|k| k.node_id == peer).map(|k| k.role)
}

impl Eq for ClusterMap {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame;
    use aspen_placement::crush::CrushMap;
    use aspen_placement::{PgId, Pool, PoolId};

    /// Every message must survive the binary frame codec (postcard has no
    /// self-describing formats: internally tagged enums would fail here).
    #[test]
    fn every_request_and_response_crosses_the_wire() {
        let pool = Pool {
            id: PoolId(1),
            name: "p".into(),
            pg_num: 8,
            size: 1,
            min_size: 1,
            rule: "replicated_rule".into(),
        };
        let changes = vec![
            Change::AddBucket {
                name: "h".into(),
                ty: "host".into(),
                parent: "default".into(),
            },
            Change::AddOsd {
                id: OsdId(1),
                weight: Weight::ONE,
                host: "h".into(),
            },
            Change::MarkOut { id: OsdId(1) },
            Change::Reweight {
                id: OsdId(1),
                reweight: Weight::ONE,
            },
            Change::AddPool { pool },
            Change::SetPgTemp {
                pg: PgId {
                    pool: PoolId(1),
                    seed: 3,
                },
                osds: vec![OsdId(1)],
            },
            Change::SetCrushMap {
                crush: CrushMap::new(),
            },
        ];
        let requests = vec![
            MdsRequest::Mutate {
                caller: Caller::root(),
                session: SessionId(2),
                request: 0,
                op: NsOp::Unlink {
                    parent: InodeId::ROOT,
                    name: b"x".to_vec(),
                },
            },
            MdsRequest::ReadDir {
                caller: Caller::new(1, 2, vec![3]),
                ino: InodeId(5),
                offset: 9,
                limit: 10,
            },
            MdsRequest::OsdBoot {
                osd: OsdId(3),
                addrs: vec!["127.0.0.1:1".parse().unwrap()],
                host: "h".into(),
                weight: Weight::ONE,
                capacity: 1 << 40,
            },
            MdsRequest::ClusterChange { changes },
            MdsRequest::AuthAdd {
                entry: KeyEntry {
                    name: "n".into(),
                    node_id: "i".into(),
                    role: Role::Osd,
                },
            },
        ];
        for request in requests {
            let bytes = frame::encode(&request, b"").unwrap();
            let (back, _) = frame::decode::<MdsRequest>(&bytes).unwrap();
            assert_eq!(back, request);
        }
        let map = ClusterMap {
            osdmap: OsdMap::new(CrushMap::uniform(2, 2, Weight::ONE).unwrap()).unwrap(),
            addresses: vec![],
            keys: vec![],
        };
        for response in [
            MdsResponse::ClusterMap(Box::new(map)),
            MdsResponse::Epoch(Err("no".into())),
            MdsResponse::Reply(Err(Errno::ENOENT)),
        ] {
            let bytes = frame::encode(&response, b"").unwrap();
            assert_eq!(frame::decode::<MdsResponse>(&bytes).unwrap().0, response);
        }
    }
}
