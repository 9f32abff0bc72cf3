//! Certificates made at test time (rcgen): a CA, server certificates for the
//! loopback address, client certificates (mTLS) with chosen names, expired
//! ones, and the clients that use them: a TLS gRPC channel and an HTTPS GET.
//! Nothing here is a fixed secret: every key is generated when a test runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::PROMPTLY;

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// Writes `<name>.pem` and `<name>.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, &self.cert).with_context(|| format!("write {}", cert.display()))?;
        std::fs::write(&key, &self.key).with_context(|| format!("write {}", key.display()))?;
        Ok((cert, key))
    }
}

/// A certificate authority made now.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert: String,
}

/// How long a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From 2000 to 2049.
    Current,
    /// Expired in 2021.
    Expired,
}

impl TestCa {
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?.pem();
        Ok(Self { issuer: Issuer::new(params, key), cert })
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Result<Pem> {
        self.leaf("localhost", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, Validity::Current)
    }

    /// A client certificate with subject CN `cn` and DNS names `sans`.
    pub fn client(&self, cn: &str, sans: &[&str], validity: Validity) -> Result<Pem> {
        self.leaf(cn, sans, ExtendedKeyUsagePurpose::ClientAuth, validity)
    }

    fn leaf(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose, validity: Validity) -> Result<Pem> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        match validity {
            Validity::Current => {
                params.not_before = rcgen::date_time_ymd(2000, 1, 1);
                params.not_after = rcgen::date_time_ymd(2049, 12, 31);
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
    }

    /// Writes the CA certificate as `<name>.pem` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.cert)?;
        Ok(path)
    }
}

/// A fresh directory for a test's certificate files.
pub fn cert_dir(test: &str) -> Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("registry-pki-{test}-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// What a test client trusts and shows.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// CA certificate (PEM) the node's certificate must chain to.
    pub ca: String,
    /// The client's own certificate, for mTLS.
    pub identity: Option<Pem>,
}

impl ClientTls {
    pub fn trusting(ca: &TestCa) -> Self {
        Self { ca: ca.cert.clone(), identity: None }
    }

    pub fn with_identity(mut self, identity: Pem) -> Self {
        self.identity = Some(identity);
        self
    }

    /// A gRPC channel to `addr` over TLS (connected now, so a handshake
    /// failure is this call's error).
    pub async fn channel(&self, addr: SocketAddr) -> Result<Channel> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca)).domain_name("localhost");
        if let Some(id) = &self.identity {
            tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
        }
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect_timeout(PROMPTLY);
        Ok(tokio::time::timeout(PROMPTLY, endpoint.connect()).await.context("TLS connect timed out")??)
    }

    fn rustls(&self) -> Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            roots.add(cert?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        Ok(match &self.identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                let chain = CertificateDer::pem_slice_iter(id.cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
                builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(id.key.as_bytes())?)?
            }
        })
    }

    /// An HTTPS GET of `path` (HTTP/1.1): the status and the body.
    pub async fn https_get(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        self.https_request(addr, "GET", path, headers, None).await
    }

    /// One HTTPS request (see [`crate::http_request`]): the status and the body.
    pub async fn https_request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.rustls()?));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost")?;
        let mut s = tokio::time::timeout(PROMPTLY, connector.connect(name, tcp)).await.context("TLS handshake")??;
        s.write_all(crate::request_text("localhost", method, path, headers, body).as_bytes()).await?;
        let mut buf = Vec::new();
        // A TLS peer that closes without close_notify is still an answer.
        let _ = tokio::time::timeout(PROMPTLY, s.read_to_end(&mut buf)).await?;
        crate::parse_response(&buf)
    }
}
