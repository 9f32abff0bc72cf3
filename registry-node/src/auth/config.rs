//! The `[auth]` settings.
//!
//! ```toml
//! [auth]
//! mode = "enforce"               # "off" | "warn" | "enforce"
//! tokens_file = "tokens.toml"    # optional: more [[tokens]] entries
//! protect_metrics = false        # true: /metrics needs an admin grant
//! audit_file = "audit.jsonl"     # optional: the audit trail as JSON lines
//!
//! [[auth.tokens]]
//! name = "orders-team"
//! sha256 = "<hex SHA-256 of the token>"
//! grants = [{ namespace = "default", services = "orders*", role = "write" }]
//!
//! [[auth.certs]]                 # mTLS: needs [tls] client_ca_file
//! name = "billing-service"
//! subject = "billing.prod"       # the client certificate's CN or a DNS/URI SAN, exactly
//! grants = [{ namespace = "prod", services = "billing*", role = "write" }]
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::grants::Grant;
use super::tokens::Tokens;

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone may do everything (on purpose).
    Off,
    /// Log and count what would be refused, and allow it: for rolling auth out.
    Warn,
    /// Refuse unknown callers (UNAUTHENTICATED) and missing grants (PERMISSION_DENIED).
    Enforce,
}

/// A principal known by a bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The principal's name: in logs and the consumer directory.
    pub name: String,
    /// Hex SHA-256 of the token; the token itself is never stored.
    pub sha256: String,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// A principal known by its mTLS client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertEntry {
    /// The principal's name: in logs and the consumer directory.
    pub name: String,
    /// Matches the client certificate's subject CN or one of its DNS or URI
    /// subject alternative names, exactly.
    pub subject: String,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// `[auth]`. Absent (`mode` unset), a node may listen only on loopback
/// addresses: see `NodeConfig::validate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: Option<AuthMode>,
    /// A TOML file of more `[[tokens]]` entries (same shape), read at start.
    /// Keeps the hashes out of the main config, e.g. in a mounted secret.
    pub tokens_file: Option<PathBuf>,
    pub tokens: Vec<TokenEntry>,
    /// Principals known by their client certificate (needs `[tls]` with a
    /// `client_ca_file`).
    pub certs: Vec<CertEntry>,
    /// `/metrics` needs an admin grant (it is open otherwise, like `/healthz`
    /// and `/readyz`).
    pub protect_metrics: bool,
    /// Also append the audit trail (admin actions, denied writes, ownership
    /// refusals) to this file, one JSON object per line.
    pub audit_file: Option<PathBuf>,
}

/// The shape of `auth.tokens_file`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
    certs: Vec<CertEntry>,
}

impl AuthConfig {
    /// Checks names and grants of the inline entries (the tokens file is
    /// read at start, [`AuthConfig::load_tokens`]).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        check_entries(&self.tokens).map_err(|e| ("auth.tokens", e))?;
        check_certs(&self.certs).map_err(|e| ("auth.certs", e))?;
        Tokens::new(&self.tokens)
            .map_err(|e| ("auth.tokens", e))?
            .with_certs(&self.certs)
            .map_err(|e| ("auth.certs", e))?;
        if matches!(self.mode, Some(AuthMode::Enforce | AuthMode::Warn))
            && self.tokens.is_empty()
            && self.certs.is_empty()
            && self.tokens_file.is_none()
        {
            return Err((
                "auth.mode",
                "\"enforce\" and \"warn\" need principals: add [[auth.tokens]] or [[auth.certs]] entries, or auth.tokens_file".into(),
            ));
        }
        Ok(())
    }

    /// Every credential: inline tokens and certs, then the tokens file's.
    pub fn load_tokens(&self) -> Result<Tokens, String> {
        let mut entries = self.tokens.clone();
        let mut certs = self.certs.clone();
        if let Some(path) = &self.tokens_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
            let file: TokensFile =
                toml::from_str(&text).map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
            check_entries(&file.tokens).map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
            check_certs(&file.certs).map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
            entries.extend(file.tokens);
            certs.extend(file.certs);
        }
        Tokens::new(&entries)?.with_certs(&certs)
    }
}

fn check_entries(entries: &[TokenEntry]) -> Result<(), String> {
    for e in entries {
        check_principal("token", &e.name, &e.grants)?;
    }
    Ok(())
}

fn check_certs(entries: &[CertEntry]) -> Result<(), String> {
    for e in entries {
        check_principal("cert", &e.name, &e.grants)?;
        if e.subject.is_empty() || e.subject.len() > 1024 || e.subject.chars().any(char::is_control) {
            return Err(format!("cert {:?}: subject must be 1 to 1024 printable characters", e.name));
        }
    }
    Ok(())
}

fn check_principal(kind: &str, name: &str, grants: &[Grant]) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '"') {
        return Err(format!("name {name:?} must be 1 to 128 printable characters, without quotes"));
    }
    for g in grants {
        g.validate().map_err(|reason| format!("{kind} {name:?}: grant: {reason}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::auth::tokens::sha256_hex;

    #[test]
    fn a_config_file_section_parses_and_validates() {
        let text = format!(
            "mode = \"enforce\"\n[[tokens]]\nname = \"orders-team\"\nsha256 = \"{}\"\ngrants = [{{ namespace = \"default\", services = \"orders*\", role = \"write\" }}]\n",
            sha256_hex(b"x")
        );
        let c: AuthConfig = toml::from_str(&text).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.load_tokens().expect("tokens").len(), 1);
    }

    #[test]
    fn enforce_without_principals_is_refused() {
        let c = AuthConfig { mode: Some(AuthMode::Enforce), ..AuthConfig::default() };
        let (setting, reason) = c.validate().expect_err("nobody could ever call");
        assert_eq!(setting, "auth.mode");
        assert!(reason.contains("tokens"), "{reason}");
        AuthConfig { mode: Some(AuthMode::Off), ..AuthConfig::default() }.validate().expect("off needs none");
    }

    #[test]
    fn unknown_keys_roles_and_bad_grants_are_refused() {
        assert!(toml::from_str::<AuthConfig>("mode = \"strict\"").is_err());
        assert!(toml::from_str::<AuthConfig>("modes = \"off\"").is_err());
        let bad_role = "[[tokens]]\nname = \"a\"\nsha256 = \"\"\ngrants = [{ namespace = \"*\", services = \"*\", role = \"root\" }]";
        assert!(toml::from_str::<AuthConfig>(bad_role).is_err());
        let bad_grant = format!(
            "[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\ngrants = [{{ namespace = \"*\", services = \"a*b\", role = \"read\" }}]",
            sha256_hex(b"x")
        );
        let c: AuthConfig = toml::from_str(&bad_grant).expect("parses");
        let (_, reason) = c.validate().expect_err("bad pattern");
        assert!(reason.contains("a*b"), "{reason}");
    }

    #[test]
    fn the_tokens_file_adds_entries_and_its_errors_name_it() {
        let dir = std::env::temp_dir().join(format!("registry-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tokens.toml");
        std::fs::write(&path, format!("[[tokens]]\nname = \"b\"\nsha256 = \"{}\"\n", sha256_hex(b"y"))).expect("write");
        let c = AuthConfig { mode: Some(AuthMode::Enforce), tokens_file: Some(path.clone()), ..AuthConfig::default() };
        c.validate().expect("a tokens file is principals enough");
        let t = c.load_tokens().expect("loads");
        assert!(t.authenticate(Some(b"Bearer y"), &[]).is_ok());
        std::fs::write(&path, "[[tokens]]\nname = \"b\"\nsha256 = \"nothex\"\n").expect("write");
        assert!(c.load_tokens().expect_err("bad hash").contains("sha256"));
        let missing = AuthConfig { tokens_file: Some(dir.join("absent.toml")), ..c };
        assert!(missing.load_tokens().expect_err("missing").contains("absent.toml"));
    }

    proptest! {
        /// Any text as an `[auth]` section: parsed or refused, never a panic,
        /// and whatever parses either validates or names a setting.
        #[test]
        fn any_auth_section_parses_or_is_refused(text in "[a-z_=\" \\[\\]{},*\\n0-9]{0,120}") {
            if let Ok(c) = toml::from_str::<AuthConfig>(&text) {
                let _ = c.validate();
            }
        }
    }
}
