//! Liveness: beats out, silent peers suspect then orphaned, orphans dropped
//! after the grace unless the safety valve holds, retired incarnations, and
//! this node's own bus outages (which orphan nobody).

use std::sync::Arc;

use super::*;

impl SyncCore {
    /// The bus connection went down or came back.
    pub fn on_bus(&mut self, up: bool, now: u64) -> Vec<Action> {
        let was = self.bus_up;
        self.bus_up = up;
        let mut actions = Vec::new();
        if !up && !self.ready {
            // Discovery cannot happen without the bus: start it over when it is back.
            self.discovery_from = None;
        }
        if up && self.discovery_from.is_none() {
            self.discovery_from = Some(now);
        }
        if up && !was {
            // We were the ones cut off: give every peer a fresh start instead of
            // orphaning them for our own outage, and ask everyone to beat.
            for p in self.peers.values_mut() {
                p.last_heard = now;
            }
            actions.push(Action::PublishHello);
            actions.push(Action::PublishBeat);
            self.last_beat = Some(now);
        }
        actions
    }

    /// Periodic work: beats, liveness, orphan removal, retries, readiness.
    /// `own_live` is the number of live records in the own slice.
    pub fn on_tick(&mut self, now: u64, own_live: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.last_beat.is_none() {
            actions.push(Action::PublishHello);
        }
        if self.last_beat.is_none_or(|t| now >= t + self.cfg.beat_interval_ms) {
            self.last_beat = Some(now);
            self.hello_owed = false;
            actions.push(Action::PublishBeat);
        }
        self.pay_owed_hello(now, &mut actions);
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, (_, sent))| now >= sent + self.cfg.request_timeout_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            actions.extend(self.on_reply(id, None, now));
        }
        if self.bus_up {
            self.update_liveness(now, own_live, &mut actions);
        }
        let nodes: Vec<Arc<str>> = self.peers.keys().cloned().collect();
        for node in nodes {
            self.maybe_pull(&node, now, &mut actions);
        }
        self.check_ready(now, &mut actions);
        actions
    }

    pub(super) fn update_liveness(&mut self, now: u64, own_live: u64, actions: &mut Vec<Action>) {
        for p in self.peers.values_mut() {
            let silent = now.saturating_sub(p.last_heard);
            if p.state != PeerState::Orphaned && silent >= self.cfg.dead_after_ms {
                p.state = PeerState::Orphaned;
                p.orphaned_since = now;
                actions.push(Action::SetOrphaned { origin: p.origin.clone(), orphaned: true });
            } else if p.state == PeerState::Live && silent >= self.cfg.suspect_after_ms {
                p.state = PeerState::Suspect;
            }
        }
        // Retired incarnations are certainly gone: no safety valve for them.
        let grace = self.cfg.orphan_grace_ms;
        let (gone, kept): (Vec<Retired>, Vec<Retired>) =
            std::mem::take(&mut self.retired).into_iter().partition(|r| now >= r.since + grace);
        self.retired = kept;
        for r in gone {
            self.counters.origins_dropped += 1;
            actions.push(Action::DropOrigin { origin: r.origin });
        }
        let due = |left: bool| -> Vec<Arc<str>> {
            self.peers
                .iter()
                .filter(|(_, p)| p.state == PeerState::Orphaned && p.left == left && now >= p.orphaned_since + grace)
                .map(|(n, _)| n.clone())
                .collect()
        };
        // Peers that said farewell are certainly gone too: the safety valve
        // guards against this node's own isolation, which cannot forge one.
        let (departed, due) = (due(true), due(false));
        for node in departed {
            self.drop_peer(&node, actions);
        }
        if due.is_empty() {
            self.valve_holding = false;
            return;
        }
        let live = |p: &Peer| p.beat.as_ref().map_or(0, |b| b.live);
        let total: u64 =
            own_live + self.peers.values().map(live).sum::<u64>() + self.retired.iter().map(|r| r.live).sum::<u64>();
        let removing: u64 = due.iter().filter_map(|n| self.peers.get(n)).map(live).sum();
        if total >= self.cfg.safety_valve_min && removing as f64 > total as f64 * self.cfg.safety_valve_share {
            if !self.valve_holding {
                self.counters.safety_valve_holds += 1;
            }
            self.valve_holding = true;
            return;
        }
        self.valve_holding = false;
        for node in due {
            self.drop_peer(&node, actions);
        }
    }

    pub(super) fn drop_peer(&mut self, node: &Arc<str>, actions: &mut Vec<Action>) {
        if let Some(p) = self.peers.remove(node) {
            self.requests.retain(|_, (n, _)| n != node);
            self.counters.origins_dropped += 1;
            actions.push(Action::DropOrigin { origin: p.origin });
        }
    }
}
