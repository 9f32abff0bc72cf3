//! Credentials and denials, against scripted nodes (no node checks tokens
//! yet): every call carries `authorization: Bearer <token>` (unary calls,
//! `Members`, `Register` sessions, `Subscribe` streams, and the streams opened
//! again after a lost node), and a node's denial comes back as its own error
//! kind at once, without trying the other nodes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::scripted::{RegisterStream, Script, SubscribeStream, serve};
use registry_client::{Backoff, Client, ClientConfig, Error};
use registry_proto::v1::register_request::Kind as In;
use registry_proto::v1::register_response::Kind as Out;
use registry_proto::v1::subscribe_response::Kind as Push;
use registry_proto::v1::{self};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

/// (rpc, the `authorization` metadata) of one call.
type Seen = (&'static str, Option<String>);

/// What a scripted node saw and does.
#[derive(Clone, Default)]
struct Node {
    /// (rpc, the `authorization` metadata) of every call, in order.
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer every call UNAUTHENTICATED when it has no `authorization`.
    require_token: bool,
    /// Answer `GetService` PERMISSION_DENIED.
    deny_reads: bool,
    /// Refuse upserts of this service in a session with code 7.
    deny_service: Option<&'static str>,
    /// End each Subscribe stream right after its snapshot (a lost node).
    end_streams: bool,
    /// Accept Subscribe, then end the stream PERMISSION_DENIED (a node that
    /// checks the grant once the stream is open).
    deny_in_stream: bool,
}

impl Node {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn calls(&self, rpc: &str) -> usize {
        self.seen().iter().filter(|(r, _)| *r == rpc).count()
    }
}

fn out(kind: Out) -> Result<v1::RegisterResponse, Status> {
    Ok(v1::RegisterResponse { kind: Some(kind) })
}

#[tonic::async_trait]
impl Script for Node {
    fn metadata(&self, rpc: &'static str, metadata: &MetadataMap) -> Result<(), Status> {
        let authorization = metadata.get("authorization").map(|v| v.to_str().unwrap_or("<not ascii>").to_string());
        self.seen.lock().expect("lock").push((rpc, authorization.clone()));
        if self.require_token && authorization.is_none() {
            return Err(Status::unauthenticated("missing bearer token"));
        }
        Ok(())
    }

    async fn register(&self, mut inbound: Streaming<v1::RegisterRequest>) -> Result<RegisterStream, Status> {
        let (tx, rx) = mpsc::channel(16);
        let deny = self.deny_service;
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let reply = match msg.kind {
                    Some(In::Open(_)) => Out::Opened(v1::SessionOpened {
                        session_id: "s".into(),
                        node_id: "scripted".into(),
                        lease_ttl_ms: 30_000,
                        heartbeat_interval_ms: 10_000,
                    }),
                    Some(In::Upsert(i)) if Some(i.service.as_str()) == deny => Out::Rejected(v1::Rejected {
                        key: None,
                        reason: format!("token `orders-team` has no write grant on default/{}", i.service),
                        code: tonic::Code::PermissionDenied as i32,
                    }),
                    Some(In::Upsert(_) | In::Remove(_)) => Out::Accepted(v1::Accepted::default()),
                    Some(In::Heartbeat(_)) => Out::Pong(v1::Pong::default()),
                    _ => continue,
                };
                if tx.send(out(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn subscribe(&self, request: v1::SubscribeRequest) -> Result<SubscribeStream, Status> {
        let (tx, rx) = mpsc::channel(4);
        let snapshot = v1::ServiceSnapshot {
            namespace: request.namespace,
            service: request.services.first().cloned().unwrap_or_default(),
            instances: Vec::new(),
            revision: 1,
            freshness: None,
        };
        let end = self.end_streams;
        if self.deny_in_stream {
            let _ = tx.send(Err(Status::permission_denied("token `ci` has no read grant on default/orders"))).await;
            return Ok(ReceiverStream::new(rx));
        }
        tokio::spawn(async move {
            let _ = tx.send(Ok(v1::SubscribeResponse { kind: Some(Push::Snapshot(snapshot)) })).await;
            if !end {
                tx.closed().await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn get_service(&self, request: v1::GetServiceRequest) -> Result<v1::GetServiceResponse, Status> {
        if self.deny_reads {
            return Err(Status::permission_denied(format!(
                "token `ci` has no read grant on {}/{}",
                request.namespace, request.service
            )));
        }
        Ok(v1::GetServiceResponse { namespace: request.namespace, service: request.service, ..Default::default() })
    }

    async fn members(&self) -> Result<v1::MembersResponse, Status> {
        Ok(v1::MembersResponse { cluster: "scripted".into(), ..Default::default() })
    }
}

/// A token made up at run time: no secret-looking literal in the source.
fn made_up_token() -> String {
    format!("test-{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

fn config(addrs: &[SocketAddr]) -> ClientConfig {
    ClientConfig::new(addrs.iter().map(|a| format!("http://{a}")))
        .in_order(true)
        .request_timeout(Duration::from_secs(5))
        .backoff(Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(100) })
}

fn orders(port: u32) -> v1::Instance {
    v1::Instance { service: "orders".into(), host: "10.0.0.7".into(), port, ..Default::default() }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_carries_the_bearer_token() {
    let token = made_up_token();
    let node = Node { end_streams: true, ..Node::default() };
    let addr = serve(node.clone()).await;
    let client = Client::new(config(&[addr]).token(token.as_str())).expect("client");
    assert!(!format!("{client:?}").contains(&token), "the client's Debug shows no token");

    client.get_service("orders").await.expect("unary");
    client.members().await.expect("members");
    let provider = client.register([orders(8080)]).await.expect("register");
    provider.upsert(orders(8081)).await.expect("upsert in the session");
    // Each stream ends after its snapshot: the watch reconnects, over a new
    // connection of its own, and must still send the token.
    let watch = client.watch("orders").await.expect("watch");
    until("the watch subscribed again", || node.calls("subscribe") >= 3).await;
    drop(watch);
    provider.shutdown().await;

    let seen = node.seen();
    for rpc in ["get_service", "members", "register", "subscribe"] {
        assert!(seen.iter().any(|(r, _)| *r == rpc), "no {rpc} call in {seen:?}");
    }
    let expected = format!("Bearer {token}");
    for (rpc, authorization) in &seen {
        assert_eq!(authorization.as_deref(), Some(expected.as_str()), "{rpc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_no_authorization_is_sent() {
    let node = Node::default();
    let addr = serve(node.clone()).await;
    let client = Client::new(config(&[addr])).expect("client");
    client.get_service("orders").await.expect("unary");
    client.watch("orders").await.expect("watch");
    assert!(node.seen().iter().all(|(_, a)| a.is_none()), "{:?}", node.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_fails_at_once_on_the_first_node() {
    let (a, b) = (Node { require_token: true, ..Node::default() }, Node { require_token: true, ..Node::default() });
    let addrs = [serve(a.clone()).await, serve(b.clone()).await];
    let client = Client::new(config(&addrs)).expect("client");
    let started = Instant::now();

    let e = client.get_service("orders").await.expect_err("denied");
    assert!(matches!(&e, Error::Unauthenticated(m) if m == "missing bearer token"), "{e:?}");
    let e = client.register([orders(8080)]).await.expect_err("denied");
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    let e = client.watch("orders").await.expect_err("denied");
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");

    // One try of each, on one node, and no waiting for the request timeout.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    for rpc in ["get_service", "register", "subscribe"] {
        assert_eq!(a.calls(rpc) + b.calls(rpc), 1, "{rpc}: {:?} {:?}", a.seen(), b.seen());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_carries_the_nodes_message_and_is_not_failed_over() {
    let (a, b) = (Node { deny_reads: true, ..Node::default() }, Node { deny_reads: true, ..Node::default() });
    let addrs = [serve(a.clone()).await, serve(b.clone()).await];
    let client = Client::new(config(&addrs).token(made_up_token())).expect("client");
    let e = client.get_service("orders").await.expect_err("denied");
    assert!(matches!(&e, Error::PermissionDenied(m) if m == "token `ci` has no read grant on default/orders"), "{e:?}");
    assert!(e.is_denied());
    assert_eq!(a.calls("get_service") + b.calls("get_service"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_upsert_is_permission_denied_and_the_session_goes_on() {
    let node = Node { deny_service: Some("payments"), ..Node::default() };
    let addr = serve(node.clone()).await;
    let client = Client::new(config(&[addr]).token(made_up_token())).expect("client");
    let provider = client.register([orders(8080)]).await.expect("register");

    let payments = v1::Instance { service: "payments".into(), ..orders(9090) };
    let e = provider.upsert(payments.clone()).await.expect_err("denied");
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m == "token `orders-team` has no write grant on default/payments"),
        "{e:?}"
    );
    // Not kept for the next session, and this one is still usable.
    assert_eq!(provider.instances().len(), 1);
    provider.upsert(orders(8081)).await.expect("the session goes on");
    assert_eq!(provider.instances().len(), 2);
    assert_eq!(provider.state().borrow().sessions, 1);
    provider.shutdown().await;

    // A first registration denied: the caller gets the denial, no retries.
    let e = client.register([payments]).await.expect_err("denied");
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    assert_eq!(node.calls("register"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_denied_inside_its_stream_fails_with_the_denial() {
    let node = Node { deny_in_stream: true, ..Node::default() };
    let addr = serve(node.clone()).await;
    let client = Client::new(config(&[addr]).token(made_up_token())).expect("client");
    let started = Instant::now();
    let e = client.watch("orders").await.expect_err("denied");
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("no read grant")), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn a_token_that_cannot_be_sent_is_refused_without_being_repeated() {
    let bad = format!("two {}", made_up_token());
    let e = Client::new(ClientConfig::new(["127.0.0.1:7070"]).token(bad.as_str())).expect_err("refused");
    assert!(matches!(e, Error::InvalidToken), "{e:?}");
    assert!(!e.to_string().contains(&bad) && !format!("{e:?}").contains(&bad));
}
