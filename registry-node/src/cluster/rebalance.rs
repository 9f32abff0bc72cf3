//! Rebalancing: a node holding clearly more than its share of provider
//! sessions or Subscribe streams asks the excess to move to the least loaded
//! peer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bus_sync::{PeerState, PeerView, SyncShared};

use crate::readiness::Readiness;
use crate::registry::Registry;

/// How many streams of one kind this node should ask to move, and where to:
/// `None` while it holds no more than its fair share (all such streams over
/// all ready nodes) times `1 + tolerance`, plus one. `moving` streams were
/// already asked and count as gone. The hint is the least loaded peer.
pub fn rebalance_plan(own: u64, moving: u64, peers: &[(String, u64)], tolerance: f64) -> Option<(usize, String)> {
    let (least, _) = peers.iter().min_by_key(|(_, n)| *n)?;
    let total = own + peers.iter().map(|(_, n)| n).sum::<u64>();
    let fair = total as f64 / (peers.len() + 1) as f64;
    let staying = own.saturating_sub(moving) as f64;
    if staying <= fair * (1.0 + tolerance) + 1.0 {
        return None;
    }
    Some(((staying - fair).floor().max(1.0) as usize, least.clone()))
}

/// What the rebalancer compares this node with: every peer that is ready and
/// staying, as its advertised address and [sessions, subscriptions] from its
/// beats.
/// `None` while the cluster is not healthy: a peer suspect or orphaned, or
/// not heard from within `fresh_ms` (two beat intervals). A move completes
/// when the new copies reach this node, which a silent peer, a lost bus or a
/// partition that has just begun (not yet noticed) prevents. Peers that are
/// leaving or have left are neither counted nor pointed at.
pub fn balance_peers(peers: &[PeerView], fresh_ms: u64) -> Option<Vec<(String, [u64; 2])>> {
    let staying: Vec<&PeerView> = peers.iter().filter(|p| !p.retired && !p.left).collect();
    if staying.iter().any(|p| p.state != PeerState::Live || p.last_heard_age_ms > fresh_ms) {
        return None;
    }
    Some(
        staying
            .iter()
            .filter_map(|p| p.beat.as_ref().filter(|b| b.ready && !b.leaving))
            .map(|b| (b.advertise_addr.clone(), [b.sessions, b.subscriptions]))
            .collect(),
    )
}

/// Moves provider sessions and Subscribe streams off this node while it holds
/// clearly more than its share of either, so that a node added later (or
/// restarted) gets its share without anyone reconnecting on their own.
pub fn spawn_rebalancer(
    registry: Arc<Registry>,
    sync: Arc<SyncShared>,
    readiness: Readiness,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let cfg = registry.config().sessions.clone();
    let fresh_ms = 2 * registry.config().sync.beat_interval_ms;
    tokio::spawn(async move {
        if cfg.rebalance_interval_ms == 0 {
            return;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(cfg.rebalance_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !readiness.is_ready() || registry.is_draining() || !registry.bus_connected() {
                continue;
            }
            let Some(peers) = balance_peers(&sync.peers.lock(), fresh_ms) else { continue };
            let m = &registry.metrics;
            let kinds = [
                ("sessions", &registry.sessions, &m.sessions_active),
                ("subscriptions", &registry.subscriptions, &m.subscribers_active),
            ];
            for (column, (kind, movers, active)) in kinds.into_iter().enumerate() {
                let own = active.load(Ordering::Relaxed);
                let load: Vec<(String, u64)> = peers.iter().map(|(addr, n)| (addr.clone(), n[column])).collect();
                if let Some((n, hint)) = rebalance_plan(own, movers.moving() as u64, &load, cfg.rebalance_tolerance) {
                    let asked = movers.ask(n, &hint);
                    tracing::info!(kind, asked, own, peers = load.len(), %hint, "holding more than a fair share: asking some to move");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use bus_sync::{BeatInfo, PeerState, PeerView};
    use registry_store::Origin;

    use super::{balance_peers, rebalance_plan};

    fn peers(counts: &[u64]) -> Vec<(String, u64)> {
        counts.iter().enumerate().map(|(i, n)| (format!("10.0.0.{i}:7070"), *n)).collect()
    }

    #[test]
    fn a_node_over_its_share_moves_the_excess_to_the_least_loaded_peer() {
        // 600 sessions over 3 nodes after a third joined: 200 each.
        assert_eq!(rebalance_plan(400, 0, &peers(&[200, 0]), 0.2), Some((200, "10.0.0.1:7070".into())));
        assert_eq!(rebalance_plan(300, 0, &peers(&[300, 0]), 0.2), Some((100, "10.0.0.1:7070".into())));
    }

    #[test]
    fn within_tolerance_or_alone_nothing_moves() {
        assert_eq!(rebalance_plan(220, 0, &peers(&[200, 180]), 0.2), None);
        assert_eq!(rebalance_plan(500, 0, &[], 0.2), None, "alone: nowhere to go");
        assert_eq!(rebalance_plan(1, 0, &peers(&[0]), 0.2), None, "one session is no imbalance");
    }

    #[test]
    fn sessions_already_moving_are_not_asked_twice() {
        assert_eq!(rebalance_plan(400, 200, &peers(&[200, 0]), 0.2), None);
        assert_eq!(rebalance_plan(400, 100, &peers(&[200, 0]), 0.2), Some((100, "10.0.0.1:7070".into())));
    }

    fn view(node: &str, state: PeerState, age_ms: u64, leaving: bool) -> PeerView {
        PeerView {
            origin: Origin::new(node, 1),
            state,
            last_heard_age_ms: age_ms,
            beat: Some(BeatInfo {
                ready: true,
                leaving,
                advertise_addr: format!("{node}:7070"),
                sessions: 5,
                subscriptions: 2,
                ..Default::default()
            }),
            applied: 0,
            loaded: true,
            syncing: false,
            retired: false,
            left: false,
        }
    }

    #[test]
    fn only_a_healthy_freshly_heard_cluster_is_balanced() {
        let live = |n, age| view(n, PeerState::Live, age, false);
        assert_eq!(
            balance_peers(&[live("b", 100), live("c", 400)], 400),
            Some(vec![("b:7070".into(), [5, 2]), ("c:7070".into(), [5, 2])])
        );
        // c has not been heard from for more than two beats: perhaps a
        // partition nobody has noticed yet. Nothing moves.
        assert_eq!(balance_peers(&[live("b", 100), live("c", 401)], 400), None);
        assert_eq!(balance_peers(&[live("b", 100), view("c", PeerState::Suspect, 100, false)], 400), None);
    }

    #[test]
    fn leaving_and_departed_peers_are_neither_counted_nor_pointed_at() {
        let leaving = view("c", PeerState::Live, 100, true);
        let mut left = view("d", PeerState::Orphaned, 5_000, true);
        left.left = true;
        let peers = [view("b", PeerState::Live, 100, false), leaving, left];
        assert_eq!(balance_peers(&peers, 400), Some(vec![("b:7070".into(), [5, 2])]));
    }
}
