//! Provider sessions: one task per `Register` stream.
//!
//! The session owns the instances it upserts. How it ends (goodbye, moved,
//! half-close, broken transport, silence, after a drain or not) decides when
//! they go: that rule is the removal table, [`crate::core::session_end`];
//! this task tells how the stream ended and carries the decision out. A
//! held session waits for its handover by being woken when its instances
//! are taken over, not by polling.
//!
//! Deadlines use tokio's monotonic clock; a wall-clock jump changes nothing.

use std::sync::Arc;
use std::time::Duration;

use registry_proto::v1::{self, register_request::Kind as In, register_response::Kind as Out};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};
use tracing::{debug, info};

use crate::core::session_end::{Disposal, End, Holds, disposal, end_of};
use crate::metrics::Metrics;
use crate::registry::{OwnerId, Registry, RegistryError};
use crate::validate;

type Reply = Result<v1::RegisterResponse, Status>;

/// Runs one Register stream to its end.
pub async fn run_session(
    registry: Arc<Registry>,
    mut inbound: Streaming<v1::RegisterRequest>,
    out: mpsc::Sender<Reply>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let cfg = registry.config().sessions.clone();
    // The first message must open the session, within the default lease TTL.
    let open_deadline =
        Instant::now() + Duration::from_millis(cfg.default_heartbeat_ms * u64::from(cfg.lease_heartbeats));
    // A stream still to open when the node starts draining is told to go
    // elsewhere: shutdown waits for every stream task.
    let first = tokio::select! {
        first = timeout_at(open_deadline, inbound.message()) => first,
        _ = drain.cancelled() => {
            let _ = out.send(Err(Status::unavailable("node is shutting down; connect to another node"))).await;
            return;
        }
    };
    let open = match first {
        Ok(Ok(Some(v1::RegisterRequest { kind: Some(In::Open(open)) }))) => open,
        Ok(Ok(Some(_))) => {
            let _ = out.send(Err(Status::failed_precondition("the first message of a session must be `open`"))).await;
            return;
        }
        Ok(Ok(None)) | Ok(Err(_)) => return,
        Err(_) => {
            let _ = out.send(Err(Status::deadline_exceeded("no `open` message received in time"))).await;
            return;
        }
    };
    let interval_ms = match open.heartbeat_interval_ms {
        0 => cfg.default_heartbeat_ms,
        ms => u64::from(ms),
    };
    if interval_ms < cfg.min_heartbeat_ms || interval_ms > cfg.max_heartbeat_ms {
        Metrics::inc(&registry.metrics.rejections);
        let msg = format!(
            "open.heartbeat_interval_ms: {interval_ms} is outside {}..={} (sessions.min_heartbeat_ms..=sessions.max_heartbeat_ms)",
            cfg.min_heartbeat_ms, cfg.max_heartbeat_ms
        );
        let _ = out.send(Err(Status::invalid_argument(msg))).await;
        return;
    }
    let ttl = Duration::from_millis(interval_ms * u64::from(cfg.lease_heartbeats));
    let owner = registry.open_owner();
    let session_id = format!("{}-{}", registry.node_id(), owner.0);
    let opened = Out::Opened(v1::SessionOpened {
        session_id: session_id.clone(),
        node_id: registry.node_id().to_string(),
        lease_ttl_ms: ttl.as_millis() as u32,
        heartbeat_interval_ms: interval_ms as u32,
    });
    if out.send(Ok(reply(opened))).await.is_err() {
        registry.release(owner, true);
        return;
    }
    Metrics::inc(&registry.metrics.sessions_active);
    Metrics::inc(&registry.metrics.sessions_opened);
    debug!(session = %session_id, client = %open.client_name, ttl_ms = ttl.as_millis() as u64, "session opened");

    // This session's own drain: the node's (shutdown), or just this one's
    // (rebalancing, or its maximum age).
    let my_drain = drain.child_token();
    registry.sessions.register(owner.0, my_drain.clone());
    let max_age = crate::movers::max_age_deadline(cfg.max_age_ms);
    let mut deadline = Instant::now() + ttl;
    let mut drained = false;
    let end = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break End::Shutdown,
            _ = sleep_until(max_age.unwrap_or(deadline)), if max_age.is_some() && !drained => my_drain.cancel(),
            _ = my_drain.cancelled(), if !drained => {
                drained = true;
                let drain = Out::Drain(registry.sessions.drain(owner.0, drain.is_cancelled(), cfg.drain_jitter_ms));
                if out.send(Ok(reply(drain))).await.is_err() {
                    break End::Broken;
                }
            }
            msg = timeout_at(deadline, inbound.message()) => match msg {
                Err(_) => break End::LeaseExpired,
                Ok(Err(status)) => {
                    debug!(session = %session_id, %status, "session transport broke");
                    break End::Broken;
                }
                Ok(Ok(None)) => break End::HalfClose,
                Ok(Ok(Some(req))) => {
                    deadline = Instant::now() + ttl;
                    match handle(&registry, owner, req) {
                        Step::Reply(r) => {
                            if out.send(Ok(reply(r))).await.is_err() {
                                break End::Broken;
                            }
                        }
                        Step::Goodbye { moved: false } => break End::Goodbye,
                        Step::Goodbye { moved: true } => break End::Moved,
                    }
                }
            },
        }
    };
    // How it ended, and the removal table (core::session_end), decide when
    // its instances go.
    let end = end_of(end, drained);
    Metrics::dec(&registry.metrics.sessions_active);
    registry.sessions.unregister(owner.0);
    match disposal(end, &Holds::of(registry.config())) {
        Disposal::Remove { expired } => {
            let n = registry.release(owner, expired);
            if end == End::LeaseExpired {
                info!(session = %session_id, removed = n, ttl_ms = ttl.as_millis() as u64, "session silent past its lease; instances removed");
                let _ = out.try_send(Err(Status::deadline_exceeded(format!(
                    "no message for {} ms (the lease TTL): session ended and its instances removed",
                    ttl.as_millis()
                ))));
            } else {
                debug!(session = %session_id, removed = n, ?end, "session ended");
            }
        }
        Disposal::Hold { bound, expired } => {
            // Keep the instances until re-registrations elsewhere have taken
            // them all over, or the bound passes, so a reconnect does not
            // flap them. A moved provider is not kept waiting for the
            // stream's end. A draining node waits for these handovers
            // before it stops (what it removed on its way out could
            // otherwise overtake the new copies on the bus).
            drop(out);
            Metrics::inc(&registry.metrics.handovers_active);
            tokio::select! {
                _ = registry.taken_over(owner, Instant::now() + bound) => {}
                _ = stop.cancelled() => {}
            }
            // A stopping node leaves what was not taken over to its peers
            // (as `End::Shutdown` does).
            let n = if stop.is_cancelled() {
                registry.abandon(owner);
                0
            } else {
                registry.release(owner, expired)
            };
            Metrics::dec(&registry.metrics.handovers_active);
            if end == End::Broken {
                info!(session = %session_id, removed = n, "session connection lost; instances removed after grace");
            } else {
                debug!(session = %session_id, removed = n, ?end, "moved session ended; what was not taken over is removed");
            }
        }
        Disposal::Abandon => {
            registry.abandon(owner);
            let _ = out.try_send(Err(Status::unavailable("node shut down; reconnect to another node")));
        }
    }
}

enum Step {
    Reply(Out),
    Goodbye { moved: bool },
}

fn reply(kind: Out) -> v1::RegisterResponse {
    v1::RegisterResponse { kind: Some(kind) }
}

fn rejected(registry: &Registry, key: Option<v1::InstanceKey>, code: Code, reason: String) -> Step {
    Metrics::inc(&registry.metrics.rejections);
    Step::Reply(Out::Rejected(v1::Rejected { key, reason, code: code as i32 }))
}

/// A refusal by the registry, with the code a unary call would have failed with
/// ([`super::status_of`] is the one mapping).
fn registry_rejected(registry: &Registry, key: Option<v1::InstanceKey>, e: &RegistryError) -> Step {
    rejected(registry, key, super::status_of(e).code(), e.to_string())
}

fn handle(registry: &Registry, owner: OwnerId, req: v1::RegisterRequest) -> Step {
    let limits = &registry.config().limits;
    match req.kind {
        Some(In::Upsert(instance)) => {
            let raw_key = v1::InstanceKey {
                namespace: instance.namespace.clone(),
                service: instance.service.clone(),
                instance_id: instance.instance_id.clone(),
            };
            let instance = match validate::instance(instance, limits) {
                Ok(i) => i,
                Err(e) => return rejected(registry, Some(raw_key), Code::InvalidArgument, e.to_string()),
            };
            let key = validate::key_of(&instance).to_proto();
            match registry.upsert(owner, instance) {
                Ok(version) => Step::Reply(Out::Accepted(v1::Accepted { key: Some(key), version, removed: false })),
                Err(e) => registry_rejected(registry, Some(key), &e),
            }
        }
        Some(In::Remove(k)) => {
            let key = match validate::instance_key("remove", &k, limits) {
                Ok(key) => key,
                Err(e) => return rejected(registry, Some(k), Code::InvalidArgument, e.to_string()),
            };
            match registry.remove_owned(owner, &key) {
                Ok(version) => {
                    Step::Reply(Out::Accepted(v1::Accepted { key: Some(key.to_proto()), version, removed: true }))
                }
                Err(e) => registry_rejected(registry, Some(key.to_proto()), &e),
            }
        }
        Some(In::Heartbeat(hb)) => Step::Reply(Out::Pong(v1::Pong { nonce: hb.nonce })),
        Some(In::Goodbye(g)) => Step::Goodbye { moved: g.moved },
        Some(In::Open(_)) => rejected(registry, None, Code::FailedPrecondition, "session is already open".to_string()),
        None => rejected(registry, None, Code::InvalidArgument, "message has no `kind`".to_string()),
    }
}
