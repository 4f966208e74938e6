//! Revocation, on the leader: the revocations each session has yet to
//! answer (delivered by its event long poll), how long each has been
//! waiting (a session that does not answer within the revoke timeout is
//! evicted), and the inodes whose caps are being revoked (no new grant on
//! them slips in before the request that waits for them goes on).
//!
//! Nothing here is replicated: a new leader starts empty, and requests
//! that were waiting are sent again by their clients and find their
//! conflicts anew in the replicated cap table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aspen_proto::InodeId;
use aspen_proto::caps::{MAX_EVENTS, Revoke};
use aspen_proto::mds::SessionId;
use tokio::sync::watch;

use crate::caps::HeldCap;

/// How long a session may take to answer a revocation before it is
/// evicted (the default).
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A revocation waiting for its answer.
struct Pending {
    session: SessionId,
    revoke: Revoke,
    since: Instant,
}

#[derive(Default)]
struct State {
    pending: BTreeMap<u64, Pending>,
    /// Inodes whose caps are being revoked, with how many waiters hold
    /// each gate.
    gates: HashMap<InodeId, usize>,
}

/// The leader's revocations in flight.
pub struct Revoker {
    /// Tells this leader's delivery ids from another's.
    instance: u64,
    timeout: Duration,
    next_id: Mutex<u64>,
    state: Mutex<State>,
    /// Moves when a revocation is queued or a gate opens.
    changed: watch::Sender<u64>,
}

/// Whether the cap `held` (if any) answers `revoke`: it is gone, down to
/// what was asked, or granted anew since (the request that needed the
/// revocation will find that one itself).
pub fn answered(held: Option<HeldCap>, revoke: &Revoke) -> bool {
    match held {
        None => true,
        Some(cap) if cap.seq > revoke.seq => true,
        Some(cap) => revoke.to.is_some_and(|to| cap.mode <= to),
    }
}

/// Keeps gates shut while a request waits; opens them when dropped.
pub struct Gate<'a> {
    revoker: &'a Revoker,
    inodes: Vec<InodeId>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut state = self.revoker.lock();
        for ino in &self.inodes {
            if let Some(count) = state.gates.get_mut(ino) {
                *count -= 1;
                if *count == 0 {
                    state.gates.remove(ino);
                }
            }
        }
        drop(state);
        self.revoker.changed.send_modify(|n| *n += 1);
    }
}

impl Revoker {
    pub fn new(timeout: Duration) -> Revoker {
        let instance = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Revoker {
            instance,
            timeout,
            next_id: Mutex::new(1),
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `conflicts` for delivery (each once: one already waiting
    /// keeps its place and its clock) and shuts their inodes' gates until
    /// the returned guard drops.
    pub fn revoke(&self, conflicts: &[(SessionId, Revoke)]) -> Gate<'_> {
        let mut state = self.lock();
        let now = Instant::now();
        for (session, revoke) in conflicts {
            let queued = state
                .pending
                .values()
                .any(|p| p.session == *session && p.revoke == *revoke);
            if !queued {
                let id = {
                    let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
                    *next += 1;
                    *next
                };
                let pending = Pending {
                    session: *session,
                    revoke: *revoke,
                    since: now,
                };
                state.pending.insert(id, pending);
            }
        }
        let mut inodes: Vec<InodeId> = conflicts.iter().map(|(_, r)| r.ino).collect();
        inodes.sort();
        inodes.dedup();
        for ino in &inodes {
            *state.gates.entry(*ino).or_insert(0) += 1;
        }
        drop(state);
        self.changed.send_modify(|n| *n += 1);
        Gate {
            revoker: self,
            inodes,
        }
    }

    /// Forgets the revocations `answered` says are done.
    pub fn settle(&self, mut answered: impl FnMut(SessionId, &Revoke) -> bool) {
        self.lock()
            .pending
            .retain(|_, p| !answered(p.session, &p.revoke));
    }

    /// Forgets every revocation of an ended session.
    pub fn forget_session(&self, session: SessionId) {
        self.lock().pending.retain(|_, p| p.session != session);
    }

    /// The sessions among `conflicts` that have left a revocation
    /// unanswered past the timeout.
    pub fn overdue(&self, conflicts: &[(SessionId, Revoke)]) -> Vec<SessionId> {
        let state = self.lock();
        let mut late: Vec<SessionId> = state
            .pending
            .values()
            .filter(|p| p.since.elapsed() > self.timeout)
            .filter(|p| {
                conflicts
                    .iter()
                    .any(|(s, r)| *s == p.session && *r == p.revoke)
            })
            .map(|p| p.session)
            .collect();
        late.sort_by_key(|s| s.0);
        late.dedup();
        late
    }

    /// When the oldest of `conflicts` becomes overdue.
    pub fn next_deadline(&self, conflicts: &[(SessionId, Revoke)]) -> Option<Instant> {
        let state = self.lock();
        state
            .pending
            .values()
            .filter(|p| {
                conflicts
                    .iter()
                    .any(|(s, r)| *s == p.session && *r == p.revoke)
            })
            .map(|p| p.since + self.timeout)
            .min()
    }

    /// Whether any of `inodes` is gated for `session`. A session whose
    /// own cap on an inode is being revoked passes that inode's gate: its
    /// kernel may hold the file's pages locked for the write that asks,
    /// and the revocation waits to drop those pages.
    fn gated(&self, inodes: &[InodeId], session: SessionId) -> bool {
        let state = self.lock();
        let revoked_from = |ino: &InodeId| {
            state
                .pending
                .values()
                .any(|p| p.session == session && p.revoke.ino == *ino)
        };
        inodes
            .iter()
            .any(|ino| state.gates.contains_key(ino) && !revoked_from(ino))
    }

    /// Waits until none of `inodes` is gated for `session`, or `until`;
    /// whether they are open.
    pub async fn wait_open(
        &self,
        inodes: &[InodeId],
        session: SessionId,
        until: tokio::time::Instant,
    ) -> bool {
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            if !self.gated(inodes, session) {
                return true;
            }
            if tokio::time::timeout_at(until, changes.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// The revocations waiting for `session` with ids above `after` (all
    /// of them if `instance` is another leader's), waiting up to `wait`
    /// for one; with this leader's instance.
    pub async fn events(
        &self,
        session: SessionId,
        (instance, after): (u64, u64),
        wait: Duration,
    ) -> (u64, Vec<(u64, Revoke)>) {
        let after = if instance == self.instance { after } else { 0 };
        let mut changes = self.changed.subscribe();
        let until = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            let events: Vec<(u64, Revoke)> = self
                .lock()
                .pending
                .range(after + 1..)
                .filter(|(_, p)| p.session == session)
                .map(|(id, p)| (*id, p.revoke))
                .take(MAX_EVENTS)
                .collect();
            if !events.is_empty() {
                return (self.instance, events);
            }
            if tokio::time::timeout_at(until, changes.changed())
                .await
                .is_err()
            {
                return (self.instance, Vec::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_proto::caps::CapMode;

    fn revoke(ino: u64, seq: u64, to: Option<CapMode>) -> Revoke {
        Revoke {
            ino: InodeId(ino),
            seq,
            to,
        }
    }

    #[test]
    fn a_revocation_is_answered_by_the_cap_going_down_or_a_newer_grant() {
        let cap = |mode, seq| {
            Some(HeldCap {
                session: SessionId(1),
                mode,
                seq,
            })
        };
        let to_shared = revoke(5, 3, Some(CapMode::Shared));
        assert!(!answered(cap(CapMode::Exclusive, 3), &to_shared));
        assert!(answered(cap(CapMode::Shared, 3), &to_shared));
        assert!(answered(cap(CapMode::Exclusive, 4), &to_shared));
        assert!(answered(None, &to_shared));
        assert!(!answered(cap(CapMode::Shared, 3), &revoke(5, 3, None)));
    }

    #[tokio::test]
    async fn events_are_delivered_once_per_id_and_kept_until_answered() {
        let revoker = Revoker::new(Duration::from_millis(50));
        let (a, b) = (SessionId(1), SessionId(2));
        let conflicts = [(a, revoke(5, 3, None)), (b, revoke(5, 4, None))];
        let gate = revoker.revoke(&conflicts);
        let _again = revoker.revoke(&conflicts[..1]);
        let (instance, events) = revoker.events(a, (0, 0), Duration::ZERO).await;
        assert_eq!(events.len(), 1, "a repeated revocation is queued once");
        let (_, none) = revoker
            .events(a, (instance, events[0].0), Duration::from_millis(10))
            .await;
        assert!(none.is_empty(), "nothing new after the last id");
        let (_, all) = revoker.events(a, (instance + 1, 99), Duration::ZERO).await;
        assert_eq!(all.len(), 1, "a new leader's numbering starts over");
        assert!(revoker.overdue(&conflicts).is_empty());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(revoker.overdue(&conflicts), vec![a, b]);
        revoker.settle(|session, _| session == a);
        assert_eq!(revoker.overdue(&conflicts), vec![b]);
        let c = SessionId(3);
        assert!(revoker.gated(&[InodeId(5)], c));
        assert!(
            !revoker.gated(&[InodeId(5)], b),
            "b's own cap on 5 is being revoked"
        );
        drop(gate);
        drop(_again);
        assert!(!revoker.gated(&[InodeId(5)], c));
    }
}
