//! A three-member MDS group in one process over real iroh endpoints on
//! 127.0.0.1: it elects a leader, replicates, answers followers' callers
//! with the leader's address, survives the loss of its leader, and a
//! restarted member catches up.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use aspen_mds::raft::Command;
use aspen_mds::server::{MdsConfig, MdsServer, ServerError, node_id};
use aspen_proto::fs::Caller;
use aspen_proto::mds::{
    KeyEntry, MdsMember, MdsRequest, MdsResponse, NsOp, NsReply, Role, SessionId,
};
use aspen_proto::transport::{
    ALPN_MDS, AuthorizedKeys, Bytes, EndpointAddr, RpcClient, SecretKey, Transport, TransportError,
    endpoint::peer_addr,
};
use aspen_proto::{FileLayout, InodeId};

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Member {
    config: MdsConfig,
}

async fn start(member: &Member) -> MdsServer {
    MdsServer::start(member.config.clone()).await.unwrap()
}

/// Tries before a new member's start gives up on finding a free port.
const BIND_TRIES: usize = 5;

/// Starts a member for the first time. Its port was free when
/// [`free_port`] chose it, but another test's endpoint may have taken it
/// since: then it takes another (nothing has recorded its address yet).
async fn start_new(member: &mut Member) -> MdsServer {
    for _ in 1..BIND_TRIES {
        match MdsServer::start(member.config.clone()).await {
            Err(ServerError::Transport(TransportError::Bind(_))) => {
                member.config.listen = free_port();
            }
            started => return started.unwrap(),
        }
    }
    start(member).await
}

fn members(dirs: &[&Path]) -> Vec<Member> {
    let ids: Vec<_> = dirs.iter().map(|d| node_id(d).unwrap()).collect();
    dirs.iter()
        .enumerate()
        .map(|(i, dir)| Member {
            config: MdsConfig {
                data_dir: dir.to_path_buf(),
                listen: free_port(),
                raft_id: i as u64 + 1,
                peers: ids.clone(),
                session_timeout: Duration::from_secs(2),
                revoke_timeout: Duration::from_secs(2),
                osd_grace: (Duration::from_secs(1), Duration::from_secs(2)),
                snapshots: (50, 0),
            },
        })
        .collect()
}

/// A client endpoint with a new key (registered by the caller, or not at all).
async fn new_client() -> (Transport, SecretKey) {
    let key = SecretKey::generate();
    let transport = Transport::bind(
        key.clone(),
        "127.0.0.1:0".parse().unwrap(),
        vec![],
        AuthorizedKeys::default(),
    )
    .await
    .unwrap();
    (transport, key)
}

/// A one-member group in `dir`, leading.
async fn single_member(dir: &Path) -> MdsServer {
    let server = start_new(&mut members(&[dir])[0]).await;
    server
        .initialize(BTreeMap::from([(1, server.member())]))
        .await
        .unwrap();
    server.wait_for_leader(WAIT).await.unwrap();
    server
}

fn addr_of(member: &MdsMember) -> EndpointAddr {
    peer_addr(member.node_id.parse().unwrap(), &member.addrs)
}

async fn call(client: &Transport, member: &MdsMember, request: &MdsRequest) -> MdsResponse {
    let rpc = RpcClient::new(client.clone(), addr_of(member), ALPN_MDS);
    let (response, _): (MdsResponse, Vec<u8>) = rpc.call(request, Bytes::new()).await.unwrap();
    response
}

/// Sends `request` to `first`, following NotLeader answers.
async fn call_leader(client: &Transport, first: &MdsMember, request: &MdsRequest) -> MdsResponse {
    let mut target = first.clone();
    for _ in 0..20 {
        match call(client, &target, request).await {
            MdsResponse::NotLeader {
                leader: Some((_, leader)),
            } => target = leader,
            MdsResponse::NotLeader { leader: None } => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => return other,
        }
    }
    panic!("no leader answered");
}

fn mkdir(name: &str) -> MdsRequest {
    MdsRequest::Mutate {
        caller: Caller::root(),
        session: SessionId(1),
        request: 0,
        op: NsOp::Mkdir {
            parent: InodeId::ROOT,
            name: name.into(),
            mode: 0o755,
            umask: 0,
        },
    }
}

fn lookup(name: &str) -> MdsRequest {
    MdsRequest::Lookup {
        caller: Caller::root(),
        parent: InodeId::ROOT,
        name: name.into(),
    }
}

/// Whether `server` comes to have `name` in the root within 20 s.
async fn has_entry(server: &MdsServer, name: &[u8]) -> bool {
    for _ in 0..100 {
        let found = server
            .state
            .read(|ns| ns.lookup(InodeId::ROOT, name, &Caller::root()).unwrap());
        if found.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A formed group of `n` members in temporary directories, with a
/// registered admin client and a formatted root.
struct Group {
    _dirs: Vec<tempfile::TempDir>,
    members: Vec<Member>,
    servers: Vec<Option<MdsServer>>,
    group: BTreeMap<u64, MdsMember>,
    leader: u64,
    client: Transport,
}

async fn form_group(n: usize) -> Group {
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(|d| d.path()).collect();
    let mut members = members(&paths);
    let mut servers = Vec::new();
    for member in &mut members {
        servers.push(Some(start_new(member).await));
    }
    let group: BTreeMap<u64, MdsMember> = servers
        .iter()
        .flatten()
        .map(|s| (s.raft_id, s.member()))
        .collect();
    let first = servers[0].as_ref().unwrap();
    first.initialize(group.clone()).await.unwrap();
    let leader = first.wait_for_leader(WAIT).await.unwrap();
    let (client, key) = new_client().await;
    let admin = KeyEntry {
        name: "client.admin".into(),
        node_id: key.public().to_string(),
        role: Role::Admin,
    };
    servers[leader as usize - 1]
        .as_ref()
        .unwrap()
        .propose(Command::AddKey(admin))
        .await
        .unwrap();
    let format = MdsRequest::Mutate {
        caller: Caller::root(),
        session: SessionId(1),
        request: 0,
        op: NsOp::Format {
            mode: 0o755,
            uid: 0,
            gid: 0,
            layout: FileLayout::default(),
        },
    };
    let formatted = call_leader(&client, &group[&leader], &format).await;
    assert!(
        matches!(formatted, MdsResponse::Reply(Ok(NsReply::Attr(_)))),
        "{formatted:?}"
    );
    Group {
        _dirs: dirs,
        members,
        servers,
        group,
        leader,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_fail_over_and_catch_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<&Path> = dirs.iter().map(|d| d.path()).collect();
    let mut members = members(&paths);
    let mut servers = Vec::new();
    for member in &mut members {
        servers.push(Some(start_new(member).await));
    }
    let group: BTreeMap<u64, MdsMember> = servers
        .iter()
        .map(|s| s.as_ref().unwrap())
        .map(|s| (s.raft_id, s.member()))
        .collect();
    servers[0]
        .as_ref()
        .unwrap()
        .initialize(group.clone())
        .await
        .unwrap();
    let leader = servers[0]
        .as_ref()
        .unwrap()
        .wait_for_leader(WAIT)
        .await
        .unwrap();
    let leading = servers[leader as usize - 1].as_ref().unwrap();

    // Register an admin key and format, through the leader's Raft.
    let (client, key) = new_client().await;
    let admin = KeyEntry {
        name: "client.admin".into(),
        node_id: key.public().to_string(),
        role: Role::Admin,
    };
    leading.propose(Command::AddKey(admin)).await.unwrap();
    let format = MdsRequest::Mutate {
        caller: Caller::root(),
        session: SessionId(1),
        request: 0,
        op: NsOp::Format {
            mode: 0o755,
            uid: 0,
            gid: 0,
            layout: FileLayout::default(),
        },
    };
    let leader_member = group[&leader].clone();
    assert!(matches!(
        call(&client, &leader_member, &format).await,
        MdsResponse::Reply(Ok(NsReply::Attr(_)))
    ));
    assert!(matches!(
        call(&client, &leader_member, &mkdir("one")).await,
        MdsResponse::Reply(Ok(_))
    ));

    // A follower points at the leader.
    let follower = group.keys().find(|id| **id != leader).copied().unwrap();
    match call(&client, &group[&follower], &mkdir("two")).await {
        MdsResponse::NotLeader {
            leader: Some((id, _)),
        } => assert_eq!(id, leader),
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // Status lists the three members.
    match call(&client, &leader_member, &MdsRequest::Status).await {
        MdsResponse::Status(status) => {
            assert_eq!(status.members.len(), 3);
            assert_eq!(status.leader, Some(leader));
        }
        other => panic!("{other:?}"),
    }

    // Lose the leader: the other two elect one and keep serving.
    servers[leader as usize - 1]
        .take()
        .unwrap()
        .shutdown()
        .await;
    let survivor = servers.iter().flatten().next().unwrap();
    let new_leader = {
        let mut found = None;
        for _ in 0..100 {
            let l = survivor.wait_for_leader(WAIT).await.unwrap();
            if l != leader {
                found = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        found.expect("a new leader")
    };
    assert_ne!(new_leader, leader);
    assert!(matches!(
        call_leader(&client, &group[&new_leader], &mkdir("two")).await,
        MdsResponse::Reply(Ok(_))
    ));
    assert!(matches!(
        call_leader(&client, &group[&new_leader], &lookup("one")).await,
        MdsResponse::Attr(Ok(_))
    ));

    // The old leader comes back with its data directory and catches up.
    let returned = start(&members[leader as usize - 1]).await;
    let caught_up = has_entry(&returned, b"two").await;
    assert!(caught_up, "the restarted member replicated what it missed");
    returned.shutdown().await;
    for server in servers.into_iter().flatten() {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_clients_and_non_admins_are_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = single_member(dir.path()).await;
    let (stranger, _) = new_client().await;
    let rpc = RpcClient::new(stranger.clone(), addr_of(&server.member()), ALPN_MDS);
    let result: Result<(MdsResponse, Vec<u8>), _> =
        rpc.call(&MdsRequest::Status, Bytes::new()).await;
    assert!(result.is_err(), "an unregistered node cannot connect");

    let (client, key) = new_client().await;
    let entry = KeyEntry {
        name: "client.user".into(),
        node_id: key.public().to_string(),
        role: Role::Client,
    };
    server
        .propose(Command::AddKey(entry.clone()))
        .await
        .unwrap();
    let add = MdsRequest::AuthAdd {
        entry: KeyEntry {
            name: "x".into(),
            node_id: "y".into(),
            role: Role::Admin,
        },
    };
    assert_eq!(
        call(&client, &server.member(), &add).await,
        MdsResponse::Unit(Err(aspen_proto::Errno::EPERM))
    );
    assert!(matches!(
        call(&client, &server.member(), &MdsRequest::Status).await,
        MdsResponse::Status(_)
    ));
    server.shutdown().await;
}

async fn registered_client(server: &MdsServer, name: &str) -> Transport {
    registered(server, name, Role::Client).await
}

async fn registered(server: &MdsServer, name: &str, role: Role) -> Transport {
    let (client, key) = new_client().await;
    let entry = KeyEntry {
        name: name.into(),
        node_id: key.public().to_string(),
        role,
    };
    server.propose(Command::AddKey(entry)).await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_stop_renewing_end_and_release_their_handles() {
    let dir = tempfile::tempdir().unwrap();
    let server = single_member(dir.path()).await;
    let me = server.member();
    let alice = registered_client(&server, "client.alice").await;
    let mallory = registered_client(&server, "client.mallory").await;
    let format = NsOp::Format {
        mode: 0o777,
        uid: 0,
        gid: 0,
        layout: FileLayout::default(),
    };
    let mutate = |session, op| MdsRequest::Mutate {
        caller: Caller::root(),
        session,
        request: 0,
        op,
    };
    call(&alice, &me, &mutate(SessionId(0), format)).await;

    let MdsResponse::Session(session) = call(&alice, &me, &MdsRequest::OpenSession).await else {
        panic!()
    };
    let create = NsOp::Create {
        parent: InodeId::ROOT,
        name: b"f".to_vec(),
        mode: 0o644,
        umask: 0,
        flags: 2,
    };
    let MdsResponse::Reply(Ok(NsReply::Opened { handle, attr })) =
        call(&alice, &me, &mutate(session, create.clone())).await
    else {
        panic!()
    };
    // Only the session's owner may use it for handles.
    let stolen = call(&mallory, &me, &mutate(session, NsOp::Release { handle })).await;
    assert_eq!(stolen, MdsResponse::Reply(Err(aspen_proto::Errno::EBADF)));
    let unlink = NsOp::Unlink {
        parent: InodeId::ROOT,
        name: b"f".to_vec(),
    };
    assert!(matches!(
        call(&alice, &me, &mutate(session, unlink)).await,
        MdsResponse::Reply(Ok(_))
    ));
    let strays = || server.state.read(|ns| ns.strays().unwrap());
    assert_eq!(strays(), vec![attr.ino]);

    // Renewed for longer than the timeout: still alive.
    for _ in 0..8 {
        assert_eq!(
            call(&alice, &me, &MdsRequest::RenewSession { session }).await,
            MdsResponse::Unit(Ok(()))
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        strays(),
        vec![attr.ino],
        "a renewed session keeps its handles"
    );

    // Silent: the leader ends it, and the unlinked file goes.
    let mut released = false;
    for _ in 0..50 {
        if strays().is_empty() {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(released, "the expired session's handle was released");
    assert_eq!(
        server.state.read(|ns| ns.getattr(attr.ino).unwrap()),
        Err(aspen_proto::Errno::ENOENT)
    );
    assert_eq!(
        call(&alice, &me, &MdsRequest::RenewSession { session }).await,
        MdsResponse::Unit(Err(aspen_proto::Errno::ESTALE))
    );

    // A session can also be closed by its owner (and only by it).
    let MdsResponse::Session(second) = call(&alice, &me, &MdsRequest::OpenSession).await else {
        panic!()
    };
    assert_eq!(
        call(&mallory, &me, &MdsRequest::CloseSession { session: second }).await,
        MdsResponse::Unit(Err(aspen_proto::Errno::ESTALE))
    );
    assert_eq!(
        call(&alice, &me, &MdsRequest::CloseSession { session: second }).await,
        MdsResponse::Unit(Ok(()))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_tracks_osds_pools_and_pushes_maps() {
    use aspen_placement::{Change, OsdId, Pool, PoolId, Weight};
    let dir = tempfile::tempdir().unwrap();
    let server = single_member(dir.path()).await;
    let me = server.member();
    let admin = registered(&server, "client.admin", Role::Admin).await;
    let osd = registered(&server, "osd.0", Role::Osd).await;
    let impostor = registered(&server, "osd.9", Role::Osd).await;
    let map_of = |response| match response {
        MdsResponse::ClusterMap(map) => *map,
        other => panic!("{other:?}"),
    };
    let first = map_of(call(&osd, &me, &MdsRequest::GetClusterMap { newer_than: 0 }).await);
    assert_eq!((first.osdmap.epoch().0, first.osdmap.osds().len()), (1, 0));

    let boot = MdsRequest::OsdBoot {
        osd: OsdId(0),
        addrs: vec![free_port()],
        host: "hostA".into(),
        weight: Weight::ONE,
        capacity: 1 << 30,
    };
    assert_eq!(
        call(&impostor, &me, &boot).await,
        MdsResponse::Unit(Err(aspen_proto::Errno::EPERM))
    );
    assert_eq!(call(&osd, &me, &boot).await, MdsResponse::Epoch(Ok(2)));
    let booted = map_of(call(&osd, &me, &MdsRequest::GetClusterMap { newer_than: 1 }).await);
    let state = booted.osdmap.osd(OsdId(0)).unwrap();
    assert!(state.up && state.is_in);
    assert!(booted.osdmap.crush().bucket("hostA").is_some());
    assert_eq!(booted.addresses.len(), 1);

    // A waiting map request returns as soon as the epoch moves.
    let waiting = {
        let (osd, me) = (osd.clone(), me.clone());
        tokio::spawn(
            async move { call(&osd, &me, &MdsRequest::GetClusterMap { newer_than: 2 }).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pool = Pool {
        id: PoolId(1),
        name: "data".into(),
        pg_num: 64,
        size: 1,
        min_size: 1,
        rule: "replicated_rule".into(),
    };
    let add_pool = MdsRequest::ClusterChange {
        changes: vec![Change::AddPool { pool: pool.clone() }],
    };
    assert_eq!(
        call(&admin, &me, &add_pool).await,
        MdsResponse::Epoch(Ok(3))
    );
    let pushed = map_of(
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(pushed.osdmap.epoch().0, 3);
    assert_eq!(pushed.osdmap.pool(PoolId(1)).unwrap(), &pool);
    let too_big = Pool {
        id: PoolId(2),
        name: "big".into(),
        size: 3,
        ..pool
    };
    let refused = call(
        &admin,
        &me,
        &MdsRequest::ClusterChange {
            changes: vec![Change::AddPool { pool: too_big }],
        },
    )
    .await;
    assert!(
        matches!(&refused, MdsResponse::Epoch(Err(e)) if e.contains("asks for 3")),
        "{refused:?}"
    );
    assert_eq!(
        call(&osd, &me, &MdsRequest::ClusterChange { changes: vec![] }).await,
        MdsResponse::Unit(Err(aspen_proto::Errno::EPERM))
    );

    // Heartbeats keep it up; silence marks it down, then out.
    for _ in 0..6 {
        assert_eq!(
            call(
                &osd,
                &me,
                &MdsRequest::OsdHeartbeat {
                    osd: OsdId(0),
                    used: 256 << 20,
                    pgs: vec![],
                }
            )
            .await,
            MdsResponse::Unit(Ok(()))
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Space: the capacity it registered, the usage it reports, divided by
    // the pool's replica count (1 here), in 4 KiB blocks.
    match call(&admin, &me, &MdsRequest::StatFs).await {
        MdsResponse::StatFs(statfs) => assert_eq!(
            (statfs.blocks, statfs.blocks_free),
            ((1 << 30) / 4096, (768 << 20) / 4096)
        ),
        other => panic!("{other:?}"),
    }
    match call(&admin, &me, &MdsRequest::Status).await {
        MdsResponse::Status(status) => {
            assert_eq!((status.capacity, status.used), (1 << 30, 256 << 20))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        server
            .state
            .cluster_map()
            .unwrap()
            .osdmap
            .osd(OsdId(0))
            .unwrap()
            .up
    );
    let mut states = Vec::new();
    for _ in 0..60 {
        let state = *server
            .state
            .cluster_map()
            .unwrap()
            .osdmap
            .osd(OsdId(0))
            .unwrap();
        if states.last() != Some(&(state.up, state.is_in)) {
            states.push((state.up, state.is_in));
        }
        if !state.is_in {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        states,
        vec![(true, true), (false, true), (false, false)],
        "up, then down, then out"
    );
    match call(&admin, &me, &MdsRequest::Status).await {
        MdsResponse::Status(status) => assert_eq!(
            (
                status.osds,
                status.osds_up,
                status.osds_in,
                status.pools,
                status.capacity
            ),
            (1, 0, 0, 1, 0),
            "an OSD that is out counts for no space"
        ),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_purged_entries_catches_up_by_snapshot() {
    let Group {
        members,
        mut servers,
        group,
        leader,
        client,
        _dirs,
        ..
    } = form_group(3).await;

    // Stop a follower, then write well past a snapshot whose log is purged.
    let lagging = group.keys().copied().find(|id| *id != leader).unwrap();
    servers[lagging as usize - 1]
        .take()
        .unwrap()
        .shutdown()
        .await;
    for i in 0..200 {
        assert!(matches!(
            call_leader(&client, &group[&leader], &mkdir(&format!("d{i}"))).await,
            MdsResponse::Reply(Ok(_))
        ));
    }
    // Snapshots are built and the log purged in the background.
    let leading = servers[leader as usize - 1].as_ref().unwrap();
    let mut purged = 0;
    for _ in 0..100 {
        purged = leading
            .raft
            .metrics()
            .borrow()
            .purged
            .map(|id| id.index)
            .unwrap_or(0);
        if purged > 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(purged > 100, "the leader purged its log up to {purged}");

    // The lagging member comes back: only a snapshot can bring it up to date.
    let returned = start(&members[lagging as usize - 1]).await;
    let caught_up = has_entry(&returned, b"d199").await;
    assert!(
        caught_up,
        "the lagging member installed a snapshot and caught up"
    );
    let snapshot = returned.raft.metrics().borrow().snapshot;
    assert!(
        snapshot.is_some_and(|id| id.index >= purged),
        "it holds a snapshot at or past {purged}: {snapshot:?}"
    );
    returned.shutdown().await;
    for server in servers.into_iter().flatten() {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_keep_serving_after_losing_two() {
    let Group {
        mut servers,
        group,
        leader,
        client,
        _dirs,
        ..
    } = form_group(5).await;
    assert!(matches!(
        call_leader(&client, &group[&leader], &mkdir("before")).await,
        MdsResponse::Reply(Ok(_))
    ));

    // Lose the leader and one more: three of five still form a majority.
    let other = group.keys().copied().find(|id| *id != leader).unwrap();
    for id in [leader, other] {
        servers[id as usize - 1].take().unwrap().shutdown().await;
    }
    // A real client finds the new leader among the survivors.
    let survivors =
        aspen_proto::cluster::MdsClient::new(client.clone(), group.values().cloned().collect());
    let made = survivors.call(&mkdir("after")).await.unwrap();
    assert!(matches!(made, MdsResponse::Reply(Ok(_))), "{made:?}");
    let found = survivors.call(&lookup("before")).await.unwrap();
    assert!(matches!(found, MdsResponse::Attr(Ok(_))), "{found:?}");
    for server in servers.into_iter().flatten() {
        server.shutdown().await;
    }
}

/// Concurrent writes travel in shared batches, yet each caller gets its
/// own answer: creating the same names twice at once gives each name one
/// success and one `EEXIST`, and every follower ends with the same tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_batched_and_answered_one_by_one() {
    let group = form_group(3).await;
    let leader = group.group[&group.leader].clone();
    let rpc = std::sync::Arc::new(RpcClient::new(
        group.client.clone(),
        addr_of(&leader),
        ALPN_MDS,
    ));
    const NAMES: usize = 48;
    let tasks: Vec<_> = (0..2 * NAMES)
        .map(|i| {
            let rpc = rpc.clone();
            tokio::spawn(async move {
                let request = mkdir(&format!("d{}", i % NAMES));
                let (response, _): (MdsResponse, Vec<u8>) =
                    rpc.call(&request, Bytes::new()).await.unwrap();
                (i % NAMES, response)
            })
        })
        .collect();
    let mut outcomes: BTreeMap<usize, Vec<MdsResponse>> = BTreeMap::new();
    for task in tasks {
        let (name, response) = task.await.unwrap();
        outcomes.entry(name).or_default().push(response);
    }
    for (name, responses) in &outcomes {
        let created = responses
            .iter()
            .filter(|r| matches!(r, MdsResponse::Reply(Ok(NsReply::Attr(_)))))
            .count();
        let exists = responses
            .iter()
            .filter(|r| matches!(r, MdsResponse::Reply(Err(aspen_proto::Errno::EEXIST))))
            .count();
        assert_eq!((created, exists), (1, 1), "d{name}: {responses:?}");
    }
    let committed = group.servers[group.leader as usize - 1]
        .as_ref()
        .unwrap()
        .raft
        .metrics()
        .borrow()
        .last_log_index;
    for server in group.servers.iter().flatten() {
        server
            .raft
            .wait(Some(WAIT))
            .applied_index_at_least(committed, "all writes applied")
            .await
            .unwrap();
        let entries = server
            .state
            .read(|ns| ns.readdir(InodeId::ROOT, 0, 4 * NAMES, &Caller::root()))
            .unwrap()
            .unwrap();
        // `.` and `..` besides the names.
        assert_eq!(entries.len(), NAMES + 2, "member {}", server.raft_id);
    }
}

/// A retried mutation (same session, same request id) gets the first
/// reply instead of being applied twice; only the session's owner may use
/// its request ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_mutations_are_answered_from_the_reply_cache() {
    let dir = tempfile::tempdir().unwrap();
    let server = single_member(dir.path()).await;
    let me = server.member();
    let alice = registered_client(&server, "client.alice").await;
    let mallory = registered_client(&server, "client.mallory").await;
    let mutate = |session, request, op| MdsRequest::Mutate {
        caller: Caller::root(),
        session,
        request,
        op,
    };
    let format = NsOp::Format {
        mode: 0o777,
        uid: 0,
        gid: 0,
        layout: FileLayout::default(),
    };
    call(&alice, &me, &mutate(SessionId(0), 0, format)).await;
    let MdsResponse::Session(session) = call(&alice, &me, &MdsRequest::OpenSession).await else {
        panic!()
    };
    let mkdir = NsOp::Mkdir {
        parent: InodeId::ROOT,
        name: b"d".to_vec(),
        mode: 0o755,
        umask: 0,
    };
    let first = call(&alice, &me, &mutate(session, 1, mkdir.clone())).await;
    assert!(
        matches!(first, MdsResponse::Reply(Ok(NsReply::Attr(_)))),
        "{first:?}"
    );
    let retry = call(&alice, &me, &mutate(session, 1, mkdir.clone())).await;
    assert_eq!(retry, first, "a retry gets the first reply");
    assert_eq!(
        call(&alice, &me, &mutate(session, 2, mkdir.clone())).await,
        MdsResponse::Reply(Err(aspen_proto::Errno::EEXIST)),
        "a new request id is a new mutation"
    );
    assert_eq!(
        call(&mallory, &me, &mutate(session, 1, mkdir.clone())).await,
        MdsResponse::Reply(Err(aspen_proto::Errno::EBADF)),
        "another client cannot use the session's ids"
    );
    let unlink = NsOp::Rmdir {
        parent: InodeId::ROOT,
        name: b"d".to_vec(),
    };
    assert_eq!(
        call(&alice, &me, &mutate(session, 3, unlink.clone())).await,
        MdsResponse::Reply(Ok(NsReply::Done))
    );
    assert_eq!(
        call(&alice, &me, &mutate(session, 3, unlink)).await,
        MdsResponse::Reply(Ok(NsReply::Done)),
        "a retried rmdir does not say ENOENT"
    );
    server.shutdown().await;
}
