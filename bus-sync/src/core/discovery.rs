//! Discovery and readiness: hellos, the membership digest in beats, and the
//! rule that turns a starting node ready once it has heard from and caught up
//! with every live peer.

use registry_store::Origin;

use super::*;

impl SyncCore {
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
    pub(super) fn vouched(&self) -> bool {
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
    pub(super) fn peers_know_more(&self) -> bool {
        let (mine, without_me) = self.my_digests();
        self.peers
            .values()
            .any(|p| p.beat.as_ref().is_some_and(|b| b.members != 0 && b.members != mine && b.members != without_me))
    }

    /// The membership digest, and the same without this node.
    pub(super) fn my_digests(&self) -> (u64, u64) {
        let mine = self.members_digest();
        (mine, mine ^ stable_hash(self.me.node.as_bytes()))
    }

    /// Another node started: answer with a beat at once, or, within 100 ms
    /// of the last answer, as soon as those 100 ms are over (one beat answers
    /// every hello of a burst; none goes unanswered). Our own hello, echoed
    /// back by the bus, needs no answer.
    pub fn on_hello(&mut self, origin: Origin, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(node) = self.peer_for(&origin, now, &mut actions) else { return actions };
        self.heard(&node, now, &mut actions);
        if self.last_hello_answer.is_none_or(|t| now >= t + 100) {
            self.answer_hello(now, &mut actions);
        } else {
            self.hello_owed = true;
        }
        actions
    }

    fn answer_hello(&mut self, now: u64, actions: &mut Vec<Action>) {
        self.last_hello_answer = Some(now);
        self.last_beat = Some(now);
        self.hello_owed = false;
        actions.push(Action::PublishBeat);
    }

    /// The beat owed to hellos that came too soon after the last answer.
    pub(super) fn pay_owed_hello(&mut self, now: u64, actions: &mut Vec<Action>) {
        if self.hello_owed && self.last_hello_answer.is_none_or(|t| now >= t + 100) {
            self.answer_hello(now, actions);
        }
    }

    /// Turns ready once caught up with every live peer and done discovering
    /// (or at the ready timeout). Checked on ticks, and as soon as a beat or a
    /// reply may have completed it, rather than up to a tick later.
    pub(super) fn check_ready(&mut self, now: u64, actions: &mut Vec<Action>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Action, SyncConfig, SyncCore};

    fn beats(actions: &[Action]) -> usize {
        actions.iter().filter(|a| matches!(a, Action::PublishBeat)).count()
    }

    #[test]
    fn every_hello_of_a_burst_is_answered_and_our_own_echo_is_not() {
        let me = Origin::new("a", 1);
        let mut core = SyncCore::new(me.clone(), SyncConfig::default(), 0);
        core.on_tick(0, 0);
        assert_eq!(beats(&core.on_hello(me.clone(), 10)), 0, "our own hello, echoed by the bus");
        assert_eq!(beats(&core.on_hello(Origin::new("b", 1), 20)), 1, "answered at once");
        // Another node starts 30 ms later: owed, not dropped.
        assert_eq!(beats(&core.on_hello(Origin::new("c", 1), 50)), 0);
        assert_eq!(beats(&core.on_tick(100, 0)), 0, "not before 100 ms after the last answer");
        assert_eq!(beats(&core.on_tick(120, 0)), 1, "then the owed beat");
        assert_eq!(beats(&core.on_tick(370, 0)), 0, "owed once");
    }
}
