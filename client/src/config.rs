//! Client settings, the bearer token and the reconnect backoff.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::{ClientIdentity, Pem, TlsConfig};

/// How a [`Client`](crate::Client) reaches the registry.
///
/// ```
/// use std::time::Duration;
/// use registry_client::ClientConfig;
///
/// let config = ClientConfig::new(["http://10.0.0.1:7070", "10.0.0.2:7070"])
///     .namespace("prod")
///     .client_name("checkout")
///     .request_timeout(Duration::from_secs(3));
/// assert_eq!(config.endpoints.len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Node addresses: `https://host:port` (TLS), `http://host:port`
    /// (plaintext), or `host:port` (TLS when [`ClientConfig::tls`] has any
    /// setting, plaintext otherwise). One DNS name behind a load balancer
    /// works too: every reconnect resolves it again.
    pub endpoints: Vec<String>,
    /// Namespace of every call that does not name one (default `"default"`).
    pub namespace: String,
    /// Names this process in the node's logs and consumer directory.
    pub client_name: String,
    /// How often a provider session heartbeats; `None` takes the node's default.
    pub heartbeat_interval: Option<Duration>,
    /// Bound on one unary call, on opening a stream, and on the first
    /// registration or first view.
    pub request_timeout: Duration,
    /// Bound on establishing a TCP connection to one node.
    pub connect_timeout: Duration,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// After a drain, how long the old session stays open once the new one has
    /// registered everything, before it says goodbye (a goodbye that says the
    /// provider moved, so the old node keeps the instances until the new
    /// copies reach it anyway). The old session keeps answering meanwhile.
    pub handover: Duration,
    /// Start at the first endpoint given instead of a random one. Either way,
    /// each call or stream starts one further in the list (round robin), and
    /// fails over to the next ones.
    pub in_order: bool,
    /// Events a [`ServiceWatch`](crate::ServiceWatch) buffers for each
    /// receiver of [`ServiceWatch::events`](crate::ServiceWatch::events)
    /// (default 1,024). One resync can yield an event per instance at once,
    /// so a receiver that must see every event (an audit, a test's flap
    /// recorder) of a large service wants more; one that falls further
    /// behind gets `Lagged(n)` and should read the current view.
    pub event_buffer: usize,
    /// The bearer token sent as `authorization: Bearer <token>` on every call
    /// to a node (unary calls, `Register` sessions, `Subscribe` streams,
    /// `Members`, reconnects included); `None` sends no credentials. Never
    /// shown: see [`BearerToken`].
    pub token: Option<BearerToken>,
    /// TLS to the nodes: the CA that node certificates must chain to, a
    /// client certificate for mTLS, the name to check node certificates
    /// against. Read and checked by [`Client::new`](crate::Client::new).
    /// Set with [`ClientConfig::ca_file`], [`ClientConfig::ca_pem`],
    /// [`ClientConfig::identity_files`], [`ClientConfig::identity_pem`] and
    /// [`ClientConfig::tls_domain`].
    pub tls: TlsConfig,
}

impl ClientConfig {
    /// Settings with defaults for the given endpoints.
    ///
    /// ```
    /// let c = registry_client::ClientConfig::new(["http://127.0.0.1:7070"]);
    /// assert_eq!(c.namespace, "default");
    /// ```
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            namespace: "default".into(),
            client_name: program_name(),
            heartbeat_interval: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            backoff: Backoff::default(),
            handover: Duration::from_millis(200),
            in_order: false,
            event_buffer: 1_024,
            token: None,
            tls: TlsConfig::default(),
        }
    }

    /// Sets [`ClientConfig::namespace`].
    ///
    /// ```
    /// let c = registry_client::ClientConfig::new(["127.0.0.1:7070"]).namespace("prod");
    /// assert_eq!(c.namespace, "prod");
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`ClientConfig::client_name`].
    ///
    /// ```
    /// let c = registry_client::ClientConfig::new(["127.0.0.1:7070"]).client_name("checkout");
    /// assert_eq!(c.client_name, "checkout");
    /// ```
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Sets [`ClientConfig::heartbeat_interval`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = registry_client::ClientConfig::new(["127.0.0.1:7070"]).heartbeat_interval(Duration::from_secs(1));
    /// assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(1)));
    /// ```
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = Some(every);
        self
    }

    /// Sets [`ClientConfig::request_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = registry_client::ClientConfig::new(["127.0.0.1:7070"]).request_timeout(Duration::from_secs(1));
    /// assert_eq!(c.request_timeout, Duration::from_secs(1));
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::backoff`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::{Backoff, ClientConfig};
    /// let b = Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(1) };
    /// let c = ClientConfig::new(["127.0.0.1:7070"]).backoff(b);
    /// assert_eq!(c.backoff.initial, Duration::from_millis(50));
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`ClientConfig::in_order`].
    ///
    /// ```
    /// let c = registry_client::ClientConfig::new(["a:1", "b:1"]).in_order(true);
    /// assert!(c.in_order);
    /// ```
    pub fn in_order(mut self, in_order: bool) -> Self {
        self.in_order = in_order;
        self
    }

    /// Sets [`ClientConfig::event_buffer`] (at least 1).
    ///
    /// ```
    /// let c = registry_client::ClientConfig::new(["127.0.0.1:7070"]).event_buffer(16_384);
    /// assert_eq!(c.event_buffer, 16_384);
    /// ```
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events.max(1);
        self
    }

    /// Sets [`ClientConfig::token`]: every call then carries
    /// `authorization: Bearer <token>`. Nodes with auth enabled answer a call
    /// without a known token with [`Error::Unauthenticated`](crate::Error::Unauthenticated),
    /// and one the token's grants do not cover with
    /// [`Error::PermissionDenied`](crate::Error::PermissionDenied).
    ///
    /// The token is checked by [`Client::new`](crate::Client::new) (visible
    /// ASCII, no spaces: [`Error::InvalidToken`](crate::Error::InvalidToken)
    /// otherwise) and never appears in `Debug` output, logs or errors. Read it
    /// from the environment or a secret store, never from source code.
    ///
    /// ```
    /// use registry_client::ClientConfig;
    ///
    /// let mut config = ClientConfig::new(["http://127.0.0.1:7070"]);
    /// if let Ok(token) = std::env::var("REGISTRY_TOKEN") {
    ///     config = config.token(token);
    /// }
    /// # let config = config.token("example-only");
    /// assert!(config.token.is_some());
    /// assert!(!format!("{config:?}").contains("example-only"));
    /// ```
    pub fn token(mut self, token: impl Into<BearerToken>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts the CA certificates (PEM, one or more) in the file at `path`,
    /// and only those, for node certificates. A bare `host:port` endpoint
    /// then uses TLS. [`Client::new`](crate::Client::new) reads the file: one
    /// that cannot be read or holds no valid certificate is an
    /// [`Error::InvalidTls`](crate::Error::InvalidTls) naming it.
    ///
    /// ```
    /// use registry_client::{Client, ClientConfig, Error};
    ///
    /// let config = ClientConfig::new(["10.0.0.1:7070", "10.0.0.2:7070"]).ca_file("/nowhere/ca.pem");
    /// let e = Client::new(config).unwrap_err();
    /// assert!(matches!(&e, Error::InvalidTls { origin, .. } if origin == "`/nowhere/ca.pem`"));
    /// assert!(e.to_string().contains("cannot read the file"), "{e}");
    /// ```
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca = Some(Pem::file(path));
        self
    }

    /// Like [`ClientConfig::ca_file`], with the PEM text itself.
    ///
    /// ```
    /// use registry_client::{Client, ClientConfig, Error};
    ///
    /// # let ca_pem = rcgen::generate_simple_self_signed(vec!["registry.internal".into()]).unwrap().cert.pem();
    /// // ca_pem: "-----BEGIN CERTIFICATE-----\n..."
    /// assert!(Client::new(ClientConfig::new(["10.0.0.1:7070"]).ca_pem(ca_pem)).is_ok());
    ///
    /// let garbage = ClientConfig::new(["10.0.0.1:7070"]).ca_pem("not a certificate");
    /// let e = Client::new(garbage).unwrap_err();
    /// assert!(e.to_string().contains("no certificate found"), "{e}");
    /// ```
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca = Some(Pem::bytes(pem));
        self
    }

    /// Shows nodes that ask for one (mTLS) the certificate chain in
    /// `cert_chain` and its private key in `key` (PEM files; the key not
    /// encrypted). A bare `host:port` endpoint then uses TLS.
    /// [`Client::new`](crate::Client::new) reads both and checks that the
    /// key belongs to the certificate.
    ///
    /// ```
    /// use registry_client::{Client, ClientConfig, Error};
    ///
    /// let config = ClientConfig::new(["https://registry.internal:7070"])
    ///     .ca_file("/etc/registry/ca.pem")
    ///     .identity_files("/etc/registry/billing.pem", "/etc/registry/billing.key");
    /// # let config = config.ca_pem(rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap().cert.pem());
    /// let e = Client::new(config).unwrap_err();
    /// assert!(e.to_string().contains("`/etc/registry/billing.pem`"), "{e}");
    /// ```
    pub fn identity_files(mut self, cert_chain: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.identity = Some(ClientIdentity { cert_chain: Pem::file(cert_chain), key: Pem::file(key) });
        self
    }

    /// Like [`ClientConfig::identity_files`], with the PEM texts themselves.
    /// The key never shows in `Debug` output or errors.
    ///
    /// ```
    /// use registry_client::{Client, ClientConfig, Error};
    ///
    /// # let me = rcgen::generate_simple_self_signed(vec!["billing.prod".into()]).unwrap();
    /// # let (cert_pem, key_pem) = (me.cert.pem(), me.signing_key.serialize_pem());
    /// let config = ClientConfig::new(["10.0.0.1:7070"]).identity_pem(cert_pem.clone(), key_pem.clone());
    /// assert!(!format!("{config:?}").contains(&key_pem));
    /// # let config = config.ca_pem(cert_pem.clone());
    /// assert!(Client::new(config).is_ok());
    ///
    /// // The certificate twice, no key: refused, saying what is missing.
    /// let no_key = ClientConfig::new(["10.0.0.1:7070"]).identity_pem(cert_pem.clone(), cert_pem);
    /// let e = Client::new(no_key).unwrap_err();
    /// assert!(matches!(&e, Error::InvalidTls { what, .. } if what == "client key"), "{e}");
    /// assert!(e.to_string().contains("no private key found"), "{e}");
    /// ```
    pub fn identity_pem(mut self, cert_chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.tls.identity = Some(ClientIdentity { cert_chain: Pem::bytes(cert_chain), key: Pem::bytes(key) });
        self
    }

    /// Checks node certificates against `name` instead of the endpoint's
    /// host: for nodes reached by IP address whose certificates name a DNS
    /// name. A bare `host:port` endpoint then uses TLS.
    ///
    /// ```
    /// use registry_client::{Client, ClientConfig, Error};
    ///
    /// let config = ClientConfig::new(["10.0.0.1:7070", "10.0.0.2:7070"]).tls_domain("registry.internal");
    /// assert_eq!(config.tls.domain.as_deref(), Some("registry.internal"));
    ///
    /// let bad = ClientConfig::new(["10.0.0.1:7070"]).tls_domain("not a name");
    /// assert!(matches!(Client::new(bad), Err(Error::InvalidTls { .. })));
    /// ```
    pub fn tls_domain(mut self, name: impl Into<String>) -> Self {
        self.tls.domain = Some(name.into());
        self
    }
}

/// A bearer token for [`ClientConfig::token`]. Its `Debug` output is
/// `BearerToken(<redacted>)`, and it has no `Display`: the token cannot end up
/// in a log line or an error message by accident.
///
/// ```
/// use registry_client::BearerToken;
///
/// let token = BearerToken::new("example-only");
/// assert_eq!(format!("{token:?}"), "BearerToken(<redacted>)");
/// ```
#[derive(Clone)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wraps `token` (the secret itself, without the `Bearer ` prefix).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The secret, for the one place that sends it.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl From<String> for BearerToken {
    fn from(token: String) -> Self {
        Self(token)
    }
}

impl From<&str> for BearerToken {
    fn from(token: &str) -> Self {
        Self(token.to_string())
    }
}

/// The running program's file name: what a consumer is listed as by default.
fn program_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "registry-client".into())
}

/// Exponential backoff with full jitter: attempt `n` waits a uniformly random
/// time in `0..=min(max, initial * 2^n)`.
///
/// Full jitter is what keeps a crowd apart: when a node dies, every provider on
/// it loses its session at the same instant, and the first retry already spreads
/// them over `initial` instead of hitting the next node in one burst.
///
/// ```
/// use std::time::Duration;
/// use registry_client::Backoff;
///
/// let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1) };
/// assert_eq!(b.cap(0), Duration::from_millis(100));
/// assert_eq!(b.cap(3), Duration::from_millis(800));
/// assert_eq!(b.cap(10), Duration::from_secs(1));
/// assert_eq!(b.delay(2, 0.5), Duration::from_millis(200));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first retry's delay.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(500), max: Duration::from_secs(10) }
    }
}

impl Backoff {
    /// Upper bound of the delay before attempt `attempt` (0-based).
    pub fn cap(&self, attempt: u32) -> Duration {
        self.initial.saturating_mul(1u32 << attempt.min(20)).min(self.max)
    }

    /// The delay for `attempt` given a uniform sample `unit` in `0.0..=1.0`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.cap(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay for `attempt` with a fresh random sample.
    pub(crate) fn random_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_token() {
        // Made up at run time: no secret-looking literal in the source.
        let secret = format!("t{}", rand::random::<u64>());
        let config = ClientConfig::new(["127.0.0.1:7070"]).token(secret.as_str());
        for shown in [format!("{config:?}"), format!("{config:#?}"), format!("{:?}", config.token)] {
            assert!(!shown.contains(&secret), "{shown}");
        }
        assert!(format!("{config:?}").contains("token: Some(BearerToken(<redacted>))"));
        assert_eq!(config.token.as_ref().map(BearerToken::secret), Some(secret.as_str()));
    }
}
