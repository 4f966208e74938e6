//! One RPC client per OSD, dialled at the address the cluster map gives
//! it and replaced when the map names another key for that OSD. Shared by
//! the object client and the OSDs' replication and recovery. A client of
//! an OSD a map shows down can be cut, failing its calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aspen_placement::OsdId;
use aspen_proto::mds::ClusterMap;
use aspen_proto::transport::endpoint::peer_addr;
use aspen_proto::transport::{ALPN_OSD, EndpointId, RpcClient, Transport};

pub(crate) struct Links {
    transport: Transport,
    clients: Mutex<HashMap<OsdId, (String, Arc<RpcClient>)>>,
}

impl Links {
    pub(crate) fn new(transport: Transport) -> Links {
        Links {
            transport,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `osd` (an error says why there is none).
    pub(crate) fn get(&self, map: &ClusterMap, osd: OsdId) -> Result<Arc<RpcClient>, String> {
        let address = map
            .address(osd)
            .ok_or_else(|| format!("osd.{} has no address", osd.0))?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((node, client)) = clients.get(&osd)
            && *node == address.node_id
        {
            return Ok(client.clone());
        }
        let id: EndpointId = address
            .node_id
            .parse()
            .map_err(|_| format!("osd.{} has a bad node id", osd.0))?;
        let client = Arc::new(RpcClient::new(
            self.transport.clone(),
            peer_addr(id, &address.addrs),
            ALPN_OSD,
        ));
        clients.insert(osd, (address.node_id.clone(), client.clone()));
        Ok(client)
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
                .map(|(_, (_, client))| client)
                .collect()
        };
        for client in down {
            // Apart: one may wait behind a dial to its dead peer.
            tokio::spawn(async move { client.disconnect().await });
        }
    }
}
