//! Long-lived streams (provider sessions, Subscribe streams) that the node can
//! ask to move to another node while it keeps running: each has its own drain
//! signal, a child of the node's, so shutdown drains them all and rebalancing
//! picks a few.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// One kind of movable stream, by id.
#[derive(Debug, Default)]
pub struct Movers {
    drains: Mutex<HashMap<u64, CancellationToken>>,
    /// Where streams asked to move by rebalancing should go (a peer's
    /// advertised address).
    hint: Mutex<String>,
}

impl Movers {
    /// Tracks stream `id`, asked to move when `drain` is cancelled.
    pub fn register(&self, id: u64, drain: CancellationToken) {
        self.drains.lock().insert(id, drain);
    }

    pub fn unregister(&self, id: u64) {
        self.drains.lock().remove(&id);
    }

    /// Asks up to `n` streams not yet asked to move elsewhere, pointing them
    /// at `hint`; returns how many were asked.
    pub fn ask(&self, n: usize, hint: &str) -> usize {
        *self.hint.lock() = hint.to_string();
        let drains = self.drains.lock();
        let mut asked = 0;
        for token in drains.values().filter(|t| !t.is_cancelled()).take(n) {
            token.cancel();
            asked += 1;
        }
        asked
    }

    /// Streams asked to move that are still open here.
    pub fn moving(&self) -> usize {
        self.drains.lock().values().filter(|t| t.is_cancelled()).count()
    }

    /// Where a stream asked to move by rebalancing should go.
    pub fn hint(&self) -> String {
        self.hint.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_picks_streams_not_yet_asked_and_keeps_the_hint() {
        let movers = Movers::default();
        let tokens: Vec<CancellationToken> = (0..5).map(|_| CancellationToken::new()).collect();
        for (i, t) in tokens.iter().enumerate() {
            movers.register(i as u64, t.clone());
        }
        assert_eq!(movers.ask(2, "10.0.0.2:7070"), 2);
        assert_eq!(movers.moving(), 2);
        assert_eq!(movers.hint(), "10.0.0.2:7070");
        assert_eq!(movers.ask(10, "10.0.0.3:7070"), 3, "only the three not asked yet");
        assert_eq!(tokens.iter().filter(|t| t.is_cancelled()).count(), 5);
        movers.unregister(0);
        assert_eq!(movers.moving(), 4);
    }
}
