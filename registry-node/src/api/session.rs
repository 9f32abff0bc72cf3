//! Provider sessions: an owner of instances that lives as long as a stream
//! from its provider (gRPC `Register` today) and proves it is alive by
//! sending within its TTL. The front-end runs the stream; this module opens
//! the session, writes its instances and, when the stream ends, carries out
//! what the removal table ([`crate::core::session_end`]) decides.

use std::sync::Arc;
use std::time::Duration;

use registry_proto::v1;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::NodeApi;
use crate::auth::Caller;
use crate::core::session_end::{Disposal, End, Holds, disposal, end_of};
use crate::metrics::Metrics;
use crate::registry::display_key;
use crate::registry::{OwnerId, Registry, RegistryError};
use crate::validate::{self, ValidationError};

/// An open provider session.
#[derive(Debug)]
pub struct Session {
    registry: Arc<Registry>,
    owner: OwnerId,
    id: String,
    heartbeat: Duration,
    ttl: Duration,
    started: bool,
    caller: Caller,
    api: NodeApi,
}

impl NodeApi {
    /// Opens a session whose provider sends at least every
    /// `heartbeat_interval_ms` (0: the default); its lease TTL is
    /// `sessions.lease_heartbeats` intervals.
    pub fn open_session(&self, caller: Caller, heartbeat_interval_ms: u32) -> Result<Session, RegistryError> {
        self.registry.check_accepting()?;
        let cfg = &self.registry.config().sessions;
        let interval_ms = match heartbeat_interval_ms {
            0 => cfg.default_heartbeat_ms,
            ms => u64::from(ms),
        };
        if interval_ms < cfg.min_heartbeat_ms || interval_ms > cfg.max_heartbeat_ms {
            return Err(self.invalid(ValidationError {
                field: "open.heartbeat_interval_ms".into(),
                reason: format!(
                    "{interval_ms} is outside {}..={} (sessions.min_heartbeat_ms..=sessions.max_heartbeat_ms)",
                    cfg.min_heartbeat_ms, cfg.max_heartbeat_ms
                ),
            }));
        }
        let owner = self.registry.open_owner();
        Ok(Session {
            id: format!("{}-{}", self.registry.node_id(), owner.0),
            heartbeat: Duration::from_millis(interval_ms),
            ttl: Duration::from_millis(interval_ms * u64::from(cfg.lease_heartbeats)),
            registry: self.registry.clone(),
            owner,
            started: false,
            caller,
            api: self.clone(),
        })
    }
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn owner(&self) -> OwnerId {
        self.owner
    }

    /// How long the session lives without a message from its provider.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// The provider was told the session is open: it counts as active, and
    /// the node may ask it to move. Returns its own drain signal (a child of
    /// `node_drain`, also cancelled by rebalancing or its maximum age).
    pub fn start(&mut self, node_drain: &CancellationToken) -> CancellationToken {
        let drain = node_drain.child_token();
        self.registry.sessions.register(self.owner.0, drain.clone());
        Metrics::inc(&self.registry.metrics.sessions_active);
        Metrics::inc(&self.registry.metrics.sessions_opened);
        self.started = true;
        drain
    }

    /// The drain message the provider is sent when asked to move.
    pub fn drain_message(&self, node_draining: bool) -> v1::Drain {
        let jitter_ms = self.registry.config().sessions.drain_jitter_ms;
        self.registry.sessions.drain(self.owner.0, node_draining, jitter_ms)
    }

    /// Registers or updates an instance of this session. On a refusal, the
    /// key as sent (when there was one) comes back with the error.
    pub fn upsert(
        &self,
        instance: v1::Instance,
    ) -> Result<(v1::InstanceKey, u64), (Option<v1::InstanceKey>, RegistryError)> {
        let raw_key = v1::InstanceKey {
            namespace: instance.namespace.clone(),
            service: instance.service.clone(),
            instance_id: instance.instance_id.clone(),
        };
        let limits = &self.registry.config().limits;
        let instance = validate::instance(instance, limits).map_err(|e| (Some(raw_key), e.into()))?;
        let parsed = validate::key_of(&instance);
        let (shown, key) = (|| display_key(&parsed), parsed.to_proto());
        let (ns, service) = (instance.namespace.clone(), instance.service.clone());
        if let Err(e) = self.api.check_write(&self.caller, "register", shown, &ns, &service) {
            return Err((Some(key), e));
        }
        let writer = self.api.writer(&self.caller, &ns, &service);
        match self.registry.upsert(self.owner, instance, &writer) {
            Ok(version) => {
                self.api.audit_admin_write(&self.caller, "register", shown, &ns, &service);
                Ok((key, version))
            }
            Err(e) => {
                self.api.audit_refusal(&self.caller, "register", shown, &e);
                Err((Some(key), e))
            }
        }
    }

    /// Removes one of this session's instances.
    pub fn remove(
        &self,
        key: v1::InstanceKey,
    ) -> Result<(v1::InstanceKey, u64), (Option<v1::InstanceKey>, RegistryError)> {
        let limits = &self.registry.config().limits;
        let parsed = match validate::instance_key("remove", &key, limits) {
            Ok(k) => k,
            Err(e) => return Err((Some(key), e.into())),
        };
        let shown = || display_key(&parsed);
        if let Err(e) = self.api.check_write(&self.caller, "deregister", shown, &parsed.namespace, &parsed.service) {
            return Err((Some(parsed.to_proto()), e));
        }
        match self.registry.remove_owned(self.owner, &parsed) {
            Ok(version) => Ok((parsed.to_proto(), version)),
            Err(e) => Err((Some(parsed.to_proto()), e)),
        }
    }

    /// Ends a session its provider never heard was open: nothing it holds
    /// stays (counted as expired, as a lost stream).
    pub fn discard(self) {
        let closing = self.close(End::LeaseExpired, false);
        closing.registry.release(closing.owner, true);
    }

    /// The stream ended: how (and whether the node had asked it to move)
    /// decides what becomes of the instances.
    pub fn close(mut self, end: End, asked_to_move: bool) -> Closing {
        let end = end_of(end, asked_to_move);
        if std::mem::take(&mut self.started) {
            Metrics::dec(&self.registry.metrics.sessions_active);
            self.registry.sessions.unregister(self.owner.0);
        }
        let disposal = disposal(end, &Holds::of(self.registry.config()));
        Closing { registry: self.registry.clone(), owner: self.owner, end, disposal }
    }
}

/// A session whose stream ended, with what becomes of its instances.
#[derive(Debug)]
#[must_use = "carry the disposal out"]
pub struct Closing {
    registry: Arc<Registry>,
    owner: OwnerId,
    end: End,
    disposal: Disposal,
}

impl Closing {
    pub fn end(&self) -> End {
        self.end
    }

    pub fn disposal(&self) -> Disposal {
        self.disposal
    }

    /// Carries the disposal out; returns how many instances it removed. A
    /// hold waits until newer copies elsewhere took every instance over (a
    /// reconnect or a move does not flap them), or its bound passes; a
    /// draining node waits for these handovers before it stops. If the node
    /// stops meanwhile, what was not taken over is left to its peers, as
    /// [`Disposal::Abandon`] does.
    pub async fn carry_out(self, stop: &CancellationToken) -> usize {
        let registry = &self.registry;
        match self.disposal {
            Disposal::Remove { expired } => registry.release(self.owner, expired),
            Disposal::Hold { bound, expired } => {
                Metrics::inc(&registry.metrics.handovers_active);
                tokio::select! {
                    _ = registry.taken_over(self.owner, Instant::now() + bound) => {}
                    _ = stop.cancelled() => {}
                }
                let n = if stop.is_cancelled() {
                    registry.abandon(self.owner);
                    0
                } else {
                    registry.release(self.owner, expired)
                };
                Metrics::dec(&registry.metrics.handovers_active);
                n
            }
            Disposal::Abandon => {
                registry.abandon(self.owner);
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StreamSignals;
    use crate::config::NodeConfig;
    use crate::readiness::Readiness;

    fn api() -> NodeApi {
        let registry = Arc::new(Registry::new(Arc::new(NodeConfig::default()), 1));
        NodeApi::new(registry, Readiness::default(), StreamSignals::new(), Arc::new(crate::auth::Auth::open()))
    }

    fn instance(id: &str) -> v1::Instance {
        v1::Instance {
            service: "orders".into(),
            instance_id: id.into(),
            host: "10.0.0.1".into(),
            port: 80,
            ..Default::default()
        }
    }

    fn shown(api: &NodeApi) -> usize {
        api.registry().views().get("default", "orders").1.len()
    }

    #[test]
    fn a_heartbeat_outside_the_limits_is_refused_by_field() {
        let e = api().open_session(Caller::open(), 1).expect_err("1 ms is below the minimum");
        assert!(e.to_string().starts_with("open.heartbeat_interval_ms: 1 is outside "), "{e}");
        assert!(matches!(e, RegistryError::Invalid(_)));
    }

    #[tokio::test]
    async fn a_goodbye_removes_the_sessions_instances_and_only_them() {
        let api = api();
        let drain = CancellationToken::new();
        let mut a = api.open_session(Caller::open(), 0).expect("open");
        let mut b = api.open_session(Caller::open(), 0).expect("open");
        a.start(&drain);
        b.start(&drain);
        a.upsert(instance("i1")).expect("upsert");
        b.upsert(instance("i2")).expect("upsert");
        let (key, e) = a.upsert(v1::Instance { port: 0, ..instance("i3") }).expect_err("port 0");
        assert_eq!(key.map(|k| k.instance_id), Some("i3".into()));
        assert!(matches!(e, RegistryError::Invalid(_)));
        let (_, e) = a
            .remove(v1::InstanceKey { namespace: "default".into(), service: "orders".into(), instance_id: "i2".into() })
            .expect_err("b's");
        assert!(matches!(e, RegistryError::NotOwned(_)), "{e}");
        assert_eq!(api.registry().metrics.sessions_active.load(std::sync::atomic::Ordering::Relaxed), 2);
        let closing = a.close(End::Goodbye, false);
        assert_eq!(closing.disposal(), Disposal::Remove { expired: false });
        assert_eq!(closing.carry_out(&CancellationToken::new()).await, 1);
        assert_eq!(shown(&api), 1, "b's instance stays");
        assert_eq!(api.registry().metrics.sessions_active.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_session_keeps_its_instances_for_the_reconnect_grace() {
        let api = api();
        let mut s = api.open_session(Caller::open(), 0).expect("open");
        s.start(&CancellationToken::new());
        s.upsert(instance("i1")).expect("upsert");
        let t0 = Instant::now();
        let closing = s.close(End::Broken, false);
        assert_eq!(closing.carry_out(&CancellationToken::new()).await, 1);
        assert_eq!(Instant::now() - t0, api.registry().config().sessions.reconnect_grace());
        assert_eq!(shown(&api), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_stopping_during_a_hold_leaves_the_instances_to_its_peers() {
        let api = api();
        let mut s = api.open_session(Caller::open(), 0).expect("open");
        s.start(&CancellationToken::new());
        s.upsert(instance("i1")).expect("upsert");
        let stop = CancellationToken::new();
        let closing = s.close(End::Moved, false);
        let hold = tokio::spawn({
            let stop = stop.clone();
            async move { closing.carry_out(&stop).await }
        });
        tokio::task::yield_now().await;
        stop.cancel();
        assert_eq!(hold.await.expect("join"), 0, "abandoned, not removed");
        assert_eq!(shown(&api), 1);
    }

    #[test]
    fn a_session_whose_provider_never_heard_it_opened_leaves_nothing() {
        let api = api();
        let s = api.open_session(Caller::open(), 0).expect("open");
        s.upsert(instance("i1")).expect("upsert");
        s.discard();
        assert_eq!(shown(&api), 0);
    }
}
