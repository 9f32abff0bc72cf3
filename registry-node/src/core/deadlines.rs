//! Own copies that a newer copy elsewhere hides. Each is purged
//! `dead_after` after it was hidden: by then every live node holds the newer
//! copy, so the purge cannot show anyone a removal. Plain data: the queue is
//! in due order because every entry gets the same delay.

use std::collections::VecDeque;
use std::time::Duration;

use registry_store::Key;
use tokio::time::Instant;

#[derive(Debug)]
pub struct StaleQueue {
    delay: Duration,
    queue: VecDeque<(Instant, Key)>,
}

impl StaleQueue {
    pub fn new(delay: Duration) -> Self {
        Self { delay, queue: VecDeque::new() }
    }

    /// Queues keys hidden at `now`.
    pub fn push(&mut self, keys: impl IntoIterator<Item = Key>, now: Instant) {
        let due = now + self.delay;
        self.queue.extend(keys.into_iter().map(|k| (due, k)));
    }

    /// Takes the keys due at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<Key> {
        let mut keys = Vec::new();
        while self.queue.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, key)) = self.queue.pop_front() {
                keys.push(key);
            }
        }
        keys
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use registry_store::InstanceKey;

    use super::*;

    fn key(id: &str) -> Key {
        Key::Instance(InstanceKey::new("default", "orders", id))
    }

    #[test]
    fn hidden_copies_are_due_after_the_delay_in_order() {
        let t0 = Instant::now();
        let d = Duration::from_secs(4);
        let mut q = StaleQueue::new(d);
        q.push([key("a"), key("b")], t0);
        q.push([key("c")], t0 + Duration::from_secs(1));
        assert_eq!(q.next_deadline(), Some(t0 + d));
        assert!(q.due(t0 + d - Duration::from_millis(1)).is_empty());
        assert_eq!(q.due(t0 + d), vec![key("a"), key("b")]);
        assert_eq!(q.next_deadline(), Some(t0 + d + Duration::from_secs(1)));
        assert_eq!(q.due(t0 + Duration::from_secs(60)), vec![key("c")]);
        assert!(q.is_empty() && q.next_deadline().is_none());
    }
}
