//! Clusters of real nodes replicating over real nats-server processes.
//! Bounds: propagation and removal waits are 5 s (`PROMPTLY`) unless a test
//! names a longer one; timers are the fast ones of `cluster_config` (beats
//! 200 ms, suspect 600 ms, orphaned 1.5 s, orphan grace 3 s).

use std::time::Duration;

use anyhow::{Result, bail};
use registry_tests::nats::{NatsCluster, NatsServer};
use registry_tests::*;
use v1::register_response::Kind as Out;
use v1::subscribe_response::Kind as Push;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_on_one_node_reaches_subscribers_on_another() -> Result<()> {
    let nats = NatsServer::start().await?;
    let nodes = start_cluster(&[nats.url()], "t1", &["a", "b", "c"]).await?;
    let mut on_c = Watch::start(&mut client(nodes[2].grpc_addr).await?, "", &["orders"], "checkout").await?;
    on_c.step(PROMPTLY).await?;
    let mut provider = Session::open(&mut client(nodes[0].grpc_addr).await?, 0).await?;
    assert!(matches!(provider.upsert(instance("orders", "o1", 8001)).await?, Out::Accepted(_)));
    on_c.until("instance registered on A seen on C", PROMPTLY, |v| v["orders"].1.contains_key("o1")).await?;
    // Every node answers reads with it, and knows every member.
    for n in &nodes {
        let ids = eventually("GetService on every node", PROMPTLY, || async {
            service_ids(n.grpc_addr, "orders").await.ok().filter(|ids| ids == &["o1"])
        })
        .await?;
        assert_eq!(ids, ["o1"]);
    }
    let b = nodes[1].grpc_addr;
    let members = eventually("B knows every member, in sync", PROMPTLY, || async move {
        let m = ClusterClient::new(channel(b).await.ok()?).members(v1::MembersRequest {}).await.ok()?.into_inner();
        let synced = m.members.iter().all(|m| m.digest_match && m.applied_seq == m.origin_seq);
        (m.members.len() == 3 && synced).then_some(m)
    })
    .await?;
    assert_eq!(members.cluster, "t1");
    let mut names: Vec<_> = members.members.iter().map(|m| m.node_id.clone()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    let states: Vec<i32> = members.members.iter().map(|m| m.state).collect();
    assert!(states.iter().filter(|s| **s == v1::MemberState::Live as i32).count() == 2, "{states:?}");
    // The consumer on C is in every node's directory.
    let listed = eventually("consumer directory replicated", PROMPTLY, || async {
        let mut c = client(nodes[0].grpc_addr).await.ok()?;
        let r = c
            .list_consumers(v1::ListConsumersRequest { namespace: String::new(), service: "orders".into() })
            .await
            .ok()?;
        let consumers = r.into_inner().consumers;
        (consumers.len() == 1).then_some(consumers)
    })
    .await?;
    assert_eq!(listed[0].node_id, "c");
    provider.goodbye().await?;
    on_c.until("goodbye on A removes it on C", PROMPTLY, |v| v["orders"].1.is_empty()).await?;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_on_another_node_removes_an_instance_owned_elsewhere() -> Result<()> {
    let nats = NatsServer::start().await?;
    let nodes = start_cluster(&[nats.url()], "t2", &["a", "b", "c"]).await?;
    let mut on_c = Watch::start(&mut client(nodes[2].grpc_addr).await?, "", &["pay"], "w").await?;
    on_c.step(PROMPTLY).await?;
    let mut provider = Session::open(&mut client(nodes[0].grpc_addr).await?, 0).await?;
    provider.upsert(instance("pay", "p1", 1)).await?;
    on_c.until("registered", PROMPTLY, |v| v["pay"].1.contains_key("p1")).await?;
    // B must hold the copy it is asked to remove (C having it says nothing of B).
    eventually("B has p1", PROMPTLY, || async {
        service_ids(nodes[1].grpc_addr, "pay").await.ok().filter(|ids| ids == &["p1"])
    })
    .await?;
    let key = v1::InstanceKey { namespace: String::new(), service: "pay".into(), instance_id: "p1".into() };
    let r = client(nodes[1].grpc_addr).await?.deregister(v1::DeregisterRequest { key: Some(key) }).await?;
    assert!(r.into_inner().found);
    on_c.until("deregistered via B", PROMPTLY, |v| v["pay"].1.is_empty()).await?;
    for n in &nodes {
        eventually("gone everywhere", PROMPTLY, || async {
            service_ids(n.grpc_addr, "pay").await.ok().filter(|ids| ids.is_empty())
        })
        .await?;
    }
    // The owner let go: its session no longer holds p1, so removing it is refused.
    provider
        .send(v1::register_request::Kind::Remove(v1::InstanceKey {
            namespace: String::new(),
            service: "pay".into(),
            instance_id: "p1".into(),
        }))
        .await?;
    assert!(matches!(provider.next().await?, Out::Rejected(_)));
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_moving_between_nodes_never_disappears_for_consumers() -> Result<()> {
    let nats = NatsServer::start().await?;
    let nodes = start_cluster(&[nats.url()], "t3", &["a", "b", "c"]).await?;
    let mut on_c = Watch::start(&mut client(nodes[2].grpc_addr).await?, "", &["api"], "w").await?;
    on_c.step(PROMPTLY).await?;
    let mut on_a = Session::open(&mut client(nodes[0].grpc_addr).await?, 0).await?;
    on_a.upsert(instance("api", "x", 1)).await?;
    on_c.until("registered on A", PROMPTLY, |v| v["api"].1.get("x").is_some_and(|i| i.port == 1)).await?;
    // The provider re-registers on B (port changes so the move is visible), then
    // leaves A for good.
    let mut on_b = Session::open(&mut client(nodes[1].grpc_addr).await?, 0).await?;
    on_b.upsert(instance("api", "x", 2)).await?;
    on_c.until("B's copy wins", PROMPTLY, |v| v["api"].1.get("x").is_some_and(|i| i.port == 2)).await?;
    on_a.goodbye().await?;
    // Give A's goodbye time to propagate, then check nothing was removed.
    eventually("A's copy gone from A's slice", PROMPTLY, || async {
        let members =
            ClusterClient::new(channel(nodes[2].grpc_addr).await.ok()?).members(v1::MembersRequest {}).await.ok()?;
        let a = members.into_inner().members.into_iter().find(|m| m.node_id == "a")?;
        (a.record_count == 0 && a.digest_match).then_some(())
    })
    .await?;
    on_c.drain(PROMPTLY).await?;
    assert!(removed_ids(&on_c).is_empty(), "consumers saw a removal: {:?}", on_c.log);
    for n in &nodes {
        let ids = service_ids(n.grpc_addr, "api").await?;
        assert_eq!(ids, ["x"], "exactly one live copy on every node");
    }
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_node_is_orphaned_then_removed_and_restart_brings_a_new_incarnation() -> Result<()> {
    let nats = NatsServer::start().await?;
    let mut nodes = start_cluster(&[nats.url()], "t4", &["a", "b", "c"]).await?;
    let mut on_c = Watch::start(&mut client(nodes[2].grpc_addr).await?, "", &["svc"], "w").await?;
    on_c.step(PROMPTLY).await?;
    // Two providers on A: one will re-register at B in time, one is gone for good.
    let link = CuttableLink::start(nodes[0].grpc_addr).await?;
    let mut stays = Session::open(&mut client(link.addr).await?, 0).await?;
    stays.upsert(instance("svc", "moves", 1)).await?;
    let mut dies = Session::open(&mut client(link.addr).await?, 0).await?;
    dies.upsert(instance("svc", "dies", 2)).await?;
    on_c.until("both registered", PROMPTLY, |v| v["svc"].1.len() == 2).await?;

    let a = nodes.remove(0);
    let old_incarnation = a.registry.incarnation();
    a.crash().await;
    link.cut();
    let crashed = tokio::time::Instant::now();
    let mut re = Session::open(&mut client(nodes[0].grpc_addr).await?, 0).await?;
    re.upsert(instance("svc", "moves", 1)).await?;
    // Orphaned after 1.5 s, removed after the 3 s grace: "dies" goes, "moves" never does.
    on_c.until("the dead provider is removed", Duration::from_secs(10), |v| !v["svc"].1.contains_key("dies")).await?;
    let waited = crashed.elapsed();
    assert!(waited >= Duration::from_millis(4_000), "removed after {waited:?}: before orphaned + grace");
    assert!(on_c.has("svc", "moves"));
    on_c.drain(PROMPTLY).await?;
    assert_eq!(removed_ids(&on_c), ["dies"], "the re-registered provider never flapped");

    // A comes back as a new incarnation and catches up.
    let a = start_node(cluster_config("a", &[nats.url()], "t4")).await?;
    until_ready(&a).await?;
    assert_ne!(a.registry.incarnation(), old_incarnation);
    let ids = eventually("restarted A has the registry", PROMPTLY, || async {
        service_ids(a.grpc_addr, "svc").await.ok().filter(|ids| ids == &["moves"])
    })
    .await?;
    assert_eq!(ids, ["moves"]);
    // A may turn ready before B has heard its hello (B's beats vouch for what
    // B knows), so B's member list shows the new incarnation shortly after.
    let mut cluster = ClusterClient::new(channel(nodes[0].grpc_addr).await?);
    let incarnation = a.registry.incarnation();
    eventually("B lists A's new incarnation", PROMPTLY, || {
        let mut cluster = cluster.clone();
        async move {
            let members = cluster.members(v1::MembersRequest {}).await.ok()?.into_inner().members;
            members.into_iter().find(|m| m.node_id == "a" && m.incarnation == incarnation)
        }
    })
    .await?;
    let members = cluster.members(v1::MembersRequest {}).await?.into_inner().members;
    let a_members: Vec<u64> = members.iter().filter(|m| m.node_id == "a").map(|m| m.incarnation).collect();
    assert_eq!(a_members, [incarnation], "the old incarnation is gone");
    a.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_while_writes_continue_converges() -> Result<()> {
    let mut nats = NatsServer::start().await?;
    let nodes = start_cluster(&[nats.url()], "t5", &["a", "b", "c"]).await?;
    let mut sessions = Vec::new();
    for n in &nodes {
        sessions.push(Session::open(&mut client(n.grpc_addr).await?, 0).await?);
    }
    let mut expected = Vec::new();
    for round in 0..30u32 {
        if round == 10 {
            nats.kill();
        }
        if round == 20 {
            nats.restart().await?;
        }
        for (i, s) in sessions.iter_mut().enumerate() {
            let id = format!("n{i}-r{round}");
            assert!(matches!(s.upsert(instance("churn", &id, 1 + round)).await?, Out::Accepted(_)));
            expected.push(id);
        }
    }
    expected.sort();
    for n in &nodes {
        let got = eventually("every node converges after NATS came back", Duration::from_secs(15), || async {
            service_ids(n.grpc_addr, "churn").await.ok().filter(|ids| ids == &expected)
        })
        .await?;
        assert_eq!(got.len(), 90);
    }
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_on_one_nats_stay_separate() -> Result<()> {
    let nats = NatsServer::start().await?;
    let blue = start_cluster(&[nats.url()], "blue", &["n1", "n2"]).await?;
    let green = start_cluster(&[nats.url()], "green", &["n1", "n2"]).await?;
    let mut p = Session::open(&mut client(blue[0].grpc_addr).await?, 0).await?;
    p.upsert(instance("only-blue", "b1", 1)).await?;
    eventually("blue replicates", PROMPTLY, || async {
        service_ids(blue[1].grpc_addr, "only-blue").await.ok().filter(|ids| ids.len() == 1)
    })
    .await?;
    for g in &green {
        assert!(service_ids(g.grpc_addr, "only-blue").await?.is_empty());
        let members = ClusterClient::new(channel(g.grpc_addr).await?).members(v1::MembersRequest {}).await?;
        assert_eq!(members.into_inner().members.len(), 2, "green sees only green");
    }
    for n in blue.into_iter().chain(green) {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_different_servers_of_a_nats_cluster_converge() -> Result<()> {
    let nats = NatsCluster::start(3).await?;
    let nodes = start_cluster(&nats.urls(), "t7", &["a", "b", "c"]).await?;
    let mut sessions = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut s = Session::open(&mut client(n.grpc_addr).await?, 0).await?;
        s.upsert(instance("routed", &format!("i{i}"), 1)).await?;
        sessions.push(s);
    }
    for n in &nodes {
        eventually("all three instances on every node", PROMPTLY, || async {
            service_ids(n.grpc_addr, "routed").await.ok().filter(|ids| ids.len() == 3)
        })
        .await?;
    }
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// Instance counts per service of the default namespace, as ListServices on `addr` says.
async fn counts(addr: std::net::SocketAddr) -> Result<Vec<u32>> {
    let r = client(addr).await?.list_services(v1::ListServicesRequest { namespace: String::new() }).await?;
    Ok(r.into_inner().services.iter().map(|s| s.instance_count).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_a_large_cluster_is_ready_with_everything_and_never_pushes_a_partial_list() -> Result<()> {
    // Not beside a browser scenario (see ONE_AT_A_TIME in main.rs).
    let _turn = crate::ONE_AT_A_TIME.lock().await;
    // 100k instances: 100 services of 1,000, one session per service.
    const SERVICES: u32 = 100;
    const PER_SERVICE: u32 = 1_000;
    let nats = NatsServer::start().await?;
    // Node a holds all 100 sessions, which rebalancing (off in the test
    // kit) would drain part of while they register.
    let config = |name: &str| cluster_config(name, &[nats.url()], "t8");
    let nodes = vec![start_node(config("a")).await?, start_node(config("b")).await?];
    for n in &nodes {
        until_ready(n).await?;
    }
    let mut sessions = Vec::new();
    let mut c = client(nodes[0].grpc_addr).await?;
    for s in 0..SERVICES {
        let mut session = Session::open(&mut c, 0).await?;
        for i in 0..PER_SERVICE {
            let mut inst = instance(&format!("svc-{s}"), &format!("i{i}"), 1 + i);
            inst.metadata.insert("zone".into(), "eu-1".into());
            session.send(v1::register_request::Kind::Upsert(inst)).await?;
        }
        for _ in 0..PER_SERVICE {
            assert!(matches!(session.next().await?, Out::Accepted(_)));
        }
        sessions.push(session);
    }
    let full = vec![PER_SERVICE; SERVICES as usize];
    let b = nodes[1].grpc_addr;
    eventually("B has all 100k", Duration::from_secs(60), || {
        let full = full.clone();
        async move { counts(b).await.ok().filter(|c| *c == full) }
    })
    .await?;

    // D joins. Until it is ready it refuses reads instead of answering partially;
    // then its first push for every service is that whole service.
    let d = start_node(config("d")).await?;
    let mut dc = client(d.grpc_addr).await?;
    let mut watch = loop {
        match Watch::start(&mut dc, "", &[], "late-joiner").await {
            Ok(w) => break w,
            Err(e) => {
                let status = e.downcast_ref::<tonic::Status>().cloned();
                let status = status.ok_or(e)?;
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains("warming up"), "{}", status.message());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    watch.until("a snapshot of every service", Duration::from_secs(60), |v| v.len() == SERVICES as usize).await?;
    for push in &watch.log {
        match push {
            Push::Snapshot(s) => {
                assert_eq!(s.instances.len(), PER_SERVICE as usize, "partial snapshot of {}", s.service)
            }
            other => bail!("only snapshots expected while nothing changes, got {other:?}"),
        }
    }
    assert_eq!(counts(d.grpc_addr).await?, full);
    d.shutdown().await;
    drop(sessions);
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_forged_bus_messages_are_counted_and_ignored() -> Result<()> {
    let nats = NatsServer::start().await?;
    let nodes = start_cluster(&[nats.url()], "t9", &["a", "b"]).await?;
    let mut p = Session::open(&mut client(nodes[0].grpc_addr).await?, 0).await?;
    p.upsert(instance("svc", "real", 1)).await?;
    eventually("replicated", PROMPTLY, || async {
        service_ids(nodes[1].grpc_addr, "svc").await.ok().filter(|ids| ids.len() == 1)
    })
    .await?;
    let raw = async_nats::connect(nats.url()).await?;
    let base = "registry.t9";
    // Not protobuf at all, on every subject.
    for subject in ["bus.beat.a", "bus.hello.a", "bus.changes.a", "bus.changes.zz", "sync.b"] {
        raw.publish(format!("{base}.{subject}"), bytes::Bytes::from_static(b"\xff\xfe garbage")).await?;
    }
    // A well-formed batch whose origin does not match its subject (forged), and
    // one claiming seq u64::MAX for a real origin.
    use prost::Message as _;
    let forged = registry_proto::sync::ChangeBatch {
        origin: Some(registry_proto::sync::Origin { node_id: "a".into(), incarnation: 1 }),
        first_seq: u64::MAX,
        changes: vec![registry_proto::sync::Change { key: None, put: None, moved_to: None }],
    };
    raw.publish(format!("{base}.bus.changes.a"), forged.encode_to_vec().into()).await?;
    raw.publish(format!("{base}.bus.changes.b"), forged.encode_to_vec().into()).await?;
    raw.flush().await?;
    let b_http = nodes[1].http_addr;
    let garbage = eventually("garbage counted on B", PROMPTLY, || async move {
        let (_, body) = http_get(b_http, "/metrics").await.ok()?;
        metric(&body, "sync_garbage_messages_total").filter(|n| *n >= 5)
    })
    .await?;
    assert!(garbage >= 5);
    // Nothing changed: B still shows exactly the real instance, and keeps replicating.
    assert_eq!(service_ids(nodes[1].grpc_addr, "svc").await?, ["real"]);
    p.upsert(instance("svc", "after", 2)).await?;
    eventually("still replicating after the garbage", PROMPTLY, || async {
        service_ids(nodes[1].grpc_addr, "svc").await.ok().filter(|ids| ids.len() == 2)
    })
    .await?;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_cut_off_from_nats_keep_serving_orphan_nobody_and_say_so() -> Result<()> {
    let mut nats = NatsServer::start().await?;
    let nodes = start_cluster(&[nats.url()], "t10", &["a", "b"]).await?;
    let mut p = Session::open(&mut client(nodes[0].grpc_addr).await?, 0).await?;
    p.upsert(instance("svc", "x", 1)).await?;
    let mut on_b = Watch::start(&mut client(nodes[1].grpc_addr).await?, "", &["svc"], "w").await?;
    on_b.until("x replicated to b", PROMPTLY, |v| v.get("svc").is_some_and(|s| s.1.contains_key("x"))).await?;

    nats.kill();
    // The degraded flag reaches subscribers through progress keepalives (1 s).
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Push::Progress(pr) = on_b.step(left).await?
            && pr.freshness.is_some_and(|f| f.degraded)
        {
            break;
        }
    }
    let b_http = nodes[1].http_addr;
    let (_, body) = http_get(b_http, "/metrics").await?;
    assert_eq!(metric(&body, "sync_bus_connected"), Some(0));
    // Longer than orphaned (1.5 s) + grace (3 s): a node that is itself cut off
    // must not orphan or remove anyone. (Waiting out the period is the point.)
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(service_ids(nodes[1].grpc_addr, "svc").await?, ["x"], "b keeps serving what it has");
    on_b.drain(PROMPTLY).await?;
    assert!(removed_ids(&on_b).is_empty(), "no removal was pushed while cut off");

    nats.restart().await?;
    p.upsert(instance("svc", "y", 2)).await?;
    on_b.until("b catches up after NATS is back", Duration::from_secs(15), |v| {
        v.get("svc").is_some_and(|s| s.1.contains_key("x") && s.1.contains_key("y"))
    })
    .await?;
    eventually("b reports the bus connected again", PROMPTLY, || async move {
        let (_, body) = http_get(b_http, "/metrics").await.ok()?;
        (metric(&body, "sync_bus_connected") == Some(1)).then_some(())
    })
    .await?;
    on_b.drain(PROMPTLY).await?;
    assert!(removed_ids(&on_b).is_empty(), "x never disappeared for b's consumer");
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// A provider asked to move that stops instead (a plain goodbye, during the
/// drain's delay) is gone from every view within a beat interval (200 ms
/// here): its instances are not held for the handover of a move it never
/// made, which would show consumers a stopped provider for the dead time
/// plus the orphan grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_provider_that_says_goodbye_is_removed_within_a_beat() -> Result<()> {
    let nats = NatsServer::start().await?;
    let mut a = cluster_config("a", &[nats.url()], "t-drained-bye");
    a.sessions.rebalance_interval_ms = 200;
    let a = start_node(a).await?;
    let b = start_node(cluster_config("b", &[nats.url()], "t-drained-bye")).await?;
    until_ready(&a).await?;
    until_ready(&b).await?;
    let mut on_b = Watch::start(&mut client(b.grpc_addr).await?, "", &["api"], "w").await?;
    on_b.step(PROMPTLY).await?;
    // Ten providers on a, none on b: a asks some to move.
    let mut sessions = Vec::new();
    for i in 0..10 {
        let mut s = Session::open(&mut client(a.grpc_addr).await?, 5_000).await?;
        s.upsert(instance("api", &format!("p{i}"), 1 + i)).await?;
        sessions.push(s);
    }
    on_b.until("all ten on b's consumer", PROMPTLY, |v| v["api"].1.len() == 10).await?;
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let drained = 'found: loop {
        for (i, s) in sessions.iter_mut().enumerate() {
            if let Ok(Out::Drain(_)) = s.next_within(Duration::from_millis(20)).await {
                break 'found i;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no session asked to move within {PROMPTLY:?}");
        }
    };
    let id = format!("p{drained}");
    sessions[drained].goodbye().await?;
    let bye = tokio::time::Instant::now();
    // Well under the handover a move would get (dead time 1.5 s + orphan
    // grace 3 s): propagation only.
    on_b.until("the stopped provider removed", Duration::from_secs(1), |v| !v["api"].1.contains_key(&id)).await?;
    let took = bye.elapsed();
    assert_eq!(removed_ids(&on_b), [id], "only the stopped provider went (after {took:?})");
    for n in [&a, &b] {
        assert_eq!(service_ids(n.grpc_addr, "api").await?.len(), 9);
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
