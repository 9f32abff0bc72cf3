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
    /// `own_live` is the number of live records in the own slice. The
    /// safety valve counts each peer's records by its last beat; see
    /// [`SyncCore::on_tick_holding`] to count what this node holds.
    pub fn on_tick(&mut self, now: u64, own_live: u64) -> Vec<Action> {
        self.on_tick_holding(now, own_live, &|_| None)
    }

    /// [`SyncCore::on_tick`], with `held` telling how many live records this
    /// node holds of an origin's slice (`None`: none held). The safety valve
    /// weighs what removing a silent peer would take from this node's view
    /// by that, not by the peer's last beat: a beat says what the peer held
    /// when it sent it, and a peer that went silent right after its
    /// providers registered (before a beat announced them) would otherwise
    /// count as holding almost nothing, and be removed however much of the
    /// view it is.
    pub fn on_tick_holding(&mut self, now: u64, own_live: u64, held: &dyn Fn(&Origin) -> Option<u64>) -> Vec<Action> {
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
            self.update_liveness(now, own_live, held, &mut actions);
        }
        let nodes: Vec<Arc<str>> = self.peers.keys().cloned().collect();
        for node in nodes {
            self.maybe_pull(&node, now, &mut actions);
        }
        self.check_ready(now, &mut actions);
        actions
    }

    pub(super) fn update_liveness(
        &mut self,
        now: u64,
        own_live: u64,
        held: &dyn Fn(&Origin) -> Option<u64>,
        actions: &mut Vec<Action>,
    ) {
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
        let live = |p: &Peer| held(&p.origin).unwrap_or_else(|| p.beat.as_ref().map_or(0, |b| b.live));
        let retired = |r: &Retired| held(&r.origin).unwrap_or(r.live);
        let total: u64 =
            own_live + self.peers.values().map(live).sum::<u64>() + self.retired.iter().map(retired).sum::<u64>();
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

#[cfg(test)]
mod tests {
    use registry_store::Origin;

    use crate::core::{Action, SyncConfig, SyncCore};
    use crate::wire::BeatInfo;

    /// Ticks `core` until it drops a peer or `until`; the time it did.
    fn first_drop(core: &mut SyncCore, held: &dyn Fn(&Origin) -> Option<u64>, c: &Origin, until: u64) -> Option<u64> {
        let beat = BeatInfo { live: 1, entries: 1, ready: true, ..BeatInfo::default() };
        (100..until).step_by(100).find(|&t| {
            core.on_beat(c.clone(), beat.clone(), (0, 0), t);
            core.on_tick_holding(t, 2, held).iter().any(|x| matches!(x, Action::DropOrigin { .. }))
        })
    }

    /// The safety valve weighs a silent peer by what this node holds of it.
    /// Here `a` last beat before its providers registered (its beat says 0
    /// records) and went silent holding 14 of the 17 this node shows:
    /// removing it would take 82% of the view, so the valve holds. Weighed
    /// by its beat, it took nothing, and was removed.
    #[test]
    fn the_safety_valve_weighs_a_silent_peer_by_what_this_node_holds_of_it() {
        let cfg = SyncConfig {
            beat_interval_ms: 200,
            suspect_after_ms: 600,
            dead_after_ms: 1_500,
            orphan_grace_ms: 3_000,
            ..SyncConfig::default()
        };
        let (a, c) = (Origin::new("a", 1), Origin::new("c", 1));
        let start = |a: &Origin| {
            let mut core = SyncCore::new(Origin::new("b", 1), cfg.clone(), 0);
            core.on_beat(a.clone(), BeatInfo { ready: true, ..BeatInfo::default() }, (0, 0), 10);
            core
        };
        let holding = |o: &Origin| match &*o.node {
            "a" => Some(14),
            "c" => Some(1),
            _ => None,
        };
        let mut core = start(&a);
        assert_eq!(first_drop(&mut core, &holding, &c, 10_000), None);
        assert!(core.valve_holding());
        // By the beats alone (what the valve used), a was dropped at the
        // end of its grace.
        let mut core = start(&a);
        assert_eq!(first_drop(&mut core, &|_| None, &c, 10_000), Some(4_600));
    }
}
