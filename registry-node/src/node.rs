//! Node lifecycle: bind, serve gRPC and HTTP, run background tasks, and shut down
//! in order (unready, drain sessions, wait for them to leave, stop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use registry_proto::frames::registry_server::RegistryServer;
use registry_proto::v1::cluster_server::ClusterServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use bus_sync::{NatsConfig, RuntimeConfig, SyncConfig, spawn_sync};
use registry_store::Origin;

use crate::api::{NodeApi, StreamSignals};
use crate::auth::{Audit, Auth, AuthMode};
use crate::cluster::{NodeReplica, REGISTRY_SERVICE};
use crate::config::{ConfigError, NodeConfig};
use crate::frontend::grpc::{ClusterService, RegistryService};
use crate::listen::{self, Alpn, Peer, TlsServer};
use crate::readiness::Readiness;
use crate::registry::Registry;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("replication: {0}")]
    Sync(#[from] bus_sync::SyncError),
    #[error("auth: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("DNS: {0}")]
    Dns(#[from] crate::frontend::dns::DnsError),
}

/// The authenticator of `[auth]` (tokens file read now). A node that serves
/// everyone while others can reach it says so at start and every hour.
fn build_auth(config: &NodeConfig) -> Result<Auth, StartError> {
    let mode = config.auth.mode.unwrap_or(AuthMode::Off);
    let tokens = config.auth.load_tokens().map_err(StartError::Auth)?;
    let exposed = !config.grpc_addr.ip().is_loopback() || !config.http_addr.ip().is_loopback();
    if mode == AuthMode::Off && exposed {
        let (grpc, http) = (config.grpc_addr, config.http_addr);
        warn!(%grpc, %http, "AUTH IS OFF on an address other hosts can reach: anyone may register, deregister and read");
        tokio::spawn(async move {
            let mut hourly = tokio::time::interval(Duration::from_secs(3600));
            hourly.tick().await;
            loop {
                hourly.tick().await;
                warn!(%grpc, %http, "auth is still off on an address other hosts can reach");
            }
        });
    }
    if mode != AuthMode::Off {
        info!(mode = ?mode, principals = tokens.len(), "auth on");
    }
    let audit = match &config.auth.audit_file {
        Some(path) => Audit::to_file(&config.node_id, path).map_err(StartError::Auth)?,
        None => Audit::log_only(&config.node_id),
    };
    Ok(Auth::new(mode, tokens).with_audit(audit))
}

/// Reloads what can change under a running node, on SIGHUP and when its
/// files change (checked every `every`): the tokens file, and the TLS
/// certificate, key and client CA. SIGHUP also reopens the audit file. New requests and connections use the new
/// material, open streams keep running, and files that do not load leave the
/// old material in force (logged and counted).
fn spawn_reloader(
    auth: Arc<Auth>,
    tls: Option<Arc<TlsServer>>,
    config: Arc<NodeConfig>,
    every: Duration,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let tokens = Watched::new(config.auth.tokens_file.iter().filter(|_| auth.mode() != AuthMode::Off).cloned());
    let certs = Watched::new(tls.iter().flat_map(|t| t.settings().files()));
    let audit_file = config.auth.audit_file.is_some();
    if tokens.files.is_empty() && certs.files.is_empty() && !audit_file {
        return None;
    }
    let (mut tokens, mut certs) = (tokens, certs);
    Some(tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "no SIGHUP handler: tokens and certificates are still reloaded when their files change");
                None
            }
        };
        let mut poll = tokio::time::interval(every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (reload_tokens, reload_tls) = tokio::select! {
                _ = stop.cancelled() => break,
                _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                    info!("SIGHUP: reloading the auth tokens and the TLS material, reopening the audit file");
                    auth.audit().reopen();
                    (true, true)
                }
                _ = poll.tick() => (tokens.changed("the tokens file"), certs.changed("a TLS file")),
            };
            if reload_tokens && !tokens.files.is_empty() {
                let _ = auth.reload(config.auth.load_tokens());
            }
            if reload_tls && let Some(tls) = &tls {
                let _ = tls.reload();
            }
        }
    }))
}

/// Files watched for changes, by modification time and length.
struct Watched {
    files: Vec<std::path::PathBuf>,
    seen: Vec<Option<(Option<SystemTime>, u64)>>,
}

impl Watched {
    fn new(files: impl Iterator<Item = std::path::PathBuf>) -> Self {
        let files: Vec<_> = files.collect();
        let seen = Self::stamps(&files);
        Self { files, seen }
    }

    fn stamps(files: &[std::path::PathBuf]) -> Vec<Option<(Option<SystemTime>, u64)>> {
        files.iter().map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()))).collect()
    }

    /// Whether a file changed since the last look.
    fn changed(&mut self, what: &str) -> bool {
        let now = Self::stamps(&self.files);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        info!("{what} changed: reloading");
        true
    }
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// The gRPC address actually bound (useful with port 0).
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The DNS address actually bound (UDP and TCP), if DNS is on.
    pub dns_addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    shutdown: CancellationToken,
    crash: CancellationToken,
    done: JoinHandle<()>,
}

impl NodeHandle {
    /// Starts the graceful shutdown and waits until the node has stopped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until the node has stopped (after a shutdown began elsewhere).
    pub async fn stopped(self) {
        let _ = self.done.await;
    }

    /// Stops at once, as a crash would: replication stops first (peers only see
    /// silence), then every stream and server ends without drain or goodbye.
    pub async fn crash(self) {
        self.crash.cancel();
        let _ = self.done.await;
    }

    /// A token that starts the graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// How often the tokens file and the TLS files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(2);

/// A new incarnation number: it only grows across restarts of a node.
fn new_incarnation() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })
}

/// Starts a node: binds its ports and serves until shut down.
pub async fn start(mut config: NodeConfig) -> Result<NodeHandle, StartError> {
    config.validate()?;
    let grpc_listener = bind("gRPC", config.grpc_addr).await?;
    let http_listener = bind("HTTP", config.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| StartError::Bind {
        what: "gRPC",
        addr: config.grpc_addr,
        source,
    })?;
    let http_addr = http_listener.local_addr().map_err(|source| StartError::Bind {
        what: "HTTP",
        addr: config.http_addr,
        source,
    })?;
    config.grpc_addr = grpc_addr;
    config.http_addr = http_addr;
    let dns_sockets = match config.dns.addr {
        Some(addr) => {
            let sockets = crate::frontend::dns::DnsSockets::bind(addr).await?;
            let bound = sockets.local_addr().map_err(|source| StartError::Bind { what: "DNS", addr, source })?;
            config.dns.addr = Some(bound);
            Some(sockets)
        }
        None => None,
    };
    let dns_addr = config.dns.addr.filter(|_| dns_sockets.is_some());
    let auth = Arc::new(build_auth(&config)?);
    let tls = match &config.tls {
        Some(settings) => {
            let tls = TlsServer::load(settings).map_err(StartError::Tls)?;
            info!(
                cert = %settings.cert_file.display(),
                client_ca = ?settings.client_ca_file.as_deref().map(std::path::Path::display),
                "TLS on the gRPC and HTTP ports"
            );
            Some(Arc::new(tls))
        }
        None => None,
    };
    let config = Arc::new(config);
    let registry = Arc::new(Registry::new(config.clone(), new_incarnation()));
    let readiness = Readiness::default();
    let signals = StreamSignals::new();
    let shutdown = CancellationToken::new();
    let crash = CancellationToken::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(registry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(registry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    // Every front-end talks to the node through this one API.
    let api = NodeApi::new(registry.clone(), readiness.clone(), signals.clone(), auth.clone());
    let registry_service = RegistryServer::new(RegistryService { api: api.clone() })
        .max_decoding_message_size(config.limits.max_message_bytes);
    let cluster_service = ClusterServer::new(ClusterService { api: api.clone() });
    let ads_service = crate::frontend::xds::AdsServer::new(api.clone());
    let accept = |listener, alpn| listen::incoming(listener, tls.clone(), alpn, signals.stop.clone());
    let grpc_incoming = accept(grpc_listener, Alpn::Grpc).map_err(|source| StartError::Bind {
        what: "gRPC",
        addr: grpc_addr,
        source,
    })?;
    let http_incoming = accept(http_listener, Alpn::Http).map_err(|source| StartError::Bind {
        what: "HTTP",
        addr: http_addr,
        source,
    })?;
    let s = &config.sessions;
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_millis(s.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(s.keepalive_timeout_ms)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(registry_service)
        .add_service(cluster_service)
        .add_service(ads_service)
        .serve_with_incoming_shutdown(grpc_incoming.into_stream(), signals.stop.clone().cancelled_owned());
    let grpc_task = tokio::spawn(async move {
        if let Err(e) = grpc.await {
            warn!(error = %e, "gRPC server ended with an error");
        }
    });
    let http = axum::serve(
        http_incoming,
        crate::frontend::http::router(api.clone(), tls.clone(), shutdown.clone())
            .into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(signals.stop.clone().cancelled_owned());
    let http_task = tokio::spawn(async move {
        if let Err(e) = http.await {
            warn!(error = %e, "HTTP server ended with an error");
        }
    });
    // DNS stops with the other listeners; it holds no stream to drain.
    let dns_task = match dns_sockets {
        Some(sockets) => {
            Some(crate::frontend::dns::spawn_dns(api.clone(), &config.dns, sockets, signals.stop.clone())?)
        }
        None => None,
    };
    let reaper_task = spawn_lease_reaper(registry.clone(), signals.stop.clone());
    let reloader = spawn_reloader(auth.clone(), tls.clone(), config.clone(), RELOAD_POLL, signals.stop.clone());

    // Replication runs until the very end, so the last removals still go out.
    let sync_stop = CancellationToken::new();
    let mut background = vec![reaper_task];
    background.extend(reloader);
    let sync = if config.clustered() {
        health.set_service_status("", ServingStatus::NotServing).await;
        health.set_service_status(REGISTRY_SERVICE, ServingStatus::NotServing).await;
        let replica =
            Arc::new(NodeReplica { registry: registry.clone(), readiness: readiness.clone(), health: health.clone() });
        let me = Origin::new(config.node_id.as_str(), registry.incarnation());
        let handle = spawn_sync(replica, me, nats_config(&config), sync_stop.clone()).await?;
        registry.attach_sync(handle.shared.clone());
        background.push(spawn_tombstone_gc(registry.clone(), signals.stop.clone()));
        background.push(crate::cluster::spawn_rebalancer(
            registry.clone(),
            handle.shared.clone(),
            readiness.clone(),
            signals.stop.clone(),
        ));
        info!(
            node = %config.node_id, grpc = %grpc_addr, http = %http_addr, cluster = %config.cluster,
            "registry node started; warming up (loading the cluster state)"
        );
        Some(handle)
    } else {
        health.set_service_status("", ServingStatus::Serving).await;
        health.set_service_status(REGISTRY_SERVICE, ServingStatus::Serving).await;
        readiness.set(true);
        info!(node = %config.node_id, grpc = %grpc_addr, http = %http_addr, "registry node ready (standalone)");
        None
    };

    let done = {
        let (registry, readiness, shutdown, crash) =
            (registry.clone(), readiness.clone(), shutdown.clone(), crash.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = crash.cancelled() => {
                    warn!("crashing on purpose: no drain, no goodbye");
                    if let Some(sync) = sync {
                        sync.abort();
                    }
                    readiness.set(false);
                    signals.stop.cancel();
                    let _ = tokio::join!(grpc_task, http_task);
                    if let Some(dns) = dns_task {
                        let _ = dns.await;
                    }
                    return;
                }
            }
            info!("shutting down: draining sessions and subscriptions");
            readiness.set(false);
            registry.set_draining();
            health.set_service_status("", ServingStatus::NotServing).await;
            health.set_service_status(REGISTRY_SERVICE, ServingStatus::NotServing).await;
            signals.drain.cancel();
            let grace = Duration::from_millis(registry.config().shutdown_grace_ms);
            let deadline = Instant::now() + grace;
            // Sessions get a drain and move; their instances stay here until
            // the new copies take them over (handovers), so that nothing this
            // node removes on its way out can overtake those copies on the bus.
            // Subscribe streams get a drain too, and close once their
            // consumers have a stream elsewhere.
            // Completion, not counters: a stream task that ends (or panics)
            // leaves the tracker, so a lost decrement cannot hold shutdown.
            signals.tasks.close();
            if tokio::time::timeout_at(deadline, signals.tasks.wait()).await.is_err() {
                let m = &registry.metrics;
                warn!(
                    streams = signals.tasks.len(),
                    sessions = m.sessions_active.load(Ordering::Relaxed),
                    handovers = m.handovers_active.load(Ordering::Relaxed),
                    subscribers = m.subscribers_active.load(Ordering::Relaxed),
                    grace_ms = grace.as_millis() as u64,
                    "grace over; ending what has not moved"
                );
            }
            signals.stop.cancel();
            let _ = tokio::join!(grpc_task, http_task);
            if let Some(dns) = dns_task {
                let _ = dns.await;
            }
            for task in background {
                let _ = task.await;
            }
            sync_stop.cancel();
            if let Some(sync) = sync {
                sync.join().await;
            }
            info!("stopped");
        })
    };
    Ok(NodeHandle { grpc_addr, http_addr, dns_addr, registry, readiness, shutdown, crash, done })
}

fn nats_config(config: &NodeConfig) -> NatsConfig {
    let y = &config.sync;
    let runtime = RuntimeConfig {
        subject_prefix: y.subject_prefix.clone(),
        cluster: config.cluster.clone(),
        advertise_addr: crate::cluster::advertise_addr(config),
        start_unix_ms: crate::registry::wall_ms(),
        page_entries: y.page_entries,
        // Cuts of the own slice served at once, and how long an idle one is kept.
        max_cuts: 4,
        cut_idle_ms: 30_000,
        sync: SyncConfig {
            beat_interval_ms: y.beat_interval_ms,
            suspect_after_ms: y.suspect_after_ms,
            dead_after_ms: y.dead_after_ms,
            orphan_grace_ms: y.orphan_grace_ms,
            // Longer than a beat interval, with room to spare: a starting
            // node whose hello's answers were lost (a route that has not
            // learned its subscription yet) still hears every peer's
            // regular beat before it decides it is alone.
            discovery_ms: (2 * y.beat_interval_ms).max(500),
            ready_timeout_ms: y.ready_timeout_ms,
            request_timeout_ms: y.request_timeout_ms,
            retry_ms: y.beat_interval_ms,
            ring_capacity: y.ring_capacity,
            safety_valve_share: y.safety_valve_share,
            max_slice_entries: y.max_slice_entries,
            ..SyncConfig::default()
        },
    };
    NatsConfig { urls: config.nats_url.clone(), security: config.sync.nats_security(), runtime }
}

/// Purges own tombstones once nothing they hide can exist any more.
fn spawn_tombstone_gc(registry: Arc<Registry>, stop: CancellationToken) -> JoinHandle<()> {
    let ttl = registry.config().tombstone_ttl_ms();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis((ttl / 10).clamp(1_000, 60_000)));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = interval.tick() => registry.gc_tombstones(ttl),
            }
        }
    })
}

/// Ends unary leases whose TTL passed, purges hidden own copies, stops
/// showing moved copies whose newer copy never came and drops status
/// overrides of instances long gone: each when it is due.
/// It sleeps until the registry's next deadline, woken early when one comes
/// nearer (a lease granted, a copy to purge), so an idle node does no work.
fn spawn_lease_reaper(registry: Arc<Registry>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let next = registry.next_deadline();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = registry.deadlines_changed().notified() => continue,
                _ = sleep_until_or_forever(next) => {}
            }
            let now = Instant::now();
            let n = registry.expire_leases(now);
            if n > 0 {
                info!(leases = n, "leases expired; their instances removed");
            }
            registry.purge_stale(now);
            registry.drop_gone_overrides(now);
        }
    })
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
