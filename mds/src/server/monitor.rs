//! The monitor role, kept by the leader: when each OSD last sent a
//! heartbeat (not replicated: a new leader gives every OSD a full grace
//! period), and the sweep that marks silent OSDs down, and OSDs down for
//! long enough out, through Raft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_placement::{Change, OsdId, PgId};
use aspen_proto::osd::PgReport;
use openraft::ServerState;

use super::raft_net::Raft;
use crate::raft::Command;
use crate::raft::state_machine::StateMachineStore;

/// An OSD silent this long is marked down (the default).
pub const OSD_DOWN_GRACE: Duration = Duration::from_secs(20);
/// An OSD down this long is marked out, and its data re-replicated (the default).
pub const OSD_OUT_GRACE: Duration = Duration::from_secs(600);

/// Heartbeat times on this member while it leads.
pub struct OsdMonitor {
    pub down_grace: Duration,
    pub out_grace: Duration,
    heard: Mutex<HashMap<OsdId, Instant>>,
    /// Bytes each OSD said it holds in its last heartbeat.
    used: Mutex<HashMap<OsdId, u64>>,
    /// The last state each PG's reporting primary gave.
    pgs: Mutex<HashMap<PgId, (OsdId, PgReport)>>,
    leading_since: Mutex<Option<Instant>>,
}

impl OsdMonitor {
    pub fn new(down_grace: Duration, out_grace: Duration) -> OsdMonitor {
        OsdMonitor {
            down_grace,
            out_grace,
            heard: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
            pgs: Mutex::new(HashMap::new()),
            leading_since: Mutex::new(None),
        }
    }

    /// Records a sign of life from `osd`, with the bytes it holds if it said.
    pub fn heard(&self, osd: OsdId, used: Option<u64>) {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(osd, Instant::now());
        if let Some(used) = used {
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(osd, used);
        }
    }

    /// Records the PG states a primary reported.
    pub fn pg_reports(&self, osd: OsdId, reports: Vec<PgReport>) {
        let mut pgs = self.pgs.lock().unwrap_or_else(|p| p.into_inner());
        for report in reports {
            pgs.insert(report.pg, (osd, report));
        }
    }

    /// The last report on `pg` from `primary`.
    pub fn pg_report(&self, pg: PgId, primary: OsdId) -> Option<PgReport> {
        let pgs = self.pgs.lock().unwrap_or_else(|p| p.into_inner());
        pgs.get(&pg)
            .filter(|(from, _)| *from == primary)
            .map(|(_, report)| *report)
    }

    /// The bytes `osds` last said they hold.
    pub fn used(&self, osds: impl Iterator<Item = OsdId>) -> u64 {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        osds.filter_map(|osd| used.get(&osd)).sum()
    }

    /// How long `osd` has been silent at `now`, counting from leadership at most.
    fn silent_for(&self, osd: OsdId, now: Instant) -> Duration {
        let since = *self
            .leading_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(now);
        let heard = self
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&osd)
            .copied();
        now.duration_since(heard.unwrap_or(since).max(since))
    }

    fn reset(&self) {
        self.heard.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.leading_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The changes the OSD states call for at `now`.
    fn changes(&self, map: &aspen_placement::OsdMap, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for (id, state) in map.osds() {
            let silent = self.silent_for(*id, now);
            if state.up && silent > self.down_grace {
                changes.push(Change::MarkDown { id: *id });
            } else if !state.up && state.is_in && silent > self.down_grace + self.out_grace {
                changes.push(Change::MarkOut { id: *id });
            }
        }
        changes
    }
}

/// Marks OSDs down and out while this member leads; runs until `raft` stops.
pub async fn sweep(raft: Raft, state: StateMachineStore, monitor: Arc<OsdMonitor>) {
    let period = (monitor.down_grace / 4).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        if raft.metrics().borrow().state != ServerState::Leader {
            monitor.reset();
            continue;
        }
        let Ok(map) = state.cluster_map() else {
            continue;
        };
        let changes = monitor.changes(&map.osdmap, Instant::now());
        if !changes.is_empty() {
            tracing::info!(?changes, "osd states changed");
            let _ = raft.client_write(Command::ClusterChanges(changes)).await;
        }
    }
}
