//! RPC clients per OSD, dialled at the address the cluster map gives them
//! and replaced when the map names another key for that OSD. Shared by
//! the object client and the OSDs' replication and recovery. The clients
//! of an OSD a map shows down can be cut, failing their calls in flight.
//!
//! Each OSD has [`BULK_LINKS`] clients, each with a QUIC connection of its
//! own. Requests that move [`BULK_BYTES`] or more take them in turn, so the
//! large reads and writes in flight to one OSD are encrypted, sent and
//! reassembled by several connection tasks (on both cores) instead of
//! one. Smaller requests all take the first: spread out, they would share
//! fewer packets and acknowledgements and cost more wake-ups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aspen_placement::OsdId;
use aspen_proto::mds::ClusterMap;
use aspen_proto::transport::endpoint::peer_addr;
use aspen_proto::transport::{ALPN_OSD, EndpointId, RpcClient, Transport};

/// Connections to each OSD that bulk requests take in turn (measured in
/// bench/RESULTS.md, 2026-12-04: a cold 1 GiB sequential read went from
/// 381-395 to 452-474 MiB/s with four; eight did no better).
pub const BULK_LINKS: usize = 4;
/// A request that moves at least this many bytes is bulk.
pub const BULK_BYTES: u64 = 512 << 10;

/// The clients of one OSD: the first for small requests, all for bulk.
type OsdLinks = Arc<[Arc<RpcClient>]>;

pub(crate) struct Links {
    transport: Transport,
    /// Per OSD: the node id its clients dial, and the clients.
    clients: Mutex<HashMap<OsdId, (String, OsdLinks)>>,
    /// Which bulk client the next bulk request takes.
    turn: AtomicUsize,
}

impl Links {
    pub(crate) fn new(transport: Transport) -> Links {
        Links {
            transport,
            clients: Mutex::new(HashMap::new()),
            turn: AtomicUsize::new(0),
        }
    }

    /// The client for a request to `osd` that moves `bytes` (an error says
    /// why there is none).
    pub(crate) fn get_for(
        &self,
        map: &ClusterMap,
        osd: OsdId,
        bytes: u64,
    ) -> Result<Arc<RpcClient>, String> {
        let clients = self.clients_of(map, osd)?;
        let index = if bytes >= BULK_BYTES {
            self.turn.fetch_add(1, Ordering::Relaxed) % clients.len()
        } else {
            0
        };
        Ok(clients[index].clone())
    }

    /// The client for small requests to `osd`.
    pub(crate) fn get(&self, map: &ClusterMap, osd: OsdId) -> Result<Arc<RpcClient>, String> {
        self.get_for(map, osd, 0)
    }

    fn clients_of(&self, map: &ClusterMap, osd: OsdId) -> Result<OsdLinks, String> {
        let address = map
            .address(osd)
            .ok_or_else(|| format!("osd.{} has no address", osd.0))?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((node, links)) = clients.get(&osd)
            && *node == address.node_id
        {
            return Ok(links.clone());
        }
        let id: EndpointId = address
            .node_id
            .parse()
            .map_err(|_| format!("osd.{} has a bad node id", osd.0))?;
        // A client dials on its first call: unused ones cost nothing.
        let links: OsdLinks = (0..BULK_LINKS)
            .map(|_| {
                Arc::new(RpcClient::new(
                    self.transport.clone(),
                    peer_addr(id, &address.addrs),
                    ALPN_OSD,
                ))
            })
            .collect();
        clients.insert(osd, (address.node_id.clone(), links.clone()));
        Ok(links)
    }

    /// Drops the client of every OSD that `map` does not show up, closing
    /// its connection: calls in flight to it fail now rather than at their
    /// time limits (a dead peer's QUIC connection only notices at its idle
    /// timeout). A later [`Links::get`] dials afresh.
    pub(crate) fn cut_down(&self, map: &ClusterMap) {
        let down: Vec<Arc<RpcClient>> = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients
                .extract_if(|osd, _| !map.osdmap.osd(*osd).is_ok_and(|state| state.up))
                .flat_map(|(_, (_, links))| links.to_vec())
                .collect()
        };
        for client in down {
            // Apart: one may wait behind a dial to its dead peer.
            tokio::spawn(async move { client.disconnect().await });
        }
    }
}
