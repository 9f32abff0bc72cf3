//! An in-memory bus for deterministic simulation: it can drop, duplicate, delay
//! (and so reorder) and partition, driven by a seeded generator. Used by the
//! simulation and property tests only; real nodes use NATS.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// What travels on the simulated bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusMessage {
    Changes(Vec<u8>),
    Beat(Vec<u8>),
    Hello(Vec<u8>),
    Request {
        id: u64,
        bytes: Vec<u8>,
    },
    /// To the requester's `incarnation` only, as a NATS reply inbox is unique to
    /// one process. `None`: the request could not be answered.
    Reply {
        id: u64,
        incarnation: u64,
        bytes: Option<Vec<u8>>,
    },
}

/// A message on its way to one node.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub from: Arc<str>,
    pub to: Arc<str>,
    pub message: BusMessage,
}

/// Fault levels, as probabilities per delivered copy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    /// Each copy is delayed by up to this many ms, which reorders them.
    pub max_delay_ms: u64,
}

/// SplitMix64: small, fast and good enough to drive a simulation.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// The simulated bus between a fixed set of nodes.
#[derive(Debug)]
pub struct MemoryBus {
    nodes: Vec<Arc<str>>,
    /// Deliveries by (due time, arrival order).
    queue: BTreeMap<(u64, u64), Envelope>,
    counter: u64,
    blocked: HashSet<(Arc<str>, Arc<str>)>,
    faults: Faults,
    rng: SimRng,
}

impl MemoryBus {
    pub fn new(nodes: Vec<Arc<str>>, seed: u64) -> Self {
        Self {
            nodes,
            queue: BTreeMap::new(),
            counter: 0,
            blocked: HashSet::new(),
            faults: Faults::default(),
            rng: SimRng::new(seed),
        }
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn partition(&mut self, a: &str, b: &str) {
        self.blocked.insert((a.into(), b.into()));
        self.blocked.insert((b.into(), a.into()));
    }

    /// Cuts only the direction `from` → `to`.
    pub fn partition_one_way(&mut self, from: &str, to: &str) {
        self.blocked.insert((from.into(), to.into()));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Publishes to every other node.
    pub fn publish(&mut self, from: &str, message: BusMessage, now: u64) {
        let targets: Vec<Arc<str>> = self.nodes.iter().filter(|n| &***n != from).cloned().collect();
        for to in targets {
            self.send(from, &to, message.clone(), now);
        }
    }

    /// Sends to one node, subject to faults and partitions.
    pub fn send(&mut self, from: &str, to: &str, message: BusMessage, now: u64) {
        if self.blocked.contains(&(Arc::from(from), Arc::from(to))) {
            return;
        }
        if self.rng.unit() < self.faults.drop {
            return;
        }
        let copies = if self.rng.unit() < self.faults.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.below(self.faults.max_delay_ms + 1);
            self.counter += 1;
            let env = Envelope { from: from.into(), to: to.into(), message: message.clone() };
            self.queue.insert((now + delay, self.counter), env);
        }
    }

    /// Messages due at or before `now`, in delivery order.
    pub fn due(&mut self, now: u64) -> Vec<Envelope> {
        let later = self.queue.split_off(&(now + 1, 0));
        std::mem::replace(&mut self.queue, later).into_values().collect()
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}
