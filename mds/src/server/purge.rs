//! The purge queue's drain: on the leader, the objects of deleted files
//! are removed from the OSDs, then the finished items leave the queue
//! through Raft. A purge is idempotent (deleting a missing object is
//! fine), so an item cut short by a failure or a leader change is simply
//! carried out again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aspen_osd::client::{ClientError, MapSource, ObjectClient, cut_file};
use aspen_proto::FileLayout;
use aspen_proto::mds::ClusterMap;
use aspen_proto::transport::Transport;

use super::raft_net::Raft;
use crate::namespace::PurgeItem;
use crate::raft::Command;
use crate::raft::state_machine::StateMachineStore;

/// How often the leader looks at the queue.
pub const PURGE_INTERVAL: Duration = Duration::from_millis(500);
/// How many items one round takes on.
pub const PURGE_BATCH: u32 = 64;
/// How long a map request from the purger's object client waits for a
/// newer epoch of the local state.
pub const LOCAL_MAP_WAIT: Duration = Duration::from_secs(2);

/// Cluster maps from this member's own replicated state.
struct LocalMaps {
    state: StateMachineStore,
}

impl LocalMaps {
    async fn newer_than(&self, epoch: u64) -> Result<ClusterMap, ClientError> {
        let mut epochs = self.state.watch_epoch();
        let _ = tokio::time::timeout(LOCAL_MAP_WAIT, epochs.wait_for(|now| *now > epoch)).await;
        self.state
            .cluster_map()
            .map_err(|e| ClientError::Unexpected(e.to_string()))
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
            match ObjectClient::with_maps(transport.clone(), maps).await {
                Ok(client) => objects = Some(Arc::new(client)),
                Err(error) => tracing::warn!("the purger's object client: {error}"),
            }
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

/// Removes the data of one item: bytes `keep_size .. old_size` of its file.
async fn purge(client: &Arc<ObjectClient>, item: &PurgeItem) -> Result<(), ClientError> {
    let map = client.map().await;
    if !map.osdmap.pools().any(|pool| pool.id == item.pool) {
        return Ok(()); // the pool and its objects are gone already
    }
    let layout = FileLayout::new(item.object_size)
        .map_err(|e| ClientError::Unexpected(e.to_string()))?
        .in_pool(item.pool);
    cut_file(client, item.ino, layout, item.keep_size, item.old_size).await
}
