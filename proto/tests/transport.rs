//! Real iroh endpoints on 127.0.0.1: calls, concurrency, bulk bodies, the
//! allow-list, client endpoints acting for a shared key, malformed
//! frames, and persistent keys.

use std::sync::Arc;
use std::time::Instant;

use aspen_proto::transport::frame::{self, FrameError};
use aspen_proto::transport::{
    AuthorizedKeys, Bytes, Router, RpcClient, Service, Transport, load_or_create_secret_key, serve,
};
use iroh::{EndpointId, SecretKey};
use serde::{Deserialize, Serialize};

const ALPN: &[u8] = b"aspen/test/1";

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Echo(String),
    Sum(Vec<u64>),
    /// Never answered.
    Hang,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Reply {
    Echo { text: String, from: String },
    Sum(u64),
    Malformed(String),
}

struct TestService;

impl Service for TestService {
    type Request = Request;
    type Response = Reply;

    async fn call(&self, peer: EndpointId, request: Request, body: Vec<u8>) -> (Reply, Vec<u8>) {
        match request {
            Request::Echo(text) => (
                Reply::Echo {
                    text,
                    from: peer.to_string(),
                },
                body,
            ),
            Request::Sum(values) => (Reply::Sum(values.iter().sum()), Vec::new()),
            Request::Hang => std::future::pending().await,
        }
    }

    fn malformed(&self, error: &FrameError) -> Reply {
        Reply::Malformed(error.to_string())
    }
}

async fn endpoint(allowed: &[EndpointId]) -> Transport {
    let keys = AuthorizedKeys::new(allowed.iter().copied());
    Transport::bind(
        SecretKey::generate(),
        "127.0.0.1:0".parse().unwrap(),
        vec![ALPN.to_vec()],
        keys,
    )
    .await
    .unwrap()
}

async fn pair() -> (Transport, Transport, Router) {
    let client = endpoint(&[]).await;
    let server = endpoint(&[client.id()]).await;
    let router = serve(&server, ALPN, Arc::new(TestService));
    (server, client, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_headers_bodies_and_the_callers_id() {
    let (server, client, _router) = pair().await;
    let rpc = RpcClient::new(client.clone(), server.addr(), ALPN);
    let body: Bytes = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let (reply, echoed): (Reply, Vec<u8>) = rpc
        .call(&Request::Echo("hi".into()), body.clone())
        .await
        .unwrap();
    assert_eq!(
        reply,
        Reply::Echo {
            text: "hi".into(),
            from: client.id().to_string()
        }
    );
    assert_eq!(echoed, body, "bulk bytes come back intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_connection() {
    let (server, client, _router) = pair().await;
    let rpc = Arc::new(RpcClient::new(client, server.addr(), ALPN));
    let calls = (0..200u64).map(|i| {
        let rpc = rpc.clone();
        tokio::spawn(async move {
            let (reply, _): (Reply, Vec<u8>) = rpc
                .call(&Request::Sum(vec![i, i, 1]), Bytes::new())
                .await
                .unwrap();
            assert_eq!(reply, Reply::Sum(2 * i + 1));
        })
    });
    for call in calls {
        call.await.unwrap();
    }
    // Latency of sequential small calls, for the record.
    let mut times: Vec<u128> = Vec::new();
    for _ in 0..300 {
        let started = Instant::now();
        let _: (Reply, Vec<u8>) = rpc
            .call(&Request::Sum(vec![1]), Bytes::new())
            .await
            .unwrap();
        times.push(started.elapsed().as_micros());
    }
    times.sort();
    println!(
        "stream-per-request round trip on 127.0.0.1: median {} us, p90 {} us",
        times[150], times[270]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_nodes_are_refused() {
    let server = endpoint(&[]).await;
    let _router = serve(&server, ALPN, Arc::new(TestService));
    let stranger = endpoint(&[]).await;
    let rpc = RpcClient::new(stranger.clone(), server.addr(), ALPN);
    let result: Result<(Reply, Vec<u8>), _> = rpc.call(&Request::Sum(vec![1]), Bytes::new()).await;
    assert!(
        result.is_err(),
        "a node not on the allow-list gets no answer"
    );
    // Once allowed, the same node gets through.
    server.authorized.allow(stranger.id());
    let rpc = RpcClient::new(stranger, server.addr(), ALPN);
    let (reply, _): (Reply, Vec<u8>) = rpc
        .call(&Request::Sum(vec![2, 3]), Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply, Reply::Sum(5));
}

async fn delegated(principal: &SecretKey) -> Transport {
    Transport::bind_delegated(
        principal,
        "127.0.0.1:0".parse().unwrap(),
        AuthorizedKeys::default(),
    )
    .await
    .unwrap()
}

/// Calls `server` from `client` many times, concurrently, and checks
/// every answer names `principal` as the caller.
async fn calls_as(client: Transport, server: &Transport, principal: EndpointId) {
    let rpc = Arc::new(RpcClient::new(client, server.addr(), ALPN));
    let calls = (0..100).map(|i| {
        let rpc = rpc.clone();
        tokio::spawn(async move {
            let (reply, _): (Reply, Vec<u8>) = rpc
                .call(&Request::Echo(format!("{i}")), Bytes::new())
                .await
                .unwrap();
            reply
        })
    });
    for (i, call) in calls.enumerate() {
        assert_eq!(
            call.await.unwrap(),
            Reply::Echo {
                text: format!("{i}"),
                from: principal.to_string()
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_key_each_have_an_endpoint_and_act_for_the_key() {
    let principal = SecretKey::generate();
    let server = endpoint(&[principal.public()]).await;
    let _router = serve(&server, ALPN, Arc::new(TestService));
    let (first, second) = (delegated(&principal).await, delegated(&principal).await);
    assert_ne!(first.id(), second.id(), "each has its own endpoint id");
    assert_ne!(first.id(), principal.public());
    tokio::join!(
        calls_as(first, &server, principal.public()),
        calls_as(second, &server, principal.public())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegation_from_an_unknown_key_is_refused() {
    let server = endpoint(&[]).await;
    let _router = serve(&server, ALPN, Arc::new(TestService));
    let stranger = SecretKey::generate();
    let rpc = RpcClient::new(delegated(&stranger).await, server.addr(), ALPN);
    let result: Result<(Reply, Vec<u8>), _> = rpc.call(&Request::Sum(vec![1]), Bytes::new()).await;
    assert!(
        result.is_err(),
        "a key not on the allow-list gets no answer"
    );
    // Once its key is allowed, a new endpoint acting for it gets through.
    server.authorized.allow(stranger.public());
    let rpc = RpcClient::new(delegated(&stranger).await, server.addr(), ALPN);
    let (reply, _): (Reply, Vec<u8>) = rpc
        .call(&Request::Sum(vec![2, 3]), Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply, Reply::Sum(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_reply_and_the_server_lives_on() {
    let (server, client, _router) = pair().await;
    let connection = client.connect(server.addr(), ALPN).await.unwrap();
    for garbage in [
        vec![0xff; 3],
        vec![5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff],
        vec![0xff, 0xff, 0xff, 0x7f, 1, 2],
    ] {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut send, &garbage)
            .await
            .unwrap();
        send.finish().unwrap();
        let (reply, _): (Reply, Vec<u8>) = frame::read(&mut recv).await.unwrap();
        assert!(matches!(reply, Reply::Malformed(_)), "{reply:?}");
    }
    let rpc = RpcClient::new(client, server.addr(), ALPN);
    let (reply, _): (Reply, Vec<u8>) = rpc
        .call(&Request::Sum(vec![7]), Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply, Reply::Sum(7));
}

#[test]
fn secret_keys_persist_and_bad_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let first = load_or_create_secret_key(&path).unwrap();
    let again = load_or_create_secret_key(&path).unwrap();
    assert_eq!(first.public(), again.public());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::write(&path, b"short").unwrap();
    assert!(load_or_create_secret_key(&path).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_fails_the_calls_in_flight_at_once_and_the_next_call_dials_afresh() {
    let (server, client, _router) = pair().await;
    let rpc = Arc::new(RpcClient::new(client, server.addr(), ALPN));
    let limit = std::time::Duration::from_secs(60);
    let hanging = {
        let rpc = rpc.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = rpc
                .call_within::<_, Reply>(limit, &Request::Hang, Bytes::new())
                .await;
            (outcome.map(|(reply, _)| reply), started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    rpc.disconnect().await;
    let (outcome, waited) = hanging.await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
    let (reply, _): (Reply, Vec<u8>) = rpc
        .call(&Request::Sum(vec![2, 3]), Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply, Reply::Sum(5));
}

/// A raw server: answers the first request of every connection with `Sum`,
/// then after a pause sends `trailing` bytes and the stream's end, and
/// reports how its response stream ended (`None`: every byte acknowledged,
/// `Some`: STOP_SENDING).
/// How long a raw peer waits between its frame and the end of its stream.
const END_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug, Clone)]
struct RawServer {
    trailing: usize,
    ended: tokio::sync::mpsc::UnboundedSender<Option<u64>>,
}

impl iroh::protocol::ProtocolHandler for RawServer {
    async fn accept(
        &self,
        connection: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let _: (Request, Vec<u8>) = frame::read(&mut recv).await.unwrap();
        frame::write(&mut send, &Reply::Sum(1), Bytes::new())
            .await
            .unwrap();
        tokio::time::sleep(END_DELAY).await;
        tokio::io::AsyncWriteExt::write_all(&mut send, &vec![0; self.trailing])
            .await
            .unwrap();
        send.finish().unwrap();
        let stopped = send.stopped().await.unwrap();
        let _ = self.ended.send(stopped.map(|code| code.into_inner()));
        connection.closed().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_answer_to_the_end_and_refuses_trailing_bytes() {
    let client = endpoint(&[]).await;
    let (ended, mut endings) = tokio::sync::mpsc::unbounded_channel();
    for trailing in [0, 1] {
        let server = endpoint(&[client.id()]).await;
        let router = Router::builder(server.endpoint.clone())
            .accept(
                ALPN,
                RawServer {
                    trailing,
                    ended: ended.clone(),
                },
            )
            .spawn();
        let rpc = RpcClient::new(client.clone(), server.addr(), ALPN);
        let result: Result<(Reply, Vec<u8>), _> =
            rpc.call(&Request::Sum(vec![1]), Bytes::new()).await;
        let ending = endings.recv().await.unwrap();
        if trailing == 0 {
            assert_eq!(result.unwrap().0, Reply::Sum(1));
            assert_eq!(
                ending, None,
                "the client read to the stream's end: no STOP_SENDING"
            );
        } else {
            assert!(
                matches!(
                    result,
                    Err(aspen_proto::transport::RpcError::Frame(
                        FrameError::Trailing(_)
                    ))
                ),
                "{result:?}"
            );
        }
        rpc.disconnect().await;
        router.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reads_each_request_to_the_end() {
    let (server, client, _router) = pair().await;
    let connection = client.connect(server.addr(), ALPN).await.unwrap();
    for values in [vec![1, 2], vec![3]] {
        let expected = values.iter().sum();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        frame::write(&mut send, &Request::Sum(values), Bytes::new())
            .await
            .unwrap();
        let (reply, _): (Reply, Vec<u8>) = frame::read(&mut recv).await.unwrap();
        assert_eq!(reply, Reply::Sum(expected));
        tokio::time::sleep(END_DELAY).await;
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(0).await.unwrap(), Vec::<u8>::new());
        assert_eq!(
            send.stopped().await.unwrap(),
            None,
            "the server read the request's end: no STOP_SENDING"
        );
    }
}
