//! Capabilities on a real MDS (one member, real iroh endpoints on
//! 127.0.0.1) with two client sessions: grants, revocation delivered by
//! the event long poll and answered with a flush, a change that clears
//! every other cache, eviction (with the OSD map blocklisting the
//! session) of a holder that does not answer, an unlinked inode's caps
//! going with it, and a client's own changes sent together.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use aspen_mds::raft::Command;
use aspen_mds::server::{MdsConfig, MdsServer, node_id};
use aspen_proto::caps::{CapEvents, CapGrant, CapMode, CapOp, CapReply, Flushed, Revoke};
use aspen_proto::fs::{Caller, SetAttr, Timestamp, open_flags};
use aspen_proto::mds::{KeyEntry, MdsRequest, MdsResponse, NsOp, NsReply, Role, SessionId};
use aspen_proto::transport::{
    ALPN_MDS, AuthorizedKeys, Bytes, RpcClient, SecretKey, Transport, endpoint::peer_addr,
};
use aspen_proto::{Errno, FileLayout, InodeId};

const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

struct Client {
    rpc: RpcClient,
    session: SessionId,
    next_request: u64,
}

impl Client {
    async fn call(&self, request: &MdsRequest) -> MdsResponse {
        loop {
            let (response, _): (MdsResponse, Vec<u8>) =
                self.rpc.call(request, Bytes::new()).await.unwrap();
            if response != MdsResponse::Busy {
                return response;
            }
        }
    }

    async fn cap(&mut self, op: CapOp) -> CapReply {
        self.next_request += 1;
        let request = MdsRequest::Cap {
            caller: Caller::root(),
            session: self.session,
            request: self.next_request,
            op,
        };
        match self.call(&request).await {
            MdsResponse::Cap(reply) => reply,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Answers `revoke` with nothing written.
    async fn ack(&mut self, revoke: Revoke, pin: bool) -> CapReply {
        self.cap(CapOp::Ack {
            ino: revoke.ino,
            seq: revoke.seq,
            to: revoke.to,
            flushed: None,
            pin,
        })
        .await
    }

    /// Revocations delivered within `wait`.
    async fn events(&self) -> CapEvents {
        let request = MdsRequest::CapEvents {
            session: self.session,
            instance: 0,
            after: 0,
        };
        match self.call(&request).await {
            MdsResponse::CapEvents(events) => events,
            other => panic!("unexpected {other:?}"),
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    server: MdsServer,
}

async fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = MdsConfig {
        data_dir: dir.path().to_path_buf(),
        listen: UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
        raft_id: 1,
        peers: vec![node_id(dir.path()).unwrap()],
        session_timeout: Duration::from_secs(60),
        revoke_timeout: REVOKE_TIMEOUT,
        osd_grace: (Duration::from_secs(60), Duration::from_secs(60)),
        snapshots: (1000, 100),
    };
    let server = MdsServer::start(config).await.unwrap();
    server
        .initialize(BTreeMap::from([(1, server.member())]))
        .await
        .unwrap();
    server
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let format = NsOp::Format {
        mode: 0o777,
        uid: 0,
        gid: 0,
        layout: FileLayout::default(),
    };
    let ctx = aspen_mds::namespace::OpContext {
        caller: Caller::root(),
        now: Timestamp::now(),
        session: SessionId(0),
    };
    server
        .propose(Command::Namespace {
            op: format,
            ctx,
            request: 0,
        })
        .await
        .unwrap();
    Setup { _dir: dir, server }
}

async fn client(setup: &Setup, name: &str) -> Client {
    let key = SecretKey::generate();
    let entry = KeyEntry {
        name: name.into(),
        node_id: key.public().to_string(),
        role: Role::Client,
    };
    setup.server.propose(Command::AddKey(entry)).await.unwrap();
    let transport = Transport::bind(
        key,
        "127.0.0.1:0".parse().unwrap(),
        vec![],
        AuthorizedKeys::default(),
    )
    .await
    .unwrap();
    let member = setup.server.member();
    let rpc = RpcClient::new(
        transport,
        peer_addr(member.node_id.parse().unwrap(), &member.addrs),
        ALPN_MDS,
    );
    let mut client = Client {
        rpc,
        session: SessionId(0),
        next_request: 0,
    };
    client.session = match client.call(&MdsRequest::OpenSession).await {
        MdsResponse::Session(session) => session,
        other => panic!("unexpected {other:?}"),
    };
    client
}

fn grant_on(reply: &CapReply, ino: InodeId) -> Option<CapGrant> {
    reply.grants.iter().copied().find(|g| g.ino == ino)
}

async fn create(client: &mut Client, name: &str) -> (InodeId, CapReply) {
    let reply = client
        .cap(CapOp::Mutate(NsOp::Create {
            parent: InodeId::ROOT,
            name: name.into(),
            mode: 0o644,
            umask: 0,
            flags: open_flags::O_RDWR | open_flags::O_CREAT,
        }))
        .await;
    let Ok(NsReply::Opened { attr, .. }) = &reply.result else {
        panic!("create failed: {reply:?}");
    };
    (attr.ino, reply)
}

/// Makes directory `name` in the root (its maker holds it Exclusive).
async fn mkdir(client: &mut Client, name: &str) -> (InodeId, CapReply) {
    let made = client
        .cap(CapOp::Mutate(NsOp::Mkdir {
            parent: InodeId::ROOT,
            name: name.into(),
            mode: 0o755,
            umask: 0,
        }))
        .await;
    let Ok(NsReply::Attr(dir)) = &made.result else {
        panic!("mkdir failed: {made:?}");
    };
    (dir.ino, made)
}

/// Reserves `count` inode numbers for the session's own creates.
async fn reserve(client: &mut Client, count: u32) -> Vec<(InodeId, u64)> {
    let reserved = client.cap(CapOp::Reserve { count }).await;
    let Ok(NsReply::Reserved(numbers)) = reserved.result else {
        panic!("reserve failed: {reserved:?}");
    };
    numbers
}

#[tokio::test]
async fn a_reader_waits_for_the_writer_to_flush_and_sees_its_size() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let mut b = client(&setup, "client.b").await;
    let (file, created) = create(&mut a, "f").await;
    let held = grant_on(&created, file).expect("the creator gets a cap");
    assert_eq!(held.mode, CapMode::Exclusive);
    assert!(
        grant_on(&created, InodeId::ROOT).is_some(),
        "and Shared on the directory it changed"
    );

    // B's getattr must wait until A flushes what it buffered.
    let reader = tokio::spawn(async move {
        let reply = b.cap(CapOp::GetAttr { ino: file }).await;
        (reply, b)
    });
    let events = a.events().await;
    assert_eq!(
        events.revokes.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        vec![Revoke {
            ino: file,
            seq: held.seq,
            to: Some(CapMode::Shared)
        }]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reader.is_finished(), "the read waits for the flush");
    let mtime = Timestamp::new(1_700_000_000, 5);
    let acked = a
        .cap(CapOp::Ack {
            ino: file,
            seq: held.seq,
            to: Some(CapMode::Shared),
            flushed: Some(Flushed { size: 12345, mtime }),
            pin: false,
        })
        .await;
    assert_eq!(acked.result, Ok(NsReply::Done));
    let (reply, _b) = reader.await.unwrap();
    let Ok(NsReply::Attr(attr)) = reply.result.clone() else {
        panic!("{reply:?}");
    };
    assert_eq!((attr.size, attr.mtime), (12345, mtime));
    assert_eq!(grant_on(&reply, file).unwrap().mode, CapMode::Shared);
    let own = setup.server.state.cap_of(a.session, file).unwrap().unwrap();
    assert_eq!(own.mode, CapMode::Shared, "A keeps reading from its cache");
}

#[tokio::test]
async fn a_change_takes_every_other_sessions_cap() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let mut b = client(&setup, "client.b").await;
    let (file, _) = create(&mut a, "f").await;
    let released = a
        .cap(CapOp::Release {
            caps: vec![(file, u64::MAX)],
        })
        .await;
    assert_eq!(released.result, Ok(NsReply::Done));
    let read_a = a.cap(CapOp::GetAttr { ino: file }).await;
    let read_b = b.cap(CapOp::GetAttr { ino: file }).await;
    assert_eq!(grant_on(&read_a, file).unwrap().mode, CapMode::Shared);
    assert_eq!(grant_on(&read_b, file).unwrap().mode, CapMode::Shared);

    let chmod = NsOp::SetAttr {
        ino: file,
        changes: SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    };
    let changer = tokio::spawn(async move { (a.cap(CapOp::Mutate(chmod)).await, a) });
    let events = b.events().await;
    let revoke = events.revokes[0].1;
    assert_eq!((revoke.ino, revoke.to), (file, None));
    b.cap(CapOp::Ack {
        ino: file,
        seq: revoke.seq,
        to: None,
        flushed: None,
        pin: false,
    })
    .await;
    let (changed, a) = changer.await.unwrap();
    assert!(matches!(changed.result, Ok(NsReply::Attr(ref attr)) if attr.perm == 0o600));
    assert!(
        setup
            .server
            .state
            .cap_of(b.session, file)
            .unwrap()
            .is_none()
    );
    assert!(
        setup
            .server
            .state
            .cap_of(a.session, file)
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_holder_that_does_not_answer_is_evicted_and_blocklisted() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let mut b = client(&setup, "client.b").await;
    let (file, _) = create(&mut a, "f").await;
    let started = Instant::now();
    let reply = b.cap(CapOp::GetAttr { ino: file }).await;
    let waited = started.elapsed();
    assert!(reply.result.is_ok(), "{reply:?}");
    assert!(waited >= REVOKE_TIMEOUT, "answered after {waited:?}");
    assert!(waited < REVOKE_TIMEOUT * 4, "answered after {waited:?}");
    let map = setup.server.state.cluster_map().unwrap();
    assert!(map.osdmap.is_blocklisted(a.session.0));
    assert!(
        reply.barrier >= map.osdmap.epoch().0,
        "readers learn the epoch that fences the evicted session"
    );
    assert!(a.events().await.ended);
    let late = a
        .cap(CapOp::Flush {
            ino: file,
            flushed: Flushed {
                size: 1,
                mtime: Timestamp::now(),
            },
        })
        .await;
    assert_eq!(
        late.result,
        Err(Errno::ESTALE),
        "the evicted session is refused"
    );
}

#[tokio::test]
async fn an_unlinked_inode_goes_with_its_caps_once_no_handle_holds_it() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let (file, created) = create(&mut a, "f").await;
    let Ok(NsReply::Opened { handle, .. }) = created.result else {
        unreachable!()
    };
    let unlinked = a
        .cap(CapOp::Mutate(NsOp::Unlink {
            parent: InodeId::ROOT,
            name: b"f".to_vec(),
        }))
        .await;
    assert_eq!(unlinked.result, Ok(NsReply::Done));
    let shown = unlinked.attrs.iter().find(|attr| attr.ino == file);
    assert_eq!(shown.map(|attr| attr.nlink), Some(0), "{unlinked:?}");
    let strays = setup.server.state.read(|ns| ns.strays().unwrap());
    assert_eq!(strays, vec![file], "the open handle holds it");
    assert!(
        setup
            .server
            .state
            .cap_of(a.session, file)
            .unwrap()
            .is_some()
    );
    a.cap(CapOp::Mutate(NsOp::Release { handle })).await;
    let strays = setup.server.state.read(|ns| ns.strays().unwrap());
    assert!(strays.is_empty());
    let gone = setup.server.state.read(|ns| ns.getattr(file).unwrap());
    assert_eq!(gone, Err(Errno::ENOENT));
    assert!(
        setup
            .server
            .state
            .cap_of(a.session, file)
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_plain_read_brings_an_exclusive_holder_down_to_shared() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let b = client(&setup, "client.b").await;
    let (file, created) = create(&mut a, "f").await;
    let seq = grant_on(&created, file).unwrap().seq;
    let reader = tokio::spawn(async move {
        let answer = b.call(&MdsRequest::GetAttr { ino: file }).await;
        (answer, b)
    });
    let events = a.events().await;
    assert_eq!(events.revokes[0].1.to, Some(CapMode::Shared));
    a.cap(CapOp::Ack {
        ino: file,
        seq,
        to: Some(CapMode::Shared),
        flushed: Some(Flushed {
            size: 7,
            mtime: Timestamp::now(),
        }),
        pin: false,
    })
    .await;
    let (answer, _) = reader.await.unwrap();
    assert!(
        matches!(answer, MdsResponse::Attr(Ok(ref attr)) if attr.size == 7),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_pinned_open_keeps_an_inode_another_session_unlinks() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let mut b = client(&setup, "client.b").await;
    let (file, created) = create(&mut a, "f").await;
    let Ok(NsReply::Opened { handle, .. }) = created.result else {
        unreachable!()
    };
    // A keeps the file open under its cap only.
    a.cap(CapOp::Mutate(NsOp::Release { handle })).await;
    let unlinker = tokio::spawn(async move {
        let op = NsOp::Unlink {
            parent: InodeId::ROOT,
            name: b"f".to_vec(),
        };
        (b.cap(CapOp::Mutate(op)).await, b)
    });
    // The unlink changes the directory too: A answers for both.
    let mut pin = None;
    while pin.is_none() {
        for (_, revoke) in a.events().await.revokes {
            let pins = revoke.ino == file && revoke.to.is_none();
            let acked = a.ack(revoke, pins).await;
            if let Ok(NsReply::Opened { handle, .. }) = acked.result {
                pin = Some(handle);
            }
        }
    }
    let pin = pin.unwrap();
    let (unlinked, _b) = unlinker.await.unwrap();
    assert_eq!(unlinked.result, Ok(NsReply::Done));
    let strays = setup.server.state.read(|ns| ns.strays().unwrap());
    assert_eq!(strays, vec![file], "the pin holds the unlinked file");
    a.cap(CapOp::Mutate(NsOp::Release { handle: pin })).await;
    let gone = setup.server.state.read(|ns| ns.getattr(file).unwrap());
    assert_eq!(gone, Err(Errno::ENOENT));
}

#[tokio::test]
async fn a_session_creates_under_reserved_numbers_in_a_directory_it_made() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let mut b = client(&setup, "client.b").await;
    let (dir, made) = mkdir(&mut a, "d").await;
    assert_eq!(
        grant_on(&made, dir).map(|g| g.mode),
        Some(CapMode::Exclusive),
        "the maker of a directory holds it Exclusive"
    );

    let numbers = reserve(&mut a, 3).await;
    assert_eq!(numbers.len(), 3);
    let (ino, generation) = numbers[0];
    let now = Timestamp::new(1_700_000_000, 5);
    let create_as = |name: &str, ino| {
        CapOp::Mutate(NsOp::CreateAs {
            parent: dir,
            name: name.into(),
            mode: 0o666,
            umask: 0o022,
            ino,
            now,
        })
    };
    // Another session may not use A's numbers.
    let stolen = b.cap(create_as("stolen", ino)).await;
    assert_eq!(stolen.result, Err(Errno::EINVAL));

    let created = a.cap(create_as("f", ino)).await;
    let Ok(NsReply::Attr(attr)) = &created.result else {
        panic!("create failed: {created:?}");
    };
    assert_eq!(
        (attr.ino, attr.generation, attr.perm, attr.mtime),
        (ino, generation, 0o644, now),
        "the file is what the client worked out"
    );
    assert_eq!(
        grant_on(&created, ino).map(|g| g.mode),
        Some(CapMode::Exclusive)
    );
    let again = a.cap(create_as("g", ino)).await;
    assert_eq!(again.result, Err(Errno::EINVAL), "a number is used once");
    let taken = a.cap(create_as("f", numbers[1].0)).await;
    assert_eq!(taken.result, Err(Errno::EEXIST));

    // B's lookup in the directory takes A's Exclusive down first.
    let looker = tokio::spawn(async move {
        let reply = b
            .cap(CapOp::Lookup {
                parent: dir,
                name: b"f".to_vec(),
            })
            .await;
        (reply, b)
    });
    let events = a.events().await;
    assert!(
        events
            .revokes
            .iter()
            .any(|(_, r)| r.ino == dir && r.to == Some(CapMode::Shared)),
        "A is asked to share the directory: {events:?}"
    );
    for (_, revoke) in &events.revokes {
        let acked = a.ack(*revoke, false).await;
        assert!(acked.result.is_ok(), "{acked:?}");
    }
    let (found, _b) = looker.await.unwrap();
    assert!(matches!(found.result, Ok(NsReply::Attr(ref attr)) if attr.ino == ino));
}

#[tokio::test]
async fn a_report_overtaken_by_a_larger_one_does_not_shrink_the_file() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let (file, _) = create(&mut a, "grown").await;
    let report = |size| CapOp::Flush {
        ino: file,
        flushed: Flushed {
            size,
            mtime: Timestamp::now(),
        },
    };
    assert!(a.cap(report(200)).await.result.is_ok());
    let late = a.cap(report(100)).await;
    assert!(late.result.is_ok(), "{late:?}");
    let attr = late.attrs.iter().find(|a| a.ino == file).unwrap();
    assert_eq!(attr.size, 200);
}

#[tokio::test]
async fn size_reports_sent_together_are_each_applied_or_refused() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let (one, _) = create(&mut a, "one").await;
    let (given_back, _) = create(&mut a, "given back").await;
    let (two, _) = create(&mut a, "two").await;
    let released = a
        .cap(CapOp::Release {
            caps: vec![(given_back, u64::MAX)],
        })
        .await;
    assert_eq!(released.result, Ok(NsReply::Done));
    let mtime = Timestamp::new(1_700_000_000, 7);
    let reports = vec![
        (one, Flushed { size: 100, mtime }),
        (given_back, Flushed { size: 300, mtime }),
        (two, Flushed { size: 200, mtime }),
    ];
    let reply = a.cap(CapOp::FlushMany { reports }).await;
    assert_eq!(
        reply.result,
        Ok(NsReply::Reported(vec![Ok(()), Err(Errno::EBADF), Ok(())])),
        "a report without its cap is refused alone"
    );
    let size = |ino| reply.attrs.iter().find(|a| a.ino == ino).unwrap().size;
    assert_eq!((size(one), size(given_back), size(two)), (100, 0, 200));

    let too_many = (0..=aspen_proto::caps::MAX_FLUSH_REPORTS)
        .map(|_| (one, Flushed { size: 1, mtime }))
        .collect();
    let refused = a.cap(CapOp::FlushMany { reports: too_many }).await;
    assert_eq!(refused.result, Err(Errno::EINVAL));
}

#[tokio::test]
async fn changes_sent_together_are_applied_in_order_until_one_must_wait() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let mut b = client(&setup, "client.b").await;
    // B holds a file in the root, and gives back its cap on the root.
    let (held, _) = create(&mut b, "held").await;
    let released = b
        .cap(CapOp::Release {
            caps: vec![(InodeId::ROOT, u64::MAX)],
        })
        .await;
    assert_eq!(released.result, Ok(NsReply::Done));
    let (dir, _) = mkdir(&mut a, "d").await;
    let numbers = reserve(&mut a, 3).await;
    let create_as = move |name: &str, ino| NsOp::CreateAs {
        parent: dir,
        name: name.into(),
        mode: 0o644,
        umask: 0,
        ino,
        now: Timestamp::now(),
    };
    let unlink_held = NsOp::Unlink {
        parent: InodeId::ROOT,
        name: b"held".to_vec(),
    };
    let (x, y, z) = (numbers[0].0, numbers[1].0, numbers[2].0);

    // B's caps on "held" stop the batch before its unlink.
    let ops = vec![
        create_as("x", x),
        create_as("y", y),
        unlink_held.clone(),
        create_as("z", z),
    ];
    let reply = a.cap(CapOp::MutateMany(ops)).await;
    let Ok(NsReply::Mutated(results)) = &reply.result else {
        panic!("batch failed: {reply:?}");
    };
    let created: Vec<InodeId> = results
        .iter()
        .map(|result| match result {
            Ok(NsReply::Attr(attr)) => attr.ino,
            other => panic!("create failed: {other:?}"),
        })
        .collect();
    assert_eq!(created, [x, y], "the changes before the conflict, in order");
    for ino in [x, y] {
        assert_eq!(
            grant_on(&reply, ino).map(|g| g.mode),
            Some(CapMode::Exclusive)
        );
    }
    assert!(
        reply.attrs.iter().any(|attr| attr.ino == dir),
        "the answer shows the directory the creates changed"
    );
    let still = b.cap(CapOp::GetAttr { ino: held }).await;
    assert!(
        still.result.is_ok(),
        "the unlink was not applied: {still:?}"
    );

    // Sent again, the rest waits for B to give up its caps, then goes.
    let rest = tokio::spawn(async move {
        let reply = a
            .cap(CapOp::MutateMany(vec![unlink_held, create_as("z", z)]))
            .await;
        (reply, a)
    });
    let events = b.events().await;
    assert!(
        events.revokes.iter().any(|(_, r)| r.ino == held),
        "B is asked for its cap on the file: {events:?}"
    );
    // (An ack of a cap already given up is refused: only the effect counts.)
    for (_, revoke) in &events.revokes {
        b.ack(*revoke, false).await;
    }
    let (reply, mut a) = rest.await.unwrap();
    let Ok(NsReply::Mutated(results)) = &reply.result else {
        panic!("batch failed: {reply:?}");
    };
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[0].is_ok(), "{results:?}");
    assert!(matches!(&results[1], Ok(NsReply::Attr(attr)) if attr.ino == z));

    // A batch applied once answers its resend from the reply cache.
    let resend = MdsRequest::Cap {
        caller: Caller::root(),
        session: a.session,
        request: 9_000,
        op: CapOp::MutateMany(vec![NsOp::Unlink {
            parent: dir,
            name: b"x".to_vec(),
        }]),
    };
    let first = a.call(&resend).await;
    let again = a.call(&resend).await;
    let MdsResponse::Cap(first) = first else {
        panic!("unexpected {first:?}");
    };
    assert!(
        matches!(&first.result, Ok(NsReply::Mutated(r)) if r.len() == 1 && r[0].is_ok()),
        "{first:?}"
    );
    assert!(
        matches!(again, MdsResponse::Cap(ref reply) if reply.result == first.result),
        "the resend is not applied again (ENOENT): {again:?}"
    );

    for refused in [
        Vec::new(),
        vec![NsOp::Mkdir {
            parent: dir,
            name: b"sub".to_vec(),
            mode: 0o755,
            umask: 0,
        }],
        (0..=aspen_proto::caps::MAX_MUTATIONS)
            .map(|i| NsOp::Unlink {
                parent: dir,
                name: format!("n{i}").into_bytes(),
            })
            .collect(),
    ] {
        let reply = a.cap(CapOp::MutateMany(refused)).await;
        assert_eq!(reply.result, Err(Errno::EINVAL));
    }
}

/// A session whose cap on a file is being revoked may ask for more on
/// it without waiting for its own revocation: its kernel may hold the
/// file's pages locked for the write that asks, and carrying out the
/// revocation means dropping those pages. The other session's request
/// then goes on once the asker's new cap is revoked in turn.
#[tokio::test]
async fn a_session_being_revoked_is_not_held_back_by_its_own_revocation() {
    let setup = start().await;
    let mut a = client(&setup, "client.a").await;
    let mut b = client(&setup, "client.b").await;
    let (file, created) = create(&mut a, "f").await;
    let created = grant_on(&created, file).unwrap();
    let released = a
        .cap(CapOp::Release {
            caps: vec![(file, created.seq)],
        })
        .await;
    assert_eq!(released.result, Ok(NsReply::Done));
    let read = b.cap(CapOp::GetAttr { ino: file }).await;
    let shared = grant_on(&read, file).unwrap();
    assert_eq!(shared.mode, CapMode::Shared);

    // A wants Exclusive: B's Shared is revoked, and the file's gate shut.
    let exclusive = CapOp::Want {
        ino: file,
        mode: CapMode::Exclusive,
    };
    let a_wants = {
        let exclusive = exclusive.clone();
        tokio::spawn(async move { a.cap(exclusive).await })
    };
    let events = b.events().await;
    assert!(events.revokes.iter().any(|(_, r)| r.seq == shared.seq));

    // B asks for Exclusive before it answers: granted at once.
    let asked = tokio::time::timeout(Duration::from_secs(1), b.cap(exclusive)).await;
    let asked = asked.expect("B waited for its own revocation");
    let upgraded = grant_on(&asked, file).expect("B is granted");
    assert_eq!(upgraded.mode, CapMode::Exclusive);
    assert!(!a_wants.is_finished());

    // A's Want now revokes B's new cap; once B answers, A has it.
    let revoke = loop {
        let events = b.events().await;
        if let Some((_, revoke)) = events.revokes.iter().find(|(_, r)| r.seq == upgraded.seq) {
            break *revoke;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(b.ack(revoke, false).await.result, Ok(NsReply::Done));
    let granted = tokio::time::timeout(Duration::from_secs(5), a_wants)
        .await
        .expect("A's Want goes on")
        .unwrap();
    assert_eq!(grant_on(&granted, file).unwrap().mode, CapMode::Exclusive);
}
