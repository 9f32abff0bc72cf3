//! The NATS shell around the [`Runtime`]: one task owns the connection and
//! the subscriptions, turns what arrives (messages, request outcomes, NATS
//! events, the node's "own slice changed", the tick) into [`Input`]s for the
//! runtime, and writes what the runtime queued on the `NatsTransport` after
//! each step. Publish errors, reconnect gaps and slow-consumer drops are all
//! possible loss; the protocol repairs them from beats, so here they are only
//! counted.
//!
//! Subjects: see [`crate::runtime`].
//!
//! Security ([`NatsSecurity`]): TLS to the servers (a CA, a client
//! certificate, TLS required) and one kind of credentials (a `.creds` file,
//! an nkey seed, a user and password, or a token). Files are read and checked
//! when the task starts, so a missing or malformed one stops the node with an
//! error naming it, rather than failing each reconnect. They are read again
//! at each connect (credentials by the login callback, certificates by the
//! client), so rotated ones are used from the next reconnect on: a `.creds`
//! file renewed before its JWT expires (the server then disconnects the old
//! one), a new password or token, a renewed certificate.
//! Replies to this node's requests come under its own inbox prefix
//! ([`Subjects::inbox`]), so its NATS user may be allowed to read only those.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use registry_store::Origin;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::runtime::{Answer, Input, Replica, Runtime, RuntimeConfig, Subjects, SyncShared, Transport};
use crate::wire::{self, Reply};

/// How to reach NATS and what to call things there.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    /// TLS and credentials.
    pub security: NatsSecurity,
    /// The runtime's settings (subjects, timers, transfers).
    pub runtime: RuntimeConfig,
}

/// How the connection to NATS is protected and how this node proves who it
/// is. The default: plain TCP unless the server or a `tls://` URL asks for
/// TLS, and no credentials (or a user and password given in a URL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    /// CA certificates (PEM) the servers' certificates must chain to
    /// (default: the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM files), for servers that
    /// verify clients.
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse to talk to a server without TLS.
    pub require_tls: bool,
    pub credentials: Option<NatsCredentials>,
}

/// One way of logging in to NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsCredentials {
    /// A `.creds` file: a user JWT and its nkey seed (NATS accounts, `nsc`).
    CredsFile(PathBuf),
    /// An nkey seed (`SU...`), for a server that lists the user's public key.
    NkeySeed(Secret),
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
}

/// A secret: a file read at every connect (so a rotated one is used from the
/// next reconnect), or a value already known (taken from the environment).
/// Its `Debug` never shows a value.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    File(PathBuf),
    Value(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl Secret {
    /// The secret, without the line end a file usually has. `what` names it
    /// in the error.
    fn read(&self, what: &'static str) -> Result<String, SyncError> {
        let value = match self {
            Self::Value(v) => v.clone(),
            Self::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| file_error(what, path, e))?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
        };
        if value.is_empty() {
            return Err(self.error(what, "is empty".into()));
        }
        Ok(value)
    }

    /// What is wrong with the secret, naming its file (a value is never shown).
    fn error(&self, what: &'static str, reason: String) -> SyncError {
        match self {
            Self::File(path) => SyncError::File { what, path: path.clone(), reason },
            Self::Value(_) => SyncError::Secret { what, reason },
        }
    }
}

fn file_error(what: &'static str, path: &Path, e: impl fmt::Display) -> SyncError {
    SyncError::File { what, path: path.to_path_buf(), reason: e.to_string() }
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("NATS: {0}")]
    Connect(String),
    #[error("NATS subscribe to {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
    /// A file of [`NatsSecurity`] that cannot be read or is not what it
    /// should be.
    #[error("NATS {what} {}: {reason}", path.display())]
    File { what: &'static str, path: PathBuf, reason: String },
    /// A secret given as a value that cannot be used (never shown).
    #[error("NATS {what}: {reason}")]
    Secret { what: &'static str, reason: String },
}

/// The running replication task.
#[derive(Debug)]
pub struct SyncHandle {
    pub shared: Arc<SyncShared>,
    task: JoinHandle<()>,
}

impl SyncHandle {
    /// Waits for the task to end (after its stop token was cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Ends the task at once: nothing more is published, and the NATS
    /// connection closes as if the process had died.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// A user and password given in a NATS URL (`nats://user:pass@host:4222`).
/// The client library connects to such a URL without them, so they are
/// handed over as options (the first URL that has them wins).
fn url_credentials(urls: &[String]) -> Option<(String, String)> {
    urls.iter().find_map(|u| {
        let addr: async_nats::ServerAddr = u.parse().ok()?;
        Some((addr.username()?.to_string(), addr.password()?.to_string()))
    })
}

/// The options to start from: with credentials, a login callback that
/// reads them at each connect ([`login`]), so rotated files are used from
/// the next reconnect on without a restart.
fn login_options(credentials: Option<&NatsCredentials>) -> async_nats::ConnectOptions {
    let Some(credentials) = credentials.cloned() else { return async_nats::ConnectOptions::new() };
    let credentials = Arc::new(credentials);
    async_nats::ConnectOptions::with_auth_callback(move |nonce| {
        let credentials = credentials.clone();
        async move {
            login(&credentials, &nonce).map_err(|e| {
                warn!(error = %e, "cannot log in to NATS: the next reconnect reads the credentials again");
                async_nats::AuthError::new(e)
            })
        }
    })
}

/// What this node sends NATS to log in, read from the credentials' files
/// now: the user JWT and the nonce signed with its seed, the nkey and the
/// nonce signed, a user and password, or a token.
fn login(credentials: &NatsCredentials, nonce: &[u8]) -> Result<async_nats::Auth, SyncError> {
    let mut auth = async_nats::Auth::new();
    let sign = |key: &nkeys::KeyPair| key.sign(nonce).map_err(|e| format!("cannot sign the server's nonce: {e}"));
    match credentials {
        NatsCredentials::CredsFile(path) => {
            let what = "credentials file";
            let text = std::fs::read_to_string(path).map_err(|e| file_error(what, path, e))?;
            let (jwt, seed) = creds_parts(&text)
                .ok_or_else(|| file_error(what, path, "holds no user JWT and nkey seed (the format nsc writes)"))?;
            let key = nkeys::KeyPair::from_seed(seed)
                .map_err(|e| file_error(what, path, format!("its seed is not an nkey seed: {e}")))?;
            auth.signature = Some(sign(&key).map_err(|reason| file_error(what, path, reason))?);
            auth.jwt = Some(jwt.to_string());
        }
        NatsCredentials::NkeySeed(seed) => {
            let what = "nkey seed";
            let value = seed.read(what)?;
            let key = nkeys::KeyPair::from_seed(value.trim())
                .map_err(|e| seed.error(what, format!("not an nkey seed: {e}")))?;
            auth.signature = Some(sign(&key).map_err(|reason| seed.error(what, reason))?);
            auth.nkey = Some(key.public_key());
        }
        NatsCredentials::UserPassword { user, password } => {
            auth.username = Some(user.clone());
            auth.password = Some(password.read("password")?);
        }
        NatsCredentials::Token(token) => auth.token = Some(token.read("token")?),
    }
    Ok(auth)
}

/// The user JWT and the nkey seed of a `.creds` file: the first and second
/// blocks between dashed lines, as `nsc` writes them.
fn creds_parts(text: &str) -> Option<(&str, &str)> {
    let dashed = |l: &str| l.len() > 6 && l.starts_with("---") && l.ends_with("---");
    let mut lines = text.lines().map(str::trim);
    let mut block = || {
        lines.by_ref().find(|l| dashed(l) && l.contains("BEGIN"))?;
        let value = lines.next().filter(|v| !v.is_empty() && !dashed(v))?;
        lines.next().filter(|l| dashed(l) && l.contains("END"))?;
        Some(value)
    };
    let jwt = block()?;
    let seed = block()?;
    Some((jwt, seed))
}

/// Checks the files of `security` (the client and [`login`] read them
/// again at each connect) and sets the options: TLS, then a URL's user and
/// password when no credentials are configured.
fn secure(
    options: async_nats::ConnectOptions,
    security: &NatsSecurity,
    urls: &[String],
) -> Result<async_nats::ConnectOptions, SyncError> {
    use async_nats::rustls::pki_types::pem::PemObject as _;
    use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certificates = |what: &'static str, path: &Path| {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_error(what, path, e))?;
        if certs.is_empty() {
            return Err(file_error(what, path, "holds no PEM certificate"));
        }
        Ok(())
    };
    let mut options = options.require_tls(security.require_tls);
    if let Some(ca) = &security.tls_ca_file {
        certificates("CA file", ca)?;
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &security.tls_client_cert {
        certificates("client certificate", cert)?;
        PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("client key", key, e))?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(match &security.credentials {
        // Set by `login_options`; checked here so that a bad file stops the start.
        Some(credentials) => {
            login(credentials, b"checking the credentials at start")?;
            options
        }
        None => match url_credentials(urls) {
            Some((user, password)) => options.user_and_password(user, password),
            None => options,
        },
    })
}

enum Event {
    Connected,
    Disconnected,
    SlowConsumer,
}

/// A message the runtime queued, written after its step.
struct Outgoing {
    subject: Subject,
    payload: Bytes,
    /// A reply to a sync request (only the log line differs).
    reply: bool,
}

/// The runtime's way onto NATS. Publishes and small replies are queued and
/// written in order by [`NatsTransport::flush`] after each step, so a beat
/// never overtakes the changes it covers; requests and page replies run as
/// tasks, off the protocol loop.
struct NatsTransport {
    client: async_nats::Client,
    shared: Arc<SyncShared>,
    queue: Vec<Outgoing>,
    /// Requests in flight and pages being sent.
    tasks: JoinSet<()>,
    answers: mpsc::Sender<(u64, Answer)>,
    request_timeout: Duration,
}

impl Transport for NatsTransport {
    type ReplyTo = Subject;

    fn publish(&mut self, subject: &str, payload: Bytes) {
        self.queue.push(Outgoing { subject: Subject::from(subject), payload, reply: false });
    }

    fn request(&mut self, id: u64, subject: &str, payload: Bytes) {
        let client = self.client.clone();
        let tx = self.answers.clone();
        let timeout = self.request_timeout;
        let subject = subject.to_string();
        self.tasks.spawn(async move {
            // Decoded here, on whichever worker runs this task, so a large
            // page does not hold up the protocol loop.
            let answer = match tokio::time::timeout(timeout, client.request(subject, payload)).await {
                Ok(Ok(msg)) => Answer::decode(&msg.payload),
                _ => Answer::Failed,
            };
            let _ = tx.send((id, answer)).await;
        });
        // Reap finished tasks so the set stays small.
        while self.tasks.try_join_next().is_some() {}
    }

    fn respond(&mut self, reply_to: Subject, reply: Reply) {
        if !matches!(reply, Reply::Page(_)) {
            let payload = Bytes::from(wire::encode(&wire::reply_to_wire(&reply)));
            self.queue.push(Outgoing { subject: reply_to, payload, reply: true });
            return;
        }
        // Encoding a page is the bulk of serving a slice: off the protocol loop.
        let client = self.client.clone();
        let shared = self.shared.clone();
        self.tasks.spawn(async move {
            let payload = Bytes::from(wire::encode(&wire::reply_to_wire(&reply)));
            if let Err(e) = client.publish(reply_to, payload).await {
                shared.metrics.publish_errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "could not send a sync reply");
            }
        });
    }

    fn max_payload(&self) -> usize {
        // 0 until the server has said.
        match self.client.server_info().max_payload {
            0 => 1 << 20,
            n => n,
        }
    }
}

impl NatsTransport {
    /// Writes what the last step queued, in order.
    async fn flush(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        for out in queue.drain(..) {
            if let Err(e) = self.client.publish(out.subject, out.payload).await {
                self.shared.metrics.publish_errors.fetch_add(1, Ordering::Relaxed);
                if out.reply {
                    debug!(error = %e, "could not send a sync reply");
                } else {
                    debug!(error = %e, "publish failed; peers will repair from beats");
                }
            }
        }
        // Keep the allocation for the next step.
        self.queue = queue;
    }
}

/// Connects to NATS and starts replicating. The connection is retried in the
/// background forever; until it is up the node is simply cut off.
pub async fn spawn_sync<R: Replica>(
    replica: Arc<R>,
    me: Origin,
    cfg: NatsConfig,
    stop: CancellationToken,
) -> Result<SyncHandle, SyncError> {
    let (events_tx, events_rx) = mpsc::channel(64);
    let shared = Arc::new(SyncShared::default());
    let errors = shared.clone();
    let subjects = Subjects::new(&cfg.runtime.subject_prefix, &cfg.runtime.cluster, &me.node);
    let options = login_options(cfg.security.credentials.as_ref())
        .name(format!("registry-node {}", me.node))
        .custom_inbox_prefix(&subjects.inbox)
        .retry_on_initial_connect()
        .max_reconnects(None)
        // The first attempt counts as 1: connect at once, then back off.
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100 * (attempt as u64).saturating_sub(1)).min(2_000))
        })
        .request_timeout(Some(Duration::from_millis(cfg.runtime.sync.request_timeout_ms)))
        .subscription_capacity(1 << 16)
        .event_callback(move |event| {
            let tx = events_tx.clone();
            let errors = errors.clone();
            async move {
                let e = match event {
                    async_nats::Event::Connected => Event::Connected,
                    async_nats::Event::Disconnected => Event::Disconnected,
                    async_nats::Event::SlowConsumer(_) => Event::SlowConsumer,
                    // Refused logins and publishes: this node's NATS user
                    // or the server's permissions are wrong, and peers will
                    // not hear what was refused.
                    async_nats::Event::ServerError(e) => {
                        let n = errors.metrics.server_errors.fetch_add(1, Ordering::Relaxed) + 1;
                        // The 1st, 2nd, 4th...: one refused beat a second must not flood the log.
                        if n.is_power_of_two() {
                            warn!(error = %e, errors = n, "NATS refused this node: check its NATS user and permissions");
                        }
                        return;
                    }
                    other => {
                        debug!(event = %other, "NATS event");
                        return;
                    }
                };
                let _ = tx.send(e).await;
            }
        });
    let options = secure(options, &cfg.security, &cfg.urls)?;
    let client = options.connect(cfg.urls.clone()).await.map_err(|e| SyncError::Connect(e.to_string()))?;
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            client.subscribe(subject.clone()).await.map_err(|e| SyncError::Subscribe { subject, reason: e.to_string() })
        }
    };
    let data = subscribe(subjects.bus.clone()).await?;
    let rpc = subscribe(subjects.my_sync.clone()).await?;
    let (answers_tx, answers_rx) = mpsc::channel(256);
    let transport = NatsTransport {
        client,
        shared: shared.clone(),
        queue: Vec::new(),
        tasks: JoinSet::new(),
        answers: answers_tx,
        request_timeout: Duration::from_millis(cfg.runtime.sync.request_timeout_ms),
    };
    let tick_ms = (cfg.runtime.sync.beat_interval_ms / 4).clamp(10, 250);
    let runtime_cfg = cfg.runtime;
    let epoch = Instant::now();
    let runtime = Runtime::new(replica, me, runtime_cfg, transport, shared.clone(), 0);
    let channels = Channels { data, rpc, events: events_rx, answers: answers_rx };
    let task = tokio::spawn(run(runtime, channels, epoch, tick_ms, stop));
    Ok(SyncHandle { shared, task })
}

/// What the loop listens to besides the node and the clock.
struct Channels {
    data: async_nats::Subscriber,
    rpc: async_nats::Subscriber,
    events: mpsc::Receiver<Event>,
    answers: mpsc::Receiver<(u64, Answer)>,
}

fn message(msg: &async_nats::Message) -> Input<'_, Subject> {
    Input::Message { subject: msg.subject.as_str(), payload: &msg.payload, reply_to: msg.reply.clone() }
}

async fn run<R: Replica>(
    mut runtime: Runtime<R, NatsTransport>,
    mut ch: Channels,
    epoch: Instant,
    tick_ms: u64,
    stop: CancellationToken,
) {
    let now = || epoch.elapsed().as_millis() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let replica = runtime.replica().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(msg) = ch.data.next() => runtime.step(message(&msg), now()),
            Some(msg) = ch.rpc.next() => runtime.step(message(&msg), now()),
            Some((id, answer)) = ch.answers.recv() => runtime.step(Input::Answer { id, answer }, now()),
            Some(event) = ch.events.recv() => {
                let input = match event {
                    Event::Connected => Input::Connected,
                    Event::Disconnected => Input::Disconnected,
                    Event::SlowConsumer => Input::SlowConsumer,
                };
                runtime.step(input, now());
            }
            _ = replica.local_changed().notified() => runtime.step(Input::LocalChanged, now()),
            _ = tick.tick() => runtime.step(Input::Tick, now()),
        }
        runtime.transport_mut().flush().await;
    }
    runtime.stop(now());
    let transport = runtime.transport_mut();
    transport.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), transport.client.flush()).await;
    transport.tasks.abort_all();
    info!("replication stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.creds` file as `nsc` writes it.
    fn creds(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }

    fn scratch(name: &str, contents: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("bus-sync-{name}-{}-{n}", std::process::id()));
        std::fs::write(&path, contents).expect("write");
        path
    }

    #[test]
    fn a_creds_file_gives_its_jwt_and_signs_the_nonce_with_its_seed() {
        let key = nkeys::KeyPair::new_user();
        let seed = key.seed().expect("seed");
        assert_eq!(creds_parts(&creds("eyJ0.eyJz.c2ln", &seed)), Some(("eyJ0.eyJz.c2ln", seed.as_str())));
        let path = scratch("creds", &creds("eyJ0.eyJz.c2ln", &seed));
        let auth = login(&NatsCredentials::CredsFile(path.clone()), b"nonce-1").expect("login");
        assert_eq!(auth.jwt.as_deref(), Some("eyJ0.eyJz.c2ln"));
        let public = nkeys::KeyPair::from_public_key(&key.public_key()).expect("public key");
        public.verify(b"nonce-1", auth.signature.as_deref().expect("signed")).expect("signed with the file's seed");
        // Read again at each login: a rotated file is used at once.
        let renewed = nkeys::KeyPair::new_user();
        std::fs::write(&path, creds("eyJ0.bmV3.c2ln", &renewed.seed().expect("seed"))).expect("rotate");
        let auth = login(&NatsCredentials::CredsFile(path.clone()), b"nonce-2").expect("login");
        assert_eq!(auth.jwt.as_deref(), Some("eyJ0.bmV3.c2ln"));
        let public = nkeys::KeyPair::from_public_key(&renewed.public_key()).expect("public key");
        public.verify(b"nonce-2", auth.signature.as_deref().expect("signed")).expect("the renewed seed");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_bad_creds_file_is_an_error_naming_it() {
        for (name, text) in [
            ("empty", String::new()),
            ("jwt-only", "-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n".to_string()),
            ("bad-seed", creds("eyJ0", "SUNOTASEED")),
            ("unterminated", "-----BEGIN NATS USER JWT-----\neyJ0\n".to_string()),
        ] {
            let path = scratch(name, &text);
            let err = login(&NatsCredentials::CredsFile(path.clone()), b"n").err().expect(name).to_string();
            assert!(err.starts_with(&format!("NATS credentials file {}: ", path.display())), "{name}: {err}");
            let _ = std::fs::remove_file(path);
        }
        let missing = std::env::temp_dir().join("bus-sync-no-such.creds");
        assert!(login(&NatsCredentials::CredsFile(missing), b"n").is_err());
    }

    #[test]
    fn nkeys_passwords_and_tokens_are_read_at_each_login() {
        let key = nkeys::KeyPair::new_user();
        let seed = Secret::Value(key.seed().expect("seed"));
        let auth = login(&NatsCredentials::NkeySeed(seed), b"nonce").expect("login");
        assert_eq!(auth.nkey, Some(key.public_key()));
        let public = nkeys::KeyPair::from_public_key(&key.public_key()).expect("public key");
        public.verify(b"nonce", auth.signature.as_deref().expect("signed")).expect("signed");
        let err = login(&NatsCredentials::NkeySeed(Secret::Value("nope".into())), b"n").err().expect("bad seed");
        assert!(!err.to_string().contains("nope"), "a secret value is never shown: {err}");

        let path = scratch("password", "first\n");
        let credentials =
            NatsCredentials::UserPassword { user: "registry-0".into(), password: Secret::File(path.clone()) };
        let auth = login(&credentials, b"n").expect("login");
        assert_eq!((auth.username.as_deref(), auth.password.as_deref()), (Some("registry-0"), Some("first")));
        std::fs::write(&path, "second\n").expect("rotate");
        assert_eq!(login(&credentials, b"n").expect("login").password.as_deref(), Some("second"));
        std::fs::write(&path, "").expect("empty");
        assert!(login(&credentials, b"n").is_err(), "an emptied file is refused, not sent");
        let _ = std::fs::remove_file(path);

        let auth = login(&NatsCredentials::Token(Secret::Value("t0k3n".into())), b"n").expect("login");
        assert_eq!(auth.token.as_deref(), Some("t0k3n"));
    }
}
