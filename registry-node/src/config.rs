//! Node configuration: defaults, then an optional TOML file, then `REGISTRY_*`
//! environment variables, then command-line flags; validated before anything
//! starts. A bad value stops the binary with a message naming the setting and
//! exit code 64 (EX_USAGE).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::{AuthConfig, AuthMode};
use crate::listen::TlsSettings;
use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid { setting: &'static str, reason: String },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, reason: reason.into() }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything a node needs to start. Field names are the TOML keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique name of this node in its cluster. Default: the host name.
    pub node_id: String,
    /// gRPC listen address (registry.v1, health, reflection).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (/metrics, /healthz, /readyz).
    pub http_addr: SocketAddr,
    /// NATS servers; empty runs the node standalone.
    pub nats_url: Vec<String>,
    /// Cluster name: the NATS subject namespace, so clusters can share a NATS.
    pub cluster: String,
    pub log_format: LogFormat,
    /// How long a shutdown waits for drained sessions to leave.
    pub shutdown_grace_ms: u64,
    pub sessions: SessionConfig,
    pub subscriptions: SubscriptionConfig,
    pub limits: Limits,
    pub sync: SyncSettings,
    /// Authentication and grants (see `crate::auth`).
    pub auth: AuthConfig,
    /// TLS on the gRPC and HTTP ports (see `crate::listen::tls`); absent,
    /// both are plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// The Eureka-compatible REST API under `/eureka/` on the HTTP port.
    pub eureka: EurekaSettings,
    /// The DNS interface (see `crate::frontend::dns`); off unless `dns.addr`
    /// is set.
    pub dns: DnsSettings,
}

/// The DNS interface: an authoritative server for `domain` on UDP and TCP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSettings {
    /// UDP and TCP listen address (the same port for both); absent, no DNS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// The zone answered; names outside it are REFUSED.
    pub domain: String,
    /// TTL of every record, and of negative answers (SOA minimum).
    pub ttl_s: u32,
    /// Namespaces served; empty serves every namespace. DNS has no
    /// credentials, so this is what decides who can read what by DNS.
    pub namespaces: Vec<String>,
    /// A TCP client that sends no complete query for this long is closed.
    pub tcp_idle_timeout_ms: u64,
    /// TCP connections open at once; more are closed on accept.
    pub max_tcp_connections: usize,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            addr: None,
            domain: "registry.internal.".into(),
            ttl_s: 5,
            namespaces: Vec::new(),
            tcp_idle_timeout_ms: 5_000,
            max_tcp_connections: 256,
        }
    }
}

impl DnsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let name = self.domain.trim_end_matches('.');
        let label_ok = |l: &str| {
            !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.is_empty() || name.len() > 200 || !name.split('.').all(label_ok) {
            return Err(invalid(
                "dns.domain",
                format!("{:?} is not a domain name (labels of A-Z a-z 0-9 - _, at most 200 characters)", self.domain),
            ));
        }
        check_range("dns.ttl_s", u64::from(self.ttl_s), 0, 86_400)?;
        for ns in &self.namespaces {
            check_token("dns.namespaces", ns)?;
        }
        check_range("dns.tcp_idle_timeout_ms", self.tcp_idle_timeout_ms, 100, 600_000)?;
        check_range("dns.max_tcp_connections", self.max_tcp_connections as u64, 1, 65_536)?;
        Ok(())
    }
}

/// The Eureka-compatible REST API (`/eureka/`, `/eureka/v2/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EurekaSettings {
    /// Serve it (default true; it costs nothing until a Eureka client calls).
    pub enabled: bool,
    /// The namespace Eureka applications live in.
    pub namespace: String,
    /// How long `/eureka/apps/delta` remembers a change (Eureka's 3 minutes).
    pub delta_retention_ms: u64,
}

impl Default for EurekaSettings {
    fn default() -> Self {
        Self { enabled: true, namespace: "default".into(), delta_retention_ms: 180_000 }
    }
}

/// Replication between nodes (used only with `nats_url`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// First token of every NATS subject this cluster uses.
    pub subject_prefix: String,
    /// Address peers and operators are told to reach this node at (default:
    /// the gRPC address).
    pub advertise_addr: Option<String>,
    pub beat_interval_ms: u64,
    /// A peer silent this long is suspect.
    pub suspect_after_ms: u64,
    /// A peer silent this long is orphaned: its instances stay, flagged.
    pub dead_after_ms: u64,
    /// How long orphaned instances stay so their providers can re-register elsewhere.
    pub orphan_grace_ms: u64,
    /// A starting node serves reads after this even if it could not load its peers.
    pub ready_timeout_ms: u64,
    /// Orphan removal holds (and alarms) rather than remove more than this share
    /// of all instances at once.
    pub safety_valve_share: f64,
    pub request_timeout_ms: u64,
    /// Recent own changes kept to answer gap repairs.
    pub ring_capacity: usize,
    /// Entries per page of a slice transfer.
    pub page_entries: usize,
    /// Most entries (instances, tombstones, consumer records) a peer's slice
    /// may claim; a transfer claiming more is refused.
    pub max_slice_entries: u64,
    /// CA certificates (PEM) the NATS servers' certificates must chain to
    /// (default: the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for NATS servers that verify clients;
    /// with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a NATS server without TLS.
    pub require_tls: bool,
    /// NATS credentials, at most one kind: a `.creds` file (user JWT and
    /// nkey seed), an nkey seed file, `user` with a password (file or
    /// `REGISTRY_NATS_PASSWORD`), or a token (file or `REGISTRY_NATS_TOKEN`).
    pub creds_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// `REGISTRY_NATS_PASSWORD`: from the environment only, never printed.
    #[serde(skip)]
    pub password_env: Option<EnvSecret>,
    /// `REGISTRY_NATS_TOKEN`: from the environment only, never printed.
    #[serde(skip)]
    pub token_env: Option<EnvSecret>,
}

/// Whether a NATS URL carries a user (`nats://user:password@host`), as
/// configurations did before `sync.user`.
fn url_has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().is_some_and(|authority| authority.contains('@'))
}

/// The environment variable that holds the NATS password of `sync.user`.
pub const NATS_PASSWORD_ENV: &str = "REGISTRY_NATS_PASSWORD";
/// The environment variable that holds a NATS token.
pub const NATS_TOKEN_ENV: &str = "REGISTRY_NATS_TOKEN";

/// A secret taken from the environment. Not serialized, so `--check-config`
/// does not print it, and redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvSecret(pub String);

impl std::fmt::Debug for EnvSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SyncSettings {
    /// Takes the NATS password and token from the environment (`env` looks
    /// a variable up; empty counts as unset).
    pub fn secrets_from_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let get = |name| env(name).filter(|v| !v.is_empty()).map(EnvSecret);
        self.password_env = get(NATS_PASSWORD_ENV);
        self.token_env = get(NATS_TOKEN_ENV);
    }

    /// The kinds of NATS credentials set, each named by a setting that sets it.
    fn credential_kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.creds_file.is_some() {
            kinds.push("sync.creds_file");
        }
        if self.nkey_seed_file.is_some() {
            kinds.push("sync.nkey_seed_file");
        }
        if self.user.is_some() {
            kinds.push("sync.user");
        } else if self.password_file.is_some() {
            kinds.push("sync.password_file");
        } else if self.password_env.is_some() {
            kinds.push(NATS_PASSWORD_ENV);
        }
        if self.token_file.is_some() {
            kinds.push("sync.token_file");
        } else if self.token_env.is_some() {
            kinds.push(NATS_TOKEN_ENV);
        }
        kinds
    }

    /// Checks the TLS and credential settings (files are read at start).
    fn check_nats_security(&self, nats_url: &[String]) -> Result<(), ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => return Err(invalid("sync.tls_cert_file", "needs sync.tls_key_file")),
            (None, Some(_)) => return Err(invalid("sync.tls_key_file", "needs sync.tls_cert_file")),
            _ => {}
        }
        let kinds = self.credential_kinds();
        if let [first, second, ..] = kinds[..] {
            return Err(invalid(
                second,
                format!(
                    "conflicts with {first}: set one kind of NATS credentials (a .creds file, an nkey seed, a user and password, or a token)"
                ),
            ));
        }
        if self.token_file.is_some() && self.token_env.is_some() {
            return Err(invalid("sync.token_file", format!("{NATS_TOKEN_ENV} is set too: use one")));
        }
        if let Some(user) = &self.user {
            if user.is_empty() || user.len() > 256 || user.contains(char::is_whitespace) {
                return Err(invalid("sync.user", format!("{user:?} is not a NATS user name")));
            }
            match (&self.password_file, &self.password_env) {
                (None, None) => {
                    return Err(invalid("sync.user", format!("needs sync.password_file or {NATS_PASSWORD_ENV}")));
                }
                (Some(_), Some(_)) => {
                    return Err(invalid("sync.password_file", format!("{NATS_PASSWORD_ENV} is set too: use one")));
                }
                _ => {}
            }
        } else if self.password_file.is_some() {
            return Err(invalid("sync.password_file", "needs sync.user"));
        } else if self.password_env.is_some() {
            return Err(invalid("sync.user", format!("{NATS_PASSWORD_ENV} is set but sync.user is not")));
        }
        if nats_url.iter().any(|u| url_has_credentials(u))
            && let Some(kind) = kinds.first()
        {
            return Err(invalid(
                "nats_url",
                format!(
                    "has credentials in it and {kind} is set too: use one (prefer {kind}: a URL is logged and shown in process lists)"
                ),
            ));
        }
        Ok(())
    }

    /// The NATS connection's TLS and credentials, as bus-sync takes them.
    pub fn nats_security(&self) -> bus_sync::NatsSecurity {
        use bus_sync::{NatsCredentials, Secret};
        let secret = |file: &Option<PathBuf>, env: &Option<EnvSecret>| match (file, env) {
            (Some(path), _) => Some(Secret::File(path.clone())),
            (None, Some(EnvSecret(value))) => Some(Secret::Value(value.clone())),
            (None, None) => None,
        };
        let credentials = if let Some(path) = &self.creds_file {
            Some(NatsCredentials::CredsFile(path.clone()))
        } else if let Some(path) = &self.nkey_seed_file {
            Some(NatsCredentials::NkeySeed(Secret::File(path.clone())))
        } else if let (Some(user), Some(password)) = (&self.user, secret(&self.password_file, &self.password_env)) {
            Some(NatsCredentials::UserPassword { user: user.clone(), password })
        } else {
            secret(&self.token_file, &self.token_env).map(NatsCredentials::Token)
        };
        bus_sync::NatsSecurity {
            tls_ca_file: self.tls_ca_file.clone(),
            tls_client_cert: self.tls_cert_file.clone().zip(self.tls_key_file.clone()),
            require_tls: self.require_tls,
            credentials,
        }
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            subject_prefix: "registry".into(),
            advertise_addr: None,
            beat_interval_ms: 1_000,
            suspect_after_ms: 3_000,
            dead_after_ms: 6_000,
            orphan_grace_ms: 10_000,
            ready_timeout_ms: 60_000,
            safety_valve_share: 0.5,
            request_timeout_ms: 5_000,
            ring_capacity: 100_000,
            page_entries: 2_000,
            max_slice_entries: 10_000_000,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            require_tls: false,
            creds_file: None,
            nkey_seed_file: None,
            user: None,
            password_file: None,
            token_file: None,
            password_env: None,
            token_env: None,
        }
    }
}

/// Provider sessions and leases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Heartbeat interval of a session that does not ask for one.
    pub default_heartbeat_ms: u64,
    pub min_heartbeat_ms: u64,
    pub max_heartbeat_ms: u64,
    /// A session's lease TTL is this many heartbeat intervals.
    pub lease_heartbeats: u32,
    /// How long instances of a session whose connection broke stay registered,
    /// so a quick reconnect does not flap them.
    pub reconnect_grace_ms: u64,
    /// TTL of unary leases that do not ask for one.
    pub default_lease_ttl_ms: u64,
    pub min_lease_ttl_ms: u64,
    pub max_lease_ttl_ms: u64,
    /// Upper bound of the random delay a drained session is told to wait.
    pub drain_jitter_ms: u64,
    /// A session older than this (±10%) is asked to move, so that long-lived
    /// sessions spread over nodes added later. 0: never.
    pub max_age_ms: u64,
    /// Move sessions from this node while it holds more than its fair share
    /// (known from peers' beats) by more than this fraction.
    pub rebalance_tolerance: f64,
    /// 0 turns rebalancing off.
    pub rebalance_interval_ms: u64,
    /// HTTP/2 keepalive ping interval: how fast a dead connection is noticed.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// An admin's status override of an instance that has not been shown
    /// for this long (deregistered, expired, or never registered) is
    /// dropped, so overrides of instances long gone do not pile up. 0: kept
    /// until an admin clears it.
    pub status_override_retention_ms: u64,
}

/// Consumer streams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Events queued per subscriber before it is resynced with a snapshot.
    pub queue_capacity: usize,
    /// Interval of `progress` keepalives on idle streams.
    pub progress_interval_ms: u64,
    /// A Subscribe stream older than this (±10%) is ended with UNAVAILABLE so
    /// that its consumer subscribes again, possibly to another node: long-lived
    /// streams spread over nodes added later. 0: never.
    pub max_age_ms: u64,
}

/// Input limits; anything beyond them is refused with INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Namespace, service and zone names.
    pub max_name_len: usize,
    pub max_instance_id_len: usize,
    pub max_host_len: usize,
    pub max_metadata_entries: usize,
    pub max_metadata_key_len: usize,
    pub max_metadata_value_len: usize,
    /// Sum of all metadata keys and values of one instance or consumer.
    pub max_metadata_bytes: usize,
    pub max_weight: u32,
    pub max_instances_per_session: usize,
    pub max_services_per_subscribe: usize,
    /// Largest gRPC message accepted (tonic's own default is 4 MiB).
    pub max_message_bytes: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7071)),
            nats_url: Vec::new(),
            cluster: "default".into(),
            log_format: LogFormat::Text,
            shutdown_grace_ms: 10_000,
            sessions: SessionConfig::default(),
            subscriptions: SubscriptionConfig::default(),
            limits: Limits::default(),
            sync: SyncSettings::default(),
            auth: AuthConfig::default(),
            tls: None,
            eureka: EurekaSettings::default(),
            dns: DnsSettings::default(),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            default_heartbeat_ms: 5_000,
            min_heartbeat_ms: 250,
            max_heartbeat_ms: 60_000,
            lease_heartbeats: 3,
            reconnect_grace_ms: 3_000,
            default_lease_ttl_ms: 30_000,
            min_lease_ttl_ms: 1_000,
            max_lease_ttl_ms: 3_600_000,
            drain_jitter_ms: 2_000,
            max_age_ms: 6 * 3_600_000,
            rebalance_tolerance: 0.2,
            rebalance_interval_ms: 10_000,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 5_000,
            status_override_retention_ms: 3_600_000,
        }
    }
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self { queue_capacity: 1_024, progress_interval_ms: 10_000, max_age_ms: 6 * 3_600_000 }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name_len: 128,
            max_instance_id_len: 256,
            max_host_len: 253,
            max_metadata_entries: 64,
            max_metadata_key_len: 128,
            max_metadata_value_len: 1_024,
            max_metadata_bytes: 16 * 1_024,
            max_weight: 10_000,
            max_instances_per_session: 1_000,
            max_services_per_subscribe: 1_000,
            max_message_bytes: 1024 * 1024,
        }
    }
}

impl NodeConfig {
    /// Whether this node replicates over NATS.
    pub fn clustered(&self) -> bool {
        !self.nats_url.is_empty()
    }

    /// How long a tombstone is kept: longer than any copy it hides can live
    /// (a lease or session TTL, the reconnect grace, and an origin's orphan
    /// grace), so nothing it hides can come back.
    pub fn tombstone_ttl_ms(&self) -> u64 {
        let s = &self.sessions;
        let session_ttl = s.max_heartbeat_ms * u64::from(s.lease_heartbeats);
        s.max_lease_ttl_ms.max(session_ttl) + s.reconnect_grace_ms + self.sync.dead_after_ms + self.sync.orphan_grace_ms
    }
}

impl SessionConfig {
    pub fn reconnect_grace(&self) -> Duration {
        Duration::from_millis(self.reconnect_grace_ms)
    }
}

/// The host name, made fit for a node id (NATS subject tokens allow no dots).
fn default_node_id() -> String {
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let id: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(64)
        .collect();
    if id.is_empty() { "registry-node".into() } else { id }
}

/// `[A-Za-z0-9_-]`, 1..=64: usable as a NATS subject token and in metrics.
fn check_token(setting: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 64 {
        return Err(invalid(setting, format!("must be 1 to 64 characters, got {}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(invalid(setting, format!("character {c:?} not allowed (use A-Z a-z 0-9 - _)")));
    }
    Ok(())
}

fn check_range(setting: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(setting, format!("{value} is outside {min}..={max}")));
    }
    Ok(())
}

impl NodeConfig {
    /// Checks every value; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_token("node_id", &self.node_id)?;
        crate::validate::namespace(&self.eureka.namespace, &self.limits)
            .map_err(|e| invalid("eureka.namespace", e.to_string()))?;
        check_range("eureka.delta_retention_ms", self.eureka.delta_retention_ms, 1_000, 3_600_000)?;
        check_token("cluster", &self.cluster)?;
        self.dns.validate()?;
        for url in &self.nats_url {
            if url.trim().is_empty() || url.contains(char::is_whitespace) {
                return Err(invalid("nats_url", format!("{url:?} is not a server URL")));
            }
        }
        let s = &self.sessions;
        check_range("sessions.min_heartbeat_ms", s.min_heartbeat_ms, 10, 3_600_000)?;
        check_range("sessions.max_heartbeat_ms", s.max_heartbeat_ms, s.min_heartbeat_ms, 3_600_000)?;
        check_range("sessions.default_heartbeat_ms", s.default_heartbeat_ms, s.min_heartbeat_ms, s.max_heartbeat_ms)?;
        check_range("sessions.lease_heartbeats", s.lease_heartbeats.into(), 2, 100)?;
        check_range("sessions.reconnect_grace_ms", s.reconnect_grace_ms, 0, 600_000)?;
        check_range("sessions.min_lease_ttl_ms", s.min_lease_ttl_ms, 100, 86_400_000)?;
        check_range("sessions.max_lease_ttl_ms", s.max_lease_ttl_ms, s.min_lease_ttl_ms, 86_400_000)?;
        check_range("sessions.default_lease_ttl_ms", s.default_lease_ttl_ms, s.min_lease_ttl_ms, s.max_lease_ttl_ms)?;
        check_range("sessions.drain_jitter_ms", s.drain_jitter_ms, 0, 600_000)?;
        if s.max_age_ms != 0 {
            check_range("sessions.max_age_ms", s.max_age_ms, 60_000, 30 * 86_400_000)?;
        }
        if !(0.01..=10.0).contains(&s.rebalance_tolerance) {
            return Err(invalid(
                "sessions.rebalance_tolerance",
                format!("{} is outside 0.01..=10", s.rebalance_tolerance),
            ));
        }
        if s.rebalance_interval_ms != 0 {
            check_range("sessions.rebalance_interval_ms", s.rebalance_interval_ms, 100, 3_600_000)?;
        }
        check_range("sessions.keepalive_interval_ms", s.keepalive_interval_ms, 100, 3_600_000)?;
        check_range("sessions.keepalive_timeout_ms", s.keepalive_timeout_ms, 100, 3_600_000)?;
        if s.status_override_retention_ms != 0 {
            check_range(
                "sessions.status_override_retention_ms",
                s.status_override_retention_ms,
                1_000,
                30 * 86_400_000,
            )?;
        }
        check_range("shutdown_grace_ms", self.shutdown_grace_ms, 0, 3_600_000)?;
        let sub = &self.subscriptions;
        check_range("subscriptions.queue_capacity", sub.queue_capacity as u64, 1, 1 << 20)?;
        check_range("subscriptions.progress_interval_ms", sub.progress_interval_ms, 100, 3_600_000)?;
        if sub.max_age_ms != 0 {
            check_range("subscriptions.max_age_ms", sub.max_age_ms, 1_000, 30 * 86_400_000)?;
        }
        let l = &self.limits;
        check_range("limits.max_name_len", l.max_name_len as u64, 1, 1_024)?;
        check_range("limits.max_instance_id_len", l.max_instance_id_len as u64, 1, 4_096)?;
        check_range("limits.max_host_len", l.max_host_len as u64, 1, 4_096)?;
        check_range("limits.max_metadata_entries", l.max_metadata_entries as u64, 0, 100_000)?;
        check_range("limits.max_metadata_key_len", l.max_metadata_key_len as u64, 1, 65_536)?;
        check_range("limits.max_metadata_value_len", l.max_metadata_value_len as u64, 0, 1 << 20)?;
        check_range("limits.max_metadata_bytes", l.max_metadata_bytes as u64, 0, 1 << 24)?;
        check_range("limits.max_weight", l.max_weight.into(), 1, u32::MAX.into())?;
        check_range("limits.max_instances_per_session", l.max_instances_per_session as u64, 1, 10_000_000)?;
        check_range("limits.max_services_per_subscribe", l.max_services_per_subscribe as u64, 1, 1_000_000)?;
        check_range("limits.max_message_bytes", l.max_message_bytes as u64, 1_024, 64 << 20)?;
        let y = &self.sync;
        check_token("sync.subject_prefix", &y.subject_prefix)?;
        if let Some(a) = &y.advertise_addr
            && (a.is_empty() || a.len() > 256 || a.contains(char::is_whitespace))
        {
            return Err(invalid("sync.advertise_addr", format!("{a:?} is not an address")));
        }
        check_range("sync.beat_interval_ms", y.beat_interval_ms, 50, 60_000)?;
        check_range("sync.suspect_after_ms", y.suspect_after_ms, 2 * y.beat_interval_ms, 3_600_000)?;
        check_range("sync.dead_after_ms", y.dead_after_ms, y.suspect_after_ms, 3_600_000)?;
        check_range("sync.orphan_grace_ms", y.orphan_grace_ms, 0, 86_400_000)?;
        check_range("sync.ready_timeout_ms", y.ready_timeout_ms, y.beat_interval_ms, 3_600_000)?;
        check_range("sync.request_timeout_ms", y.request_timeout_ms, 100, 600_000)?;
        check_range("sync.ring_capacity", y.ring_capacity as u64, 16, 100_000_000)?;
        check_range("sync.page_entries", y.page_entries as u64, 1, 100_000)?;
        check_range("sync.max_slice_entries", y.max_slice_entries, 1_000, 1_000_000_000)?;
        if !(y.safety_valve_share > 0.0 && y.safety_valve_share <= 1.0) {
            return Err(invalid("sync.safety_valve_share", format!("{} is outside (0, 1]", y.safety_valve_share)));
        }
        y.check_nats_security(&self.nats_url)?;
        self.auth.validate().map_err(|(setting, reason)| invalid(setting, reason))?;
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|(setting, reason)| invalid(setting, reason))?;
        }
        if !self.auth.certs.is_empty() && self.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
            return Err(invalid(
                "auth.certs",
                "principals known by client certificate need mTLS: set tls.client_ca_file (and tls.cert_file, tls.key_file)",
            ));
        }
        // Closed by default once exposed: a node others can reach must say
        // how it authenticates, even if the answer is "off".
        if self.auth.mode.is_none() {
            let exposed = [("grpc_addr", self.grpc_addr), ("http_addr", self.http_addr)]
                .into_iter()
                .find(|(_, a)| !a.ip().is_loopback());
            if let Some((setting, addr)) = exposed {
                return Err(invalid(
                    "auth",
                    format!(
                        "{setting} {addr} is reachable from other hosts and [auth] is not configured: \
                         set auth.mode = \"enforce\" with [[auth.tokens]] (regctl token new makes one), \
                         or auth.mode = \"off\" (--auth-mode off, REGISTRY_AUTH_MODE=off) to serve everyone on purpose"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Cli {
    /// The `--tls-*` flags over `[tls]`: a flag replaces its key; without
    /// `[tls]`, the certificate and the key flags come together.
    fn apply_tls(&self, config: &mut NodeConfig) -> Result<(), ConfigError> {
        let (cert, key, ca) = (&self.tls_cert_file, &self.tls_key_file, &self.tls_client_ca_file);
        if cert.is_none() && key.is_none() && ca.is_none() {
            return Ok(());
        }
        let tls = match (config.tls.take(), cert, key) {
            (Some(t), _, _) => t,
            (None, Some(c), Some(k)) => {
                TlsSettings { cert_file: c.clone(), key_file: k.clone(), client_ca_file: None, client_auth: None }
            }
            (None, _, _) => {
                return Err(invalid(
                    "tls",
                    "--tls-cert-file and --tls-key-file (REGISTRY_TLS_CERT_FILE, REGISTRY_TLS_KEY_FILE) go together",
                ));
            }
        };
        config.tls = Some(TlsSettings {
            cert_file: cert.clone().unwrap_or(tls.cert_file),
            key_file: key.clone().unwrap_or(tls.key_file),
            client_ca_file: ca.clone().or(tls.client_ca_file),
            client_auth: tls.client_auth,
        });
        Ok(())
    }
}
/// Secrets are read from the environment or from files, never from flags
/// (a command line is visible to every user of the host); `--help` lists them.
const SECRETS_HELP: &str = "\
Secrets come from files (settings ending in _file) or from the environment, never from flags:
  REGISTRY_NATS_PASSWORD  the NATS password of sync.user (instead of sync.password_file)
  REGISTRY_NATS_TOKEN     a NATS token (instead of sync.token_file)";

/// Command line of the `registry-node` binary. Each flag can also be given as
/// the `REGISTRY_*` environment variable shown in `--help`.
#[derive(Debug, Default, Parser)]
#[command(name = "registry-node", version, about = "AP service registry node", after_help = SECRETS_HELP)]
pub struct Cli {
    /// TOML configuration file (see config.example.toml).
    #[arg(long, env = "REGISTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Unique node name [default: host name].
    #[arg(long, env = "REGISTRY_NODE_ID")]
    pub node_id: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:7070].
    #[arg(long, env = "REGISTRY_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address for /metrics, /healthz, /readyz [default: 127.0.0.1:7071].
    #[arg(long, env = "REGISTRY_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Serve DNS on this UDP and TCP address (`dns.addr`); off by default.
    #[arg(long, env = "REGISTRY_DNS_ADDR")]
    pub dns_addr: Option<SocketAddr>,
    /// NATS server URL; repeat or comma-separate for several. Absent: standalone.
    #[arg(long, env = "REGISTRY_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,
    /// Cluster name (NATS subject namespace) [default: default].
    #[arg(long, env = "REGISTRY_CLUSTER")]
    pub cluster: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "REGISTRY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address peers and operators are shown for this node (`sync.advertise_addr`)
    /// [default: the gRPC address]. Set it when listening on 0.0.0.0.
    #[arg(long, env = "REGISTRY_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// How requests are authenticated: off, warn or enforce (`auth.mode`).
    #[arg(long, env = "REGISTRY_AUTH_MODE", value_enum)]
    pub auth_mode: Option<AuthMode>,
    /// A TOML file of `[[tokens]]` entries (`auth.tokens_file`).
    #[arg(long, env = "REGISTRY_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// The server certificate chain, PEM (`tls.cert_file`); with
    /// --tls-key-file, both ports speak TLS.
    #[arg(long, env = "REGISTRY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The server's private key, PEM (`tls.key_file`).
    #[arg(long, env = "REGISTRY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates that sign client certificates, PEM
    /// (`tls.client_ca_file`): the node asks clients for one (mTLS).
    #[arg(long, env = "REGISTRY_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// The NATS user this node logs in as (`sync.user`).
    #[arg(long, env = "REGISTRY_NATS_USER")]
    pub nats_user: Option<String>,
    /// A file holding the NATS password of that user (`sync.password_file`).
    #[arg(long, env = "REGISTRY_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// A NATS .creds file: user JWT and nkey seed (`sync.creds_file`).
    #[arg(long, env = "REGISTRY_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// A file holding this node's NATS nkey seed (`sync.nkey_seed_file`).
    #[arg(long, env = "REGISTRY_NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// Validate the configuration, print it as TOML and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl Cli {
    /// Builds the effective configuration: defaults < file < env < flags.
    pub fn load(&self) -> Result<NodeConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.clone(), source: Box::new(e) })?
            }
            None => NodeConfig::default(),
        };
        if let Some(v) = &self.node_id {
            config.node_id = v.clone();
        }
        if let Some(v) = self.grpc_addr {
            config.grpc_addr = v;
        }
        if let Some(v) = self.http_addr {
            config.http_addr = v;
        }
        if let Some(v) = self.dns_addr {
            config.dns.addr = Some(v);
        }
        if !self.nats_url.is_empty() {
            config.nats_url = self.nats_url.clone();
        }
        if let Some(v) = &self.cluster {
            config.cluster = v.clone();
        }
        if let Some(v) = self.log_format {
            config.log_format = v;
        }
        if let Some(v) = &self.advertise_addr {
            config.sync.advertise_addr = Some(v.clone());
        }
        if let Some(v) = self.auth_mode {
            config.auth.mode = Some(v);
        }
        if let Some(v) = &self.auth_tokens_file {
            config.auth.tokens_file = Some(v.clone());
        }
        self.apply_tls(&mut config)?;
        self.override_sync(&mut config.sync);
        config.sync.secrets_from_env(|name| std::env::var(name).ok());
        config.validate()?;
        Ok(config)
    }
}

impl Cli {
    /// The `[sync]` settings given as flags or environment variables.
    fn override_sync(&self, sync: &mut SyncSettings) {
        if let Some(v) = &self.nats_user {
            sync.user = Some(v.clone());
        }
        if let Some(v) = &self.nats_password_file {
            sync.password_file = Some(v.clone());
        }
        if let Some(v) = &self.nats_creds_file {
            sync.creds_file = Some(v.clone());
        }
        if let Some(v) = &self.nats_nkey_seed_file {
            sync.nkey_seed_file = Some(v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("registry-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("node.toml");
        std::fs::write(&path, "node_id = \"from-file\"\ncluster = \"blue\"\n[limits]\nmax_weight = 7\n")
            .expect("write");
        let cli = Cli { config: Some(path), node_id: Some("from-flag".into()), ..Cli::default() };
        let config = cli.load().expect("loads");
        assert_eq!(config.node_id, "from-flag");
        assert_eq!(config.cluster, "blue");
        assert_eq!(config.limits.max_weight, 7);
    }

    #[test]
    fn advertise_addr_flag_sets_the_sync_setting() {
        let cli =
            Cli::try_parse_from(["registry-node", "--advertise-addr", "registry-0.registry:7070"]).expect("parses");
        let config = cli.load().expect("loads");
        assert_eq!(config.sync.advertise_addr.as_deref(), Some("registry-0.registry:7070"));
        let cli = Cli::try_parse_from(["registry-node", "--advertise-addr", "has space:7070"]).expect("parses");
        let err = cli.load().expect_err("refused").to_string();
        assert!(err.contains("sync.advertise_addr"), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut config = NodeConfig { node_id: "a.b".into(), ..NodeConfig::default() };
        let err = config.validate().expect_err("dot refused").to_string();
        assert!(err.contains("node_id"), "{err}");
        config.node_id = "a".into();
        config.sessions.default_heartbeat_ms = 10;
        let err = config.validate().expect_err("below min").to_string();
        assert!(err.contains("sessions.default_heartbeat_ms"), "{err}");
    }

    #[test]
    fn an_exposed_node_without_auth_refuses_to_start() {
        let mut config = NodeConfig { grpc_addr: "0.0.0.0:7070".parse().expect("addr"), ..NodeConfig::default() };
        let err = config.validate().expect_err("exposed, no auth").to_string();
        assert!(err.contains("[auth]") && err.contains("auth.mode = \"off\"") && err.contains("0.0.0.0:7070"), "{err}");
        config.auth.mode = Some(AuthMode::Off);
        config.validate().expect("off on purpose is allowed");
        let loopback = NodeConfig::default();
        assert!(loopback.auth.mode.is_none());
        loopback.validate().expect("loopback needs no auth");
        let cli = Cli::try_parse_from(["registry-node", "--grpc-addr", "0.0.0.0:7070", "--auth-mode", "off"])
            .expect("parses");
        assert_eq!(cli.load().expect("loads").auth.mode, Some(AuthMode::Off));
    }

    fn clustered() -> NodeConfig {
        NodeConfig { nats_url: vec!["nats://127.0.0.1:4222".into()], ..NodeConfig::default() }
    }

    fn refused_setting(config: &NodeConfig) -> String {
        match config.validate() {
            Err(ConfigError::Invalid { setting, reason }) => format!("{setting}: {reason}"),
            other => panic!("expected a refused setting, got {other:?}"),
        }
    }

    #[test]
    fn the_eureka_namespace_follows_the_namespace_rules() {
        let mut config = NodeConfig::default();
        config.eureka.namespace = "team.payments".into();
        assert!(config.validate().is_ok(), "dots are allowed in namespaces");
        config.eureka.namespace = "bad ns".into();
        assert!(refused_setting(&config).starts_with("eureka.namespace: "), "{}", refused_setting(&config));
        config.eureka.namespace = "default".into();
        config.eureka.delta_retention_ms = 10;
        assert!(refused_setting(&config).starts_with("eureka.delta_retention_ms: "));
    }

    #[test]
    fn the_override_retention_is_off_or_at_least_a_second() {
        let mut config = NodeConfig::default();
        config.sessions.status_override_retention_ms = 0;
        config.validate().expect("0: kept until cleared");
        config.sessions.status_override_retention_ms = 999;
        let err = refused_setting(&config);
        assert!(err.starts_with("sessions.status_override_retention_ms: "), "{err}");
        config.sessions.status_override_retention_ms = 86_400_000;
        config.validate().expect("a day");
    }

    #[test]
    fn nats_tls_needs_the_certificate_and_its_key_together() {
        let mut config = clustered();
        config.sync.tls_cert_file = Some("node.pem".into());
        assert!(refused_setting(&config).starts_with("sync.tls_cert_file: needs sync.tls_key_file"));
        config.sync = SyncSettings { tls_key_file: Some("node.key".into()), ..SyncSettings::default() };
        assert!(refused_setting(&config).starts_with("sync.tls_key_file: needs sync.tls_cert_file"));
        config.sync.tls_cert_file = Some("node.pem".into());
        config.sync.tls_ca_file = Some("ca.pem".into());
        config.sync.require_tls = true;
        config.validate().expect("both given");
        let security = config.sync.nats_security();
        assert_eq!(security.tls_client_cert, Some(("node.pem".into(), "node.key".into())));
        assert_eq!(security.tls_ca_file, Some("ca.pem".into()));
        assert!(security.require_tls);
    }

    #[test]
    fn at_most_one_kind_of_nats_credentials() {
        let mut config = clustered();
        config.sync.creds_file = Some("node.creds".into());
        config.validate().expect("one kind");
        config.sync.user = Some("registry-0".into());
        config.sync.password_file = Some("pw".into());
        let err = refused_setting(&config);
        assert!(err.starts_with("sync.user: conflicts with sync.creds_file"), "{err}");
        config.sync = SyncSettings { nkey_seed_file: Some("seed".into()), ..SyncSettings::default() };
        config.sync.token_env = Some(EnvSecret("t".into()));
        let err = refused_setting(&config);
        assert!(err.starts_with("REGISTRY_NATS_TOKEN: conflicts with sync.nkey_seed_file"), "{err}");
        config.sync = SyncSettings { token_file: Some("token".into()), ..SyncSettings::default() };
        config.sync.token_env = Some(EnvSecret("t".into()));
        let err = refused_setting(&config);
        assert!(err.starts_with("sync.token_file: REGISTRY_NATS_TOKEN is set too"), "{err}");
    }

    #[test]
    fn a_nats_user_needs_exactly_one_password() {
        let mut config = clustered();
        config.sync.user = Some("registry-0".into());
        assert!(refused_setting(&config).starts_with("sync.user: needs sync.password_file or REGISTRY_NATS_PASSWORD"));
        config.sync.password_file = Some("pw".into());
        config.validate().expect("user and password file");
        config.sync.password_env = Some(EnvSecret("from-env".into()));
        assert!(refused_setting(&config).starts_with("sync.password_file: REGISTRY_NATS_PASSWORD is set too"));
        config.sync.password_file = None;
        config.validate().expect("user and password from the environment");
        config.sync.user = None;
        assert!(refused_setting(&config).starts_with("sync.user: REGISTRY_NATS_PASSWORD is set but sync.user is not"));
        config.sync = SyncSettings { password_file: Some("pw".into()), ..SyncSettings::default() };
        assert!(refused_setting(&config).starts_with("sync.password_file: needs sync.user"));
        config.sync = SyncSettings {
            user: Some("has space".into()),
            password_file: Some("pw".into()),
            ..SyncSettings::default()
        };
        assert!(refused_setting(&config).starts_with("sync.user: \"has space\" is not a NATS user name"));
    }

    #[test]
    fn credentials_in_a_nats_url_and_in_sync_conflict() {
        let mut config = clustered();
        config.nats_url = vec!["nats://registry-0:pw@nats-1:4222".into()];
        config.validate().expect("a URL with credentials alone still works");
        config.sync.token_file = Some("token".into());
        let err = refused_setting(&config);
        assert!(err.starts_with("nats_url: has credentials in it and sync.token_file is set too"), "{err}");
    }

    #[test]
    fn nats_secrets_from_the_environment_are_never_printed() {
        let mut config = clustered();
        config.sync.user = Some("registry-0".into());
        let env = |name: &str| match name {
            NATS_PASSWORD_ENV => Some("s3cret-from-env".to_string()),
            NATS_TOKEN_ENV => Some(String::new()),
            _ => None,
        };
        config.sync.secrets_from_env(env);
        assert_eq!(config.sync.token_env, None, "empty counts as unset");
        config.validate().expect("user with the password from the environment");
        let printed = toml::to_string_pretty(&config).expect("prints");
        let debug = format!("{config:?} {:?}", config.sync.nats_security());
        for shown in [&printed, &debug] {
            assert!(!shown.contains("s3cret-from-env"), "a secret was shown: {shown}");
        }
        assert!(debug.contains("<redacted>"), "{debug}");
        match config.sync.nats_security().credentials {
            Some(bus_sync::NatsCredentials::UserPassword { user, password: bus_sync::Secret::Value(v) }) => {
                assert_eq!((user.as_str(), v.as_str()), ("registry-0", "s3cret-from-env"));
            }
            other => panic!("expected a user and password, got {other:?}"),
        }
    }

    #[test]
    fn dns_is_off_by_default_and_its_settings_are_checked() {
        let config = NodeConfig::default();
        assert_eq!((config.dns.addr, config.dns.domain.as_str(), config.dns.ttl_s), (None, "registry.internal.", 5));
        let cli = Cli::try_parse_from(["registry-node", "--dns-addr", "127.0.0.1:8600"]).expect("parses");
        assert_eq!(cli.load().expect("loads").dns.addr, Some("127.0.0.1:8600".parse().expect("addr")));
        let refused = |f: fn(&mut DnsSettings)| {
            let mut c = NodeConfig::default();
            f(&mut c.dns);
            match c.validate() {
                Err(ConfigError::Invalid { setting, .. }) => setting,
                other => panic!("expected a refusal, got {other:?}"),
            }
        };
        assert_eq!(refused(|d| d.domain = "bad domain.".into()), "dns.domain");
        assert_eq!(refused(|d| d.domain = "a..b".into()), "dns.domain");
        assert_eq!(refused(|d| d.ttl_s = 100_000), "dns.ttl_s");
        assert_eq!(refused(|d| d.namespaces = vec!["a.b".into()]), "dns.namespaces");
        assert_eq!(refused(|d| d.tcp_idle_timeout_ms = 0), "dns.tcp_idle_timeout_ms");
        assert_eq!(refused(|d| d.max_tcp_connections = 0), "dns.max_tcp_connections");
    }

    #[test]
    fn nats_credential_flags_set_the_sync_settings() {
        let cli = Cli::try_parse_from([
            "registry-node",
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--nats-user",
            "registry-1",
            "--nats-password-file",
            "/run/secrets/nats",
        ])
        .expect("parses");
        let config = cli.load().expect("loads");
        assert_eq!(config.sync.user.as_deref(), Some("registry-1"));
        assert_eq!(config.sync.password_file, Some("/run/secrets/nats".into()));
        let help = Cli::command().render_long_help().to_string();
        for name in [NATS_PASSWORD_ENV, NATS_TOKEN_ENV, "REGISTRY_NATS_PASSWORD_FILE"] {
            assert!(help.contains(name), "--help does not name {name}");
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let err = toml::from_str::<NodeConfig>("node_idd = \"x\"").expect_err("typo refused");
        assert!(err.to_string().contains("node_idd"), "{err}");
    }

    #[test]
    fn tls_comes_from_the_file_or_the_flags_and_certs_need_mtls() {
        let text = "[tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\nclient_ca_file = \"ca.pem\"\nclient_auth = \"required\"\n";
        let c: NodeConfig = toml::from_str(text).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.tls.as_ref().and_then(|t| t.client_auth), Some(crate::listen::ClientAuth::Required));
        assert!(toml::from_str::<NodeConfig>("[tls]\ncert_file = \"s.pem\"\n").is_err(), "key_file is required");
        assert!(
            toml::from_str::<NodeConfig>("[tls]\ncert_file = \"a\"\nkey_file = \"b\"\nclient_auth = \"sometimes\"")
                .is_err()
        );

        let cli = Cli::try_parse_from(["registry-node", "--tls-cert-file", "s.pem"]).expect("parses");
        let err = cli.load().expect_err("a certificate without its key").to_string();
        assert!(err.contains("--tls-key-file"), "{err}");
        let cli = Cli::try_parse_from(["registry-node", "--tls-cert-file", "s.pem", "--tls-key-file", "s.key"])
            .expect("parses");
        let tls = cli.load().expect("loads").tls.expect("tls on");
        assert_eq!((tls.cert_file.to_str(), tls.client_ca_file), (Some("s.pem"), None));

        let mut certs = NodeConfig::default();
        certs.auth.certs = vec![crate::auth::CertEntry { name: "a".into(), subject: "a.prod".into(), grants: vec![] }];
        let err = certs.validate().expect_err("no mTLS").to_string();
        assert!(err.contains("auth.certs") && err.contains("tls.client_ca_file"), "{err}");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        /// A config file made of real section and key names with values of
        /// every shape, right and wrong.
        fn config_text() -> impl Strategy<Value = String> {
            let key = prop::sample::select(vec![
                "node_id",
                "grpc_addr",
                "http_addr",
                "cluster",
                "mode",
                "tokens_file",
                "protect_metrics",
                "audit_file",
                "cert_file",
                "key_file",
                "client_ca_file",
                "client_auth",
                "name",
                "sha256",
                "subject",
                "grants",
                "beat_interval_ms",
                "subject_prefix",
                "max_weight",
                "nats_url",
                "tls_ca_file",
                "tls_cert_file",
                "tls_key_file",
                "require_tls",
                "creds_file",
                "nkey_seed_file",
                "user",
                "password_file",
                "token_file",
            ]);
            let value = prop_oneof![
                "\"[a-z0-9.:*/ -]{0,12}\"".prop_map(|v| v),
                any::<i64>().prop_map(|v| v.to_string()),
                any::<bool>().prop_map(|v| v.to_string()),
                Just("\"0.0.0.0:7070\"".to_string()),
                Just("\"enforce\"".to_string()),
                Just("\"required\"".to_string()),
                Just("[{ namespace = \"*\", services = \"a*\", role = \"write\" }]".to_string()),
                Just("[{ namespace = \"\", services = \"*a\", role = \"root\" }]".to_string()),
                Just("[\"nats://registry-0:pw@127.0.0.1:4222\"]".to_string()),
            ];
            let header = prop::sample::select(vec![
                "",
                "[auth]",
                "[tls]",
                "[[auth.tokens]]",
                "[[auth.certs]]",
                "[sync]",
                "[limits]",
                "[sessions]",
            ]);
            prop::collection::vec((header, key, value), 0..12)
                .prop_map(|lines| lines.into_iter().map(|(h, k, v)| format!("{h}\n{k} = {v}\n")).collect::<String>())
        }

        proptest! {
            /// Any such file is parsed or refused, never a panic; what parses
            /// validates or names the setting it refuses.
            #[test]
            fn any_config_file_is_parsed_or_refused_by_name(text in config_text()) {
                if let Ok(c) = toml::from_str::<NodeConfig>(&text) {
                    match c.validate() {
                        Ok(()) => {}
                        Err(ConfigError::Invalid { setting, reason }) => {
                            prop_assert!(!setting.is_empty() && !reason.is_empty());
                        }
                        Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
                    }
                }
            }

            /// Arbitrary bytes as a config file: refused without a panic.
            #[test]
            fn arbitrary_bytes_are_refused_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let text = String::from_utf8_lossy(&bytes);
                if let Ok(c) = toml::from_str::<NodeConfig>(&text) {
                    let _ = c.validate();
                }
            }
        }
    }
}
