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

use std::time::Duration;

use registry_proto::v1::{self, register_request::Kind as In, register_response::Kind as Out};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};
use tracing::{debug, info};

use crate::api::{NodeApi, Session};
use crate::auth::Caller;
use crate::core::session_end::{Disposal, End};
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryError};

type Reply = Result<v1::RegisterResponse, Status>;

/// Runs one Register stream to its end.
pub async fn run_session(
    api: NodeApi,
    caller: Caller,
    mut inbound: Streaming<v1::RegisterRequest>,
    out: mpsc::Sender<Reply>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let registry = api.registry().clone();
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
    let mut session = match api.open_session(caller, open.heartbeat_interval_ms) {
        Ok(s) => s,
        Err(e) => {
            let _ = out.send(Err(super::status_of(&e))).await;
            return;
        }
    };
    let ttl = session.ttl();
    let session_id = session.id().to_string();
    let opened = Out::Opened(v1::SessionOpened {
        session_id: session_id.clone(),
        node_id: registry.node_id().to_string(),
        lease_ttl_ms: ttl.as_millis() as u32,
        heartbeat_interval_ms: session.heartbeat().as_millis() as u32,
    });
    if out.send(Ok(reply(opened))).await.is_err() {
        session.discard();
        return;
    }
    // This session's own drain: the node's (shutdown), or just this one's
    // (rebalancing, or its maximum age).
    let my_drain = session.start(&drain);
    debug!(session = %session_id, client = %open.client_name, ttl_ms = ttl.as_millis() as u64, "session opened");

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
                let drain = Out::Drain(session.drain_message(drain.is_cancelled()));
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
                    match handle(&registry, &session, req) {
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
    let closing = session.close(end, drained);
    let end = closing.end();
    // A held session's stream ends now: the provider is not kept waiting.
    let out = match closing.disposal() {
        Disposal::Hold { .. } => None,
        _ => Some(out),
    };
    let removed = closing.carry_out(&stop).await;
    match end {
        End::LeaseExpired => {
            info!(session = %session_id, removed, ttl_ms = ttl.as_millis() as u64, "session silent past its lease; instances removed");
            if let Some(out) = out {
                let _ = out.try_send(Err(Status::deadline_exceeded(format!(
                    "no message for {} ms (the lease TTL): session ended and its instances removed",
                    ttl.as_millis()
                ))));
            }
        }
        End::Shutdown => {
            if let Some(out) = out {
                let _ = out.try_send(Err(Status::unavailable("node shut down; reconnect to another node")));
            }
        }
        End::Broken => info!(session = %session_id, removed, "session connection lost; instances removed after grace"),
        End::Moved | End::Leaving => {
            debug!(session = %session_id, removed, ?end, "moved session ended; what was not taken over is removed")
        }
        End::Goodbye | End::HalfClose => debug!(session = %session_id, removed, ?end, "session ended"),
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

/// A refusal, with the code a unary call would have failed with
/// ([`super::status_of`] is the one mapping).
fn registry_rejected(registry: &Registry, key: Option<v1::InstanceKey>, e: &RegistryError) -> Step {
    rejected(registry, key, super::status_of(e).code(), e.to_string())
}

fn handle(registry: &Registry, session: &Session, req: v1::RegisterRequest) -> Step {
    match req.kind {
        Some(In::Upsert(instance)) => match session.upsert(instance) {
            Ok((key, version)) => Step::Reply(Out::Accepted(v1::Accepted { key: Some(key), version, removed: false })),
            Err((key, e)) => registry_rejected(registry, key, &e),
        },
        Some(In::Remove(k)) => match session.remove(k) {
            Ok((key, version)) => Step::Reply(Out::Accepted(v1::Accepted { key: Some(key), version, removed: true })),
            Err((key, e)) => registry_rejected(registry, key, &e),
        },
        Some(In::Heartbeat(hb)) => Step::Reply(Out::Pong(v1::Pong { nonce: hb.nonce })),
        Some(In::Goodbye(g)) => Step::Goodbye { moved: g.moved },
        Some(In::Open(_)) => rejected(registry, None, Code::FailedPrecondition, "session is already open".to_string()),
        None => rejected(registry, None, Code::InvalidArgument, "message has no `kind`".to_string()),
    }
}
