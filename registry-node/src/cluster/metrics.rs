//! Replication metrics in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bus_sync::SyncShared;

use crate::metrics::write_metric;

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
    line(
        "forged_messages_total",
        "counter",
        "Bus messages whose origin is not the node their subject names, ignored (also counted as garbage).",
        get(&m.forged_messages),
    );
    line(
        "nats_server_errors_total",
        "counter",
        "Errors the NATS server sent this node (refused logins, publishes or subscriptions).",
        get(&m.server_errors),
    );
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
