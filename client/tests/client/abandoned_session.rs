//! How the provider ends a session it gives up on while registering in it
//! (the node answered `opened`, then not the registrations in time).
//!
//! A bare half-close tells a node "this provider is gone": it removes the
//! session's instances at once, with a removal versioned above every copy it
//! knows. After a lost node or a drain, those copies include the ones
//! consumers see meanwhile (the dead node's, kept through its grace, or the
//! provider's previous session's), so the removal would hide a live provider
//! until its next session registers it again: a flap. Even a first
//! registration's removal can: the provider tries again on another node at
//! once. So a provider ends a session it gives up on with a `moved` goodbye
//! (the node keeps the copies until the next session's newer ones take them
//! over); only a refused registration, after which the provider stops, ends
//! with a plain goodbye.
//!
//! The node here is a scripted one (see `scripted`): no real node can be
//! made to answer `opened` and then stall on cue.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::scripted::{RegisterStream, Script, serve};
use registry_client::{Backoff, Client, ClientConfig};
use registry_proto::v1::register_request::Kind as In;
use registry_proto::v1::register_response::Kind as Out;
use registry_proto::v1::{self};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

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
    /// The node broke the session itself ([`Act::AcceptThenBreak`]).
    BrokenByNode,
}

#[derive(Clone, Debug)]
struct SessionLog {
    upserts: Vec<Instant>,
    ending: Ending,
    ended_at: Option<Instant>,
}

/// What the scripted node does with one session (after answering `opened`).
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Accepts the registrations, and breaks the session 200 ms later.
    AcceptThenBreak,
    /// Never answers the registrations; ends the stream `ms` after the
    /// goodbye (a slow node finishing what it was sent).
    Stall { ms: u64 },
    /// Accepts everything, for good.
    Accept,
    /// Refuses every registration as invalid.
    Refuse,
}

/// A node that answers `opened` to every session, then acts on session n as
/// `script[n]` says (the last entry for every later session).
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Act>>,
    sessions: Arc<Mutex<Vec<SessionLog>>>,
}

impl Scripted {
    fn new(script: &[Act]) -> Self {
        Self { script: Arc::new(script.to_vec()), sessions: Arc::default() }
    }

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
impl Script for Scripted {
    async fn register(&self, mut inbound: Streaming<v1::RegisterRequest>) -> Result<RegisterStream, Status> {
        let (tx, rx) = mpsc::channel(64);
        let n = {
            let mut sessions = self.sessions.lock().expect("lock");
            sessions.push(SessionLog { upserts: Vec::new(), ending: Ending::Open, ended_at: None });
            sessions.len() - 1
        };
        let act = self.script[n.min(self.script.len() - 1)];
        let me = self.clone();
        let end = move |ending: Ending| {
            me.set(n, |s| {
                s.ending = ending;
                s.ended_at = Some(Instant::now());
            })
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mut break_at = None;
            loop {
                let msg = tokio::select! {
                    _ = tokio::time::sleep_until(break_at.unwrap_or_else(Instant::now)), if break_at.is_some() => {
                        let _ = tx.send(Err(Status::unavailable("scripted: session broken"))).await;
                        return end(Ending::BrokenByNode);
                    }
                    msg = inbound.message() => msg,
                };
                let kind = match msg {
                    Ok(Some(v1::RegisterRequest { kind: Some(kind) })) => kind,
                    Ok(Some(_)) => continue,
                    Ok(None) => return end(Ending::HalfClose),
                    Err(_) => return end(Ending::Broken),
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
                        me.set(n, |s| s.upserts.push(Instant::now()));
                        if let Act::Refuse = act {
                            let rejected = v1::Rejected {
                                key: None,
                                code: tonic::Code::InvalidArgument as i32,
                                reason: "scripted: refused".into(),
                            };
                            let _ = tx.send(out(Out::Rejected(rejected))).await;
                        } else if !matches!(act, Act::Stall { .. }) {
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
                            if matches!(act, Act::AcceptThenBreak) {
                                break_at = Some(Instant::now() + Duration::from_millis(200));
                            }
                        }
                    }
                    In::Goodbye(g) => {
                        if let Act::Stall { ms } = act {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        return end(Ending::Goodbye { moved: g.moved });
                    }
                    In::Heartbeat(_) => {
                        let _ = tx.send(out(Out::Pong(v1::Pong::default()))).await;
                    }
                    _ => {}
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
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
    let node = Scripted::new(&[Act::AcceptThenBreak, Act::Stall { ms: 0 }]);
    let addr = serve(node.clone()).await;
    let provider = client(addr).register([instance("x"), instance("y")]).await.expect("first session registers");

    // The node breaks the first session; the provider re-registers in new
    // sessions, which the node never answers, so it gives each up in turn.
    until(&node, "three sessions given up on", |s| {
        s.iter().skip(1).filter(|s| s.upserts.len() == 2 && s.ending != Ending::Open).count() >= 3
    })
    .await;
    let sessions = node.sessions();
    assert_eq!(sessions[0].ending, Ending::BrokenByNode);
    for (n, s) in sessions.iter().enumerate().skip(1).filter(|(_, s)| s.ending != Ending::Open) {
        assert_eq!(s.ending, Ending::Goodbye { moved: true }, "re-registration session {n}: {sessions:?}");
    }
    provider.shutdown().await;
}

/// A node too slow to answer may apply a session's registrations after the
/// provider made them elsewhere, with newer versions, which would take the
/// instances over from the session that goes on. So once the given-up
/// session has ended at its node, the session that goes on registers
/// everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_session_given_up_on_ends_the_current_one_registers_again() {
    // Session 1 stalls, and ends 700 ms after its goodbye; session 2 is the
    // one that goes on.
    let node = Scripted::new(&[Act::AcceptThenBreak, Act::Stall { ms: 700 }, Act::Accept]);
    let addr = serve(node.clone()).await;
    let provider = client(addr).register([instance("x"), instance("y")]).await.expect("first session registers");

    until(&node, "the current session registered twice", |s| s.len() >= 3 && s[2].upserts.len() >= 4).await;
    let sessions = node.sessions();
    let (given_up, current) = (&sessions[1], &sessions[2]);
    assert_eq!(given_up.ending, Ending::Goodbye { moved: true }, "{sessions:?}");
    let ended = given_up.ended_at.expect("the given-up session ended");
    assert!(current.upserts[..2].iter().all(|t| *t < ended), "registered at once: {sessions:?}");
    assert!(current.upserts[2..].iter().all(|t| *t >= ended), "again once the other ended: {sessions:?}");
    assert_eq!(current.upserts.len(), 4, "{sessions:?}");
    assert_eq!(current.ending, Ending::Open);
    provider.shutdown().await;
}

/// A first registration given up on is tried again elsewhere (here: until
/// the request timeout), so it ends as moved too, and the node keeps its
/// copies until the next try's take them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_registration_given_up_on_ends_with_a_moved_goodbye() {
    let node = Scripted::new(&[Act::Stall { ms: 0 }]);
    let addr = serve(node.clone()).await;
    let err = client(addr).register([instance("x")]).await.expect_err("nothing is ever accepted");
    assert!(err.to_string().contains("not answered in time"), "{err}");
    until(&node, "every session ended", |s| !s.is_empty() && s.iter().all(|s| s.ending != Ending::Open)).await;
    let sessions = node.sessions();
    for (n, s) in sessions.iter().enumerate() {
        assert_eq!(s.upserts.len(), 1, "session {n}: {sessions:?}");
        assert_eq!(s.ending, Ending::Goodbye { moved: true }, "session {n}: {sessions:?}");
    }
}

/// A refused registration is the caller's to fix: the provider stops, and
/// the session ends with a plain goodbye before the caller hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_registration_ends_with_a_plain_goodbye() {
    let node = Scripted::new(&[Act::Refuse]);
    let addr = serve(node.clone()).await;
    let err = client(addr).register([instance("x")]).await.expect_err("refused");
    assert!(err.to_string().contains("refused"), "{err}");
    let sessions = node.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].ending, Ending::Goodbye { moved: false }, "{sessions:?}");
}
