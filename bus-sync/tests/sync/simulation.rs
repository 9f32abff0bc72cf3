//! Deterministic simulation of several nodes, each the real replication
//! [`Runtime`] over a store, on the in-memory bus with drops, duplicates,
//! reordering, partitions, bus outages and restarts (new incarnations). The
//! runtime is the one production runs over NATS (subjects and the
//! subject/origin check, serving ranges and pages, beats that flush first,
//! how far each writer is known); only the transport differs, and every message goes
//! through the wire encoding, as on NATS.
//!
//! Checked at every step: no origin's changes are applied out of order or twice,
//! no node applies anything to its own slice from the bus, a slice cut is never
//! older than what was applied, a page-by-page load goes only into an empty copy,
//! and no beat is out of step with the changes published before it. Checked at
//! quiescence: every node's merged view equals the model (the merge of every live
//! node's authoritative own slice), every copy of a slice has its origin's digest,
//! no digest mismatch was ever seen and no message was taken for garbage.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bus_sync::memory::{Faults, MemoryBus, MemoryTransport, Message};
use bus_sync::wire;
use bus_sync::{BeatInfo, Input, Replica, Runtime, RuntimeConfig, SliceCut, Subjects, SyncConfig, SyncCore};
use bytes::Bytes;
use parking_lot::Mutex;
use proptest::prelude::*;
use registry_proto::v1;
use registry_store::{Change, Entry, InstanceKey, Key, Origin, Outcome, Record, SliceStats, Store, ViewChange};
use tokio::sync::Notify;

const TICK_MS: u64 = 50;
const PREFIX: &str = "registry";
const CLUSTER: &str = "sim";

fn config() -> SyncConfig {
    SyncConfig {
        beat_interval_ms: 200,
        suspect_after_ms: 600,
        dead_after_ms: 1_200,
        orphan_grace_ms: 2_000,
        discovery_ms: 300,
        ready_timeout_ms: 10_000,
        request_timeout_ms: 500,
        retry_ms: 200,
        ring_capacity: 64,
        max_batch_bytes: 2_048,
        max_range_changes: 16,
        buffer_limit: 200,
        pages_in_flight: 3,
        safety_valve_share: 0.5,
        safety_valve_min: 1_000_000, // the valve is tested apart; here removal must go through
        max_slice_entries: 10_000_000,
    }
}

fn runtime_config(sync: &SyncConfig) -> RuntimeConfig {
    RuntimeConfig {
        subject_prefix: PREFIX.into(),
        cluster: CLUSTER.into(),
        advertise_addr: String::new(),
        start_unix_ms: 0,
        sync: sync.clone(),
        // Small pages and short-lived cuts, so transfers span many pages and
        // abandoned ones free their cut within the run.
        page_entries: 5,
        max_cuts: 4,
        cut_idle_ms: 2_000,
    }
}

fn key(k: u8) -> Key {
    Key::Instance(InstanceKey::new("default", "svc", &format!("i{k}")))
}

fn record(k: u8, port: u16) -> Record {
    Record::instance(&v1::Instance {
        namespace: "default".into(),
        service: "svc".into(),
        instance_id: format!("i{k}"),
        host: "127.0.0.1".into(),
        port: port.into(),
        ..Default::default()
    })
}

fn port_of(r: &Record) -> u32 {
    match r {
        Record::Instance(i) => i.decode().map_or(0, |i| i.port),
        Record::Consumer(_) | Record::StatusOverride(_) => 0,
    }
}

struct ReplicaState {
    store: Store,
    /// Own changes not yet taken by the runtime, as the node keeps them.
    outbox: Vec<(u64, Change)>,
    /// Own copies a newer copy elsewhere hides, with when to purge them (as
    /// the node does, `dead_after` later: then as `Moved`).
    stale: Vec<(u64, Key)>,
    /// Independent record of the last seq applied per origin.
    applied: HashMap<Origin, u64>,
    /// What the runtime asked that it never should have.
    violations: Vec<String>,
    /// Keys the merged view stopped showing, with when.
    removed: Vec<(u64, Key)>,
    /// The simulation's clock, set before each step.
    now: u64,
}

/// A node's side of replication over a store, as `registry-node` has it,
/// plus the checks of what the runtime asks of it.
struct SimReplica {
    me: Origin,
    cfg: SyncConfig,
    state: Mutex<ReplicaState>,
    local_changed: Notify,
}

impl SimReplica {
    fn new(me: Origin, cfg: &SyncConfig) -> Self {
        let state = ReplicaState {
            store: Store::new(me.clone()),
            outbox: Vec::new(),
            stale: Vec::new(),
            applied: HashMap::new(),
            violations: Vec::new(),
            removed: Vec::new(),
            now: 0,
        };
        Self { me, cfg: cfg.clone(), state: Mutex::new(state), local_changed: Notify::new() }
    }

    /// Takes what a store operation caused: own changes to publish, own
    /// copies to purge later.
    fn absorb(&self, st: &mut ReplicaState, out: Outcome) {
        let now = st.now;
        st.removed.extend(out.view.iter().filter_map(|c| match c {
            ViewChange::Remove { key } => Some((now, key.clone())),
            ViewChange::Upsert { .. } => None,
        }));
        st.outbox.extend(out.local);
        let due = st.now + self.cfg.dead_after_ms;
        st.stale.extend(out.stale.into_iter().map(|k| (due, k)));
    }

    fn set_now(&self, now: u64) {
        self.state.lock().now = now;
    }

    fn write(&self, k: u8, port: Option<u16>, now: u64) {
        let mut st = self.state.lock();
        st.now = now;
        let out = match port {
            Some(p) => Some(st.store.put_local(key(k), record(k, p), now).1),
            None => st.store.remove_local(&key(k), now).map(|(_, o)| o),
        };
        if let Some(out) = out {
            self.absorb(&mut st, out);
        }
    }

    /// The node's timers: stale own copies purged (as moved), peers' moved
    /// copies whose newer copy never came dropped from the view.
    fn purge(&self, now: u64) {
        let mut st = self.state.lock();
        st.now = now;
        let out = st.store.sweep_moved(now, self.cfg.dead_after_ms + self.cfg.orphan_grace_ms);
        self.absorb(&mut st, out);
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.stale).into_iter().partition(|(t, _)| *t <= now);
        st.stale = later;
        for (_, key) in due {
            let out = st.store.purge_stale(&key);
            self.absorb(&mut st, out);
        }
    }

    /// When the merged view stopped showing `key`.
    fn removals_of(&self, key: &Key) -> Vec<u64> {
        self.state.lock().removed.iter().filter(|(_, k)| k == key).map(|(t, _)| *t).collect()
    }

    fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().violations)
    }

    fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.state.lock().store)
    }

    /// (key, port) of everything the merged view shows.
    fn view(&self) -> BTreeMap<Key, u32> {
        self.with_store(|s| s.visible_records().map(|(k, _, r)| (k.clone(), port_of(r))).collect())
    }

    fn own_stats(&self) -> SliceStats {
        self.with_store(|s| s.slice_stats(s.local_id()).expect("own slice"))
    }

    /// Checks that `origin` is a peer: nothing of the own slice comes from the bus.
    fn check_peer(&self, st: &mut ReplicaState, origin: &Origin, what: &str) -> bool {
        if origin.node == self.me.node {
            st.violations.push(format!("{}: {what} {origin} from the bus", self.me));
            return false;
        }
        true
    }
}

impl Replica for SimReplica {
    fn take_local_changes(&self) -> Vec<(u64, Change)> {
        std::mem::take(&mut self.state.lock().outbox)
    }

    fn beat_snapshot(&self) -> (Vec<(u64, Change)>, SliceStats) {
        let mut st = self.state.lock();
        let stats = st.store.slice_stats(st.store.local_id()).expect("own slice");
        (std::mem::take(&mut st.outbox), stats)
    }

    fn own_cut(&self) -> SliceCut {
        let st = self.state.lock();
        let local = st.store.local_id();
        let stats = st.store.slice_stats(local).expect("own slice");
        let mut entries = st.store.slice_entries(local);
        Store::group_by_service(&mut entries);
        SliceCut { seq: stats.seq, digest: stats.digest, entries }
    }

    fn copy_stats(&self, origin: &Origin) -> (u64, u64) {
        self.with_store(|s| s.stats_of(origin)).map_or((0, 0), |s| (s.digest, s.entries))
    }

    fn copy_live(&self, origin: &Origin) -> Option<u64> {
        self.with_store(|s| s.stats_of(origin)).map(|s| s.live)
    }

    fn apply(&self, origin: &Origin, first_seq: u64, changes: Vec<Change>) {
        let mut st = self.state.lock();
        if !self.check_peer(&mut st, origin, "applying") {
            return;
        }
        let last = st.applied.get(origin).copied().unwrap_or(0);
        if first_seq != last + 1 {
            st.violations.push(format!("{}: {origin} seq {first_seq} applied after {last}", self.me));
        }
        st.applied.insert(origin.clone(), first_seq + changes.len() as u64 - 1);
        let id = st.store.origin_id(origin);
        for c in changes {
            let out = st.store.apply_remote(id, c);
            self.absorb(&mut st, out);
        }
    }

    fn set_writers_known(&self, writers: Vec<(u64, u64)>) {
        let mut st = self.state.lock();
        let out = st.store.set_writers_known(writers);
        self.absorb(&mut st, out);
    }

    fn replace_slice(&self, origin: &Origin, cut_seq: u64, entries: Vec<(Key, Entry)>) {
        let mut st = self.state.lock();
        if !self.check_peer(&mut st, origin, "replacing") {
            return;
        }
        let last = st.applied.get(origin).copied().unwrap_or(0);
        if cut_seq < last {
            st.violations.push(format!("{}: {origin} slice at {cut_seq} after applying {last}", self.me));
        }
        st.applied.insert(origin.clone(), cut_seq);
        let id = st.store.origin_id(origin);
        let out = st.store.replace_slice(id, entries);
        self.absorb(&mut st, out);
    }

    fn load_entries(&self, origin: &Origin, entries: Vec<(Key, Entry)>) {
        let mut st = self.state.lock();
        if !self.check_peer(&mut st, origin, "loading") {
            return;
        }
        if st.applied.get(origin).copied().unwrap_or(0) != 0 {
            st.violations.push(format!("{}: page-by-page load into a copy of {origin} that holds data", self.me));
        }
        let id = st.store.origin_id(origin);
        for (key, entry) in entries {
            let out = st.store.apply_remote(id, Change::Put { key, entry });
            self.absorb(&mut st, out);
        }
    }

    fn slice_loaded(&self, origin: &Origin, cut_seq: u64) {
        self.state.lock().applied.insert(origin.clone(), cut_seq);
    }

    fn drop_origin(&self, origin: &Origin) {
        let mut st = self.state.lock();
        if let Some(id) = st.store.find_origin(origin) {
            let out = st.store.drop_origin(id);
            self.absorb(&mut st, out);
        }
        st.applied.remove(origin);
    }

    fn set_orphaned(&self, _origin: &Origin, _orphaned: bool) {}

    fn own_live(&self) -> u64 {
        self.own_stats().live
    }

    fn set_ready(&self, _timed_out: bool) {}

    fn set_bus_connected(&self, _connected: bool) {}

    fn local_changed(&self) -> &Notify {
        // The simulation steps the runtime itself after changing the slice.
        &self.local_changed
    }
}

/// One node: the production runtime over a simulated store and the memory bus.
struct SimNode {
    name: Arc<str>,
    me: Origin,
    replica: Arc<SimReplica>,
    runtime: Runtime<SimReplica, MemoryTransport>,
}

impl SimNode {
    /// A fresh process: new incarnation, empty store, its own subscriptions
    /// (its predecessor's are gone, with what was on its way to them).
    fn new(name: &str, incarnation: u64, cfg: &SyncConfig, now: u64, bus: &mut MemoryBus) -> Self {
        let me = Origin::new(name, incarnation);
        let replica = Arc::new(SimReplica::new(me.clone(), cfg));
        let transport = MemoryTransport::new(name, incarnation);
        let runtime = Runtime::new(replica.clone(), me.clone(), runtime_config(cfg), transport, Arc::default(), now);
        bus.close(name);
        for pattern in runtime.subjects().subscriptions() {
            bus.subscribe(name, incarnation, pattern);
        }
        bus.subscribe(name, incarnation, &runtime.transport().inbox_pattern());
        bus.set_online(name, true);
        Self { name: name.into(), me, replica, runtime }
    }

    fn core(&self) -> &SyncCore {
        self.runtime.core()
    }

    fn view(&self) -> BTreeMap<Key, u32> {
        self.replica.view()
    }

    fn garbage(&self) -> u64 {
        self.runtime.shared().metrics.garbage_messages.load(Ordering::Relaxed)
    }

    fn forged(&self) -> u64 {
        self.runtime.shared().metrics.forged_messages.load(Ordering::Relaxed)
    }

    /// Whether this node knows `origin` as a peer.
    fn knows(&self, origin: &Origin, now: u64) -> bool {
        self.core().peers(now).iter().any(|p| p.origin == *origin)
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A write; `wake`: the runtime is stepped for it at once, else the
    /// change waits for the node's next step, whatever that is (as when the
    /// loop is busy: a tick may come first and beat with it pending).
    Put {
        node: usize,
        key: u8,
        port: u16,
        wake: bool,
    },
    Remove {
        node: usize,
        key: u8,
        wake: bool,
    },
    Advance {
        ms: u64,
    },
    Partition {
        a: usize,
        b: usize,
    },
    OneWay {
        from: usize,
        to: usize,
    },
    /// What `from` sends `to` is held until the next heal, then delivered
    /// at once, in order (a link that lost every packet one way, as TCP
    /// sees it).
    Hold {
        from: usize,
        to: usize,
    },
    Heal,
    /// `node` restarts as a new incarnation: crashes, or (`graceful`)
    /// stops first, publishing its last changes and a farewell beat.
    Restart {
        node: usize,
        graceful: bool,
    },
    CutOff {
        node: usize,
    },
    Faults {
        level: u8,
    },
    /// `node` partitioned from every other node (or, `one_way`, deaf to
    /// them while they still hear it) for `ms`, then healed: long enough,
    /// often, that its peers drop its slice as departed while it is alive
    /// and writing (or it drops theirs), and must load it again when they
    /// hear it.
    Isolate {
        node: usize,
        ms: u64,
        one_way: bool,
    },
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..n, 0..8u8, 1..60_000u16, any::<bool>()).prop_map(|(node, key, port, wake)| Op::Put { node, key, port, wake }),
        2 => (0..n, 0..8u8, any::<bool>()).prop_map(|(node, key, wake)| Op::Remove { node, key, wake }),
        6 => (1..1_500u64).prop_map(|ms| Op::Advance { ms }),
        1 => (0..n, 0..n).prop_map(|(a, b)| Op::Partition { a, b }),
        1 => (0..n, 0..n).prop_map(|(from, to)| Op::OneWay { from, to }),
        1 => (0..n, 0..n).prop_map(|(from, to)| Op::Hold { from, to }),
        1 => Just(Op::Heal),
        1 => (0..n, any::<bool>()).prop_map(|(node, graceful)| Op::Restart { node, graceful }),
        1 => (0..n).prop_map(|node| Op::CutOff { node }),
        1 => (0..4u8).prop_map(|level| Op::Faults { level }),
        1 => (0..n, 2_000..6_000u64, any::<bool>()).prop_map(|(node, ms, one_way)| Op::Isolate { node, ms, one_way }),
    ]
}

struct Sim {
    nodes: Vec<SimNode>,
    bus: MemoryBus,
    now: u64,
    next_incarnation: u64,
    cfg: SyncConfig,
}

impl Sim {
    fn new(n: usize, seed: u64) -> Self {
        Self::with_config(n, seed, config())
    }

    fn with_config(n: usize, seed: u64, cfg: SyncConfig) -> Self {
        let mut bus = MemoryBus::new(seed);
        let nodes = (0..n).map(|i| SimNode::new(&format!("n{i}"), 1 + i as u64, &cfg, 0, &mut bus)).collect();
        let mut sim = Self { nodes, bus, now: 0, next_incarnation: 100, cfg };
        for i in 0..n {
            sim.step(i, Input::Connected).expect("a node connects");
        }
        sim
    }

    fn index(&self, name: &str) -> Result<usize, String> {
        self.nodes.iter().position(|n| &*n.name == name).ok_or_else(|| format!("delivery to unknown node {name}"))
    }

    /// One step of node `i`'s runtime (see [`Sim::check_and_send`]).
    fn step(&mut self, i: usize, input: Input<'_, Arc<str>>) -> Result<(), String> {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.replica.set_now(now);
        node.runtime.step(input, now);
        self.check_and_send(i)
    }

    /// After a step of node `i`: the checks, then what it sent onto the bus.
    fn check_and_send(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        let node = &mut self.nodes[i];
        if let Some(v) = node.replica.take_violations().into_iter().next() {
            return Err(v);
        }
        let out_of_step = node.runtime.shared().metrics.beats_out_of_step.load(Ordering::Relaxed);
        if out_of_step != 0 {
            return Err(format!("{}: {out_of_step} beats out of step with the changes published", node.me));
        }
        let name = node.name.clone();
        for message in node.runtime.transport_mut().take_outbox() {
            self.bus.publish(&name, message, now);
        }
        Ok(())
    }

    /// A write at node `i`, published as the node would: the runtime is
    /// woken by the change.
    fn write(&mut self, i: usize, k: u8, port: Option<u16>) -> Result<(), String> {
        self.nodes[i].replica.write(k, port, self.now);
        self.step(i, Input::LocalChanged)
    }

    /// Node `i` stops on purpose, as the NATS shell does when its stop token
    /// is cancelled.
    fn stop(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.replica.set_now(now);
        node.runtime.stop(now);
        self.check_and_send(i)
    }

    /// Node `i` restarts as a new process with `incarnation`.
    fn restart_as(&mut self, i: usize, incarnation: u64) -> Result<(), String> {
        let name = self.nodes[i].name.clone();
        self.nodes[i] = SimNode::new(&name, incarnation, &self.cfg, self.now, &mut self.bus);
        self.step(i, Input::Connected)
    }

    fn advance(&mut self, ms: u64) -> Result<(), String> {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + TICK_MS).min(end);
            for delivery in self.bus.due(self.now) {
                let i = self.index(&delivery.to)?;
                let input = self.nodes[i].runtime.transport().input(&delivery.message);
                self.step(i, input)?;
            }
            for i in 0..self.nodes.len() {
                // What the purge changes goes out with the tick's step (its
                // beat, if one is due, publishes the changes first).
                self.nodes[i].replica.purge(self.now);
                self.step(i, Input::Tick)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Put { node, key, port, wake: true } => self.write(node, key, Some(port))?,
            Op::Remove { node, key, wake: true } => self.write(node, key, None)?,
            Op::Put { node, key, port, wake: false } => self.nodes[node].replica.write(key, Some(port), self.now),
            Op::Remove { node, key, wake: false } => self.nodes[node].replica.write(key, None, self.now),
            Op::Advance { ms } => self.advance(ms)?,
            Op::Partition { a, b } if a != b => {
                let (a, b) = (self.nodes[a].name.clone(), self.nodes[b].name.clone());
                self.bus.partition(&a, &b);
            }
            Op::OneWay { from, to } if from != to => {
                let (f, t) = (self.nodes[from].name.clone(), self.nodes[to].name.clone());
                self.bus.partition_one_way(&f, &t);
            }
            Op::Hold { from, to } if from != to => {
                let (f, t) = (self.nodes[from].name.clone(), self.nodes[to].name.clone());
                self.bus.hold_one_way(&f, &t);
            }
            Op::Partition { .. } | Op::OneWay { .. } | Op::Hold { .. } => {}
            Op::Heal => self.heal()?,
            Op::Restart { node, graceful } => {
                if graceful {
                    self.stop(node)?;
                }
                self.next_incarnation += 1;
                self.restart_as(node, self.next_incarnation)?;
            }
            Op::CutOff { node } => {
                let n = &mut self.nodes[node];
                if n.runtime.transport().is_connected() {
                    // The client loses its connection: nothing in, nothing out.
                    n.runtime.transport_mut().set_connected(false);
                    let name = n.name.clone();
                    self.bus.set_online(&name, false);
                    self.step(node, Input::Disconnected)?;
                }
            }
            Op::Isolate { node, ms, one_way } => {
                let me = self.nodes[node].name.clone();
                let others: Vec<Arc<str>> = self.nodes.iter().map(|n| n.name.clone()).filter(|n| *n != me).collect();
                for other in &others {
                    if one_way {
                        self.bus.partition_one_way(other, &me);
                    } else {
                        self.bus.partition(&me, other);
                    }
                }
                // Both sides keep writing while apart.
                self.advance(ms / 2)?;
                let key = (ms % 8) as u8;
                self.write(node, key, Some(40_000 + (ms % 1_000) as u16))?;
                let other = (node + 1) % self.nodes.len();
                self.write(other, key.wrapping_add(1) % 8, Some(50_000))?;
                self.advance(ms - ms / 2)?;
                self.bus.heal();
            }
            Op::Faults { level } => self.bus.set_faults(match level {
                0 => Faults::default(),
                1 => Faults { drop: 0.05, duplicate: 0.05, max_delay_ms: 100 },
                2 => Faults { drop: 0.2, duplicate: 0.1, max_delay_ms: 300 },
                _ => Faults { drop: 0.0, duplicate: 0.3, max_delay_ms: 500 },
            }),
        }
        Ok(())
    }

    /// Heals every partition and reconnects every node cut off from the bus.
    fn heal(&mut self) -> Result<(), String> {
        self.bus.heal();
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            if !n.runtime.transport().is_connected() {
                n.runtime.transport_mut().set_connected(true);
                let name = n.name.clone();
                self.bus.set_online(&name, true);
                self.step(i, Input::Connected)?;
            }
        }
        Ok(())
    }

    /// The merge of every node's authoritative own slice.
    fn model(&self) -> BTreeMap<Key, u32> {
        let mut best: BTreeMap<Key, (registry_store::Version, u64, Option<u32>)> = BTreeMap::new();
        for n in &self.nodes {
            for (k, e) in n.replica.with_store(|s| s.slice_entries(s.local_id())) {
                let port = e.record.as_ref().map(port_of);
                let rank = (e.version, n.me.incarnation, port);
                if best.get(&k).is_none_or(|b| (b.0, b.1) < (rank.0, rank.1)) {
                    best.insert(k, rank);
                }
            }
        }
        best.into_iter().filter_map(|(k, (_, _, p))| p.map(|p| (k, p))).collect()
    }

    fn converged(&self) -> Result<(), String> {
        let model = self.model();
        for n in &self.nodes {
            if n.view() != model {
                return Err(format!("{} view {:?} != model {:?}", n.me, n.view(), model));
            }
            for other in &self.nodes {
                if other.me == n.me {
                    continue;
                }
                let own = other.replica.own_stats();
                let copy = n.replica.copy_stats(&other.me);
                if copy != (own.digest, own.entries) {
                    return Err(format!(
                        "{} holds {} as {copy:?}, origin has {:?}",
                        n.me,
                        other.me,
                        (own.digest, own.entries)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Heals everything and runs until converged, within a bound of sim time.
    fn quiesce(&mut self) -> Result<u64, String> {
        self.heal()?;
        self.bus.set_faults(Faults::default());
        let start = self.now;
        let mut stable = 0;
        loop {
            self.advance(250)?;
            let ready = self.nodes.iter().all(|n| n.core().is_ready());
            stable = if ready && self.converged().is_ok() { stable + 1 } else { 0 };
            // Twice in a row: a view that merely passes through the model does not count.
            if stable == 2 {
                return Ok(self.now - start);
            }
            if self.now - start > 60_000 {
                let unready: Vec<String> =
                    self.nodes.iter().filter(|n| !n.core().is_ready()).map(|n| n.me.to_string()).collect();
                self.converged().map_err(|e| format!("not converged after 60 s: {e}"))?;
                return Err(format!("converged but not ready after 60 s: {unready:?}"));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn cores_converge_through_faults(
        seed in any::<u64>(),
        n in 2..5usize,
        ops in prop::collection::vec(op(4), 1..80),
    ) {
        let mut sim = Sim::new(n, seed);
        sim.advance(1_000).map_err(TestCaseError::fail)?;
        for op in ops {
            let op = clamp(op, n);
            sim.apply(op).map_err(TestCaseError::fail)?;
            sim.advance(TICK_MS).map_err(TestCaseError::fail)?;
        }
        sim.quiesce().map_err(TestCaseError::fail)?;
        for node in &sim.nodes {
            prop_assert_eq!(node.core().counters().digest_mismatches, 0, "{} saw a digest mismatch", node.me);
            prop_assert!(node.core().is_ready());
            prop_assert_eq!(node.garbage(), 0, "{} took a message for garbage", node.me);
        }
    }
}

/// Maps node indexes of an op into `0..n`.
fn clamp(op: Op, n: usize) -> Op {
    match op {
        Op::Put { node, key, port, wake } => Op::Put { node: node % n, key, port, wake },
        Op::Remove { node, key, wake } => Op::Remove { node: node % n, key, wake },
        Op::Partition { a, b } => Op::Partition { a: a % n, b: b % n },
        Op::OneWay { from, to } => Op::OneWay { from: from % n, to: to % n },
        Op::Hold { from, to } => Op::Hold { from: from % n, to: to % n },
        Op::Restart { node, graceful } => Op::Restart { node: node % n, graceful },
        Op::CutOff { node } => Op::CutOff { node: node % n },
        Op::Isolate { node, ms, one_way } => Op::Isolate { node: node % n, ms, one_way },
        other => other,
    }
}

#[test]
fn a_joining_node_loads_a_large_slice_in_pages() {
    let mut sim = Sim::new(2, 7);
    for k in 0..8u8 {
        sim.write(0, k, Some(1_000 + u16::from(k))).expect("write");
    }
    // Many more writes than the ring holds, so a late joiner needs the slice.
    for round in 0..20u16 {
        for k in 0..8u8 {
            sim.write(0, k, Some(2_000 + round)).expect("write");
        }
    }
    sim.advance(1_000).expect("delivered to the old n1");
    sim.restart_as(1, 500).expect("n1 restarts");
    sim.quiesce().expect("converges");
    assert!(
        sim.nodes[1].core().counters().slice_pulls >= 1,
        "{:?} view {:?}",
        sim.nodes[1].core().counters(),
        sim.nodes[1].view()
    );
    assert_eq!(sim.nodes[1].view().len(), 8);
}

#[test]
fn lost_tail_is_repaired_from_the_ring_after_the_next_beat() {
    let mut sim = Sim::new(2, 1);
    sim.advance(1_000).expect("start");
    sim.bus.set_faults(Faults { drop: 1.0, duplicate: 0.0, max_delay_ms: 0 });
    sim.write(0, 1, Some(7)).expect("write");
    sim.bus.set_faults(Faults::default());
    assert!(sim.nodes[1].view().is_empty(), "the batch was lost");
    sim.advance(500).expect("beats");
    assert_eq!(sim.nodes[1].view().len(), 1);
    let c = sim.nodes[1].core().counters();
    assert!(c.range_pulls >= 1 && c.slice_pulls == 0, "{c:?}");
}

#[test]
fn an_orphaned_peer_is_removed_after_grace_unless_the_valve_holds() {
    let mut sim = Sim::new(2, 3);
    sim.advance(1_000).expect("start");
    sim.write(0, 1, Some(7)).expect("write");
    sim.advance(300).expect("propagate");
    assert_eq!(sim.nodes[1].view().len(), 1);
    sim.bus.partition("n0", "n1");
    // Orphaned after dead_after (1.2 s), still shown during the grace (2 s).
    sim.advance(2_000).expect("orphaned");
    assert_eq!(sim.nodes[1].view().len(), 1, "orphaned records stay visible during the grace");
    sim.advance(2_000).expect("grace over");
    assert!(sim.nodes[1].view().is_empty(), "removed after the grace");

    // Same again with the valve on: the peer holds all instances, so removing it
    // would take 100% of them. The valve holds.
    let mut sim = Sim::with_config(2, 3, SyncConfig { safety_valve_min: 1, ..config() });
    sim.advance(1_000).expect("start");
    sim.write(0, 1, Some(7)).expect("write");
    sim.advance(300).expect("propagate");
    sim.bus.partition("n0", "n1");
    sim.advance(5_000).expect("past grace");
    assert_eq!(sim.nodes[1].view().len(), 1, "the valve keeps them");
    assert!(sim.nodes[1].core().valve_holding());
    sim.bus.heal();
    sim.advance(1_000).expect("heal");
    assert!(!sim.nodes[1].core().valve_holding());
    sim.quiesce().expect("converges");
}

/// The sequence behind a soak that did not converge: a live node's peers
/// stop hearing it past the dead time and the orphan grace and drop its
/// slice as departed, while it goes on writing; once they hear it again,
/// they load its slice again (and it theirs), and every view converges.
#[test]
fn a_live_origin_dropped_as_departed_is_loaded_again_when_heard() {
    for one_way in [false, true] {
        let mut sim = Sim::new(3, 11);
        sim.advance(1_000).expect("start");
        sim.write(0, 1, Some(7)).expect("write");
        sim.write(1, 2, Some(8)).expect("write");
        sim.advance(300).expect("propagate");
        assert_eq!(sim.nodes[2].view().len(), 2);
        sim.apply(Op::Isolate { node: 0, ms: 5_000, one_way }).expect("isolated past dead time and grace");
        // Apart both ways, n1 and n2 dropped n0; deaf only, n0 dropped them.
        let n0 = sim.nodes[0].me.clone();
        for peer in &sim.nodes[1..] {
            let (holder, held) = if one_way { (&sim.nodes[0], &peer.me) } else { (peer, &n0) };
            assert!(
                holder.replica.with_store(|s| s.find_origin(held).is_none()),
                "{} still holds {held} (one way: {one_way})",
                holder.me
            );
        }
        // n0 wrote while apart (Isolate does); it is heard again from here.
        sim.write(0, 3, Some(9)).expect("write");
        sim.quiesce().expect("converges once n0 is heard again");
        for n in &sim.nodes {
            assert!(n.view().contains_key(&key(1)) && n.view().contains_key(&key(3)), "{}: {:?}", n.me, n.view());
        }
    }
}

/// The sequence behind a mass flap in the soak: while n2 is cut off, a
/// provider (key `k`, port 1,111 at n1) moves to n0 (port 2,222): n0's newer
/// copy takes the key over, and n1 drops its own copy a dead time later, as
/// moved. Then n2 hears n1 again but not n0. Returns the simulation there.
fn moved_while_n2_was_cut_off(seed: u64, k: u8) -> Sim {
    let mut sim = Sim::new(3, seed);
    sim.advance(1_000).expect("start");
    sim.write(1, k, Some(1_111)).expect("registered at n1");
    sim.advance(300).expect("propagate");
    assert_eq!(sim.nodes[2].view().get(&key(k)), Some(&1_111));
    // Cut off for less than the dead time: n2 orphans nobody.
    sim.bus.partition("n2", "n0");
    sim.bus.partition("n2", "n1");
    sim.write(0, k, Some(2_222)).expect("moved to n0");
    sim.advance(config().dead_after_ms + 200).expect("n1 drops its copy as moved");
    assert!(
        sim.nodes[1].replica.with_store(|s| s.local_entry(&key(k)).is_none()),
        "n1 still holds its superseded copy"
    );
    // n1's batch with the drop reaches n2 (through the ring); n0's copy not.
    sim.bus.heal();
    sim.bus.partition("n2", "n0");
    sim
}

/// n2 must keep showing the moved instance until n0's copy comes, not show
/// it removed and, a moment later, added again.
#[test]
fn a_copy_dropped_as_moved_stays_shown_until_the_newer_copy_arrives() {
    let mut sim = moved_while_n2_was_cut_off(17, 4);
    // Until n2 takes n0 for gone (dead time plus grace since the cut; then
    // what n0 holds goes, the copy on its way with it, as designed).
    for _ in 0..15 {
        sim.advance(100).expect("n2 catches up with n1");
        assert!(sim.nodes[2].view().contains_key(&key(4)), "n2 showed the moved instance removed");
    }
    assert_eq!(sim.nodes[2].view().get(&key(4)), Some(&1_111), "shown as it was until the newer copy comes");
    sim.bus.heal();
    sim.advance(1_000).expect("n0's copy reaches n2");
    assert_eq!(sim.nodes[2].view().get(&key(4)), Some(&2_222));
    assert_eq!(sim.nodes[2].replica.with_store(Store::moved_pending), 0);
    sim.quiesce().expect("converges");
}

/// The sequence behind the soak's last flaps: n2 stops hearing n0 (the
/// route between their NATS servers loses every packet one way, so what n0
/// sends reaches n2 only when the route is back, all at once and in order)
/// while a provider moves from n1 to n0. n2 gets n1's drop of its copy as
/// moved and keeps showing it, n0 being silent; it takes n0 for orphaned.
/// At the heal, the first of n0's held messages is a beat sent as the cut
/// began: n2 has everything it announces. Settled by that old beat, n0 must
/// still not release the moved copy, whose newer copy n0 wrote after it and
/// is a few messages behind: a removal, then an add (a flap).
#[test]
fn a_moved_copy_stays_shown_when_a_held_link_delivers_an_old_beat_first() {
    for (seed, k) in [(23, 6), (29, 7), (31, 1)] {
        let mut sim = Sim::new(3, seed);
        sim.advance(1_000).expect("start");
        sim.write(1, k, Some(1_111)).expect("registered at n1");
        sim.advance(300).expect("propagate");
        assert_eq!(sim.nodes[2].view().get(&key(k)), Some(&1_111));
        sim.bus.hold_one_way("n0", "n2");
        // Past a beat interval, so a beat of n0's is the first held message.
        sim.advance(config().beat_interval_ms + 50).expect("n0 beats into the held link");
        sim.write(0, k, Some(2_222)).expect("moved to n0");
        sim.advance(config().dead_after_ms + 400).expect("n1 drops its copy as moved; n2 orphans n0");
        assert!(
            sim.nodes[1].replica.with_store(|s| s.local_entry(&key(k)).is_none()),
            "n1 still holds its superseded copy"
        );
        assert_eq!(sim.nodes[2].view().get(&key(k)), Some(&1_111), "n2 shows the moved copy while n0 is silent");
        sim.bus.heal();
        sim.advance(1_000).expect("n0's held messages reach n2");
        assert_eq!(sim.nodes[2].view().get(&key(k)), Some(&2_222));
        let removals = sim.nodes[2].replica.removals_of(&key(k));
        assert!(removals.is_empty(), "seed {seed}: n2 showed the moved instance removed at {removals:?} ms");
        assert_eq!(sim.nodes[2].replica.with_store(Store::moved_pending), 0);
        sim.quiesce().expect("converges");
    }
}

/// A copy dropped as moved whose newer copy never comes (its node stays cut
/// off) leaves the view by the end of the hold, when the silent node's own
/// records do.
#[test]
fn a_moved_copy_whose_newer_copy_never_comes_leaves_after_the_hold() {
    let mut sim = moved_while_n2_was_cut_off(19, 5);
    sim.advance(500).expect("n2 hears n1");
    assert!(sim.nodes[2].view().contains_key(&key(5)));
    let cfg = config();
    sim.advance(cfg.dead_after_ms + cfg.orphan_grace_ms + 500).expect("past the hold");
    assert!(!sim.nodes[2].view().contains_key(&key(5)), "kept past the hold: {:?}", sim.nodes[2].view());
    assert_eq!(sim.nodes[2].replica.with_store(Store::moved_pending), 0);
    sim.quiesce().expect("converges once n0 is heard");
}

#[test]
fn a_node_cut_off_from_the_bus_orphans_nobody() {
    let mut sim = Sim::new(2, 5);
    sim.advance(1_000).expect("start");
    sim.write(0, 1, Some(7)).expect("write");
    sim.advance(300).expect("propagate");
    sim.apply(Op::CutOff { node: 1 }).expect("cut off");
    sim.bus.partition("n0", "n1");
    sim.advance(10_000).expect("long outage");
    assert_eq!(sim.nodes[1].view().len(), 1, "the cut-off node keeps serving what it has");
    sim.quiesce().expect("converges");
}

/// The runtime checks that a batch comes on its origin's subject: a batch
/// published on n1's subject claiming to be n2's changes is counted as
/// garbage and not applied, while the same batch on n2's subject is.
#[test]
fn a_batch_on_another_origins_subject_is_garbage() {
    let mut sim = Sim::new(2, 23);
    sim.advance(1_000).expect("start");
    let forged = Origin::new("n2", 77);
    let entry = Entry { version: registry_store::Version { hlc: 1 << 20, node: 9 }, record: Some(record(3, 3_333)) };
    let batch = wire::batch_to_wire(&forged, 1, &[Change::Put { key: key(3), entry }]);
    let payload = Bytes::from(wire::encode(&batch));
    let send = |sim: &mut Sim, subject: String| {
        let message = Message { subject: subject.into(), payload: payload.clone(), reply_to: None };
        sim.bus.publish("n1", message, sim.now);
    };
    send(&mut sim, Subjects::new(PREFIX, CLUSTER, "n1").changes);
    sim.advance(200).expect("delivered");
    let n0 = &sim.nodes[0];
    assert_eq!(n0.garbage(), 1);
    assert_eq!(n0.forged(), 1, "counted as forged too");
    assert!(n0.replica.with_store(|s| s.find_origin(&forged).is_none()), "a forged batch was applied");
    assert!(!n0.view().contains_key(&key(3)));
    assert_eq!(n0.core().counters().changes_applied, 0);

    // The same batch on its own origin's subject goes through the runtime
    // to the store: the check above is what kept it out.
    send(&mut sim, Subjects::new(PREFIX, CLUSTER, "n2").changes);
    sim.advance(200).expect("delivered");
    let n0 = &sim.nodes[0];
    assert_eq!(n0.garbage(), 1);
    assert_eq!(n0.view().get(&key(3)), Some(&3_333));
}

/// Beats and hellos are checked like batches: each node publishes them on
/// its own subject (`bus.beat.<node>`, `bus.hello.<node>`), and one on
/// another node's subject claiming to come from an origin nobody has heard
/// of is counted as forged and never reaches the core (the origin does not
/// become a peer). The same message on its origin's own subject does.
#[test]
fn a_beat_or_hello_on_another_origins_subject_is_forged() {
    let forged = Origin::new("n2", 77);
    for what in ["beat", "hello"] {
        let payload = Bytes::from(match what {
            // A beat announcing a slice, so that a node which took it would
            // also start pulling that slice.
            "beat" => {
                let info = BeatInfo { seq: 3, entries: 1, live: 1, ready: true, ..Default::default() };
                wire::encode(&wire::beat_to_wire(&forged, &info))
            }
            _ => wire::encode(&wire::hello_to_wire(&forged)),
        });
        let subject_of = |node: &str| {
            let subjects = Subjects::new(PREFIX, CLUSTER, node);
            if what == "beat" { subjects.beat } else { subjects.hello }
        };
        let mut sim = Sim::new(2, 29);
        sim.advance(1_000).expect("start");
        let send = |sim: &mut Sim, node: &str| {
            let message = Message { subject: subject_of(node).into(), payload: payload.clone(), reply_to: None };
            sim.bus.publish("n1", message, sim.now);
        };
        send(&mut sim, "n1");
        sim.advance(200).expect("delivered");
        for node in &sim.nodes {
            assert_eq!((node.forged(), node.garbage()), (1, 1), "{what} at {}: counted as forged", node.me);
            assert!(!node.knows(&forged, sim.now), "{what} at {}: the forged origin became a peer", node.me);
        }

        // On its own subject the same message goes through to the core:
        // the check above is what kept it out.
        send(&mut sim, "n2");
        sim.advance(200).expect("delivered");
        for node in &sim.nodes {
            assert_eq!(node.forged(), 1, "{what} at {}", node.me);
            assert!(node.knows(&forged, sim.now), "{what} at {}: the origin's own {what} was not taken", node.me);
        }
    }
}
