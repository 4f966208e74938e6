//! Per-PG ordering on one OSD. A PG's mutations take their log positions
//! one at a time: each holds the PG's `order` lock from its position to
//! the moment its entry is queued for the replicas and staged in the local
//! store, then lets the next one in and waits for durability holding only
//! a shared `flight` guard. So ops on one object follow each other without
//! each waiting out the previous one's sync and replication round trip.
//!
//! Whatever needs the PG still holds [`Quiet`]: `order` and `flight`
//! exclusively, taken only once every op in flight has finished. Peering,
//! scrub, backfill and recovery installs take it, and so does an op whose
//! large body goes to the replicas on a stream of its own (outside the
//! ordered replica queues, it could overtake an entry queued before it).
//! Locks are always taken `order` first, so no two holders wait on each
//! other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aspen_placement::PgId;
use tokio::sync::{OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

#[derive(Default)]
struct Gate {
    order: Arc<tokio::sync::Mutex<()>>,
    flight: Arc<RwLock<()>>,
}

/// The gates of every PG this OSD has touched.
#[derive(Default)]
pub(super) struct PgGates {
    gates: Mutex<HashMap<PgId, Arc<Gate>>>,
}

/// An op's turn to take the PG's next log position.
pub(super) struct Ordered {
    _order: OwnedMutexGuard<()>,
    flight: OwnedRwLockReadGuard<()>,
}

/// An op whose position is taken and whose entry is on its way: the next
/// op may go; the PG is not quiet until this is dropped.
pub(super) struct InFlight {
    _flight: OwnedRwLockReadGuard<()>,
}

/// The PG to oneself: no op in flight, none starting.
pub(super) struct Quiet {
    _order: OwnedMutexGuard<()>,
    _flight: OwnedRwLockWriteGuard<()>,
}

impl Ordered {
    /// Lets the PG's next op take its position.
    pub(super) fn admit_next(self) -> InFlight {
        InFlight {
            _flight: self.flight,
        }
    }
}

impl PgGates {
    fn gate(&self, pg: PgId) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(pg).or_default().clone()
    }

    /// Waits for `pg`'s next turn for an op that may overlap the ones after.
    pub(super) async fn ordered(&self, pg: PgId) -> Ordered {
        let gate = self.gate(pg);
        let order = gate.order.clone().lock_owned().await;
        let flight = gate.flight.clone().read_owned().await;
        Ordered {
            _order: order,
            flight,
        }
    }

    /// Waits until `pg` is quiet and keeps it so.
    pub(super) async fn quiet(&self, pg: PgId) -> Quiet {
        let gate = self.gate(pg);
        let order = gate.order.clone().lock_owned().await;
        let flight = gate.flight.clone().write_owned().await;
        Quiet {
            _order: order,
            _flight: flight,
        }
    }

    /// `pg`'s order alone: a replica applies its primary's entries one
    /// message at a time, and never while a recovery install runs.
    pub(super) async fn serial(&self, pg: PgId) -> OwnedMutexGuard<()> {
        self.gate(pg).order.clone().lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pg() -> PgId {
        PgId {
            pool: aspen_placement::PoolId(1),
            seed: 7,
        }
    }

    async fn finishes<F: std::future::Future>(future: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(50), future)
            .await
            .ok()
    }

    #[tokio::test]
    async fn the_next_op_goes_once_admitted_and_quiet_waits_for_all_in_flight() {
        let gates = PgGates::default();
        let first = gates.ordered(pg()).await;
        assert!(
            finishes(gates.ordered(pg())).await.is_none(),
            "one op takes a position at a time"
        );
        let first = first.admit_next();
        let second = finishes(gates.ordered(pg()))
            .await
            .expect("admitted: the next op goes")
            .admit_next();
        assert!(
            finishes(gates.quiet(pg())).await.is_none(),
            "two ops in flight"
        );
        drop(first);
        assert!(finishes(gates.quiet(pg())).await.is_none(), "one in flight");
        drop(second);
        let quiet = finishes(gates.quiet(pg())).await.expect("none in flight");
        assert!(finishes(gates.ordered(pg())).await.is_none());
        assert!(finishes(gates.serial(pg())).await.is_none());
        drop(quiet);
        assert!(finishes(gates.serial(pg())).await.is_some());
    }

    #[tokio::test]
    async fn a_waiting_quiet_holds_back_later_ops() {
        let gates = Arc::new(PgGates::default());
        let in_flight = gates.ordered(pg()).await.admit_next();
        let waiting = {
            let gates = gates.clone();
            tokio::spawn(async move {
                let _quiet = gates.quiet(pg()).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            finishes(gates.ordered(pg())).await.is_none(),
            "a later op waits behind the quiet one"
        );
        drop(in_flight);
        waiting.await.unwrap();
        assert!(finishes(gates.ordered(pg())).await.is_some());
    }

    #[tokio::test]
    async fn other_pgs_are_not_held() {
        let gates = PgGates::default();
        let _quiet = gates.quiet(pg()).await;
        let other = PgId { seed: 8, ..pg() };
        assert!(finishes(gates.ordered(other)).await.is_some());
    }
}
