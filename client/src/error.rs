//! The one error type of the library, and how gRPC statuses map onto it.

use tonic::{Code, Status};

/// What went wrong talking to the registry.
///
/// Match on the variant to decide what to do: [`Error::Unavailable`] is worth a
/// retry later (a failed TLS handshake is one too: its message says `TLS
/// handshake failed` and why), [`Error::NotFound`] and [`Error::Rejected`] are
/// answers, [`Error::Unauthenticated`] and [`Error::PermissionDenied`] (see
/// [`Error::is_denied`]) need another token or another grant: every node
/// answers the same, so the library never retries them. [`Error::InvalidTls`],
/// [`Error::InvalidToken`] and [`Error::InvalidEndpoint`] come from
/// [`Client::new`](crate::Client::new): the settings need fixing.
///
/// ```
/// use registry_client::Error;
///
/// fn exit_code(e: &Error) -> i32 {
///     match e {
///         Error::Unavailable { .. } => 69,
///         e if e.is_denied() => 77,
///         _ => 1,
///     }
/// }
/// assert_eq!(exit_code(&Error::NotFound("orders/x".into())), 1);
/// assert_eq!(exit_code(&Error::PermissionDenied("no write grant on orders".into())), 77);
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint was given.
    #[error("no registry endpoint configured (give at least one, e.g. http://127.0.0.1:7070)")]
    NoEndpoints,
    /// An endpoint is not a valid URI.
    #[error("invalid registry endpoint `{endpoint}`: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// No node answered: unreachable, shutting down, still warming up, or the
    /// TLS handshake failed (a node certificate the CA did not sign, expired,
    /// or not for the name; a client certificate the node refused; a
    /// plaintext port). The connect timeout bounds the handshake.
    #[error("no registry node available: {last}")]
    Unavailable {
        /// The last failure seen, for the operator.
        last: String,
    },
    /// The thing asked for does not exist (an instance, a lease).
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry refused a request (invalid field, limit reached...).
    #[error("refused ({code:?}): {reason}")]
    Rejected {
        /// The gRPC code a unary call fails with for this refusal.
        code: Code,
        /// The node's explanation; it names the field and the limit.
        reason: String,
    },
    /// The node does not know the caller (`UNAUTHENTICATED`): no token was
    /// sent ([`ClientConfig::token`](crate::ClientConfig::token)), or the node
    /// does not know it. Carries the node's message.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The node knows the caller, but its grants do not allow this
    /// (`PERMISSION_DENIED`, or code 7 refusing an upsert inside a session).
    /// Carries the node's message, which names the principal and the grant
    /// missing when the node says so.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The configured bearer token cannot be sent as a header value: it must
    /// be non-empty visible ASCII, without spaces. (The token is not repeated.)
    #[error("invalid bearer token: it must be non-empty visible ASCII without spaces")]
    InvalidToken,
    /// The TLS settings cannot be used: a file that cannot be read, PEM
    /// without the certificate or key expected, a certificate that is not
    /// valid X.509, a key that does not belong to its certificate, a TLS
    /// domain that is not a name, or no system roots for an `https://`
    /// endpoint given no CA. Key material is never quoted.
    ///
    /// ```
    /// use registry_client::{Client, ClientConfig, Error};
    ///
    /// let e = Client::new(ClientConfig::new(["10.0.0.1:7070"]).ca_file("/nowhere/ca.pem")).unwrap_err();
    /// assert!(matches!(&e, Error::InvalidTls { what, .. } if what == "CA certificate"));
    /// assert!(e.to_string().starts_with("invalid TLS CA certificate in `/nowhere/ca.pem`: cannot read the file"));
    /// ```
    #[error("invalid TLS {what} in {origin}: {reason}")]
    InvalidTls {
        /// What it is: `CA certificate`, `client certificate`, `client key`,
        /// `domain`, `roots`.
        what: String,
        /// Where it comes from: the file's path in backquotes, `the PEM text
        /// given`, the domain.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The node answered something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The background task behind a handle has stopped (it was shut down).
    #[error("the handle was shut down")]
    Closed,
}

/// Result with [`Error`].
///
/// ```
/// fn check(port: u32) -> registry_client::Result<u32> {
///     Ok(port)
/// }
/// assert!(check(1).is_ok());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the node denied the call ([`Error::Unauthenticated`] or
    /// [`Error::PermissionDenied`]). Trying again, on this node or another,
    /// gets the same answer until the token or the node's grants change.
    ///
    /// ```
    /// use registry_client::Error;
    /// assert!(Error::Unauthenticated("no credentials".into()).is_denied());
    /// assert!(!Error::Unavailable { last: "warming up".into() }.is_denied());
    /// ```
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Unauthenticated(_) | Self::PermissionDenied(_))
    }

    /// An answer of the registry itself, which another node or a later try
    /// would give as well: a refusal, a missing thing, a denial. Nothing
    /// retries or fails over on these.
    pub(crate) fn is_final(&self) -> bool {
        matches!(self, Self::Rejected { .. } | Self::NotFound(_)) || self.is_denied()
    }

    /// Maps a status from a node. Statuses that mean "try another node" become
    /// [`Error::Unavailable`].
    pub(crate) fn from_status(status: &Status) -> Self {
        if is_retryable(status) {
            return Self::Unavailable { last: describe(status) };
        }
        Self::rejected(status.code() as i32, status.message().to_string())
    }

    /// A refusal carried inside a session (`Rejected`), by its code number;
    /// also the non-retryable statuses of [`Error::from_status`].
    pub(crate) fn rejected(code: i32, reason: String) -> Self {
        match Code::from_i32(code) {
            Code::NotFound => Self::NotFound(reason),
            Code::Unauthenticated => Self::Unauthenticated(or_default(reason, "the node requires a valid token")),
            Code::PermissionDenied => {
                Self::PermissionDenied(or_default(reason, "the token's grants do not allow this"))
            }
            code => Self::Rejected { code, reason },
        }
    }
}

/// `reason`, or `default` when the node gave none.
fn or_default(reason: String, default: &str) -> String {
    if reason.is_empty() { default.to_string() } else { reason }
}

/// Statuses after which another node (or a later try) may well succeed:
/// unreachable, shutting down, warming up, overloaded or too slow, or a
/// broken connection. tonic makes the last kind here, with the connection's
/// error as the source (a node's answer has none), and their code varies: an
/// HTTP/2 error, such as a plaintext client on a TLS port gets, is INTERNAL.
pub(crate) fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted
    ) || std::error::Error::source(status).is_some()
}

/// One line for logs and [`Error::Unavailable`]. A status made here from a
/// connection failure (it has a source) says what failed, not just
/// "transport error"; a failed TLS handshake is named as such, with what to
/// check.
pub(crate) fn describe(status: &Status) -> String {
    if let Some(tls) = tls_failure(status) {
        return tls;
    }
    if let Some(cause) = std::error::Error::source(status) {
        return format!("{:?}: {}", status.code(), error_chain(cause));
    }
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

/// `e` and its sources, `: `-separated (tonic's transport errors say little
/// at the top), each said once.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

/// "TLS handshake failed: ..." when TLS made `status` (a call on a channel
/// that could not connect carries the connection error as its source), in
/// rustls' words, which name the certificate problem, and a hint.
fn tls_failure(status: &Status) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        // tokio-rustls hands rustls' errors over inside an io::Error, whose
        // `source()` skips them.
        let inner = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(tls) = e.downcast_ref::<rustls::Error>().or_else(|| inner?.downcast_ref::<rustls::Error>()) {
            return Some(format!("TLS handshake failed: {tls}{}", tls_hint(tls)));
        }
        // A fatal alert that comes after the client's side of the handshake
        // (TLS 1.3: the node refusing the client's certificate, or its lack
        // of one) reaches the connection as rustls' text only.
        if let Some(alert) = inner.map(|i| i.to_string()).filter(|t| t.starts_with("received fatal alert: ")) {
            let hint = if alert.contains("Certificate") || alert.contains("UnknownCA") { CLIENT_CERT_HINT } else { "" };
            return Some(format!("TLS handshake failed: {alert}{hint}"));
        }
        cause = e.source();
    }
    None
}

const CLIENT_CERT_HINT: &str = "; the node wants a client certificate it trusts (mTLS)";

/// What to check after the TLS error `e`.
fn tls_hint(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};

    match e {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "; the node's certificate is not signed by the CA this client trusts"
        }
        rustls::Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "; reach the node by a name its certificate has, or set the TLS domain to one"
        }
        rustls::Error::AlertReceived(
            Alert::CertificateRequired | Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown,
        ) => CLIENT_CERT_HINT,
        rustls::Error::AlertReceived(Alert::CertificateExpired) => "; the node says the client certificate expired",
        rustls::Error::InvalidMessage(_) => "; is the node's port plaintext? (use http:// for it)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warming_up_is_retryable_and_refusals_are_not() {
        let warming = Status::unavailable("node is warming up");
        assert!(matches!(Error::from_status(&warming), Error::Unavailable { .. }));
        assert!(matches!(Error::from_status(&Status::not_found("lease")), Error::NotFound(_)));
        let refused = Error::from_status(&Status::invalid_argument("port: 0"));
        assert!(matches!(refused, Error::Rejected { code: Code::InvalidArgument, .. }));
        assert!(matches!(Error::rejected(Code::NotFound as i32, "x".into()), Error::NotFound(_)));
    }

    #[test]
    fn denials_are_their_own_kinds_with_the_nodes_message_and_never_retried() {
        let who = "token `orders-team` has no write grant on default/payments";
        let denied = Status::permission_denied(who);
        assert!(!is_retryable(&denied));
        let e = Error::from_status(&denied);
        assert!(matches!(&e, Error::PermissionDenied(m) if m == who), "{e:?}");
        assert_eq!(e.to_string(), format!("permission denied: {who}"));
        assert!(e.is_denied() && e.is_final());

        let unknown = Status::unauthenticated("unknown token");
        assert!(!is_retryable(&unknown));
        let e = Error::from_status(&unknown);
        assert!(matches!(&e, Error::Unauthenticated(m) if m == "unknown token"), "{e:?}");
        assert_eq!(e.to_string(), "unauthenticated: unknown token");
        assert!(e.is_denied() && e.is_final());

        // Without a message, still a sentence.
        let e = Error::from_status(&Status::unauthenticated(""));
        assert!(matches!(&e, Error::Unauthenticated(m) if !m.is_empty()), "{e:?}");
    }

    /// A status as tonic makes one from a connection failure `e`.
    fn from_connection_error(e: std::io::Error) -> Status {
        Status::from_error(Box::new(e))
    }

    #[test]
    fn a_failed_handshake_is_named_tls_with_a_hint() {
        use std::io::{Error as IoError, ErrorKind};

        let unknown_ca = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let status = from_connection_error(IoError::new(ErrorKind::InvalidData, unknown_ca));
        let e = Error::from_status(&status);
        let Error::Unavailable { last } = &e else { panic!("{e:?}") };
        assert!(last.starts_with("TLS handshake failed: invalid peer certificate: UnknownIssuer"), "{last}");
        assert!(last.contains("not signed by the CA"), "{last}");

        // An alert after the client's side of the handshake: rustls' text only.
        let alert = IoError::new(ErrorKind::InvalidData, "received fatal alert: CertificateRequired");
        let last = describe(&from_connection_error(alert));
        assert!(last.starts_with("TLS handshake failed: received fatal alert: CertificateRequired"), "{last}");
        assert!(last.contains("client certificate"), "{last}");

        // Other connection failures say what failed, not "transport error".
        let refused = describe(&from_connection_error(IoError::new(ErrorKind::ConnectionRefused, "refused")));
        assert!(refused.contains("refused") && !refused.contains("TLS"), "{refused}");
        // A node's own answer is as it was.
        assert_eq!(describe(&Status::unavailable("node is warming up")), "Unavailable: node is warming up");
    }

    #[test]
    fn a_broken_connection_is_retried_whatever_its_code() {
        let mut broken = Status::internal("h2 protocol error: http2 error");
        broken.set_source(std::sync::Arc::new(std::io::Error::other("stream closed because of a broken pipe")));
        assert!(is_retryable(&broken));
        let e = Error::from_status(&broken);
        assert!(matches!(&e, Error::Unavailable { last } if last.contains("broken pipe")), "{e:?}");
        // The same code from a node is its answer.
        assert!(!is_retryable(&Status::internal("bug")));
    }

    #[test]
    fn a_session_refusal_with_code_7_is_permission_denied() {
        let reason = "token `ci` may only read default/orders*";
        assert_eq!(Code::PermissionDenied as i32, 7);
        let e = Error::rejected(7, reason.into());
        assert!(matches!(&e, Error::PermissionDenied(m) if m == reason), "{e:?}");
        assert!(matches!(Error::rejected(Code::Unauthenticated as i32, "x".into()), Error::Unauthenticated(_)));
        // Other refusals stay what they were.
        let e = Error::rejected(Code::InvalidArgument as i32, "port: 0".into());
        assert!(matches!(e, Error::Rejected { code: Code::InvalidArgument, .. }) && !e.is_denied() && e.is_final());
        assert!(!Error::Unavailable { last: String::new() }.is_final());
        assert!(!Error::Closed.is_final() && !Error::InvalidToken.is_denied());
    }
}
