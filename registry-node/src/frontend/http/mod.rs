//! HTTP endpoints for operators: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive), `/readyz` (the node serves reads), and read-only
//! JSON for people and scripts: `/admin/node` (this node at a glance) and
//! `/admin/members` (the `Cluster.Members` answer, same fields, plus `lag`).
//!
//! `/healthz` and `/readyz` are always open (for probes), `/metrics` too
//! unless `auth.protect_metrics`; `/admin/*` needs an admin grant when auth
//! is on. The JSON API is under `/v1/` ([`json`]) and the web console under
//! `/ui/` (`console`; `/` redirects there).

mod console;
pub mod json;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use registry_proto::v1;
use serde::Serialize;

use tokio_util::sync::CancellationToken;

use crate::api::NodeApi;
use crate::auth::audit::AuditMetrics;
use crate::auth::{AuthMetrics, Role};
use crate::listen::Peer;
use crate::listen::TlsServer;
use crate::listen::tls::TlsMetrics;
use crate::readiness::Readiness;
use crate::registry::{Registry, RegistryError};

#[derive(Clone)]
struct Http {
    registry: Arc<Registry>,
    readiness: Readiness,
    api: NodeApi,
    tls: Option<Arc<TlsServer>>,
    shutdown: CancellationToken,
    /// Server-sent events rendered lately, shared by every watch stream.
    sse: Arc<json::SseRenders>,
}

/// The HTTP port's routes. `shutdown` starts the node's graceful shutdown
/// (`POST /v1/node/drain`).
pub fn router(api: NodeApi, tls: Option<Arc<TlsServer>>, shutdown: CancellationToken) -> Router {
    let (registry, readiness) = (api.registry().clone(), api.readiness().clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/admin/node", get(admin_node))
        .route("/admin/members", get(admin_members))
        .merge(json::routes())
        .merge(console::routes())
        .with_state(Http { registry, readiness, api: api.clone(), tls, shutdown, sse: Default::default() })
        .merge(crate::frontend::eureka::router(api))
}

/// The same answers as gRPC: 401 for a missing or unknown credential, 403
/// for a missing grant, with the reason as the body.
fn refused(e: &RegistryError) -> Response {
    let status = match e {
        RegistryError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::FORBIDDEN,
    };
    let mut response = (status, format!("{e}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Requires an admin grant (in any namespace) of the request's caller (its
/// bearer token or client certificate). `action` names the request in the
/// audit trail; `None` keeps it out (a protected /metrics, scraped every
/// few seconds, is not an admin action).
fn require_admin(h: &Http, headers: &HeaderMap, peer: &Peer, action: Option<&str>) -> Result<(), RegistryError> {
    let header = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let caller = h.api.authenticate(header, peer)?;
    match action {
        Some(action) => h.api.check_admin(&caller, action),
        None => Ok(h.api.auth().check_anywhere(&caller, Role::Admin)?),
    }
}

async fn metrics(State(h): State<Http>, ConnectInfo(peer): ConnectInfo<Peer>, headers: HeaderMap) -> Response {
    if h.registry.config().auth.protect_metrics
        && let Err(e) = require_admin(&h, &headers, &peer, None)
    {
        return refused(&e);
    }
    let gauges = h.registry.gauges(h.readiness.is_ready());
    let mut body = h.registry.metrics.render(h.registry.node_id(), &gauges);
    if let Some(sync) = h.registry.sync_state() {
        crate::cluster::render_metrics(&mut body, h.registry.node_id(), sync);
    }
    render_auth_metrics(&mut body, h.registry.node_id(), &h.api.auth().metrics);
    render_audit_metrics(&mut body, h.registry.node_id(), &h.api.auth().audit().metrics);
    if let Some(tls) = &h.tls {
        render_tls_metrics(&mut body, h.registry.node_id(), &tls.metrics);
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn render_audit_metrics(out: &mut String, node_id: &str, m: &AuditMetrics) {
    crate::metrics::write_counters(
        out,
        node_id,
        &[
            (
                "registry_audit_lines_total",
                "Audit trail lines (admin actions, denied writes, ownership refusals).",
                &m.lines,
            ),
            (
                "registry_audit_dropped_total",
                "Audit lines not written to auth.audit_file because its writer fell behind (they are still logged).",
                &m.dropped,
            ),
            ("registry_audit_write_errors_total", "Failed writes to auth.audit_file.", &m.write_errors),
        ],
    );
}

fn render_tls_metrics(out: &mut String, node_id: &str, m: &TlsMetrics) {
    crate::metrics::write_counters(
        out,
        node_id,
        &[
            (
                "registry_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out (wrong CA, bad or missing client certificate, plaintext).",
                &m.handshake_failures,
            ),
            ("registry_tls_reloads_total", "TLS material loaded after the start.", &m.reloads),
            (
                "registry_tls_reload_failures_total",
                "TLS reloads refused (the old material stays in force).",
                &m.reload_failures,
            ),
        ],
    );
    let not_after = m.cert_not_after.load(Ordering::Relaxed).max(0) as u64;
    crate::metrics::write_metric(
        out,
        "registry_tls_cert_not_after_seconds",
        "gauge",
        "When the server certificate in force expires (Unix seconds).",
        node_id,
        not_after,
    );
}

fn render_auth_metrics(out: &mut String, node_id: &str, m: &AuthMetrics) {
    use std::fmt::Write as _;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP registry_auth_failures_total Requests whose credential was missing, malformed or unknown."
    );
    let _ = writeln!(out, "# TYPE registry_auth_failures_total counter");
    for (reason, counter) in [
        ("missing", &m.missing),
        ("malformed", &m.malformed),
        ("unknown", &m.unknown),
        ("unknown_certificate", &m.unknown_certificate),
    ] {
        let _ =
            writeln!(out, "registry_auth_failures_total{{node=\"{node_id}\",reason=\"{reason}\"}} {}", get(counter));
    }
    crate::metrics::write_counters(
        out,
        node_id,
        &[
            (
                "registry_auth_reloads_total",
                "Token sets loaded after the start (SIGHUP or a changed tokens file).",
                &m.reloads,
            ),
            (
                "registry_auth_reload_failures_total",
                "Token reloads refused (the old tokens stay in force).",
                &m.reload_failures,
            ),
            (
                "registry_auth_denied_total",
                "Requests of a known principal without the grant (in warn mode: that would have been denied).",
                &m.denied,
            ),
        ],
    );
}

async fn readyz(State(h): State<Http>) -> impl IntoResponse {
    if h.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if h.registry.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming up\n")
    }
}

/// `GET /admin/node`: what an operator asks first about one node.
#[derive(Debug, Serialize)]
struct NodeStatus {
    node_id: String,
    cluster: String,
    incarnation: u64,
    advertise_addr: String,
    version: &'static str,
    /// Replicating over NATS (false: standalone).
    clustered: bool,
    /// Serves reads (`/readyz` 200).
    ready: bool,
    /// Shutting down: sessions were told to move elsewhere.
    draining: bool,
    /// Connected to NATS; null on a standalone node.
    bus_connected: Option<bool>,
    /// Part of what this node serves is orphaned, or it is cut off from NATS.
    degraded: bool,
    /// Time since the least recently heard peer was heard.
    oldest_origin_age_ms: u64,
    /// Orphan removal held back by the safety valve; null on a standalone node.
    safety_valve_holding: Option<bool>,
    /// Sequence number of this node's own last change.
    own_seq: u64,
    /// Live records this node owns.
    own_records: u64,
    instances: u64,
    services: u64,
    store_keys: u64,
    sessions: u64,
    leases: u64,
    subscribers: u64,
}

/// `GET /admin/members`: `Cluster.Members` as JSON.
#[derive(Debug, Serialize)]
struct MembersStatus {
    cluster: String,
    /// The node that answered (its own entry has state "local").
    node_id: String,
    members: Vec<MemberStatus>,
}

/// One `registry.v1.Member`, field for field, plus what an operator computes
/// from it every time: `lag` and `in_sync`.
#[derive(Debug, Serialize)]
struct MemberStatus {
    node_id: String,
    incarnation: u64,
    /// local | live | suspect | orphaned
    state: String,
    advertise_addr: String,
    last_beat_age_ms: u64,
    origin_seq: u64,
    applied_seq: u64,
    /// Changes the origin issued that this node has not applied.
    lag: u64,
    record_count: u64,
    digest_match: bool,
    /// No lag and the digests match.
    in_sync: bool,
    ready: bool,
}

impl From<v1::Member> for MemberStatus {
    fn from(m: v1::Member) -> Self {
        let state = m.state().as_str_name().trim_start_matches("MEMBER_STATE_").to_ascii_lowercase();
        let lag = m.origin_seq.saturating_sub(m.applied_seq);
        Self {
            state,
            lag,
            in_sync: m.digest_match && lag == 0,
            node_id: m.node_id,
            incarnation: m.incarnation,
            advertise_addr: m.advertise_addr,
            last_beat_age_ms: m.last_beat_age_ms,
            origin_seq: m.origin_seq,
            applied_seq: m.applied_seq,
            record_count: m.record_count,
            digest_match: m.digest_match,
            ready: m.ready,
        }
    }
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            ([(CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode: {e}\n")).into_response(),
    }
}

async fn admin_node(State(h): State<Http>, ConnectInfo(peer): ConnectInfo<Peer>, headers: HeaderMap) -> Response {
    if let Err(e) = require_admin(&h, &headers, &peer, Some("GET /admin/node")) {
        return refused(&e);
    }
    let r = &h.registry;
    let config = r.config();
    let gauges = r.gauges(h.readiness.is_ready());
    let own = r.own_stats();
    let freshness = r.freshness();
    let sync = r.sync_state();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    json(&NodeStatus {
        node_id: r.node_id().to_string(),
        cluster: config.cluster.clone(),
        incarnation: r.incarnation(),
        advertise_addr: crate::cluster::advertise_addr(config),
        version: env!("CARGO_PKG_VERSION"),
        clustered: config.clustered(),
        ready: gauges.ready,
        draining: r.is_draining(),
        bus_connected: config.clustered().then(|| r.bus_connected()),
        degraded: freshness.degraded,
        oldest_origin_age_ms: freshness.oldest_origin_age_ms,
        safety_valve_holding: sync.map(|s| s.metrics.valve_holding.load(Ordering::Relaxed)),
        own_seq: own.seq,
        own_records: own.live,
        instances: gauges.instances,
        services: gauges.services,
        store_keys: gauges.store_keys,
        sessions: get(&r.metrics.sessions_active),
        leases: get(&r.metrics.leases_active),
        subscribers: get(&r.metrics.subscribers_active),
    })
}

async fn admin_members(State(h): State<Http>, ConnectInfo(peer): ConnectInfo<Peer>, headers: HeaderMap) -> Response {
    if let Err(e) = require_admin(&h, &headers, &peer, Some("GET /admin/members")) {
        return refused(&e);
    }
    let answer = crate::cluster::members(&h.registry, h.readiness.is_ready());
    json(&MembersStatus {
        cluster: answer.cluster,
        node_id: h.registry.node_id().to_string(),
        members: answer.members.into_iter().map(MemberStatus::from).collect(),
    })
}
