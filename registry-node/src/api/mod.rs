//! The in-process API of a node: the one surface every protocol front-end
//! calls (gRPC `registry.v1` today; HTTP/JSON, xDS, Eureka and DNS later).
//! Validation, readiness, leases, ownership, the consumer directory and
//! watches are decided here once, so a front-end only translates its
//! protocol to these calls and [`RegistryError`] to its own error codes.
//!
//! - Provider writes under a unary lease: [`NodeApi::register_instance`],
//!   [`NodeApi::renew`], [`NodeApi::deregister`].
//! - Provider writes under a session (the gRPC `Register` stream):
//!   [`NodeApi::open_session`], then [`Session`] ([`session`]); when the
//!   stream ends, [`Session::close`] says what the removal table decides and
//!   [`Closing::carry_out`] does it.
//! - Reads from the in-memory views, never blocking writers:
//!   [`NodeApi::get_service`], [`NodeApi::get_service_frame`],
//!   [`NodeApi::list_services`], [`NodeApi::list_consumers`],
//!   [`NodeApi::members`].
//! - Watches: [`NodeApi::watch`], a snapshot then deltas as shared encoded
//!   frames ([`watch`]); each watcher is a consumer in the directory.

pub mod session;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use registry_proto::{GetServiceFrame, v1};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::session::{Closing, Session};
pub use self::watch::{WatchEnd, WatchItem};
use crate::auth::{Auth, Caller, Identity, Outcome, Role};
use crate::listen::Peer;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
pub use crate::registry::RegistryError;
use crate::registry::{Registry, Writer, display_key, wall_ms};
use crate::validate::{self, ValidationError};

/// Shutdown signals shared by every stream a front-end holds open.
#[derive(Clone, Debug)]
pub struct StreamSignals {
    /// Asks sessions and watchers to move elsewhere.
    pub drain: CancellationToken,
    /// Ends every stream now.
    pub stop: CancellationToken,
    /// Every stream task (sessions with their handovers, watches): shutdown
    /// waits for them to end, a panicked one included.
    pub tasks: TaskTracker,
}

impl StreamSignals {
    pub fn new() -> Self {
        Self { drain: CancellationToken::new(), stop: CancellationToken::new(), tasks: TaskTracker::new() }
    }
}

impl Default for StreamSignals {
    fn default() -> Self {
        Self::new()
    }
}

/// Whose status override a request sets when auth cannot tell (auth off):
/// the writer's role decides when it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverrideFrom {
    /// An operator's (the JSON API, the console): it outlives the
    /// instance's restarts.
    Operator,
    /// The instance's own provider's (Eureka's `/status`, which Spring's
    /// service-registry endpoint sends): it ends with the instance.
    Provider,
}

/// The node's API. Cheap to clone: every front-end holds one.
#[derive(Clone, Debug)]
pub struct NodeApi {
    registry: Arc<Registry>,
    readiness: Readiness,
    signals: StreamSignals,
    auth: Arc<Auth>,
}

impl NodeApi {
    pub fn new(registry: Arc<Registry>, readiness: Readiness, signals: StreamSignals, auth: Arc<Auth>) -> Self {
        Self { registry, readiness, signals, auth }
    }

    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// Who sent a request, from its `authorization` header (see [`Auth`]).
    /// The caller of a request: its bearer token (`authorization`), else the
    /// verified client certificate of its connection.
    pub fn authenticate(&self, authorization: Option<&[u8]>, peer: &Peer) -> Result<Caller, RegistryError> {
        Ok(self.auth.authenticate(authorization, &peer.cert_names, Some(peer.addr))?)
    }

    /// `caller` may act as `role` on `namespace`/`service`.
    pub fn check(&self, caller: &Caller, role: Role, namespace: &str, service: &str) -> Result<(), RegistryError> {
        Ok(self.auth.check(caller, role, namespace, service)?)
    }

    /// `caller` may write `namespace`/`service`; a refusal goes to the
    /// audit trail as `action` on `key`.
    pub fn check_write(
        &self,
        caller: &Caller,
        action: &str,
        key: impl FnOnce() -> String,
        namespace: &str,
        service: &str,
    ) -> Result<(), RegistryError> {
        self.check(caller, Role::Write, namespace, service).inspect_err(|e| self.audit_refusal(caller, action, key, e))
    }

    /// `caller` holds an admin grant (Members, the admin endpoints); the
    /// request goes to the audit trail either way.
    pub fn check_admin(&self, caller: &Caller, action: &str) -> Result<(), RegistryError> {
        match self.auth.check_anywhere(caller, Role::Admin) {
            Ok(()) => {
                if caller.principal().is_some() {
                    self.auth.audit().record(caller, action, String::new, Outcome::Allowed, "");
                }
                Ok(())
            }
            Err(e) => {
                let e = RegistryError::from(e);
                self.audit_refusal(caller, action, String::new, &e);
                Err(e)
            }
        }
    }

    /// A write refused for want of a grant or for belonging to another
    /// principal goes to the audit trail.
    pub fn audit_refusal(&self, caller: &Caller, action: &str, key: impl FnOnce() -> String, e: &RegistryError) {
        if let RegistryError::PermissionDenied(reason) = e {
            self.auth.audit().record(caller, action, key, Outcome::Denied, reason);
        }
    }

    /// A write done with an admin grant goes to the audit trail.
    pub fn audit_admin_write(
        &self,
        caller: &Caller,
        action: &str,
        key: impl FnOnce() -> String,
        namespace: &str,
        service: &str,
    ) {
        if caller.principal_grants().is_some_and(|p| p.may(Role::Admin, namespace, service)) {
            self.auth.audit().record(caller, action, key, Outcome::Allowed, "");
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn signals(&self) -> &StreamSignals {
        &self.signals
    }

    /// A refusal of what the client sent, counted.
    pub fn invalid(&self, e: ValidationError) -> RegistryError {
        Metrics::inc(&self.registry.metrics.rejections);
        RegistryError::Invalid(e)
    }

    /// Reads and watches wait for a clustered node to load the registry:
    /// an empty or partial answer would look like a mass deregistration.
    pub fn check_ready(&self) -> Result<(), RegistryError> {
        if self.readiness.is_ready() { Ok(()) } else { Err(RegistryError::WarmingUp) }
    }

    /// Who writes `namespace`/`service`, for the ownership check: the
    /// principal, and whether it may replace others' instances (an admin of
    /// the namespace).
    pub fn writer(&self, caller: &Caller, namespace: &str, service: &str) -> Writer {
        match &caller.identity {
            Identity::Principal(p) => Writer {
                principal: Some(p.name.clone()),
                may_override: p.may(Role::Admin, namespace, service),
                warn_only: self.auth.mode() == crate::auth::AuthMode::Warn,
            },
            Identity::Open | Identity::Unverified(_) => Writer::default(),
        }
    }

    /// A requested lease TTL (0: the default) within the node's limits.
    pub fn lease_ttl(&self, ttl_ms: u32) -> Result<Duration, RegistryError> {
        let s = &self.registry.config().sessions;
        let ttl = match ttl_ms {
            0 => s.default_lease_ttl_ms,
            ms => u64::from(ms),
        };
        if ttl < s.min_lease_ttl_ms || ttl > s.max_lease_ttl_ms {
            return Err(self.invalid(ValidationError {
                field: "ttl_ms".into(),
                reason: format!(
                    "{ttl} is outside {}..={} (sessions.min_lease_ttl_ms..=sessions.max_lease_ttl_ms)",
                    s.min_lease_ttl_ms, s.max_lease_ttl_ms
                ),
            }));
        }
        Ok(Duration::from_millis(ttl))
    }

    /// Registers (or updates) an instance under a unary lease: a new lease
    /// when `lease_id` is empty, else that lease, renewed.
    pub fn register_instance(
        &self,
        caller: &Caller,
        lease_id: &str,
        ttl_ms: u32,
        instance: Option<v1::Instance>,
    ) -> Result<v1::RegisterInstanceResponse, RegistryError> {
        self.registry.check_accepting()?;
        let ttl = self.lease_ttl(ttl_ms)?;
        let instance = instance
            .ok_or_else(|| self.invalid(ValidationError { field: "instance".into(), reason: "is required".into() }))?;
        let instance = validate::instance(instance, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        let key = validate::key_of(&instance);
        let shown = || display_key(&key);
        let (ns, service) = (instance.namespace.clone(), instance.service.clone());
        self.check_write(caller, "register", shown, &ns, &service)?;
        let (lease_id, owner, ttl) = self
            .registry
            .lease(lease_id, ttl, caller.principal())
            .inspect_err(|e| self.audit_refusal(caller, "register", shown, e))?;
        let writer = self.writer(caller, &ns, &service);
        let version = match self.registry.upsert(owner, instance, &writer) {
            Ok(v) => v,
            Err(e) => {
                self.registry.drop_lease_if_empty(&lease_id);
                Metrics::inc(&self.registry.metrics.rejections);
                self.audit_refusal(caller, "register", shown, &e);
                return Err(e);
            }
        };
        self.audit_admin_write(caller, "register", shown, &ns, &service);
        Ok(v1::RegisterInstanceResponse {
            lease_id,
            key: Some(key.to_proto()),
            version,
            ttl_ms: ttl.as_millis() as u32,
            node_id: self.registry.node_id().to_string(),
        })
    }

    /// Extends a lease by its TTL; returns the TTL.
    pub fn renew(&self, caller: &Caller, lease_id: &str) -> Result<Duration, RegistryError> {
        self.registry
            .renew(lease_id, caller.principal())
            .inspect_err(|e| self.audit_refusal(caller, "renew", || format!("lease {lease_id}"), e))
    }

    /// Removes an instance, whoever registered it. Returns whether it was there.
    pub fn deregister(&self, caller: &Caller, key: Option<v1::InstanceKey>) -> Result<bool, RegistryError> {
        let k = key.unwrap_or_default();
        let key = validate::instance_key("key", &k, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        let shown = || display_key(&key);
        self.check_write(caller, "deregister", shown, &key.namespace, &key.service)?;
        let found = self
            .registry
            .deregister(&key, &self.writer(caller, &key.namespace, &key.service))
            .inspect_err(|e| self.audit_refusal(caller, "deregister", shown, e))?;
        self.audit_admin_write(caller, "deregister", shown, &key.namespace, &key.service);
        tracing::debug!(key = %shown(), found, "deregister");
        Ok(found)
    }

    /// Sets (`Some(status)`) or clears (`None`) a status override of an
    /// instance: every node shows that status for it until it is cleared
    /// (or its instance is gone for the retention), whatever its provider
    /// sends. An admin of the service overrides any instance (registered or
    /// not yet); a writer only its own registered instance, and never an
    /// override someone else set. A writer's ends with its instance (as a
    /// Eureka client's does in Eureka), an admin's outlives restarts; with
    /// auth off `from` tells which it is. Audited. Returns whether anything
    /// changed.
    pub fn set_status_override(
        &self,
        caller: &Caller,
        key: Option<v1::InstanceKey>,
        status: Option<v1::Status>,
        from: OverrideFrom,
    ) -> Result<bool, RegistryError> {
        self.registry.check_accepting()?;
        let k = key.unwrap_or_default();
        let key = validate::instance_key("key", &k, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        let shown = || display_key(&key);
        let action = if status.is_some() { "set status override" } else { "clear status override" };
        if let Err(e) = self.check(caller, Role::Write, &key.namespace, &key.service) {
            self.audit_refusal(caller, action, shown, &e);
            return Err(e);
        }
        let writer = self.writer(caller, &key.namespace, &key.service);
        let o = match status {
            Some(v1::Status::Unspecified) => {
                return Err(self.invalid(ValidationError {
                    field: "status".into(),
                    reason:
                        "an override needs a status (STATUS_UP, STATUS_DOWN, STATUS_STARTING or STATUS_OUT_OF_SERVICE)"
                            .into(),
                }));
            }
            Some(status) => Some(v1::StatusOverride {
                status: status as i32,
                set_by: caller.name().unwrap_or_default().to_string(),
                set_unix_ms: wall_ms(),
                provider_status: 0,
                ends_with_instance: match &writer.principal {
                    Some(_) => !writer.may_override,
                    None => from == OverrideFrom::Provider,
                },
            }),
            None => None,
        };
        let reason = status.map(|s| s.as_str_name().to_string()).unwrap_or_default();
        let changed = self
            .registry
            .set_status_override(&key, o, &writer)
            .inspect_err(|e| self.audit_refusal(caller, action, shown, e))?;
        self.auth.audit().record(caller, action, shown, Outcome::Allowed, &reason);
        Ok(changed)
    }

    /// One service as a `GetServiceResponse`, written from stored bytes.
    pub fn get_service_frame(
        &self,
        caller: &Caller,
        namespace: &str,
        service: &str,
    ) -> Result<GetServiceFrame, RegistryError> {
        self.check_ready()?;
        let (ns, service) =
            validate::service_ref(namespace, service, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        self.check(caller, Role::Read, &ns, &service)?;
        Ok(self.registry.views().get_encoded(&ns, &service))
    }

    /// One service's revision and instances.
    pub fn get_service(
        &self,
        caller: &Caller,
        namespace: &str,
        service: &str,
    ) -> Result<(u64, Vec<v1::Instance>), RegistryError> {
        self.check_ready()?;
        let (ns, service) =
            validate::service_ref(namespace, service, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        self.check(caller, Role::Read, &ns, &service)?;
        Ok(self.registry.views().get(&ns, &service))
    }

    /// The services of `namespace` the caller may read.
    pub fn list_services(&self, caller: &Caller, namespace: &str) -> Result<v1::ListServicesResponse, RegistryError> {
        self.check_ready()?;
        let ns = validate::namespace(namespace, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        self.auth.check_namespace(caller, Role::Read, &ns)?;
        let mut services = self.registry.views().list(&ns);
        services.retain(|s| self.auth.sees(caller, &ns, &s.service));
        Ok(v1::ListServicesResponse { namespace: ns, services })
    }

    /// The consumers of `namespace` watching `service` (all if empty).
    /// The consumers of the services the caller may read.
    pub fn list_consumers(
        &self,
        caller: &Caller,
        namespace: &str,
        service: &str,
    ) -> Result<v1::ListConsumersResponse, RegistryError> {
        self.check_ready()?;
        let limits = &self.registry.config().limits;
        let ns = validate::namespace(namespace, limits).map_err(|e| self.invalid(e))?;
        if service.is_empty() {
            self.auth.check_namespace(caller, Role::Read, &ns)?;
        } else {
            validate::name("service", service, limits.max_name_len).map_err(|e| self.invalid(e))?;
            self.check(caller, Role::Read, &ns, service)?;
        }
        let mut consumers = self.registry.list_consumers(&ns, service);
        // A consumer of the whole namespace is shown to who may read all of it.
        consumers.retain(|c| {
            let watched: Vec<&str> =
                if c.services.is_empty() { vec!["*"] } else { c.services.iter().map(String::as_str).collect() };
            watched.iter().all(|s| self.auth.sees(caller, &ns, s))
        });
        Ok(v1::ListConsumersResponse { consumers })
    }

    /// This node and every peer it knows (a standalone node is a cluster of one).
    /// Needs an admin grant (in any namespace).
    pub fn members(&self, caller: &Caller) -> Result<v1::MembersResponse, RegistryError> {
        self.check_admin(caller, "members")?;
        Ok(crate::cluster::members(&self.registry, self.readiness.is_ready()))
    }

    /// Starts a watch: the watcher is recorded in the consumer directory
    /// (unnamed consumers are named after `peer`), gets a snapshot of each
    /// service it watches, then every change. The watch ends when the
    /// receiver is dropped, or with a [`WatchEnd`].
    pub fn watch(
        &self,
        caller: &Caller,
        request: v1::SubscribeRequest,
        peer: Option<SocketAddr>,
    ) -> Result<mpsc::Receiver<WatchItem>, RegistryError> {
        self.registry.check_accepting()?;
        self.check_ready()?;
        let sub = validate::subscribe(request, &self.registry.config().limits).map_err(|e| self.invalid(e))?;
        if sub.services.is_empty() {
            // The whole namespace, services to come included.
            self.check(caller, Role::Read, &sub.namespace, "*")?;
        }
        for service in &sub.services {
            self.check(caller, Role::Read, &sub.namespace, service)?;
        }
        let registry = &self.registry;
        let stream_id = registry.next_id();
        let (subscriber, rx) = registry.views().new_subscriber(stream_id);
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
            node_id: registry.node_id().to_string(),
            services: sub.services.clone(),
            since_unix_ms: wall_ms(),
            principal: caller.name().unwrap_or_default().to_string(),
        };
        let stream_key = format!("{}-{}-{}", registry.node_id(), registry.incarnation(), stream_id);
        registry.add_consumer(&sub.namespace, &stream_key, consumer);
        if sub.services.is_empty() {
            registry.views().watch_namespace(&subscriber, &sub.namespace);
        } else {
            registry.views().watch_services(&subscriber, &sub.namespace, &sub.services);
        }
        Metrics::inc(&registry.metrics.subscribers_active);
        let task = watch::WatchTask {
            registry: registry.clone(),
            subscription: sub,
            subscriber,
            stream_key,
            drain: self.signals.drain.child_token(),
            stop: self.signals.stop.clone(),
            out: tx,
        };
        self.signals.tasks.spawn(task.run());
        Ok(rx)
    }
}
