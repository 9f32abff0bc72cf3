//! `regctl`: the registry from the command line.
//!
//! Nodes with auth enabled want a bearer token: `--token` or, better (a
//! command line is visible to every user of the machine), `REGISTRY_TOKEN`.
//! It is sent with every call and never printed. `regctl token new` makes one,
//! with the entry of the node's config that grants it.
//!
//! Nodes serving TLS: `--ca-file` (`REGISTRY_CA_FILE`) names the CA their
//! certificates must chain to; with it, a bare `host:port` endpoint uses TLS
//! (`https://` always does, with the system's roots when no CA is given;
//! `http://` never does). `--cert` and `--key` (`REGISTRY_CERT`,
//! `REGISTRY_KEY`, always together) show a client certificate to nodes that
//! ask for one (mTLS). `--tls-domain` checks node certificates against that
//! name instead of the endpoint's host (nodes reached by IP address).
//!
//! Exit codes scripts can rely on:
//! - 0: done;
//! - 1: not found, or refused by the registry (the message says why);
//! - 2: bad usage (unknown flag, bad endpoint, bad token or grant, `--cert`
//!   without `--key` or the reverse, a TLS file that cannot be read or is not
//!   valid: the message names it);
//! - 69: no registry node available (EX_UNAVAILABLE): unreachable, TLS
//!   handshake failed (the message says `TLS handshake failed` and why: wrong
//!   CA, expired certificate, a name the certificate lacks, a client
//!   certificate refused, a plaintext port), shutting down or still warming
//!   up. Worth a retry once the cause is fixed.
//! - 77: denied (EX_NOPERM): the node does not know the token (`UNAUTHENTICATED`:
//!   none given, unknown or malformed) or its grants do not allow the call
//!   (`PERMISSION_DENIED`). Not worth a retry with the same token.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use registry_client::{Client, ClientConfig, ClientIdentity, Error, InstanceChange, Pem, TlsConfig, WatchEvent, v1};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Talk to a registry cluster.
#[derive(Debug, Parser)]
#[command(name = "regctl", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Registry node to talk to (repeat, or comma-separate, for fail-over).
    #[arg(
        long = "endpoint",
        short = 'e',
        env = "REGISTRY_ENDPOINT",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    endpoints: Vec<String>,
    /// Namespace.
    #[arg(long, short = 'n', env = "REGISTRY_NAMESPACE", default_value = "default", global = true)]
    namespace: String,
    /// Print JSON (one document, or one line per event for `watch`).
    #[arg(long, global = true)]
    json: bool,
    /// Timeout of each request, in ms.
    #[arg(long, default_value_t = 5_000, global = true)]
    timeout_ms: u64,
    /// Bearer token for nodes with auth (sent as `authorization: Bearer ...`,
    /// never printed). Prefer the environment variable: a command line is
    /// visible to other users of the machine.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true, global = true, value_parser = parse_secret)]
    token: Option<Secret>,
    /// CA certificate(s), PEM, that the nodes' certificates must chain to.
    /// With it, a `host:port` endpoint uses TLS (`https://` always does, with
    /// the system's roots when no CA is given; `http://` never does).
    #[arg(long, env = "REGISTRY_CA_FILE", value_name = "PEM_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Client certificate chain, PEM, for nodes that ask for one (mTLS).
    /// Needs --key.
    #[arg(long, env = "REGISTRY_CERT", value_name = "PEM_FILE", requires = "key", global = true)]
    cert: Option<PathBuf>,
    /// Private key, PEM (not encrypted), of --cert. Needs --cert.
    #[arg(long, env = "REGISTRY_KEY", value_name = "PEM_FILE", requires = "cert", global = true)]
    key: Option<PathBuf>,
    /// Name to check the nodes' certificates against instead of the
    /// endpoint's host (nodes reached by IP address).
    #[arg(long, env = "REGISTRY_TLS_DOMAIN", value_name = "NAME", global = true)]
    tls_domain: Option<String>,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 ok; 1 not found or refused; 2 bad usage (including an unreadable or \
                          invalid TLS file); 69 no registry node available (including a failed TLS handshake); \
                          77 denied (no token, unknown token, or no grant for this).";

/// A token from the command line or the environment: its `Debug` does not
/// show it, so neither does `Cli`'s.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Never fails: clap's error would repeat the value. The client checks it
/// (exit 2 without repeating it). Surrounding whitespace (a newline from a
/// file) is dropped; an empty value means no token.
fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.trim().to_string()))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register an instance and hold its session until Ctrl-C (then say goodbye).
    Register {
        service: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        port: u32,
        /// Defaults to host:port.
        #[arg(long)]
        instance_id: Option<String>,
        /// Metadata entry (repeatable).
        #[arg(long = "meta", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove an instance, wherever it is registered.
    Deregister {
        service: String,
        /// The instance id (host:port unless it was registered with another).
        instance_id: String,
    },
    /// Instances of a service.
    Get { service: String },
    /// Services of the namespace.
    List,
    /// Follow a service: one line per change.
    Watch { service: String },
    /// Consumers watching a service.
    Consumers { service: String },
    /// Members of the cluster.
    Members,
    /// Bearer tokens for nodes with auth.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a new token (needs no node). Prints the token once, and the
    /// `[[auth.tokens]]` entry for the nodes' config, which holds only its
    /// SHA-256.
    New {
        /// Who the token is for, as the nodes' logs and denials name it.
        #[arg(long, value_parser = parse_token_name)]
        name: String,
        /// What the token may do: NAMESPACE:SERVICES:ROLE (repeatable).
        /// NAMESPACE is a name or `*`; SERVICES a name, a prefix ending in `*`
        /// (`orders*`) or `*`; ROLE is read, write or admin.
        #[arg(long = "grant", required = true, value_name = "NAMESPACE:SERVICES:ROLE", value_parser = parse_grant)]
        grants: Vec<Grant>,
    },
}

/// One grant of a token, as the node's config spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    namespace: String,
    services: String,
    role: &'static str,
}

const ROLES: [&str; 3] = ["read", "write", "admin"];

/// `NAMESPACE:SERVICES:ROLE`.
fn parse_grant(s: &str) -> Result<Grant, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [namespace, services, role] = parts[..] else {
        return Err("expected NAMESPACE:SERVICES:ROLE, e.g. default:orders*:write".into());
    };
    if namespace != "*" {
        check_name(namespace).map_err(|why| format!("namespace `{namespace}`: {why}; or `*` for every namespace"))?;
    }
    if services != "*" {
        let name = services.strip_suffix('*').unwrap_or(services);
        check_name(name).map_err(|why| {
            format!("services `{services}`: {why}; a name, a prefix ending in `*` (orders*), or `*` for every service")
        })?;
    }
    let role = ROLES
        .iter()
        .find(|r| **r == role)
        .ok_or_else(|| format!("role `{role}`: expected one of {}", ROLES.join(", ")))?;
    Ok(Grant { namespace: namespace.into(), services: services.into(), role })
}

/// A namespace or service name as the registry takes it: `[A-Za-z0-9._-]`,
/// starting with a letter or digit.
fn check_name(name: &str) -> Result<(), String> {
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or digit".into());
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some(c) => Err(format!("character {c:?} not allowed (use A-Z a-z 0-9 . _ -)")),
        None => Ok(()),
    }
}

/// A token's name: not blank, printable, no quotes.
fn parse_token_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || matches!(c, '"' | '\'' | '`')) {
        return Err(format!("character {c:?} not allowed (printable characters, no quotes)"));
    }
    Ok(s.to_string())
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected key=value"))?;
    Ok((k.to_string(), v.to_string()))
}

/// `println!` that does not panic when stdout is closed (`regctl watch | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_DENIED: u8 = 77;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("REGCTL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    let token_given = cli.token.as_ref().is_some_and(|t| !t.0.is_empty());
    let cert_given = cli.cert.is_some();
    let tls = tls_config(&cli);
    let tls_in_use = cli.endpoints.iter().any(|e| tls.uses_tls(e));
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let error = e.downcast_ref::<Error>();
            let code = match error {
                Some(Error::Unavailable { .. }) => EXIT_UNAVAILABLE,
                Some(
                    Error::NoEndpoints | Error::InvalidEndpoint { .. } | Error::InvalidToken | Error::InvalidTls { .. },
                ) => EXIT_USAGE,
                Some(e) if e.is_denied() => EXIT_DENIED,
                _ => EXIT_NOT_FOUND,
            };
            let hint = error.and_then(|e| denied_hint(e, token_given, cert_given).or_else(|| tls_hint(e, tls_in_use)));
            if json {
                let mut doc = json!({ "error": format!("{e:#}"), "exit_code": code });
                if let Some(hint) = hint {
                    doc["hint"] = hint.into();
                }
                out!("{doc}");
            }
            eprintln!("regctl: {e:#}");
            if let Some(hint) = hint {
                eprintln!("regctl: {hint}");
            }
            ExitCode::from(code)
        }
    }
}

/// The TLS settings of the flags: files, read by `Client::new`.
fn tls_config(cli: &Cli) -> TlsConfig {
    TlsConfig {
        ca: cli.ca_file.clone().map(Pem::File),
        // clap makes sure both or neither are given.
        identity: cli
            .cert
            .clone()
            .zip(cli.key.clone())
            .map(|(cert, key)| ClientIdentity { cert_chain: Pem::File(cert), key: Pem::File(key) }),
        domain: cli.tls_domain.clone(),
    }
}

/// What a closed TLS connection may mean (`None` otherwise). Under TLS 1.3
/// a node refuses a client certificate (or its absence) after the client's
/// side of the handshake: the library names TLS when the node's alert
/// arrives first, but the connection may be torn down before it is read.
fn tls_hint(e: &Error, tls_in_use: bool) -> Option<&'static str> {
    match e {
        // Not for a node that cannot be reached at all.
        Error::Unavailable { last }
            if tls_in_use && !last.contains("TLS handshake failed") && !last.contains("tcp connect error") =>
        {
            Some(
                "the endpoints use TLS: if the node closed the connection right after the handshake, it may want \
                 a client certificate it trusts (--cert and --key)",
            )
        }
        _ => None,
    }
}

/// What to do about a denial (`None` for other errors).
fn denied_hint(e: &Error, token_given: bool, cert_given: bool) -> Option<&'static str> {
    match e {
        Error::Unauthenticated(_) if token_given => {
            Some("the node does not accept this token (unknown, revoked or malformed); check --token / REGISTRY_TOKEN")
        }
        Error::Unauthenticated(_) if cert_given => Some(
            "the node does not know this client certificate's subject; give a token with --token or REGISTRY_TOKEN, \
             or ask for the certificate to be granted",
        ),
        Error::Unauthenticated(_) => Some(
            "the node requires credentials: a token (--token or REGISTRY_TOKEN) or a client certificate (--cert and --key)",
        ),
        Error::PermissionDenied(_) => {
            Some("the token's grants do not allow this; ask for a grant (`regctl token new --grant ...`)")
        }
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Token { command: TokenCommand::New { name, grants } } = &cli.command {
        return token_new(name, grants, cli.json);
    }
    let tls = tls_config(&cli);
    let mut config = ClientConfig::new(cli.endpoints)
        .namespace(cli.namespace)
        .client_name("regctl")
        .request_timeout(Duration::from_millis(cli.timeout_ms))
        .in_order(true);
    if let Some(Secret(token)) = cli.token
        && !token.is_empty()
    {
        config = config.token(token);
    }
    config.tls = tls;
    // Listened for from the start: a signal that comes just after a command
    // said it waits for one (a script reads that line and sends it at once)
    // must end the command cleanly, not kill it.
    let mut signals = Signals::new()?;
    let client = Client::new(config)?;
    let json = cli.json;
    match cli.command {
        Command::Register { service, host, port, instance_id, meta, zone, weight } => {
            let instance = v1::Instance {
                service,
                instance_id: instance_id.unwrap_or_default(),
                host,
                port,
                metadata: meta.into_iter().collect(),
                weight,
                zone: zone.unwrap_or_default(),
                ..Default::default()
            };
            let provider = client.register([instance]).await?;
            let registered = provider.instances();
            let node = provider.state().borrow().node_id.clone().unwrap_or_default();
            if json {
                out!(
                    "{}",
                    json!({ "registered": registered.iter().map(instance_json).collect::<Vec<_>>(), "node_id": node })
                );
            } else {
                for i in &registered {
                    out!(
                        "registered {}/{} at {}:{} on node {node}; Ctrl-C to deregister",
                        i.service,
                        i.instance_id,
                        i.host,
                        i.port
                    );
                }
            }
            signals.recv().await;
            provider.shutdown().await;
            if !json {
                out!("deregistered");
            }
        }
        Command::Deregister { service, instance_id } => {
            if !client.deregister_instance(&service, &instance_id).await? {
                return Err(Error::NotFound(format!("{service}/{instance_id} is not registered")).into());
            }
            if json {
                out!("{}", json!({ "deregistered": { "service": service, "instance_id": instance_id } }));
            } else {
                out!("deregistered {service}/{instance_id}");
            }
        }
        Command::Get { service } => {
            let r = client.get_service(&service).await?;
            if json {
                let instances: Vec<Value> = r.instances.iter().map(instance_json).collect();
                out!(
                    "{}",
                    json!({ "namespace": r.namespace, "service": r.service, "revision": r.revision, "instances": instances })
                );
            } else {
                let rows = r.instances.iter().map(instance_row).collect();
                print_table(&["INSTANCE", "ADDRESS", "STATUS", "WEIGHT", "ZONE", "METADATA"], rows);
            }
        }
        Command::List => {
            let r = client.list_services().await?;
            if json {
                let services: Vec<Value> = r
                    .services
                    .iter()
                    .map(|s| json!({ "service": s.service, "instances": s.instance_count, "revision": s.revision }))
                    .collect();
                out!("{}", json!({ "namespace": r.namespace, "services": services }));
            } else {
                let rows = r
                    .services
                    .iter()
                    .map(|s| vec![s.service.clone(), s.instance_count.to_string(), s.revision.to_string()])
                    .collect();
                print_table(&["SERVICE", "INSTANCES", "REVISION"], rows);
            }
        }
        Command::Consumers { service } => {
            let r = client.list_consumers(&service).await?;
            if json {
                let consumers: Vec<Value> = r
                    .consumers
                    .iter()
                    .map(|c| {
                        let info = c.info.clone().unwrap_or_default();
                        json!({ "consumer_id": info.consumer_id, "host": info.host, "node_id": c.node_id, "services": c.services, "since_unix_ms": c.since_unix_ms })
                    })
                    .collect();
                out!("{}", json!({ "consumers": consumers }));
            } else {
                let rows = r
                    .consumers
                    .iter()
                    .map(|c| {
                        let info = c.info.clone().unwrap_or_default();
                        vec![info.consumer_id, info.host, c.node_id.clone(), c.services.join(",")]
                    })
                    .collect();
                print_table(&["CONSUMER", "HOST", "NODE", "SERVICES"], rows);
            }
        }
        Command::Members => {
            let r = client.members().await?;
            if json {
                let members: Vec<Value> = r.members.iter().map(member_json).collect();
                out!("{}", json!({ "cluster": r.cluster, "members": members }));
            } else {
                print_table(&MEMBER_COLUMNS, r.members.iter().map(member_row).collect());
            }
        }
        // Done above: needs no node.
        Command::Token { .. } => {}
        Command::Watch { service } => {
            let watch = client.watch(&service).await?;
            let mut events = watch.events();
            let view = watch.current();
            for i in view.instances.values() {
                print_event(json, "added", Some(i), &view.endpoint);
            }
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(WatchEvent::Changed(InstanceChange::Added(i))) => print_event(json, "added", Some(&i), ""),
                        Ok(WatchEvent::Changed(InstanceChange::Updated(i))) => print_event(json, "updated", Some(&i), ""),
                        Ok(WatchEvent::Changed(InstanceChange::Removed(i))) => print_event(json, "removed", Some(&i), ""),
                        Ok(WatchEvent::Disconnected { reason }) => print_event(json, "stale", None, &reason),
                        Ok(WatchEvent::Synced { endpoint }) => print_event(json, "synced", None, &endpoint),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => print_event(json, "lagged", None, &n.to_string()),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = signals.recv() => break,
                }
            }
        }
    }
    Ok(())
}

/// `regctl token new`: a fresh token, shown once, and the node's config entry
/// for it.
fn token_new(name: &str, grants: &[Grant], json: bool) -> anyhow::Result<()> {
    let token = new_token()?;
    let sha256 = sha256_hex(&token);
    if json {
        let grants: Vec<Value> = grants
            .iter()
            .map(|g| json!({ "namespace": g.namespace, "services": g.services, "role": g.role }))
            .collect();
        out!("{}", json!({ "name": name, "token": token, "sha256": sha256, "grants": grants }));
    } else {
        out!("token: {token}   (shown once; store it in your secret manager)");
        out!();
        out!("{}", auth_toml(name, &sha256, grants).trim_end());
    }
    Ok(())
}

/// What every token starts with: a token never begins with `-` (base64url
/// can, and `--token -x…` would read as a flag), and a leaked one is easy to
/// find in logs and repositories, as secret scanners look for such prefixes.
const TOKEN_PREFIX: &str = "rgt_";

/// [`TOKEN_PREFIX`], then 32 bytes from the OS's random number generator,
/// base64url without padding.
fn new_token() -> anyhow::Result<String> {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).context("reading the OS random number generator")?;
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// The lowercase hex SHA-256 of `token`: what a node's config holds.
fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The `[[auth.tokens]]` entry of the node's config.
fn auth_toml(name: &str, sha256: &str, grants: &[Grant]) -> String {
    let grant = |g: &Grant| {
        format!(
            "{{ namespace = {}, services = {}, role = {} }}",
            toml_string(&g.namespace),
            toml_string(&g.services),
            toml_string(g.role)
        )
    };
    let grants = match grants {
        [one] => format!("[{}]", grant(one)),
        many => format!("[\n{}]", many.iter().map(|g| format!("  {},\n", grant(g))).collect::<String>()),
    };
    format!("[[auth.tokens]]\nname = {}\nsha256 = {}\ngrants = {grants}\n", toml_string(name), toml_string(sha256))
}

/// `s` as a TOML basic string, quoted and escaped.
fn toml_string(s: &str) -> String {
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// SIGINT (Ctrl-C) and SIGTERM, each registered once.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        })
    }

    /// Waits for either; a signal received before this call counts.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

fn status_name(i: &v1::Instance) -> String {
    i.status().effective().as_str_name().trim_start_matches("STATUS_").to_lowercase()
}

fn instance_json(i: &v1::Instance) -> Value {
    json!({
        "namespace": i.namespace, "service": i.service, "instance_id": i.instance_id, "host": i.host, "port": i.port,
        "status": status_name(i), "weight": registry_client::weight_of(i), "zone": i.zone, "metadata": i.metadata,
    })
}

fn instance_row(i: &v1::Instance) -> Vec<String> {
    let mut meta: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    meta.sort();
    vec![
        i.instance_id.clone(),
        format!("{}:{}", i.host, i.port),
        status_name(i),
        registry_client::weight_of(i).to_string(),
        i.zone.clone(),
        meta.join(","),
    ]
}

/// Columns of `regctl members`: the sync state of every node at a glance.
const MEMBER_COLUMNS: [&str; 9] =
    ["NODE", "STATE", "ADDRESS", "READY", "RECORDS", "LAG", "DIGEST", "LAST_BEAT", "SYNC"];

fn member_state(m: &v1::Member) -> String {
    m.state().as_str_name().trim_start_matches("MEMBER_STATE_").to_lowercase()
}

/// Changes the member issued that the answering node has not applied.
fn member_lag(m: &v1::Member) -> u64 {
    m.origin_seq.saturating_sub(m.applied_seq)
}

/// One word for the answering node's copy of a member: `self` (its own
/// entry), `gone` (it left: its copy is kept until the orphan grace ends),
/// `lagging` (changes not applied yet), `diverged` (caught up but the
/// digests differ: a full resync follows), or `in-sync`.
fn member_sync(m: &v1::Member) -> &'static str {
    if m.state() == v1::MemberState::Local {
        "self"
    } else if m.state() == v1::MemberState::Left {
        "gone"
    } else if member_lag(m) > 0 {
        "lagging"
    } else if !m.digest_match {
        "diverged"
    } else {
        "in-sync"
    }
}

fn member_row(m: &v1::Member) -> Vec<String> {
    let local = m.state() == v1::MemberState::Local;
    let lag = member_lag(m);
    // Digests are compared only once the copy has caught up.
    let digest = if lag > 0 {
        "-"
    } else if m.digest_match {
        "match"
    } else {
        "DIFFERS"
    };
    let beat = if local { "-".to_string() } else { format!("{:.1}s", m.last_beat_age_ms as f64 / 1000.0) };
    vec![
        m.node_id.clone(),
        member_state(m),
        m.advertise_addr.clone(),
        m.ready.to_string(),
        m.record_count.to_string(),
        lag.to_string(),
        digest.to_string(),
        beat,
        member_sync(m).to_string(),
    ]
}

fn member_json(m: &v1::Member) -> Value {
    let lag = member_lag(m);
    json!({
        "node_id": m.node_id, "state": member_state(m), "address": m.advertise_addr, "ready": m.ready,
        "records": m.record_count, "origin_seq": m.origin_seq, "applied_seq": m.applied_seq, "lag": lag,
        "digest_match": m.digest_match, "in_sync": m.digest_match && lag == 0, "sync": member_sync(m),
        "last_beat_age_ms": m.last_beat_age_ms, "incarnation": m.incarnation,
    })
}

fn print_event(json: bool, event: &str, instance: Option<&v1::Instance>, detail: &str) {
    if json {
        out!("{}", json!({ "event": event, "instance": instance.map(instance_json), "detail": detail }));
    } else {
        match instance {
            Some(i) => out!("{event} {} {}:{} {}", i.instance_id, i.host, i.port, status_name(i)),
            None => out!("{event} {detail}"),
        }
    }
}

/// Left-aligned columns, two spaces apart.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_checked() {
        let g = parse_grant("default:orders*:write").expect("valid");
        assert_eq!(g, Grant { namespace: "default".into(), services: "orders*".into(), role: "write" });
        for ok in ["*:*:admin", "prod:orders:read", "a.b-c_d:x*:read", "default:*:write"] {
            assert!(parse_grant(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("default:orders", "NAMESPACE:SERVICES:ROLE"),
            ("default:orders:write:x", "NAMESPACE:SERVICES:ROLE"),
            ("default:orders:owner", "role `owner`"),
            ("default:orders:Write", "role"),
            (":orders:read", "namespace"),
            ("pr*d:orders:read", "namespace"),
            ("default::read", "services"),
            ("default:*orders:read", "services"),
            ("default:or*ders:read", "services"),
            ("default:orders**:read", "services"),
            ("default:-x:read", "services"),
            ("default:a b:read", "services"),
        ] {
            let e = parse_grant(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn token_names_are_checked() {
        assert_eq!(parse_token_name("orders team é").as_deref(), Ok("orders team é"));
        for bad in ["", "  ", "a\"b", "it's", "new\nline", "tab\t"] {
            assert!(parse_token_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("orders*"), "\"orders*\"");
        assert_eq!(toml_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn the_config_entry_lists_every_grant() {
        let one = [parse_grant("default:orders*:write").expect("valid")];
        assert_eq!(
            auth_toml("orders-team", "ab", &one),
            "[[auth.tokens]]\nname = \"orders-team\"\nsha256 = \"ab\"\n\
             grants = [{ namespace = \"default\", services = \"orders*\", role = \"write\" }]\n"
        );
        let two = [one[0].clone(), parse_grant("*:*:read").expect("valid")];
        assert!(auth_toml("x", "ab", &two).ends_with(
            "grants = [\n  { namespace = \"default\", services = \"orders*\", role = \"write\" },\n  \
             { namespace = \"*\", services = \"*\", role = \"read\" },\n]\n"
        ));
    }

    #[test]
    fn tokens_are_32_random_bytes_in_base64url() {
        let (a, b) = (new_token().expect("token"), new_token().expect("token"));
        assert_ne!(a, b);
        let body = a.strip_prefix(TOKEN_PREFIX).expect("prefixed, so never read as a flag");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).expect("base64url");
        assert_eq!(bytes.len(), 32);
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let secret = new_token().expect("token");
        let cli = Cli::try_parse_from(["regctl", "--token", &secret, "list"]).expect("parses");
        assert!(!format!("{cli:?}").contains(&secret));
        assert_eq!(cli.token.map(|t| t.0), Some(secret));
    }

    #[test]
    fn cert_and_key_come_together() {
        use clap::error::ErrorKind;

        for args in [&["regctl", "--cert", "c.pem", "list"][..], &["regctl", "list", "--key", "c.key"]] {
            let e = Cli::try_parse_from(args).expect_err("one without the other");
            assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument, "{args:?}");
            assert_eq!(e.exit_code(), i32::from(EXIT_USAGE));
        }
        let cli = Cli::try_parse_from(["regctl", "list", "--cert", "c.pem", "--key", "c.key", "--ca-file", "ca.pem"])
            .expect("both, after the subcommand too");
        assert_eq!(cli.cert, Some(PathBuf::from("c.pem")));
        assert_eq!(cli.key, Some(PathBuf::from("c.key")));
        assert_eq!(cli.ca_file, Some(PathBuf::from("ca.pem")));
    }

    fn peer(origin_seq: u64, applied_seq: u64, digest_match: bool) -> v1::Member {
        v1::Member {
            node_id: "b".into(),
            state: v1::MemberState::Live as i32,
            advertise_addr: "10.0.0.2:7070".into(),
            last_beat_age_ms: 250,
            origin_seq,
            applied_seq,
            record_count: 42,
            digest_match,
            ready: true,
            ..Default::default()
        }
    }

    #[test]
    fn members_rows_show_lag_digest_and_sync_at_a_glance() {
        let row = member_row(&peer(10, 10, true));
        assert_eq!(row, ["b", "live", "10.0.0.2:7070", "true", "42", "0", "match", "0.2s", "in-sync"]);
        let row = member_row(&peer(15, 10, false));
        assert_eq!(&row[5..], ["5", "-", "0.2s", "lagging"], "a lagging copy is not called diverged");
        let row = member_row(&peer(10, 10, false));
        assert_eq!(&row[5..], ["0", "DIFFERS", "0.2s", "diverged"]);
        let me = v1::Member { state: v1::MemberState::Local as i32, ..peer(7, 7, true) };
        assert_eq!(&member_row(&me)[5..], ["0", "match", "-", "self"]);
        let left = v1::Member { state: v1::MemberState::Left as i32, ..peer(15, 10, false) };
        assert_eq!(&member_row(&left)[..2], ["b", "left"]);
        assert_eq!(member_row(&left)[8], "gone", "a departed node's copy is not lagging");
        let j = member_json(&peer(15, 10, false));
        assert_eq!(
            (j["lag"].as_u64(), j["in_sync"].as_bool(), j["sync"].as_str()),
            (Some(5), Some(false), Some("lagging"))
        );
    }
}
