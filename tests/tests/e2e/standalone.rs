//! A standalone node over real gRPC: what providers and consumers see.

use std::time::Duration;

use anyhow::{Result, bail};
use registry_tests::*;
use tokio::time::Instant;
use tonic::Code;
use v1::register_request::Kind as In;
use v1::register_response::Kind as Out;
use v1::subscribe_response::Kind as Push;

fn accepted(out: &Out) -> bool {
    matches!(out, Out::Accepted(_))
}

#[tokio::test]
async fn provider_registers_and_subscriber_sees_snapshot_then_deltas() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut provider = Session::open(&mut c, 0).await?;
    assert_eq!(provider.opened.node_id, "n1");
    assert_eq!(provider.opened.lease_ttl_ms, 15_000, "3 x the default 5 s heartbeat");
    assert!(accepted(&provider.upsert(instance("orders", "o1", 8001)).await?));

    let mut watch = Watch::start(&mut c, "", &["orders"], "checkout").await?;
    match watch.step(PROMPTLY).await? {
        Push::Snapshot(s) => {
            assert_eq!(s.service, "orders");
            assert_eq!(s.instances.len(), 1);
            let i = &s.instances[0];
            assert_eq!((i.instance_id.as_str(), i.port, i.namespace.as_str()), ("o1", 8001, "default"));
            assert_eq!(i.weight, Some(100), "default weight filled in");
            assert_eq!(i.status, v1::Status::Up as i32, "unspecified status reads as UP");
        }
        other => bail!("first push must be a snapshot, got {other:?}"),
    }

    assert!(accepted(&provider.upsert(instance("orders", "o2", 8002)).await?));
    match watch.step(PROMPTLY).await? {
        Push::Delta(d) => {
            assert_eq!(d.upserted.iter().map(|i| i.instance_id.as_str()).collect::<Vec<_>>(), ["o2"]);
            assert!(d.removed.is_empty());
            assert!(d.revision > d.prev_revision);
        }
        other => bail!("expected a delta, got {other:?}"),
    }

    provider.goodbye().await?;
    watch.until("goodbye removes both instances", PROMPTLY, |v| v["orders"].1.is_empty()).await?;
    let removals: Vec<_> = watch
        .log
        .iter()
        .filter_map(|p| match p {
            Push::Delta(d) => Some(d.removed.len()),
            _ => None,
        })
        .collect();
    assert_eq!(removals, [0, 2], "one delta removing both instances at once");
    node.shutdown().await;
    Ok(())
}

/// A goodbye that says the provider moved keeps its instances until another
/// node's newer copy takes them over; none comes on a standalone node, so
/// they go when the reconnect grace (1 s in tests) ends, not at once.
#[tokio::test]
async fn goodbye_of_a_moved_provider_removes_after_the_grace() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut watch = Watch::start(&mut c, "default", &["svc"], "w").await?;
    watch.step(PROMPTLY).await?;
    let p = {
        let mut p = Session::open(&mut c, 0).await?;
        assert!(accepted(&p.upsert(instance("svc", "a", 1)).await?));
        p
    };
    watch.until("registered", PROMPTLY, |v| v["svc"].1.contains_key("a")).await?;
    let said = Instant::now();
    p.goodbye_moved().await?;
    watch.until("removed after the grace", PROMPTLY, |v| v["svc"].1.is_empty()).await?;
    let waited = said.elapsed();
    assert!(waited >= Duration::from_millis(900), "removed after {waited:?}: before the 1 s grace");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn half_close_removes_instances_at_once() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut watch = Watch::start(&mut c, "default", &["svc"], "w").await?;
    watch.step(PROMPTLY).await?;
    let mut p = Session::open(&mut c, 0).await?;
    assert!(accepted(&p.upsert(instance("svc", "a", 1)).await?));
    watch.until("registered", PROMPTLY, |v| v["svc"].1.contains_key("a")).await?;
    let started = Instant::now();
    p.half_close();
    watch.until("half-close removes", PROMPTLY, |v| v["svc"].1.is_empty()).await?;
    assert!(started.elapsed() < Duration::from_millis(900), "removal must not wait for the 1 s reconnect grace");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn dropped_connection_removes_instances_after_the_reconnect_grace() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut watch = Watch::start(&mut c, "default", &["svc"], "w").await?;
    watch.step(PROMPTLY).await?;
    // The provider reaches the node through a link the test can cut, as a crash
    // or a network fault would: no goodbye, no half-close.
    let link = CuttableLink::start(node.grpc_addr).await?;
    let mut pc = client(link.addr).await?;
    let mut p = Session::open(&mut pc, 0).await?;
    assert!(accepted(&p.upsert(instance("svc", "a", 1)).await?));
    watch.until("registered", PROMPTLY, |v| v["svc"].1.contains_key("a")).await?;
    link.cut();
    let dropped = Instant::now();
    watch.until("removed after grace", PROMPTLY, |v| v["svc"].1.is_empty()).await?;
    let waited = dropped.elapsed();
    assert!(waited >= Duration::from_millis(900), "removed after {waited:?}, before the 1 s grace");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn silent_session_is_removed_after_its_lease_ttl_and_heartbeats_keep_it() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut watch = Watch::start(&mut c, "default", &["svc"], "w").await?;
    watch.step(PROMPTLY).await?;
    let mut p = Session::open(&mut c, 200).await?;
    assert_eq!(p.opened.lease_ttl_ms, 600);
    assert!(accepted(&p.upsert(instance("svc", "a", 1)).await?));
    watch.until("registered", PROMPTLY, |v| v["svc"].1.contains_key("a")).await?;
    // Heartbeating for several TTLs keeps the instance.
    let until = Instant::now() + Duration::from_millis(2_000);
    let mut nonce = 0;
    while Instant::now() < until {
        nonce += 1;
        assert!(matches!(p.heartbeat(nonce).await?, Out::Pong(v1::Pong { nonce: n }) if n == nonce));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: "svc".into() }).await?;
    assert_eq!(got.into_inner().instances.len(), 1, "still registered");
    let (_, body) = http_get(node.http_addr, "/metrics").await?;
    assert_eq!(metric(&body, "expirations_total"), Some(0), "never expired while heartbeating");
    // Then silence: gone within the TTL (plus scheduling slack).
    let silent = Instant::now();
    watch.until("silent session removed", PROMPTLY, |v| v["svc"].1.is_empty()).await?;
    assert!(silent.elapsed() >= Duration::from_millis(500));
    let err = p.next().await.expect_err("stream ends with a status");
    assert!(err.to_string().contains("lease TTL"), "{err}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unary_lease_expires_unless_renewed() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let reg = c
        .register_instance(v1::RegisterInstanceRequest {
            instance: Some(instance("pay", "p1", 9000)),
            ttl_ms: 600,
            lease_id: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(reg.ttl_ms, 600);
    assert!(!reg.lease_id.is_empty());
    // Renewing keeps it through several TTLs.
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        c.renew(v1::RenewRequest { lease_id: reg.lease_id.clone() }).await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let got = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: "pay".into() }).await?;
    assert_eq!(got.into_inner().instances.len(), 1, "renewed lease keeps the instance");
    // A second instance on the same lease.
    c.register_instance(v1::RegisterInstanceRequest {
        instance: Some(instance("pay", "p2", 9001)),
        ttl_ms: 600,
        lease_id: reg.lease_id.clone(),
    })
    .await?;
    // Without renewals both expire.
    let mut c2 = c.clone();
    eventually("lease expiry removes the instances", PROMPTLY, || {
        let mut c = c2.clone();
        async move {
            let r = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: "pay".into() }).await;
            r.ok().filter(|r| r.get_ref().instances.is_empty()).map(|_| ())
        }
    })
    .await?;
    let err = c2.renew(v1::RenewRequest { lease_id: reg.lease_id.clone() }).await.expect_err("expired");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("register the instance again"), "{}", err.message());
    let err = c2
        .register_instance(v1::RegisterInstanceRequest {
            instance: Some(instance("pay", "p1", 9000)),
            ttl_ms: 10,
            lease_id: String::new(),
        })
        .await
        .expect_err("ttl below minimum");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ttl_ms"), "{}", err.message());
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn deregister_removes_and_is_idempotent() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let reg = c
        .register_instance(v1::RegisterInstanceRequest {
            instance: Some(instance("pay", "p1", 9000)),
            ttl_ms: 0,
            lease_id: String::new(),
        })
        .await?
        .into_inner();
    let key = reg.key.clone();
    let r = c.deregister(v1::DeregisterRequest { key: key.clone() }).await?.into_inner();
    assert!(r.found);
    let r = c.deregister(v1::DeregisterRequest { key }).await?.into_inner();
    assert!(!r.found);
    let got = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: "pay".into() }).await?;
    assert!(got.into_inner().instances.is_empty());
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn out_of_service_update_stays_listed_with_its_status() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut p = Session::open(&mut c, 0).await?;
    assert!(accepted(&p.upsert(instance("svc", "a", 1)).await?));
    let mut watch = Watch::start(&mut c, "default", &["svc"], "w").await?;
    watch.step(PROMPTLY).await?;
    let mut update = instance("svc", "a", 1);
    update.status = v1::Status::OutOfService as i32;
    update.metadata.insert("reason".into(), "maintenance".into());
    assert!(accepted(&p.upsert(update).await?));
    watch
        .until("status update pushed", PROMPTLY, |v| {
            v["svc"].1.get("a").is_some_and(|i| i.status == v1::Status::OutOfService as i32)
        })
        .await?;
    let got = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: "svc".into() }).await?;
    let got = got.into_inner();
    assert_eq!(got.instances.len(), 1);
    assert_eq!(got.instances[0].metadata["reason"], "maintenance");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn namespace_subscriber_sees_services_created_later() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut p = Session::open(&mut c, 0).await?;
    let mut existing = instance("early", "e1", 1);
    existing.namespace = "prod".into();
    assert!(accepted(&p.upsert(existing).await?));
    let mut other_ns = instance("elsewhere", "x", 1);
    other_ns.namespace = "dev".into();
    assert!(accepted(&p.upsert(other_ns).await?));

    let mut watch = Watch::start(&mut c, "prod", &[], "w").await?;
    watch.until("existing service", PROMPTLY, |v| v.contains_key("early")).await?;
    let mut later = instance("late", "l1", 2);
    later.namespace = "prod".into();
    assert!(accepted(&p.upsert(later).await?));
    watch.until("service created later", PROMPTLY, |v| v.get("late").is_some_and(|s| s.1.contains_key("l1"))).await?;
    let first_late = watch.log.iter().find(|m| match m {
        Push::Snapshot(s) => s.service == "late",
        Push::Delta(d) => d.service == "late",
        Push::Progress(_) | Push::Drain(_) => false,
    });
    assert!(matches!(first_late, Some(Push::Snapshot(_))), "first message of a new service is its snapshot");
    assert!(!watch.views.contains_key("elsewhere"), "other namespaces are not pushed");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn invalid_input_is_rejected_with_the_field_and_the_session_stays_usable() -> Result<()> {
    let mut config = test_config("n1");
    config.limits.max_instances_per_session = 3;
    let node = start_node(config).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut p = Session::open(&mut c, 0).await?;
    let cases: Vec<(v1::Instance, &str)> = vec![
        (v1::Instance { service: "bad name".into(), ..instance("x", "a", 1) }, "instance.service"),
        (v1::Instance { service: "s".repeat(200), ..instance("x", "a", 1) }, "limit of 128"),
        (instance("svc", "a", 0), "instance.port"),
        (instance("svc", "a", 70_000), "instance.port"),
        (v1::Instance { host: "".into(), ..instance("svc", "a", 1) }, "instance.host"),
        (v1::Instance { weight: Some(1_000_000), ..instance("svc", "a", 1) }, "instance.weight"),
        (
            v1::Instance {
                metadata: (0..100).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..instance("svc", "a", 1)
            },
            "limit of 64",
        ),
        (
            v1::Instance { metadata: [("k".to_string(), "v".repeat(5_000))].into(), ..instance("svc", "a", 1) },
            "limit of 1024",
        ),
        (v1::Instance { status: 99, ..instance("svc", "a", 1) }, "instance.status"),
    ];
    for (bad, expect) in cases {
        match p.upsert(bad.clone()).await? {
            Out::Rejected(r) => {
                assert_eq!(r.code, Code::InvalidArgument as i32, "{r:?}");
                assert!(r.reason.contains(expect), "reason {:?} should mention {expect:?}", r.reason);
            }
            other => bail!("{bad:?} should be rejected, got {other:?}"),
        }
    }
    // The session is still usable, up to its instance limit.
    for i in 0..3 {
        assert!(accepted(&p.upsert(instance("svc", &format!("i{i}"), 1)).await?));
    }
    match p.upsert(instance("svc", "i3", 1)).await? {
        Out::Rejected(r) => {
            assert_eq!(r.code, Code::ResourceExhausted as i32);
            assert!(r.reason.contains("max_instances_per_session"), "{}", r.reason);
        }
        other => bail!("fourth instance should be rejected, got {other:?}"),
    }
    // Updating one it holds is not a new instance.
    assert!(accepted(&p.upsert(instance("svc", "i0", 2)).await?));
    // Removing what this session does not hold is refused.
    match p
        .send(In::Remove(v1::InstanceKey { namespace: "".into(), service: "svc".into(), instance_id: "zz".into() }))
        .await
    {
        Ok(()) => match p.next().await? {
            Out::Rejected(r) => assert_eq!(r.code, Code::NotFound as i32),
            other => bail!("expected rejection, got {other:?}"),
        },
        Err(e) => return Err(e),
    }
    assert!(matches!(p.heartbeat(7).await?, Out::Pong(_)));
    let got = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: "svc".into() }).await?;
    assert_eq!(got.into_inner().instances.len(), 3, "nothing invalid reached the store");

    // Oversized messages are refused by size, with the limit in the message.
    let mut huge = instance("svc", "huge", 1);
    huge.metadata.insert("blob".into(), "x".repeat(2 * 1024 * 1024));
    let err = c
        .register_instance(v1::RegisterInstanceRequest { instance: Some(huge), ttl_ms: 0, lease_id: String::new() })
        .await
        .expect_err("too large");
    assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted), "{err:?}");
    assert!(err.message().contains("1048576"), "{}", err.message());

    // Reads and subscriptions validate too.
    let err = c
        .get_service(v1::GetServiceRequest { namespace: "bad ns".into(), service: "svc".into() })
        .await
        .expect_err("bad namespace");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("namespace:"), "{}", err.message());
    let err = match c
        .subscribe(v1::SubscribeRequest { namespace: "".into(), services: vec!["no/slash".into()], consumer: None })
        .await
    {
        Err(e) => e,
        Ok(_) => bail!("bad service name must be refused"),
    };
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("services[0]"), "{}", err.message());

    // A session must open first, with a heartbeat interval within bounds.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::RegisterRequest { kind: Some(In::Heartbeat(v1::Heartbeat { nonce: 1 })) }).await?;
    let mut s = c.register(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let err = s.message().await.expect_err("must open first");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = match Session::open(&mut c, 10).await {
        Err(e) => e.to_string(),
        Ok(_) => bail!("10 ms heartbeat must be refused"),
    };
    assert!(err.contains("heartbeat_interval_ms"), "{err}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn consumer_directory_lists_live_subscribers_and_forgets_them() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let list = |mut c: RegistryClient, service: &'static str| async move {
        c.list_consumers(v1::ListConsumersRequest { namespace: String::new(), service: service.into() })
            .await
            .map(|r| r.into_inner().consumers)
    };
    let watch = Watch::start(&mut c, "", &["orders", "pay"], "checkout-7").await?;
    let wildcard = Watch::start(&mut c, "", &[], "auditor").await?;
    let consumers = eventually("both consumers listed", PROMPTLY, || {
        let c = c.clone();
        async move { list(c, "orders").await.ok().filter(|l| l.len() == 2) }
    })
    .await?;
    let ids: Vec<_> = consumers.iter().map(|c| c.info.as_ref().map(|i| i.consumer_id.clone())).collect();
    assert_eq!(ids, [Some("auditor".into()), Some("checkout-7".into())]);
    assert_eq!(consumers[1].services, ["orders", "pay"]);
    assert_eq!(consumers[1].node_id, "n1");
    assert!(list(c.clone(), "unrelated").await?.iter().all(|c| c.services.is_empty()), "only the wildcard");
    drop(watch);
    eventually("checkout-7 forgotten after it leaves", PROMPTLY, || {
        let c = c.clone();
        async move { list(c, "orders").await.ok().filter(|l| l.len() == 1) }
    })
    .await?;
    drop(wildcard);
    eventually("directory empty", PROMPTLY, || {
        let c = c.clone();
        async move { list(c, "").await.ok().filter(|l| l.is_empty()) }
    })
    .await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn thousand_concurrent_sessions_are_all_visible() -> Result<()> {
    // Not beside a browser scenario (see ONE_AT_A_TIME in main.rs).
    let _turn = crate::ONE_AT_A_TIME.lock().await;
    let node = start_node(test_config("n1")).await?;
    let mut tasks = Vec::new();
    for conn in 0..10 {
        let mut c = client(node.grpc_addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut sessions = Vec::new();
            for s in 0..100u32 {
                let mut session = Session::open(&mut c, 0).await?;
                let id = format!("c{conn}-s{s}");
                match session.upsert(instance("fleet", &id, 10_000 + s)).await? {
                    Out::Accepted(_) => {}
                    other => bail!("{id}: {other:?}"),
                }
                sessions.push(session);
            }
            Ok::<_, anyhow::Error>(sessions)
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.extend(t.await??);
    }
    let mut c = client(node.grpc_addr).await?;
    let got = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: "fleet".into() }).await?;
    assert_eq!(got.into_inner().instances.len(), 1_000);
    let listed = c.list_services(v1::ListServicesRequest { namespace: String::new() }).await?.into_inner();
    assert_eq!(listed.services.len(), 1);
    assert_eq!(listed.services[0].instance_count, 1_000);
    let mut watch = Watch::start(&mut c, "", &["fleet"], "w").await?;
    watch.until("snapshot of all 1000", PROMPTLY, |v| v.get("fleet").is_some_and(|s| s.1.len() == 1_000)).await?;
    let (_, body) = http_get(node.http_addr, "/metrics").await?;
    assert_eq!(metric(&body, "sessions"), Some(1_000));
    assert_eq!(metric(&body, "instances"), Some(1_000));
    drop(sessions);
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn http_health_readiness_and_metrics() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    assert_eq!(http_get(node.http_addr, "/healthz").await?.0, 200);
    assert_eq!(http_get(node.http_addr, "/readyz").await?, (200, "ready\n".into()));
    let mut c = client(node.grpc_addr).await?;
    let mut p = Session::open(&mut c, 0).await?;
    p.upsert(instance("svc", "a", 1)).await?;
    p.upsert(instance("bad name", "a", 1)).await?;
    let (status, body) = http_get(node.http_addr, "/metrics").await?;
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "instances"), Some(1));
    assert_eq!(metric(&body, "services"), Some(1));
    assert_eq!(metric(&body, "sessions"), Some(1));
    assert_eq!(metric(&body, "rejections_total"), Some(1));
    assert_eq!(metric(&body, "ready"), Some(1));
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn grpc_health_and_reflection_are_served() -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let node = start_node(test_config("n1")).await?;
    let ch = channel(node.grpc_addr).await?;
    let mut health = HealthClient::new(ch.clone());
    for service in ["", "registry.v1.Registry"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await?.into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let mut reflection = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = reflection.server_reflection_info(tokio_stream::iter([req])).await?.into_inner();
    let msg = resp.message().await?.and_then(|m| m.message_response);
    let Some(MessageResponse::ListServicesResponse(list)) = msg else { bail!("unexpected {msg:?}") };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["registry.v1.Registry", "registry.v1.Cluster", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let members = ClusterClient::new(channel(node.grpc_addr).await?).members(v1::MembersRequest {}).await?;
    let members = members.into_inner().members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].node_id, "n1");
    assert_eq!(members[0].state, v1::MemberState::Local as i32);
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_sessions_and_turns_not_serving() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut p = Session::open(&mut c, 0).await?;
    p.upsert(instance("svc", "a", 1)).await?;
    let http = node.http_addr;
    let shutdown = node.shutdown_token();
    let stopped = tokio::spawn(node.stopped());
    shutdown.cancel();
    match p.next().await? {
        Out::Drain(d) => assert!(d.delay_ms <= 100, "jitter within drain_jitter_ms"),
        other => bail!("expected drain, got {other:?}"),
    }
    assert_eq!(http_get(http, "/readyz").await?, (503, "draining\n".into()));
    let err = Session::open(&mut c, 0).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("shutting down"), "new sessions refused while draining: {err}");
    // The provider leaves as asked; the node then stops well before its grace.
    let t = Instant::now();
    p.goodbye().await?;
    stopped.await?;
    assert!(t.elapsed() < Duration::from_millis(1_500), "stopped once sessions left");
    Ok(())
}
