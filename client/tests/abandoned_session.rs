//! How the provider ends a session it gives up on while registering in it
//! (the node answered `opened`, then not the registrations in time).
//!
//! A bare half-close tells a node "this provider is gone": it removes the
//! session's instances at once, with a removal versioned above every copy it
//! knows. After a lost node or a drain, those copies include the ones
//! consumers see meanwhile (the dead node's, kept through its grace, or the
//! provider's previous session's), so the removal would hide a live provider
//! until its next session registers it again: a flap. So a re-registering
//! provider ends such a session with a `moved` goodbye (the node keeps the
//! copies until the next session's newer ones take them over), and only a
//! first registration, which has no other copy, ends with a plain goodbye.
//!
//! The node here is a scripted one: no real node can be made to answer
//! `opened` and then stall on cue.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry_client::{Backoff, Client, ClientConfig};
use registry_proto::v1::register_request::Kind as In;
use registry_proto::v1::register_response::Kind as Out;
use registry_proto::v1::registry_server::{Registry, RegistryServer};
use registry_proto::v1::{self};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// How a scripted session ended, as the node saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ending {
    /// Still open.
    Open,
    Goodbye {
        moved: bool,
    },
    /// The request stream ended without a goodbye.
    HalfClose,
    /// The transport broke (the client reset the stream).
    Broken,
    /// The node broke the session itself (script: `break_first`).
    BrokenByNode,
}

#[derive(Clone, Debug)]
struct SessionLog {
    upserts: usize,
    ending: Ending,
}

/// A node that answers `opened` to every session. With `break_first`, it
/// accepts the first session's registrations and breaks that session 200 ms
/// later; every other session's registrations it never answers.
#[derive(Clone)]
struct Scripted {
    break_first: bool,
    sessions: Arc<Mutex<Vec<SessionLog>>>,
}

impl Scripted {
    fn sessions(&self) -> Vec<SessionLog> {
        self.sessions.lock().expect("lock").clone()
    }

    fn set(&self, n: usize, f: impl FnOnce(&mut SessionLog)) {
        f(&mut self.sessions.lock().expect("lock")[n]);
    }
}

type Reply = Result<v1::RegisterResponse, Status>;

fn out(kind: Out) -> Reply {
    Ok(v1::RegisterResponse { kind: Some(kind) })
}

#[tonic::async_trait]
impl Registry for Scripted {
    type RegisterStream = ReceiverStream<Reply>;
    type SubscribeStream = ReceiverStream<Result<v1::SubscribeResponse, Status>>;

    async fn register(
        &self,
        request: Request<Streaming<v1::RegisterRequest>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let n = {
            let mut sessions = self.sessions.lock().expect("lock");
            sessions.push(SessionLog { upserts: 0, ending: Ending::Open });
            sessions.len() - 1
        };
        let answers = self.break_first && n == 0;
        let me = self.clone();
        tokio::spawn(async move {
            let mut break_at = None;
            loop {
                let msg = tokio::select! {
                    _ = tokio::time::sleep_until(break_at.unwrap_or_else(Instant::now)), if break_at.is_some() => {
                        let _ = tx.send(Err(Status::unavailable("scripted: session broken"))).await;
                        me.set(n, |s| s.ending = Ending::BrokenByNode);
                        return;
                    }
                    msg = inbound.message() => msg,
                };
                let kind = match msg {
                    Ok(Some(v1::RegisterRequest { kind: Some(kind) })) => kind,
                    Ok(Some(_)) => continue,
                    Ok(None) => return me.set(n, |s| s.ending = Ending::HalfClose),
                    Err(_) => return me.set(n, |s| s.ending = Ending::Broken),
                };
                match kind {
                    In::Open(_) => {
                        let opened = v1::SessionOpened {
                            session_id: format!("s{n}"),
                            node_id: "scripted".into(),
                            lease_ttl_ms: 30_000,
                            heartbeat_interval_ms: 10_000,
                        };
                        let _ = tx.send(out(Out::Opened(opened))).await;
                    }
                    In::Upsert(i) => {
                        me.set(n, |s| s.upserts += 1);
                        if answers {
                            let key = v1::InstanceKey {
                                namespace: i.namespace.clone(),
                                service: i.service.clone(),
                                instance_id: i.instance_id.clone(),
                            };
                            let _ = tx
                                .send(out(Out::Accepted(v1::Accepted {
                                    key: Some(key),
                                    version: 1,
                                    ..Default::default()
                                })))
                                .await;
                            break_at = Some(Instant::now() + Duration::from_millis(200));
                        }
                    }
                    In::Goodbye(g) => return me.set(n, |s| s.ending = Ending::Goodbye { moved: g.moved }),
                    _ => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn register_instance(
        &self,
        _: Request<v1::RegisterInstanceRequest>,
    ) -> Result<Response<v1::RegisterInstanceResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn renew(&self, _: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn deregister(&self, _: Request<v1::DeregisterRequest>) -> Result<Response<v1::DeregisterResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn subscribe(&self, _: Request<v1::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn get_service(&self, _: Request<v1::GetServiceRequest>) -> Result<Response<v1::GetServiceResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn list_services(
        &self,
        _: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn list_consumers(
        &self,
        _: Request<v1::ListConsumersRequest>,
    ) -> Result<Response<v1::ListConsumersResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

async fn serve(node: Scripted) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistryServer::new(node))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn client(addr: SocketAddr) -> Client {
    let config = ClientConfig::new([format!("http://{addr}")])
        .client_name("abandoning")
        .request_timeout(Duration::from_millis(300))
        .backoff(Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(50) });
    Client::new(config).expect("client")
}

fn instance(id: &str) -> v1::Instance {
    v1::Instance {
        service: "api".into(),
        instance_id: id.into(),
        host: "127.0.0.1".into(),
        port: 80,
        ..Default::default()
    }
}

/// Waits until `check` holds for the node's sessions, or fails showing them.
async fn until(node: &Scripted, what: &str, check: impl Fn(&[SessionLog]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check(&node.sessions()) {
        assert!(Instant::now() < deadline, "{what}: not within 10 s; sessions: {:?}", node.sessions());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_registration_given_up_on_ends_with_a_moved_goodbye() {
    let node = Scripted { break_first: true, sessions: Arc::default() };
    let addr = serve(node.clone()).await;
    let provider = client(addr).register([instance("x"), instance("y")]).await.expect("first session registers");

    // The node breaks the first session; the provider re-registers in new
    // sessions, which the node never answers, so it gives each up in turn.
    until(&node, "three sessions given up on", |s| {
        s.iter().skip(1).filter(|s| s.upserts == 2 && s.ending != Ending::Open).count() >= 3
    })
    .await;
    let sessions = node.sessions();
    assert_eq!(sessions[0].ending, Ending::BrokenByNode);
    for (n, s) in sessions.iter().enumerate().skip(1).filter(|(_, s)| s.ending != Ending::Open) {
        assert_eq!(s.ending, Ending::Goodbye { moved: true }, "re-registration session {n}: {sessions:?}");
    }
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_registration_given_up_on_ends_with_a_goodbye() {
    let node = Scripted { break_first: false, sessions: Arc::default() };
    let addr = serve(node.clone()).await;
    let err = client(addr).register([instance("x")]).await.expect_err("nothing is ever accepted");
    assert!(err.to_string().contains("not answered in time"), "{err}");

    // The caller hears of the failure once the session said goodbye: a plain
    // one (there is no other copy to keep), and nothing is left open.
    let sessions = node.sessions();
    assert!(!sessions.is_empty());
    for (n, s) in sessions.iter().enumerate() {
        assert_eq!(s.upserts, 1, "session {n}: {sessions:?}");
        assert_eq!(s.ending, Ending::Goodbye { moved: false }, "session {n}: {sessions:?}");
    }
}
