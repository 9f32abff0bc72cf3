//! An in-memory, NATS-like bus for deterministic simulation (the `sim`
//! feature; real nodes use NATS). It routes messages by subject to the
//! subscriptions of each node's current connection, echoes a publisher's
//! messages back to it as NATS does, and can drop, duplicate, delay (and so
//! reorder) and partition, driven by a seeded generator.
//!
//! [`MemoryTransport`] is the runtime's side of it: what a step publishes,
//! requests or replies lands in an outbox that the simulation moves onto the
//! bus after the step. Replies go to the requester's inbox, a subject unique
//! to its incarnation, as a NATS inbox is unique to one process: a restarted
//! node never gets its predecessor's replies.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::runtime::{Answer, Input, Transport};
use crate::wire::{self, Reply};

/// A message on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub subject: Arc<str>,
    pub payload: Bytes,
    /// Where to answer (set on requests): the requester's inbox.
    pub reply_to: Option<Arc<str>>,
}

/// A message on its way to one connection of one node.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub from: Arc<str>,
    pub to: Arc<str>,
    /// The connection it was routed to: a node's connection ends when it
    /// restarts, and what was on its way to it is lost.
    pub connection: u64,
    pub message: Message,
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

/// Whether `subject` matches a NATS subscription `pattern`: tokens split on
/// `.`, `*` matches one token, a final `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// A subscription's pattern, sorted once: matching runs for every
/// subscription on every publish, the hot path of the simulation.
#[derive(Debug)]
enum Pattern {
    Exact(Arc<str>),
    /// `a.b.>`, kept as `a.b.`.
    Prefix(Arc<str>),
    Tokens(Arc<str>),
}

impl Pattern {
    fn new(pattern: &str) -> Self {
        match pattern.strip_suffix('>') {
            Some(prefix) if prefix.ends_with('.') && !prefix.contains(['*', '>']) => Self::Prefix(prefix.into()),
            _ if !pattern.contains(['*', '>']) => Self::Exact(pattern.into()),
            _ => Self::Tokens(pattern.into()),
        }
    }

    fn matches(&self, subject: &str) -> bool {
        match self {
            Self::Exact(p) => **p == *subject,
            Self::Prefix(p) => subject.len() > p.len() && subject.starts_with(&**p),
            Self::Tokens(p) => subject_matches(p, subject),
        }
    }
}

#[derive(Debug)]
struct Subscription {
    node: Arc<str>,
    connection: u64,
    pattern: Pattern,
}

/// The simulated bus between a set of nodes.
#[derive(Debug)]
pub struct MemoryBus {
    subscriptions: Vec<Subscription>,
    /// Nodes cut off from the bus: they receive nothing.
    offline: Vec<Arc<str>>,
    /// Deliveries by (due time, arrival order).
    queue: BTreeMap<(u64, u64), Delivery>,
    counter: u64,
    /// Cut links, (from, to). Few: a scan is cheaper than hashing.
    blocked: Vec<(Arc<str>, Arc<str>)>,
    /// Links (from, to) that hold what they carry until the heal.
    holding: Vec<(Arc<str>, Arc<str>)>,
    /// What the holding links took, in the order it was sent.
    held: Vec<Delivery>,
    faults: Faults,
    rng: SimRng,
}

impl MemoryBus {
    pub fn new(seed: u64) -> Self {
        Self {
            subscriptions: Vec::new(),
            offline: Vec::new(),
            queue: BTreeMap::new(),
            counter: 0,
            blocked: Vec::new(),
            holding: Vec::new(),
            held: Vec::new(),
            faults: Faults::default(),
            rng: SimRng::new(seed),
        }
    }

    /// Subscribes `node`'s `connection` to `pattern`.
    pub fn subscribe(&mut self, node: &str, connection: u64, pattern: &str) {
        self.subscriptions.push(Subscription { node: node.into(), connection, pattern: Pattern::new(pattern) });
    }

    /// Ends every connection of `node` (its process died): its subscriptions
    /// go, and what is on its way to them is lost.
    pub fn close(&mut self, node: &str) {
        self.subscriptions.retain(|s| &*s.node != node);
    }

    /// Cuts `node` off from the bus, or lets it back. Cut off, it receives
    /// nothing (what it sends, its transport drops).
    pub fn set_online(&mut self, node: &str, online: bool) {
        self.offline.retain(|n| &**n != node);
        if !online {
            self.offline.push(node.into());
        }
    }

    fn online(&self, node: &str) -> bool {
        !self.offline.iter().any(|n| &**n == node)
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn partition(&mut self, a: &str, b: &str) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    /// Cuts only the direction `from` → `to`.
    pub fn partition_one_way(&mut self, from: &str, to: &str) {
        if !self.is_blocked(from, to) {
            self.blocked.push((from.into(), to.into()));
        }
    }

    /// Holds what goes `from` → `to` until the heal, which delivers it all,
    /// in order and before anything sent later: a link that lost every
    /// packet one way, as TCP sees it (the sender retransmits; the receiver
    /// gets the backlog at once when the link is back). A route between NATS
    /// servers is such a link.
    pub fn hold_one_way(&mut self, from: &str, to: &str) {
        if !self.is_holding(from, to) {
            self.holding.push((from.into(), to.into()));
        }
    }

    fn is_blocked(&self, from: &str, to: &str) -> bool {
        self.blocked.iter().any(|(f, t)| &**f == from && &**t == to)
    }

    fn is_holding(&self, from: &str, to: &str) -> bool {
        self.holding.iter().any(|(f, t)| &**f == from && &**t == to)
    }

    /// Every link up again; what held links took is due at once.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.holding.clear();
        for delivery in std::mem::take(&mut self.held) {
            // Due time 0: ahead of everything queued, in the order sent.
            self.counter += 1;
            self.queue.insert((0, self.counter), delivery);
        }
    }

    /// Publishes to every subscription that matches the subject, the
    /// publisher's own included (NATS echoes by default), subject to faults
    /// and partitions.
    pub fn publish(&mut self, from: &str, message: Message, now: u64) {
        let from: Arc<str> = from.into();
        for i in 0..self.subscriptions.len() {
            let sub = &self.subscriptions[i];
            if !sub.pattern.matches(&message.subject) {
                continue;
            }
            let (to, connection) = (sub.node.clone(), sub.connection);
            if !self.online(&to) || self.is_blocked(&from, &to) {
                continue;
            }
            if self.rng.unit() < self.faults.drop {
                continue;
            }
            let copies = if self.rng.unit() < self.faults.duplicate { 2 } else { 1 };
            for _ in 0..copies {
                let delay = self.rng.below(self.faults.max_delay_ms + 1);
                self.counter += 1;
                let delivery = Delivery { from: from.clone(), to: to.clone(), connection, message: message.clone() };
                if self.is_holding(&from, &to) {
                    self.held.push(delivery);
                } else {
                    self.queue.insert((now + delay, self.counter), delivery);
                }
            }
        }
    }

    /// Messages due at or before `now`, in delivery order, to connections
    /// that are still there and online.
    pub fn due(&mut self, now: u64) -> Vec<Delivery> {
        let later = self.queue.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.queue, later);
        due.into_values()
            .filter(|d| {
                self.online(&d.to) && self.subscriptions.iter().any(|s| s.node == d.to && s.connection == d.connection)
            })
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len() + self.held.len()
    }
}

/// The runtime's side of the memory bus; see the module docs.
#[derive(Debug)]
pub struct MemoryTransport {
    /// `_INBOX.<node>.<incarnation>.`: replies to this node's requests come
    /// on this prefix followed by the request id.
    inbox: String,
    connected: bool,
    max_payload: usize,
    outbox: Vec<Message>,
    dropped: u64,
}

impl MemoryTransport {
    /// The transport of `node`'s incarnation `incarnation`, connected.
    pub fn new(node: &str, incarnation: u64) -> Self {
        Self {
            inbox: format!("_INBOX.{node}.{incarnation}."),
            connected: true,
            max_payload: 1 << 20,
            outbox: Vec::new(),
            dropped: 0,
        }
    }

    /// The subscription that brings replies to this transport's requests.
    pub fn inbox_pattern(&self) -> String {
        format!("{}>", self.inbox)
    }

    /// Cut off (`false`), everything sent is dropped, as by a client whose
    /// connection is down.
    pub fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Messages dropped because the transport was cut off.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// What the runtime sent since the last call, in order, for the bus.
    pub fn take_outbox(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbox)
    }

    /// The runtime's input for a message delivered to this node: replies on
    /// its inbox are the answers to its requests; anything else is a message.
    pub fn input<'a>(&self, message: &'a Message) -> Input<'a, Arc<str>> {
        let id = message.subject.strip_prefix(self.inbox.as_str()).and_then(|id| id.parse::<u64>().ok());
        match id {
            Some(id) => Input::Answer { id, answer: Answer::decode(&message.payload) },
            None => Input::Message {
                subject: &message.subject,
                payload: &message.payload,
                reply_to: message.reply_to.clone(),
            },
        }
    }

    fn send(&mut self, message: Message) {
        if self.connected {
            self.outbox.push(message);
        } else {
            self.dropped += 1;
        }
    }
}

impl Transport for MemoryTransport {
    type ReplyTo = Arc<str>;

    fn publish(&mut self, subject: &str, payload: Bytes) {
        self.send(Message { subject: subject.into(), payload, reply_to: None });
    }

    fn request(&mut self, id: u64, subject: &str, payload: Bytes) {
        let reply_to = Some(format!("{}{id}", self.inbox).into());
        self.send(Message { subject: subject.into(), payload, reply_to });
    }

    fn respond(&mut self, reply_to: Arc<str>, reply: Reply) {
        let payload = Bytes::from(wire::encode(&wire::reply_to_wire(&reply)));
        self.send(Message { subject: reply_to, payload, reply_to: None });
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_on_nats() {
        assert!(subject_matches("a.b.>", "a.b.c"));
        assert!(subject_matches("a.b.>", "a.b.c.d"));
        assert!(!subject_matches("a.b.>", "a.b"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        for (pattern, subject) in [
            ("a.b.>", "a.b.c"),
            ("a.b.>", "a.b"),
            ("a.b.>", "a.bc.d"),
            ("a.b", "a.b"),
            ("a.*.c", "a.b.c"),
            ("a.b", "a.c"),
        ] {
            assert_eq!(
                Pattern::new(pattern).matches(subject),
                subject_matches(pattern, subject),
                "{pattern} {subject}"
            );
        }
    }

    #[test]
    fn replies_reach_only_the_requesting_incarnation() {
        let mut bus = MemoryBus::new(1);
        let old = MemoryTransport::new("n1", 1);
        let new = MemoryTransport::new("n1", 2);
        bus.subscribe("n1", 1, &old.inbox_pattern());
        let reply_to: Arc<str> = format!("{}7", old.inbox).into();
        bus.close("n1");
        bus.subscribe("n1", 2, &new.inbox_pattern());
        bus.publish("n0", Message { subject: reply_to, payload: Bytes::new(), reply_to: None }, 0);
        assert!(bus.due(0).is_empty(), "the old inbox is gone with its process");
        let to_new: Arc<str> = format!("{}7", new.inbox).into();
        bus.publish("n0", Message { subject: to_new, payload: Bytes::new(), reply_to: None }, 0);
        let due = bus.due(0);
        assert_eq!(due.len(), 1);
        assert!(matches!(new.input(&due[0].message), Input::Answer { id: 7, .. }));
    }
}
