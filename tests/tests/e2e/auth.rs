//! Authentication and grants over real gRPC and HTTP: the allow/deny matrix
//! of every RPC and endpoint for each role, a denied upsert inside a session
//! that stays usable, lease renewal by another principal, warn mode, and
//! the refusal to start exposed without `[auth]`. Tokens are made at run time.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use rand::Rng as _;
use registry_node::auth::tokens::sha256_hex;
use registry_node::auth::{AuthMode, Role, TokenEntry};
use registry_node::{NodeConfig, NodeHandle};
use registry_proto::v1;
use registry_proto::v1::register_response::Kind as Out;
use registry_tests::{PROMPTLY, grant, http_get, http_get_with, instance, start_node, test_config, token_entry};
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

type Client = v1::registry_client::RegistryClient<Channel>;
type Cluster = v1::cluster_client::ClusterClient<Channel>;

fn token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The principals of the matrix, each with a token made now.
struct Principals {
    reader: String,
    writer: String,
    other: String,
    admin: String,
    elsewhere: String,
}

impl Principals {
    fn new() -> Self {
        Self { reader: token(), writer: token(), other: token(), admin: token(), elsewhere: token() }
    }

    fn entries(&self) -> Vec<TokenEntry> {
        vec![
            token_entry("reader", &self.reader, vec![grant("default", "orders*", Role::Read)]),
            token_entry("writer", &self.writer, vec![grant("default", "orders*", Role::Write)]),
            token_entry("other", &self.other, vec![grant("default", "payments", Role::Write)]),
            token_entry("admin", &self.admin, vec![grant("default", "nothing-in-particular", Role::Admin)]),
            token_entry("elsewhere", &self.elsewhere, vec![grant("prod", "*", Role::Admin)]),
        ]
    }
}

async fn node(mode: AuthMode, principals: &Principals) -> Result<NodeHandle> {
    let mut config: NodeConfig = test_config("auth");
    config.auth.mode = Some(mode);
    config.auth.tokens = principals.entries();
    start_node(config).await
}

async fn client(addr: SocketAddr) -> Result<(Client, Cluster)> {
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok((Client::new(channel.clone()), Cluster::new(channel)))
}

/// `msg` with `authorization: Bearer <token>` (none if `token` is None).
fn with<T>(token: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        let value = MetadataValue::try_from(format!("Bearer {t}")).expect("ascii");
        r.metadata_mut().insert("authorization", value);
    }
    r
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn register(service: &str, id: &str) -> v1::RegisterInstanceRequest {
    v1::RegisterInstanceRequest { instance: Some(instance(service, id, 80)), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_allows_and_denies_by_grant() -> Result<()> {
    let p = Principals::new();
    let node = node(AuthMode::Enforce, &p).await?;
    let (mut c, mut cluster) = client(node.grpc_addr).await?;
    let bad = token();
    let none: Option<&str> = None;
    let (reader, writer, other, admin, elsewhere) = (
        Some(p.reader.as_str()),
        Some(p.writer.as_str()),
        Some(p.other.as_str()),
        Some(p.admin.as_str()),
        Some(p.elsewhere.as_str()),
    );

    // RegisterInstance: (caller, service, expected).
    let rows = [
        (writer, "orders", Code::Ok),
        (writer, "orders-eu", Code::Ok),
        (admin, "payments", Code::Ok),
        (other, "payments", Code::Ok),
        (reader, "orders", Code::PermissionDenied),
        (other, "orders", Code::PermissionDenied),
        (writer, "payments", Code::PermissionDenied),
        (elsewhere, "orders", Code::PermissionDenied),
        (none, "orders", Code::Unauthenticated),
        (Some(bad.as_str()), "orders", Code::Unauthenticated),
    ];
    for (i, (caller, service, expected)) in rows.iter().enumerate() {
        let got = code(c.register_instance(with(*caller, register(service, &format!("r{i}")))).await);
        ensure!(got == *expected, "RegisterInstance {service} row {i}: {got:?}, expected {expected:?}");
    }
    // A malformed header is UNAUTHENTICATED too.
    let mut r = Request::new(register("orders", "basic"));
    r.metadata_mut().insert("authorization", MetadataValue::from_static("Basic dXNlcjpwYXNz"));
    ensure!(code(c.register_instance(r).await) == Code::Unauthenticated);

    // GetService, Subscribe, ListConsumers of one service: (caller, service, expected).
    let reads = [
        (reader, "orders", Code::Ok),
        (writer, "orders", Code::Ok),
        (admin, "orders", Code::Ok),
        (other, "orders", Code::PermissionDenied),
        (reader, "payments", Code::PermissionDenied),
        (none, "orders", Code::Unauthenticated),
    ];
    for (caller, service, expected) in reads {
        let req = v1::GetServiceRequest { namespace: String::new(), service: service.into() };
        let got = code(c.get_service(with(caller, req)).await);
        ensure!(got == expected, "GetService {service}: {got:?}, expected {expected:?}");
        let req = v1::SubscribeRequest { services: vec![service.into()], ..Default::default() };
        let got = code(c.subscribe(with(caller, req)).await);
        ensure!(got == expected, "Subscribe {service}: {got:?}, expected {expected:?}");
        let req = v1::ListConsumersRequest { namespace: String::new(), service: service.into() };
        let got = code(c.list_consumers(with(caller, req)).await);
        ensure!(got == expected, "ListConsumers {service}: {got:?}, expected {expected:?}");
    }
    // Watching the whole namespace needs a grant on all of it.
    let whole = || v1::SubscribeRequest::default();
    ensure!(code(c.subscribe(with(reader, whole())).await) == Code::PermissionDenied);
    ensure!(code(c.subscribe(with(admin, whole())).await) == Code::Ok);

    // ListServices is filtered to what the caller may read; no grant in the
    // namespace at all is a refusal.
    let list = |who| with(who, v1::ListServicesRequest { namespace: String::new() });
    let names = |r: tonic::Response<v1::ListServicesResponse>| {
        let mut v: Vec<String> = r.into_inner().services.into_iter().map(|s| s.service).collect();
        v.sort();
        v
    };
    ensure!(names(c.list_services(list(reader)).await?) == ["orders", "orders-eu"]);
    ensure!(names(c.list_services(list(other)).await?) == ["payments"]);
    ensure!(names(c.list_services(list(admin)).await?) == ["orders", "orders-eu", "payments"]);
    ensure!(code(c.list_services(list(elsewhere)).await) == Code::PermissionDenied);

    // Deregister needs write on the service.
    let key = |id: &str| v1::DeregisterRequest {
        key: Some(v1::InstanceKey { namespace: String::new(), service: "orders".into(), instance_id: id.into() }),
    };
    ensure!(code(c.deregister(with(reader, key("r0"))).await) == Code::PermissionDenied);
    ensure!(code(c.deregister(with(other, key("r0"))).await) == Code::PermissionDenied);
    ensure!(c.deregister(with(writer, key("r0"))).await?.into_inner().found);

    // A lease is renewed by the principal that took it, only.
    let lease = c.register_instance(with(writer, register("orders", "leased"))).await?.into_inner().lease_id;
    let renew = |who| with(who, v1::RenewRequest { lease_id: lease.clone() });
    ensure!(code(c.renew(renew(writer)).await) == Code::Ok);
    ensure!(code(c.renew(renew(other)).await) == Code::PermissionDenied);
    ensure!(code(c.renew(renew(none)).await) == Code::Unauthenticated);

    // Members needs an admin grant.
    ensure!(code(cluster.members(with(admin, v1::MembersRequest {})).await) == Code::Ok);
    ensure!(code(cluster.members(with(elsewhere, v1::MembersRequest {})).await) == Code::Ok);
    ensure!(code(cluster.members(with(writer, v1::MembersRequest {})).await) == Code::PermissionDenied);
    ensure!(code(cluster.members(with(none, v1::MembersRequest {})).await) == Code::Unauthenticated);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_upsert_in_a_session_is_rejected_with_code_7_and_the_session_goes_on() -> Result<()> {
    let p = Principals::new();
    let node = node(AuthMode::Enforce, &p).await?;
    let (mut c, _) = client(node.grpc_addr).await?;
    // Without a credential the stream itself is refused.
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::RegisterRequest>(4);
    let refused = c.register(with(None, tokio_stream::wrappers::ReceiverStream::new(rx))).await;
    ensure!(code(refused) == Code::Unauthenticated);
    drop(tx);

    let (tx, rx) = tokio::sync::mpsc::channel::<v1::RegisterRequest>(16);
    let mut replies =
        c.register(with(Some(&p.writer), tokio_stream::wrappers::ReceiverStream::new(rx))).await?.into_inner();
    let send = |kind| v1::RegisterRequest { kind: Some(kind) };
    use v1::register_request::Kind as In;
    tx.send(send(In::Open(v1::OpenSession { client_name: "auth-test".into(), heartbeat_interval_ms: 1_000 }))).await?;
    let mut next = async || -> Result<Out> {
        let r = tokio::time::timeout(PROMPTLY, replies.next()).await?.ok_or_else(|| anyhow::anyhow!("ended"))??;
        r.kind.ok_or_else(|| anyhow::anyhow!("empty reply"))
    };
    ensure!(matches!(next().await?, Out::Opened(_)));
    tx.send(send(In::Upsert(instance("orders", "s1", 1)))).await?;
    ensure!(matches!(next().await?, Out::Accepted(_)));
    tx.send(send(In::Upsert(instance("payments", "s2", 1)))).await?;
    match next().await? {
        Out::Rejected(r) => {
            ensure!(r.code == Code::PermissionDenied as i32, "code {}", r.code);
            ensure!(r.reason.contains("writer") && r.reason.contains("payments"), "{}", r.reason);
        }
        other => anyhow::bail!("expected a rejection, got {other:?}"),
    }
    // Still usable.
    tx.send(send(In::Heartbeat(v1::Heartbeat { nonce: 9 }))).await?;
    ensure!(matches!(next().await?, Out::Pong(v1::Pong { nonce: 9 })));
    tx.send(send(In::Upsert(instance("orders", "s3", 1)))).await?;
    ensure!(matches!(next().await?, Out::Accepted(_)));
    let ids = |r: tonic::Response<v1::GetServiceResponse>| {
        let mut v: Vec<String> = r.into_inner().instances.into_iter().map(|i| i.instance_id).collect();
        v.sort();
        v
    };
    let get = v1::GetServiceRequest { namespace: String::new(), service: "orders".into() };
    ensure!(ids(c.get_service(with(Some(&p.reader), get)).await?) == ["s1", "s3"]);
    drop(tx);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_admin_needs_admin_and_probes_stay_open() -> Result<()> {
    let p = Principals::new();
    let node = node(AuthMode::Enforce, &p).await?;
    let h = node.http_addr;
    ensure!(http_get(h, "/healthz").await?.0 == 200);
    ensure!(http_get(h, "/readyz").await?.0 == 200);
    ensure!(http_get(h, "/metrics").await?.0 == 200, "metrics are open unless auth.protect_metrics");
    let bearer = |t: &str| format!("Bearer {t}");
    for path in ["/admin/node", "/admin/members"] {
        let (status, body) = http_get(h, path).await?;
        ensure!(status == 401, "{path} without a token: {status} {body}");
        let (status, _) = http_get_with(h, path, &[("authorization", &bearer(&token()))]).await?;
        ensure!(status == 401, "{path} with an unknown token: {status}");
        let (status, body) = http_get_with(h, path, &[("authorization", &bearer(&p.writer))]).await?;
        ensure!(status == 403 && body.contains("writer"), "{path} as writer: {status} {body}");
        let (status, _) = http_get_with(h, path, &[("authorization", &bearer(&p.admin))]).await?;
        ensure!(status == 200, "{path} as admin: {status}");
    }
    let (_, metrics) = http_get(h, "/metrics").await?;
    let failures = |reason: &str| {
        let prefix = "registry_auth_failures_total{";
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains(&format!("reason=\"{reason}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    ensure!(failures("missing") == Some(2) && failures("unknown") == Some(2), "{metrics}");
    ensure!(registry_tests::metric(&metrics, "auth_denied_total") == Some(2), "two denials as writer");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_metrics_need_admin() -> Result<()> {
    let p = Principals::new();
    let mut config = test_config("auth-metrics");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.tokens = p.entries();
    config.auth.protect_metrics = true;
    let node = start_node(config).await?;
    ensure!(http_get(node.http_addr, "/metrics").await?.0 == 401);
    let admin = format!("Bearer {}", p.admin);
    ensure!(http_get_with(node.http_addr, "/metrics", &[("authorization", &admin)]).await?.0 == 200);
    ensure!(http_get(node.http_addr, "/healthz").await?.0 == 200);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_mode_allows_and_counts_what_enforce_would_refuse() -> Result<()> {
    let p = Principals::new();
    let node = node(AuthMode::Warn, &p).await?;
    let (mut c, _) = client(node.grpc_addr).await?;
    ensure!(code(c.register_instance(with(None, register("orders", "w1"))).await) == Code::Ok);
    ensure!(code(c.register_instance(with(Some(&p.reader), register("orders", "w2"))).await) == Code::Ok);
    let (_, metrics) = http_get(node.http_addr, "/metrics").await?;
    ensure!(metrics.contains("reason=\"missing\"} 1"), "{metrics}");
    ensure!(registry_tests::metric(&metrics, "auth_denied_total") == Some(1), "{metrics}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_exposed_node_without_auth_does_not_start() -> Result<()> {
    let mut config = test_config("exposed");
    config.grpc_addr = "0.0.0.0:0".parse()?;
    let err = registry_node::start(config).await.expect_err("refused").to_string();
    ensure!(err.contains("[auth]") && err.contains("auth.mode = \"off\""), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_sends_its_token_and_names_a_denial() -> Result<()> {
    use registry_client::{Client, ClientConfig, Error};
    let p = Principals::new();
    let node = node(AuthMode::Enforce, &p).await?;
    let ep = format!("http://{}", node.grpc_addr);
    let writer = Client::new(ClientConfig::new([ep.clone()]).token(p.writer.clone()))?;
    let provider = writer.register([instance("orders", "lib-1", 1)]).await?;
    let reader = Client::new(ClientConfig::new([ep.clone()]).token(p.reader.clone()))?;
    let watch = reader.watch("orders").await?;
    ensure!(watch.current().instances.len() == 1, "the reader sees the writer's instance");
    let ids: Vec<String> = reader.get_service("orders").await?.instances.into_iter().map(|i| i.instance_id).collect();
    ensure!(ids == ["lib-1"], "{ids:?}");
    // The consumer directory names the principal each watcher authenticated as.
    let consumers = reader.list_consumers("orders").await?.consumers;
    ensure!(consumers.iter().any(|c| c.principal == "reader"), "{consumers:?}");
    match reader.get_service("payments").await {
        Err(Error::PermissionDenied(msg)) => ensure!(msg.contains("reader") && msg.contains("payments"), "{msg}"),
        other => anyhow::bail!("expected PermissionDenied, got {other:?}"),
    }
    let anonymous = Client::new(ClientConfig::new([ep]))?;
    match anonymous.get_service("orders").await {
        Err(e @ Error::Unauthenticated(_)) => ensure!(e.is_denied()),
        other => anyhow::bail!("expected Unauthenticated, got {other:?}"),
    }
    provider.shutdown().await;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tokens_file_is_reloaded_and_a_bad_one_keeps_the_old_tokens() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("registry-auth-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tokens.toml");
    let file = |name: &str, token: &str| {
        format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\ngrants = [{{ namespace = \"*\", services = \"*\", role = \"read\" }}]\n",
            sha256_hex(token.as_bytes())
        )
    };
    let (old, new) = (token(), token());
    std::fs::write(&path, file("first", &old))?;
    let mut config = test_config("auth-reload");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.tokens_file = Some(path.clone());
    let node = start_node(config).await?;
    let (mut c, _) = client(node.grpc_addr).await?;
    let get = || v1::GetServiceRequest { namespace: String::new(), service: "orders".into() };
    ensure!(code(c.get_service(with(Some(&old), get())).await) == Code::Ok);
    ensure!(code(c.get_service(with(Some(&new), get())).await) == Code::Unauthenticated);

    // A longer name: the file's size changes too, whatever the clock's grain.
    std::fs::write(&path, file("second-principal", &new))?;
    registry_tests::eventually("the new token accepted", std::time::Duration::from_secs(10), || {
        let mut c = c.clone();
        let new = new.clone();
        async move { (code(c.get_service(with(Some(&new), get())).await) == Code::Ok).then_some(()) }
    })
    .await?;
    ensure!(code(c.get_service(with(Some(&old), get())).await) == Code::Unauthenticated, "the old token is revoked");

    std::fs::write(&path, "[[tokens]]\nname = \"broken\"\nsha256 = \"not hex at all\"\n")?;
    registry_tests::eventually("the bad file refused", std::time::Duration::from_secs(10), || async {
        let (_, metrics) = http_get(node.http_addr, "/metrics").await.ok()?;
        (registry_tests::metric(&metrics, "auth_reload_failures_total")? >= 1).then_some(())
    })
    .await?;
    ensure!(code(c.get_service(with(Some(&new), get())).await) == Code::Ok, "the previous tokens stay in force");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Two principals that may both write `orders`: what one registered, the other
/// may neither replace nor remove, on the node it was registered on or on
/// another node of the cluster (the principal travels with the record); an
/// admin of the namespace may; the owner re-registering (a restart, a move)
/// works as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_replaced_or_removed_by_its_principal_only_across_nodes() -> Result<()> {
    let (alice, bob, admin) = (token(), token(), token());
    let entries = vec![
        token_entry("alice", &alice, vec![grant("default", "orders", Role::Write)]),
        token_entry("bob", &bob, vec![grant("default", "orders", Role::Write)]),
        token_entry("ops", &admin, vec![grant("default", "*", Role::Admin)]),
    ];
    let nats = registry_tests::nats::NatsServer::start().await?;
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let mut config = registry_tests::cluster_config(name, &[nats.url()], "auth-owner");
        config.auth.mode = Some(AuthMode::Enforce);
        config.auth.tokens = entries.clone();
        nodes.push(start_node(config).await?);
    }
    for n in &nodes {
        registry_tests::until_ready(n).await?;
    }
    let (mut a, _) = client(nodes[0].grpc_addr).await?;
    let (mut b, _) = client(nodes[1].grpc_addr).await?;
    let (mut c3, _) = client(nodes[2].grpc_addr).await?;
    let reg = |port: u32| v1::RegisterInstanceRequest {
        instance: Some(instance("orders", "shared-id", port)),
        ..Default::default()
    };
    a.register_instance(with(Some(&alice), reg(1))).await?;
    // The record, with its principal, reaches nodes b and c.
    let get = || v1::GetServiceRequest { namespace: String::new(), service: "orders".into() };
    for (node, peer) in [("b", &b), ("c", &c3)] {
        registry_tests::eventually(&format!("alice's instance on node {node}"), PROMPTLY, || {
            let mut peer = peer.clone();
            let alice = alice.clone();
            async move {
                let r = peer.get_service(with(Some(&alice), get())).await.ok()?.into_inner();
                r.instances.iter().any(|i| i.principal == "alice").then_some(())
            }
        })
        .await?;
    }
    // Bob may write `orders`, but not alice's instance, on any node.
    for (node, c) in [("a", &mut a), ("b", &mut b), ("c", &mut c3)] {
        let got = c.register_instance(with(Some(&bob), reg(2))).await;
        ensure!(code(got) == Code::PermissionDenied, "bob replacing on node {node}");
        let key = v1::DeregisterRequest {
            key: Some(v1::InstanceKey {
                namespace: String::new(),
                service: "orders".into(),
                instance_id: "shared-id".into(),
            }),
        };
        let got = c.deregister(with(Some(&bob), key)).await;
        match got {
            Err(s) => ensure!(
                s.code() == Code::PermissionDenied && s.message().contains("alice") && s.message().contains("bob"),
                "{s:?}"
            ),
            Ok(_) => anyhow::bail!("bob removed alice's instance on node {node}"),
        }
    }
    let ports = |r: tonic::Response<v1::GetServiceResponse>| -> Vec<u32> {
        r.into_inner().instances.into_iter().map(|i| i.port).collect()
    };
    ensure!(ports(b.get_service(with(Some(&alice), get())).await?) == [1], "still alice's");
    ensure!(ports(c3.get_service(with(Some(&alice), get())).await?) == [1], "still alice's on node c");
    // Alice re-registering elsewhere (a move or a restart) is hers to do.
    b.register_instance(with(Some(&alice), reg(3))).await?;
    registry_tests::eventually("alice's move seen on node a", PROMPTLY, || {
        let mut a = a.clone();
        let alice = alice.clone();
        async move { (ports(a.get_service(with(Some(&alice), get())).await.ok()?) == [3]).then_some(()) }
    })
    .await?;
    // An admin of the namespace may take it over.
    b.register_instance(with(Some(&admin), reg(4))).await?;
    let r = b.get_service(with(Some(&admin), get())).await?.into_inner();
    ensure!(r.instances.iter().map(|i| (i.port, i.principal.as_str())).eq([(4, "ops")]), "{r:?}");
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_sent_by_the_client_is_ignored() -> Result<()> {
    let p = Principals::new();
    let node = node(AuthMode::Enforce, &p).await?;
    let (mut c, _) = client(node.grpc_addr).await?;
    let mut i = instance("orders", "forged", 1);
    i.principal = "admin".into();
    c.register_instance(with(Some(&p.writer), v1::RegisterInstanceRequest { instance: Some(i), ..Default::default() }))
        .await?;
    let get = v1::GetServiceRequest { namespace: String::new(), service: "orders".into() };
    let r = c.get_service(with(Some(&p.reader), get)).await?.into_inner();
    ensure!(r.instances.iter().all(|i| i.principal == "writer"), "{r:?}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_denied_writes_and_ownership_refusals_go_to_the_audit_file() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("registry-audit-it-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("audit.jsonl");
    let (owner, intruder, ops, reader) = (token(), token(), token(), token());
    let mut config = test_config("audit");
    config.auth.mode = Some(AuthMode::Enforce);
    config.auth.audit_file = Some(path.clone());
    config.auth.tokens = vec![
        token_entry("owner", &owner, vec![grant("default", "orders*", Role::Write)]),
        token_entry("intruder", &intruder, vec![grant("default", "orders*", Role::Write)]),
        token_entry("ops", &ops, vec![grant("default", "*", Role::Admin)]),
        token_entry("reader", &reader, vec![grant("default", "*", Role::Read)]),
    ];
    let node = start_node(config).await?;
    let (mut c, mut cluster) = client(node.grpc_addr).await?;
    // Allowed and not audited: a provider registering its own instance.
    c.register_instance(with(Some(&owner), register("orders", "o1"))).await?;
    // A denied write (no grant), an ownership refusal (a takeover), an admin
    // removing someone else's instance, an admin reading Members, and a
    // denied admin request.
    ensure!(code(c.register_instance(with(Some(&reader), register("orders", "r1"))).await) == Code::PermissionDenied);
    ensure!(code(c.register_instance(with(Some(&intruder), register("orders", "o1"))).await) == Code::PermissionDenied);
    let key = v1::DeregisterRequest {
        key: Some(v1::InstanceKey { namespace: String::new(), service: "orders".into(), instance_id: "o1".into() }),
    };
    ensure!(code(c.deregister(with(Some(&intruder), key.clone())).await) == Code::PermissionDenied);
    ensure!(c.deregister(with(Some(&ops), key)).await?.into_inner().found);
    cluster.members(with(Some(&ops), v1::MembersRequest {})).await?;
    ensure!(code(cluster.members(with(Some(&owner), v1::MembersRequest {})).await) == Code::PermissionDenied);

    let expected = [
        ("reader", "register", "default/orders/r1", "denied"),
        ("intruder", "register", "default/orders/o1", "denied"),
        ("intruder", "deregister", "default/orders/o1", "denied"),
        ("ops", "deregister", "default/orders/o1", "allowed"),
        ("ops", "members", "", "allowed"),
        ("owner", "members", "", "denied"),
    ];
    let lines = registry_tests::eventually("six audit lines", PROMPTLY, || async {
        let text = std::fs::read_to_string(&path).ok()?;
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() >= expected.len()).then_some(lines)
    })
    .await?;
    ensure!(lines.len() == expected.len(), "exactly these lines, nothing for allowed own writes: {lines:#?}");
    for (line, (principal, action, key, outcome)) in lines.iter().zip(expected) {
        let field = |f: &str| line[f].as_str().unwrap_or_default().to_string();
        ensure!(
            (field("principal").as_str(), field("action").as_str(), field("key").as_str(), field("outcome").as_str())
                == (principal, action, key, outcome),
            "{line}"
        );
        ensure!(field("node") == "audit" && field("peer").starts_with("127.0.0.1:"), "{line}");
        if outcome == "denied" {
            ensure!(!field("reason").is_empty(), "a denial says why: {line}");
        }
    }
    ensure!(lines[1]["reason"].as_str().unwrap_or_default().contains("belongs to principal \"owner\""), "{}", lines[1]);
    node.shutdown().await;
    Ok(())
}
