//! Wiring of replication into the node: the [`Replica`] the sync runtime works
//! against, the `Cluster.Members` view and the replication metrics.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bus_sync::{PeerState, PeerView, Replica, SliceCut, SyncShared};
use registry_proto::v1;
use registry_store::{Change, Entry, Key, Origin, SliceStats};
use tokio::sync::Notify;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::NodeConfig;
use crate::metrics::write_metric;
use crate::readiness::Readiness;
use crate::registry::Registry;

/// The gRPC service name health reports on besides "".
pub const REGISTRY_SERVICE: &str = "registry.v1.Registry";

/// The node as replication sees it.
pub struct NodeReplica {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub health: HealthReporter,
}

impl Replica for NodeReplica {
    fn take_local_changes(&self) -> Vec<(u64, Change)> {
        self.registry.take_outbox()
    }

    fn beat_snapshot(&self) -> (Vec<(u64, Change)>, SliceStats) {
        self.registry.outbox_and_stats()
    }

    fn own_cut(&self) -> SliceCut {
        self.registry.own_cut()
    }

    fn copy_stats(&self, origin: &Origin) -> (u64, u64) {
        self.registry.copy_stats(origin)
    }

    fn apply(&self, origin: &Origin, _first_seq: u64, changes: Vec<Change>) {
        self.registry.apply_remote(origin, changes);
    }

    fn set_unsettled_writers(&self, writers: Vec<u64>) {
        self.registry.set_unsettled_writers(writers);
    }

    fn replace_slice(&self, origin: &Origin, _cut_seq: u64, entries: Vec<(Key, Entry)>) {
        self.registry.replace_slice(origin, entries);
    }

    fn load_entries(&self, origin: &Origin, entries: Vec<(Key, Entry)>) {
        let changes = entries.into_iter().map(|(key, entry)| Change::Put { key, entry }).collect();
        self.registry.apply_remote(origin, changes);
    }

    fn drop_origin(&self, origin: &Origin) {
        self.registry.drop_origin(origin);
    }

    fn set_orphaned(&self, origin: &Origin, orphaned: bool) {
        self.registry.set_orphaned(origin, orphaned);
    }

    fn session_count(&self) -> u64 {
        self.registry.metrics.sessions_active.load(Ordering::Relaxed)
    }

    fn subscription_count(&self) -> u64 {
        self.registry.metrics.subscribers_active.load(Ordering::Relaxed)
    }

    fn leaving(&self) -> bool {
        self.registry.is_draining()
    }

    fn own_live(&self) -> u64 {
        self.registry.own_live()
    }

    fn set_ready(&self, _timed_out: bool) {
        if self.registry.is_draining() {
            return;
        }
        self.readiness.set(true);
        let health = self.health.clone();
        tokio::spawn(async move {
            health.set_service_status("", ServingStatus::Serving).await;
            health.set_service_status(REGISTRY_SERVICE, ServingStatus::Serving).await;
        });
    }

    fn set_bus_connected(&self, connected: bool) {
        self.registry.set_bus_connected(connected);
    }

    fn local_changed(&self) -> &Notify {
        self.registry.local_changed()
    }
}

fn member_state(p: &PeerView) -> v1::MemberState {
    let leaving = p.beat.as_ref().is_some_and(|b| b.leaving);
    match p.state {
        _ if p.left => v1::MemberState::Left,
        PeerState::Live | PeerState::Suspect if leaving => v1::MemberState::Leaving,
        PeerState::Live => v1::MemberState::Live,
        PeerState::Suspect => v1::MemberState::Suspect,
        PeerState::Orphaned => v1::MemberState::Orphaned,
    }
}

/// This node followed by every peer origin it knows: what `Cluster.Members`
/// answers and `/admin/members` shows. A standalone node is a cluster of one.
pub fn members(registry: &Registry, ready: bool) -> v1::MembersResponse {
    let stats = registry.own_stats();
    let config = registry.config();
    let me = v1::Member {
        node_id: registry.node_id().to_string(),
        incarnation: registry.incarnation(),
        state: v1::MemberState::Local as i32,
        advertise_addr: advertise_addr(config),
        last_beat_age_ms: 0,
        origin_seq: stats.seq,
        applied_seq: stats.seq,
        record_count: stats.live,
        digest_match: true,
        ready,
    };
    let mut members = vec![me];
    if let Some(sync) = registry.sync_state() {
        members.extend(peer_members(registry, sync));
    }
    v1::MembersResponse { members, cluster: config.cluster.clone() }
}

/// The address peers and operators are told to reach this node at.
pub fn advertise_addr(config: &NodeConfig) -> String {
    config.sync.advertise_addr.clone().unwrap_or_else(|| config.grpc_addr.to_string())
}

/// Every peer origin this node knows, as `Cluster.Members` reports them.
pub fn peer_members(registry: &Registry, sync: &SyncShared) -> Vec<v1::Member> {
    // Copy the list out first: `copy_stats` takes the registry's write lock, and
    // the writer takes the peers lock (for freshness) while holding it.
    let peers = sync.peers.lock().clone();
    peers
        .iter()
        .map(|p| {
            let beat = p.beat.clone().unwrap_or_default();
            let (digest, entries) = registry.copy_stats(&p.origin);
            v1::Member {
                node_id: p.origin.node.to_string(),
                incarnation: p.origin.incarnation,
                state: member_state(p) as i32,
                advertise_addr: beat.advertise_addr.clone(),
                last_beat_age_ms: p.last_heard_age_ms,
                origin_seq: beat.seq,
                applied_seq: p.applied,
                record_count: beat.live,
                digest_match: p.beat.is_some()
                    && p.applied == beat.seq
                    && (digest, entries) == (beat.digest, beat.entries),
                ready: beat.ready,
            }
        })
        .collect()
}

/// Replication metrics in the Prometheus text format.
pub fn render_metrics(out: &mut String, node_id: &str, sync: &SyncShared) {
    let c = sync.core.lock().clone();
    let m = &sync.metrics;
    let mut line = |name: &str, kind: &str, help: &str, value: u64| {
        write_metric(out, &format!("registry_sync_{name}"), kind, help, node_id, value)
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    line("bus_connected", "gauge", "1 while connected to NATS.", u64::from(m.bus_connected.load(Ordering::Relaxed)));
    line(
        "safety_valve_holding",
        "gauge",
        "1 while orphan removal is held back by the safety valve.",
        u64::from(m.valve_holding.load(Ordering::Relaxed)),
    );
    line("changes_published_total", "counter", "Own changes published.", c.changes_published);
    line("batches_published_total", "counter", "Change batches published.", c.batches_published);
    line("changes_applied_total", "counter", "Peer changes applied.", c.changes_applied);
    line("batches_applied_total", "counter", "Peer change batches applied.", c.batches_applied);
    line("duplicates_dropped_total", "counter", "Duplicate batches dropped.", c.duplicates_dropped);
    line("gaps_total", "counter", "Sequence gaps detected.", c.gaps);
    line("range_pulls_total", "counter", "Missing ranges pulled from a peer's ring.", c.range_pulls);
    line("slice_pulls_total", "counter", "Whole slices pulled from a peer.", c.slice_pulls);
    line(
        "digest_mismatches_total",
        "counter",
        "Copies found diverged from their origin (should stay 0).",
        c.digest_mismatches,
    );
    line("stale_dropped_total", "counter", "Messages of older incarnations dropped.", c.stale_dropped);
    line("invalid_total", "counter", "Protocol-level inconsistencies seen in peers' messages.", c.invalid);
    line(
        "buffer_overflows_total",
        "counter",
        "Batches not buffered during a repair (re-pulled later).",
        c.buffer_overflows,
    );
    line("requests_failed_total", "counter", "Sync requests that failed or timed out.", c.requests_failed);
    line("origins_dropped_total", "counter", "Peer slices removed after their grace.", c.origins_dropped);
    line("safety_valve_holds_total", "counter", "Times the safety valve started holding.", c.safety_valve_holds);
    line("garbage_messages_total", "counter", "Undecodable or forged bus messages ignored.", get(&m.garbage_messages));
    line("publish_errors_total", "counter", "Publishes that failed (repaired from beats).", get(&m.publish_errors));
    line(
        "slow_consumer_events_total",
        "counter",
        "NATS slow-consumer drops (repaired from beats).",
        get(&m.slow_consumer_events),
    );
    line("disconnects_total", "counter", "Times the NATS connection was lost.", get(&m.disconnects));
    line(
        "beats_out_of_step_total",
        "counter",
        "Beats whose seq was not that of the changes published before them (should stay 0).",
        get(&m.beats_out_of_step),
    );
    let _ = writeln!(out, "# HELP registry_sync_peer_lag Changes a peer issued that this node has not applied.");
    let _ = writeln!(out, "# TYPE registry_sync_peer_lag gauge");
    for p in sync.peers.lock().iter().filter(|p| !p.retired) {
        let lag = p.beat.as_ref().map_or(0, |b| b.seq.saturating_sub(p.applied));
        let _ = writeln!(out, "registry_sync_peer_lag{{node=\"{node_id}\",peer=\"{}\"}} {lag}", p.origin.node);
    }
}

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
