//! The gRPC services: `registry.v1.Registry` and `registry.v1.Cluster`, and the
//! one place where registry errors become gRPC statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use registry_proto::frames::registry_server;
use registry_proto::{GetServiceFrame, SubscribeFrame, v1};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::registry::{Registry, RegistryError, display_key, wall_ms};
use crate::session::run_session;
use crate::validate::{self, Subscription};
use crate::views::{StreamItem, Subscriber};

/// Maps a registry error to the status a client sees.
pub fn status_of(e: &RegistryError) -> Status {
    match e {
        RegistryError::Invalid(v) => Status::invalid_argument(v.to_string()),
        RegistryError::TooManyInstances { .. } => Status::resource_exhausted(e.to_string()),
        RegistryError::NotOwned(_) | RegistryError::LeaseNotFound(_) => Status::not_found(e.to_string()),
        RegistryError::Draining => Status::unavailable(e.to_string()),
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        status_of(&e)
    }
}

/// Shutdown signals shared by every stream handler.
#[derive(Clone, Debug)]
pub struct StreamSignals {
    /// Asks sessions to move elsewhere.
    pub drain: CancellationToken,
    /// Ends every stream now.
    pub stop: CancellationToken,
    /// Every stream task (sessions with their handovers, Subscribe streams):
    /// shutdown waits for them to end, a panicked one included.
    pub tasks: TaskTracker,
}

/// `registry.v1.Registry`.
#[derive(Clone, Debug)]
pub struct RegistryApi {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub signals: StreamSignals,
}

impl RegistryApi {
    fn invalid(&self, e: validate::ValidationError) -> Status {
        Metrics::inc(&self.registry.metrics.rejections);
        Status::invalid_argument(e.to_string())
    }

    fn check_ready(&self) -> Result<(), Status> {
        if self.readiness.is_ready() {
            Ok(())
        } else {
            Err(Status::unavailable("node is warming up: it has not loaded the registry yet; retry shortly"))
        }
    }

    fn lease_ttl(&self, ttl_ms: u32) -> Result<Duration, Status> {
        let s = &self.registry.config().sessions;
        let ttl = match ttl_ms {
            0 => s.default_lease_ttl_ms,
            ms => u64::from(ms),
        };
        if ttl < s.min_lease_ttl_ms || ttl > s.max_lease_ttl_ms {
            Metrics::inc(&self.registry.metrics.rejections);
            return Err(Status::invalid_argument(format!(
                "ttl_ms: {ttl} is outside {}..={} (sessions.min_lease_ttl_ms..=sessions.max_lease_ttl_ms)",
                s.min_lease_ttl_ms, s.max_lease_ttl_ms
            )));
        }
        Ok(Duration::from_millis(ttl))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl registry_server::Registry for RegistryApi {
    type RegisterStream = BoxStream<v1::RegisterResponse>;
    type SubscribeStream = BoxStream<SubscribeFrame>;

    async fn register(
        &self,
        request: Request<Streaming<v1::RegisterRequest>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        self.registry.check_accepting()?;
        let (tx, rx) = mpsc::channel(64);
        let registry = self.registry.clone();
        let signals = self.signals.clone();
        signals.tasks.spawn(run_session(registry, request.into_inner(), tx, signals.drain, signals.stop));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register_instance(
        &self,
        request: Request<v1::RegisterInstanceRequest>,
    ) -> Result<Response<v1::RegisterInstanceResponse>, Status> {
        self.registry.check_accepting()?;
        let req = request.into_inner();
        let ttl = self.lease_ttl(req.ttl_ms)?;
        let instance = req.instance.ok_or_else(|| {
            self.invalid(validate::ValidationError { field: "instance".into(), reason: "is required".into() })
        })?;
        let instance = validate::instance(instance, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        let key = validate::key_of(&instance);
        let (lease_id, owner, ttl) = self.registry.lease(&req.lease_id, ttl)?;
        let version = match self.registry.upsert(owner, instance) {
            Ok(v) => v,
            Err(e) => {
                self.registry.drop_lease_if_empty(&lease_id);
                Metrics::inc(&self.registry.metrics.rejections);
                return Err(e.into());
            }
        };
        Ok(Response::new(v1::RegisterInstanceResponse {
            lease_id,
            key: Some(key.to_proto()),
            version,
            ttl_ms: ttl.as_millis() as u32,
            node_id: self.registry.node_id().to_string(),
        }))
    }

    async fn renew(&self, request: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        let ttl = self.registry.renew(&request.into_inner().lease_id)?;
        Ok(Response::new(v1::RenewResponse { ttl_ms: ttl.as_millis() as u32 }))
    }

    async fn deregister(
        &self,
        request: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        let k = request.into_inner().key.unwrap_or_default();
        let key = validate::instance_key("key", &k, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        let found = self.registry.deregister(&key);
        tracing::debug!(key = %display_key(&key), found, "deregister");
        Ok(Response::new(v1::DeregisterResponse { found }))
    }

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.registry.check_accepting()?;
        self.check_ready()?;
        let peer = request.remote_addr();
        let sub =
            validate::subscribe(request.into_inner(), &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        let stream_id = self.registry.next_id();
        let (subscriber, rx) = self.registry.views().new_subscriber(stream_id);
        let tx = subscriber.sender();
        let mut info = sub.consumer.clone();
        if info.consumer_id.is_empty() {
            info.consumer_id = peer.map_or_else(|| format!("anonymous-{stream_id}"), |a| a.to_string());
        }
        if info.host.is_empty() {
            info.host = peer.map(|a| a.ip().to_string()).unwrap_or_default();
        }
        let consumer = v1::Consumer {
            info: Some(info),
            node_id: self.registry.node_id().to_string(),
            services: sub.services.clone(),
            since_unix_ms: wall_ms(),
        };
        let stream_key = format!("{}-{}-{}", self.registry.node_id(), self.registry.incarnation(), stream_id);
        self.registry.add_consumer(&sub.namespace, &stream_key, consumer);
        if sub.services.is_empty() {
            self.registry.views().watch_namespace(&subscriber, &sub.namespace);
        } else {
            self.registry.views().watch_services(&subscriber, &sub.namespace, &sub.services);
        }
        Metrics::inc(&self.registry.metrics.subscribers_active);
        let task = SubscriberTask {
            registry: self.registry.clone(),
            subscription: sub,
            subscriber,
            stream_key,
            drain: self.signals.drain.child_token(),
            stop: self.signals.stop.clone(),
            out: tx,
        };
        self.signals.tasks.spawn(task.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|item| item.map_err(|status| *status)))))
    }

    async fn get_service(&self, request: Request<v1::GetServiceRequest>) -> Result<Response<GetServiceFrame>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        let (ns, service) = validate::service_ref(&req.namespace, &req.service, &self.registry.config().limits)
            .map_err(|e| self.invalid(e))?;
        Ok(Response::new(self.registry.views().get_encoded(&ns, &service)))
    }

    async fn list_services(
        &self,
        request: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        self.check_ready()?;
        let ns = validate::namespace(&request.into_inner().namespace, &self.registry.config().limits)
            .map_err(|e| self.invalid(e))?;
        let services = self.registry.views().list(&ns);
        Ok(Response::new(v1::ListServicesResponse { namespace: ns, services }))
    }

    async fn list_consumers(
        &self,
        request: Request<v1::ListConsumersRequest>,
    ) -> Result<Response<v1::ListConsumersResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        let limits = &self.registry.config().limits;
        let ns = validate::namespace(&req.namespace, limits).map_err(|e| self.invalid(e))?;
        if !req.service.is_empty() {
            validate::name("service", &req.service, limits.max_name_len).map_err(|e| self.invalid(e))?;
        }
        let consumers = self.registry.list_consumers(&ns, &req.service);
        Ok(Response::new(v1::ListConsumersResponse { consumers }))
    }
}

/// The task behind one Subscribe stream. Deltas do not pass through it (the
/// writer queues them straight into the stream); it sends snapshots when the
/// subscriber needs them, progress keepalives, and cleans up when the stream ends.
struct SubscriberTask {
    registry: Arc<Registry>,
    subscription: Subscription,
    subscriber: Arc<Subscriber>,
    stream_key: String,
    /// This stream's own drain: the node's (shutdown), or just this one's
    /// (rebalancing, or its maximum age).
    drain: CancellationToken,
    stop: CancellationToken,
    out: mpsc::Sender<StreamItem>,
}

/// How long a stream asked to move is served on after its delay: a client
/// that follows the drain has a new stream by then; one that ignores it is
/// ended with UNAVAILABLE.
const MOVE_TIMEOUT: Duration = Duration::from_secs(5);

impl SubscriberTask {
    async fn run(self) {
        let cfg = &self.registry.config().subscriptions;
        let period = Duration::from_millis(cfg.progress_interval_ms);
        let mut progress = interval_at(Instant::now() + period, period);
        let max_age = crate::session::max_age_deadline(cfg.max_age_ms);
        let id = self.subscriber.id;
        self.registry.subscriptions.register(id, self.drain.clone());
        // Set once the stream was asked to move: when it is ended regardless.
        let mut moving: Option<Instant> = None;
        'stream: loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    let _ = self.out.try_send(Err(Box::new(Status::unavailable("node shut down; subscribe to another node"))));
                    break;
                }
                _ = tokio::time::sleep_until(max_age.unwrap_or_else(Instant::now)), if max_age.is_some() && !self.drain.is_cancelled() => {
                    self.drain.cancel();
                }
                _ = self.drain.cancelled(), if moving.is_none() => {
                    let jitter_ms = self.registry.config().sessions.drain_jitter_ms;
                    let drain = self.registry.subscriptions.drain(id, self.registry.is_draining(), jitter_ms);
                    moving = Some(Instant::now() + Duration::from_millis(u64::from(drain.delay_ms)) + MOVE_TIMEOUT);
                    let msg = v1::SubscribeResponse { kind: Some(v1::subscribe_response::Kind::Drain(drain)) };
                    tokio::select! {
                        sent = self.out.send(Ok(SubscribeFrame::encode(&msg))) => if sent.is_err() { break },
                        _ = self.stop.cancelled() => break,
                    }
                }
                _ = tokio::time::sleep_until(moving.unwrap_or_else(Instant::now)), if moving.is_some() => {
                    let msg = "asked to move and still here; subscribe again (to any node)";
                    let _ = self.out.try_send(Err(Box::new(Status::unavailable(msg))));
                    break;
                }
                _ = self.out.closed() => break,
                _ = self.subscriber.notify.notified() => {
                    for svc in self.subscriber.needs() {
                        // Wait for room first, then take the snapshot: it is then
                        // as fresh as it can be and nothing can overtake it.
                        let permit = tokio::select! {
                            p = self.out.reserve() => match p {
                                Ok(p) => p,
                                Err(_) => break 'stream,
                            },
                            _ = self.stop.cancelled() => break 'stream,
                        };
                        let freshness = self.registry.freshness();
                        self.registry.views().send_snapshot(&self.subscriber, &svc, permit, freshness);
                    }
                }
                _ = progress.tick() => {
                    let msg = v1::SubscribeResponse {
                        kind: Some(v1::subscribe_response::Kind::Progress(v1::Progress {
                            freshness: Some(self.registry.freshness()),
                            node_id: self.registry.node_id().to_string(),
                        })),
                    };
                    // A keepalive is worthless behind a full queue: skip it then.
                    let _ = self.out.try_send(Ok(SubscribeFrame::encode(&msg)));
                }
            }
        }
        self.registry.subscriptions.unregister(id);
        let views = self.registry.views();
        views.unwatch(&self.subscriber, &self.subscription.namespace, &self.subscription.services);
        self.registry.remove_consumer(&self.subscription.namespace, &self.stream_key);
        Metrics::dec(&self.registry.metrics.subscribers_active);
    }
}

/// `registry.v1.Cluster`. A standalone node is a cluster of one.
#[derive(Clone, Debug)]
pub struct ClusterApi {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
}

#[tonic::async_trait]
impl v1::cluster_server::Cluster for ClusterApi {
    async fn members(&self, _: Request<v1::MembersRequest>) -> Result<Response<v1::MembersResponse>, Status> {
        Ok(Response::new(crate::cluster::members(&self.registry, self.readiness.is_ready())))
    }
}
