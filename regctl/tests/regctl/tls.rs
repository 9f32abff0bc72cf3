//! `--ca-file`, `--cert`/`--key`, `--tls-domain` and their `REGISTRY_*`
//! variables: usage errors exit 2 naming what is wrong, a failed handshake
//! exits 69 naming TLS, and a node serving TLS (mTLS optional, with
//! certificates made here) answers over it and sees the client certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use registry_proto::v1::cluster_server::{Cluster, ClusterServer};
use registry_proto::v1::{self};
use serde_json::Value;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

const TLS_VARS: [&str; 4] = ["REGISTRY_CA_FILE", "REGISTRY_CERT", "REGISTRY_KEY", "REGISTRY_TLS_DOMAIN"];

/// What one run of regctl did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs regctl to completion (off the runtime's threads), with `env` set and
/// none of the ambient endpoint, token or TLS settings.
async fn regctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regctl"));
    command.args(args).env_remove("REGISTRY_ENDPOINT").env_remove("REGISTRY_TOKEN");
    for var in TLS_VARS {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || command.output().expect("regctl runs")).await.expect("join");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A directory of its own for this test's PEM files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("regctl-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("mkdir");
        Self(path)
    }

    /// Writes `text` to `name`; its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8 path").to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA"))
    }

    /// (certificate, key) PEM for `name`.
    fn issue(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        (params.signed_by(&key, &self.0).expect("sign").pem(), key.serialize_pem())
    }
}

/// A node serving `Members` over TLS as `127.0.0.1`, asking for client
/// certificates from `clients` (optional); the cluster name it answers says
/// how many certificates the client showed.
async fn tls_node(ca: &Ca, clients: &Ca) -> SocketAddr {
    struct Members;

    #[tonic::async_trait]
    impl Cluster for Members {
        async fn members(&self, request: Request<v1::MembersRequest>) -> Result<Response<v1::MembersResponse>, Status> {
            let shown = request.peer_certs().map_or(0, |c| c.len());
            Ok(Response::new(v1::MembersResponse { cluster: format!("client-certs-{shown}"), ..Default::default() }))
        }
    }

    let (cert, key) = ca.issue("127.0.0.1");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(clients.0.pem()))
        .client_auth_optional(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("server TLS")
            .add_service(ClusterServer::new(Members))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn cert_and_key_go_together_or_it_is_a_usage_error() {
    for (args, env) in [
        (vec!["--cert", "c.pem", "members"], vec![]),
        (vec!["--key", "c.key", "members"], vec![]),
        (vec!["members"], vec![("REGISTRY_CERT", "c.pem")]),
        (vec!["members", "--key", "c.key"], vec![]),
    ] {
        let r = regctl(&args, &env).await;
        assert_eq!(r.code, 2, "{args:?} {env:?}: {}", r.stderr);
        assert!(r.stderr.contains("--key") || r.stderr.contains("--cert"), "{}", r.stderr);
    }
}

#[tokio::test]
async fn unreadable_or_invalid_tls_files_exit_2_naming_them() {
    let dir = Dir::new("usage");
    let missing = dir.0.join("missing-ca.pem");
    let missing = missing.to_str().expect("utf-8");
    // Nothing listens there: the files are read before any connection.
    let ep = "127.0.0.1:1";

    let r = regctl(&["--endpoint", ep, "--ca-file", missing, "members"], &[]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("invalid TLS CA certificate in `{missing}`: cannot read")), "{}", r.stderr);

    let garbage = dir.file("garbage.pem", "not a certificate\n");
    let r = regctl(&["--endpoint", ep, "--json", "members"], &[("REGISTRY_CA_FILE", &garbage)]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["exit_code"], 2);
    assert!(v["error"].as_str().is_some_and(|e| e.contains(&garbage) && e.contains("no certificate found")), "{v}");

    // The key file holds the certificate: no key, and its secret never shown.
    let (cert, key) = Ca::new("clients").issue("billing.prod");
    let cert_file = dir.file("billing.pem", &cert);
    let r = regctl(&["--endpoint", ep, "--cert", &cert_file, "--key", &cert_file, "members"], &[]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("invalid TLS client key") && r.stderr.contains("no private key found"), "{}", r.stderr);
    let other_key = dir.file("other.key", &key);
    let (other_cert, _) = Ca::new("clients").issue("someone-else");
    let other_cert = dir.file("other.pem", &other_cert);
    let r = regctl(&["--endpoint", ep, "--cert", &other_cert, "--key", &other_key, "members"], &[]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("does not belong to the client certificate"), "{}", r.stderr);
    let secret = key.lines().nth(1).expect("a base64 line");
    assert!(!r.stderr.contains(secret) && !r.stdout.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_node_answers_through_its_ca_and_sees_the_client_certificate() {
    let (ca, clients, stranger) = (Ca::new("registry CA"), Ca::new("registry clients"), Ca::new("someone else"));
    let addr = tls_node(&ca, &clients).await;
    let dir = Dir::new("node");
    let ca_file = dir.file("ca.pem", &ca.0.pem());
    let (cert, key) = clients.issue("billing.prod");
    let (cert_file, key_file) = (dir.file("billing.pem", &cert), dir.file("billing.key", &key));
    let ep = addr.to_string(); // bare host:port: TLS, as a CA is given
    let cluster = |r: &Run| -> String {
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
        v["cluster"].as_str().expect("cluster").to_string()
    };

    let r = regctl(&["--endpoint", &ep, "--ca-file", &ca_file, "--json", "members"], &[]).await;
    assert_eq!(cluster(&r), "client-certs-0");

    let env = [("REGISTRY_CA_FILE", ca_file.as_str()), ("REGISTRY_CERT", &cert_file), ("REGISTRY_KEY", &key_file)];
    let r = regctl(&["--endpoint", &ep, "--json", "members"], &env).await;
    assert_eq!(cluster(&r), "client-certs-1");

    // Through a name the certificate lacks, unless the TLS domain names
    // what it has.
    let by_name = format!("localhost:{}", addr.port());
    let flags = ["--endpoint", &by_name, "--ca-file", &ca_file, "--cert", &cert_file, "--key", &key_file];
    let with = |more: &[&'static str]| flags.iter().copied().chain(more.iter().copied()).collect::<Vec<_>>();
    let r = regctl(&with(&["--tls-domain", "127.0.0.1", "--json", "members"]), &[]).await;
    assert_eq!(cluster(&r), "client-certs-1");
    let r = regctl(&with(&["members"]), &[]).await;
    assert_eq!(r.code, 69, "{}", r.stderr);
    assert!(r.stderr.contains("TLS handshake failed") && r.stderr.contains("TLS domain"), "{}", r.stderr);

    // Another CA: the handshake fails, 69, naming TLS.
    let wrong = dir.file("wrong-ca.pem", &stranger.0.pem());
    let r = regctl(&["--endpoint", &ep, "--ca-file", &wrong, "members"], &[]).await;
    assert_eq!(r.code, 69, "{}", r.stderr);
    assert!(r.stderr.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"), "{}", r.stderr);

    // A client certificate from a CA the node does not take for clients:
    // under TLS 1.3 the node says so after the client's side of the
    // handshake, and its alert may or may not be read before the connection
    // is torn down. Either way, 69 and a message naming TLS.
    let (foreign_cert, foreign_key) = stranger.issue("billing.prod");
    let (fc, fk) = (dir.file("foreign.pem", &foreign_cert), dir.file("foreign.key", &foreign_key));
    let r = regctl(&["--endpoint", &ep, "--ca-file", &ca_file, "--cert", &fc, "--key", &fk, "members"], &[]).await;
    assert_eq!(r.code, 69, "{}", r.stderr);
    assert!(r.stderr.contains("TLS handshake failed") || r.stderr.contains("the endpoints use TLS"), "{}", r.stderr);

    // http:// stays plaintext, CA or not: the TLS node does not answer it.
    let r = regctl(&["--endpoint", &format!("http://{addr}"), "--ca-file", &ca_file, "members"], &[]).await;
    assert_eq!(r.code, 69, "{}", r.stderr);
}

#[test]
fn help_lists_the_tls_flags_and_their_variables() {
    let out = Command::new(env!("CARGO_BIN_EXE_regctl")).arg("--help").output().expect("regctl runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--ca-file", "--cert", "--key", "--tls-domain"].into_iter().chain(TLS_VARS) {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
