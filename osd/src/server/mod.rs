//! The OSD daemon: one iroh endpoint (ALPN `aspen/osd/1`), the local
//! object store, and the loops beside the request service: boot
//! (register with the MDS: id, addresses, host, weight, capacity), the
//! heartbeat (with the bytes stored), the map follower (long polls for
//! each new cluster map, and keeps the endpoint's allow-list equal to the
//! registered keys), the link cutter (closes the connections to OSDs a
//! new map shows down, failing what is in flight to them), peering, and
//! the garbage collector (`space`). `gate` orders each PG's mutations.

mod backfill;
mod gate;
mod peering;
mod replicator;
mod scrub;
mod service;
mod space;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aspen_placement::{OsdId, Weight};
use aspen_proto::cluster::{ClusterConfig, MdsClient};
use aspen_proto::mds::{ClusterMap, MdsRequest, MdsResponse};
use aspen_proto::transport::endpoint::load_or_create_secret_key;
use aspen_proto::transport::{ALPN_OSD, AuthorizedKeys, EndpointId, Router, Transport, serve};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{ObjectStore, StoreError};
pub use service::OsdService;
use space::Space;

/// How often an OSD tells the MDS it is alive (the MDS marks it down
/// after its grace period, 20 s by default).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How long to wait before retrying the MDS after a failure.
pub const MDS_RETRY: Duration = Duration::from_secs(1);

/// The file in an OSD's data directory that says who it is.
pub const OSD_FILE: &str = "osd.json";
/// The OSD's secret key file.
pub const KEY_FILE: &str = "osd.key";
/// The cluster config an OSD uses to reach the MDS.
pub const CLUSTER_FILE: &str = "cluster.json";
const STORE_DIR: &str = "store";

#[derive(Debug, thiserror::Error)]
pub enum OsdError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("transport: {0}")]
    Transport(String),
    #[error("config {path}: {problem}")]
    Config { path: String, problem: String },
}

/// Who an OSD is and how it joins the map (`osd.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OsdFile {
    pub id: u32,
    pub listen: SocketAddr,
    pub host: String,
    pub weight: Weight,
    /// Bytes the store may hold.
    pub capacity: u64,
}

impl OsdFile {
    pub fn load(data_dir: &Path) -> Result<OsdFile, OsdError> {
        let path = data_dir.join(OSD_FILE);
        let fail = |problem: String| OsdError::Config {
            path: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), OsdError> {
        let path = data_dir.join(OSD_FILE);
        let fail = |problem: String| OsdError::Config {
            path: path.display().to_string(),
            problem,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| fail(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| fail(e.to_string()))
    }
}

/// The node id of the OSD key in `data_dir`, creating the key if needed.
pub fn node_id(data_dir: &Path) -> Result<EndpointId, OsdError> {
    let key = load_or_create_secret_key(&data_dir.join(KEY_FILE))
        .map_err(|e| OsdError::Transport(e.to_string()))?;
    Ok(key.public())
}

/// A running OSD.
pub struct OsdServer {
    pub id: OsdId,
    pub transport: Transport,
    pub store: Arc<ObjectStore>,
    pub maps: watch::Receiver<Arc<ClusterMap>>,
    router: Router,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OsdServer {
    /// Starts the OSD kept in `data_dir` (with its `osd.json` and
    /// `cluster.json`): waits for the first cluster map, then boots.
    pub async fn start(data_dir: PathBuf) -> Result<OsdServer, OsdError> {
        let file = OsdFile::load(&data_dir)?;
        let cluster_path = data_dir.join(CLUSTER_FILE);
        let mut cluster = ClusterConfig::load(&cluster_path).map_err(|e| OsdError::Config {
            path: cluster_path.display().to_string(),
            problem: e.to_string(),
        })?;
        // The OSD talks to the MDS with its own key, not the admin's.
        cluster.key = data_dir.join(KEY_FILE);
        let secret = load_or_create_secret_key(&cluster.key)
            .map_err(|e| OsdError::Transport(e.to_string()))?;
        let authorized = AuthorizedKeys::default();
        let transport = Transport::bind(
            secret,
            file.listen,
            vec![ALPN_OSD.to_vec()],
            authorized.clone(),
        )
        .await
        .map_err(|e| OsdError::Transport(e.to_string()))?;
        let store = Arc::new(ObjectStore::open(&data_dir.join(STORE_DIR))?);
        let mds = Arc::new(MdsClient::new(transport.clone(), cluster.members()));
        let id = OsdId(file.id);
        let first = fetch_map(&mds, 0).await;
        allow_registered(&authorized, &first);
        let (publish, maps) = watch::channel(Arc::new(first));
        boot(&mds, &transport, &file).await;
        let used = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.used_bytes())
                .await
                .map_err(|e| StoreError::Io(e.to_string()))??
        };
        let space = Arc::new(Space::new(file.capacity, used));
        let service = Arc::new(OsdService::new(
            id,
            transport.clone(),
            store.clone(),
            maps.clone(),
            space.clone(),
        ));
        let router = serve(&transport, ALPN_OSD, service.clone());
        let service_for_reports = service.clone();
        let tasks = vec![
            tokio::spawn(cut_links_to_down(service.clone(), maps.clone())),
            tokio::spawn(peering::peer_loop(service, maps.clone(), mds.clone())),
            tokio::spawn(follow_maps(mds.clone(), publish, authorized)),
            tokio::spawn(heartbeat(
                mds,
                id,
                store.clone(),
                service_for_reports,
                space.clone(),
            )),
            tokio::spawn(space::collect_garbage_loop(store.clone(), space)),
        ];
        Ok(OsdServer {
            id,
            transport,
            store,
            maps,
            router,
            tasks,
        })
    }

    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.router.shutdown().await;
        self.transport.close().await;
    }
}

fn allow_registered(authorized: &AuthorizedKeys, map: &ClusterMap) {
    authorized.replace(map.keys.iter().filter_map(|k| k.node_id.parse().ok()));
}

/// The first cluster map newer than `epoch`, retrying until the MDS answers.
async fn fetch_map(mds: &MdsClient, epoch: u64) -> ClusterMap {
    loop {
        match crate::client::fetch_map(mds, epoch).await {
            Ok(map) => return map,
            Err(error) => tracing::warn!(%error, "fetching the cluster map"),
        }
        tokio::time::sleep(MDS_RETRY).await;
    }
}

/// Registers with the MDS (up and in), retrying until it answers.
async fn boot(mds: &MdsClient, transport: &Transport, file: &OsdFile) {
    let request = MdsRequest::OsdBoot {
        osd: OsdId(file.id),
        addrs: transport.local_addrs(),
        host: file.host.clone(),
        weight: file.weight,
        capacity: file.capacity,
    };
    loop {
        match mds.call(&request).await {
            Ok(MdsResponse::Epoch(Ok(epoch))) => {
                tracing::info!(osd = file.id, epoch, "booted");
                return;
            }
            Ok(other) => tracing::warn!(?other, "boot refused"),
            Err(error) => tracing::warn!(%error, "booting"),
        }
        tokio::time::sleep(MDS_RETRY).await;
    }
}

/// On every new map, cuts the links to the OSDs it shows down, so that
/// replication to a dead OSD fails once the MDS marks it down, and the PG
/// re-peers without it, instead of waiting out `REPLICATE_TIMEOUT`.
async fn cut_links_to_down(service: Arc<OsdService>, mut maps: watch::Receiver<Arc<ClusterMap>>) {
    while maps.changed().await.is_ok() {
        let map = maps.borrow_and_update().clone();
        service.cut_links_to_down(&map);
    }
}

/// Publishes every new cluster map (the MDS answers a long poll as soon
/// as the epoch moves, and at least every few seconds with the current
/// map, which also refreshes the registered keys).
async fn follow_maps(
    mds: Arc<MdsClient>,
    publish: watch::Sender<Arc<ClusterMap>>,
    authorized: AuthorizedKeys,
) {
    loop {
        let epoch = publish.borrow().osdmap.epoch().0;
        let map = fetch_map(&mds, epoch).await;
        allow_registered(&authorized, &map);
        if map != **publish.borrow() {
            publish.send_replace(Arc::new(map));
        }
    }
}

async fn heartbeat(
    mds: Arc<MdsClient>,
    id: OsdId,
    store: Arc<ObjectStore>,
    service: Arc<OsdService>,
    space: Arc<Space>,
) {
    loop {
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        let (used, pgs) = {
            let store = store.clone();
            let service = service.clone();
            tokio::task::spawn_blocking(move || (store.used_bytes().ok(), service.pg_reports()))
                .await
                .unwrap_or_default()
        };
        if let Some(used) = used {
            space.measured(used);
        }
        let used = space.used();
        if let Err(error) = mds
            .call(&MdsRequest::OsdHeartbeat { osd: id, used, pgs })
            .await
        {
            tracing::warn!(%error, "heartbeat");
        }
    }
}
