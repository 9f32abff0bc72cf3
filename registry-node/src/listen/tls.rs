//! TLS on the gRPC and HTTP ports: the `[tls]` settings, the server
//! certificate and key, the client CA for mTLS, and their reload.
//!
//! ```toml
//! [tls]                          # TLS on the gRPC port AND the HTTP port
//! cert_file = "server.pem"       # PEM chain, leaf first
//! key_file = "server.key"        # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! client_ca_file = "ca.pem"      # optional: ask clients for certificates (mTLS)
//! client_auth = "optional"       # "optional" | "required" (needs client_ca_file)
//! ```
//!
//! The material is read into a rustls `ServerConfig` (ring provider, TLS 1.2
//! and 1.3). A reload builds a new one from the files and swaps it in whole:
//! new connections use it, open ones keep the session they negotiated, and
//! files that do not load leave the old material in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

/// Whether clients must show a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Ask for one; a client without one may still send a bearer token.
    Optional,
    /// Refuse the handshake without a certificate the client CA signed.
    Required,
}

/// `[tls]`. Present, both ports speak only TLS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// The server's private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign client certificates: set, the node
    /// asks clients for one (mTLS), and `[[auth.certs]]` can name them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Default `optional` when `client_ca_file` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
}

impl TlsSettings {
    /// Checks the combination of settings (the files are read at start).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.cert_file.as_os_str().is_empty() {
            return Err(("tls.cert_file", "must name the server certificate's PEM file".into()));
        }
        if self.key_file.as_os_str().is_empty() {
            return Err(("tls.key_file", "must name the server key's PEM file".into()));
        }
        if self.client_auth.is_some() && self.client_ca_file.is_none() {
            return Err(("tls.client_auth", "needs tls.client_ca_file: the CA that signs client certificates".into()));
        }
        Ok(())
    }

    /// The files a reload reads.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.client_ca_file.clone());
        files
    }
}

/// Which application protocol a port offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The HTTP port: HTTP/1.1.
    Http,
}

/// TLS counters and the certificate's expiry, for `/metrics`.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    /// Handshakes that failed or timed out (wrong CA, expired or missing
    /// client certificate, plaintext sent to a TLS port, ...).
    pub handshake_failures: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// The server certificate's notAfter, in Unix seconds.
    pub cert_not_after: AtomicI64,
}

/// The node's TLS material, swapped whole on a reload.
#[derive(Debug)]
pub struct TlsServer {
    settings: TlsSettings,
    configs: RwLock<Configs>,
    pub metrics: TlsMetrics,
}

#[derive(Debug, Clone)]
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl TlsServer {
    /// Reads the material of `settings`; an error names the file and why.
    pub fn load(settings: &TlsSettings) -> Result<Self, String> {
        let (configs, not_after) = build(settings)?;
        let metrics = TlsMetrics::default();
        metrics.cert_not_after.store(not_after, Ordering::Relaxed);
        Ok(Self { settings: settings.clone(), configs: RwLock::new(configs), metrics })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The config new connections of a port use now.
    pub fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let configs = self.configs.read();
        match alpn {
            Alpn::Grpc => configs.grpc.clone(),
            Alpn::Http => configs.http.clone(),
        }
    }

    /// Reads the files again and puts them in force, or keeps the old
    /// material and says why.
    pub fn reload(&self) -> Result<(), String> {
        match build(&self.settings) {
            Ok((configs, not_after)) => {
                *self.configs.write() = configs;
                self.metrics.cert_not_after.store(not_after, Ordering::Relaxed);
                self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.settings.cert_file.display(), "TLS material reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "TLS material NOT reloaded: the previous one stays in force");
                Err(e)
            }
        }
    }
}

fn read_certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The two configs (one per ALPN) and the leaf certificate's notAfter.
fn build(settings: &TlsSettings) -> Result<(Configs, i64), String> {
    let certs = read_certs("tls.cert_file", &settings.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", settings.key_file.display()))?;
    let not_after = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| format!("tls.cert_file {}: not an X.509 certificate: {e}", settings.cert_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certs("tls.client_ca_file", path)? {
                roots.add(ca).map_err(|e| format!("tls.client_ca_file {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_auth.unwrap_or(ClientAuth::Optional) {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier = verifier.build().map_err(|e| format!("tls.client_ca_file {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!("tls.cert_file {} and tls.key_file {}: {e}", settings.cert_file.display(), settings.key_file.display())
    })?;
    let mut grpc = config.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    let mut http = config;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Configs { grpc: Arc::new(grpc), http: Arc::new(http) }, not_after))
}

/// The names a client certificate goes by: its subject CNs, then its DNS and
/// URI subject alternative names. `[[auth.certs]]` `subject` matches one of
/// them exactly. A certificate that does not parse has none.
pub fn cert_names(der: &[u8]) -> Vec<Box<str>> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<Box<str>> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(Into::into).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).into()),
                _ => {}
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_auth_needs_a_client_ca() {
        let s = TlsSettings {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
            client_ca_file: None,
            client_auth: Some(ClientAuth::Required),
        };
        assert_eq!(s.validate().expect_err("no CA").0, "tls.client_auth");
        let ok = TlsSettings { client_ca_file: Some("ca.pem".into()), ..s };
        ok.validate().expect("valid");
        assert_eq!(ok.files().len(), 3);
    }

    #[test]
    fn names_come_from_the_cn_and_the_dns_and_uri_sans() {
        let mut params = rcgen::CertificateParams::new(vec!["billing.prod".to_string()]).expect("params");
        let uri = rcgen::string::Ia5String::try_from("spiffe://prod/billing").expect("ia5");
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
        params.distinguished_name.push(rcgen::DnType::CommonName, "billing-cn");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let names = cert_names(cert.der());
        assert_eq!(
            names.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["billing-cn", "billing.prod", "spiffe://prod/billing"]
        );
        assert!(cert_names(b"not a certificate").is_empty());
    }

    #[test]
    fn missing_and_garbage_files_are_named() {
        let dir = std::env::temp_dir().join(format!("registry-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "hello").expect("write");
        let s = TlsSettings {
            cert_file: dir.join("absent.pem"),
            key_file: garbage.clone(),
            client_ca_file: None,
            client_auth: None,
        };
        assert!(TlsServer::load(&s).expect_err("absent").contains("absent.pem"));
        let s = TlsSettings { cert_file: garbage.clone(), ..s };
        let e = TlsServer::load(&s).expect_err("garbage");
        assert!(e.contains("tls.cert_file") && e.contains("no PEM certificate"), "{e}");
    }
}
