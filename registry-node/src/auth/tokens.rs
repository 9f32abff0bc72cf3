//! Bearer tokens. The config holds only each token's SHA-256; a presented
//! token is hashed, and the hash finds its principal. No secret byte is ever
//! compared with a presented one: what a lookup's timing could tell is how
//! the SHA-256 of the caller's own guess relates to stored hashes, which
//! helps find no token (finding one means inverting SHA-256). The candidate
//! found is then compared in constant time. So the cost per request is one
//! hash and one map lookup, whatever the number of principals.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{CertEntry, TokenEntry};
use super::grants::Principal;

/// Why a credential was not accepted (never names the token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    Malformed,
    /// A token no principal has.
    Unknown,
    /// No token, and a client certificate whose names match no
    /// `[[auth.certs]]` subject.
    UnknownCertificate,
}

impl AuthFailure {
    /// The `reason` label of `registry_auth_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::UnknownCertificate => "unknown_certificate",
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthFailure::Missing => "no credential: send `authorization: Bearer <token>`",
            AuthFailure::Malformed => "malformed credential: expected `authorization: Bearer <token>`",
            AuthFailure::Unknown => "unknown token",
            AuthFailure::UnknownCertificate => {
                "the client certificate matches no [[auth.certs]] subject, and no token was sent"
            }
        })
    }
}

/// The known tokens' hashes and client certificate subjects, and their
/// principals.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
    by_subject: HashMap<Box<str>, Arc<Principal>>,
}

/// Hex SHA-256 of `bytes`, as the config writes it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Checked entries (see `AuthConfig::validate`): a bad hash or a hash
    /// given twice is an error naming the entry.
    pub fn new(entries: &[TokenEntry]) -> Result<Self, String> {
        let mut by_hash = HashMap::with_capacity(entries.len());
        for e in entries {
            let hash = parse_hex(&e.sha256.to_ascii_lowercase())
                .ok_or_else(|| format!("token {:?}: sha256 must be 64 hex digits", e.name))?;
            let principal = Principal { name: e.name.as_str().into(), grants: e.grants.clone() };
            if by_hash.insert(hash, Arc::new(principal)).is_some() {
                return Err(format!("token {:?}: the same sha256 is given twice", e.name));
            }
        }
        Ok(Self { by_hash, by_subject: HashMap::new() })
    }

    /// Adds the principals known by a client certificate subject: a subject
    /// given twice is an error naming it.
    pub fn with_certs(mut self, certs: &[CertEntry]) -> Result<Self, String> {
        for c in certs {
            if c.subject.is_empty() {
                return Err(format!("cert {:?}: subject must not be empty", c.name));
            }
            let principal = Principal { name: c.name.as_str().into(), grants: c.grants.clone() };
            if self.by_subject.insert(c.subject.as_str().into(), Arc::new(principal)).is_some() {
                return Err(format!("cert {:?}: subject {:?} is given twice", c.name, c.subject));
            }
        }
        Ok(self)
    }

    /// Credentials known: tokens and certificate subjects.
    pub fn len(&self) -> usize {
        self.by_hash.len() + self.by_subject.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The principal of a request: the one whose token `authorization`
    /// carries (`Bearer <token>`) when it has the header, else the one
    /// whose `[[auth.certs]]` subject is among `cert_names` (the names of
    /// the client certificate the TLS handshake verified).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        cert_names: &[Box<str>],
    ) -> Result<Arc<Principal>, AuthFailure> {
        let Some(header) = authorization else {
            if cert_names.is_empty() {
                return Err(AuthFailure::Missing);
            }
            return cert_names
                .iter()
                .find_map(|n| self.by_subject.get(n))
                .cloned()
                .ok_or(AuthFailure::UnknownCertificate);
        };
        let token = bearer(header).ok_or(AuthFailure::Malformed)?;
        let hash: [u8; 32] = Sha256::digest(token).into();
        match self.by_hash.get_key_value(&hash) {
            Some((stored, p)) if bool::from(stored.ct_eq(&hash)) => Ok(p.clone()),
            _ => Err(AuthFailure::Unknown),
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, one space, a
/// token of visible ASCII).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") || token.is_empty() || token.len() > 4096 {
        return None;
    }
    token.iter().all(|b| b.is_ascii_graphic()).then_some(token)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::auth::{Grant, Role};

    impl Tokens {
        fn authenticate_token(&self, authorization: Option<&[u8]>) -> Result<Arc<Principal>, AuthFailure> {
            self.authenticate(authorization, &[])
        }
    }

    fn entry(name: &str, token: &str) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            sha256: sha256_hex(token.as_bytes()),
            grants: vec![Grant { namespace: "*".into(), services: "*".into(), role: Role::Read }],
        }
    }

    #[test]
    fn a_token_names_its_principal() {
        let t = Tokens::new(&[entry("a", "token-a"), entry("b", "token-b")]).expect("valid");
        assert_eq!(t.authenticate_token(Some(b"Bearer token-b")).map(|p| p.name.to_string()), Ok("b".into()));
        assert_eq!(t.authenticate_token(Some(b"bearer token-a")).map(|p| p.name.to_string()), Ok("a".into()));
        assert_eq!(t.authenticate_token(Some(b"Bearer token-c")), Err(AuthFailure::Unknown));
        assert_eq!(t.authenticate_token(None), Err(AuthFailure::Missing));
        for bad in [&b"token-a"[..], b"Basic dXNlcjpwYXNz", b"Bearer ", b"Bearer two words", b"Bearer\ttoken-a"] {
            assert_eq!(
                t.authenticate_token(Some(bad)),
                Err(AuthFailure::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bad_hashes_and_duplicates_are_refused_by_name() {
        let mut bad = entry("short", "x");
        bad.sha256.truncate(10);
        assert!(Tokens::new(&[bad]).expect_err("short").contains("\"short\""));
        let mut nonhex = entry("nonhex", "x");
        nonhex.sha256 = "z".repeat(64);
        assert!(Tokens::new(&[nonhex]).is_err());
        let err = Tokens::new(&[entry("a", "same"), entry("b", "same")]).expect_err("twice");
        assert!(err.contains("twice"), "{err}");
        let mut upper = entry("upper", "x");
        upper.sha256 = upper.sha256.to_ascii_uppercase();
        let t = Tokens::new(&[upper]).expect("upper-case hex is hex");
        assert!(t.authenticate_token(Some(b"Bearer x")).is_ok());
    }

    #[test]
    fn a_certificate_name_names_its_principal_unless_a_token_is_sent() {
        let cert = CertEntry { name: "billing".into(), subject: "billing.prod".into(), grants: vec![] };
        let t = Tokens::new(&[entry("a", "token-a")])
            .and_then(|t| t.with_certs(std::slice::from_ref(&cert)))
            .expect("valid");
        assert_eq!(t.len(), 2);
        let names: Vec<Box<str>> = vec!["cn-other".into(), "billing.prod".into()];
        assert_eq!(t.authenticate(None, &names).map(|p| p.name.to_string()), Ok("billing".into()));
        assert_eq!(t.authenticate(Some(b"Bearer token-a"), &names).map(|p| p.name.to_string()), Ok("a".into()));
        assert_eq!(t.authenticate(Some(b"Bearer nope"), &names), Err(AuthFailure::Unknown), "no fallback");
        assert_eq!(t.authenticate(None, &["billing".into()]), Err(AuthFailure::UnknownCertificate));
        assert_eq!(t.authenticate(None, &["billing.pro".into()]), Err(AuthFailure::UnknownCertificate), "exact");
        let twice = Tokens::default().with_certs(&[cert.clone(), cert]).expect_err("twice");
        assert!(twice.contains("billing.prod"), "{twice}");
    }

    #[test]
    fn the_hash_is_sha256() {
        // FIPS 180-2 test vector.
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    proptest! {
        /// Any bytes as a header: never a panic, and only the real token passes.
        #[test]
        fn any_header_is_refused_or_is_the_token(header in proptest::collection::vec(any::<u8>(), 0..64)) {
            let t = Tokens::new(&[entry("a", "token-a")]).expect("valid");
            let ok = t.authenticate_token(Some(&header)).is_ok();
            prop_assert_eq!(ok, header.eq_ignore_ascii_case(b"bearer token-a") && header.ends_with(b"token-a"));
        }
    }
}
