//! Advisory file locks, the pure core: POSIX byte-range locks (`fcntl`)
//! and whole-file `flock` locks on one inode, with Linux's rules for
//! conflicts, for merging and splitting an owner's ranges, and for
//! deadlock between waiting owners. No I/O and no clock: the MDS keeps the
//! held locks in its replicated state and the waiting requests on its
//! leader, and calls these functions on both.
//!
//! POSIX locks and flock locks never conflict with each other (as on
//! Linux). An owner never conflicts with itself: locking a range it holds
//! converts that part to the new kind.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

pub use aspen_proto::lock::{Lock, LockFlavor, LockKind, LockOwner, LockRequest, TO_END};

fn overlaps(lock: &Lock, start: u64, end: u64) -> bool {
    lock.start <= end && start <= lock.end
}

/// Whether `lock` keeps `request` from being granted.
fn blocks(lock: &Lock, request: &LockRequest) -> bool {
    let Some(kind) = request.kind else {
        return false;
    };
    lock.flavor == request.flavor
        && lock.owner != request.owner
        && overlaps(lock, request.start, request.end)
        && (lock.kind == LockKind::Exclusive || kind == LockKind::Exclusive)
}

/// The first held lock that keeps `request` from being granted (F_GETLK).
pub fn conflict(locks: &[Lock], request: &LockRequest) -> Option<Lock> {
    locks.iter().find(|lock| blocks(lock, request)).copied()
}

/// Every owner holding a lock that keeps `request` waiting.
pub fn blockers(locks: &[Lock], request: &LockRequest) -> BTreeSet<LockOwner> {
    locks
        .iter()
        .filter(|lock| blocks(lock, request))
        .map(|lock| lock.owner)
        .collect()
}

/// Grants or applies `request` (F_SETLK): on a conflict nothing changes
/// and the conflicting lock is returned. An unlock always succeeds.
pub fn apply(locks: &mut Vec<Lock>, request: &LockRequest) -> Result<(), Lock> {
    if let Some(held) = conflict(locks, request) {
        return Err(held);
    }
    cut_owner_range(locks, request);
    if let Some(kind) = request.kind {
        locks.push(Lock {
            owner: request.owner,
            pid: request.pid,
            flavor: request.flavor,
            kind,
            start: request.start,
            end: request.end,
        });
        merge_owner(locks, request.owner, request.flavor, kind);
    }
    Ok(())
}

/// Removes the part of the requester's own locks (of its flavor) that the
/// request's range covers, splitting a lock that reaches past it.
fn cut_owner_range(locks: &mut Vec<Lock>, request: &LockRequest) {
    let mut kept = Vec::with_capacity(locks.len() + 1);
    for lock in locks.drain(..) {
        let own = lock.owner == request.owner && lock.flavor == request.flavor;
        if !own || !overlaps(&lock, request.start, request.end) {
            kept.push(lock);
            continue;
        }
        if lock.start < request.start {
            kept.push(Lock {
                end: request.start - 1,
                ..lock
            });
        }
        if lock.end > request.end {
            kept.push(Lock {
                start: request.end + 1,
                ..lock
            });
        }
    }
    *locks = kept;
}

/// Joins the owner's locks of one kind that overlap or touch.
fn merge_owner(locks: &mut Vec<Lock>, owner: LockOwner, flavor: LockFlavor, kind: LockKind) {
    let mine = |l: &Lock| l.owner == owner && l.flavor == flavor && l.kind == kind;
    let mut same: Vec<Lock> = locks.iter().filter(|l| mine(l)).copied().collect();
    locks.retain(|l| !mine(l));
    same.sort_by_key(|l| l.start);
    let mut merged: Vec<Lock> = Vec::with_capacity(same.len());
    for lock in same {
        match merged.last_mut() {
            Some(last) if lock.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(lock.end);
            }
            _ => merged.push(lock),
        }
    }
    locks.extend(merged);
}

/// Drops every lock of `owner` in `flavor` (a POSIX owner's close of the
/// file, or the last close of a flock's open file).
pub fn release_owner(locks: &mut Vec<Lock>, owner: LockOwner, flavor: LockFlavor) {
    locks.retain(|l| !(l.owner == owner && l.flavor == flavor));
}

/// Who waits for whom, across every inode, to refuse a wait that would
/// never end (EDEADLK) as Linux does for POSIX locks. A client waits in
/// asks of bounded length; between two asks its waiter stays here,
/// paused, so a cycle closed in that moment is still seen. A paused waiter
/// that is not asked for again by the time given lapses (its process gave
/// up or its client died).
#[derive(Clone, Debug, Default)]
pub struct WaitGraph {
    waits_for: BTreeMap<LockOwner, Waiter>,
}

#[derive(Clone, Debug)]
struct Waiter {
    holders: BTreeSet<LockOwner>,
    lapses_at: Option<Instant>,
}

impl Waiter {
    fn live(&self, now: Instant) -> bool {
        self.lapses_at.is_none_or(|at| now < at)
    }
}

impl WaitGraph {
    /// Whether `waiter` waiting for `holders` closes a cycle at `now`.
    pub fn would_deadlock(
        &self,
        waiter: LockOwner,
        holders: &BTreeSet<LockOwner>,
        now: Instant,
    ) -> bool {
        let mut seen = BTreeSet::new();
        let mut next: Vec<LockOwner> = holders.iter().copied().collect();
        while let Some(owner) = next.pop() {
            if owner == waiter {
                return true;
            }
            if seen.insert(owner)
                && let Some(theirs) = self.waits_for.get(&owner).filter(|w| w.live(now))
            {
                next.extend(theirs.holders.iter().copied());
            }
        }
        false
    }

    /// Records that `waiter` waits for `holders` (replacing what it waited
    /// for before), and forgets the waiters that lapsed by `now`.
    pub fn wait(&mut self, waiter: LockOwner, holders: BTreeSet<LockOwner>, now: Instant) {
        self.waits_for.retain(|_, w| w.live(now));
        self.waits_for.insert(
            waiter,
            Waiter {
                holders,
                lapses_at: None,
            },
        );
    }

    /// `waiter`'s ask ran out: it still waits if asked for again before
    /// `lapses_at`.
    pub fn pause(&mut self, waiter: LockOwner, lapses_at: Instant) {
        if let Some(waiting) = self.waits_for.get_mut(&waiter) {
            waiting.lapses_at = Some(lapses_at);
        }
    }

    /// `waiter` no longer waits (granted, refused or gone).
    pub fn done(&mut self, waiter: LockOwner) {
        self.waits_for.remove(&waiter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: LockOwner = LockOwner {
        session: 1,
        owner: 10,
    };
    const B: LockOwner = LockOwner {
        session: 2,
        owner: 20,
    };

    fn request(owner: LockOwner, kind: Option<LockKind>, start: u64, end: u64) -> LockRequest {
        LockRequest {
            owner,
            pid: owner.owner as u32,
            flavor: LockFlavor::Posix,
            kind,
            start,
            end,
        }
    }

    #[test]
    fn shared_locks_coexist_and_an_exclusive_one_conflicts() {
        let mut locks = Vec::new();
        apply(&mut locks, &request(A, Some(LockKind::Shared), 0, 99)).unwrap();
        apply(&mut locks, &request(B, Some(LockKind::Shared), 50, 149)).unwrap();
        let held = apply(&mut locks, &request(B, Some(LockKind::Exclusive), 0, 9)).unwrap_err();
        assert_eq!((held.owner, held.pid, held.start), (A, 10, 0));
        assert_eq!(locks.len(), 2, "a refused request changes nothing");
    }

    #[test]
    fn unlocking_the_middle_splits_and_relocking_merges() {
        let mut locks = Vec::new();
        apply(
            &mut locks,
            &request(A, Some(LockKind::Exclusive), 0, TO_END),
        )
        .unwrap();
        apply(&mut locks, &request(A, None, 100, 199)).unwrap();
        let mut ranges: Vec<(u64, u64)> = locks.iter().map(|l| (l.start, l.end)).collect();
        ranges.sort();
        assert_eq!(ranges, vec![(0, 99), (200, TO_END)]);
        apply(&mut locks, &request(A, Some(LockKind::Exclusive), 100, 199)).unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!((locks[0].start, locks[0].end), (0, TO_END));
    }

    #[test]
    fn posix_and_flock_locks_do_not_conflict() {
        let mut locks = Vec::new();
        apply(
            &mut locks,
            &request(A, Some(LockKind::Exclusive), 0, TO_END),
        )
        .unwrap();
        let flock = LockRequest {
            flavor: LockFlavor::Flock,
            ..request(B, Some(LockKind::Exclusive), 0, TO_END)
        };
        apply(&mut locks, &flock).unwrap();
        release_owner(&mut locks, A, LockFlavor::Posix);
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].flavor, LockFlavor::Flock);
    }

    #[test]
    fn two_owners_waiting_for_each_other_deadlock() {
        let now = Instant::now();
        let mut graph = WaitGraph::default();
        graph.wait(A, BTreeSet::from([B]), now);
        assert!(graph.would_deadlock(B, &BTreeSet::from([A]), now));
        let c = LockOwner {
            session: 3,
            owner: 30,
        };
        assert!(!graph.would_deadlock(c, &BTreeSet::from([A]), now));
        graph.done(A);
        assert!(!graph.would_deadlock(B, &BTreeSet::from([A]), now));
    }

    #[test]
    fn a_waiter_between_two_asks_still_waits_until_it_lapses() {
        let now = Instant::now();
        let later = |ms| now + std::time::Duration::from_millis(ms);
        let mut graph = WaitGraph::default();
        graph.wait(A, BTreeSet::from([B]), now);
        graph.pause(A, later(1000));
        assert!(graph.would_deadlock(B, &BTreeSet::from([A]), later(999)));
        assert!(!graph.would_deadlock(B, &BTreeSet::from([A]), later(1000)));
        // Asked for again in time: waiting, with no end, once more.
        graph.wait(A, BTreeSet::from([B]), later(500));
        assert!(graph.would_deadlock(B, &BTreeSet::from([A]), later(5000)));
        // A lapsed waiter is forgotten by the next wait.
        graph.pause(A, later(1000));
        graph.wait(B, BTreeSet::new(), later(2000));
        assert!(!graph.waits_for.contains_key(&A));
    }

    /// Requests name bytes below SPAN; byte SPAN of the model stands for
    /// every byte from SPAN on (what a lock to TO_END also covers).
    const SPAN: u64 = 12;

    /// The model: who holds each byte, and how.
    type Bytes = BTreeMap<(LockOwner, u64), LockKind>;

    fn model_apply(bytes: &mut Bytes, r: &LockRequest) -> bool {
        let end = r.end.min(SPAN);
        if let Some(kind) = r.kind {
            let blocked = bytes.iter().any(|((owner, byte), held)| {
                *owner != r.owner
                    && (r.start..=end).contains(byte)
                    && (*held == LockKind::Exclusive || kind == LockKind::Exclusive)
            });
            if blocked {
                return false;
            }
        }
        for byte in r.start..=end {
            match r.kind {
                Some(kind) => bytes.insert((r.owner, byte), kind),
                None => bytes.remove(&(r.owner, byte)),
            };
        }
        true
    }

    fn expand(locks: &[Lock]) -> Bytes {
        let mut bytes = Bytes::new();
        for lock in locks {
            for byte in lock.start..=lock.end.min(SPAN) {
                assert!(
                    bytes.insert((lock.owner, byte), lock.kind).is_none(),
                    "an owner's locks overlap: {locks:?}"
                );
            }
        }
        bytes
    }

    fn any_request() -> impl Strategy<Value = LockRequest> {
        let owner = prop_oneof![Just(A), Just(B)];
        let kind = prop_oneof![
            Just(None),
            Just(Some(LockKind::Shared)),
            Just(Some(LockKind::Exclusive))
        ];
        (owner, kind, 0..SPAN, 0..SPAN, any::<bool>()).prop_map(|(owner, kind, a, b, to_end)| {
            let end = if to_end { TO_END } else { a.max(b) };
            request(owner, kind, a.min(b), end)
        })
    }

    proptest! {
        #[test]
        fn locks_match_a_byte_by_byte_model(requests in proptest::collection::vec(any_request(), 1..40)) {
            let (mut locks, mut bytes) = (Vec::new(), Bytes::new());
            for r in &requests {
                let granted = apply(&mut locks, r).is_ok();
                prop_assert_eq!(granted, model_apply(&mut bytes, r), "{:?}", r);
                prop_assert_eq!(expand(&locks), bytes.clone());
            }
        }
    }
}
