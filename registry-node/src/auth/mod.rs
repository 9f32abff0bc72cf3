//! Who is calling, and what they may do: bearer tokens name a principal, and
//! a principal's grants say which namespaces and services it may read, write
//! or administer. Pure data and functions (no I/O but reading a tokens file at
//! start); every front-end asks the same [`Auth`] through the API.
//!
//! - [`config`]: the `[auth]` settings and their validation.
//! - [`grants`]: roles, grants and what a principal may do.
//! - [`tokens`]: the bearer token check (by SHA-256; see there why that is safe to time).

pub mod audit;
pub mod config;
pub mod grants;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use audit::{Audit, Outcome};
pub use config::{AuthConfig, AuthMode, CertEntry, TokenEntry};
pub use grants::{Grant, Principal, Role};
pub use tokens::{AuthFailure, Tokens};

/// The node's authenticator and authorizer.
#[derive(Debug)]
pub struct Auth {
    mode: AuthMode,
    /// Swapped whole on a reload: a request sees the old set or the new one.
    tokens: parking_lot::RwLock<Arc<Tokens>>,
    pub(crate) metrics: AuthMetrics,
    audit: Audit,
}

/// Failed authentications by reason, and denied requests.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    pub missing: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown: AtomicU64,
    pub unknown_certificate: AtomicU64,
    pub denied: AtomicU64,
    /// Token sets loaded after the start (SIGHUP or a changed tokens file).
    pub reloads: AtomicU64,
    /// Reloads refused (the file did not read or parse): the old set stays.
    pub reload_failures: AtomicU64,
}

/// Who a request's caller is.
#[derive(Clone, Debug)]
pub enum Identity {
    /// Auth is off: everything is allowed.
    Open,
    /// An authenticated principal.
    Principal(Arc<Principal>),
    /// `warn` mode, and the credential failed: allowed, with a warning for
    /// each request that would have been refused.
    Unverified(AuthFailure),
}

/// A request's caller, as the API sees it: who, and from where.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: Identity,
    /// The other end of the connection (for logs and the audit trail).
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// A caller with auth off, from nowhere in particular (tests, in-process use).
    pub fn open() -> Self {
        Self { identity: Identity::Open, peer: None }
    }

    /// The principal's name, for logs, the audit trail and the consumer directory.
    pub fn name(&self) -> Option<&str> {
        self.principal().map(|n| &**n)
    }

    /// The principal's name, shared (leases and records keep it).
    pub fn principal(&self) -> Option<&Arc<str>> {
        match &self.identity {
            Identity::Principal(p) => Some(&p.name),
            _ => None,
        }
    }

    /// The principal, when authenticated.
    pub fn principal_grants(&self) -> Option<&Principal> {
        match &self.identity {
            Identity::Principal(p) => Some(p),
            _ => None,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    #[error("principal {principal:?} has no {role} grant on {namespace}/{service}")]
    Denied { principal: String, role: Role, namespace: String, service: String },
}

impl Auth {
    pub fn new(mode: AuthMode, tokens: Tokens) -> Self {
        Self {
            mode,
            tokens: parking_lot::RwLock::new(Arc::new(tokens)),
            metrics: AuthMetrics::default(),
            audit: Audit::log_only(""),
        }
    }

    /// The same, with `audit` as its audit trail.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// No authentication: every caller may do everything.
    pub fn open() -> Self {
        Self::new(AuthMode::Off, Tokens::default())
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// How many principals are known now.
    pub fn principals(&self) -> usize {
        self.tokens.read().len()
    }

    /// Puts a new set of tokens in force (streams already open keep their
    /// principal; new requests use the new set), or counts a failed reload,
    /// leaving the old set in force.
    pub fn reload(&self, loaded: Result<Tokens, String>) -> Result<usize, String> {
        match loaded {
            Ok(tokens) => {
                let n = tokens.len();
                *self.tokens.write() = Arc::new(tokens);
                self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(principals = n, "auth tokens reloaded");
                Ok(n)
            }
            Err(e) => {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "auth tokens NOT reloaded: the previous ones stay in force");
                Err(e)
            }
        }
    }

    /// Who sent `authorization` (the header's value, if any) over a
    /// connection whose verified client certificate goes by `cert_names`
    /// (empty without one): the token when there is one, else the
    /// certificate. `peer` only names the caller in the log line of a
    /// failure; the token is never logged.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        cert_names: &[Box<str>],
        peer: Option<SocketAddr>,
    ) -> Result<Caller, Refusal> {
        let caller = |identity| Caller { identity, peer };
        if self.mode == AuthMode::Off {
            return Ok(caller(Identity::Open));
        }
        let tokens = self.tokens.read().clone();
        match tokens.authenticate(authorization, cert_names) {
            Ok(p) => Ok(caller(Identity::Principal(p))),
            Err(failure) => {
                let counter = match failure {
                    AuthFailure::Missing => &self.metrics.missing,
                    AuthFailure::Malformed => &self.metrics.malformed,
                    AuthFailure::Unknown => &self.metrics.unknown,
                    AuthFailure::UnknownCertificate => &self.metrics.unknown_certificate,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let peer = peer.map(|a| a.to_string()).unwrap_or_default();
                if self.mode == AuthMode::Warn {
                    tracing::warn!(peer, reason = %failure, "authentication failed (auth.mode = warn: allowed)");
                    Ok(caller(Identity::Unverified(failure)))
                } else {
                    tracing::info!(peer, reason = %failure, "authentication failed");
                    Err(Refusal::Unauthenticated(failure))
                }
            }
        }
    }

    /// Whether `caller` may act as `role` on `namespace`/`service`.
    pub fn check(&self, caller: &Caller, role: Role, namespace: &str, service: &str) -> Result<(), Refusal> {
        self.decide(caller, role, namespace, service, |p| p.may(role, namespace, service))
    }

    /// Whether `caller` holds `role` somewhere (admin endpoints, Members).
    pub fn check_anywhere(&self, caller: &Caller, role: Role) -> Result<(), Refusal> {
        self.decide(caller, role, "*", "*", |p| p.holds_anywhere(role))
    }

    /// Whether `caller` holds at least `role` on some service of `namespace`
    /// (lists of a namespace, filtered to what it may see).
    pub fn check_namespace(&self, caller: &Caller, role: Role, namespace: &str) -> Result<(), Refusal> {
        self.decide(caller, role, namespace, "*", |p| p.holds_in(role, namespace))
    }

    /// The one decision behind every check: an open caller passes, a
    /// principal passes if `allowed`; otherwise a refusal naming `role` on
    /// `namespace`/`service` (see [`Auth::refuse`]).
    fn decide(
        &self,
        caller: &Caller,
        role: Role,
        namespace: &str,
        service: &str,
        allowed: impl FnOnce(&Principal) -> bool,
    ) -> Result<(), Refusal> {
        let refusal = match &caller.identity {
            Identity::Open => return Ok(()),
            Identity::Principal(p) if allowed(p) => return Ok(()),
            Identity::Principal(p) => Refusal::Denied {
                principal: p.name.to_string(),
                role,
                namespace: namespace.to_string(),
                service: service.to_string(),
            },
            Identity::Unverified(failure) => Refusal::Unauthenticated(*failure),
        };
        self.refuse(caller, refusal)
    }

    /// A refusal in `enforce` mode; a warning in `warn` mode.
    fn refuse(&self, caller: &Caller, refusal: Refusal) -> Result<(), Refusal> {
        if matches!(caller.identity, Identity::Unverified(_)) {
            // Counted and logged when authentication failed.
            return Ok(());
        }
        self.metrics.denied.fetch_add(1, Ordering::Relaxed);
        if self.mode == AuthMode::Warn {
            tracing::warn!(%refusal, "would deny (auth.mode = warn: allowed)");
            return Ok(());
        }
        tracing::info!(%refusal, "denied");
        Err(refusal)
    }

    /// Whether `caller` may take admin actions somewhere (what a console
    /// offers it). Counts and logs nothing: the action itself is checked.
    pub fn may_admin(&self, caller: &Caller) -> bool {
        match &caller.identity {
            // `Unverified` exists only in warn mode, where everything passes.
            Identity::Open | Identity::Unverified(_) => true,
            Identity::Principal(p) => self.mode == AuthMode::Warn || p.holds_anywhere(Role::Admin),
        }
    }

    /// Whether `caller` may read some service of `namespace` (filters lists
    /// of namespaces; counts nothing).
    pub fn sees_namespace(&self, caller: &Caller, namespace: &str) -> bool {
        match &caller.identity {
            Identity::Principal(p) => self.mode == AuthMode::Warn || p.holds_in(Role::Read, namespace),
            Identity::Open | Identity::Unverified(_) => true,
        }
    }

    /// Whether `caller` may see `namespace`/`service` (filters lists).
    pub fn sees(&self, caller: &Caller, namespace: &str, service: &str) -> bool {
        match &caller.identity {
            Identity::Principal(p) => self.mode == AuthMode::Warn || p.may(Role::Read, namespace, service),
            Identity::Open | Identity::Unverified(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(mode: AuthMode) -> (Auth, String) {
        let token = "t-123456789";
        let entry = TokenEntry {
            name: "orders-team".into(),
            sha256: tokens::sha256_hex(token.as_bytes()),
            grants: vec![Grant { namespace: "default".into(), services: "orders*".into(), role: Role::Write }],
        };
        (Auth::new(mode, Tokens::new(&[entry]).expect("tokens")), format!("Bearer {token}"))
    }

    #[test]
    fn enforce_refuses_unknown_callers_and_missing_grants() {
        let (a, header) = auth(AuthMode::Enforce);
        assert_eq!(
            a.authenticate(None, &[], None).expect_err("no header"),
            Refusal::Unauthenticated(AuthFailure::Missing)
        );
        assert_eq!(
            a.authenticate(Some(b"Bearer nope"), &[], None).expect_err("unknown"),
            Refusal::Unauthenticated(AuthFailure::Unknown)
        );
        let caller = a.authenticate(Some(header.as_bytes()), &[], None).expect("known");
        assert_eq!(caller.name(), Some("orders-team"));
        a.check(&caller, Role::Write, "default", "orders-eu").expect("granted");
        a.check(&caller, Role::Read, "default", "orders").expect("write includes read");
        let denied = a.check(&caller, Role::Write, "default", "payments").expect_err("not granted");
        assert_eq!(
            denied.to_string(),
            "principal \"orders-team\" has no write grant on default/payments",
            "the message names the principal and the grant"
        );
        a.check_anywhere(&caller, Role::Admin).expect_err("no admin grant");
        assert_eq!(a.metrics.missing.load(Ordering::Relaxed), 1);
        assert_eq!(a.metrics.unknown.load(Ordering::Relaxed), 1);
        assert_eq!(a.metrics.denied.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn warn_allows_what_enforce_refuses() {
        let (a, header) = auth(AuthMode::Warn);
        let anon = a.authenticate(None, &[], None).expect("allowed in warn mode");
        a.check(&anon, Role::Admin, "prod", "x").expect("allowed");
        let caller = a.authenticate(Some(header.as_bytes()), &[], None).expect("known");
        a.check(&caller, Role::Write, "default", "payments").expect("allowed, logged");
        assert_eq!(a.metrics.denied.load(Ordering::Relaxed), 1, "still counted");
    }

    #[test]
    fn a_reload_swaps_the_tokens_and_a_bad_one_keeps_the_old() {
        let (a, header) = auth(AuthMode::Enforce);
        assert!(a.authenticate(Some(header.as_bytes()), &[], None).is_ok());
        let entry = TokenEntry { name: "new".into(), sha256: tokens::sha256_hex(b"t-new"), grants: vec![] };
        assert_eq!(a.reload(Tokens::new(&[entry])), Ok(1));
        assert!(a.authenticate(Some(header.as_bytes()), &[], None).is_err(), "the old token is gone");
        assert!(a.authenticate(Some(b"Bearer t-new"), &[], None).is_ok());
        assert!(a.reload(Err("bad file".into())).is_err());
        assert!(a.authenticate(Some(b"Bearer t-new"), &[], None).is_ok(), "a bad reload changes nothing");
        assert_eq!(a.metrics.reloads.load(Ordering::Relaxed), 1);
        assert_eq!(a.metrics.reload_failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn off_ignores_credentials() {
        let (a, _) = auth(AuthMode::Off);
        let caller = a.authenticate(Some(b"garbage"), &[], None).expect("off");
        a.check(&caller, Role::Admin, "any", "thing").expect("everything allowed");
    }
}
