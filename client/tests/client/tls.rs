//! TLS to the nodes, against a scripted node served over TLS with
//! certificates made here: which endpoints use TLS, the CA, the TLS domain,
//! mTLS, and that every handshake failure (wrong CA, expired certificate,
//! name mismatch, missing or refused client certificate, plaintext on either
//! side) comes back at once as `Unavailable`, never as a hang, naming TLS
//! where the client can tell (see [`refused_after_handshake`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::scripted::{Script, serve, serve_with};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use registry_client::{Client, ClientConfig, Error};
use registry_proto::v1;
use tonic::Status;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// A node that answers `GetService` with an empty service.
struct Node;

#[tonic::async_trait]
impl Script for Node {
    async fn get_service(&self, request: v1::GetServiceRequest) -> Result<v1::GetServiceResponse, Status> {
        Ok(v1::GetServiceResponse { namespace: request.namespace, service: request.service, ..Default::default() })
    }
}

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), valid from
    /// yesterday for a year unless `expired`.
    fn issue(&self, names: &[&str], expired: bool) -> Pair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// A node serving TLS with `node`'s certificate; with `client_ca`, it
/// requires client certificates from that CA (mTLS).
async fn tls_node(node: &Pair, client_ca: Option<&Ca>) -> SocketAddr {
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(&node.cert, &node.key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(ca.pem())).client_auth_optional(false);
    }
    serve_with(Node, Server::builder().tls_config(tls).expect("server TLS")).await
}

/// One endpoint; a short connect timeout keeps the failing cases quick.
fn config(endpoint: String) -> ClientConfig {
    let mut config = ClientConfig::new([endpoint]).request_timeout(Duration::from_secs(5));
    config.connect_timeout = Duration::from_secs(2);
    config
}

/// The call's failure, which must be `Unavailable` and come well before the
/// request timeout.
async fn tls_failure(client: &Client) -> String {
    let started = Instant::now();
    let e = client.get_service("orders").await.expect_err("the handshake fails");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}: {e}", started.elapsed());
    match e {
        Error::Unavailable { last } => last,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Whether `why` tells of a client certificate (or its absence) refused by
/// the node. Under TLS 1.3 the node says so after the client's side of the
/// handshake: named as a TLS failure when its alert is read before the
/// connection is torn down, else seen as the connection breaking.
fn refused_after_handshake(why: &str) -> bool {
    why.contains("TLS handshake failed")
        || ["connection closed", "broken pipe", "reset"].iter().any(|w| why.contains(w))
}

#[tokio::test]
async fn https_and_bare_endpoints_reach_a_tls_node_through_its_ca() {
    let ca = Ca::new("registry test CA");
    let addr = tls_node(&ca.issue(&["localhost", "127.0.0.1"], false), None).await;

    for endpoint in [format!("https://{addr}"), addr.to_string(), format!("https://localhost:{}", addr.port())] {
        let client = Client::new(config(endpoint.clone()).ca_pem(ca.pem())).expect("client");
        let r = client.get_service("orders").await.unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert_eq!(r.service, "orders");
    }

    // http:// stays plaintext even with a CA: the TLS node does not answer it.
    let plaintext = Client::new(config(format!("http://{addr}")).ca_pem(ca.pem())).expect("client");
    let started = Instant::now();
    let e = plaintext.get_service("orders").await.expect_err("plaintext to a TLS port");
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_node_certificate_from_another_ca_fails_at_once_naming_tls() {
    let (ca, other) = (Ca::new("registry test CA"), Ca::new("someone else"));
    let addr = tls_node(&other.issue(&["127.0.0.1"], false), None).await;
    let client = Client::new(config(format!("https://{addr}")).ca_pem(ca.pem())).expect("client");
    let why = tls_failure(&client).await;
    assert!(why.contains("TLS handshake failed"), "{why}");
    assert!(why.contains("UnknownIssuer") && why.contains("not signed by the CA"), "{why}");
}

#[tokio::test]
async fn an_expired_node_certificate_fails_naming_tls_and_expiry() {
    let ca = Ca::new("registry test CA");
    let addr = tls_node(&ca.issue(&["127.0.0.1"], true), None).await;
    let client = Client::new(config(addr.to_string()).ca_pem(ca.pem())).expect("client");
    let why = tls_failure(&client).await;
    assert!(why.contains("TLS handshake failed") && why.contains("expired"), "{why}");
}

#[tokio::test]
async fn the_tls_domain_checks_a_node_reached_by_ip_against_its_dns_name() {
    let ca = Ca::new("registry test CA");
    let addr = tls_node(&ca.issue(&["registry.test"], false), None).await;

    let by_ip = Client::new(config(addr.to_string()).ca_pem(ca.pem())).expect("client");
    let why = tls_failure(&by_ip).await;
    assert!(why.contains("TLS handshake failed") && why.contains("TLS domain"), "{why}");

    let named = Client::new(config(addr.to_string()).ca_pem(ca.pem()).tls_domain("registry.test")).expect("client");
    named.get_service("orders").await.expect("the certificate names registry.test");
}

#[tokio::test]
async fn mtls_needs_a_client_certificate_from_the_nodes_client_ca() {
    let (ca, clients) = (Ca::new("registry test CA"), Ca::new("registry clients"));
    let addr = tls_node(&ca.issue(&["127.0.0.1"], false), Some(&clients)).await;

    let anonymous = Client::new(config(addr.to_string()).ca_pem(ca.pem())).expect("client");
    let why = tls_failure(&anonymous).await;
    assert!(refused_after_handshake(&why), "{why}");

    let stranger = ca.issue(&["billing.prod"], false); // signed by a CA the node does not take for clients
    let refused = Client::new(config(addr.to_string()).ca_pem(ca.pem()).identity_pem(stranger.cert, stranger.key))
        .expect("client");
    let why = tls_failure(&refused).await;
    assert!(refused_after_handshake(&why), "{why}");

    let me = clients.issue(&["billing.prod"], false);
    let client = Client::new(config(addr.to_string()).ca_pem(ca.pem()).identity_pem(me.cert, me.key)).expect("client");
    client.get_service("orders").await.expect("a client certificate from the client CA");
}

#[tokio::test]
async fn https_to_a_plaintext_node_fails_saying_the_port_may_be_plaintext() {
    let ca = Ca::new("registry test CA");
    let addr = serve(Node).await;
    let client = Client::new(config(format!("https://{addr}")).ca_pem(ca.pem())).expect("client");
    let why = tls_failure(&client).await;
    assert!(why.contains("TLS handshake failed") && why.contains("plaintext"), "{why}");
}

#[tokio::test]
async fn a_node_that_never_finishes_the_handshake_is_given_up_on_at_the_connect_timeout() {
    let ca = Ca::new("registry test CA");
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = config(addr.to_string()).ca_pem(ca.pem());
    config.connect_timeout = Duration::from_millis(300);
    let client = Client::new(config).expect("client");
    let started = Instant::now();
    let e = client.get_service("orders").await.expect_err("no handshake");
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}: {e}", started.elapsed());
}
