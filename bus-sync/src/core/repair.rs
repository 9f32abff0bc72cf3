//! Peers' changes, applied strictly in order: duplicates dropped, gaps
//! buffered and repaired by pulling the missing range from the origin's ring
//! or, failing that, its whole slice; beats reveal lost tails and diverged
//! copies.

use std::sync::Arc;

use registry_store::{Change, Origin};

use super::*;

impl SyncCore {
    /// The peer entry for `origin`, handling new and older incarnations.
    pub(super) fn peer_for(&mut self, origin: &Origin, now: u64, actions: &mut Vec<Action>) -> Option<Arc<str>> {
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
    pub(super) fn heard(&mut self, node: &Arc<str>, now: u64, actions: &mut Vec<Action>) {
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

    pub(super) fn accept_batch(
        &mut self,
        node: &Arc<str>,
        first_seq: u64,
        changes: Vec<Change>,
        actions: &mut Vec<Action>,
    ) {
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

    /// Starts a pull for `node` if it needs one and none is running.
    pub(super) fn maybe_pull(&mut self, node: &Arc<str>, now: u64, actions: &mut Vec<Action>) {
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
}

pub(super) fn apply_suffix(
    p: &mut Peer,
    first_seq: u64,
    changes: Vec<Change>,
    actions: &mut Vec<Action>,
    c: &mut Counters,
) {
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
pub(super) fn drain_buffer(p: &mut Peer, actions: &mut Vec<Action>, c: &mut Counters) {
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
