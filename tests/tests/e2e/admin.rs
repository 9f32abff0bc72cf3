//! The operator's JSON endpoints (`/admin/node`, `/admin/members`) on real
//! nodes: what an operator sees on a standalone node, in a healthy cluster,
//! while a peer is silent, and on a node cut off from NATS. Timers are the fast
//! ones of `cluster_config` (beats 200 ms, suspect 600 ms, orphaned 1.5 s).

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail, ensure};
use registry_tests::nats::NatsServer;
use registry_tests::*;
use serde_json::Value;
use v1::register_response::Kind as Out;

/// GET `path` on a node's HTTP address, parsed as JSON (fails on a non-200).
async fn admin(http: SocketAddr, path: &str) -> Result<Value> {
    let (status, body) = http_get(http, path).await?;
    if status != 200 {
        bail!("{path}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{path} is not JSON: {body}"))
}

/// The entry of `node` in an `/admin/members` answer.
fn member<'a>(members: &'a Value, node: &str) -> Option<&'a Value> {
    members["members"].as_array()?.iter().find(|m| m["node_id"] == node)
}

#[tokio::test]
async fn standalone_node_describes_itself() -> Result<()> {
    let node = start_node(test_config("solo")).await?;
    let mut provider = Session::open(&mut client(node.grpc_addr).await?, 0).await?;
    assert!(matches!(provider.upsert(instance("orders", "o1", 8001)).await?, Out::Accepted(_)));

    let n = admin(node.http_addr, "/admin/node").await?;
    assert_eq!(n["node_id"], "solo");
    assert_eq!(n["cluster"], "default");
    assert_eq!(n["clustered"], false);
    assert_eq!(n["ready"], true);
    assert_eq!(n["draining"], false);
    assert_eq!(n["bus_connected"], Value::Null, "no bus on a standalone node");
    assert_eq!(n["safety_valve_holding"], Value::Null);
    assert_eq!(n["degraded"], false);
    assert_eq!(n["instances"], 1);
    assert_eq!(n["services"], 1);
    assert_eq!(n["sessions"], 1);
    assert_eq!(n["own_records"], 1);
    assert_eq!(n["advertise_addr"], node.grpc_addr.to_string());

    // The same answer as Cluster.Members, as JSON.
    let m = admin(node.http_addr, "/admin/members").await?;
    assert_eq!(m["cluster"], "default");
    assert_eq!(m["node_id"], "solo");
    assert_eq!(m["members"].as_array().map(Vec::len), Some(1));
    let me = member(&m, "solo").context("own entry")?;
    let grpc = ClusterClient::new(channel(node.grpc_addr).await?).members(v1::MembersRequest {}).await?.into_inner();
    let g = &grpc.members[0];
    assert_eq!(me["state"], "local");
    assert_eq!(me["incarnation"], g.incarnation);
    assert_eq!(me["origin_seq"], g.origin_seq);
    assert_eq!(me["applied_seq"], g.applied_seq);
    assert_eq!(me["record_count"], 1);
    assert_eq!(me["lag"], 0);
    assert_eq!(me["in_sync"], true);
    assert_eq!(me["ready"], true);

    provider.goodbye().await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_members_show_sync_state_silence_and_a_lost_bus() -> Result<()> {
    let mut nats = NatsServer::start().await?;
    let mut nodes = start_cluster(&[nats.url()], "adm", &["a", "b"]).await?;
    let (a_grpc, b_http) = (nodes[0].grpc_addr, nodes[1].http_addr);
    let mut provider = Session::open(&mut client(a_grpc).await?, 0).await?;
    // 12 instances: the safety valve never holds below 10 in all.
    for i in 0..12 {
        let id = format!("o{i}");
        assert!(matches!(provider.upsert(instance("orders", &id, 8001 + i)).await?, Out::Accepted(_)));
    }

    // B sees A live, caught up, digests equal: what "in sync" means.
    let members = eventually("B lists A in sync with 12 records", PROMPTLY, || async {
        let m = admin(b_http, "/admin/members").await.ok()?;
        let a = member(&m, "a")?;
        (a["record_count"] == 12 && a["in_sync"] == true).then(|| m.clone())
    })
    .await?;
    assert_eq!(members["cluster"], "adm");
    assert_eq!(members["node_id"], "b");
    let a = member(&members, "a").context("a listed")?;
    assert_eq!(a["state"], "live");
    assert_eq!(a["ready"], true);
    assert_eq!(a["lag"], 0);
    assert_eq!(a["digest_match"], true);
    assert_eq!(a["origin_seq"], a["applied_seq"]);
    assert_eq!(a["advertise_addr"], a_grpc.to_string());
    assert!(a["last_beat_age_ms"].as_u64().is_some_and(|ms| ms < 2_000), "{a}");
    assert_eq!(member(&members, "b").context("own entry")?["state"], "local");

    let b = admin(b_http, "/admin/node").await?;
    assert_eq!(b["clustered"], true);
    assert_eq!(b["bus_connected"], true);
    assert_eq!(b["degraded"], false);
    assert_eq!(b["safety_valve_holding"], false);
    assert_eq!(b["instances"], 12);
    assert_eq!(b["own_records"], 0, "B owns none of them");

    // A goes silent (crash): B reports it suspect, then orphaned and degraded.
    nodes.remove(0).crash().await;
    eventually("B reports A orphaned and itself degraded", PROMPTLY, || async {
        let m = admin(b_http, "/admin/members").await.ok()?;
        let n = admin(b_http, "/admin/node").await.ok()?;
        (member(&m, "a")?["state"] == "orphaned" && n["degraded"] == true).then_some(())
    })
    .await?;

    // Its grace ends, but removing A's records would empty B: the safety valve
    // holds them instead, and says so (orphan grace is 3 s here).
    let held = eventually("B's safety valve holds", std::time::Duration::from_secs(10), || async {
        let n = admin(b_http, "/admin/node").await.ok()?;
        (n["safety_valve_holding"] == true).then_some(n)
    })
    .await?;
    assert_eq!(held["instances"], 12, "held, not removed");

    // NATS goes away: B says it is cut off, and still serves and stays ready.
    nats.kill();
    let cut_off = eventually("B reports the lost bus", PROMPTLY, || async {
        let n = admin(b_http, "/admin/node").await.ok()?;
        (n["bus_connected"] == false).then_some(n)
    })
    .await?;
    assert_eq!(cut_off["degraded"], true);
    assert_eq!(cut_off["ready"], true, "a cut-off node keeps serving what it has");
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// Registers `n` instances of `service` on `node`, each with `meta_bytes` of
/// metadata, over as many sessions as the per-session limit needs.
async fn register_many(node: SocketAddr, service: &str, n: u32, meta_bytes: usize) -> Result<Vec<Session>> {
    let mut sessions = Vec::new();
    let mut c = client(node).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let mut s = Session::open(&mut c, 0).await?;
        for &i in chunk {
            let mut inst = instance(service, &format!("i{i}"), 1 + i % 60_000);
            inst.metadata.insert("blob".into(), "x".repeat(meta_bytes));
            ensure!(matches!(s.upsert(inst).await?, Out::Accepted(_)), "instance {i} refused");
        }
        sessions.push(s);
    }
    Ok(sessions)
}

/// A joining node loads a peer's slice in pages, and a page is one NATS
/// message. With the default 2,000 entries a page and instances carrying
/// about 1 KiB of metadata, a page would be over NATS's default 1 MiB
/// max_payload; pages are also bounded by bytes (half the server's
/// max_payload), so the joiner loads the peer and turns ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_loads_a_peer_whose_instances_carry_1_kib_of_metadata() -> Result<()> {
    // Not beside a browser scenario (see ONE_AT_A_TIME in main.rs).
    let _turn = crate::ONE_AT_A_TIME.lock().await;
    let nats = NatsServer::start().await?;
    let a = start_node(cluster_config("a", &[nats.url()], "big")).await?;
    until_ready(&a).await?;
    let _sessions = register_many(a.grpc_addr, "orders", 2_100, 1_024).await?;
    let b = start_node(cluster_config("b", &[nats.url()], "big")).await?;
    let http = b.http_addr;
    eventually("b ready with a's 2,100 instances", std::time::Duration::from_secs(10), || async {
        let n = admin(http, "/admin/node").await.ok()?;
        (n["ready"] == true && n["instances"] == 2_100).then_some(())
    })
    .await?;
    Ok(())
}

/// The runbook's fix for the above: fewer entries per page, so that
/// page_entries x the largest instance stays well under max_payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smaller_pages_let_a_joiner_load_large_instances() -> Result<()> {
    // Not beside a browser scenario (see ONE_AT_A_TIME in main.rs).
    let _turn = crate::ONE_AT_A_TIME.lock().await;
    let nats = NatsServer::start().await?;
    let mut config = cluster_config("a", &[nats.url()], "pages");
    config.sync.page_entries = 200;
    let a = start_node(config).await?;
    until_ready(&a).await?;
    let _sessions = register_many(a.grpc_addr, "orders", 2_100, 1_024).await?;
    let mut config = cluster_config("b", &[nats.url()], "pages");
    config.sync.page_entries = 200;
    let b = start_node(config).await?;
    let http = b.http_addr;
    eventually("b ready with a's 2,100 instances", std::time::Duration::from_secs(10), || async {
        let n = admin(http, "/admin/node").await.ok()?;
        (n["ready"] == true && n["instances"] == 2_100).then_some(())
    })
    .await?;
    Ok(())
}

/// Words of the form `registry_[a-z_]+` in `text`, without the families
/// written as `registry_sync_*`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("registry_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(tail.len());
        if !tail[..end].ends_with('_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// OPERATIONS.md tells operators what to alert on: every metric it names must
/// be one a clustered node really exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_doc_names_only_metrics_the_node_exports() -> Result<()> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../OPERATIONS.md"))?;
    let nats = NatsServer::start().await?;
    let nodes = start_cluster(&[nats.url()], "doc", &["a", "b"]).await?;
    // b's peer_lag line for a appears once b has heard a.
    let http = nodes[0].http_addr;
    let body = eventually("a exports peer_lag for b", PROMPTLY, || async move {
        let (status, body) = http_get(http, "/metrics").await.ok()?;
        (status == 200 && body.contains("peer=\"b\"")).then_some(body)
    })
    .await?;
    let mut exported = metric_names(&body);
    // A node with TLS exports its TLS metrics too.
    let ca = registry_tests::pki::TestCa::new("doc CA")?;
    let dir = registry_tests::pki::cert_dir("doc")?;
    let (cert_file, key_file) = ca.server()?.write(&dir, "server")?;
    let mut config = registry_tests::test_config("doc-tls");
    config.tls =
        Some(registry_node::listen::TlsSettings { cert_file, key_file, client_ca_file: None, client_auth: None });
    let tls_node = registry_tests::start_node(config).await?;
    let (_, tls_body) =
        registry_tests::pki::ClientTls::trusting(&ca).https_get(tls_node.http_addr, "/metrics", &[]).await?;
    exported.extend(metric_names(&tls_body));
    tls_node.shutdown().await;
    let documented = metric_names(&doc);
    ensure!(documented.len() >= 20, "OPERATIONS.md names its metrics: {documented:?}");
    let unknown: Vec<_> = documented.difference(&exported).collect();
    ensure!(unknown.is_empty(), "OPERATIONS.md names metrics the node does not export: {unknown:?}");
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}
