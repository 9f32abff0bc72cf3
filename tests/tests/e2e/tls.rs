//! TLS and mTLS on the gRPC and HTTP ports, with certificates made in the
//! test: plaintext to a TLS port fails, a client that does not trust the
//! node's CA fails, a client certificate from another CA or an expired one is
//! refused, a client certificate names its principal (`[[auth.certs]]`), and
//! new certificates are taken up while an open stream keeps running.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use registry_node::auth::{AuthMode, CertEntry, Role};
use registry_node::listen::{ClientAuth, TlsSettings};
use registry_node::{NodeConfig, NodeHandle};
use registry_proto::v1;
use registry_tests::pki::{ClientTls, Pem, TestCa, Validity, cert_dir};
use registry_tests::{PROMPTLY, grant, http_get, instance, metric, start_node, test_config, token_entry};
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

type Client = v1::registry_client::RegistryClient<Channel>;

/// A CA, the node's certificate files, and a config with `[tls]`.
struct Setup {
    ca: TestCa,
    dir: std::path::PathBuf,
    config: NodeConfig,
}

fn setup(test: &str, client_auth: Option<ClientAuth>) -> Result<Setup> {
    let ca = TestCa::new("registry test CA")?;
    let dir = cert_dir(test)?;
    let (cert_file, key_file) = ca.server()?.write(&dir, "server")?;
    let client_ca_file = client_auth.map(|_| ca.write(&dir, "client-ca")).transpose()?;
    let mut config = test_config(test);
    config.tls = Some(TlsSettings { cert_file, key_file, client_ca_file, client_auth });
    Ok(Setup { ca, dir, config })
}

fn get(service: &str) -> v1::GetServiceRequest {
    v1::GetServiceRequest { namespace: String::new(), service: service.into() }
}

async fn node_metric(tls: &ClientTls, node: &NodeHandle, name: &str) -> Result<u64> {
    let (status, body) = tls.https_get(node.http_addr, "/metrics", &[]).await?;
    ensure!(status == 200, "/metrics: {status}");
    metric(&body, name).ok_or_else(|| anyhow::anyhow!("no metric {name}"))
}

/// Polls `f` until it is true or `within` passes.
async fn until(within: Duration, what: &str, mut f: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("not within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpc_and_https_and_refuses_plaintext_and_strangers() -> Result<()> {
    let s = setup("tls-basic", None)?;
    let node = start_node(s.config).await?;
    let trusted = ClientTls::trusting(&s.ca);

    // Over TLS, both ports answer.
    let mut c = Client::new(trusted.channel(node.grpc_addr).await?);
    c.register_instance(v1::RegisterInstanceRequest {
        instance: Some(instance("orders", "a", 80)),
        ..Default::default()
    })
    .await?;
    ensure!(c.get_service(get("orders")).await?.into_inner().instances.len() == 1);
    let (status, body) = trusted.https_get(node.http_addr, "/healthz", &[]).await?;
    ensure!(status == 200 && body.trim() == "ok", "/healthz over TLS: {status} {body:?}");

    // Plaintext to either port gets nothing it can use.
    let plain = Channel::from_shared(format!("http://{}", node.grpc_addr))?.connect_timeout(PROMPTLY).connect().await;
    match plain {
        Err(_) => {}
        Ok(channel) => {
            let answer = Client::new(channel).get_service(get("orders")).await;
            ensure!(answer.is_err(), "a plaintext gRPC call to a TLS port succeeded: {answer:?}");
        }
    }
    ensure!(http_get(node.http_addr, "/healthz").await.is_err(), "a plaintext HTTP GET to a TLS port got an answer");

    // A client that trusts another CA refuses the node's certificate.
    let stranger = ClientTls::trusting(&TestCa::new("another CA")?);
    ensure!(stranger.channel(node.grpc_addr).await.is_err(), "a client trusting another CA connected");
    ensure!(stranger.https_get(node.http_addr, "/healthz", &[]).await.is_err());

    // Failed handshakes are counted (the plaintext ones: the stranger's
    // client gives up before the node sees its handshake fail, or not).
    until(PROMPTLY, "handshake failures counted", async || {
        Ok(node_metric(&trusted, &node, "tls_handshake_failures_total").await? >= 2)
    })
    .await?;
    let not_after = node_metric(&trusted, &node, "tls_cert_not_after_seconds").await?;
    ensure!(not_after > 2_500_000_000, "the server certificate's expiry (2049) is exported: {not_after}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_auth_refuses_missing_foreign_and_expired_certificates() -> Result<()> {
    let s = setup("tls-mtls", Some(ClientAuth::Required))?;
    let node = start_node(s.config).await?;
    let good = ClientTls::trusting(&s.ca).with_identity(s.ca.client("app", &["app.test"], Validity::Current)?);
    let mut c = Client::new(good.channel(node.grpc_addr).await?);
    c.get_service(get("orders")).await?;
    ensure!(good.https_get(node.http_addr, "/healthz", &[]).await?.0 == 200);

    let none = ClientTls::trusting(&s.ca);
    let foreign = ClientTls::trusting(&s.ca).with_identity(TestCa::new("rogue CA")?.client(
        "app",
        &["app.test"],
        Validity::Current,
    )?);
    let expired = ClientTls::trusting(&s.ca).with_identity(s.ca.client("app", &["app.test"], Validity::Expired)?);
    for (who, tls) in
        [("no certificate", &none), ("another CA's certificate", &foreign), ("an expired certificate", &expired)]
    {
        // TLS 1.3 finishes the client's side of the handshake before the
        // server checks the certificate: the refusal may come with the first call.
        let refused = match tls.channel(node.grpc_addr).await {
            Err(_) => true,
            Ok(channel) => Client::new(channel).get_service(get("orders")).await.is_err(),
        };
        ensure!(refused, "gRPC with {who} was served");
        ensure!(tls.https_get(node.http_addr, "/healthz", &[]).await.is_err(), "HTTPS with {who} was served");
    }
    ensure!(node_metric(&good, &node, "tls_handshake_failures_total").await? >= 6);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_its_principal() -> Result<()> {
    let mut s = setup("tls-principal", Some(ClientAuth::Optional))?;
    let token = format!("{:032x}", rand::random::<u128>());
    s.config.auth.mode = Some(AuthMode::Enforce);
    s.config.auth.certs = vec![
        CertEntry {
            name: "billing-service".into(),
            subject: "billing.prod".into(),
            grants: vec![grant("prod", "billing*", Role::Write)],
        },
        CertEntry { name: "ops".into(), subject: "ops-cn".into(), grants: vec![grant("*", "*", Role::Admin)] },
    ];
    s.config.auth.tokens = vec![token_entry("orders-team", &token, vec![grant("default", "orders*", Role::Write)])];
    let node = start_node(s.config).await?;
    let billing =
        ClientTls::trusting(&s.ca).with_identity(s.ca.client("billing-cn", &["billing.prod"], Validity::Current)?);
    let mut c = Client::new(billing.channel(node.grpc_addr).await?);
    let mut prod = instance("billing", "b1", 80);
    prod.namespace = "prod".into();
    // The SAN matches: allowed without a token, and the record names the principal.
    c.register_instance(v1::RegisterInstanceRequest { instance: Some(prod), ..Default::default() }).await?;
    let shown = c
        .get_service(v1::GetServiceRequest { namespace: "prod".into(), service: "billing".into() })
        .await?
        .into_inner();
    ensure!(shown.instances.first().map(|i| i.principal.as_str()) == Some("billing-service"), "{shown:?}");
    // Outside its grant: PERMISSION_DENIED naming the principal.
    let denied = c
        .register_instance(v1::RegisterInstanceRequest {
            instance: Some(instance("orders", "o1", 80)),
            ..Default::default()
        })
        .await
        .expect_err("no grant on default/orders");
    ensure!(denied.code() == Code::PermissionDenied && denied.message().contains("billing-service"), "{denied:?}");
    // A bearer token over the same connection speaks for its own principal.
    let mut r = Request::new(v1::RegisterInstanceRequest {
        instance: Some(instance("orders", "o1", 80)),
        ..Default::default()
    });
    r.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}"))?);
    c.register_instance(r).await?;

    // A certificate from the right CA whose names match no [[auth.certs]]
    // subject, and no token: UNAUTHENTICATED.
    let nobody =
        ClientTls::trusting(&s.ca).with_identity(s.ca.client("billing", &["billing.test"], Validity::Current)?);
    let e = Client::new(nobody.channel(node.grpc_addr).await?).get_service(get("orders")).await.expect_err("unknown");
    ensure!(e.code() == Code::Unauthenticated, "{e:?}");
    // No certificate at all (client_auth = optional) and no token: UNAUTHENTICATED.
    let anonymous = ClientTls::trusting(&s.ca);
    let e = Client::new(anonymous.channel(node.grpc_addr).await?).get_service(get("orders")).await.expect_err("none");
    ensure!(e.code() == Code::Unauthenticated, "{e:?}");

    // HTTP: the admin endpoints take the certificate's principal too (CN match).
    let ops = ClientTls::trusting(&s.ca).with_identity(s.ca.client("ops-cn", &[], Validity::Current)?);
    ensure!(ops.https_get(node.http_addr, "/admin/node", &[]).await?.0 == 200);
    ensure!(billing.https_get(node.http_addr, "/admin/node", &[]).await?.0 == 403);
    ensure!(anonymous.https_get(node.http_addr, "/admin/node", &[]).await?.0 == 401);
    ensure!(node_metric(&ops, &node, "auth_failures_total").await.is_ok());
    let (_, body) = ops.https_get(node.http_addr, "/metrics", &[]).await?;
    ensure!(
        body.lines().any(|l| l.contains("reason=\"unknown_certificate\"") && l.ends_with(" 1")),
        "one request with an unknown certificate was counted:\n{body}"
    );
    node.shutdown().await;
    Ok(())
}

/// Rewrites the node's certificate and key files with `pem` (key first, as
/// a careless operator might: a reload in between must keep the old pair).
fn rotate(dir: &Path, pem: &Pem) -> Result<()> {
    std::fs::write(dir.join("server.key"), &pem.key)?;
    std::fs::write(dir.join("server.pem"), &pem.cert)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_certificates_are_taken_up_while_open_streams_keep_running() -> Result<()> {
    let s = setup("tls-rotate", None)?;
    let node = start_node(s.config).await?;
    let old = ClientTls::trusting(&s.ca);
    let mut c = Client::new(old.channel(node.grpc_addr).await?);
    let mut stream =
        c.subscribe(v1::SubscribeRequest { services: vec!["orders".into()], ..Default::default() }).await?.into_inner();
    tokio::time::timeout(PROMPTLY, stream.next()).await?.transpose()?.ok_or_else(|| anyhow::anyhow!("no snapshot"))?;

    // A new CA and a certificate it signed replace the files.
    let new_ca = TestCa::new("rotated CA")?;
    rotate(&s.dir, &new_ca.server()?)?;
    let new = ClientTls::trusting(&new_ca);
    until(Duration::from_secs(15), "the node serves the new certificate", async || {
        Ok(new.https_get(node.http_addr, "/healthz", &[]).await.is_ok())
    })
    .await?;
    ensure!(new.channel(node.grpc_addr).await.is_ok(), "gRPC serves the new certificate too");
    ensure!(old.channel(node.grpc_addr).await.is_err(), "new connections no longer get the old certificate");
    ensure!(node_metric(&new, &node, "tls_reloads_total").await? >= 1);

    // The stream opened before the rotation still delivers.
    let mut writer = Client::new(new.channel(node.grpc_addr).await?);
    writer
        .register_instance(v1::RegisterInstanceRequest {
            instance: Some(instance("orders", "after", 80)),
            ..Default::default()
        })
        .await?;
    let delta = tokio::time::timeout(PROMPTLY, stream.next()).await?.transpose()?;
    ensure!(delta.is_some(), "the open stream ended at the rotation");

    // A broken file is refused and the certificate in force stays.
    std::fs::write(s.dir.join("server.pem"), "not a certificate")?;
    until(Duration::from_secs(15), "the bad file is refused", async || {
        Ok(node_metric(&new, &node, "tls_reload_failures_total").await? >= 1)
    })
    .await?;
    ensure!(new.https_get(node.http_addr, "/healthz", &[]).await?.0 == 200, "the old material is still in force");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_unreadable_tls_files_does_not_start() -> Result<()> {
    let mut s = setup("tls-bad", None)?;
    let tls = s.config.tls.as_mut().expect("tls");
    tls.key_file = s.dir.join("absent.key");
    let err = registry_node::start(s.config).await.expect_err("no key file").to_string();
    ensure!(err.contains("tls.key_file") && err.contains("absent.key"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_speaks_tls_and_mtls_to_a_real_node() -> Result<()> {
    use registry_client::{Client as Lib, ClientConfig, Error};
    let mut s = setup("tls-client-lib", Some(ClientAuth::Optional))?;
    s.config.auth.mode = Some(AuthMode::Enforce);
    s.config.auth.certs = vec![CertEntry {
        name: "orders-service".into(),
        subject: "orders.prod".into(),
        grants: vec![grant("default", "orders*", Role::Write)],
    }];
    let node = start_node(s.config).await?;
    let id = s.ca.client("orders-cn", &["orders.prod"], Validity::Current)?;
    let (cert, key) = id.write(&s.dir, "orders-client")?;
    let ca = s.ca.write(&s.dir, "ca")?;
    // Files, an https:// endpoint, and the client certificate as the principal.
    let lib = Lib::new(
        ClientConfig::new([format!("https://localhost:{}", node.grpc_addr.port())])
            .ca_file(&ca)
            .identity_files(&cert, &key),
    )?;
    let provider = lib.register([instance("orders", "lib-tls", 80)]).await?;
    let watch = lib.watch("orders").await?;
    ensure!(watch.current().instances.values().any(|i| i.instance_id == "lib-tls" && i.principal == "orders-service"));
    match lib.get_service("payments").await {
        Err(Error::PermissionDenied(msg)) => ensure!(msg.contains("orders-service"), "{msg}"),
        other => bail!("expected PermissionDenied, got {other:?}"),
    }
    // A bare host:port uses TLS once a CA is given; without a client
    // certificate or token the node does not know the caller.
    let anonymous = Lib::new(ClientConfig::new([format!("localhost:{}", node.grpc_addr.port())]).ca_file(&ca))?;
    match anonymous.get_service("orders").await {
        Err(Error::Unauthenticated(_)) => {}
        other => bail!("expected Unauthenticated, got {other:?}"),
    }
    // A client that trusts another CA is refused at the handshake, promptly.
    let other_ca = TestCa::new("another CA")?.write(&s.dir, "other-ca")?;
    let stranger = Lib::new(
        ClientConfig::new([format!("https://localhost:{}", node.grpc_addr.port())])
            .ca_file(&other_ca)
            .request_timeout(PROMPTLY),
    )?;
    let e = stranger.get_service("orders").await.expect_err("untrusted node");
    ensure!(e.to_string().contains("TLS"), "the error says TLS: {e}");
    provider.shutdown().await;
    node.shutdown().await;
    Ok(())
}
