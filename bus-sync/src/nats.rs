//! The NATS shell around the [`Runtime`]: one task owns the connection and
//! the subscriptions, turns what arrives (messages, request outcomes, NATS
//! events, the node's "own slice changed", the tick) into [`Input`]s for the
//! runtime, and writes what the runtime queued on the `NatsTransport` after
//! each step. Publish errors, reconnect gaps and slow-consumer drops are all
//! possible loss; the protocol repairs them from beats, so here they are only
//! counted.
//!
//! Subjects: see [`crate::runtime`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use registry_store::Origin;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::runtime::{Answer, Input, Replica, Runtime, RuntimeConfig, Subjects, SyncShared, Transport};
use crate::wire::{self, Reply};

/// How to reach NATS and what to call things there.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    /// The runtime's settings (subjects, timers, transfers).
    pub runtime: RuntimeConfig,
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("NATS: {0}")]
    Connect(String),
    #[error("NATS subscribe to {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
}

/// The running replication task.
#[derive(Debug)]
pub struct SyncHandle {
    pub shared: Arc<SyncShared>,
    task: JoinHandle<()>,
}

impl SyncHandle {
    /// Waits for the task to end (after its stop token was cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Ends the task at once: nothing more is published, and the NATS
    /// connection closes as if the process had died.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// A user and password given in a NATS URL (`nats://user:pass@host:4222`).
/// The client library connects to such a URL without them, so they are
/// handed over as options (the first URL that has them wins).
fn url_credentials(urls: &[String]) -> Option<(String, String)> {
    urls.iter().find_map(|u| {
        let addr: async_nats::ServerAddr = u.parse().ok()?;
        Some((addr.username()?.to_string(), addr.password()?.to_string()))
    })
}

enum Event {
    Connected,
    Disconnected,
    SlowConsumer,
}

/// A message the runtime queued, written after its step.
struct Outgoing {
    subject: Subject,
    payload: Bytes,
    /// A reply to a sync request (only the log line differs).
    reply: bool,
}

/// The runtime's way onto NATS. Publishes and small replies are queued and
/// written in order by [`NatsTransport::flush`] after each step, so a beat
/// never overtakes the changes it covers; requests and page replies run as
/// tasks, off the protocol loop.
struct NatsTransport {
    client: async_nats::Client,
    shared: Arc<SyncShared>,
    queue: Vec<Outgoing>,
    /// Requests in flight and pages being sent.
    tasks: JoinSet<()>,
    answers: mpsc::Sender<(u64, Answer)>,
    request_timeout: Duration,
}

impl Transport for NatsTransport {
    type ReplyTo = Subject;

    fn publish(&mut self, subject: &str, payload: Bytes) {
        self.queue.push(Outgoing { subject: Subject::from(subject), payload, reply: false });
    }

    fn request(&mut self, id: u64, subject: &str, payload: Bytes) {
        let client = self.client.clone();
        let tx = self.answers.clone();
        let timeout = self.request_timeout;
        let subject = subject.to_string();
        self.tasks.spawn(async move {
            // Decoded here, on whichever worker runs this task, so a large
            // page does not hold up the protocol loop.
            let answer = match tokio::time::timeout(timeout, client.request(subject, payload)).await {
                Ok(Ok(msg)) => Answer::decode(&msg.payload),
                _ => Answer::Failed,
            };
            let _ = tx.send((id, answer)).await;
        });
        // Reap finished tasks so the set stays small.
        while self.tasks.try_join_next().is_some() {}
    }

    fn respond(&mut self, reply_to: Subject, reply: Reply) {
        if !matches!(reply, Reply::Page(_)) {
            let payload = Bytes::from(wire::encode(&wire::reply_to_wire(&reply)));
            self.queue.push(Outgoing { subject: reply_to, payload, reply: true });
            return;
        }
        // Encoding a page is the bulk of serving a slice: off the protocol loop.
        let client = self.client.clone();
        let shared = self.shared.clone();
        self.tasks.spawn(async move {
            let payload = Bytes::from(wire::encode(&wire::reply_to_wire(&reply)));
            if let Err(e) = client.publish(reply_to, payload).await {
                shared.metrics.publish_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(error = %e, "could not send a sync reply");
            }
        });
    }

    fn max_payload(&self) -> usize {
        // 0 until the server has said.
        match self.client.server_info().max_payload {
            0 => 1 << 20,
            n => n,
        }
    }
}

impl NatsTransport {
    /// Writes what the last step queued, in order.
    async fn flush(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        for out in queue.drain(..) {
            if let Err(e) = self.client.publish(out.subject, out.payload).await {
                self.shared.metrics.publish_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if out.reply {
                    debug!(error = %e, "could not send a sync reply");
                } else {
                    debug!(error = %e, "publish failed; peers will repair from beats");
                }
            }
        }
        // Keep the allocation for the next step.
        self.queue = queue;
    }
}

/// Connects to NATS and starts replicating. The connection is retried in the
/// background forever; until it is up the node is simply cut off.
pub async fn spawn_sync<R: Replica>(
    replica: Arc<R>,
    me: Origin,
    cfg: NatsConfig,
    stop: CancellationToken,
) -> Result<SyncHandle, SyncError> {
    let (events_tx, events_rx) = mpsc::channel(64);
    let options = async_nats::ConnectOptions::new()
        .name(format!("registry-node {}", me.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // The first attempt counts as 1: connect at once, then back off.
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100 * (attempt as u64).saturating_sub(1)).min(2_000))
        })
        .request_timeout(Some(Duration::from_millis(cfg.runtime.sync.request_timeout_ms)))
        .subscription_capacity(1 << 16)
        .event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                let e = match event {
                    async_nats::Event::Connected => Event::Connected,
                    async_nats::Event::Disconnected => Event::Disconnected,
                    async_nats::Event::SlowConsumer(_) => Event::SlowConsumer,
                    other => {
                        debug!(event = %other, "NATS event");
                        return;
                    }
                };
                let _ = tx.send(e).await;
            }
        });
    let options = match url_credentials(&cfg.urls) {
        Some((user, password)) => options.user_and_password(user, password),
        None => options,
    };
    let client = options.connect(cfg.urls.clone()).await.map_err(|e| SyncError::Connect(e.to_string()))?;
    let subjects = Subjects::new(&cfg.runtime.subject_prefix, &cfg.runtime.cluster, &me.node);
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            client.subscribe(subject.clone()).await.map_err(|e| SyncError::Subscribe { subject, reason: e.to_string() })
        }
    };
    let data = subscribe(subjects.bus.clone()).await?;
    let rpc = subscribe(subjects.my_sync.clone()).await?;
    let shared = Arc::new(SyncShared::default());
    let (answers_tx, answers_rx) = mpsc::channel(256);
    let transport = NatsTransport {
        client,
        shared: shared.clone(),
        queue: Vec::new(),
        tasks: JoinSet::new(),
        answers: answers_tx,
        request_timeout: Duration::from_millis(cfg.runtime.sync.request_timeout_ms),
    };
    let tick_ms = (cfg.runtime.sync.beat_interval_ms / 4).clamp(10, 250);
    let runtime_cfg = cfg.runtime;
    let epoch = Instant::now();
    let runtime = Runtime::new(replica, me, runtime_cfg, transport, shared.clone(), 0);
    let channels = Channels { data, rpc, events: events_rx, answers: answers_rx };
    let task = tokio::spawn(run(runtime, channels, epoch, tick_ms, stop));
    Ok(SyncHandle { shared, task })
}

/// What the loop listens to besides the node and the clock.
struct Channels {
    data: async_nats::Subscriber,
    rpc: async_nats::Subscriber,
    events: mpsc::Receiver<Event>,
    answers: mpsc::Receiver<(u64, Answer)>,
}

fn message(msg: &async_nats::Message) -> Input<'_, Subject> {
    Input::Message { subject: msg.subject.as_str(), payload: &msg.payload, reply_to: msg.reply.clone() }
}

async fn run<R: Replica>(
    mut runtime: Runtime<R, NatsTransport>,
    mut ch: Channels,
    epoch: Instant,
    tick_ms: u64,
    stop: CancellationToken,
) {
    let now = || epoch.elapsed().as_millis() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let replica = runtime.replica().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(msg) = ch.data.next() => runtime.step(message(&msg), now()),
            Some(msg) = ch.rpc.next() => runtime.step(message(&msg), now()),
            Some((id, answer)) = ch.answers.recv() => runtime.step(Input::Answer { id, answer }, now()),
            Some(event) = ch.events.recv() => {
                let input = match event {
                    Event::Connected => Input::Connected,
                    Event::Disconnected => Input::Disconnected,
                    Event::SlowConsumer => Input::SlowConsumer,
                };
                runtime.step(input, now());
            }
            _ = replica.local_changed().notified() => runtime.step(Input::LocalChanged, now()),
            _ = tick.tick() => runtime.step(Input::Tick, now()),
        }
        runtime.transport_mut().flush().await;
    }
    runtime.stop(now());
    let transport = runtime.transport_mut();
    transport.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), transport.client.flush()).await;
    transport.tasks.abort_all();
    info!("replication stopped");
}
