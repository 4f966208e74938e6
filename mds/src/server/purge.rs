//! The purge queue's drain: on the leader, the objects of deleted files
//! are removed from the OSDs, then the finished items leave the queue
//! through Raft. A purge is idempotent (deleting a missing object is
//! fine), so an item cut short by a failure or a leader change is simply
//! carried out again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aspen_osd::client::{ClientError, MapSource, ObjectClient};
use aspen_proto::ids::{ObjectId, ObjectNo};
use aspen_proto::mds::ClusterMap;
use aspen_proto::osd::OsdError;
use aspen_proto::transport::Transport;
use tokio::task::JoinSet;

use super::raft_net::Raft;
use crate::namespace::PurgeItem;
use crate::raft::Command;
use crate::raft::state_machine::StateMachineStore;

/// How often the leader looks at the queue.
pub const PURGE_INTERVAL: Duration = Duration::from_millis(500);
/// How many items one round takes on.
pub const PURGE_BATCH: u32 = 64;
/// How many object deletions one purge keeps in flight.
pub const PURGE_IN_FLIGHT: usize = 32;
/// How long a map request from the purger's object client waits for a
/// newer epoch of the local state.
pub const LOCAL_MAP_WAIT: Duration = Duration::from_secs(2);
const LOCAL_MAP_POLL: Duration = Duration::from_millis(50);

/// Cluster maps from this member's own replicated state.
struct LocalMaps {
    state: StateMachineStore,
}

impl LocalMaps {
    async fn newer_than(&self, epoch: u64) -> Result<ClusterMap, ClientError> {
        let started = Instant::now();
        loop {
            let map = self
                .state
                .cluster_map()
                .map_err(|e| ClientError::Unexpected(e.to_string()))?;
            if map.osdmap.epoch().0 > epoch || started.elapsed() >= LOCAL_MAP_WAIT {
                return Ok(map);
            }
            tokio::time::sleep(LOCAL_MAP_POLL).await;
        }
    }
}

impl MapSource for LocalMaps {
    fn fetch(
        &self,
        newer_than: u64,
    ) -> Pin<Box<dyn Future<Output = Result<ClusterMap, ClientError>> + Send + '_>> {
        Box::pin(self.newer_than(newer_than))
    }
}

/// Drains the queue whenever this member (`raft_id`) leads.
pub async fn drain(raft: Raft, state: StateMachineStore, transport: Transport, raft_id: u64) {
    let mut objects: Option<Arc<ObjectClient>> = None;
    loop {
        tokio::time::sleep(PURGE_INTERVAL).await;
        if raft.metrics().borrow().current_leader != Some(raft_id) {
            continue;
        }
        let items = match state.read(|ns| ns.purge_queue_head(PURGE_BATCH)) {
            Ok(items) if !items.is_empty() => items,
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!("reading the purge queue: {error}");
                continue;
            }
        };
        if objects.is_none() {
            let maps = Arc::new(LocalMaps {
                state: state.clone(),
            });
            objects = ObjectClient::with_maps(transport.clone(), maps)
                .await
                .ok()
                .map(Arc::new);
        }
        let Some(client) = &objects else { continue };
        let mut done = None;
        for item in &items {
            if let Err(error) = purge(client, item).await {
                tracing::warn!("purging inode {}: {error}; retrying later", item.ino);
                break;
            }
            done = Some(item.seq);
        }
        if let Some(seq) = done
            && let Err(error) = raft.client_write(Command::PurgeDone(seq)).await
        {
            tracing::warn!("recording purges up to {seq}: {error}");
        }
    }
}

fn ignore_missing<T>(result: Result<T, ClientError>) -> Result<(), ClientError> {
    match result {
        Ok(_) | Err(ClientError::Osd(OsdError::NotFound)) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Removes the data of one item: the object holding `keep_size` is cut
/// there, the ones after it up to `old_size` are deleted.
async fn purge(client: &Arc<ObjectClient>, item: &PurgeItem) -> Result<(), ClientError> {
    let map = client.map().await;
    if !map.osdmap.pools().any(|pool| pool.id == item.pool) {
        return Ok(()); // the pool and its objects are gone already
    }
    let name = |objno: u64| {
        ObjectId {
            pool: item.pool,
            ino: item.ino,
            objno: ObjectNo(objno),
        }
        .name()
        .into_bytes()
    };
    let mut first = item.keep_size / item.object_size;
    let within = item.keep_size % item.object_size;
    if within != 0 {
        ignore_missing(client.truncate(item.pool, &name(first), within).await)?;
        first += 1;
    }
    let mut deletions = JoinSet::new();
    for objno in first..item.old_size.div_ceil(item.object_size) {
        let (client, object) = (client.clone(), name(objno));
        let pool = item.pool;
        deletions.spawn(async move { ignore_missing(client.delete(pool, &object).await) });
        if deletions.len() >= PURGE_IN_FLIGHT
            && let Some(finished) = deletions.join_next().await
        {
            finished.map_err(|e| ClientError::Unexpected(e.to_string()))??;
        }
    }
    while let Some(finished) = deletions.join_next().await {
        finished.map_err(|e| ClientError::Unexpected(e.to_string()))??;
    }
    Ok(())
}
