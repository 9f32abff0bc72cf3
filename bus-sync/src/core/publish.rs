//! The own slice going out: local changes numbered into batches, and the
//! ring of recent changes that peers pull missing ranges from.

use registry_store::Change;

use super::*;

impl SyncCore {
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

    pub(super) fn push_batch(&mut self, actions: &mut Vec<Action>, first_seq: u64, changes: Vec<Change>) {
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
}
