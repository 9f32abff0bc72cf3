//! Long-lived streams (provider sessions, Subscribe streams) that the node can
//! ask to move to another node while it keeps running: each has its own drain
//! signal, a child of the node's, so shutdown drains them all and rebalancing
//! picks a few, each told where to go.

use std::collections::HashMap;

use parking_lot::Mutex;
use rand::Rng as _;
use registry_proto::v1;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One open stream: its drain signal, and where rebalancing asked it to go.
#[derive(Debug)]
struct Movable {
    drain: CancellationToken,
    hint: Option<String>,
}

/// One kind of movable stream, by id.
#[derive(Debug, Default)]
pub struct Movers {
    streams: Mutex<HashMap<u64, Movable>>,
}

impl Movers {
    /// Tracks stream `id`, asked to move when `drain` is cancelled.
    pub fn register(&self, id: u64, drain: CancellationToken) {
        self.streams.lock().insert(id, Movable { drain, hint: None });
    }

    pub fn unregister(&self, id: u64) {
        self.streams.lock().remove(&id);
    }

    /// Asks up to `n` streams not yet asked to move elsewhere, pointing them
    /// at `hint` (a peer's advertised address); returns how many were asked.
    pub fn ask(&self, n: usize, hint: &str) -> usize {
        let mut streams = self.streams.lock();
        let mut asked = 0;
        for s in streams.values_mut().filter(|s| !s.drain.is_cancelled()).take(n) {
            s.hint = Some(hint.to_string());
            s.drain.cancel();
            asked += 1;
        }
        asked
    }

    /// Streams asked to move that are still open here.
    pub fn moving(&self) -> usize {
        self.streams.lock().values().filter(|s| s.drain.is_cancelled()).count()
    }

    /// Where rebalancing asked stream `id` to go: empty when it was not
    /// rebalancing that drained it (shutdown, maximum age: any node will do).
    pub fn hint(&self, id: u64) -> String {
        self.streams.lock().get(&id).and_then(|s| s.hint.clone()).unwrap_or_default()
    }

    /// The `Drain` message that asks stream `id` to move: where to (the
    /// rebalancing hint, or any node), after a delay jittered up to
    /// `jitter_ms` so a node's streams do not all move at once, and why.
    pub fn drain(&self, id: u64, shutting_down: bool, jitter_ms: u64) -> v1::Drain {
        let hint = if shutting_down { String::new() } else { self.hint(id) };
        let reason = match (shutting_down, hint.is_empty()) {
            (true, _) => "node shutting down",
            (false, true) => "reached its maximum age",
            (false, false) => "rebalancing: this node holds more than its share",
        };
        let delay_ms = rand::rng().random_range(0..=jitter_ms).min(u64::from(u32::MAX)) as u32;
        v1::Drain { hint, delay_ms, reason: reason.into() }
    }
}

/// When a stream opened now reaches `max_age_ms` (0: never), give or take
/// 10%, so that streams opened together do not all end together.
pub fn max_age_deadline(max_age_ms: u64) -> Option<Instant> {
    (max_age_ms > 0).then(|| {
        let spread = max_age_ms / 10;
        Instant::now() + Duration::from_millis(max_age_ms - spread + rand::rng().random_range(0..=2 * spread))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_picks_streams_not_yet_asked_and_tells_each_where_to_go() {
        let movers = Movers::default();
        let tokens: Vec<CancellationToken> = (0..5).map(|_| CancellationToken::new()).collect();
        for (i, t) in tokens.iter().enumerate() {
            movers.register(i as u64, t.clone());
        }
        assert_eq!(movers.ask(2, "10.0.0.2:7070"), 2);
        assert_eq!(movers.moving(), 2);
        assert_eq!(movers.ask(10, "10.0.0.3:7070"), 3, "only the three not asked yet");
        assert_eq!(tokens.iter().filter(|t| t.is_cancelled()).count(), 5);
        let hints: Vec<String> = (0..5).map(|i| movers.hint(i)).collect();
        assert_eq!(hints.iter().filter(|h| *h == "10.0.0.2:7070").count(), 2);
        assert_eq!(hints.iter().filter(|h| *h == "10.0.0.3:7070").count(), 3);
        movers.unregister(0);
        assert_eq!(movers.moving(), 4);
    }

    #[test]
    fn a_stream_drained_otherwise_gets_no_hint() {
        let movers = Movers::default();
        let (old, young) = (CancellationToken::new(), CancellationToken::new());
        movers.register(1, old.clone());
        movers.register(2, young.clone());
        movers.ask(1, "10.0.0.2:7070");
        // The other one reaches its maximum age later: its own drain.
        let other = if old.is_cancelled() { (2, &young) } else { (1, &old) };
        other.1.cancel();
        assert_eq!(movers.hint(other.0), "", "not the earlier rebalance's hint");
    }
}
