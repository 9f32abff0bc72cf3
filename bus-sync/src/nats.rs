//! The NATS transport: one task owns the connection, the subscriptions and the
//! protocol core, and carries out the core's actions against the node's
//! [`Replica`]. Publish errors, reconnect gaps and slow-consumer drops are all
//! possible loss; the protocol repairs them from beats, so here they are only
//! counted.
//!
//! Subjects, under `<prefix>.<cluster>`:
//! - `bus.changes.<node>`, `bus.beat`, `bus.hello`: one wildcard subscription
//!   (`bus.>`), so a node's changes and beats arrive in the order it sent them;
//! - `sync.<node>`: request/reply for range and slice pulls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use registry_store::{Change, Entry, Key, Origin, SliceStats};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::core::{Action, Counters, PeerView, SyncConfig, SyncCore, UnsettledWriters};
use crate::cuts::{Cuts, SliceCut};
use crate::wire::{self, BeatInfo, Reply, Request};

/// What the node offers the replication runtime. Every method is quick and
/// never blocks on I/O.
pub trait Replica: Send + Sync + 'static {
    /// Own-slice changes made since the last call, in seq order.
    fn take_local_changes(&self) -> Vec<(u64, Change)>;
    /// Same, plus the own slice's stats as of the last of those changes, taken
    /// together so a beat never announces a seq before its changes.
    fn beat_snapshot(&self) -> (Vec<(u64, Change)>, SliceStats);
    /// The own slice, its seq and digest, taken atomically.
    fn own_cut(&self) -> SliceCut;
    /// (digest, entries) of this node's copy of `origin`'s slice; (0, 0) if none.
    fn copy_stats(&self, origin: &Origin) -> (u64, u64);
    fn apply(&self, origin: &Origin, changes: Vec<Change>);
    /// The peers whose copies may still be on their way (node hashes, see
    /// `SyncCore::unsettled_writers`), given before changes are applied
    /// whenever it changed.
    fn set_unsettled_writers(&self, writers: Vec<u64>);
    fn replace_slice(&self, origin: &Origin, entries: Vec<(Key, Entry)>);
    /// Puts entries into this node's copy of `origin`'s slice (a page of a
    /// transfer into a copy that held nothing).
    fn load_entries(&self, origin: &Origin, entries: Vec<(Key, Entry)>);
    fn drop_origin(&self, origin: &Origin);
    fn set_orphaned(&self, origin: &Origin, orphaned: bool);
    fn own_live(&self) -> u64;
    /// Provider sessions this node holds, announced in beats.
    fn session_count(&self) -> u64 {
        0
    }
    /// Subscribe streams this node holds, announced in beats.
    fn subscription_count(&self) -> u64 {
        0
    }
    /// The node is shutting down (announced in beats, so peers stop sending
    /// load its way).
    fn leaving(&self) -> bool {
        false
    }
    fn set_ready(&self, timed_out: bool);
    fn set_bus_connected(&self, connected: bool);
    /// Woken whenever the own slice changed.
    fn local_changed(&self) -> &Notify;
}

/// How to reach NATS and what to call things there.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    pub subject_prefix: String,
    pub cluster: String,
    pub advertise_addr: String,
    pub start_unix_ms: u64,
    pub sync: SyncConfig,
    /// Entries per page of a slice transfer.
    pub page_entries: usize,
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("NATS: {0}")]
    Connect(String),
    #[error("NATS subscribe to {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
}

/// Counters of the runtime (the core's are mirrored in `core`).
#[derive(Debug, Default)]
pub struct SyncMetrics {
    pub garbage_messages: AtomicU64,
    pub publish_errors: AtomicU64,
    pub slow_consumer_events: AtomicU64,
    pub disconnects: AtomicU64,
    pub bus_connected: AtomicBool,
    pub valve_holding: AtomicBool,
    pub slice_pages_served: AtomicU64,
    pub ranges_served: AtomicU64,
}

/// State shared with the rest of the node (Members API, metrics).
#[derive(Debug, Default)]
pub struct SyncShared {
    pub metrics: SyncMetrics,
    pub core: Mutex<Counters>,
    pub peers: Mutex<Vec<PeerView>>,
    pub own_seq: AtomicU64,
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

struct Subjects {
    bus: String,
    changes_prefix: String,
    changes: String,
    beat: String,
    hello: String,
    sync_prefix: String,
    my_sync: String,
}

impl Subjects {
    fn new(prefix: &str, cluster: &str, node: &str) -> Self {
        let base = format!("{prefix}.{cluster}");
        Self {
            bus: format!("{base}.bus.>"),
            changes_prefix: format!("{base}.bus.changes."),
            changes: format!("{base}.bus.changes.{node}"),
            beat: format!("{base}.bus.beat"),
            hello: format!("{base}.bus.hello"),
            sync_prefix: format!("{base}.sync."),
            my_sync: format!("{base}.sync.{node}"),
        }
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

/// The outcome of a sync request, decoded by the task that sent it.
enum Answer {
    Reply(Reply),
    Garbage(wire::WireError),
    Failed,
}

enum Event {
    Connected,
    Disconnected,
    SlowConsumer,
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
        .request_timeout(Some(Duration::from_millis(cfg.sync.request_timeout_ms)))
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
    let subjects = Subjects::new(&cfg.subject_prefix, &cfg.cluster, &me.node);
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            client.subscribe(subject.clone()).await.map_err(|e| SyncError::Subscribe { subject, reason: e.to_string() })
        }
    };
    let data = subscribe(subjects.bus.clone()).await?;
    let rpc = subscribe(subjects.my_sync.clone()).await?;
    let shared = Arc::new(SyncShared::default());
    let epoch = Instant::now();
    let mut core = SyncCore::new(me.clone(), cfg.sync.clone(), 0);
    // Until NATS says it is connected, this node is cut off.
    core.on_bus(false, 0);
    let runtime = Runtime {
        replica,
        client,
        core,
        cuts: Cuts::new(cfg.page_entries, 4, 30_000),
        subjects,
        cfg,
        shared: shared.clone(),
        epoch,
        requests: JoinSet::new(),
        transfers: std::collections::HashMap::new(),
        farewell: false,
        unsettled: UnsettledWriters::default(),
    };
    let task = tokio::spawn(runtime.run(data, rpc, events_rx, stop));
    Ok(SyncHandle { shared, task })
}

struct Runtime<R: Replica> {
    replica: Arc<R>,
    client: async_nats::Client,
    core: SyncCore,
    cuts: Cuts,
    subjects: Subjects,
    cfg: NatsConfig,
    shared: Arc<SyncShared>,
    epoch: Instant,
    requests: JoinSet<()>,
    /// When each slice transfer started, for the log line when it ends.
    transfers: std::collections::HashMap<Origin, Instant>,
    /// Stopping: the next beat is this node's farewell.
    farewell: bool,
    /// The unsettled writers given to the replica.
    unsettled: UnsettledWriters,
}

impl<R: Replica> Runtime<R> {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        mut data: async_nats::Subscriber,
        mut rpc: async_nats::Subscriber,
        mut events: mpsc::Receiver<Event>,
        stop: CancellationToken,
    ) {
        let (reply_tx, mut replies) = mpsc::channel::<(u64, Answer)>(256);
        let tick_ms = (self.cfg.sync.beat_interval_ms / 4).clamp(10, 250);
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let replica = self.replica.clone();
        loop {
            let actions = tokio::select! {
                _ = stop.cancelled() => break,
                Some(msg) = data.next() => self.on_data(msg),
                Some(msg) = rpc.next() => {
                    self.serve(msg).await;
                    Vec::new()
                }
                Some((id, answer)) = replies.recv() => {
                    let reply = match answer {
                        Answer::Reply(r) => Some(r),
                        Answer::Failed => None,
                        Answer::Garbage(e) => {
                            self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
                            debug!(error = %e, "undecodable sync reply");
                            None
                        }
                    };
                    let now = self.now();
                    self.core.on_reply(id, reply, now)
                }
                Some(event) = events.recv() => self.on_event(event),
                _ = replica.local_changed().notified() => Vec::new(),
                _ = tick.tick() => {
                    let now = self.now();
                    let live = self.replica.own_live();
                    let actions = self.core.on_tick(now, live);
                    self.publish_state(now);
                    actions
                }
            };
            let unsettled = self.core.unsettled_writers();
            if let Some(widened) = self.unsettled.before(&unsettled) {
                self.replica.set_unsettled_writers(widened);
            }
            self.execute(actions, &reply_tx).await;
            if let Some(now) = self.unsettled.after(unsettled) {
                self.replica.set_unsettled_writers(now);
            }
            self.flush_local(&reply_tx).await;
        }
        // Last words: whatever the node removed while stopping goes out, then
        // a farewell beat, so peers need not wait out the dead time to know.
        self.flush_local(&reply_tx).await;
        self.farewell = true;
        self.execute(vec![Action::PublishBeat], &reply_tx).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        self.requests.abort_all();
        info!("replication stopped");
    }

    fn on_event(&mut self, event: Event) -> Vec<Action> {
        let now = self.now();
        match event {
            Event::Connected => {
                info!("connected to NATS");
                self.shared.metrics.bus_connected.store(true, Ordering::Relaxed);
                self.replica.set_bus_connected(true);
                self.core.on_bus(true, now)
            }
            Event::Disconnected => {
                warn!("lost the NATS connection: serving what this node has, orphaning no one");
                self.shared.metrics.disconnects.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.bus_connected.store(false, Ordering::Relaxed);
                self.replica.set_bus_connected(false);
                self.core.on_bus(false, now)
            }
            Event::SlowConsumer => {
                // Messages were dropped by the client; beats will reveal the gaps.
                self.shared.metrics.slow_consumer_events.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
        }
    }

    fn garbage(&self, what: &str, subject: &str, e: &wire::WireError) {
        self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
        debug!(subject, error = %e, "ignored invalid {what}");
    }

    fn on_data(&mut self, msg: async_nats::Message) -> Vec<Action> {
        let now = self.now();
        let subject = msg.subject.as_str();
        if subject == self.subjects.beat {
            match wire::decode_beat(&msg.payload) {
                Ok((origin, beat)) => {
                    let copy = self.replica.copy_stats(&origin);
                    self.core.on_beat(origin, beat, copy, now)
                }
                Err(e) => {
                    self.garbage("beat", subject, &e);
                    Vec::new()
                }
            }
        } else if subject == self.subjects.hello {
            match wire::decode_hello(&msg.payload) {
                Ok(origin) => self.core.on_hello(origin, now),
                Err(e) => {
                    self.garbage("hello", subject, &e);
                    Vec::new()
                }
            }
        } else if let Some(node) = subject.strip_prefix(&self.subjects.changes_prefix) {
            match wire::decode_batch(&msg.payload) {
                // The subject names the publisher; a batch claiming another origin is forged.
                Ok(batch) if *batch.origin.node == *node => self.core.on_batch(batch, now),
                Ok(_) => {
                    self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
                    debug!(subject, "ignored a batch whose origin does not match its subject");
                    Vec::new()
                }
                Err(e) => {
                    self.garbage("change batch", subject, &e);
                    Vec::new()
                }
            }
        } else {
            self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        }
    }

    /// Answers a sync request addressed to this node.
    async fn serve(&mut self, msg: async_nats::Message) {
        let Some(reply_to) = msg.reply.clone() else {
            self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let reply = match wire::decode_request(&msg.payload) {
            Err(e) => {
                self.garbage("sync request", msg.subject.as_str(), &e);
                Reply::Refused { reason: format!("invalid request: {e}"), pull_slice: false }
            }
            Ok((_, incarnation, _)) if incarnation != self.core.me().incarnation => {
                Reply::Refused { reason: "no longer that incarnation".into(), pull_slice: false }
            }
            Ok((_, incarnation, Request::Range { from_seq, to_seq })) => {
                // Hand over anything not yet published so the ring is current.
                let changes = self.replica.take_local_changes();
                self.core.local_changes(changes);
                self.shared.metrics.ranges_served.fetch_add(1, Ordering::Relaxed);
                self.core.serve_range(incarnation, from_seq, to_seq)
            }
            Ok((_, _, Request::Page { cut_id, offset })) => {
                let now = self.now();
                let replica = self.replica.clone();
                self.shared.metrics.slice_pages_served.fetch_add(1, Ordering::Relaxed);
                // Half the server's largest message: room for the framing and
                // an estimate's error (1 MiB until the server has said).
                let max_payload = match self.client.server_info().max_payload {
                    0 => 1 << 20,
                    n => n,
                };
                self.cuts.set_page_bytes(max_payload / 2);
                self.cuts.serve(cut_id, offset, now, || replica.own_cut())
            }
        };
        let is_page = matches!(reply, Reply::Page(_));
        let client = self.client.clone();
        let shared = self.shared.clone();
        let send = async move {
            let payload = Bytes::from(wire::encode(&wire::reply_to_wire(&reply)));
            if let Err(e) = client.publish(reply_to, payload).await {
                shared.metrics.publish_errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "could not send a sync reply");
            }
        };
        if is_page {
            // Encoding a page is the bulk of serving a slice: off the protocol loop.
            self.requests.spawn(send);
        } else {
            send.await;
        }
    }

    /// Publishes own changes made since the last round.
    async fn flush_local(&mut self, reply_tx: &mpsc::Sender<(u64, Answer)>) {
        let changes = self.replica.take_local_changes();
        if changes.is_empty() {
            return;
        }
        self.core.local_changes(changes);
        let actions = self.core.take_publishes();
        self.execute(actions, reply_tx).await;
    }

    async fn publish(&self, subject: String, payload: Vec<u8>) {
        if let Err(e) = self.client.publish(subject, Bytes::from(payload)).await {
            self.shared.metrics.publish_errors.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, "publish failed; peers will repair from beats");
        }
    }

    /// Publishes a beat announcing the own slice as of `stats` (the farewell,
    /// once the node is stopping).
    async fn publish_beat(&self, stats: &SliceStats) {
        let farewell = self.farewell;
        let beat = BeatInfo {
            seq: stats.seq,
            digest: stats.digest,
            entries: stats.entries,
            live: stats.live,
            ready: self.core.is_ready(),
            advertise_addr: self.cfg.advertise_addr.clone(),
            start_unix_ms: self.cfg.start_unix_ms,
            leaving: farewell || self.replica.leaving(),
            members: self.core.members_digest(),
            sessions: self.replica.session_count(),
            subscriptions: self.replica.subscription_count(),
            farewell,
        };
        let msg = wire::beat_to_wire(self.core.me(), &beat);
        self.publish(self.subjects.beat.clone(), wire::encode(&msg)).await;
    }

    async fn execute(&mut self, actions: Vec<Action>, reply_tx: &mpsc::Sender<(u64, Answer)>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::PublishChanges { first_seq, changes } => {
                    let msg = wire::batch_to_wire(self.core.me(), first_seq, &changes);
                    self.publish(self.subjects.changes.clone(), wire::encode(&msg)).await;
                }
                Action::PublishBeat => {
                    let (changes, stats) = self.replica.beat_snapshot();
                    if !changes.is_empty() {
                        self.core.local_changes(changes);
                        queue.extend(self.core.take_publishes());
                        // Publish those first, then the beat that covers them.
                        queue.push_back(Action::PublishBeat);
                        continue;
                    }
                    self.publish_beat(&stats).await;
                }
                Action::PublishHello => {
                    let msg = wire::hello_to_wire(self.core.me());
                    self.publish(self.subjects.hello.clone(), wire::encode(&msg)).await;
                }
                Action::Request { id, to, request } => {
                    if matches!(request, Request::Page { offset: 0, .. }) {
                        self.transfers.insert(to.clone(), Instant::now());
                    }
                    let subject = format!("{}{}", self.subjects.sync_prefix, to.node);
                    let payload =
                        Bytes::from(wire::encode(&wire::request_to_wire(self.core.me(), to.incarnation, &request)));
                    let client = self.client.clone();
                    let tx = reply_tx.clone();
                    let timeout = Duration::from_millis(self.cfg.sync.request_timeout_ms);
                    self.requests.spawn(async move {
                        // Decoded here, on whichever worker runs this task, so a
                        // large page does not hold up the protocol loop.
                        let answer = match tokio::time::timeout(timeout, client.request(subject, payload)).await {
                            Ok(Ok(msg)) => match wire::decode_reply(&msg.payload) {
                                Ok(reply) => Answer::Reply(reply),
                                Err(e) => Answer::Garbage(e),
                            },
                            _ => Answer::Failed,
                        };
                        let _ = tx.send((id, answer)).await;
                    });
                    // Reap finished request tasks so the set stays small.
                    while self.requests.try_join_next().is_some() {}
                }
                Action::Apply { origin, changes, .. } => self.replica.apply(&origin, changes),
                Action::ReplaceSlice { origin, cut_seq, entries } => {
                    let n = entries.len();
                    let applying = Instant::now();
                    self.replica.replace_slice(&origin, entries);
                    let transfer_ms = self.transfers.remove(&origin).map(|t| t.elapsed().as_millis() as u64);
                    info!(
                        %origin, cut_seq, entries = n, transfer_ms, apply_ms = applying.elapsed().as_millis() as u64,
                        "loaded a peer's slice"
                    );
                }
                Action::LoadEntries { origin, entries } => self.replica.load_entries(&origin, entries),
                Action::SliceLoaded { origin, cut_seq, entries } => {
                    let transfer_ms = self.transfers.remove(&origin).map(|t| t.elapsed().as_millis() as u64);
                    info!(%origin, cut_seq, entries, transfer_ms, "loaded a peer's slice page by page");
                }
                Action::DropOrigin { origin } => {
                    info!(%origin, "dropped the slice of a departed node");
                    self.replica.drop_origin(&origin);
                }
                Action::SetOrphaned { origin, orphaned } => {
                    if orphaned && self.core.has_left(&origin) {
                        info!(%origin, "peer left: its instances not yet moved are kept, flagged, for the grace period");
                    } else if orphaned {
                        warn!(%origin, "peer silent: its instances are orphaned (kept, flagged) for the grace period");
                    } else {
                        info!(%origin, "peer is back");
                    }
                    self.replica.set_orphaned(&origin, orphaned);
                }
                Action::Ready { timed_out } => {
                    if timed_out {
                        error!(
                            timeout_ms = self.cfg.sync.ready_timeout_ms,
                            "READY BEFORE CATCHING UP: could not load every peer's slice in time; serving what is loaded"
                        );
                    } else {
                        info!("loaded the cluster state: ready");
                    }
                    self.replica.set_ready(timed_out);
                }
            }
        }
    }

    /// Mirrors the core's view for the Members API and metrics.
    fn publish_state(&self, now: u64) {
        *self.shared.core.lock() = self.core.counters().clone();
        *self.shared.peers.lock() = self.core.peers(now);
        self.shared.own_seq.store(self.core.seq(), Ordering::Relaxed);
        self.shared.metrics.valve_holding.store(self.core.valve_holding(), Ordering::Relaxed);
    }
}
