//! The replication runtime: the glue between the protocol core, the node's
//! [`Replica`] and a bus [`Transport`]. One runtime, two transports: NATS in
//! production ([`crate::nats`]), the in-memory bus in the simulation
//! (`memory`, behind the `sim` feature).
//!
//! Why one runtime: the glue (which subject a message came on and whether its
//! origin matches it, serving ranges and pages, carrying out every [`Action`],
//! flushing local changes before a beat, the known-writers bookkeeping)
//! used to exist twice, once in the NATS task and once in the simulation, and
//! the two drifted. The simulation's tens of thousands of fault schedules
//! tested a copy of the glue, not the one that runs. Now both drive this one.
//!
//! It is sans-IO, like the core: every entry point takes `now` (milliseconds
//! on the runtime's clock) instead of reading a clock, and the transport's
//! operations are synchronous: a publish is queued (NATS writes the queue
//! after each step, in order, so a beat never overtakes the changes it
//! covers), a request's outcome comes back later as [`Input::Answer`]. So the
//! simulation stays deterministic and single-threaded while running the code
//! production runs; only the transports differ, and they only move bytes.
//!
//! Subjects, under `<prefix>.<cluster>` (see [`Subjects`]):
//! - `bus.changes.<node>`, `bus.beat.<node>`, `bus.hello.<node>`: one wildcard
//!   subscription (`bus.>`), so a node's changes and beats arrive in the order
//!   it sent them;
//! - `sync.<node>`: request/reply for range and slice pulls.
//!
//! Every bus subject names its publisher, so a NATS server can let each node's
//! user publish on its own subjects only; and a message whose origin is not
//! the node its subject names is dropped here, counted as forged, for when
//! the server does not (see SECURITY.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use registry_store::{Change, Entry, Key, Origin, SliceStats};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::core::{Action, Counters, KnownWriters, PeerView, SyncConfig, SyncCore};
use crate::cuts::{Cuts, SliceCut};
use crate::wire::{self, BeatInfo, Reply, Request, WireError};

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
    /// Live records of this node's copy of `origin`'s slice; `None` if it
    /// holds no copy. What the safety valve weighs a removal by.
    fn copy_live(&self, origin: &Origin) -> Option<u64>;
    /// Applies `origin`'s changes `first_seq..`, in order. The seq is given
    /// so a checker (the simulation) can tell that nothing is applied out of
    /// order or twice; the node needs only the changes.
    fn apply(&self, origin: &Origin, first_seq: u64, changes: Vec<Change>);
    /// How far this node holds each peer's copies ((node hash, HLC) pairs,
    /// see `SyncCore::writers_known`), given around changes applied
    /// whenever it changed.
    fn set_writers_known(&self, writers: Vec<(u64, u64)>);
    /// Replaces this node's copy of `origin`'s slice with a transferred copy
    /// of it as of `cut_seq`.
    fn replace_slice(&self, origin: &Origin, cut_seq: u64, entries: Vec<(Key, Entry)>);
    /// Puts entries into this node's copy of `origin`'s slice (a page of a
    /// transfer into a copy that held nothing).
    fn load_entries(&self, origin: &Origin, entries: Vec<(Key, Entry)>);
    /// A page-by-page transfer is complete: the copy is `origin`'s slice as of
    /// `cut_seq`. Nothing to do for the node (the pages are loaded); a
    /// checker learns where the copy now stands.
    fn slice_loaded(&self, _origin: &Origin, _cut_seq: u64) {}
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
    /// Woken whenever the own slice changed. The NATS shell waits on it and
    /// then steps the runtime with [`Input::LocalChanged`]; a synchronous
    /// driver (the simulation) steps it itself after changing the slice.
    fn local_changed(&self) -> &Notify;
}

/// How the runtime reaches the bus. Every operation is synchronous and
/// quick: what takes time (network writes, encoding large pages, waiting for
/// replies) is the transport's to do after the step or off the loop.
pub trait Transport {
    /// Where the reply to a received request goes (a NATS inbox).
    type ReplyTo;
    /// Publishes `payload` on `subject`. Publishes of one runtime must reach
    /// the bus in the order they were made: peers rely on a beat arriving
    /// after the changes it covers.
    fn publish(&mut self, subject: &str, payload: Bytes);
    /// Sends request `id` to `subject`. Its outcome comes back later, as
    /// [`Input::Answer`] with the same id (or never: the core times requests
    /// out itself).
    fn request(&mut self, id: u64, subject: &str, payload: Bytes);
    /// Sends `reply` to the requester (the transport encodes it: NATS encodes
    /// pages, the bulk of a slice transfer, off the protocol loop).
    fn respond(&mut self, reply_to: Self::ReplyTo, reply: Reply);
    /// The largest message the bus takes, in bytes (1 MiB when unknown).
    fn max_payload(&self) -> usize;
}

/// The outcome of a sync request this node sent, decoded by the transport.
#[derive(Debug)]
pub enum Answer {
    Reply(Reply),
    /// A reply came that does not decode (counted as garbage).
    Garbage(WireError),
    /// No reply: timed out, no responder, or the connection failed.
    Failed,
}

impl Answer {
    /// The answer a reply's payload makes.
    pub fn decode(payload: &[u8]) -> Self {
        match wire::decode_reply(payload) {
            Ok(reply) => Self::Reply(reply),
            Err(e) => Self::Garbage(e),
        }
    }
}

/// One thing that happened to the runtime; see [`Runtime::step`].
#[derive(Debug)]
pub enum Input<'a, R> {
    /// A message from the bus subscription (`bus.>`) or this node's request
    /// subject (`sync.<node>`); `reply_to` is set on requests.
    Message { subject: &'a str, payload: &'a [u8], reply_to: Option<R> },
    /// The outcome of request `id` (see [`Transport::request`]).
    Answer { id: u64, answer: Answer },
    /// The bus connection is up (again).
    Connected,
    /// The bus connection is lost.
    Disconnected,
    /// The transport dropped incoming messages (a slow consumer).
    SlowConsumer,
    /// Periodic work is due (a quarter of the beat interval, 10 to 250 ms).
    Tick,
    /// The own slice changed ([`Replica::local_changed`]).
    LocalChanged,
}

/// What the runtime needs besides the core's timers.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub subject_prefix: String,
    pub cluster: String,
    pub advertise_addr: String,
    pub start_unix_ms: u64,
    pub sync: SyncConfig,
    /// Entries per page of a slice transfer.
    pub page_entries: usize,
    /// Cuts of the own slice served at once (see [`Cuts`]).
    pub max_cuts: usize,
    /// A cut idle this long is dropped.
    pub cut_idle_ms: u64,
}

/// Counters of the runtime (the core's are mirrored in `core`).
#[derive(Debug, Default)]
pub struct SyncMetrics {
    /// Messages ignored: undecodable, on no subject a node uses, or forged.
    pub garbage_messages: AtomicU64,
    /// Of those, well-formed messages whose origin is not the node their
    /// subject names: another node's (or someone's) forgery, or a
    /// misconfigured node. Operators alarm on this one.
    pub forged_messages: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Errors the NATS server sent: refused logins and refused publishes
    /// or subscriptions (permissions).
    pub server_errors: AtomicU64,
    pub slow_consumer_events: AtomicU64,
    pub disconnects: AtomicU64,
    pub bus_connected: AtomicBool,
    pub valve_holding: AtomicBool,
    pub slice_pages_served: AtomicU64,
    pub ranges_served: AtomicU64,
    /// Beats whose seq was not the last own seq handed to the core, after
    /// flushing: the beat announced changes peers were not sent (or the
    /// other way round). Should stay 0; the simulation asserts it.
    pub beats_out_of_step: AtomicU64,
}

/// State shared with the rest of the node (Members API, metrics).
#[derive(Debug, Default)]
pub struct SyncShared {
    pub metrics: SyncMetrics,
    pub core: Mutex<Counters>,
    pub peers: Mutex<Vec<PeerView>>,
    pub own_seq: AtomicU64,
}

/// The subjects of one node, under `<prefix>.<cluster>`. Each subject a node
/// publishes on ends with its own node id, so that a NATS user per node can
/// be allowed exactly its own (see `deploy/nats/auth.conf`).
#[derive(Clone, Debug)]
pub struct Subjects {
    /// The one bus subscription: `bus.>`.
    pub bus: String,
    pub changes_prefix: String,
    /// This node's changes: `bus.changes.<node>`.
    pub changes: String,
    pub beat_prefix: String,
    /// This node's beats: `bus.beat.<node>`.
    pub beat: String,
    pub hello_prefix: String,
    /// This node's hellos: `bus.hello.<node>`.
    pub hello: String,
    pub sync_prefix: String,
    /// This node's request subject: `sync.<node>`.
    pub my_sync: String,
    /// Where replies to this node's requests come:
    /// `_INBOX.<prefix>.<cluster>.<node>` (the NATS client adds tokens below
    /// it), so a node's NATS user may listen to its own replies only.
    pub inbox: String,
}

impl Subjects {
    pub fn new(prefix: &str, cluster: &str, node: &str) -> Self {
        let base = format!("{prefix}.{cluster}");
        Self {
            bus: format!("{base}.bus.>"),
            changes_prefix: format!("{base}.bus.changes."),
            changes: format!("{base}.bus.changes.{node}"),
            beat_prefix: format!("{base}.bus.beat."),
            beat: format!("{base}.bus.beat.{node}"),
            hello_prefix: format!("{base}.bus.hello."),
            hello: format!("{base}.bus.hello.{node}"),
            sync_prefix: format!("{base}.sync."),
            my_sync: format!("{base}.sync.{node}"),
            inbox: format!("_INBOX.{base}.{node}"),
        }
    }

    /// What a node subscribes to: the bus, and its own request subject.
    pub fn subscriptions(&self) -> [&str; 2] {
        [&self.bus, &self.my_sync]
    }
}

/// The node a subject under `prefix` names, if it is one (a single token:
/// `bus.beat.a.b` names no node).
fn named_node<'s>(subject: &'s str, prefix: &str) -> Option<&'s str> {
    subject.strip_prefix(prefix).filter(|node| wire::is_node_token(node))
}

/// The protocol core of one node with everything around it; see the module
/// docs.
pub struct Runtime<R: Replica, T: Transport> {
    replica: Arc<R>,
    transport: T,
    core: SyncCore,
    cuts: Cuts,
    subjects: Subjects,
    cfg: RuntimeConfig,
    shared: Arc<SyncShared>,
    /// When each slice transfer started (ms on the runtime's clock), for the
    /// log line when it ends.
    transfers: HashMap<Origin, u64>,
    /// Stopping: the next beat is this node's farewell.
    farewell: bool,
    /// How far each writer is known, as given to the replica.
    known: KnownWriters,
}

impl<R: Replica, T: Transport> std::fmt::Debug for Runtime<R, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("me", self.core.me()).field("farewell", &self.farewell).finish_non_exhaustive()
    }
}

impl<R: Replica, T: Transport> Runtime<R, T> {
    /// A runtime for node `me`, cut off from the bus until the transport
    /// says [`Input::Connected`].
    pub fn new(
        replica: Arc<R>,
        me: Origin,
        cfg: RuntimeConfig,
        transport: T,
        shared: Arc<SyncShared>,
        now: u64,
    ) -> Self {
        let mut core = SyncCore::new(me.clone(), cfg.sync.clone(), now);
        // Discovery and liveness wait for the bus; until then nothing is heard.
        core.on_bus(false, now);
        Self {
            replica,
            transport,
            core,
            cuts: Cuts::new(cfg.page_entries, cfg.max_cuts, cfg.cut_idle_ms),
            subjects: Subjects::new(&cfg.subject_prefix, &cfg.cluster, &me.node),
            cfg,
            shared,
            transfers: HashMap::new(),
            farewell: false,
            known: KnownWriters::default(),
        }
    }

    pub fn core(&self) -> &SyncCore {
        &self.core
    }

    pub fn replica(&self) -> &Arc<R> {
        &self.replica
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn shared(&self) -> &Arc<SyncShared> {
        &self.shared
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Handles one input and carries out what the core asks, in order, with
    /// how far each writer is known given to the replica around it (lower
    /// marks before, higher after: see [`KnownWriters`]); then publishes the own
    /// changes made meanwhile.
    pub fn step(&mut self, input: Input<'_, T::ReplyTo>, now: u64) {
        let actions = match input {
            Input::Message { subject, payload, reply_to } => self.on_message(subject, payload, reply_to, now),
            Input::Answer { id, answer } => {
                let reply = match answer {
                    Answer::Reply(r) => Some(r),
                    Answer::Failed => None,
                    Answer::Garbage(e) => {
                        self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
                        debug!(error = %e, "undecodable sync reply");
                        None
                    }
                };
                self.core.on_reply(id, reply, now)
            }
            // The log lines name NATS, the transport nodes run on.
            Input::Connected => {
                info!("connected to NATS");
                self.shared.metrics.bus_connected.store(true, Ordering::Relaxed);
                self.replica.set_bus_connected(true);
                self.core.on_bus(true, now)
            }
            Input::Disconnected => {
                warn!("lost the NATS connection: serving what this node has, orphaning no one");
                self.shared.metrics.disconnects.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.bus_connected.store(false, Ordering::Relaxed);
                self.replica.set_bus_connected(false);
                self.core.on_bus(false, now)
            }
            Input::SlowConsumer => {
                // Messages were dropped by the client; beats will reveal the gaps.
                self.shared.metrics.slow_consumer_events.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
            Input::Tick => {
                let live = self.replica.own_live();
                let replica = &self.replica;
                let actions = self.core.on_tick_holding(now, live, &|origin| replica.copy_live(origin));
                self.publish_state(now);
                actions
            }
            // Nothing but the flush below.
            Input::LocalChanged => Vec::new(),
        };
        let known = self.core.writers_known();
        if let Some(lower) = self.known.before(&known) {
            self.replica.set_writers_known(lower);
        }
        self.execute(actions, now);
        if let Some(higher) = self.known.after(known) {
            self.replica.set_writers_known(higher);
        }
        self.flush_local(now);
    }

    /// Last words: whatever the node removed while stopping goes out, then a
    /// farewell beat, so peers need not wait out the dead time to know.
    pub fn stop(&mut self, now: u64) {
        self.flush_local(now);
        self.farewell = true;
        self.execute(vec![Action::PublishBeat], now);
    }

    fn garbage(&self, what: &str, subject: &str, e: &WireError) {
        self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
        debug!(subject, error = %e, "ignored invalid {what}");
    }

    /// A well-formed message on another node's subject than its origin's:
    /// forged, or sent by a node configured wrong. Dropped, and counted both
    /// as garbage and as forged; logged at the 1st, 2nd, 4th, 8th... one, so
    /// a flood of them cannot flood the log.
    fn forged(&self, what: &str, subject: &str, origin: &Origin) {
        let metrics = &self.shared.metrics;
        metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
        let n = metrics.forged_messages.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(
                subject, %origin, forged = n,
                "dropped a {what} whose origin is not the node its subject names (forged; check who may publish on the bus)"
            );
        }
    }

    fn on_message(&mut self, subject: &str, payload: &[u8], reply_to: Option<T::ReplyTo>, now: u64) -> Vec<Action> {
        // The subject names the publisher; a message claiming another origin is forged.
        if subject == self.subjects.my_sync {
            self.serve(subject, payload, reply_to, now);
            Vec::new()
        } else if let Some(node) = named_node(subject, &self.subjects.beat_prefix) {
            match wire::decode_beat(payload) {
                Ok((origin, beat)) if *origin.node == *node => {
                    let copy = self.replica.copy_stats(&origin);
                    self.core.on_beat(origin, beat, copy, now)
                }
                Ok((origin, _)) => {
                    self.forged("beat", subject, &origin);
                    Vec::new()
                }
                Err(e) => {
                    self.garbage("beat", subject, &e);
                    Vec::new()
                }
            }
        } else if let Some(node) = named_node(subject, &self.subjects.hello_prefix) {
            match wire::decode_hello(payload) {
                Ok(origin) if *origin.node == *node => self.core.on_hello(origin, now),
                Ok(origin) => {
                    self.forged("hello", subject, &origin);
                    Vec::new()
                }
                Err(e) => {
                    self.garbage("hello", subject, &e);
                    Vec::new()
                }
            }
        } else if let Some(node) = named_node(subject, &self.subjects.changes_prefix) {
            match wire::decode_batch(payload) {
                Ok(batch) if *batch.origin.node == *node => self.core.on_batch(batch, now),
                Ok(batch) => {
                    self.forged("change batch", subject, &batch.origin);
                    Vec::new()
                }
                Err(e) => {
                    self.garbage("change batch", subject, &e);
                    Vec::new()
                }
            }
        } else {
            // No subject a node publishes on (or one of an older version's
            // shared `bus.beat` and `bus.hello`).
            self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
            debug!(subject, "ignored a message on an unknown subject");
            Vec::new()
        }
    }

    /// Answers a sync request addressed to this node.
    fn serve(&mut self, subject: &str, payload: &[u8], reply_to: Option<T::ReplyTo>, now: u64) {
        let Some(reply_to) = reply_to else {
            self.shared.metrics.garbage_messages.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let reply = match wire::decode_request(payload) {
            Err(e) => {
                self.garbage("sync request", subject, &e);
                Reply::Refused { reason: format!("invalid request: {e}"), pull_slice: false }
            }
            Ok((_, incarnation, _)) if incarnation != self.core.me().incarnation => {
                Reply::Refused { reason: "no longer that incarnation".into(), pull_slice: false }
            }
            Ok((_, incarnation, Request::Range { from_seq, to_seq })) => {
                // Hand over anything not yet published so the ring is current
                // (the flush at the end of the step publishes it).
                let changes = self.replica.take_local_changes();
                self.core.local_changes(changes);
                self.shared.metrics.ranges_served.fetch_add(1, Ordering::Relaxed);
                self.core.serve_range(incarnation, from_seq, to_seq)
            }
            Ok((_, _, Request::Page { cut_id, offset })) => {
                self.shared.metrics.slice_pages_served.fetch_add(1, Ordering::Relaxed);
                // Half the bus's largest message: room for the framing and
                // an estimate's error.
                self.cuts.set_page_bytes(self.transport.max_payload() / 2);
                let replica = &self.replica;
                self.cuts.serve(cut_id, offset, now, || replica.own_cut())
            }
        };
        self.transport.respond(reply_to, reply);
    }

    /// Publishes own changes not published yet: those made since the last
    /// step, and any the core holds (handed over while serving a range).
    fn flush_local(&mut self, now: u64) {
        let changes = self.replica.take_local_changes();
        self.core.local_changes(changes);
        let publishes = self.core.take_publishes();
        self.execute(publishes, now);
    }

    fn publish_changes(&mut self, first_seq: u64, changes: &[Change]) {
        let msg = wire::batch_to_wire(self.core.me(), first_seq, changes);
        self.transport.publish(&self.subjects.changes, Bytes::from(wire::encode(&msg)));
    }

    /// Publishes a beat announcing the own slice as of `stats` (the farewell,
    /// once the node is stopping).
    fn publish_beat(&mut self, stats: &SliceStats) {
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
            hlc: Some(stats.hlc),
            members: self.core.members_digest(),
            sessions: self.replica.session_count(),
            subscriptions: self.replica.subscription_count(),
            farewell,
        };
        let msg = wire::beat_to_wire(self.core.me(), &beat);
        self.transport.publish(&self.subjects.beat, Bytes::from(wire::encode(&msg)));
    }

    fn execute(&mut self, actions: Vec<Action>, now: u64) {
        for action in actions {
            match action {
                Action::PublishChanges { first_seq, changes } => self.publish_changes(first_seq, &changes),
                Action::PublishBeat => {
                    // The changes the beat covers go out first, here and now:
                    // one publisher's messages keep their order on the bus, so
                    // peers have them before the beat that announces them.
                    let (changes, stats) = self.replica.beat_snapshot();
                    self.core.local_changes(changes);
                    for publish in self.core.take_publishes() {
                        if let Action::PublishChanges { first_seq, changes } = publish {
                            self.publish_changes(first_seq, &changes);
                        }
                    }
                    if stats.seq != self.core.seq() {
                        // The snapshot and the changes handed over disagree: a
                        // bug upstream. Peers repair from the beat; count it.
                        self.shared.metrics.beats_out_of_step.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            beat_seq = stats.seq,
                            core_seq = self.core.seq(),
                            "beat out of step with the published changes"
                        );
                    }
                    self.publish_beat(&stats);
                }
                Action::PublishHello => {
                    let msg = wire::hello_to_wire(self.core.me());
                    self.transport.publish(&self.subjects.hello, Bytes::from(wire::encode(&msg)));
                }
                Action::Request { id, to, request } => {
                    if matches!(request, Request::Page { offset: 0, .. }) {
                        self.transfers.insert(to.clone(), now);
                    }
                    let subject = format!("{}{}", self.subjects.sync_prefix, to.node);
                    let payload =
                        Bytes::from(wire::encode(&wire::request_to_wire(self.core.me(), to.incarnation, &request)));
                    self.transport.request(id, &subject, payload);
                }
                Action::Apply { origin, first_seq, changes } => self.replica.apply(&origin, first_seq, changes),
                Action::ReplaceSlice { origin, cut_seq, entries } => {
                    let n = entries.len();
                    // Only for the log line: nothing depends on it.
                    let applying = std::time::Instant::now();
                    self.replica.replace_slice(&origin, cut_seq, entries);
                    let transfer_ms = self.transfers.remove(&origin).map(|t| now.saturating_sub(t));
                    info!(
                        %origin, cut_seq, entries = n, transfer_ms, apply_ms = applying.elapsed().as_millis() as u64,
                        "loaded a peer's slice"
                    );
                }
                Action::LoadEntries { origin, entries } => self.replica.load_entries(&origin, entries),
                Action::SliceLoaded { origin, cut_seq, entries } => {
                    self.replica.slice_loaded(&origin, cut_seq);
                    let transfer_ms = self.transfers.remove(&origin).map(|t| now.saturating_sub(t));
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
