//! The MDS client protocol (ALPN `aspen/mds/1`): mutations go through Raft
//! on the leader; reads wait for a read index (linearizable) and read the
//! local state; a member that is not the leader answers with who is.

use aspen_proto::caps::{BUSY_WAIT, CapEvents, CapOp, CapReply, EVENT_WAIT, Revoke};
use aspen_proto::fs::{Attr, Caller, Timestamp};
use aspen_proto::mds::{
    ClusterMap, LOCK_REASK_GRACE, LOCK_WAIT, MdsRequest, MdsResponse, MdsStatus, NsOp, PgStat,
    Role, SessionId,
};
use aspen_proto::transport::frame::FrameError;
use aspen_proto::transport::{EndpointId, Service};
use aspen_proto::{Errno, InodeId};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};

use std::sync::{Arc, Mutex};

use super::monitor::OsdMonitor;
use super::raft_net::Raft;
use super::reads::ReadBarrier;
use super::revoke::{Revoker, answered};
use super::sessions::SessionClock;
use super::writes::WriteBatcher;
use crate::caps::CapOutcome;
use crate::locks::{self, LockFlavor, LockOwner, LockRequest, WaitGraph};
use crate::namespace::{Namespace, OpContext, StoreError};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{Command, MdsNode, Response};
use std::time::Duration;

/// The most entries one readdir reply carries.
pub const MAX_READDIR_REPLY: u32 = 1024;

pub struct MdsService {
    pub raft: Raft,
    pub state: StateMachineStore,
    pub raft_id: u64,
    pub sessions: Arc<SessionClock>,
    pub monitor: Arc<OsdMonitor>,
    pub reads: Arc<ReadBarrier>,
    pub writes: Arc<WriteBatcher>,
    /// Who waits for whose advisory locks (the leader's F_SETLKW waiters).
    pub lock_waits: Mutex<WaitGraph>,
    /// Cap revocations in flight.
    pub revoker: Arc<Revoker>,
    /// Held through a membership change: one at a time.
    pub membership_changes: tokio::sync::Mutex<()>,
}

/// How long a map request waits for a newer epoch.
pub const MAP_WAIT: Duration = Duration::from_secs(10);
/// How long a member being added may take to catch up as a learner before
/// it is made a voter.
pub const LEARNER_CATCH_UP_WAIT: Duration = Duration::from_secs(120);

/// The reply for a request this member cannot serve because of `error`.
pub fn refusal<E>(error: &RaftError<u64, E>) -> MdsResponse
where
    E: openraft::TryAsRef<openraft::error::ForwardToLeader<u64, MdsNode>>
        + std::fmt::Debug
        + std::fmt::Display,
{
    not_leader(error).unwrap_or_else(|| MdsResponse::Failed(error.to_string()))
}

fn not_leader<E>(error: &RaftError<u64, E>) -> Option<MdsResponse>
where
    E: openraft::TryAsRef<openraft::error::ForwardToLeader<u64, MdsNode>> + std::fmt::Debug,
{
    let forward = error.forward_to_leader::<MdsNode>()?;
    let leader = forward.leader_id.zip(forward.leader_node.clone());
    Some(MdsResponse::NotLeader { leader })
}

impl MdsService {
    fn role_of(&self, peer: &EndpointId) -> Option<Role> {
        aspen_proto::mds::role_of(&self.state.keys().ok()?, peer)
    }

    /// Replicates `command` and returns the state machine's answer.
    async fn write(&self, command: Command) -> Result<Response, MdsResponse> {
        self.writes.replicate(command).await
    }

    /// Waits until the local state is at least as new as the leader's
    /// commit point at the time of the call.
    async fn linearize(&self) -> Result<(), MdsResponse> {
        self.reads.wait().await
    }

    /// Runs a linearizable `read` of the namespace.
    async fn read<T>(
        &self,
        read: impl FnOnce(&Namespace) -> Result<T, StoreError>,
        wrap: impl FnOnce(T) -> MdsResponse,
    ) -> MdsResponse {
        if let Err(response) = self.linearize().await {
            return response;
        }
        match self.state.read(read) {
            Ok(value) => wrap(value),
            Err(error) => MdsResponse::Failed(error.to_string()),
        }
    }

    fn status(&self) -> MdsResponse {
        let metrics = self.raft.metrics().borrow().clone();
        let cluster = match self.state.cluster_map() {
            Ok(cluster) => cluster,
            Err(error) => return MdsResponse::Failed(error.to_string()),
        };
        let (capacity, used) = self.raw_space(&cluster);
        let map = &cluster.osdmap;
        let count = |keep: fn(&aspen_placement::OsdState) -> bool| {
            map.osds().values().filter(|s| keep(s)).count() as u32
        };
        let mut pg_states = std::collections::BTreeMap::new();
        for stat in self.pg_stats(map) {
            *pg_states.entry(stat.state).or_insert(0) += 1;
        }
        MdsResponse::Status(MdsStatus {
            fsid: self.state.fsid().ok().flatten().unwrap_or_default(),
            this: self.raft_id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|id| id.index),
            members: metrics
                .membership_config
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect(),
            osdmap_epoch: map.epoch().0,
            osds: map.osds().len() as u32,
            osds_up: count(|s| s.up),
            osds_in: count(|s| s.is_in),
            pools: map.pools().count() as u32,
            capacity,
            used,
            pg_states: pg_states.into_iter().collect(),
        })
    }

    /// Every PG's state: its primary's last report for the current acting
    /// set, `down` without a primary, `unknown` before a report.
    fn pg_stats(&self, map: &aspen_placement::OsdMap) -> Vec<PgStat> {
        let mut stats = Vec::new();
        for pool in map.pools() {
            for pg in pool.pgs() {
                let Ok(mapping) = map.pg_mapping(pg) else {
                    continue;
                };
                // A report from before this epoch may describe another
                // acting set (or come from an OSD that has since died).
                let report = mapping
                    .acting_primary
                    .and_then(|primary| self.monitor.pg_report(pg, primary))
                    .filter(|report| report.epoch == map.epoch().0);
                let state = match (mapping.acting_primary, report) {
                    (None, _) => "down".to_string(),
                    (Some(_), None) => "unknown".to_string(),
                    (Some(_), Some(report)) => report.flags.describe(),
                };
                stats.push(PgStat {
                    pg,
                    state,
                    up: mapping.up,
                    acting: mapping.acting,
                    objects: report.map_or(0, |r| r.objects),
                });
            }
        }
        stats
    }

    /// Raw bytes the OSDs that are in may hold and hold.
    fn raw_space(&self, cluster: &ClusterMap) -> (u64, u64) {
        let counted: Vec<_> = cluster
            .addresses
            .iter()
            .filter(|a| cluster.osdmap.osds().get(&a.osd).is_some_and(|s| s.is_in))
            .collect();
        let capacity = counted.iter().map(|a| a.capacity).sum();
        let used = self.monitor.used(counted.iter().map(|a| a.osd));
        (capacity, used)
    }

    /// statfs: the namespace's inode counts, and the space the OSDs have
    /// divided by the largest pool's replica count (what a client can
    /// still write).
    async fn statfs(&self) -> MdsResponse {
        let mut statfs = match self.read(|ns| ns.statfs(), MdsResponse::StatFs).await {
            MdsResponse::StatFs(statfs) => statfs,
            other => return other,
        };
        let cluster = match self.state.cluster_map() {
            Ok(cluster) => cluster,
            Err(error) => return MdsResponse::Failed(error.to_string()),
        };
        let (capacity, used) = self.raw_space(&cluster);
        let copies = cluster
            .osdmap
            .pools()
            .map(|p| p.size as u64)
            .max()
            .unwrap_or(1)
            .max(1);
        let block = u64::from(statfs.block_size);
        statfs.blocks = capacity / copies / block;
        statfs.blocks_free = capacity.saturating_sub(used) / copies / block;
        statfs.blocks_available = statfs.blocks_free;
        MdsResponse::StatFs(statfs)
    }

    /// Whether `peer` holds the key `osd.ID` with the osd role.
    fn is_osd(&self, peer: &EndpointId, osd: aspen_placement::OsdId) -> bool {
        let (name, peer) = (format!("osd.{}", osd.0), peer.to_string());
        self.state.keys().is_ok_and(|keys| {
            keys.iter()
                .any(|k| k.name == name && k.node_id == peer && k.role == Role::Osd)
        })
    }

    fn epoch_reply(&self, written: Result<Response, MdsResponse>) -> MdsResponse {
        match written {
            Ok(Response::Epoch(result)) => MdsResponse::Epoch(result),
            Ok(other) => MdsResponse::Failed(format!("unexpected reply {other:?}")),
            Err(response) => response,
        }
    }

    async fn cluster_request(&self, peer: &EndpointId, request: MdsRequest) -> MdsResponse {
        match request {
            MdsRequest::OsdBoot {
                osd,
                addrs,
                host,
                weight,
                capacity,
            } => {
                if !self.is_osd(peer, osd) {
                    return MdsResponse::Unit(Err(Errno::EPERM));
                }
                self.monitor.heard(osd, None);
                let boot = Command::OsdBoot {
                    osd,
                    node_id: peer.to_string(),
                    addrs,
                    host,
                    weight,
                    capacity,
                };
                self.epoch_reply(self.write(boot).await)
            }
            MdsRequest::OsdHeartbeat { osd, used, pgs } => {
                if !self.is_osd(peer, osd) {
                    return MdsResponse::Unit(Err(Errno::EPERM));
                }
                if pgs.len() > aspen_proto::osd::MAX_PG_REPORTS {
                    return MdsResponse::Failed("too many PG reports".into());
                }
                if let Err(response) = self.linearize().await {
                    return response;
                }
                self.monitor.heard(osd, Some(used));
                self.monitor.pg_reports(osd, pgs);
                MdsResponse::Unit(Ok(()))
            }
            MdsRequest::PgBackfilled { osd, pg, up } => {
                if !self.is_osd(peer, osd) {
                    return MdsResponse::Unit(Err(Errno::EPERM));
                }
                self.epoch_reply(self.write(Command::PgBackfilled { osd, pg, up }).await)
            }
            MdsRequest::PgHolders { pg } => {
                if self.role_of(peer) != Some(Role::Osd) {
                    return MdsResponse::Unit(Err(Errno::EPERM));
                }
                if let Err(response) = self.linearize().await {
                    return response;
                }
                self.state.pg_holders(pg).map_or_else(
                    |e| MdsResponse::Failed(e.to_string()),
                    MdsResponse::PgHolders,
                )
            }
            MdsRequest::PgActivated { osd, pg, holders } => {
                if !self.is_osd(peer, osd) {
                    return MdsResponse::Unit(Err(Errno::EPERM));
                }
                if holders.len() > aspen_placement::crush::MAX_REPLICAS {
                    return MdsResponse::Failed("too many holders".into());
                }
                self.done(self.write(Command::PgActivated { pg, holders }).await)
            }
            MdsRequest::GetClusterMap { newer_than } => self.wait_for_map(newer_than).await,
            _ => MdsResponse::Failed("not a cluster request".into()),
        }
    }

    /// The cluster map once its epoch passes `newer_than`, or after [`MAP_WAIT`].
    async fn wait_for_map(&self, newer_than: u64) -> MdsResponse {
        if let Err(response) = self.linearize().await {
            return response;
        }
        let mut epochs = self.state.watch_epoch();
        let _ = tokio::time::timeout(MAP_WAIT, epochs.wait_for(|epoch| *epoch > newer_than)).await;
        match self.state.cluster_map() {
            Ok(map) => MdsResponse::ClusterMap(Box::new(map)),
            Err(error) => MdsResponse::Failed(error.to_string()),
        }
    }

    async fn admin(&self, request: MdsRequest) -> MdsResponse {
        match request {
            MdsRequest::AuthAdd { entry } => self.done(self.write(Command::AddKey(entry)).await),
            MdsRequest::AuthRemove { name } => {
                self.done(self.write(Command::RemoveKey(name)).await)
            }
            MdsRequest::ClusterChange { changes } => {
                self.epoch_reply(self.write(Command::ClusterChanges(changes)).await)
            }
            MdsRequest::AuthList => match self.linearize().await {
                Err(response) => response,
                Ok(()) => self
                    .state
                    .keys()
                    .map_or_else(|e| MdsResponse::Failed(e.to_string()), MdsResponse::Keys),
            },
            MdsRequest::AddMember { raft_id, member } => self.add_member(raft_id, member).await,
            MdsRequest::RemoveMember { raft_id } => {
                let _turn = match self.membership_turn().await {
                    Ok(turn) => turn,
                    Err(response) => return response,
                };
                let change = ChangeMembers::RemoveVoters([raft_id].into());
                self.change_membership(self.raft.change_membership(change, false).await)
            }
            _ => MdsResponse::Failed("not an admin request".into()),
        }
    }

    fn done(&self, written: Result<Response, MdsResponse>) -> MdsResponse {
        match written {
            Ok(Response::Done(result)) => MdsResponse::Unit(result),
            Ok(other) => MdsResponse::Failed(format!("unexpected reply {other:?}")),
            Err(response) => response,
        }
    }

    fn change_membership<T>(
        &self,
        result: Result<T, RaftError<u64, ClientWriteError<u64, MdsNode>>>,
    ) -> MdsResponse {
        match result {
            Ok(_) => MdsResponse::Unit(Ok(())),
            Err(error) => refusal(&error),
        }
    }

    /// The turn to change the membership (one change at a time), taken
    /// once every earlier entry is applied here.
    async fn membership_turn(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, MdsResponse> {
        let turn = self.membership_changes.lock().await;
        self.linearize().await?;
        Ok(turn)
    }

    /// Adds a member: as a learner first (it catches up), then as a voter.
    /// Each change starts once every earlier entry is applied here, one
    /// change at a time: openraft lets a change start when the last
    /// configuration is committed by its own count, which takes this
    /// leader's copy before it is on disk (`crate::raft::log_store`); an
    /// applied entry is on disk on a majority with the leader among them.
    /// The learner catches up outside the turn, so one that never does
    /// holds up no other change.
    async fn add_member(&self, raft_id: u64, member: MdsNode) -> MdsResponse {
        let added = {
            let _turn = match self.membership_turn().await {
                Ok(turn) => turn,
                Err(response) => return response,
            };
            match self.raft.add_learner(raft_id, member, false).await {
                Ok(written) => written.log_id,
                Err(error) => return refusal(&error),
            }
        };
        let caught_up = self
            .raft
            .wait(Some(LEARNER_CATCH_UP_WAIT))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|matched| matched.get(&raft_id))
                        .is_some_and(|matched| *matched >= Some(added))
                },
                "the learner caught up",
            )
            .await;
        if let Err(error) = caught_up {
            return MdsResponse::Failed(format!("mds.{raft_id} as a learner: {error}"));
        }
        let _turn = match self.membership_turn().await {
            Ok(turn) => turn,
            Err(response) => return response,
        };
        let change = ChangeMembers::AddVoterIds([raft_id].into());
        self.change_membership(self.raft.change_membership(change, false).await)
    }
}

impl MdsService {
    /// Whether `peer` owns the open session `session` (checked for the
    /// operations that create or drop handles).
    fn owns_session(&self, peer: &EndpointId, session: SessionId) -> bool {
        let owner = self.state.session_owner(session).ok().flatten();
        owner.is_some_and(|owner| owner == peer.to_string())
    }

    /// False for an `aspen.layout` setting that names a pool the map lacks
    /// (its files' data could be stored nowhere).
    fn layout_names_a_pool(&self, op: &NsOp) -> bool {
        let NsOp::SetXattr { name, value, .. } = op else {
            return true;
        };
        let pool = std::str::from_utf8(value)
            .ok()
            .and_then(aspen_proto::FileLayout::pool_in_text);
        match pool {
            Some(pool) if name == aspen_proto::layout::LAYOUT_XATTR => self
                .state
                .cluster_map()
                .is_ok_and(|map| map.osdmap.pools().any(|p| p.id == pool)),
            _ => true,
        }
    }

    /// A namespace mutation; `(session, request)` name it for the reply
    /// cache when `request` is not 0.
    async fn mutate(
        &self,
        peer: &EndpointId,
        caller: Caller,
        (session, request): (SessionId, u64),
        op: NsOp,
    ) -> MdsResponse {
        let handles = matches!(
            op,
            NsOp::Open { .. } | NsOp::Create { .. } | NsOp::Release { .. } | NsOp::Written { .. }
        );
        if let Err(errno) = self.check_mutation(&op) {
            return MdsResponse::Reply(Err(errno));
        }
        if handles || request != 0 {
            if !self.owns_session(peer, session) {
                return MdsResponse::Reply(Err(Errno::EBADF));
            }
            self.sessions.touch(session);
        }
        let ctx = OpContext {
            caller,
            now: Timestamp::now(),
            session,
        };
        let until = tokio::time::Instant::now() + BUSY_WAIT;
        let command = Command::Namespace { op, ctx, request };
        match self.write_under_caps(command, until).await {
            Ok(Response::Namespace(result)) => MdsResponse::Reply(result),
            Ok(other) => MdsResponse::Failed(format!("unexpected reply {other:?}")),
            Err(response) => response,
        }
    }

    /// What no client may ask for: ending a session by hand, or a layout
    /// in a pool the map lacks.
    fn check_mutation(&self, op: &NsOp) -> Result<(), Errno> {
        if matches!(op, NsOp::EndSession { .. }) {
            return Err(Errno::EPERM);
        }
        if !self.layout_names_a_pool(op) {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Replicates `command`, which other sessions' caps may hold up: their
    /// revocations are sent and answered (or their sessions evicted) and
    /// the command goes again, until `until`, after which the caller is
    /// told to send it again ([`MdsResponse::Busy`]).
    async fn write_under_caps(
        &self,
        command: Command,
        until: tokio::time::Instant,
    ) -> Result<Response, MdsResponse> {
        let mut gates = Vec::new();
        loop {
            let response = self.writes.write(command.clone()).await?;
            let Response::Cap(CapOutcome::Conflict(conflicts)) = response else {
                return Ok(response);
            };
            tracing::debug!(?conflicts, "revoking");
            gates.push(self.revoker.revoke(&conflicts));
            self.resolve(&conflicts, until).await?;
        }
    }

    /// Whether `session`'s cap answers `revoke` now.
    fn is_answered(&self, session: SessionId, revoke: &Revoke) -> bool {
        self.state
            .cap_of(session, revoke.ino)
            .is_ok_and(|held| answered(held, revoke))
    }

    /// Waits until every revocation in `conflicts` (already queued) is
    /// answered, evicting the sessions that leave one unanswered past the
    /// revoke timeout; [`MdsResponse::Busy`] at `until`.
    async fn resolve(
        &self,
        conflicts: &[(SessionId, Revoke)],
        until: tokio::time::Instant,
    ) -> Result<(), MdsResponse> {
        let mut changes = self.state.watch_caps();
        loop {
            changes.borrow_and_update();
            self.revoker
                .settle(|session, revoke| self.is_answered(session, revoke));
            let open: Vec<(SessionId, Revoke)> = conflicts
                .iter()
                .filter(|(session, revoke)| !self.is_answered(*session, revoke))
                .copied()
                .collect();
            if open.is_empty() {
                return Ok(());
            }
            let late = self.revoker.overdue(&open);
            if !late.is_empty() {
                for session in late {
                    tracing::warn!(
                        session = session.0,
                        "evicting a session that did not give up its caps"
                    );
                    self.write(Command::Evict(session)).await?;
                    self.revoker.forget_session(session);
                }
                continue;
            }
            let wake = self
                .revoker
                .next_deadline(&open)
                .map_or(until, |at| tokio::time::Instant::from_std(at).min(until));
            let woken = tokio::time::timeout_at(wake, changes.changed()).await;
            if woken.is_err() && tokio::time::Instant::now() >= until {
                tracing::debug!(?open, "busy");
                return Err(MdsResponse::Busy);
            }
        }
    }

    /// A linearizable read whose answer must not miss writes another
    /// session buffers: `read` also names the inodes it read, and the
    /// Exclusive caps of other sessions on them are brought down to
    /// Shared (their holders flush) before it is answered.
    async fn checked_read<T>(
        &self,
        read: impl Fn(&Namespace) -> Result<(T, Vec<InodeId>), StoreError>,
        wrap: impl FnOnce(T) -> MdsResponse,
    ) -> MdsResponse {
        let until = tokio::time::Instant::now() + BUSY_WAIT;
        let mut gates = Vec::new();
        loop {
            if let Err(response) = self.linearize().await {
                return response;
            }
            let conflicts = match self.state.read_checked(&read) {
                Ok((value, conflicts)) if conflicts.is_empty() => return wrap(value),
                Ok((_, conflicts)) => conflicts,
                Err(error) => return MdsResponse::Failed(error.to_string()),
            };
            gates.push(self.revoker.revoke(&conflicts));
            if let Err(response) = self.resolve(&conflicts, until).await {
                return response;
            }
        }
    }

    /// A request under capabilities.
    async fn cap_request(
        &self,
        peer: &EndpointId,
        caller: Caller,
        (session, request): (SessionId, u64),
        op: CapOp,
    ) -> MdsResponse {
        let refused = |errno| {
            MdsResponse::Cap(CapReply {
                result: Err(errno),
                grants: Vec::new(),
                attrs: Vec::new(),
                version: 0,
                barrier: 0,
            })
        };
        if !self.owns_session(peer, session) {
            return refused(Errno::ESTALE);
        }
        let mutations = match &op {
            CapOp::Mutate(op) => std::slice::from_ref(op),
            CapOp::MutateMany(ops) if CapOp::valid_batch(ops) => ops.as_slice(),
            CapOp::MutateMany(_) => return refused(Errno::EINVAL),
            _ => &[],
        };
        if let Err(errno) = mutations.iter().try_for_each(|op| self.check_mutation(op)) {
            return refused(errno);
        }
        self.sessions.touch(session);
        let until = tokio::time::Instant::now() + BUSY_WAIT;
        if !self
            .revoker
            .wait_open(&granted_inodes(&op), session, until)
            .await
        {
            tracing::debug!(?op, "busy at the gate");
            return MdsResponse::Busy;
        }
        let ctx = OpContext {
            caller,
            now: Timestamp::now(),
            session,
        };
        match self
            .write_under_caps(Command::Cap { op, ctx, request }, until)
            .await
        {
            Ok(Response::Cap(CapOutcome::Answer(reply))) => MdsResponse::Cap(reply),
            Ok(other) => MdsResponse::Failed(format!("unexpected reply {other:?}")),
            Err(response) => response,
        }
    }

    /// The session's revocation long poll.
    async fn cap_events(
        &self,
        peer: &EndpointId,
        session: SessionId,
        (instance, after): (u64, u64),
    ) -> MdsResponse {
        if let Err(response) = self.linearize().await {
            return response;
        }
        if !self.owns_session(peer, session) {
            return MdsResponse::CapEvents(CapEvents {
                instance: 0,
                revokes: Vec::new(),
                ended: true,
            });
        }
        self.sessions.touch(session);
        let (instance, revokes) = self
            .revoker
            .events(session, (instance, after), EVENT_WAIT)
            .await;
        MdsResponse::CapEvents(CapEvents {
            instance,
            revokes,
            ended: false,
        })
    }

    /// Whether `peer` owns `session` and asks for a lock owner in it.
    fn owns_lock_request(
        &self,
        peer: &EndpointId,
        session: SessionId,
        request: &LockRequest,
    ) -> bool {
        self.owns_session(peer, session) && request.owner.session == session.0
    }

    async fn lock_request(&self, peer: &EndpointId, request: MdsRequest) -> MdsResponse {
        match request {
            MdsRequest::GetLock {
                session,
                ino,
                request,
            } => {
                if !self.owns_lock_request(peer, session, &request) {
                    return MdsResponse::Lock(Err(Errno::EBADF));
                }
                if let Err(response) = self.linearize().await {
                    return response;
                }
                match self.state.locks(ino) {
                    Ok(held) => MdsResponse::Lock(Ok(locks::conflict(&held, &request))),
                    Err(error) => MdsResponse::Failed(error.to_string()),
                }
            }
            MdsRequest::SetLock {
                session,
                ino,
                request,
                wait,
            } => {
                if !self.owns_lock_request(peer, session, &request) {
                    return MdsResponse::Unit(Err(Errno::EBADF));
                }
                if request.start > request.end {
                    return MdsResponse::Unit(Err(Errno::EINVAL));
                }
                self.sessions.touch(session);
                self.set_lock(ino, request, wait).await
            }
            MdsRequest::ReleaseLocks {
                session,
                ino,
                owner,
                flavor,
            } => {
                if !self.owns_session(peer, session) {
                    return MdsResponse::Unit(Err(Errno::EBADF));
                }
                let owner = LockOwner {
                    session: session.0,
                    owner,
                };
                self.done(
                    self.write(Command::ReleaseLocks { ino, owner, flavor })
                        .await,
                )
            }
            _ => MdsResponse::Failed("not a lock request".into()),
        }
    }

    /// Takes a lock; with `wait`, waits (woken by every applied change that
    /// may free one, for at most [`LOCK_WAIT`]) until it is granted, unless
    /// the wait closes a cycle of POSIX waiters (EDEADLK). A wait that runs
    /// out stays in the wait graph for [`LOCK_REASK_GRACE`], the time the
    /// client has to ask again.
    async fn set_lock(&self, ino: InodeId, request: LockRequest, wait: bool) -> MdsResponse {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut changes = self.state.watch_locks();
        // Set where the wait ran out (the client asks again), not where a
        // non-waiting request was refused.
        let mut ran_out = false;
        let outcome = loop {
            changes.borrow_and_update();
            match self.write(Command::SetLock { ino, request }).await {
                Ok(Response::Lock(Ok(()))) => break MdsResponse::Unit(Ok(())),
                Ok(Response::Lock(Err(_))) if !wait => break MdsResponse::Unit(Err(Errno::EAGAIN)),
                Ok(Response::Lock(Err(_))) => {}
                Ok(other) => break MdsResponse::Failed(format!("unexpected reply {other:?}")),
                Err(response) => break response,
            }
            if tokio::time::Instant::now() >= deadline {
                ran_out = true;
                break MdsResponse::Unit(Err(Errno::EAGAIN));
            }
            let holders = match self.state.locks(ino) {
                Ok(held) => locks::blockers(&held, &request),
                Err(error) => break MdsResponse::Failed(error.to_string()),
            };
            {
                let mut graph = self.lock_waits.lock().unwrap_or_else(|p| p.into_inner());
                let posix = request.flavor == LockFlavor::Posix;
                let now = std::time::Instant::now();
                if posix && graph.would_deadlock(request.owner, &holders, now) {
                    break MdsResponse::Unit(Err(Errno::EDEADLK));
                }
                graph.wait(request.owner, holders, now);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                ran_out = true;
                break MdsResponse::Unit(Err(Errno::EAGAIN));
            }
        };
        let mut graph = self.lock_waits.lock().unwrap_or_else(|p| p.into_inner());
        if ran_out {
            graph.pause(request.owner, std::time::Instant::now() + LOCK_REASK_GRACE);
        } else {
            graph.done(request.owner);
        }
        outcome
    }

    async fn session_request(&self, peer: &EndpointId, request: MdsRequest) -> MdsResponse {
        match request {
            MdsRequest::OpenSession => match self
                .write(Command::OpenSession {
                    client: peer.to_string(),
                })
                .await
            {
                Ok(Response::Session(session)) => {
                    self.sessions.touch(session);
                    MdsResponse::Session(session)
                }
                Ok(other) => MdsResponse::Failed(format!("unexpected reply {other:?}")),
                Err(response) => response,
            },
            MdsRequest::RenewSession { session } => {
                if let Err(response) = self.linearize().await {
                    return response;
                }
                if !self.owns_session(peer, session) {
                    return MdsResponse::Unit(Err(Errno::ESTALE));
                }
                self.sessions.touch(session);
                MdsResponse::Unit(Ok(()))
            }
            MdsRequest::CloseSession { session } => {
                if !self.owns_session(peer, session) {
                    return MdsResponse::Unit(Err(Errno::ESTALE));
                }
                self.done(self.write(Command::CloseSession(session)).await)
            }
            _ => MdsResponse::Failed("not a session request".into()),
        }
    }
}

impl Service for MdsService {
    type Request = MdsRequest;
    type Response = MdsResponse;

    async fn call(
        &self,
        peer: EndpointId,
        request: MdsRequest,
        _body: Vec<u8>,
    ) -> (MdsResponse, Vec<u8>) {
        let response = match request {
            MdsRequest::Mutate {
                caller,
                session,
                request,
                op,
            } => self.mutate(&peer, caller, (session, request), op).await,
            lock @ (MdsRequest::GetLock { .. }
            | MdsRequest::SetLock { .. }
            | MdsRequest::ReleaseLocks { .. }) => self.lock_request(&peer, lock).await,
            session @ (MdsRequest::OpenSession
            | MdsRequest::RenewSession { .. }
            | MdsRequest::CloseSession { .. }) => self.session_request(&peer, session).await,
            MdsRequest::Lookup {
                caller,
                parent,
                name,
            } => {
                let read = |ns: &Namespace| {
                    let found = ns.lookup(parent, &name, &caller)?;
                    Ok((found.clone(), read_inodes(parent, &found)))
                };
                self.checked_read(read, MdsResponse::Attr).await
            }
            MdsRequest::GetAttr { ino } => {
                let read = |ns: &Namespace| Ok((ns.getattr(ino)?, vec![ino]));
                self.checked_read(read, MdsResponse::Attr).await
            }
            MdsRequest::ReadDir {
                caller,
                ino,
                offset,
                limit,
            } => {
                let limit = limit.min(MAX_READDIR_REPLY) as usize;
                let read =
                    |ns: &Namespace| Ok((ns.readdir(ino, offset, limit, &caller)?, vec![ino]));
                self.checked_read(read, MdsResponse::Entries).await
            }
            MdsRequest::Cap {
                caller,
                session,
                request,
                op,
            } => {
                self.cap_request(&peer, caller, (session, request), op)
                    .await
            }
            MdsRequest::CapEvents {
                session,
                instance,
                after,
            } => self.cap_events(&peer, session, (instance, after)).await,
            MdsRequest::ReadLink { ino } => {
                self.read(|ns| ns.readlink(ino), MdsResponse::Bytes).await
            }
            MdsRequest::Access { caller, ino, mask } => {
                self.read(|ns| ns.access(ino, mask, &caller), MdsResponse::Unit)
                    .await
            }
            MdsRequest::GetXattr { caller, ino, name } => {
                self.read(|ns| ns.getxattr(ino, &name, &caller), MdsResponse::Bytes)
                    .await
            }
            MdsRequest::ListXattr { caller, ino } => {
                self.read(|ns| ns.listxattr(ino, &caller), MdsResponse::Names)
                    .await
            }
            MdsRequest::StatFs => self.statfs().await,
            cluster @ (MdsRequest::OsdBoot { .. }
            | MdsRequest::OsdHeartbeat { .. }
            | MdsRequest::PgBackfilled { .. }
            | MdsRequest::PgHolders { .. }
            | MdsRequest::PgActivated { .. }
            | MdsRequest::GetClusterMap { .. }) => self.cluster_request(&peer, cluster).await,
            MdsRequest::Status => self.status(),
            MdsRequest::PgStats => match self.state.cluster_map() {
                Ok(cluster) => MdsResponse::PgStats(self.pg_stats(&cluster.osdmap)),
                Err(error) => MdsResponse::Failed(error.to_string()),
            },
            admin => {
                if self.role_of(&peer) == Some(Role::Admin) {
                    self.admin(admin).await
                } else {
                    MdsResponse::Unit(Err(Errno::EPERM))
                }
            }
        };
        (response, Vec::new())
    }

    fn malformed(&self, error: &FrameError) -> MdsResponse {
        MdsResponse::Failed(format!("malformed request: {error}"))
    }
}

/// The inodes a lookup read: the directory, and what it found.
fn read_inodes(parent: InodeId, found: &Result<Attr, Errno>) -> Vec<InodeId> {
    let mut inodes = vec![parent];
    if let Ok(attr) = found {
        inodes.push(attr.ino);
    }
    inodes
}

/// The inodes a request under capabilities would grant caps on (known
/// before it runs), which must not be under revocation when it is sent.
fn granted_inodes(op: &CapOp) -> Vec<InodeId> {
    match op {
        CapOp::GetAttr { ino } | CapOp::Want { ino, .. } => vec![*ino],
        CapOp::Lookup { parent, .. } => vec![*parent],
        CapOp::Mutate(NsOp::Open { ino, .. }) => vec![*ino],
        _ => Vec::new(),
    }
}
