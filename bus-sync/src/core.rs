//! The protocol core: a pure state machine. Inputs are local changes, decoded bus
//! messages, replies to its requests, bus connection changes and clock ticks (as
//! milliseconds of a monotonic clock); outputs are [`Action`]s for the runtime to
//! carry out, in order. No I/O, no clock reads, no randomness.
//!
//! Per peer origin it keeps the last applied sequence number and applies changes
//! strictly in order: `seq == applied + 1` applies, `seq <= applied` is a
//! duplicate, anything further is a gap, repaired by pulling the missing range
//! from the origin's ring of recent changes or, failing that, its whole slice.
//! Beats carry the origin's last seq and slice digest: a seq ahead of what was
//! applied means a lost tail (pull), an equal seq with another digest means a
//! diverged copy (pull the slice, counted: it should never happen).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use prost::Message as _;
use registry_store::version::stable_hash;
use registry_store::{Change, Entry, Key, Origin};

use crate::wire::{Batch, BeatInfo, Page, Reply, Request, change_to_wire};

/// Timers and bounds of the protocol. All durations in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncConfig {
    pub beat_interval_ms: u64,
    /// A peer silent this long is suspect.
    pub suspect_after_ms: u64,
    /// A peer silent this long is orphaned: its records stay visible, flagged.
    pub dead_after_ms: u64,
    /// How long orphaned records stay before they are removed.
    pub orphan_grace_ms: u64,
    /// How long a starting node listens for peers before it may turn ready.
    pub discovery_ms: u64,
    /// A starting node turns ready after this even if not caught up (logged loudly).
    pub ready_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Wait before retrying a failed pull.
    pub retry_ms: u64,
    /// Recent own changes kept to answer range pulls.
    pub ring_capacity: usize,
    /// Largest encoded size of a change batch (NATS max_payload is 1 MiB by default).
    pub max_batch_bytes: usize,
    /// Most changes in one range reply.
    pub max_range_changes: usize,
    /// Changes buffered per peer while a gap is being repaired.
    pub buffer_limit: usize,
    /// Pages of a slice transfer requested ahead, so the origin encodes, the
    /// bus carries and this node loads different pages at the same time.
    pub pages_in_flight: usize,
    /// Largest share of all instances that orphan removal may take at once.
    pub safety_valve_share: f64,
    /// Below this many instances in all, the safety valve never holds.
    pub safety_valve_min: u64,
    /// Most entries a peer's slice may claim in a transfer. A claim above it
    /// is refused before anything is loaded: a forged or broken peer cannot
    /// make this node pull and hold pages without end.
    pub max_slice_entries: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            beat_interval_ms: 1_000,
            suspect_after_ms: 3_000,
            dead_after_ms: 6_000,
            orphan_grace_ms: 10_000,
            discovery_ms: 1_000,
            ready_timeout_ms: 60_000,
            request_timeout_ms: 5_000,
            retry_ms: 1_000,
            ring_capacity: 100_000,
            max_batch_bytes: 256 * 1024,
            max_range_changes: 4_096,
            buffer_limit: 100_000,
            pages_in_flight: 4,
            safety_valve_share: 0.5,
            safety_valve_min: 10,
            max_slice_entries: 10_000_000,
        }
    }
}

/// What the runtime must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish own changes `first_seq..` on `changes.<me>`.
    PublishChanges {
        first_seq: u64,
        changes: Vec<Change>,
    },
    /// Publish a beat built from the own slice's current stats.
    PublishBeat,
    PublishHello,
    /// Send a sync request to `to`'s node; answer with [`SyncCore::on_reply`].
    Request {
        id: u64,
        to: Origin,
        request: Request,
    },
    /// Apply changes `first_seq..` of `origin`'s slice, in order.
    Apply {
        origin: Origin,
        first_seq: u64,
        changes: Vec<Change>,
    },
    /// Replace `origin`'s slice with a transferred copy of it as of `cut_seq`.
    ReplaceSlice {
        origin: Origin,
        cut_seq: u64,
        entries: Vec<(Key, Entry)>,
    },
    /// Put entries of a transfer into this node's (so far empty) copy of
    /// `origin`'s slice, page by page as they arrive.
    LoadEntries {
        origin: Origin,
        entries: Vec<(Key, Entry)>,
    },
    /// A page-by-page transfer is complete: the copy is `origin`'s slice as of
    /// `cut_seq`.
    SliceLoaded {
        origin: Origin,
        cut_seq: u64,
        entries: u64,
    },
    /// Remove `origin`'s slice.
    DropOrigin {
        origin: Origin,
    },
    /// Flag (or unflag) `origin`'s records as orphaned in what clients see.
    SetOrphaned {
        origin: Origin,
        orphaned: bool,
    },
    /// The node may serve reads now.
    Ready {
        timed_out: bool,
    },
}

/// Liveness of a peer as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Live,
    Suspect,
    Orphaned,
}

/// Protocol counters; the runtime exports them as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub batches_published: u64,
    pub changes_published: u64,
    pub batches_applied: u64,
    pub changes_applied: u64,
    pub duplicates_dropped: u64,
    pub gaps: u64,
    pub range_pulls: u64,
    pub slice_pulls: u64,
    pub digest_mismatches: u64,
    pub stale_dropped: u64,
    pub invalid: u64,
    pub buffer_overflows: u64,
    pub requests_failed: u64,
    pub origins_dropped: u64,
    pub safety_valve_holds: u64,
}

/// One peer as the Members API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerView {
    pub origin: Origin,
    pub state: PeerState,
    pub last_heard_age_ms: u64,
    pub beat: Option<BeatInfo>,
    pub applied: u64,
    pub loaded: bool,
    pub syncing: bool,
    /// An older incarnation kept only until its orphan grace ends.
    pub retired: bool,
    /// Said farewell: stopped on purpose. Its records are orphaned (kept,
    /// flagged) until the orphan grace ends, as after a crash, but from the
    /// moment it left rather than after the dead time.
    pub left: bool,
}

#[derive(Debug)]
enum Pull {
    Idle,
    Range { id: u64 },
    Slice { transfer: Transfer },
}

/// A slice transfer in progress. Pages are independent (a cut holds each key
/// once), so they may arrive and be loaded in any order; completeness is checked
/// by count and by the cut's digest.
#[derive(Debug, Default)]
struct Transfer {
    /// 0 until the first page names the cut.
    cut_id: u64,
    cut_seq: u64,
    total: u64,
    /// Entries per page at the origin (known from the first page).
    page_len: u64,
    next_offset: u64,
    /// Page requests not answered yet: request id → offset.
    outstanding: BTreeMap<u64, u64>,
    received: u64,
    /// XOR of the received entries' digests, checked against the cut's.
    digest: u64,
    /// Entries held back to replace an existing copy as a whole at the end.
    /// `None`: this node holds nothing of the origin, so pages are loaded as
    /// they arrive, overlapping the work of both nodes.
    staged: Option<Vec<(Key, Entry)>>,
}

#[derive(Debug)]
struct Peer {
    origin: Origin,
    /// The stable hash of the node id, as versions carry it (asked for
    /// every step by `SyncCore::unsettled_writers`).
    node_hash: u64,
    applied: u64,
    /// Holds a consistent copy up to `applied` (from seq 1 or a slice).
    loaded: bool,
    beat: Option<BeatInfo>,
    last_heard: u64,
    state: PeerState,
    orphaned_since: u64,
    pull: Pull,
    next_pull_at: u64,
    need_slice: bool,
    /// A page-by-page load into the copy stopped half way: the next transfer
    /// must replace the copy as a whole.
    dirty: bool,
    /// Batches ahead of `applied`, by first seq.
    buffer: BTreeMap<u64, Vec<Change>>,
    buffered: usize,
    /// Said farewell (see [`PeerView::left`]).
    left: bool,
}

impl Peer {
    fn new(origin: Origin, now: u64) -> Self {
        Self {
            node_hash: stable_hash(origin.node.as_bytes()),
            origin,
            applied: 0,
            loaded: false,
            beat: None,
            last_heard: now,
            state: PeerState::Live,
            orphaned_since: 0,
            pull: Pull::Idle,
            next_pull_at: 0,
            need_slice: false,
            dirty: false,
            buffer: BTreeMap::new(),
            buffered: 0,
            left: false,
        }
    }
}

/// An older incarnation of a peer: its sessions died with it, but its records
/// stay (flagged) for the orphan grace so their providers can re-register
/// without a flap.
#[derive(Debug)]
struct Retired {
    origin: Origin,
    since: u64,
    live: u64,
}

/// The protocol state of one node. See the module docs.
#[derive(Debug)]
pub struct SyncCore {
    me: Origin,
    cfg: SyncConfig,
    started: u64,
    /// Last own seq handed to the core.
    seq: u64,
    ring: VecDeque<(u64, Change)>,
    outbox: Vec<(u64, Change)>,
    peers: BTreeMap<Arc<str>, Peer>,
    retired: Vec<Retired>,
    requests: HashMap<u64, (Arc<str>, u64)>,
    next_request: u64,
    bus_up: bool,
    ready: bool,
    last_beat: Option<u64>,
    last_hello_answer: Option<u64>,
    valve_holding: bool,
    /// When the bus first came up: discovery runs from there.
    discovery_from: Option<u64>,
    counters: Counters,
}

impl SyncCore {
    pub fn new(me: Origin, cfg: SyncConfig, now: u64) -> Self {
        Self {
            me,
            cfg,
            started: now,
            seq: 0,
            ring: VecDeque::new(),
            outbox: Vec::new(),
            peers: BTreeMap::new(),
            retired: Vec::new(),
            requests: HashMap::new(),
            next_request: 1,
            bus_up: true,
            ready: false,
            last_beat: None,
            last_hello_answer: None,
            valve_holding: false,
            discovery_from: Some(now),
            counters: Counters::default(),
        }
    }

    pub fn me(&self) -> &Origin {
        &self.me
    }

    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// XOR of the stable hashes of this node's id and of every peer it holds
    /// (in any state), sent in beats. A starting node compares it with its own
    /// to tell that it knows every origin its peers know.
    pub fn members_digest(&self) -> u64 {
        self.peers.keys().fold(stable_hash(self.me.node.as_bytes()), |acc, n| acc ^ stable_hash(n.as_bytes()))
    }

    /// Every peer is ready and knows exactly the nodes this node knows (itself
    /// included, or not yet): nothing is left to discover, so a starting node
    /// need not wait out `discovery_ms`. A node that is alone, or hears from
    /// a peer that is starting too, an older node (no digest) or one that
    /// knows a node this one has not heard from, waits as before.
    fn vouched(&self) -> bool {
        let (mine, without_me) = self.my_digests();
        !self.peers.is_empty()
            && self.peers.values().all(|p| {
                p.beat
                    .as_ref()
                    .is_some_and(|b| b.ready && b.members != 0 && (b.members == mine || b.members == without_me))
            })
    }

    /// Some peer knows a node this one has not heard from: its membership
    /// digest differs from this node's, with or without this node. A live
    /// node that missed this one's hello beats within a beat interval, so
    /// discovery waits for it (see [`Self::check_ready`]).
    fn peers_know_more(&self) -> bool {
        let (mine, without_me) = self.my_digests();
        self.peers
            .values()
            .any(|p| p.beat.as_ref().is_some_and(|b| b.members != 0 && b.members != mine && b.members != without_me))
    }

    /// The membership digest, and the same without this node.
    fn my_digests(&self) -> (u64, u64) {
        let mine = self.members_digest();
        (mine, mine ^ stable_hash(self.me.node.as_bytes()))
    }

    /// The peers whose copies may still be on their way to this node, as the
    /// node hashes versions carry (see `Store::set_unsettled_writers`): every
    /// peer but those live, loaded, not pulling, with nothing buffered and
    /// caught up with their last beat; every peer while the bus is down.
    /// Sorted, so callers can tell when it changed.
    pub fn unsettled_writers(&self) -> Vec<u64> {
        let settled = |p: &Peer| {
            self.bus_up
                && p.state == PeerState::Live
                && p.loaded
                && matches!(p.pull, Pull::Idle)
                && p.buffer.is_empty()
                && p.beat.as_ref().is_some_and(|b| p.applied >= b.seq)
        };
        let mut out: Vec<u64> = self.peers.values().filter(|p| !settled(p)).map(|p| p.node_hash).collect();
        out.sort_unstable();
        out
    }

    /// Whether `origin` said farewell (stopped on purpose) and has not spoken since.
    pub fn has_left(&self, origin: &Origin) -> bool {
        self.peers.get(&origin.node).is_some_and(|p| p.origin == *origin && p.left)
    }

    /// Last own sequence number handed to the core.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn bus_up(&self) -> bool {
        self.bus_up
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether the safety valve is holding back orphan removal.
    pub fn valve_holding(&self) -> bool {
        self.valve_holding
    }

    /// Every known peer origin, including retired incarnations.
    pub fn peers(&self, now: u64) -> Vec<PeerView> {
        let mut out: Vec<PeerView> = self
            .peers
            .values()
            .map(|p| PeerView {
                origin: p.origin.clone(),
                state: p.state,
                last_heard_age_ms: now.saturating_sub(p.last_heard),
                beat: p.beat.clone(),
                applied: p.applied,
                loaded: p.loaded,
                syncing: !matches!(p.pull, Pull::Idle),
                retired: false,
                left: p.left,
            })
            .collect();
        out.extend(self.retired.iter().map(|r| PeerView {
            origin: r.origin.clone(),
            state: PeerState::Orphaned,
            last_heard_age_ms: now.saturating_sub(r.since),
            beat: None,
            applied: 0,
            loaded: true,
            syncing: false,
            retired: true,
            left: false,
        }));
        out
    }

    /// Changes of the own slice, in seq order, as the store made them.
    pub fn local_changes(&mut self, changes: Vec<(u64, Change)>) {
        for (seq, change) in changes {
            if seq != self.seq + 1 {
                // The store numbers changes one by one; anything else is a bug
                // upstream. Peers will repair from beats, so keep going.
                self.counters.invalid += 1;
            }
            self.seq = seq;
            self.ring.push_back((seq, change.clone()));
            if self.ring.len() > self.cfg.ring_capacity {
                self.ring.pop_front();
            }
            self.outbox.push((seq, change));
        }
    }

    /// Own changes not yet published, cut into batches under the size bound.
    pub fn take_publishes(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut first_seq = 0;
        let mut batch: Vec<Change> = Vec::new();
        let mut bytes = 0usize;
        for (seq, change) in std::mem::take(&mut self.outbox) {
            let len = change_to_wire(&change).encoded_len() + 8;
            if !batch.is_empty() && (bytes + len > self.cfg.max_batch_bytes || seq != first_seq + batch.len() as u64) {
                self.push_batch(&mut actions, first_seq, std::mem::take(&mut batch));
                bytes = 0;
            }
            if batch.is_empty() {
                first_seq = seq;
            }
            bytes += len;
            batch.push(change);
        }
        if !batch.is_empty() {
            self.push_batch(&mut actions, first_seq, batch);
        }
        actions
    }

    fn push_batch(&mut self, actions: &mut Vec<Action>, first_seq: u64, changes: Vec<Change>) {
        self.counters.batches_published += 1;
        self.counters.changes_published += changes.len() as u64;
        actions.push(Action::PublishChanges { first_seq, changes });
    }

    /// Answers a range pull from the ring of recent changes.
    pub fn serve_range(&self, incarnation: u64, from: u64, to: u64) -> Reply {
        if incarnation != self.me.incarnation {
            return Reply::Refused { reason: "no longer that incarnation".into(), pull_slice: false };
        }
        let to = to.min(self.seq).min(from.saturating_add(self.cfg.max_range_changes as u64 - 1));
        if from > to {
            return Reply::Empty;
        }
        let Some(&(front, _)) = self.ring.front() else {
            return Reply::Refused { reason: "range no longer kept".into(), pull_slice: true };
        };
        if from < front {
            return Reply::Refused { reason: "range no longer kept".into(), pull_slice: true };
        }
        let start = (from - front) as usize;
        let changes: Vec<Change> =
            self.ring.iter().skip(start).take((to - from + 1) as usize).map(|(_, c)| c.clone()).collect();
        Reply::Range(Batch { origin: self.me.clone(), first_seq: from, changes })
    }

    /// The peer entry for `origin`, handling new and older incarnations.
    fn peer_for(&mut self, origin: &Origin, now: u64, actions: &mut Vec<Action>) -> Option<Arc<str>> {
        if origin.node == self.me.node {
            // Our own echo, or another process claiming our node id.
            if origin.incarnation != self.me.incarnation {
                self.counters.stale_dropped += 1;
            }
            return None;
        }
        match self.peers.get(&origin.node) {
            None => {
                if self.retired.iter().any(|r| r.origin == *origin) {
                    self.counters.stale_dropped += 1;
                    return None;
                }
                self.peers.insert(origin.node.clone(), Peer::new(origin.clone(), now));
            }
            Some(p) if origin.incarnation > p.origin.incarnation => {
                let old = self.peers.remove(&origin.node).expect("present");
                for (id, (node, _)) in self.requests.clone() {
                    if node == origin.node {
                        self.requests.remove(&id);
                    }
                }
                if old.loaded || old.applied > 0 {
                    actions.push(Action::SetOrphaned { origin: old.origin.clone(), orphaned: true });
                    let live = old.beat.as_ref().map_or(0, |b| b.live);
                    self.retired.push(Retired { origin: old.origin, since: now, live });
                } else {
                    actions.push(Action::DropOrigin { origin: old.origin });
                }
                self.peers.insert(origin.node.clone(), Peer::new(origin.clone(), now));
            }
            Some(p) if origin.incarnation < p.origin.incarnation => {
                self.counters.stale_dropped += 1;
                return None;
            }
            Some(_) => {}
        }
        Some(origin.node.clone())
    }

    /// Records that a peer spoke: it is live again (even after a farewell: a
    /// real node says nothing after it, so this one is back, or the farewell
    /// was forged, and keeping a live node's records is the safe side).
    fn heard(&mut self, node: &Arc<str>, now: u64, actions: &mut Vec<Action>) {
        let Some(p) = self.peers.get_mut(node) else { return };
        p.last_heard = now;
        p.left = false;
        if p.state == PeerState::Orphaned {
            actions.push(Action::SetOrphaned { origin: p.origin.clone(), orphaned: false });
        }
        p.state = PeerState::Live;
    }

    /// A change batch published by a peer.
    pub fn on_batch(&mut self, batch: Batch, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(node) = self.peer_for(&batch.origin, now, &mut actions) else { return actions };
        self.heard(&node, now, &mut actions);
        self.accept_batch(&node, batch.first_seq, batch.changes, &mut actions);
        self.maybe_pull(&node, now, &mut actions);
        actions
    }

    fn accept_batch(&mut self, node: &Arc<str>, first_seq: u64, changes: Vec<Change>, actions: &mut Vec<Action>) {
        let Some(p) = self.peers.get_mut(node) else { return };
        let last = first_seq + changes.len() as u64 - 1;
        if last <= p.applied {
            self.counters.duplicates_dropped += 1;
            return;
        }
        let slicing = matches!(p.pull, Pull::Slice { .. });
        if slicing || first_seq > p.applied + 1 {
            if !slicing && !p.buffer.keys().any(|s| *s <= first_seq) {
                self.counters.gaps += 1;
            }
            if p.buffered + changes.len() > self.cfg.buffer_limit {
                self.counters.buffer_overflows += 1;
                return;
            }
            p.buffered += changes.len();
            p.buffer.insert(first_seq, changes);
            return;
        }
        apply_suffix(p, first_seq, changes, actions, &mut self.counters);
        drain_buffer(p, actions, &mut self.counters);
    }

    /// A beat of a peer; `copy` is this node's (digest, entries) of that origin's
    /// slice right now ((0, 0) if it holds nothing of it).
    pub fn on_beat(&mut self, origin: Origin, beat: BeatInfo, copy: (u64, u64), now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(node) = self.peer_for(&origin, now, &mut actions) else { return actions };
        self.heard(&node, now, &mut actions);
        let Some(p) = self.peers.get_mut(&node) else { return actions };
        // Buffered batches beyond what the origin says it issued are bogus.
        let before = p.buffer.len();
        p.buffer.retain(|first, _| *first <= beat.seq);
        if p.buffer.len() != before {
            self.counters.invalid += 1;
            p.buffered = p.buffer.values().map(Vec::len).sum();
        }
        if beat.seq < p.applied {
            // Same incarnation cannot go backwards: our copy is suspect.
            self.counters.invalid += 1;
            p.need_slice = true;
        } else if matches!(p.pull, Pull::Idle) {
            if beat.seq == 0 && p.applied == 0 {
                p.loaded = true;
            } else if beat.seq > p.applied {
                if p.buffer.is_empty() {
                    self.counters.gaps += 1;
                }
                p.next_pull_at = p.next_pull_at.min(now);
            } else if p.loaded && copy != (beat.digest, beat.entries) {
                self.counters.digest_mismatches += 1;
                p.need_slice = true;
                p.next_pull_at = now;
            }
        }
        let farewell = beat.farewell;
        p.beat = Some(beat);
        if farewell {
            // Stopped on purpose: no point waiting out the dead time. The
            // orphan grace still runs, for providers that are yet to move.
            p.left = true;
            p.state = PeerState::Orphaned;
            p.orphaned_since = now;
            actions.push(Action::SetOrphaned { origin: p.origin.clone(), orphaned: true });
            return actions;
        }
        self.maybe_pull(&node, now, &mut actions);
        self.check_ready(now, &mut actions);
        actions
    }

    /// Another node started: answer with a beat at once (at most every 100 ms).
    pub fn on_hello(&mut self, origin: Origin, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(node) = self.peer_for(&origin, now, &mut actions) {
            self.heard(&node, now, &mut actions);
        }
        if self.last_hello_answer.is_none_or(|t| now >= t + 100) {
            self.last_hello_answer = Some(now);
            self.last_beat = Some(now);
            actions.push(Action::PublishBeat);
        }
        actions
    }

    /// The answer to request `id`, or `None` if it failed (timeout, no responder,
    /// undecodable reply).
    pub fn on_reply(&mut self, id: u64, reply: Option<Reply>, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some((node, _)) = self.requests.remove(&id) else { return actions };
        let Some(p) = self.peers.get_mut(&node) else { return actions };
        let current = match &p.pull {
            Pull::Range { id: pid } => *pid == id,
            Pull::Slice { transfer } => transfer.outstanding.contains_key(&id),
            Pull::Idle => false,
        };
        if !current {
            return actions;
        }
        let pull = std::mem::replace(&mut p.pull, Pull::Idle);
        match reply {
            None => {
                self.counters.requests_failed += 1;
                p.next_pull_at = now + self.cfg.retry_ms;
            }
            Some(Reply::Refused { pull_slice, .. }) => {
                if pull_slice {
                    p.need_slice = true;
                    p.next_pull_at = now;
                } else {
                    p.next_pull_at = now + self.cfg.retry_ms;
                }
            }
            Some(Reply::Empty) => {
                // Nothing newer at the origin: the gap was a lost tail that never
                // existed there. Drop buffered batches we cannot use.
                p.next_pull_at = now + self.cfg.retry_ms;
            }
            Some(Reply::Range(batch)) => {
                if batch.origin != p.origin {
                    self.counters.invalid += 1;
                } else {
                    self.accept_batch(&node, batch.first_seq, batch.changes, &mut actions);
                }
            }
            Some(Reply::Page(page)) => match pull {
                Pull::Slice { transfer } => self.on_page(&node, transfer, id, page, now, &mut actions),
                _ => self.counters.invalid += 1,
            },
        }
        self.maybe_pull(&node, now, &mut actions);
        self.check_ready(now, &mut actions);
        actions
    }

    fn on_page(&mut self, node: &Arc<str>, mut t: Transfer, id: u64, page: Page, now: u64, actions: &mut Vec<Action>) {
        let Some(p) = self.peers.get_mut(node) else { return };
        let offset = t.outstanding.remove(&id).unwrap_or(u64::MAX);
        let len = page.entries.len() as u64;
        let first = t.page_len == 0;
        // Every page must be the one asked for, of the same cut, of the expected
        // size; an origin's seq only grows, so a cut older than what we applied
        // is bogus.
        let consistent = page.offset == offset
            && page.cut_seq >= p.applied
            && if first {
                offset == 0 && len <= page.total && page.total <= self.cfg.max_slice_entries
            } else {
                page.cut_id == t.cut_id
                    && page.cut_seq == t.cut_seq
                    && page.total == t.total
                    && len == t.page_len.min(t.total - offset)
            };
        if !consistent {
            self.counters.invalid += 1;
            p.need_slice = true;
            p.next_pull_at = now + self.cfg.retry_ms;
            return;
        }
        if first {
            t.cut_id = page.cut_id;
            t.cut_seq = page.cut_seq;
            t.total = page.total;
            t.page_len = len.max(1);
            t.next_offset = len;
        }
        t.received += len;
        t.digest = page.entries.iter().fold(t.digest, |acc, (k, e)| acc ^ e.digest(k));
        // Keep the window full before loading this page, so the origin encodes
        // the next pages while this node loads the current one.
        while t.outstanding.len() < self.cfg.pages_in_flight.max(1) && t.next_offset < t.total {
            let id = self.next_request;
            self.next_request += 1;
            self.requests.insert(id, (node.clone(), now));
            t.outstanding.insert(id, t.next_offset);
            let request = Request::Page { cut_id: t.cut_id, offset: t.next_offset };
            actions.push(Action::Request { id, to: p.origin.clone(), request });
            t.next_offset += t.page_len;
        }
        match &mut t.staged {
            Some(staged) => staged.extend(page.entries),
            None if len > 0 => {
                p.dirty = true;
                actions.push(Action::LoadEntries { origin: p.origin.clone(), entries: page.entries });
            }
            None => {}
        }
        if t.received < t.total {
            p.pull = Pull::Slice { transfer: t };
            return;
        }
        if t.digest != page.digest || t.received != t.total {
            self.counters.digest_mismatches += 1;
            p.need_slice = true;
            p.next_pull_at = now + self.cfg.retry_ms;
            return;
        }
        let (origin, cut_seq) = (p.origin.clone(), t.cut_seq);
        actions.push(match t.staged {
            Some(entries) => Action::ReplaceSlice { origin, cut_seq, entries },
            None => Action::SliceLoaded { origin, cut_seq, entries: t.received },
        });
        p.applied = cut_seq;
        p.loaded = true;
        p.dirty = false;
        p.need_slice = false;
        drain_buffer(p, actions, &mut self.counters);
    }

    /// Starts a pull for `node` if it needs one and none is running.
    fn maybe_pull(&mut self, node: &Arc<str>, now: u64, actions: &mut Vec<Action>) {
        let Some(p) = self.peers.get_mut(node) else { return };
        if !matches!(p.pull, Pull::Idle) {
            return;
        }
        // Batches buffered while a pull ran may fit now, even if the pull failed.
        drain_buffer(p, actions, &mut self.counters);
        // A node that left answers nothing more.
        if p.left || now < p.next_pull_at || !self.bus_up {
            return;
        }
        let beat_seq = p.beat.as_ref().map_or(0, |b| b.seq);
        let buffered_first = p.buffer.keys().next().copied();
        let target = match buffered_first {
            Some(first) => first - 1,
            None => beat_seq,
        };
        let request = if p.need_slice || (!p.loaded && p.applied == 0 && target > 0 && buffered_first.is_none()) {
            self.counters.slice_pulls += 1;
            Request::Page { cut_id: 0, offset: 0 }
        } else if target > p.applied {
            self.counters.range_pulls += 1;
            Request::Range { from_seq: p.applied + 1, to_seq: target }
        } else {
            return;
        };
        let id = self.next_request;
        self.next_request += 1;
        p.pull = match request {
            Request::Page { .. } => {
                // Into a copy that holds nothing yet, pages load as they come.
                let fresh = !p.loaded && !p.dirty;
                let outstanding = BTreeMap::from([(id, 0)]);
                Pull::Slice {
                    transfer: Transfer { outstanding, staged: (!fresh).then(Vec::new), ..Transfer::default() },
                }
            }
            Request::Range { .. } => Pull::Range { id },
        };
        self.requests.insert(id, (node.clone(), now));
        actions.push(Action::Request { id, to: p.origin.clone(), request });
    }

    /// The bus connection went down or came back.
    pub fn on_bus(&mut self, up: bool, now: u64) -> Vec<Action> {
        let was = self.bus_up;
        self.bus_up = up;
        let mut actions = Vec::new();
        if !up && !self.ready {
            // Discovery cannot happen without the bus: start it over when it is back.
            self.discovery_from = None;
        }
        if up && self.discovery_from.is_none() {
            self.discovery_from = Some(now);
        }
        if up && !was {
            // We were the ones cut off: give every peer a fresh start instead of
            // orphaning them for our own outage, and ask everyone to beat.
            for p in self.peers.values_mut() {
                p.last_heard = now;
            }
            actions.push(Action::PublishHello);
            actions.push(Action::PublishBeat);
            self.last_beat = Some(now);
        }
        actions
    }

    /// Periodic work: beats, liveness, orphan removal, retries, readiness.
    /// `own_live` is the number of live records in the own slice.
    pub fn on_tick(&mut self, now: u64, own_live: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.last_beat.is_none() {
            actions.push(Action::PublishHello);
        }
        if self.last_beat.is_none_or(|t| now >= t + self.cfg.beat_interval_ms) {
            self.last_beat = Some(now);
            actions.push(Action::PublishBeat);
        }
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, (_, sent))| now >= sent + self.cfg.request_timeout_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            actions.extend(self.on_reply(id, None, now));
        }
        if self.bus_up {
            self.update_liveness(now, own_live, &mut actions);
        }
        let nodes: Vec<Arc<str>> = self.peers.keys().cloned().collect();
        for node in nodes {
            self.maybe_pull(&node, now, &mut actions);
        }
        self.check_ready(now, &mut actions);
        actions
    }

    /// Turns ready once caught up with every live peer and done discovering
    /// (or at the ready timeout). Checked on ticks, and as soon as a beat or a
    /// reply may have completed it, rather than up to a tick later.
    fn check_ready(&mut self, now: u64, actions: &mut Vec<Action>) {
        if !self.ready {
            let elapsed = now.saturating_sub(self.started);
            let caught_up = self.peers.values().filter(|p| p.state == PeerState::Live).all(|p| {
                p.loaded && matches!(p.pull, Pull::Idle) && p.beat.as_ref().is_some_and(|b| p.applied >= b.seq)
            });
            // The discovery time is enough, unless a peer knows a node this
            // one has not heard from: then up to `suspect_after` longer, the
            // time by which that node's peers would suspect it too. A live
            // node whose answer to the hello was lost beats within that; a
            // dead one that peers still hold (orphaned) does not, and holds
            // the start no longer than that.
            let discovered = self.discovery_from.is_some_and(|t| {
                let extra = if self.peers_know_more() { self.cfg.suspect_after_ms } else { 0 };
                now >= t + self.cfg.discovery_ms + extra
            }) || (self.bus_up && self.vouched());
            if elapsed >= self.cfg.ready_timeout_ms {
                self.ready = true;
                actions.push(Action::Ready { timed_out: true });
            } else if self.bus_up && discovered && caught_up {
                self.ready = true;
                actions.push(Action::Ready { timed_out: false });
            }
        }
    }

    fn update_liveness(&mut self, now: u64, own_live: u64, actions: &mut Vec<Action>) {
        for p in self.peers.values_mut() {
            let silent = now.saturating_sub(p.last_heard);
            if p.state != PeerState::Orphaned && silent >= self.cfg.dead_after_ms {
                p.state = PeerState::Orphaned;
                p.orphaned_since = now;
                actions.push(Action::SetOrphaned { origin: p.origin.clone(), orphaned: true });
            } else if p.state == PeerState::Live && silent >= self.cfg.suspect_after_ms {
                p.state = PeerState::Suspect;
            }
        }
        // Retired incarnations are certainly gone: no safety valve for them.
        let grace = self.cfg.orphan_grace_ms;
        let (gone, kept): (Vec<Retired>, Vec<Retired>) =
            std::mem::take(&mut self.retired).into_iter().partition(|r| now >= r.since + grace);
        self.retired = kept;
        for r in gone {
            self.counters.origins_dropped += 1;
            actions.push(Action::DropOrigin { origin: r.origin });
        }
        let due = |left: bool| -> Vec<Arc<str>> {
            self.peers
                .iter()
                .filter(|(_, p)| p.state == PeerState::Orphaned && p.left == left && now >= p.orphaned_since + grace)
                .map(|(n, _)| n.clone())
                .collect()
        };
        // Peers that said farewell are certainly gone too: the safety valve
        // guards against this node's own isolation, which cannot forge one.
        let (departed, due) = (due(true), due(false));
        for node in departed {
            self.drop_peer(&node, actions);
        }
        if due.is_empty() {
            self.valve_holding = false;
            return;
        }
        let live = |p: &Peer| p.beat.as_ref().map_or(0, |b| b.live);
        let total: u64 =
            own_live + self.peers.values().map(live).sum::<u64>() + self.retired.iter().map(|r| r.live).sum::<u64>();
        let removing: u64 = due.iter().filter_map(|n| self.peers.get(n)).map(live).sum();
        if total >= self.cfg.safety_valve_min && removing as f64 > total as f64 * self.cfg.safety_valve_share {
            if !self.valve_holding {
                self.counters.safety_valve_holds += 1;
            }
            self.valve_holding = true;
            return;
        }
        self.valve_holding = false;
        for node in due {
            self.drop_peer(&node, actions);
        }
    }

    fn drop_peer(&mut self, node: &Arc<str>, actions: &mut Vec<Action>) {
        if let Some(p) = self.peers.remove(node) {
            self.requests.retain(|_, (n, _)| n != node);
            self.counters.origins_dropped += 1;
            actions.push(Action::DropOrigin { origin: p.origin });
        }
    }
}

/// What a store was last told of the unsettled writers
/// ([`SyncCore::unsettled_writers`]), and what to tell it around the
/// actions of a step: writers that became unsettled count as such for what
/// the step applies; writers that settled only once it is applied (the last
/// page of a transfer may hold the copy a moved one waits for).
#[derive(Debug, Default)]
pub struct UnsettledWriters {
    given: Vec<u64>,
}

impl UnsettledWriters {
    /// Before the step's actions: the set to give the store now, if `now`
    /// has writers it was not given (those given before stay in it).
    pub fn before(&self, now: &[u64]) -> Option<Vec<u64>> {
        if now.iter().all(|w| self.given.contains(w)) {
            return None;
        }
        let mut both: Vec<u64> = self.given.iter().chain(now).copied().collect();
        both.sort_unstable();
        both.dedup();
        Some(both)
    }

    /// After the step's actions: `now`, if it is not what was last given.
    pub fn after(&mut self, now: Vec<u64>) -> Option<Vec<u64>> {
        if now == self.given {
            return None;
        }
        self.given.clone_from(&now);
        Some(now)
    }
}

fn apply_suffix(p: &mut Peer, first_seq: u64, changes: Vec<Change>, actions: &mut Vec<Action>, c: &mut Counters) {
    let skip = p.applied.saturating_add(1).saturating_sub(first_seq) as usize;
    let changes: Vec<Change> = changes.into_iter().skip(skip).collect();
    if changes.is_empty() {
        return;
    }
    let first_seq = p.applied.saturating_add(1);
    p.applied = p.applied.saturating_add(changes.len() as u64);
    p.loaded = true;
    c.batches_applied += 1;
    c.changes_applied += changes.len() as u64;
    actions.push(Action::Apply { origin: p.origin.clone(), first_seq, changes });
}

/// Applies buffered batches that have become contiguous; drops covered ones.
fn drain_buffer(p: &mut Peer, actions: &mut Vec<Action>, c: &mut Counters) {
    while let Some((&first, changes)) = p.buffer.iter().next() {
        let last = first.saturating_add(changes.len() as u64 - 1);
        if first > p.applied.saturating_add(1) {
            break;
        }
        let changes = p.buffer.remove(&first).expect("present");
        p.buffered -= changes.len();
        if last <= p.applied {
            c.duplicates_dropped += 1;
            continue;
        }
        apply_suffix(p, first, changes, actions, c);
    }
}

#[cfg(test)]
mod tests {
    use super::UnsettledWriters;

    /// Writers that become unsettled are given before a step's actions,
    /// with those given earlier; writers that settle only after them.
    #[test]
    fn unsettled_writers_widen_before_a_step_and_narrow_after_it() {
        let mut given = UnsettledWriters::default();
        assert_eq!(given.before(&[]), None);
        assert_eq!(given.after(Vec::new()), None);
        assert_eq!(given.before(&[7]), Some(vec![7]));
        assert_eq!(given.after(vec![7]), Some(vec![7]));
        // 7 settles and 3 does not: 3 joins before, 7 leaves after.
        assert_eq!(given.before(&[3]), Some(vec![3, 7]));
        assert_eq!(given.after(vec![3]), Some(vec![3]));
        // Only settling: nothing before, the narrower set after.
        assert_eq!(given.before(&[]), None);
        assert_eq!(given.after(Vec::new()), Some(Vec::new()));
        assert_eq!(given.after(Vec::new()), None);
    }
}
