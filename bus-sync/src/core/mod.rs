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
//!
//! One concern per file, each an `impl SyncCore` over the state defined here:
//! - `publish`: own changes numbered into batches, the ring ranges are served from;
//! - `repair`: peers' changes in order, gaps, range and slice pulls, beats;
//! - `transfer`: paged slice transfers;
//! - `discovery`: hellos, the membership digest, readiness;
//! - `liveness`: beats out, suspect/orphaned/dropped peers, the safety valve,
//!   retired incarnations, this node's own bus outages;
//! - `known`: how far this node holds each writer's copies.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use prost::Message as _;
use registry_store::version::stable_hash;
use registry_store::{Change, Entry, Key, Origin};

use crate::wire::{Batch, BeatInfo, Page, Reply, Request, change_to_wire};

mod discovery;
mod known;
mod liveness;
mod publish;
mod repair;
mod transfer;

pub use known::KnownWriters;
use transfer::Transfer;

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
    /// How long a starting node listens for peers before it may turn ready;
    /// longer than `beat_interval_ms`, so a regular beat of every live peer
    /// falls within it even when the answers to its hello were lost.
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
            discovery_ms: 2_000,
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

#[derive(Debug)]
struct Peer {
    origin: Origin,
    /// The stable hash of the node id, as versions carry it (asked for
    /// every step by `SyncCore::writers_known`).
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
    /// A hello came within 100 ms of the last answer: a beat is owed (sent
    /// on the first tick 100 ms after that answer), never dropped, so a node
    /// starting right after another still hears from every peer at once.
    hello_owed: bool,
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
            hello_owed: false,
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

    /// How far this node holds each peer's copies, as (node hash, as
    /// versions carry it; HLC) pairs for `Store::set_writers_known`: every
    /// copy the peer wrote with a version up to the HLC that still exists
    /// is here.
    ///
    /// A peer that is live, loaded, not pulling, with nothing buffered and
    /// caught up with its last beat is known up to the clock that beat
    /// carried (entirely if it carried none: a node of an older release).
    /// Any other peer, and every peer while the bus is down, is known up to
    /// 0: nothing it wrote is known to be here. Caught up with a beat is not
    /// caught up with the peer: the beat may be old (a link that held the
    /// peer's messages delivers them late, in order, that beat first).
    /// Sorted by node hash, so callers can tell when it changed.
    pub fn writers_known(&self) -> Vec<(u64, u64)> {
        let known = |p: &Peer| {
            let settled = self.bus_up
                && p.state == PeerState::Live
                && p.loaded
                && matches!(p.pull, Pull::Idle)
                && p.buffer.is_empty();
            match &p.beat {
                Some(b) if settled && p.applied >= b.seq => b.hlc.unwrap_or(u64::MAX),
                _ => 0,
            }
        };
        let mut out: Vec<(u64, u64)> = self.peers.values().map(|p| (p.node_hash, known(p))).collect();
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
}
