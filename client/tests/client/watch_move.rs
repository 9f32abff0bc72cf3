//! A watch that moves to another node (asked by a `drain`) switches streams
//! without showing consumers anything that did not happen.
//!
//! The new node's snapshot can be behind the old stream: a registration the
//! old node pushed a moment ago may not have reached the new node yet. The
//! watch follows both streams until their views agree (or a settle time
//! passes) and only then switches, so such a registration is never shown
//! removed and added again, while what really differs still shows.
//!
//! The nodes here are scripted, to put the two streams exactly out of step
//! (a real cluster found it, under the soak's churn).

use std::net::SocketAddr;
use std::time::Duration;

use crate::scripted::{Script, SubscribeStream, serve};
use registry_client::{Client, ClientConfig, InstanceChange, WatchEvent};
use registry_proto::v1::subscribe_response::Kind as Push;
use registry_proto::v1::{self};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// What a scripted node pushes on a Subscribe stream: each message after its
/// delay (from the previous one); then the stream stays open.
#[derive(Clone)]
struct Scripted {
    script: Vec<(u64, Push)>,
}

#[tonic::async_trait]
impl Script for Scripted {
    async fn subscribe(&self, _: v1::SubscribeRequest) -> Result<SubscribeStream, Status> {
        let (tx, rx) = mpsc::channel(16);
        let script = self.script.clone();
        tokio::spawn(async move {
            for (delay_ms, kind) in script {
                sleep(Duration::from_millis(delay_ms)).await;
                if tx.send(Ok(v1::SubscribeResponse { kind: Some(kind) })).await.is_err() {
                    return;
                }
            }
            // Open until the client leaves.
            tx.closed().await;
        });
        Ok(ReceiverStream::new(rx))
    }
}

async fn node(script: Vec<(u64, Push)>) -> SocketAddr {
    serve(Scripted { script }).await
}

fn instance(id: &str) -> v1::Instance {
    v1::Instance {
        namespace: "default".into(),
        service: "api".into(),
        instance_id: id.into(),
        host: "127.0.0.1".into(),
        port: 80,
        ..Default::default()
    }
}

fn snapshot(ids: &[&str], revision: u64) -> Push {
    Push::Snapshot(v1::ServiceSnapshot {
        namespace: "default".into(),
        service: "api".into(),
        instances: ids.iter().map(|id| instance(id)).collect(),
        revision,
        freshness: None,
    })
}

fn added(id: &str, revision: u64) -> Push {
    Push::Delta(v1::ServiceDelta {
        namespace: "default".into(),
        service: "api".into(),
        upserted: vec![instance(id)],
        revision,
        prev_revision: revision - 1,
        ..Default::default()
    })
}

fn drain() -> Push {
    Push::Drain(v1::Drain { hint: String::new(), delay_ms: 0, reason: "scripted".into() })
}

/// A watch over the two scripted nodes, first on `old`.
async fn watch(old: SocketAddr, new: SocketAddr) -> registry_client::ServiceWatch {
    let config = ClientConfig::new([format!("http://{old}"), format!("http://{new}")]).in_order(true);
    Client::new(config).expect("client").watch("api").await.expect("watch")
}

/// Events until the watch's view comes from `endpoint` and `done` holds, or
/// 10 s.
async fn until_on(
    watch: &registry_client::ServiceWatch,
    events: &mut tokio::sync::broadcast::Receiver<WatchEvent>,
    endpoint: SocketAddr,
    done: impl Fn(&registry_client::ServiceView) -> bool,
) -> Vec<WatchEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        loop {
            match events.try_recv() {
                Ok(e) => seen.push(e),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => panic!("{n} events lost to a lag"),
                Err(_) => break,
            }
        }
        let view = watch.current();
        if view.endpoint.contains(&endpoint.port().to_string()) && done(&view) {
            return seen;
        }
        assert!(Instant::now() < deadline, "not on {endpoint} within 10 s; view {view:?}; events {seen:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

fn removed(events: &[WatchEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Changed(InstanceChange::Removed(i)) => Some(i.instance_id.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_the_new_node_has_not_seen_yet_is_never_shown_removed() {
    // The old node pushes x, then asks the watch to move; the new node's
    // snapshot lacks x, which reaches it 300 ms later.
    let old = node(vec![(0, snapshot(&["base"], 1)), (200, added("x", 2)), (100, drain())]).await;
    let new = node(vec![(0, snapshot(&["base"], 7)), (300, added("x", 8))]).await;
    let watch = watch(old, new).await;
    let mut events = watch.events();

    let seen = until_on(&watch, &mut events, new, |v| v.instances.contains_key("x")).await;
    assert!(removed(&seen).is_empty(), "a removal that never happened: {seen:?}");
    let view = watch.current();
    assert_eq!(view.instances.keys().collect::<Vec<_>>(), ["base", "x"]);
    assert_eq!(view.revision, 8, "the view follows the new stream's revisions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_really_differs_still_shows_after_the_settle_time() {
    // y is gone on the new node for good: the watch switches after the
    // settle time and shows y removed.
    let old = node(vec![(0, snapshot(&["base", "y"], 1)), (100, drain())]).await;
    let new = node(vec![(0, snapshot(&["base"], 3))]).await;
    let watch = watch(old, new).await;
    let mut events = watch.events();

    let started = Instant::now();
    let seen = until_on(&watch, &mut events, new, |v| !v.instances.contains_key("y")).await;
    assert_eq!(removed(&seen), ["y"], "{seen:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "switched after {:?}", started.elapsed());
    assert_eq!(watch.current().revision, 3);
}
