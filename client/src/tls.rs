//! TLS to the nodes: the material a [`ClientConfig`](crate::ClientConfig)
//! names (the CA, a client identity for mTLS, a server name), read and checked
//! once by [`Client::new`](crate::Client::new), and the rule that decides
//! which endpoints use it.
//!
//! Which endpoints use TLS:
//! - `https://host:port`: always. Node certificates must chain to the
//!   configured CA, or, when none is configured, to the system's roots.
//! - `http://host:port`: never, whatever is configured (a warning is logged
//!   when TLS is configured).
//! - a bare `host:port`: TLS as soon as any TLS setting is given (a CA, a
//!   client identity or a TLS domain), plaintext otherwise.
//!
//! Everything is read and checked up front, so a missing file, PEM without a
//! certificate or key, or a key that does not belong to its certificate is an
//! [`Error::InvalidTls`] from `Client::new` that names the file, not a failed
//! handshake later. Key material never appears in `Debug` output or errors.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor};
use tonic::transport::{ClientTlsConfig, Identity};

use crate::error::{Error, Result};

/// PEM text for [`TlsConfig`]: a file, read by [`Client::new`](crate::Client::new),
/// or the text itself (from a secret store, say). `Debug` shows a file's path
/// but never the text.
///
/// ```
/// use registry_client::Pem;
///
/// assert_eq!(format!("{:?}", Pem::file("/etc/registry/ca.pem")), r#"File("/etc/registry/ca.pem")"#);
/// assert_eq!(format!("{:?}", Pem::bytes("-----BEGIN PRIVATE KEY-----...")), "Bytes(<30 bytes>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    /// A PEM file.
    File(PathBuf),
    /// PEM text.
    Bytes(Vec<u8>),
}

impl Pem {
    /// The PEM file at `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::File(path.into())
    }

    /// PEM text.
    pub fn bytes(pem: impl Into<Vec<u8>>) -> Self {
        Self::Bytes(pem.into())
    }

    /// The text (read from the file, if it is one).
    fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::File(path) => std::fs::read(path).map_err(|e| format!("cannot read the file: {e}")),
            Self::Bytes(bytes) => Ok(bytes.clone()),
        }
    }

    /// Where the text comes from, for errors.
    fn origin(&self) -> String {
        match self {
            Self::File(path) => format!("`{}`", path.display()),
            Self::Bytes(_) => "the PEM text given".into(),
        }
    }
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Bytes(bytes) => write!(f, "Bytes(<{} bytes>)", bytes.len()),
        }
    }
}

/// A client certificate and its private key, shown to nodes that ask for
/// one (mTLS). A node that knows the certificate's subject takes it as the
/// caller's principal, without a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, the client's own certificate first.
    pub cert_chain: Pem,
    /// The private key of the first certificate: PKCS#8 (`PRIVATE KEY`),
    /// PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`), not encrypted.
    pub key: Pem,
}

/// TLS to the nodes: [`ClientConfig::tls`](crate::ClientConfig::tls), set
/// with [`ClientConfig::ca_file`](crate::ClientConfig::ca_file) and its
/// siblings. The default is no TLS setting: `https://` endpoints still use
/// TLS, against the system's roots.
///
/// ```
/// use registry_client::{ClientConfig, TlsConfig};
///
/// assert!(!TlsConfig::default().is_configured());
/// let config = ClientConfig::new(["10.0.0.1:7070"]).ca_file("ca.pem").tls_domain("registry.internal");
/// assert!(config.tls.is_configured()); // so 10.0.0.1:7070 is reached over TLS
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// CA certificates (one or more, PEM) that node certificates must chain
    /// to. `None`: the system's roots.
    pub ca: Option<Pem>,
    /// The client certificate and key for nodes that ask for one (mTLS).
    pub identity: Option<ClientIdentity>,
    /// The name node certificates are checked against, instead of the
    /// endpoint's host: for nodes reached by IP address (or through a name
    /// their certificates do not carry) whose certificates name a DNS name.
    pub domain: Option<String>,
}

impl TlsConfig {
    /// Whether any TLS setting is given; then a bare `host:port` endpoint
    /// uses TLS.
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some() || self.domain.is_some()
    }

    /// Whether `endpoint`, as [`ClientConfig::endpoints`](crate::ClientConfig::endpoints)
    /// spells it, is reached over TLS with these settings.
    ///
    /// ```
    /// use registry_client::{ClientConfig, TlsConfig};
    ///
    /// let none = TlsConfig::default();
    /// assert!(none.uses_tls("https://registry.internal:7070"));
    /// assert!(!none.uses_tls("10.0.0.1:7070"));
    /// let with_ca = ClientConfig::new(["10.0.0.1:7070"]).ca_file("ca.pem").tls;
    /// assert!(with_ca.uses_tls("10.0.0.1:7070"));
    /// assert!(!with_ca.uses_tls("http://10.0.0.1:7070"));
    /// ```
    pub fn uses_tls(&self, endpoint: &str) -> bool {
        endpoint_uri(endpoint, self).get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }

    /// Reads and checks everything: tonic's settings for every TLS endpoint,
    /// with `handshake_timeout` on the handshake.
    pub(crate) fn load(&self, handshake_timeout: Duration) -> Result<ClientTlsConfig> {
        let mut tls = ClientTlsConfig::new().timeout(handshake_timeout);
        tls = match &self.ca {
            Some(ca) => tls.trust_anchors(trust_anchors(ca)?),
            None => tls.with_native_roots(),
        };
        if let Some(identity) = &self.identity {
            tls = tls.identity(load_identity(identity)?);
        }
        if let Some(domain) = &self.domain {
            if ServerName::try_from(domain.as_str()).is_err() {
                return Err(Error::InvalidTls {
                    what: "domain".into(),
                    origin: format!("`{domain}`"),
                    reason: "not a DNS name or an IP address".into(),
                });
            }
            tls = tls.domain_name(domain);
        }
        Ok(tls)
    }
}

/// The URI of endpoint `raw`: as given when it has a scheme, else `https://`
/// when TLS is configured and `http://` when not.
pub(crate) fn endpoint_uri(raw: &str, tls: &TlsConfig) -> String {
    if raw.contains("://") {
        raw.to_string()
    } else if tls.is_configured() {
        format!("https://{raw}")
    } else {
        format!("http://{raw}")
    }
}

/// The CA certificates of `ca`, each a valid X.509 certificate.
fn trust_anchors(ca: &Pem) -> Result<Vec<TrustAnchor<'static>>> {
    let invalid = |reason: String| Error::InvalidTls { what: "CA certificate".into(), origin: ca.origin(), reason };
    let certs = certificates(&ca.read().map_err(invalid)?).map_err(invalid)?;
    let mut roots = rustls::RootCertStore::empty();
    for (n, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| invalid(format!("certificate {} is not a valid X.509 certificate: {e}", n + 1)))?;
    }
    Ok(roots.roots)
}

/// The client identity, checked the way the handshake will use it: a chain,
/// a key the crypto provider can sign with, and that key belonging to the
/// first certificate.
fn load_identity(identity: &ClientIdentity) -> Result<Identity> {
    let cert_origin = identity.cert_chain.origin();
    let bad_cert =
        |reason: String| Error::InvalidTls { what: "client certificate".into(), origin: cert_origin.clone(), reason };
    let bad_key =
        |reason: String| Error::InvalidTls { what: "client key".into(), origin: identity.key.origin(), reason };

    let cert_pem = identity.cert_chain.read().map_err(bad_cert)?;
    let chain = certificates(&cert_pem).map_err(bad_cert)?;
    let key_pem = identity.key.read().map_err(bad_key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        bad_key(match e {
            pem::Error::NoItemsFound => "no private key found (expected an unencrypted PEM `PRIVATE KEY`, \
                                         `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
                .into(),
            e => pem_error(&e),
        })
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    // The errors below say what is wrong in rustls' words, which never
    // include key material.
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            bad_key(format!("the key does not belong to the client certificate in {cert_origin}"))
        }
        rustls::Error::InvalidCertificate(e) => bad_cert(format!("not a valid X.509 certificate: {e}")),
        _ => bad_key("not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519 expected)".into()),
    })?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

/// The certificates of a PEM text: at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| pem_error(&e))?;
    if certs.is_empty() {
        return Err("no certificate found (expected a PEM `CERTIFICATE` block)".into());
    }
    Ok(certs)
}

/// What is wrong with a PEM text, without quoting any of it (it may hold a key).
fn pem_error(e: &pem::Error) -> String {
    let why = match e {
        pem::Error::MissingSectionEnd { .. } => "a block has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a block is not valid base64",
        pem::Error::SectionTooLarge => "a block is too large",
        _ => "it cannot be parsed",
    };
    format!("not valid PEM: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_endpoints_use_tls_once_anything_tls_is_configured() {
        let none = TlsConfig::default();
        assert_eq!(endpoint_uri("10.0.0.1:7070", &none), "http://10.0.0.1:7070");
        assert_eq!(endpoint_uri("https://n1:7070", &none), "https://n1:7070");
        for tls in [
            TlsConfig { ca: Some(Pem::file("ca.pem")), ..Default::default() },
            TlsConfig { domain: Some("registry.internal".into()), ..Default::default() },
            TlsConfig {
                identity: Some(ClientIdentity { cert_chain: Pem::file("c.pem"), key: Pem::file("c.key") }),
                ..Default::default()
            },
        ] {
            assert_eq!(endpoint_uri("10.0.0.1:7070", &tls), "https://10.0.0.1:7070");
            // An explicit scheme is kept either way.
            assert_eq!(endpoint_uri("http://10.0.0.1:7070", &tls), "http://10.0.0.1:7070");
        }
    }

    /// A self-signed certificate for `name` and its key, PEM.
    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    /// A file of its own in the temp dir holding `text`, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!("registry-client-tls-{:016x}.pem", rand::random::<u64>()));
            std::fs::write(&path, text).expect("write");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn load(tls: TlsConfig) -> Result<ClientTlsConfig> {
        tls.load(Duration::from_secs(1))
    }

    fn ca(pem: Pem) -> TlsConfig {
        TlsConfig { ca: Some(pem), ..Default::default() }
    }

    fn identity(cert_chain: Pem, key: Pem) -> TlsConfig {
        let (ca_pem, _) = self_signed("ca");
        TlsConfig { ca: Some(Pem::bytes(ca_pem)), identity: Some(ClientIdentity { cert_chain, key }), domain: None }
    }

    /// The parts of an `InvalidTls`.
    fn invalid(r: Result<ClientTlsConfig>) -> (String, String, String) {
        match r {
            Err(Error::InvalidTls { what, origin, reason }) => (what, origin, reason),
            other => panic!("expected InvalidTls, got {other:?}"),
        }
    }

    #[test]
    fn valid_files_load() {
        let (cert, key) = self_signed("billing.prod");
        let (cert_file, key_file) = (TempFile::new(&cert), TempFile::new(&key));
        // Two CA certificates in one file are both trusted.
        let (other, _) = self_signed("other-ca");
        let ca_file = TempFile::new(&format!("{cert}{other}"));
        let tls = TlsConfig {
            ca: Some(Pem::file(&ca_file.0)),
            identity: Some(ClientIdentity { cert_chain: Pem::file(&cert_file.0), key: Pem::file(&key_file.0) }),
            domain: Some("registry.internal".into()),
        };
        load(tls).expect("valid");
    }

    #[test]
    fn a_missing_file_is_named() {
        let path = std::env::temp_dir().join(format!("registry-client-missing-{:016x}.pem", rand::random::<u64>()));
        let (what, origin, reason) = invalid(load(ca(Pem::file(&path))));
        assert_eq!((what.as_str(), origin), ("CA certificate", format!("`{}`", path.display())));
        assert!(reason.starts_with("cannot read the file: "), "{reason}");

        let (cert, _) = self_signed("billing.prod");
        let cert_file = TempFile::new(&cert);
        let (what, origin, _) = invalid(load(identity(Pem::file(&cert_file.0), Pem::file(&path))));
        assert_eq!((what.as_str(), origin), ("client key", format!("`{}`", path.display())));
    }

    #[test]
    fn garbage_is_refused_saying_what_is_wrong() {
        for (text, expected) in [
            ("", "no certificate found"),
            ("hello", "no certificate found"),
            ("-----BEGIN CERTIFICATE-----\nAAAA\n", "no END line"),
            ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "not valid base64"),
            // Valid PEM and base64, but not X.509.
            ("-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n", "not a valid X.509"),
        ] {
            let (what, origin, reason) = invalid(load(ca(Pem::bytes(text))));
            assert_eq!((what.as_str(), origin.as_str()), ("CA certificate", "the PEM text given"), "{text:?}");
            assert!(reason.contains(expected), "{text:?}: {reason}");
        }
        // A key where the CA should be.
        let (_, key) = self_signed("x");
        let (_, _, reason) = invalid(load(ca(Pem::bytes(key))));
        assert!(reason.contains("no certificate found"), "{reason}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let (cert, key) = self_signed("billing.prod");
        // The certificate given twice: no key.
        let (what, _, reason) = invalid(load(identity(Pem::bytes(cert.clone()), Pem::bytes(cert.clone()))));
        assert_eq!(what, "client key");
        assert!(reason.contains("no private key found"), "{reason}");
        // The key given twice: no certificate.
        let (what, _, reason) = invalid(load(identity(Pem::bytes(key.clone()), Pem::bytes(key.clone()))));
        assert_eq!(what, "client certificate");
        assert!(reason.contains("no certificate found"), "{reason}");
        // Another certificate's key.
        let (_, other_key) = self_signed("someone-else");
        let (what, _, reason) = invalid(load(identity(Pem::bytes(cert), Pem::bytes(other_key.clone()))));
        assert_eq!(what, "client key");
        assert!(reason.contains("does not belong to the client certificate"), "{reason}");
        // No error shows any of a key.
        let body = |k: &str| k.lines().nth(1).expect("a base64 line").to_string();
        for k in [&key, &other_key] {
            for r in [
                load(identity(Pem::bytes(k.clone()), Pem::bytes(k.clone()))),
                load(identity(Pem::bytes(self_signed("a").0), Pem::bytes(k.clone()))),
            ] {
                let e = r.expect_err("refused");
                assert!(!e.to_string().contains(&body(k)) && !format!("{e:?}").contains(&body(k)), "{e}");
            }
        }
    }

    #[test]
    fn the_domain_must_be_a_name_or_an_address() {
        for ok in ["registry.internal", "10.0.0.1", "::1"] {
            load(TlsConfig { domain: Some(ok.into()), ..Default::default() }).expect(ok);
        }
        let (what, origin, _) = invalid(load(TlsConfig { domain: Some("not a name".into()), ..Default::default() }));
        assert_eq!((what.as_str(), origin.as_str()), ("domain", "`not a name`"));
    }

    #[test]
    fn pem_errors_never_quote_the_text() {
        let secret = format!("k{}", rand::random::<u64>());
        let broken = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n");
        let e = PrivateKeyDer::from_pem_slice(broken.as_bytes()).expect_err("no END line");
        assert!(!pem_error(&e).contains(&secret));
        assert!(!format!("{:?}", Pem::bytes(broken)).contains(&secret));
    }
}
