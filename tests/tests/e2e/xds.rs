//! The xDS front-end with real clients: grpcio's `xds:///` resolver reaching
//! grpcio backends registered in the node, and hostile ADS streams.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use registry_tests::xds::{Answer, Backends, Bootstrap, Envoy, XdsClient, first_seen, last_seen, round_robin};
use registry_tests::*;
use tokio::time::Instant;

/// How soon a change must reach the client's traffic.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(1);
/// How long a grpcio client may take to fetch its first config and connect
/// (it starts a Python interpreter and a channel on a loaded machine).
const FIRST_CONTACT: Duration = Duration::from_secs(30);

async fn register(c: &mut RegistryClient, namespace: &str, instance: v1::Instance, lease: &str) -> Result<String> {
    let instance = v1::Instance { namespace: namespace.into(), ..instance };
    let r = c
        .register_instance(v1::RegisterInstanceRequest {
            lease_id: lease.into(),
            ttl_ms: 600_000,
            instance: Some(instance),
        })
        .await?;
    Ok(r.into_inner().lease_id)
}

/// The consumer record of ADS stream `id` (its bootstrap's `node.id`)
/// among the watchers of `service` in the default namespace ("" for all).
async fn consumer(c: &mut RegistryClient, service: &str, id: &str) -> Result<v1::Consumer> {
    let request = v1::ListConsumersRequest { namespace: String::new(), service: service.into() };
    let consumers = c.list_consumers(request).await?.into_inner().consumers;
    consumers
        .into_iter()
        .find(|c| c.info.as_ref().is_some_and(|i| i.consumer_id == id))
        .with_context(|| format!("the ADS stream {id} in the consumer directory"))
}

async fn deregister(c: &mut RegistryClient, namespace: &str, service: &str, id: &str) -> Result<()> {
    let key = v1::InstanceKey { namespace: namespace.into(), service: service.into(), instance_id: id.into() };
    let found = c.deregister(v1::DeregisterRequest { key: Some(key) }).await?.into_inner().found;
    if !found {
        bail!("{id} was not registered");
    }
    Ok(())
}

/// A grpcio `xds:///echo` channel balances round robin over the backends
/// registered as `echo`, and follows a deregistration, a new registration
/// and a DOWN status within a second. A second namespace, named in the
/// bootstrap's node metadata or in the target (`xds:///payments/echo`),
/// sees its own `echo` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_xds_channel_follows_the_registry() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let backends = Backends::start(&["b1", "b2", "b3", "b4", "p1"])?;
    let mut c = client(node.grpc_addr).await?;
    let mut leases = std::collections::BTreeMap::new();
    for b in ["b1", "b2", "b3"] {
        let lease = register(&mut c, "", instance("echo", b, backends.port(b)), "").await?;
        leases.insert(b, lease);
    }

    let bootstrap = Bootstrap::plaintext(node.grpc_addr, "checkout-1", "zone-a").write()?;
    let client = XdsClient::start("xds:///echo", bootstrap)?;
    let start = Instant::now();
    client
        .until("round robin over b1, b2, b3", start, 9, FIRST_CONTACT, |a| round_robin(a, &["b1", "b2", "b3"], 3))
        .await?;

    // The stream is a consumer in the directory, named by the bootstrap.
    let me = consumer(&mut c, "echo", "checkout-1").await?.info.unwrap_or_default();
    assert_eq!(me.metadata.get("zone").map(String::as_str), Some("zone-a"));

    // A deregistration.
    deregister(&mut c, "default", "echo", "b3").await?;
    let at = Instant::now();
    let seen = client.until("b3 gone", at, 6, PROMPTLY, |a| round_robin(a, &["b1", "b2"], 3)).await?;
    let stale = last_seen(&seen, "b3", at).unwrap_or_default();
    assert!(stale <= FOLLOWS_WITHIN, "b3 still got calls {stale:?} after its deregistration");

    // A new registration.
    register(&mut c, "", instance("echo", "b4", backends.port("b4")), "").await?;
    let at = Instant::now();
    let seen = client.until("b4 added", at, 9, PROMPTLY, |a| round_robin(a, &["b1", "b2", "b4"], 3)).await?;
    let late = first_seen(&seen, "b4", at).context("b4 answered")?;
    assert!(late <= FOLLOWS_WITHIN, "b4 got its first call {late:?} after it registered");

    // A DOWN status, sent by the provider itself.
    let down = v1::Instance { status: v1::Status::Down as i32, ..instance("echo", "b1", backends.port("b1")) };
    register(&mut c, "", down, &leases["b1"]).await?;
    let at = Instant::now();
    let seen = client.until("b1 down", at, 6, PROMPTLY, |a| round_robin(a, &["b2", "b4"], 3)).await?;
    let stale = last_seen(&seen, "b1", at).unwrap_or_default();
    assert!(stale <= FOLLOWS_WITHIN, "b1 still got calls {stale:?} after it went DOWN");

    // Another namespace's `echo`, through the bootstrap's node metadata.
    register(&mut c, "payments", instance("echo", "p1", backends.port("p1")), "").await?;
    let bootstrap = Bootstrap::plaintext(node.grpc_addr, "payer-1", "zone-b").namespace("payments").write()?;
    let payer = XdsClient::start("xds:///echo", bootstrap)?;
    let start = Instant::now();
    payer.until("payments' echo is p1 alone", start, 5, FIRST_CONTACT, |a| round_robin(a, &["p1"], 5)).await?;
    let since = Instant::now();
    client.until("default's echo is unchanged", since, 6, PROMPTLY, |a| round_robin(a, &["b2", "b4"], 3)).await?;
    // The same, named in the target: `namespace/service`, from a client
    // whose bootstrap names no namespace.
    let bootstrap = Bootstrap::plaintext(node.grpc_addr, "payer-2", "zone-b").write()?;
    let named = XdsClient::start("xds:///payments/echo", bootstrap)?;
    let start = Instant::now();
    named.until("payments/echo is p1 alone", start, 5, FIRST_CONTACT, |a| round_robin(a, &["p1"], 5)).await?;

    let (_, metrics) = http_get(node.http_addr, "/metrics").await?;
    assert_eq!(metric(&metrics, "xds_streams"), Some(3), "one ADS stream per client");
    for t in ["lds", "rds", "cds", "eds"] {
        let line = format!("registry_xds_nacks_total{{node=\"n1\",type=\"{t}\"}} 0");
        assert!(metrics.contains(&line), "no NACK of {t}: grpcio took every resource\n{metrics}");
    }
    drop((client, payer, named, backends));
    node.shutdown().await;
    Ok(())
}

/// A node that requires TLS (client certificates optional) and enforces
/// auth, and the means to reach it: its CA, a directory for certificates,
/// and `ops`, an admin of `default` by client certificate.
struct SecuredNode {
    node: registry_node::NodeHandle,
    ca: registry_tests::pki::TestCa,
    dir: std::path::PathBuf,
    ca_file: std::path::PathBuf,
    ops: registry_tests::pki::ClientTls,
}

/// [`SecuredNode`] whose other principals read `default`: `readers` by
/// client certificate (subject, services), and a token (name, token,
/// services).
async fn secured_node(test: &str, readers: &[(&str, &str)], token: (&str, &str, &str)) -> Result<SecuredNode> {
    use registry_node::auth::{AuthMode, CertEntry, Role};
    use registry_node::listen::{ClientAuth, TlsSettings};
    use registry_tests::pki::{ClientTls, TestCa, Validity, cert_dir};
    use registry_tests::{grant, token_entry};

    let ca = TestCa::new(&format!("{test} CA"))?;
    let dir = cert_dir(test)?;
    let (cert_file, key_file) = ca.server()?.write(&dir, "server")?;
    let ca_file = ca.write(&dir, "ca")?;
    let mut config = test_config("n1");
    config.tls = Some(TlsSettings {
        cert_file,
        key_file,
        client_ca_file: Some(ca_file.clone()),
        client_auth: Some(ClientAuth::Optional),
    });
    config.auth.mode = Some(AuthMode::Enforce);
    let cert = |name: &str, grants| CertEntry { name: name.into(), subject: name.into(), grants };
    config.auth.certs = std::iter::once(cert("ops", vec![grant("default", "*", Role::Admin)]))
        .chain(readers.iter().map(|(name, services)| cert(name, vec![grant("default", services, Role::Read)])))
        .collect();
    let (name, secret, services) = token;
    config.auth.tokens = vec![token_entry(name, secret, vec![grant("default", services, Role::Read)])];
    let node = start_node(config).await?;
    let ops = ClientTls::trusting(&ca).with_identity(ca.client("ops", &[], Validity::Current)?);
    Ok(SecuredNode { node, ca, dir, ca_file, ops })
}

/// The same over TLS with auth enforced: the xDS client proves who it is
/// with a client certificate (the bootstrap's `tls` channel credentials) or
/// a bearer token (its `jwt_token_file` call credentials), and the node
/// applies that principal's read grants, as it does for `registry.v1`. A
/// principal without a grant on the service is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_xds_over_tls_obeys_read_grants_of_certificates_and_tokens() -> Result<()> {
    use registry_tests::pki::Validity;

    // A token shaped as a JWT (header.claims.signature, base64url), which
    // gRPC's call credentials insist on; for the node it is opaque.
    let b64 = |s: &str| base64url(s.as_bytes());
    let token = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"sub":"checkout","exp":4102444800}"#),
        b64(&format!("{:032x}", rand::random::<u128>()))
    );
    let SecuredNode { node, ca, dir, ca_file, ops } =
        secured_node("xds-mtls", &[("checkout", "echo"), ("nosy", "other")], ("checkout-token", &token, "echo"))
            .await?;
    let mut c = RegistryClient::new(ops.channel(node.grpc_addr).await?);
    let backends = Backends::start(&["b1", "b2"])?;
    for b in ["b1", "b2"] {
        register(&mut c, "", instance("echo", b, backends.port(b)), "").await?;
    }

    let (cert, key) = ca.client("checkout", &[], Validity::Current)?.write(&dir, "checkout")?;
    let bootstrap = Bootstrap::tls(node.grpc_addr.port(), &ca_file, Some((&cert, &key)), "checkout-1", "zone-a");
    let client = XdsClient::start("xds:///echo", bootstrap.write()?)?;
    let start = Instant::now();
    client.until("round robin over b1, b2", start, 6, FIRST_CONTACT, |a| round_robin(a, &["b1", "b2"], 3)).await?;
    let me = consumer(&mut c, "echo", "checkout-1").await?;
    assert_eq!(me.principal, "checkout", "the stream's principal is its certificate's");
    deregister(&mut c, "default", "echo", "b2").await?;
    let at = Instant::now();
    client.until("b2 gone", at, 4, PROMPTLY, |a| round_robin(a, &["b1"], 4)).await?;

    // A bearer token instead of a certificate: gRPC's bootstrap call
    // credentials read it from a file (a JWT's shape, as they expect; the
    // node compares the whole string's SHA-256 like any token).
    let token_file = dir.join("token.jwt");
    std::fs::write(&token_file, &token)?;
    let mut bootstrap = Bootstrap::tls(node.grpc_addr.port(), &ca_file, None, "bearer-1", "zone-a");
    bootstrap.call_creds =
        Some(serde_json::json!({ "type": "jwt_token_file", "config": { "jwt_token_file": token_file } }));
    let bearer = XdsClient::start("xds:///echo", bootstrap.write()?)?;
    let start = Instant::now();
    bearer.until("the token's client reaches b1", start, 4, FIRST_CONTACT, |a| round_robin(a, &["b1"], 4)).await?;

    // Read grants apply: a principal that may not read `echo` gets nothing.
    let (cert, key) = ca.client("nosy", &[], Validity::Current)?.write(&dir, "nosy")?;
    let bootstrap = Bootstrap::tls(node.grpc_addr.port(), &ca_file, Some((&cert, &key)), "nosy-1", "zone-a");
    let nosy = XdsClient::start("xds:///echo", bootstrap.write()?)?;
    let start = Instant::now();
    nosy.until("every call of the refused client fails", start, 5, FIRST_CONTACT, |a| {
        a.iter().all(|a| a.as_ref().is_err_and(|code| code == "UNAVAILABLE"))
    })
    .await?;
    assert!(nosy.since(start).iter().all(|(_, a)| a.is_err()), "no call of the refused client got through");
    let (_, metrics) = ops.https_get(node.http_addr, "/metrics", &[]).await?;
    assert!(metric(&metrics, "auth_denied_total").is_some_and(|n| n >= 1), "the refusal is counted\n{metrics}");

    drop((client, bearer, nosy, backends));
    node.shutdown().await;
    Ok(())
}

/// A 3-node cluster over a real nats-server: a grpcio client whose
/// bootstrap names a balancer in front of nodes c and b discovers through c
/// a registration made on node a; when c crashes it reconnects to b and
/// follows the next registration, and none of its calls fails in between
/// (it keeps its last config while it has no node, and b's first answer is
/// the whole state, never an empty list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_xds_client_fails_over_to_another_node() -> Result<()> {
    let nats = registry_tests::nats::NatsServer::start().await?;
    let mut nodes = start_cluster(&[nats.url()], "xds", &["a", "b", "c"]).await?;
    let backends = Backends::start(&["b1", "b2"])?;
    let mut on_a = client(nodes[0].grpc_addr).await?;
    register(&mut on_a, "", instance("echo", "b1", backends.port("b1")), "").await?;
    let link = BalancingLink::start(vec![nodes[2].grpc_addr, nodes[1].grpc_addr]).await?;
    let bootstrap = Bootstrap::plaintext(link.addr, "checkout-1", "zone-a").write()?;
    let client = XdsClient::start("xds:///echo", bootstrap)?;
    let start = Instant::now();
    client.until("b1 through node c", start, 4, FIRST_CONTACT, |a| round_robin(a, &["b1"], 4)).await?;
    let (_, on_c) = http_get(nodes[2].http_addr, "/metrics").await?;
    assert_eq!(metric(&on_c, "xds_streams"), Some(1), "the client's ADS stream is on c");

    let c = nodes.pop().context("node c")?;
    c.crash().await;
    let crashed = Instant::now();
    register(&mut on_a, "", instance("echo", "b2", backends.port("b2")), "").await?;
    client
        .until("b1 and b2 through node b", crashed, 6, Duration::from_secs(20), |a| round_robin(a, &["b1", "b2"], 3))
        .await?;
    let failed: Vec<_> = client.since(crashed).into_iter().filter(|(_, a)| a.is_err()).collect();
    assert!(failed.is_empty(), "calls failed while the client moved from c to b: {failed:?}");
    let (_, on_b) = http_get(nodes[1].http_addr, "/metrics").await?;
    assert_eq!(metric(&on_b, "xds_streams"), Some(1), "the client's ADS stream moved to b");

    drop((client, link, backends));
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// `n` requests through Envoy, one after the other: who answered each
/// (the body), or the HTTP status.
async fn through(envoy: &Envoy, n: usize) -> Vec<Answer> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(match http_get(envoy.addr, "/").await {
            Ok((200, body)) => Ok(body),
            Ok((status, _)) => Err(status.to_string()),
            Err(e) => Err(e.to_string()),
        });
    }
    out
}

/// Waits until `n` requests in a row through Envoy go round robin over
/// `backends`, each `n / backends.len()` times.
async fn until_envoy(envoy: &Envoy, what: &str, within: Duration, backends: &[&str], n: usize) -> Result<()> {
    let rounds = n / backends.len();
    eventually(what, within, || async { round_robin(&through(envoy, n).await, backends, rounds).then_some(()) })
        .await
        .with_context(|| format!("envoy's log:\n{}", envoy.log_tail(30)))
}

/// Envoy refused no CDS or EDS response of node `n1`.
async fn no_nacks(node: &registry_node::NodeHandle, envoy: &Envoy) -> Result<()> {
    let (_, metrics) = http_get(node.http_addr, "/metrics").await?;
    for t in ["cds", "eds"] {
        let line = format!("registry_xds_nacks_total{{node=\"n1\",type=\"{t}\"}} 0");
        assert!(metrics.contains(&line), "Envoy refused a {t} response\n{}", envoy.log_tail(30));
    }
    Ok(())
}

/// What an Envoy scenario goes on with after [`envoy_following_web`].
struct EnvoyRun {
    node: registry_node::NodeHandle,
    web: Backends,
    c: RegistryClient,
    envoy: Envoy,
    /// The leases of h1 and h2.
    leases: std::collections::BTreeMap<&'static str, String>,
}

/// The start the Envoy scenarios share: node `n1`, HTTP backends h1-h3,
/// `web` on h1 and h2 and another service of the namespace (the wildcard
/// brings its cluster too), then an Envoy started by `start` routing round
/// robin over h1 and h2, and following h3 added and h1 gone.
async fn envoy_following_web(start: impl FnOnce(std::net::SocketAddr) -> Result<Envoy>) -> Result<EnvoyRun> {
    let node = start_node(test_config("n1")).await?;
    let web = Backends::http(&["h1", "h2", "h3"])?;
    let mut c = client(node.grpc_addr).await?;
    let mut leases = std::collections::BTreeMap::new();
    for b in ["h1", "h2"] {
        leases.insert(b, register(&mut c, "", instance("web", b, web.port(b)), "").await?);
    }
    register(&mut c, "", instance("other", "o1", 1), "").await?;
    let envoy = start(node.grpc_addr)?;
    until_envoy(&envoy, "round robin over h1, h2", FIRST_CONTACT, &["h1", "h2"], 4).await?;
    register(&mut c, "", instance("web", "h3", web.port("h3")), "").await?;
    until_envoy(&envoy, "h3 added", PROMPTLY, &["h1", "h2", "h3"], 6).await?;
    deregister(&mut c, "default", "web", "h1").await?;
    until_envoy(&envoy, "h1 gone", PROMPTLY, &["h2", "h3"], 4).await?;
    Ok(EnvoyRun { node, web, c, envoy, leases })
}

/// A real Envoy with a static listener takes its clusters from the node's
/// ADS (CDS by wildcard, then EDS), routes HTTP requests round robin to the
/// registered HTTP backends and follows a registration, a deregistration
/// and a DOWN status; it refuses nothing (no NACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_to_registered_backends_and_follows_changes() -> Result<()> {
    let EnvoyRun { node, web, mut c, envoy, leases } =
        envoy_following_web(|grpc| Envoy::start(grpc, "edge-1", None, "web")).await?;
    let down = v1::Instance { status: v1::Status::Down as i32, ..instance("web", "h2", web.port("h2")) };
    register(&mut c, "", down, &leases["h2"]).await?;
    until_envoy(&envoy, "h2 down", PROMPTLY, &["h3"], 3).await?;

    // Envoy's ADS stream watches the whole namespace, as a consumer.
    let edge = consumer(&mut c, "", "edge-1").await?;
    assert!(edge.services.is_empty(), "a wildcard watches the namespace: {edge:?}");
    no_nacks(&node, &envoy).await?;
    drop((envoy, web));
    node.shutdown().await;
    Ok(())
}

/// Envoy in front of a node that requires TLS and enforces auth: it
/// checks the node's certificate against the CA and its name, proves who it
/// is with a client certificate or with a bearer token in its ADS stream's
/// metadata, and routes by what the node sends. A wildcard (every cluster of
/// the namespace) needs a read grant on the whole namespace: an Envoy whose
/// principal may read only part of it gets nothing, and the refusal is
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_tls_obeys_read_grants_of_certificates_and_tokens() -> Result<()> {
    use registry_tests::pki::Validity;
    use registry_tests::xds::EnvoyTls;

    let token = format!("{:032x}", rand::random::<u128>());
    let SecuredNode { node, ca, dir, ca_file, ops } =
        secured_node("envoy-mtls", &[("edge", "*"), ("nosy", "web")], ("edge-token", &token, "*")).await?;
    let mut c = RegistryClient::new(ops.channel(node.grpc_addr).await?);
    let web = Backends::http(&["h1", "h2"])?;
    for b in ["h1", "h2"] {
        register(&mut c, "", instance("web", b, web.port(b)), "").await?;
    }

    // A client certificate.
    let edge_tls = EnvoyTls {
        ca_file: ca_file.clone(),
        identity: Some(ca.client("edge", &[], Validity::Current)?.write(&dir, "edge")?),
        token: None,
    };
    let edge = Envoy::start_with(node.grpc_addr, "edge-1", None, "web", Some(&edge_tls))?;
    until_envoy(&edge, "round robin over h1, h2 (certificate)", FIRST_CONTACT, &["h1", "h2"], 4).await?;
    let me = consumer(&mut c, "", "edge-1").await?;
    assert_eq!(me.principal, "edge", "the stream's principal is its certificate's");

    // A bearer token, no certificate.
    let bearer_tls = EnvoyTls { ca_file: ca_file.clone(), identity: None, token: Some(token) };
    let bearer = Envoy::start_with(node.grpc_addr, "edge-2", None, "web", Some(&bearer_tls))?;
    until_envoy(&bearer, "round robin over h1, h2 (token)", FIRST_CONTACT, &["h1", "h2"], 4).await?;

    // A principal that may read only part of the namespace: its wildcard is
    // refused, so it never has a cluster to route to.
    let denied = || async {
        let (_, metrics) = ops.https_get(node.http_addr, "/metrics", &[]).await.ok()?;
        metric(&metrics, "auth_denied_total")
    };
    let before = denied().await.context("auth_denied_total")?;
    let nosy_tls = EnvoyTls {
        ca_file: ca_file.clone(),
        identity: Some(ca.client("nosy", &[], Validity::Current)?.write(&dir, "nosy")?),
        token: None,
    };
    let nosy = Envoy::start_with(node.grpc_addr, "nosy-1", None, "web", Some(&nosy_tls))?;
    eventually("the nosy Envoy's wildcard refused", FIRST_CONTACT, || async {
        denied().await.is_some_and(|n| n > before).then_some(())
    })
    .await
    .with_context(|| format!("envoy's log:\n{}", nosy.log_tail(30)))?;
    let answers = through(&nosy, 3).await;
    assert!(answers.iter().all(|a| a.is_err()), "the refused Envoy routed: {answers:?}");
    // The others still route.
    until_envoy(&edge, "still round robin", PROMPTLY, &["h1", "h2"], 4).await?;

    drop((edge, bearer, nosy, web));
    node.shutdown().await;
    Ok(())
}

/// The same Envoy over incremental xDS (`api_type: DELTA_GRPC`): CDS by
/// wildcard and EDS by name arrive as changes only, and a service whose
/// instances are all gone is removed from Envoy (`removed_resources`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_delta_xds_routes_and_follows_changes() -> Result<()> {
    let EnvoyRun { node, web, mut c, envoy, .. } =
        envoy_following_web(|grpc| Envoy::start_delta(grpc, "edge-delta", "web")).await?;
    // Every instance gone: the cluster is removed, and requests fail.
    for b in ["h2", "h3"] {
        deregister(&mut c, "default", "web", b).await?;
    }
    eventually("no route once web is gone", PROMPTLY, || async {
        through(&envoy, 2).await.iter().all(|a| a.is_err()).then_some(())
    })
    .await?;
    // And back.
    register(&mut c, "", instance("web", "h2", web.port("h2")), "").await?;
    until_envoy(&envoy, "web back with h2", PROMPTLY, &["h2"], 2).await?;
    no_nacks(&node, &envoy).await?;
    drop((envoy, web));
    node.shutdown().await;
    Ok(())
}

/// Base64url without padding, as JWTs are written.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

// ------------------------------------------------------------- hostile streams

mod hostile {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    };
    use envoy_types::pb::google::rpc;
    use prost::Message as _;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Code, Status, Streaming};

    use super::*;

    const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

    /// A hand-driven ADS stream.
    struct Ads {
        tx: mpsc::Sender<DiscoveryRequest>,
        rx: Streaming<DiscoveryResponse>,
    }

    impl Ads {
        async fn open(channel: tonic::transport::Channel) -> Result<Self> {
            let (tx, rx) = mpsc::channel(16);
            let rx = AggregatedDiscoveryServiceClient::new(channel)
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await?
                .into_inner();
            Ok(Self { tx, rx })
        }

        async fn send(&self, type_url: &str, names: &[&str], nonce: &str, error: Option<&str>) -> Result<()> {
            let request = DiscoveryRequest {
                node: Some(Node { id: "hostile".into(), ..Default::default() }),
                type_url: type_url.into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                response_nonce: nonce.into(),
                version_info: nonce.into(),
                error_detail: error.map(|m| rpc::Status { code: 3, message: m.into(), details: vec![] }),
                ..Default::default()
            };
            self.tx.send(request).await.context("the stream is closed")
        }

        async fn next(&mut self) -> Result<DiscoveryResponse> {
            next_response(&mut self.rx).await
        }

        /// How the node ended the stream.
        async fn end(&mut self) -> Result<Status> {
            loop {
                match tokio::time::timeout(PROMPTLY, self.rx.message()).await {
                    Err(_) => bail!("the stream did not end within {PROMPTLY:?}"),
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) => bail!("the stream ended without an error"),
                    Ok(Err(s)) => return Ok(s),
                }
            }
        }
    }

    /// The next response on an ADS stream, either variant.
    async fn next_response<T>(rx: &mut Streaming<T>) -> Result<T> {
        match tokio::time::timeout(PROMPTLY, rx.message()).await {
            Err(_) => bail!("no response within {PROMPTLY:?}"),
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => bail!("the stream ended"),
            Ok(Err(s)) => bail!("the stream failed: {s}"),
        }
    }

    /// An incremental (delta) ADS stream, driven by hand.
    struct DeltaAds {
        tx: mpsc::Sender<DeltaDiscoveryRequest>,
        rx: Streaming<DeltaDiscoveryResponse>,
    }

    impl DeltaAds {
        async fn open(channel: tonic::transport::Channel) -> Result<Self> {
            let (tx, rx) = mpsc::channel(64);
            let rx = AggregatedDiscoveryServiceClient::new(channel)
                .delta_aggregated_resources(ReceiverStream::new(rx))
                .await?
                .into_inner();
            Ok(Self { tx, rx })
        }

        /// Subscribes to `names` of `type_url`, answering `nonce` (an ACK, or
        /// a NACK with `error`).
        async fn send(&self, type_url: &str, names: &[&str], nonce: &str, error: Option<&str>) -> Result<()> {
            let request = DeltaDiscoveryRequest {
                node: Some(Node { id: "hostile".into(), ..Default::default() }),
                type_url: type_url.into(),
                resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
                response_nonce: nonce.into(),
                error_detail: error.map(|m| rpc::Status { code: 3, message: m.into(), details: vec![] }),
                ..Default::default()
            };
            self.tx.send(request).await.context("the stream is closed")
        }

        async fn next(&mut self) -> Result<DeltaDiscoveryResponse> {
            next_response(&mut self.rx).await
        }
    }

    fn delta_cla(r: &DeltaDiscoveryResponse) -> Result<Vec<ClusterLoadAssignment>> {
        r.resources
            .iter()
            .map(|r| {
                let any = r.resource.as_ref().context("a resource without its body")?;
                Ok(ClusterLoadAssignment::decode(any.value.as_slice())?)
            })
            .collect()
    }

    async fn xds_metric(node: &registry_node::NodeHandle, name: &str) -> Result<u64> {
        let (_, body) = http_get(node.http_addr, "/metrics").await?;
        metric(&body, name).with_context(|| format!("metric registry_{name}"))
    }

    /// The node still answers an ordinary ADS client.
    async fn still_serves(node: &registry_node::NodeHandle) -> Result<()> {
        let mut ads = Ads::open(channel(node.grpc_addr).await?).await?;
        ads.send(LDS, &["echo"], "", None).await?;
        let r = ads.next().await?;
        assert_eq!(r.type_url, LDS);
        Ok(())
    }

    fn cla(r: &DiscoveryResponse) -> Result<Vec<ClusterLoadAssignment>> {
        Ok(r.resources.iter().map(|a| ClusterLoadAssignment::decode(a.value.as_slice())).collect::<Result<_, _>>()?)
    }

    #[tokio::test]
    async fn unknown_types_are_ignored_and_missing_resources_left_out() -> Result<()> {
        let node = start_node(test_config("n1")).await?;
        let mut c = client(node.grpc_addr).await?;
        register(&mut c, "", instance("echo", "e1", 9001), "").await?;
        let mut ads = Ads::open(channel(node.grpc_addr).await?).await?;
        ads.send("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", &["x"], "", None).await?;
        ads.send("", &["x"], "", None).await?;
        ads.send(LDS, &["echo", "nosuch", "not a name!"], "", None).await?;
        let r = ads.next().await?;
        assert_eq!(r.type_url, LDS, "the unknown types got no answer, the stream went on");
        assert_eq!(r.resources.len(), 1, "what does not exist is left out, at once");
        assert_eq!(xds_metric(&node, "xds_unknown_type_requests_total").await?, 2);
        node.shutdown().await;
        Ok(())
    }

    /// Field 3 (`resource_names`, strings) as a number: not a DiscoveryRequest.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Garbage {
        #[prost(uint64, tag = "3")]
        resource_names: u64,
    }

    #[tokio::test]
    async fn garbage_ends_the_stream_with_invalid_argument() -> Result<()> {
        let node = start_node(test_config("n1")).await?;
        // State of the world, then incremental: the same garbage for both.
        for (n, method) in ["StreamAggregatedResources", "DeltaAggregatedResources"].into_iter().enumerate() {
            let mut grpc = tonic::client::Grpc::new(channel(node.grpc_addr).await?);
            grpc.ready().await?;
            let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}"
            ))?;
            let codec = tonic_prost::ProstCodec::<Garbage, DiscoveryResponse>::default();
            let (tx, rx) = mpsc::channel(1);
            tx.send(Garbage { resource_names: 7 }).await?;
            let status = match grpc.streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec).await {
                Err(s) => s,
                Ok(r) => {
                    let mut rx = r.into_inner();
                    match tokio::time::timeout(PROMPTLY, rx.message()).await? {
                        Err(s) => s,
                        Ok(m) => bail!("{method}: garbage was answered: {m:?}"),
                    }
                }
            };
            assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
            assert!(status.message().contains("not a DiscoveryRequest"), "{method}: {status:?}");
            drop(tx);
            assert_eq!(xds_metric(&node, "xds_bad_requests_total").await?, n as u64 + 1);
        }
        still_serves(&node).await?;
        node.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn ten_thousand_names_are_refused_whole() -> Result<()> {
        let node = start_node(test_config("n1")).await?;
        let mut ads = Ads::open(channel(node.grpc_addr).await?).await?;
        let names: Vec<String> = (0..10_000).map(|i| format!("svc-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        ads.send(EDS, &names, "", None).await?;
        let status = ads.end().await?;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("10000 resource names"), "{status:?}");
        assert_eq!(xds_metric(&node, "xds_bad_requests_total").await?, 1);
        assert_eq!(xds_metric(&node, "xds_streams").await?, 0, "the stream is gone");
        still_serves(&node).await?;
        node.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_request_over_the_message_limit_is_refused() -> Result<()> {
        let node = start_node(test_config("n1")).await?;
        let mut ads = Ads::open(channel(node.grpc_addr).await?).await?;
        // 2 MiB in one name: over limits.max_message_bytes (1 MiB).
        let name = "x".repeat(2 << 20);
        ads.send(LDS, &[&name], "", None).await?;
        let status = ads.end().await?;
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert_eq!(xds_metric(&node, "xds_bad_requests_total").await?, 1);
        still_serves(&node).await?;
        node.shutdown().await;
        Ok(())
    }

    /// State of the world sends every listener (one left out is removed)
    /// but, for endpoints, only the assignment that changed: a stream
    /// watching many services is not sent all of them at every change.
    #[tokio::test]
    async fn state_of_the_world_sends_the_endpoints_that_changed_and_every_listener() -> Result<()> {
        let node = start_node(test_config("n1")).await?;
        let mut c = client(node.grpc_addr).await?;
        let services = ["alpha", "beta", "gamma"];
        for (i, s) in services.iter().enumerate() {
            register(&mut c, "", instance(s, &format!("{s}-1"), 9001 + i as u32), "").await?;
        }
        let mut ads = Ads::open(channel(node.grpc_addr).await?).await?;
        let names_of = |r: &DiscoveryResponse| -> Result<Vec<String>> {
            Ok(cla(r)?.into_iter().map(|a| a.cluster_name).collect())
        };
        ads.send(EDS, &services, "", None).await?;
        let first = ads.next().await?;
        assert_eq!(names_of(&first)?, services, "a subscription gets every assignment");
        ads.send(EDS, &services, &first.nonce, None).await?;
        ads.send(LDS, &services, "", None).await?;
        let listeners = ads.next().await?;
        assert_eq!((listeners.type_url.as_str(), listeners.resources.len()), (LDS, 3));
        ads.send(LDS, &services, &listeners.nonce, None).await?;

        register(&mut c, "", instance("beta", "beta-2", 9100), "").await?;
        let next = ads.next().await?;
        assert_eq!(next.type_url, EDS, "a new instance changes endpoints only");
        assert_eq!(names_of(&next)?, ["beta"], "only the assignment that changed");
        assert_eq!(cla(&next)?[0].endpoints[0].lb_endpoints.len(), 2);
        ads.send(EDS, &services, &next.nonce, None).await?;

        // gamma's last instance leaves: the listeners say so, by leaving it
        // out; no endpoints response is owed for it.
        deregister(&mut c, "", "gamma", "gamma-1").await?;
        let gone = ads.next().await?;
        assert_eq!(gone.type_url, LDS, "{gone:?}");
        assert_eq!(gone.resources.len(), 2, "every listener but gamma's");
        ads.send(LDS, &services, &gone.nonce, None).await?;
        // And when it comes back, its assignment alone.
        register(&mut c, "", instance("gamma", "gamma-2", 9200), "").await?;
        let mut back = ads.next().await?;
        if back.type_url == LDS {
            assert_eq!(back.resources.len(), 3);
            ads.send(LDS, &services, &back.nonce, None).await?;
            back = ads.next().await?;
        }
        assert_eq!(names_of(&back)?, ["gamma"]);
        node.shutdown().await;
        Ok(())
    }

    /// A NACK is counted (once, however often it is repeated), the refused
    /// state is not pushed again, and the next change is.
    #[tokio::test]
    async fn a_nack_is_counted_once_and_the_next_change_still_comes() -> Result<()> {
        let node = start_node(test_config("n1")).await?;
        let mut c = client(node.grpc_addr).await?;
        register(&mut c, "", instance("echo", "e1", 9001), "").await?;
        let mut ads = Ads::open(channel(node.grpc_addr).await?).await?;
        ads.send(EDS, &["echo"], "", None).await?;
        let first = ads.next().await?;
        assert_eq!(cla(&first)?[0].endpoints[0].lb_endpoints.len(), 1);
        for _ in 0..50 {
            ads.send(EDS, &["echo"], &first.nonce, Some("I refuse")).await?;
        }
        register(&mut c, "", instance("echo", "e2", 9002), "").await?;
        let next = ads.next().await?;
        assert_ne!(next.nonce, first.nonce);
        assert_eq!(cla(&next)?[0].endpoints[0].lb_endpoints.len(), 2, "the change after the NACK");
        let (_, body) = http_get(node.http_addr, "/metrics").await?;
        assert!(body.contains("registry_xds_nacks_total{node=\"n1\",type=\"eds\"} 1"), "{body}");
        node.shutdown().await;
        Ok(())
    }

    /// The same over incremental xDS: a NACK repeated 50 times is counted
    /// once and answered with nothing (the refused resource is not sent
    /// again as it is); the next change comes, as a new version.
    #[tokio::test]
    async fn a_delta_nack_is_counted_once_and_the_next_change_still_comes() -> Result<()> {
        let node = start_node(test_config("n1")).await?;
        let mut c = client(node.grpc_addr).await?;
        register(&mut c, "", instance("echo", "e1", 9001), "").await?;
        let mut ads = DeltaAds::open(channel(node.grpc_addr).await?).await?;
        ads.send(EDS, &["echo"], "", None).await?;
        let first = ads.next().await?;
        assert_eq!(delta_cla(&first)?[0].endpoints[0].lb_endpoints.len(), 1);
        for _ in 0..50 {
            ads.send(EDS, &[], &first.nonce, Some("I refuse")).await?;
        }
        register(&mut c, "", instance("echo", "e2", 9002), "").await?;
        let next = ads.next().await?;
        assert_ne!(next.nonce, first.nonce);
        assert_ne!(next.resources[0].version, first.resources[0].version);
        assert_eq!(delta_cla(&next)?[0].endpoints[0].lb_endpoints.len(), 2, "the change after the NACK");
        let (_, body) = http_get(node.http_addr, "/metrics").await?;
        assert!(body.contains("registry_xds_nacks_total{node=\"n1\",type=\"eds\"} 1"), "{body}");
        node.shutdown().await;
        Ok(())
    }

    /// A client that stops reading holds a bounded number of responses
    /// (its queue and its HTTP/2 window), not one per change; when it reads
    /// again it gets the latest state after those few.
    #[tokio::test]
    async fn a_client_that_never_reads_costs_a_bounded_number_of_responses() -> Result<()> {
        let node = start_node(test_config("n1")).await?;
        let mut c = client(node.grpc_addr).await?;
        // Some 30 instances with metadata: each assignment is a few KiB.
        for i in 0..30 {
            let mut inst = instance("big", &format!("i{i}"), 9000 + i);
            inst.metadata.insert("padding".into(), "x".repeat(100));
            register(&mut c, "", inst, "").await?;
        }
        let small_window = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc_addr))?
            .initial_stream_window_size(Some(16 * 1024))
            .initial_connection_window_size(Some(16 * 1024))
            .connect()
            .await?;
        let mut ads = Ads::open(small_window).await?;
        ads.send(EDS, &["big"], "", None).await?;
        let first = ads.next().await?;
        let before = xds_metric(&node, "xds_responses_total").await?;
        // 300 changes while the client reads nothing, then one to look for.
        let (changes, last_weight) = (300u32, 777u32);
        let lease = register(&mut c, "", instance("big", "moving", 8000), "").await?;
        for w in 1..=changes {
            let weight = if w == changes { last_weight } else { w };
            register(&mut c, "", v1::Instance { weight: Some(weight), ..instance("big", "moving", 8000) }, &lease)
                .await?;
        }
        let sent = xds_metric(&node, "xds_responses_total").await? - before;
        assert!(sent < 60, "{sent} responses for {changes} changes to a client that does not read");
        let mut read = 0;
        loop {
            let r = ads.next().await?;
            read += 1;
            let has_last = cla(&r)?[0]
                .endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .any(|e| e.load_balancing_weight.as_ref().is_some_and(|w| w.value == last_weight));
            if has_last {
                break;
            }
            if read > 100 {
                bail!("read {read} responses and the latest state was not among them");
            }
        }
        assert!(read <= 60, "{read} responses before the latest (first was nonce {})", first.nonce);
        node.shutdown().await;
        Ok(())
    }
}
