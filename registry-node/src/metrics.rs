//! Counters and gauges of the node, rendered in the Prometheus text format.
//!
//! Plain atomics: cheap enough for hot paths, no registry or macro machinery.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions_active: AtomicU64,
    /// Ended sessions (moved or broken) whose instances wait to be taken over.
    pub handovers_active: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub leases_active: AtomicU64,
    pub subscribers_active: AtomicU64,
    pub registrations: AtomicU64,
    pub deregistrations: AtomicU64,
    pub expirations: AtomicU64,
    pub rejections: AtomicU64,
    pub pushes: AtomicU64,
    pub subscriber_resyncs: AtomicU64,
    /// Eureka requests refused as bad input (400).
    pub eureka_bad_requests: AtomicU64,
    /// Eureka renewals that adopted an instance this node held no lease for
    /// (its client failed over from another node).
    pub eureka_adoptions: AtomicU64,
    /// Eureka full registry fetches (`GET /eureka/apps`) and delta fetches:
    /// a client falls back to full fetches when a delta does not add up.
    pub eureka_full_fetches: AtomicU64,
    pub eureka_delta_fetches: AtomicU64,
}

/// Values computed at scrape time rather than counted.
#[derive(Debug, Default)]
pub struct Gauges {
    pub instances: u64,
    pub services: u64,
    pub store_keys: u64,
    pub ready: bool,
}

/// Writes one metric with its HELP and TYPE lines, labelled with the node.
pub fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, node_id: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name}{{node=\"{node_id}\"}} {value}");
}

/// Writes counters with their HELP and TYPE lines: (name, help, counter).
pub fn write_counters(out: &mut String, node_id: &str, counters: &[(&str, &str, &AtomicU64)]) {
    for (name, help, counter) in counters {
        write_metric(out, name, "counter", help, node_id, counter.load(Ordering::Relaxed));
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn render(&self, node_id: &str, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, kind: &str, help: &str, value: u64| {
            write_metric(&mut out, &format!("registry_{name}"), kind, help, node_id, value)
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        line("ready", "gauge", "1 when the node serves reads.", u64::from(gauges.ready));
        line("instances", "gauge", "Instances in the merged view.", gauges.instances);
        line("services", "gauge", "Services with at least one instance.", gauges.services);
        line("store_keys", "gauge", "Keys held in the store, tombstones included.", gauges.store_keys);
        line("sessions", "gauge", "Open Register streams.", get(&self.sessions_active));
        line("sessions_opened_total", "counter", "Register streams opened.", get(&self.sessions_opened));
        line(
            "handovers",
            "gauge",
            "Ended sessions whose instances are kept until taken over elsewhere or the reconnect grace ends.",
            get(&self.handovers_active),
        );
        line("leases", "gauge", "Live unary leases.", get(&self.leases_active));
        line("subscribers", "gauge", "Open Subscribe streams.", get(&self.subscribers_active));
        line("registrations_total", "counter", "Accepted instance upserts.", get(&self.registrations));
        line("deregistrations_total", "counter", "Instances removed by their provider.", get(&self.deregistrations));
        line(
            "expirations_total",
            "counter",
            "Instances removed because their session or lease ended without goodbye.",
            get(&self.expirations),
        );
        line("rejections_total", "counter", "Requests refused for invalid input or limits.", get(&self.rejections));
        line("pushes_total", "counter", "Snapshots and deltas sent to subscribers.", get(&self.pushes));
        line(
            "subscriber_resyncs_total",
            "counter",
            "Times a subscriber fell behind and was sent a fresh snapshot.",
            get(&self.subscriber_resyncs),
        );
        line(
            "eureka_bad_requests_total",
            "counter",
            "Eureka API requests refused as bad input (400).",
            get(&self.eureka_bad_requests),
        );
        line(
            "eureka_adoptions_total",
            "counter",
            "Eureka renewals of an instance registered through another node, taken over here.",
            get(&self.eureka_adoptions),
        );
        line(
            "eureka_full_fetches_total",
            "counter",
            "Eureka full registry fetches (GET /eureka/apps).",
            get(&self.eureka_full_fetches),
        );
        line(
            "eureka_delta_fetches_total",
            "counter",
            "Eureka delta fetches (GET /eureka/apps/delta).",
            get(&self.eureka_delta_fetches),
        );
        out
    }
}
