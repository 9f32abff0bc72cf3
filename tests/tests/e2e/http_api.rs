//! The JSON HTTP API (`/v1/`) as a script would use it, over real HTTP: a
//! provider with nothing but HTTP (register, renew, watch itself over
//! server-sent events, expire), paginated and searchable reads with counts
//! by status, a service's detail, errors as JSON with their statuses, the
//! grants of the security model, and the OpenAPI document.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use registry_node::auth::{AuthMode, Role};
use registry_tests::{PROMPTLY, SseStream, grant, http_json, start_node, test_config, token_entry};
use serde_json::{Value, json};

fn body(host: &str, port: u32) -> Value {
    json!({ "host": host, "port": port })
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curl_only_provider_registers_renews_watches_itself_and_expires() -> Result<()> {
    let mut config = test_config("http-provider");
    config.sessions.min_lease_ttl_ms = 500;
    let node = start_node(config).await?;
    let addr = node.http_addr;
    let mut watch = SseStream::open(addr, "/v1/watch?service=orders&consumerId=curl-watcher", &[]).await?;
    ensure!(watch.status == 200, "watch: {}", watch.status);
    let snapshot = watch.next_named("snapshot", PROMPTLY).await?;
    ensure!(snapshot.data["instances"].as_array().is_some_and(Vec::is_empty), "{:?}", snapshot.data);

    let mut b = body("10.0.0.7", 8080);
    b["ttlMs"] = json!(1000);
    b["metadata"] = json!({ "version": "1.2.3" });
    let (status, reg) =
        http_json(addr, "POST", "/v1/namespaces/default/services/orders/instances", &[], Some(&b)).await?;
    ensure!(status == 200, "register: {status} {reg}");
    let lease = str_of(&reg["leaseId"]).to_string();
    ensure!(!lease.is_empty() && reg["key"]["instanceId"] == "10.0.0.7:8080" && reg["ttlMs"] == 1000, "{reg}");
    ensure!(str_of(&reg["version"]).parse::<u64>().is_ok(), "64-bit integers are strings: {reg}");

    // The watcher sees it at once, every field in the protobuf JSON mapping
    // (no status given reads as UP).
    let delta = watch.next_named("delta", PROMPTLY).await?;
    let up = &delta.data["upserted"][0];
    ensure!(up["instanceId"] == "10.0.0.7:8080" && up["status"] == "STATUS_UP", "{}", delta.data);
    ensure!(up["metadata"]["version"] == "1.2.3" && up["weight"] == 100, "{}", delta.data);

    // Renewals keep it; the watcher is in the consumer directory.
    for _ in 0..3 {
        let (status, r) = http_json(addr, "POST", &format!("/v1/leases/{lease}/renew"), &[], None).await?;
        ensure!(status == 200 && r["ttlMs"] == 1000, "renew: {status} {r}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, detail) = http_json(addr, "GET", "/v1/namespaces/default/services/orders", &[], None).await?;
    ensure!(status == 200 && detail["instances"].as_array().map(Vec::len) == Some(1), "{detail}");
    ensure!(detail["consumers"][0]["consumerId"] == "curl-watcher", "{detail}");

    // It stops renewing: the lease expires and the watcher sees it go.
    let gone = watch.next_named("delta", Duration::from_secs(5)).await?;
    ensure!(gone.data["removed"] == json!(["10.0.0.7:8080"]), "{}", gone.data);
    let (status, e) = http_json(addr, "POST", &format!("/v1/leases/{lease}/renew"), &[], None).await?;
    ensure!(status == 404 && e["code"] == "NOT_FOUND", "renewing an expired lease: {status} {e}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_paginate_search_and_count_by_status() -> Result<()> {
    let node = start_node(test_config("http-reads")).await?;
    let addr = node.http_addr;
    for i in 0..25 {
        let service = format!("svc-{i:02}");
        for (j, status) in ["STATUS_UP", "STATUS_DOWN", "STATUS_OUT_OF_SERVICE"].iter().enumerate().take(1 + i % 3) {
            let mut b = body("10.0.0.1", 1000 + j as u32);
            b["status"] = json!(status);
            b["zone"] = json!("eu-1");
            let path = format!("/v1/namespaces/default/services/{service}/instances");
            let (status, r) = http_json(addr, "POST", &path, &[], Some(&b)).await?;
            ensure!(status == 200, "{status} {r}");
        }
    }
    let mut b = body("10.9.9.9", 1);
    b["instanceId"] = json!("other");
    http_json(addr, "POST", "/v1/namespaces/prod/services/billing/instances", &[], Some(&b)).await?;

    let (_, ns) = http_json(addr, "GET", "/v1/namespaces", &[], None).await?;
    ensure!(
        ns["namespaces"]
            == json!([{ "name": "default", "services": 25, "instances": 49 },
                                   { "name": "prod", "services": 1, "instances": 1 }]),
        "{ns}"
    );

    // Every service exactly once across pages of 10.
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let path = format!("/v1/namespaces/default/services?pageSize=10&pageToken={token}");
        let (status, page) = http_json(addr, "GET", &path, &[], None).await?;
        ensure!(status == 200 && page["total"] == 25, "{status} {page}");
        pages += 1;
        for s in page["services"].as_array().into_iter().flatten() {
            seen.push(str_of(&s["service"]).to_string());
        }
        token = str_of(&page["nextPageToken"]).to_string();
        if token.is_empty() {
            break;
        }
    }
    ensure!(pages == 3 && seen.len() == 25, "{pages} pages, {seen:?}");
    ensure!(seen.iter().collect::<BTreeSet<_>>().len() == 25 && seen.is_sorted(), "{seen:?}");

    // Search, and counts by status (svc-02 has UP, DOWN and OUT_OF_SERVICE).
    let (_, found) = http_json(addr, "GET", "/v1/namespaces/default/services?search=VC-02", &[], None).await?;
    ensure!(found["total"] == 1, "{found}");
    let s = &found["services"][0];
    ensure!(s["service"] == "svc-02" && s["instanceCount"] == 3, "{s}");
    ensure!(s["up"] == 1 && s["down"] == 1 && s["outOfService"] == 1 && s["starting"] == 0, "{s}");

    // Sorted by a count, most first, ties by name; pages follow that order.
    let (mut by_down, mut token) = (Vec::new(), String::new());
    loop {
        let path = format!("/v1/namespaces/default/services?pageSize=7&orderBy=down%20desc&pageToken={token}");
        let (status, page) = http_json(addr, "GET", &path, &[], None).await?;
        ensure!(status == 200, "{status} {page}");
        for s in page["services"].as_array().into_iter().flatten() {
            by_down.push((s["down"].as_u64().unwrap_or(9), str_of(&s["service"]).to_string()));
        }
        token = str_of(&page["nextPageToken"]).to_string();
        if token.is_empty() {
            break;
        }
    }
    let mut expected = by_down.clone();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    ensure!(by_down.len() == 25 && by_down == expected, "{by_down:?}");
    ensure!(by_down[0] == (1, "svc-01".to_string()), "{by_down:?}");
    let (_, desc) =
        http_json(addr, "GET", "/v1/namespaces/default/services?orderBy=name%20desc&pageSize=2", &[], None).await?;
    ensure!(desc["services"][0]["service"] == "svc-24" && desc["services"][1]["service"] == "svc-23", "{desc}");

    // A service's detail: every field, the node holding each, when written.
    let (status, d) = http_json(addr, "GET", "/v1/namespaces/default/services/svc-02", &[], None).await?;
    ensure!(status == 200 && d["instances"].as_array().map(Vec::len) == Some(3), "{d}");
    let first = &d["instances"][0];
    ensure!(first["ownerNode"] == "http-reads" && first["zone"] == "eu-1", "{first}");
    let written: u64 = str_of(&first["updatedUnixMs"]).parse()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    ensure!(written <= now + 1_000 && now - written < 60_000, "written {written}, now {now}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_their_status() -> Result<()> {
    let node = start_node(test_config("http-errors")).await?;
    let addr = node.http_addr;
    let post = "/v1/namespaces/default/services/orders/instances";
    let rows: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        ("POST", post.into(), Some(json!("not an object")), 400, "INVALID_ARGUMENT"),
        ("POST", post.into(), Some(json!({ "host": "h", "port": 1, "color": "red" })), 400, "INVALID_ARGUMENT"),
        ("POST", post.into(), Some(json!({ "host": "", "port": 1 })), 400, "INVALID_ARGUMENT"),
        ("POST", post.into(), Some(json!({ "host": "h", "port": 70000 })), 400, "INVALID_ARGUMENT"),
        ("POST", post.into(), Some(json!({ "host": "h", "port": 1, "ttlMs": 1 })), 400, "INVALID_ARGUMENT"),
        ("POST", post.into(), Some(json!({ "host": "h", "port": 1, "leaseId": "nope" })), 404, "NOT_FOUND"),
        (
            "POST",
            "/v1/namespaces/default/services/bad%20name!/instances".into(),
            Some(body("h", 1)),
            400,
            "INVALID_ARGUMENT",
        ),
        ("GET", "/v1/namespaces/default/services/unknown".into(), None, 404, "NOT_FOUND"),
        ("GET", "/v1/namespaces/default/services?pageSize=0".into(), None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/namespaces/default/services?pageToken=zz".into(), None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/namespaces/default/services?colour=red".into(), None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/namespaces/default/services?orderBy=colour".into(), None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/namespaces/default/services?orderBy=down%20sideways".into(), None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/namespaces/default/services?orderBy=up%20desc%20name".into(), None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/events?namespace=bad%20ns".into(), None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/events?colour=red".into(), None, 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/leases/unknown/renew".into(), None, 404, "NOT_FOUND"),
        ("GET", "/v1/nothing-here".into(), None, 404, "NOT_FOUND"),
        ("GET", "/v1/watch?service=a%20b".into(), None, 400, "INVALID_ARGUMENT"),
    ];
    for (method, path, b, want_status, want_code) in &rows {
        let (status, e) = http_json(addr, method, path, &[], b.as_ref()).await?;
        ensure!(
            status == *want_status && e["code"] == *want_code && !str_of(&e["message"]).is_empty(),
            "{method} {path}: {status} {e}, expected {want_status} {want_code}"
        );
    }
    // Nothing of that changed anything.
    let (_, ns) = http_json(addr, "GET", "/v1/namespaces", &[], None).await?;
    ensure!(ns["namespaces"] == json!([]), "{ns}");
    // Deregistering what is not there is fine (idempotent).
    let (status, r) = http_json(addr, "DELETE", &format!("{post}/x"), &[], None).await?;
    ensure!(status == 200 && r["found"] == false, "{status} {r}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_obeys_grants_and_ownership() -> Result<()> {
    let token = || format!("{:032x}", rand::random::<u128>());
    let (writer, reader, admin, other) = (token(), token(), token(), token());
    let entry = |name: &str, t: &str, namespace: &str, services: &str, role| {
        token_entry(name, t, vec![grant(namespace, services, role)])
    };
    let mut config = test_config("http-auth");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.tokens = vec![
        entry("writer", &writer, "default", "orders*", Role::Write),
        entry("reader", &reader, "default", "*", Role::Read),
        entry("ops", &admin, "default", "*", Role::Admin),
        entry("other", &other, "default", "orders*", Role::Write),
    ];
    let node = start_node(config).await?;
    let addr = node.http_addr;
    let bearer = |t: &str| format!("Bearer {t}");
    let (w, r, a, o) = (bearer(&writer), bearer(&reader), bearer(&admin), bearer(&other));
    let post = "/v1/namespaces/default/services/orders/instances";
    let del = format!("{post}/10.0.0.7:8080");
    let b = body("10.0.0.7", 8080);

    let (status, e) = http_json(addr, "POST", post, &[], Some(&b)).await?;
    ensure!(status == 401 && e["code"] == "UNAUTHENTICATED", "{status} {e}");
    let (status, e) = http_json(addr, "POST", post, &[("authorization", &r)], Some(&b)).await?;
    ensure!(status == 403 && str_of(&e["message"]).contains("reader"), "{status} {e}");
    let (status, _) = http_json(addr, "POST", post, &[("authorization", &w)], Some(&b)).await?;
    ensure!(status == 200);
    // Another writer of the service may neither replace nor remove it.
    let (status, e) = http_json(addr, "POST", post, &[("authorization", &o)], Some(&b)).await?;
    ensure!(status == 403 && str_of(&e["message"]).contains("belongs to principal \"writer\""), "{status} {e}");
    let (status, _) = http_json(addr, "DELETE", &del, &[("authorization", &o)], None).await?;
    ensure!(status == 403);
    // Reads: the reader sees it; the members and node views need their grants.
    let (status, d) =
        http_json(addr, "GET", "/v1/namespaces/default/services/orders", &[("authorization", &r)], None).await?;
    ensure!(status == 200 && d["instances"][0]["principal"] == "writer", "{status} {d}");
    ensure!(http_json(addr, "GET", "/v1/members", &[("authorization", &r)], None).await?.0 == 403);
    let (status, m) = http_json(addr, "GET", "/v1/members", &[("authorization", &a)], None).await?;
    ensure!(status == 200 && m["members"][0]["state"] == "MEMBER_STATE_LOCAL", "{status} {m}");
    let (status, n) = http_json(addr, "GET", "/v1/node", &[("authorization", &r)], None).await?;
    ensure!(status == 200 && n["nodeId"] == "http-auth" && n["ready"] == true && n["instances"] == "1", "{n}");
    // A watch needs read, like Subscribe.
    let watch = SseStream::open(addr, "/v1/watch?service=orders", &[]).await?;
    ensure!(watch.status == 401, "anonymous watch: {}", watch.status);
    // An admin removes anyone's instance.
    let (status, gone) = http_json(addr, "DELETE", &del, &[("authorization", &a)], None).await?;
    ensure!(status == 200 && gone["found"] == true, "{status} {gone}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_names_every_route() -> Result<()> {
    let node = start_node(test_config("http-openapi")).await?;
    let (status, doc) = http_json(node.http_addr, "GET", "/v1/openapi.json", &[], None).await?;
    ensure!(status == 200 && str_of(&doc["openapi"]).starts_with("3."), "{status}");
    let paths: BTreeSet<&str> = doc["paths"].as_object().into_iter().flatten().map(|(k, _)| k.as_str()).collect();
    for p in ["/v1/namespaces", "/v1/watch", "/v1/leases/{lease_id}/renew", "/v1/members", "/v1/node"] {
        ensure!(paths.contains(p), "{p} not in {paths:?}");
    }
    ensure!(doc["components"]["schemas"]["InstanceJson"]["properties"]["instanceId"].is_object(), "camelCase fields");

    // A real validator (PyPI openapi-spec-validator) accepts it.
    let validator = registry_tests::tools::python_tool("openapi-spec-validator", &["openapi-spec-validator==0.7.1"])?;
    let file = std::env::temp_dir().join(format!("registry-openapi-{}.json", std::process::id()));
    std::fs::write(&file, doc.to_string())?;
    let out = std::process::Command::new(&validator).arg(&file).output()?;
    ensure!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And it can fail: a document without its required `info` is refused.
    let mut broken = doc.clone();
    broken.as_object_mut().map(|o| o.remove("info"));
    std::fs::write(&file, broken.to_string())?;
    ensure!(!std::process::Command::new(&validator).arg(&file).output()?.status.success(), "the validator validates");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_status_override_reaches_every_node_and_outlasts_re_registration() -> Result<()> {
    let token = || format!("{:032x}", rand::random::<u128>());
    let (writer, admin) = (token(), token());
    let entries = vec![
        token_entry("writer", &writer, vec![grant("default", "orders", Role::Write)]),
        token_entry("ops", &admin, vec![grant("default", "*", Role::Admin)]),
    ];
    let nats = registry_tests::nats::NatsServer::start().await?;
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let mut config = registry_tests::cluster_config(name, &[nats.url()], "http-override");
        config.auth.mode = Some(AuthMode::Enforce);
        config.auth.tokens = entries.clone();
        nodes.push(start_node(config).await?);
    }
    for n in &nodes {
        registry_tests::until_ready(n).await?;
    }
    let (a, b) = (nodes[0].http_addr, nodes[1].http_addr);
    let (w, o) = (format!("Bearer {writer}"), format!("Bearer {admin}"));
    let post = "/v1/namespaces/default/services/orders/instances";
    let status_path = format!("{post}/10.0.0.7:8080/status");
    let mut up = body("10.0.0.7", 8080);
    up["status"] = json!("STATUS_UP");
    let (status, reg) = http_json(a, "POST", post, &[("authorization", &w)], Some(&up)).await?;
    ensure!(status == 200, "{status} {reg}");
    let lease = str_of(&reg["leaseId"]).to_string();
    let mut watch = SseStream::open(a, "/v1/watch?service=orders", &[("authorization", &w)]).await?;
    watch.next_named("snapshot", PROMPTLY).await?;

    // The admin reaches node b, the provider is on a.
    let oos = json!({ "status": "STATUS_OUT_OF_SERVICE" });
    let (status, r) = http_json(b, "PUT", &status_path, &[("authorization", &o)], Some(&oos)).await?;
    ensure!(status == 200 && r["changed"] == true, "{status} {r}");
    let delta = watch.next_named("delta", PROMPTLY).await?;
    let shown = &delta.data["upserted"][0];
    ensure!(shown["status"] == "STATUS_OUT_OF_SERVICE", "node a's watcher sees the override: {}", delta.data);
    ensure!(
        shown["statusOverride"]["setBy"] == "ops" && shown["statusOverride"]["providerStatus"] == "STATUS_UP",
        "{shown}"
    );
    // The provider may override its own instance, but not replace or clear
    // an admin's override (node b has its instance by now: a shows b's override).
    registry_tests::eventually("node b has the instance", PROMPTLY, || async {
        let (_, d) =
            http_json(b, "GET", "/v1/namespaces/default/services/orders", &[("authorization", &w)], None).await.ok()?;
        (d["instances"].as_array()?.len() == 1).then_some(())
    })
    .await?;
    for (method, body) in [("DELETE", None), ("PUT", Some(&oos))] {
        let (status, e) = http_json(b, method, &status_path, &[("authorization", &w)], body).await?;
        ensure!(
            status == 403 && e["code"] == "PERMISSION_DENIED" && str_of(&e["message"]).contains("only an admin"),
            "{method} by the provider: {status} {e}"
        );
    }

    // The provider re-registers (same lease, new metadata): still out of service.
    up["leaseId"] = json!(lease);
    up["metadata"] = json!({ "v": "2" });
    let (status, _) = http_json(a, "POST", post, &[("authorization", &w)], Some(&up)).await?;
    ensure!(status == 200);
    let delta = watch.next_named("delta", PROMPTLY).await?;
    let shown = &delta.data["upserted"][0];
    ensure!(shown["status"] == "STATUS_OUT_OF_SERVICE" && shown["metadata"]["v"] == "2", "{}", delta.data);

    // Cleared on node a: node b shows the provider's status again.
    let (status, r) = http_json(a, "DELETE", &status_path, &[("authorization", &o)], None).await?;
    ensure!(status == 200 && r["changed"] == true, "{status} {r}");
    registry_tests::eventually("node b shows STATUS_UP again", PROMPTLY, || async {
        let (_, d) =
            http_json(b, "GET", "/v1/namespaces/default/services/orders", &[("authorization", &o)], None).await.ok()?;
        (d["instances"][0]["status"] == "STATUS_UP" && d["instances"][0]["statusOverride"].is_null()).then_some(())
    })
    .await?;
    // A bad status is refused and changes nothing.
    let (status, e) =
        http_json(a, "PUT", &status_path, &[("authorization", &o)], Some(&json!({ "status": "ASLEEP" }))).await?;
    ensure!(status == 400 && e["code"] == "INVALID_ARGUMENT", "{status} {e}");
    let (status, e) =
        http_json(a, "PUT", &status_path, &[("authorization", &o)], Some(&json!({ "status": "STATUS_UNSPECIFIED" })))
            .await?;
    ensure!(status == 400, "{status} {e}");
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// Waits until every node shows `orders` as `want`: (instance id, status,
/// whether an override is shown), by id.
async fn until_shown(nodes: &[std::net::SocketAddr], what: &str, want: &[(String, String, bool)]) -> Result<()> {
    for &node in nodes {
        registry_tests::eventually(what, PROMPTLY, || async move {
            let (_, d) = http_json(node, "GET", "/v1/namespaces/default/services/orders", &[], None).await.ok()?;
            let mut shown: Vec<(String, String, bool)> = d["instances"]
                .as_array()?
                .iter()
                .map(|i| (str_of(&i["instanceId"]).into(), str_of(&i["status"]).into(), !i["statusOverride"].is_null()))
                .collect();
            shown.sort();
            (shown == want).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// An override outlives its instance's restarts, not its instance: once
/// the instance has been gone for the retention (1 s here), every node
/// drops the override, and the instance registering again later shows its
/// provider's status. One that came back in time keeps its override.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_of_an_instance_gone_for_the_retention_is_dropped_on_every_node() -> Result<()> {
    let nats = registry_tests::nats::NatsServer::start().await?;
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let mut config = registry_tests::cluster_config(name, &[nats.url()], "http-override-gc");
        config.sessions.status_override_retention_ms = 1_000;
        nodes.push(start_node(config).await?);
    }
    for n in &nodes {
        registry_tests::until_ready(n).await?;
    }
    let (a, b) = (nodes[0].http_addr, nodes[1].http_addr);
    let post = "/v1/namespaces/default/services/orders/instances";
    let register = |host: &'static str| async move {
        let mut up = body(host, 8080);
        up["status"] = json!("STATUS_UP");
        let (status, r) = http_json(a, "POST", post, &[], Some(&up)).await?;
        ensure!(status == 200, "{status} {r}");
        anyhow::Ok(())
    };
    let overrides = |node: &registry_node::NodeHandle| {
        let http = node.http_addr;
        async move {
            let (_, text) = registry_tests::http_get(http, "/metrics").await.ok()?;
            registry_tests::metric(&text, "status_overrides")
        }
    };
    let (gone, back) = ("10.0.0.7:8080", "10.0.0.8:8080");
    register("10.0.0.7").await?;
    register("10.0.0.8").await?;
    let oos = json!({ "status": "STATUS_OUT_OF_SERVICE" });
    for id in [gone, back] {
        let (status, r) = http_json(b, "PUT", &format!("{post}/{id}/status"), &[], Some(&oos)).await?;
        ensure!(status == 200 && r["changed"] == true, "{status} {r}");
    }
    let out = |id: &str| (id.to_string(), "STATUS_OUT_OF_SERVICE".to_string(), true);
    until_shown(&[a, b], "both out of service", &[out(gone), out(back)]).await?;
    // Both leave; one comes back at once (a restart), the other does not.
    for id in [gone, back] {
        let (status, r) = http_json(a, "DELETE", &format!("{post}/{id}"), &[], None).await?;
        ensure!(status == 200 && r["found"] == true, "{status} {r}");
    }
    register("10.0.0.8").await?;
    for node in &nodes {
        registry_tests::eventually("only the override of the instance still shown is held", PROMPTLY, || async {
            (overrides(node).await? == 1).then_some(())
        })
        .await?;
    }
    // The one that left registers again: its provider's status, on both.
    register("10.0.0.7").await?;
    let up = (gone.to_string(), "STATUS_UP".to_string(), false);
    until_shown(&[a, b], "the override gone, the other kept", &[up, out(back)]).await?;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_drains_a_node_over_http_and_it_stops() -> Result<()> {
    let (reader, admin) = (format!("{:032x}", rand::random::<u128>()), format!("{:032x}", rand::random::<u128>()));
    let entry = |name: &str, t: &str, role| token_entry(name, t, vec![grant("*", "*", role)]);
    let mut config = test_config("http-drain");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.tokens = vec![entry("reader", &reader, Role::Read), entry("ops", &admin, Role::Admin)];
    let node = start_node(config).await?;
    let addr = node.http_addr;
    let (status, e) =
        http_json(addr, "POST", "/v1/node/drain", &[("authorization", &format!("Bearer {reader}"))], None).await?;
    ensure!(status == 403 && e["code"] == "PERMISSION_DENIED", "{status} {e}");
    ensure!(http_json(addr, "GET", "/readyz", &[], None).await?.0 == 200, "still serving");
    let (status, r) =
        http_json(addr, "POST", "/v1/node/drain", &[("authorization", &format!("Bearer {admin}"))], None).await?;
    ensure!(status == 202 && r["draining"] == true, "{status} {r}");
    tokio::time::timeout(Duration::from_secs(10), node.stopped()).await.map_err(|_| anyhow::anyhow!("not stopped"))?;
    ensure!(http_json(addr, "GET", "/healthz", &[], None).await.is_err(), "the port is closed once stopped");
    Ok(())
}

/// What a console asks first (who am I), and the dashboard feed: only what
/// changed, members for admins only, refusals before the stream starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_and_the_dashboard_feed() -> Result<()> {
    let token = || format!("{:032x}", rand::random::<u128>());
    let (reader, admin, stranger) = (token(), token(), token());
    let entry = |name: &str, t: &str, namespace: &str, role| token_entry(name, t, vec![grant(namespace, "*", role)]);
    let mut config = test_config("http-feed");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.tokens = vec![entry("viewer", &reader, "default", Role::Read), entry("ops", &admin, "*", Role::Admin)];
    let node = start_node(config).await?;
    let addr = node.http_addr;
    let bearer = |t: &str| format!("Bearer {t}");
    let (as_reader, as_admin) = (bearer(&reader), bearer(&admin));

    // The session: anonymous is not an error (the login form), a wrong token is.
    let (status, s) = http_json(addr, "GET", "/v1/session", &[], None).await?;
    ensure!(
        status == 200 && s == json!({ "principal": "", "authRequired": true, "signedIn": false, "admin": false }),
        "{status} {s}"
    );
    let (status, _) = http_json(addr, "GET", "/v1/session", &[("authorization", &bearer(&stranger))], None).await?;
    ensure!(status == 401, "unknown token: {status}");
    let (_, s) = http_json(addr, "GET", "/v1/session", &[("authorization", &as_reader)], None).await?;
    ensure!(s["principal"] == "viewer" && s["signedIn"] == true && s["admin"] == false, "{s}");
    let (_, s) = http_json(addr, "GET", "/v1/session", &[("authorization", &as_admin)], None).await?;
    ensure!(s["principal"] == "ops" && s["admin"] == true, "{s}");

    // The console's files need no credential (their API calls do); `/` leads there.
    let (status, _) = registry_tests::http_request(addr, "GET", "/", &[], None).await?;
    ensure!(status == 303, "/ redirects to the console: {status}");
    let (status, page) = registry_tests::http_request(addr, "GET", "/ui/", &[], None).await?;
    ensure!(status == 200 && page.contains("<script type=\"module\" src=\"app.js\">"), "{status} {page}");
    let (status, _) = registry_tests::http_request(addr, "GET", "/ui/secrets.txt", &[], None).await?;
    ensure!(status == 404, "unknown console file: {status}");

    // Refused before any stream: no credential, a namespace outside the grant.
    let (status, _) = http_json(addr, "GET", "/v1/events", &[], None).await?;
    ensure!(status == 401, "no credential: {status}");
    let (status, e) =
        http_json(addr, "GET", "/v1/events?namespace=prod", &[("authorization", &as_reader)], None).await?;
    ensure!(status == 403 && e["code"] == "PERMISSION_DENIED", "{status} {e}");

    // A reader's feed: node, namespaces, the start of services; no members.
    let mut feed = SseStream::open(addr, "/v1/events", &[("authorization", &as_reader)]).await?;
    ensure!(feed.status == 200, "{}", feed.status);
    let node_event = feed.next_named("node", PROMPTLY).await.context("the first node event")?;
    ensure!(node_event.data["nodeId"] == "http-feed" && node_event.data["members"] == 1, "{}", node_event.data);
    let start = feed.next_named("services", PROMPTLY).await.context("the first services event")?;
    ensure!(start.data["changed"] == json!([]) && start.data["total"] == 0, "{}", start.data);
    let mut admin_feed = SseStream::open(addr, "/v1/events", &[("authorization", &as_admin)]).await?;
    let members = admin_feed.next_named("members", PROMPTLY).await.context("members for an admin")?;
    ensure!(members.data["members"][0]["nodeId"] == "http-feed", "{}", members.data);

    // A registration: the feed counts it by status (the node event comes
    // first in a tick), and names the service.
    let mut b = body("10.0.0.8", 80);
    b["status"] = json!("STATUS_DOWN");
    let (status, r) = http_json(
        addr,
        "POST",
        "/v1/namespaces/default/services/orders/instances",
        &[("authorization", &as_admin)],
        Some(&b),
    )
    .await?;
    ensure!(status == 200, "{status} {r}");
    let node_event =
        feed.next_where("node", PROMPTLY, |n| n["down"] == 1).await.context("node counting the down instance")?;
    ensure!(node_event.data["instances"] == "1" && node_event.data["up"] == 0, "{}", node_event.data);
    let changed = feed.next_named("services", PROMPTLY).await.context("services after a registration")?;
    ensure!(changed.data["changed"] == json!(["orders"]) && changed.data["total"] == 1, "{}", changed.data);
    // Nothing else happens: nothing else is sent (but keep-alive comments).
    let quiet = feed.next(std::time::Duration::from_millis(1_500)).await;
    ensure!(quiet.is_err(), "an unchanged node sends nothing: {:?}", quiet.map(|e| (e.event, e.data)));
    // A reader never gets members.
    ensure!(!feed.seen("members"), "members went to a reader");
    node.shutdown().await;
    Ok(())
}
