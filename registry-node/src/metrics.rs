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
    /// The xDS front-end's (`frontend::xds`).
    pub xds: XdsMetrics,
    /// The DNS front-end's (`frontend::dns`).
    pub dns: DnsMetrics,
}

/// The `rcode` label of `registry_dns_queries_total`, in the order of
/// [`DnsMetrics::answers`].
pub const DNS_RCODE_LABELS: [&str; 6] = ["NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "FORMERR", "NOTIMP"];

/// Counters of the DNS front-end.
#[derive(Debug, Default)]
pub struct DnsMetrics {
    /// Answers sent, by response code (in the order of [`DNS_RCODE_LABELS`]).
    pub answers: [AtomicU64; 6],
    /// Requests that were not a well-formed query: garbage, cut-off headers,
    /// responses sent to us, other opcodes, several questions.
    pub bad_requests: AtomicU64,
    /// UDP answers cut to fit the requester's size (TC set).
    pub truncated: AtomicU64,
    /// TCP connections closed for saying nothing in time.
    pub tcp_timeouts: AtomicU64,
    /// TCP connections refused because too many were open.
    pub tcp_refused: AtomicU64,
}

/// The `type` label of xDS metrics kept per resource type, in the order of
/// the front-end's `ResourceType::index`.
pub const XDS_TYPE_LABELS: [&str; 4] = ["cds", "eds", "lds", "rds"];

/// Counters of the xDS front-end.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    /// Open ADS streams.
    pub streams: AtomicU64,
    pub responses: AtomicU64,
    /// A service's resources encoded (once per revision, shared by streams).
    pub encodings: AtomicU64,
    /// NACKs by type, in the order of [`XDS_TYPE_LABELS`].
    pub nacks: [AtomicU64; 4],
    /// Requests ignored: of a type this node does not serve.
    pub unknown_types: AtomicU64,
    /// Requests ignored: answering a response a newer one overtook.
    pub stale: AtomicU64,
    /// Streams ended for a request that could not be decoded or was refused.
    pub bad_requests: AtomicU64,
    /// Instances left out of endpoints for a host that is not an IP literal.
    pub hosts_left_out: AtomicU64,
}

/// Values computed at scrape time rather than counted.
#[derive(Debug, Default)]
pub struct Gauges {
    pub instances: u64,
    pub services: u64,
    pub store_keys: u64,
    /// Admin status overrides held, of instances shown or not.
    pub status_overrides: u64,
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
        line(
            "status_overrides",
            "gauge",
            "Admin status overrides held, including those of instances not shown now.",
            gauges.status_overrides,
        );
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
        self.render_xds(&mut out, node_id);
        self.render_dns(&mut out, node_id);
        out
    }

    fn render_dns(&self, out: &mut String, node_id: &str) {
        let d = &self.dns;
        let _ = writeln!(out, "# HELP registry_dns_queries_total DNS answers sent, by response code.");
        let _ = writeln!(out, "# TYPE registry_dns_queries_total counter");
        for (label, n) in DNS_RCODE_LABELS.iter().zip(&d.answers) {
            let v = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "registry_dns_queries_total{{node=\"{node_id}\",rcode=\"{label}\"}} {v}");
        }
        write_counters(
            out,
            node_id,
            &[
                (
                    "registry_dns_bad_requests_total",
                    "DNS requests that were garbage, cut off, of another opcode or not one question.",
                    &d.bad_requests,
                ),
                ("registry_dns_truncated_total", "UDP answers cut to the requester's size (TC set).", &d.truncated),
                (
                    "registry_dns_tcp_timeouts_total",
                    "DNS TCP connections closed for sending no complete query in time.",
                    &d.tcp_timeouts,
                ),
                (
                    "registry_dns_tcp_refused_total",
                    "DNS TCP connections closed at once because too many were open.",
                    &d.tcp_refused,
                ),
            ],
        );
    }

    fn render_xds(&self, out: &mut String, node_id: &str) {
        let x = &self.xds;
        write_metric(
            out,
            "registry_xds_streams",
            "gauge",
            "Open xDS (ADS) streams.",
            node_id,
            x.streams.load(Ordering::Relaxed),
        );
        write_counters(
            out,
            node_id,
            &[
                ("registry_xds_responses_total", "DiscoveryResponses sent.", &x.responses),
                (
                    "registry_xds_encodings_total",
                    "Services' xDS resources encoded (once per revision, shared by every stream).",
                    &x.encodings,
                ),
                (
                    "registry_xds_unknown_type_requests_total",
                    "Requests of a type URL this node does not serve (ignored).",
                    &x.unknown_types,
                ),
                (
                    "registry_xds_stale_requests_total",
                    "Requests answering a response a newer one overtook (ignored).",
                    &x.stale,
                ),
                (
                    "registry_xds_bad_requests_total",
                    "Streams ended for a request that was garbage or refused.",
                    &x.bad_requests,
                ),
                (
                    "registry_xds_hosts_left_out_total",
                    "Instances left out of endpoints because their host is not an IP literal (per encoding).",
                    &x.hosts_left_out,
                ),
            ],
        );
        let _ = writeln!(out, "# HELP registry_xds_nacks_total Responses the client refused (NACK), by type.");
        let _ = writeln!(out, "# TYPE registry_xds_nacks_total counter");
        for (label, nacks) in XDS_TYPE_LABELS.iter().zip(&x.nacks) {
            let v = nacks.load(Ordering::Relaxed);
            let _ = writeln!(out, "registry_xds_nacks_total{{node=\"{node_id}\",type=\"{label}\"}} {v}");
        }
    }
}
