//! Capability rules, pure: which caps of other sessions a request
//! conflicts with and what each must become, how a grant merges with the
//! cap a session holds, and what an acknowledgement leaves. The table
//! itself is `namespace::caps`; revocation is the server's
//! (`server::revoke`).
//!
//! The invariant every rule keeps: a session holding Exclusive on an inode
//! is its only holder.

use aspen_proto::InodeId;
use aspen_proto::caps::{CapMode, CapReply, Revoke};
use aspen_proto::mds::SessionId;
use serde::{Deserialize, Serialize};

/// A cap one session holds on an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCap {
    pub session: SessionId,
    pub mode: CapMode,
    pub seq: u64,
}

/// What a request does to an inode, as far as other sessions' caches go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reads it, or caches it Shared: nobody else may buffer changes.
    Read,
    /// Changes it, or takes it Exclusive: nobody else may cache it.
    Change,
}

impl Need {
    /// The need behind holding `mode`.
    pub fn to_hold(mode: CapMode) -> Need {
        match mode {
            CapMode::Shared => Need::Read,
            CapMode::Exclusive => Need::Change,
        }
    }
}

/// The caps of sessions other than `requester` (`None`: a request from no
/// session) that must change before a request with `need` on `ino` goes
/// on, each with the revocation that brings it down far enough.
pub fn conflicts(
    ino: InodeId,
    held: &[HeldCap],
    requester: Option<SessionId>,
    need: Need,
) -> Vec<(SessionId, Revoke)> {
    held.iter()
        .filter(|cap| Some(cap.session) != requester)
        .filter_map(|cap| {
            let to = match (need, cap.mode) {
                (Need::Read, CapMode::Shared) => return None,
                (Need::Read, CapMode::Exclusive) => Some(CapMode::Shared),
                (Need::Change, _) => None,
            };
            Some((
                cap.session,
                Revoke {
                    ino,
                    seq: cap.seq,
                    to,
                },
            ))
        })
        .collect()
}

/// The mode a session holds after being granted `wanted` on top of `held`.
pub fn merge(held: Option<CapMode>, wanted: CapMode) -> CapMode {
    held.map_or(wanted, |held| held.max(wanted))
}

/// The mode left after the holder of `held` acknowledges a revocation of
/// grant `acked` down to `to`: a grant newer than the one revoked stands.
pub fn after_ack(held: HeldCap, acked: u64, to: Option<CapMode>) -> Option<CapMode> {
    if held.seq > acked {
        return Some(held.mode);
    }
    to.map(|to| to.min(held.mode))
}

/// What applying a request under capabilities came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CapOutcome {
    /// Applied (or refused with an errno), with the grants it made.
    Answer(CapReply),
    /// Not applied: these sessions must first give up their caps.
    Conflict(Vec<(SessionId, Revoke)>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const X: InodeId = InodeId(7);

    fn held(session: u64, mode: CapMode, seq: u64) -> HeldCap {
        HeldCap {
            session: SessionId(session),
            mode,
            seq,
        }
    }

    #[test]
    fn readers_share_and_a_change_clears_everyone_else() {
        let caps = [held(1, CapMode::Shared, 1), held(2, CapMode::Shared, 2)];
        assert!(conflicts(X, &caps, Some(SessionId(3)), Need::Read).is_empty());
        let change = conflicts(X, &caps, Some(SessionId(1)), Need::Change);
        assert_eq!(
            change,
            vec![(
                SessionId(2),
                Revoke {
                    ino: X,
                    seq: 2,
                    to: None
                }
            )]
        );
        let exclusive = [held(1, CapMode::Exclusive, 5)];
        assert_eq!(
            conflicts(X, &exclusive, None, Need::Read)[0].1.to,
            Some(CapMode::Shared),
            "a reader only needs the writer to flush"
        );
    }

    #[test]
    fn an_ack_for_an_older_grant_leaves_the_newer_one() {
        let cap = held(1, CapMode::Exclusive, 9);
        assert_eq!(after_ack(cap, 8, None), Some(CapMode::Exclusive));
        assert_eq!(
            after_ack(cap, 9, Some(CapMode::Shared)),
            Some(CapMode::Shared)
        );
        assert_eq!(after_ack(cap, 10, None), None);
        let shared = held(1, CapMode::Shared, 3);
        assert_eq!(
            after_ack(shared, 3, Some(CapMode::Exclusive)),
            Some(CapMode::Shared),
            "an ack never raises a cap"
        );
    }

    /// One step of a run against the table: `session` wants `mode`, or
    /// changes the inode, and every conflict is acknowledged first.
    #[derive(Clone, Debug)]
    enum Step {
        Want(u64, CapMode),
        Change(u64),
        Release(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        let mode = prop_oneof![Just(CapMode::Shared), Just(CapMode::Exclusive)];
        prop_oneof![
            (1..5u64, mode).prop_map(|(s, m)| Step::Want(s, m)),
            (1..5u64).prop_map(Step::Change),
            (1..5u64).prop_map(Step::Release),
        ]
    }

    proptest! {
        /// Resolving conflicts and then granting keeps the invariant, and a
        /// change leaves the inode cached by nobody but its changer.
        #[test]
        fn exclusive_is_always_alone(steps in proptest::collection::vec(step(), 1..60)) {
            let mut table: BTreeMap<u64, HeldCap> = BTreeMap::new();
            let mut seq = 0;
            for step in steps {
                let (session, need) = match step {
                    Step::Want(s, m) => (s, Need::to_hold(m)),
                    Step::Change(s) => (s, Need::Change),
                    Step::Release(s) => {
                        table.remove(&s);
                        continue;
                    }
                };
                let caps: Vec<HeldCap> = table.values().copied().collect();
                for (other, revoke) in conflicts(X, &caps, Some(SessionId(session)), need) {
                    let cap = table[&other.0];
                    match after_ack(cap, revoke.seq, revoke.to) {
                        Some(mode) => table.insert(other.0, HeldCap { mode, ..cap }),
                        None => table.remove(&other.0),
                    };
                }
                if let Step::Want(_, mode) = step {
                    seq += 1;
                    let mode = merge(table.get(&session).map(|c| c.mode), mode);
                    table.insert(session, held(session, mode, seq));
                }
                if matches!(step, Step::Change(_)) {
                    prop_assert!(table.keys().all(|s| *s == session));
                }
                let exclusive = table.values().filter(|c| c.mode == CapMode::Exclusive).count();
                prop_assert!(exclusive == 0 || table.len() == 1, "{table:?}");
            }
        }
    }
}
