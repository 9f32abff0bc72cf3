//! Watching services: a snapshot of each watched service, then its deltas,
//! progress keepalives and, when the node wants the watcher elsewhere, a
//! drain. The frames are the shared encoded `SubscribeResponse`s: the writer
//! queues deltas straight into the watcher's queue, encoded once for all.
//! Every front-end that streams changes (gRPC Subscribe, server-sent events,
//! xDS) reads the same [`WatchItem`]s and only re-frames them (xDS reads them
//! as "this service changed" and sends what the view holds).

use std::sync::Arc;
use std::time::Duration;

use registry_proto::{SubscribeFrame, v1};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::validate::Subscription;
use crate::views::Subscriber;

/// One item of a watch: a frame, or why the node ended the watch.
pub type WatchItem = Result<SubscribeFrame, WatchEnd>;

/// Why the node ended a watch (a front-end maps it to its own error: gRPC
/// UNAVAILABLE, an SSE close). The watcher should watch again, anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    #[error("node shut down; subscribe to another node")]
    Shutdown,
    #[error("asked to move and still here; subscribe again (to any node)")]
    MoveTimeout,
}

/// The task behind one Subscribe stream. Deltas do not pass through it (the
/// writer queues them straight into the stream); it sends snapshots when the
/// subscriber needs them, progress keepalives, and cleans up when the stream ends.
pub(crate) struct WatchTask {
    pub(crate) registry: Arc<Registry>,
    pub(crate) subscription: Subscription,
    pub(crate) subscriber: Arc<Subscriber>,
    pub(crate) stream_key: String,
    /// This stream's own drain: the node's (shutdown), or just this one's
    /// (rebalancing, or its maximum age).
    pub(crate) drain: CancellationToken,
    pub(crate) stop: CancellationToken,
    pub(crate) out: mpsc::Sender<WatchItem>,
}

/// How long a stream asked to move is served on after its delay: a client
/// that follows the drain has a new stream by then; one that ignores it is
/// ended with UNAVAILABLE.
const MOVE_TIMEOUT: Duration = Duration::from_secs(5);

impl WatchTask {
    pub(crate) async fn run(self) {
        let cfg = &self.registry.config().subscriptions;
        let period = Duration::from_millis(cfg.progress_interval_ms);
        let mut progress = interval_at(Instant::now() + period, period);
        let max_age = crate::movers::max_age_deadline(cfg.max_age_ms);
        let id = self.subscriber.id;
        self.registry.subscriptions.register(id, self.drain.clone());
        // Set once the stream was asked to move: when it is ended regardless.
        let mut moving: Option<Instant> = None;
        'stream: loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    let _ = self.out.try_send(Err(WatchEnd::Shutdown));
                    break;
                }
                _ = tokio::time::sleep_until(max_age.unwrap_or_else(Instant::now)), if max_age.is_some() && !self.drain.is_cancelled() => {
                    self.drain.cancel();
                }
                _ = self.drain.cancelled(), if moving.is_none() => {
                    let jitter_ms = self.registry.config().sessions.drain_jitter_ms;
                    let drain = self.registry.subscriptions.drain(id, self.registry.is_draining(), jitter_ms);
                    moving = Some(Instant::now() + Duration::from_millis(u64::from(drain.delay_ms)) + MOVE_TIMEOUT);
                    let msg = v1::SubscribeResponse { kind: Some(v1::subscribe_response::Kind::Drain(drain)) };
                    tokio::select! {
                        sent = self.out.send(Ok(SubscribeFrame::encode(&msg))) => if sent.is_err() { break },
                        _ = self.stop.cancelled() => break,
                    }
                }
                _ = tokio::time::sleep_until(moving.unwrap_or_else(Instant::now)), if moving.is_some() => {
                    let _ = self.out.try_send(Err(WatchEnd::MoveTimeout));
                    break;
                }
                _ = self.out.closed() => break,
                _ = self.subscriber.notify.notified() => {
                    for svc in self.subscriber.needs() {
                        // Wait for room first, then take the snapshot: it is then
                        // as fresh as it can be and nothing can overtake it.
                        let permit = tokio::select! {
                            p = self.out.reserve() => match p {
                                Ok(p) => p,
                                Err(_) => break 'stream,
                            },
                            _ = self.stop.cancelled() => break 'stream,
                        };
                        let freshness = self.registry.freshness();
                        self.registry.views().send_snapshot(&self.subscriber, &svc, permit, freshness);
                    }
                }
                _ = progress.tick() => {
                    let msg = v1::SubscribeResponse {
                        kind: Some(v1::subscribe_response::Kind::Progress(v1::Progress {
                            freshness: Some(self.registry.freshness()),
                            node_id: self.registry.node_id().to_string(),
                        })),
                    };
                    // A keepalive is worthless behind a full queue: skip it then.
                    let _ = self.out.try_send(Ok(SubscribeFrame::encode(&msg)));
                }
            }
        }
        self.registry.subscriptions.unregister(id);
        let views = self.registry.views();
        views.unwatch(&self.subscriber, &self.subscription.namespace, &self.subscription.services);
        self.registry.remove_consumer(&self.subscription.namespace, &self.stream_key);
        Metrics::dec(&self.registry.metrics.subscribers_active);
    }
}
