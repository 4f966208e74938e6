//! Session liveness, kept by the leader: when each session was last heard
//! from (not replicated: a new leader gives every session a full timeout
//! from the moment it took over), and the sweep that ends sessions that
//! stopped renewing: they are evicted through Raft (handles, caps and
//! locks released, and the OSDs told to refuse them, since a client that
//! stopped renewing may still hold buffered writes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_proto::mds::SessionId;
use openraft::ServerState;

use super::raft_net::Raft;
use crate::raft::Command;
use crate::raft::state_machine::StateMachineStore;

/// A session not heard from for this long is ended (the default).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// When each session was last heard from, on this member while it leads.
pub struct SessionClock {
    pub timeout: Duration,
    seen: Mutex<HashMap<SessionId, Instant>>,
    leading_since: Mutex<Option<Instant>>,
}

impl SessionClock {
    pub fn new(timeout: Duration) -> SessionClock {
        SessionClock {
            timeout,
            seen: Mutex::new(HashMap::new()),
            leading_since: Mutex::new(None),
        }
    }

    pub fn touch(&self, session: SessionId) {
        self.touch_at(session, Instant::now());
    }

    fn touch_at(&self, session: SessionId, at: Instant) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session, at);
    }

    /// The sessions among `open` whose time is up at `now`.
    fn expired(&self, open: &[SessionId], now: Instant) -> Vec<SessionId> {
        let mut leading_since = self.leading_since.lock().unwrap_or_else(|p| p.into_inner());
        let since = *leading_since.get_or_insert(now);
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        open.iter()
            .filter(|s| {
                now.duration_since(seen.get(s).copied().unwrap_or(since).max(since)) > self.timeout
            })
            .copied()
            .collect()
    }

    /// Forgets everything (leadership was lost).
    fn reset(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.leading_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Ends expired sessions while this member leads; runs until `raft` stops.
pub async fn sweep(raft: Raft, state: StateMachineStore, clock: Arc<SessionClock>) {
    let period = (clock.timeout / 4).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        if raft.metrics().borrow().state != ServerState::Leader {
            clock.reset();
            continue;
        }
        let Ok(sessions) = state.sessions() else {
            continue;
        };
        let open: Vec<SessionId> = sessions.into_iter().map(|(id, _)| id).collect();
        for session in clock.expired(&open, Instant::now()) {
            tracing::info!(
                session = session.0,
                "ending a session that stopped renewing"
            );
            if raft.client_write(Command::Evict(session)).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_after_the_timeout_counted_from_leadership() {
        let clock = SessionClock::new(Duration::from_secs(10));
        let start = Instant::now();
        let (a, b) = (SessionId(1), SessionId(2));
        assert!(
            clock.expired(&[a, b], start).is_empty(),
            "a new leader starts every clock"
        );
        clock.touch_at(a, start + Duration::from_secs(5));
        let later = start + Duration::from_secs(11);
        assert_eq!(clock.expired(&[a, b], later), vec![b]);
        clock.reset();
        assert!(
            clock.expired(&[a, b], later).is_empty(),
            "after losing and regaining leadership"
        );
    }
}
