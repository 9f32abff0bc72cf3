//! Test kit for end-to-end tests: start real nodes on free ports, talk to them
//! with the generated gRPC clients, and wait for what a user would see.
//!
//! Every wait is a condition polled against a deadline; nothing sleeps and hopes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use registry_node::auth::tokens::sha256_hex;
use registry_node::auth::{Grant, Role, TokenEntry};
use registry_node::{NodeConfig, NodeHandle};
pub use registry_proto::v1;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::client::GrpcService;
use tonic::codegen::{Body, Bytes, StdError};
use tonic::transport::Channel;
use v1::register_request::Kind as In;
use v1::register_response::Kind as Out;
use v1::subscribe_response::Kind as Push;

pub mod faults;
pub mod nats;
pub mod netem;
pub mod pki;
pub mod procs;
pub mod secure;
pub mod tools;
pub mod xds;

pub type RegistryClient = v1::registry_client::RegistryClient<Channel>;
pub type ClusterClient = v1::cluster_client::ClusterClient<Channel>;

/// What a generated client can run over: a [`Channel`], or a channel behind
/// an interceptor (one that adds a bearer token, say). [`Session`] and
/// [`Watch`] open over either.
pub trait GrpcTransport:
    GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
    >
{
}

impl<T> GrpcTransport for T where
    T: GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        >
{
}

/// Generous bound for things that happen "at once" (one local round trip).
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// A grant of `role` on the services matching `services` (a name, a prefix
/// ending in `*`, or `*`) in `namespace` (or `*`).
pub fn grant(namespace: &str, services: &str, role: Role) -> Grant {
    Grant { namespace: namespace.into(), services: services.into(), role }
}

/// A principal known by bearer `token`, stored as a tokens file holds it
/// (its SHA-256, never the token), with `grants`.
pub fn token_entry(name: &str, token: &str, grants: Vec<Grant>) -> TokenEntry {
    TokenEntry { name: name.into(), sha256: sha256_hex(token.as_bytes()), grants }
}

/// A node configuration for tests: loopback, free ports, short timers.
///
/// Rebalancing is off: with it on (every 10 s by default), a test that
/// piles sessions on one node of several for longer than a tick has some
/// of them asked to move in the middle of whatever it checks, at a moment
/// that depends on the machine's speed. Tests of rebalancing turn it on.
pub fn test_config(node_id: &str) -> NodeConfig {
    let mut c = NodeConfig {
        node_id: node_id.into(),
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        shutdown_grace_ms: 2_000,
        ..NodeConfig::default()
    };
    c.sessions.min_heartbeat_ms = 100;
    c.sessions.reconnect_grace_ms = 1_000;
    c.sessions.min_lease_ttl_ms = 500;
    c.sessions.drain_jitter_ms = 100;
    c.sessions.rebalance_interval_ms = 0;
    c.subscriptions.progress_interval_ms = 1_000;
    c
}

/// A clustered node configuration for tests: fast beats and short graces.
pub fn cluster_config(node_id: &str, nats_urls: &[String], cluster: &str) -> NodeConfig {
    let mut c = test_config(node_id);
    c.nats_url = nats_urls.to_vec();
    c.cluster = cluster.into();
    c.sync.beat_interval_ms = 200;
    c.sync.suspect_after_ms = 600;
    c.sync.dead_after_ms = 1_500;
    c.sync.orphan_grace_ms = 3_000;
    c.sync.ready_timeout_ms = 20_000;
    c.sync.request_timeout_ms = 2_000;
    c
}

/// Waits until a node serves reads.
pub async fn until_ready(node: &NodeHandle) -> Result<()> {
    let readiness = node.readiness.clone();
    eventually("node ready", Duration::from_secs(20), || {
        let r = readiness.clone();
        async move { r.is_ready().then_some(()) }
    })
    .await
}

/// Instances of a service as GetService on `addr` returns them, by id.
pub async fn service_ids(addr: SocketAddr, service: &str) -> Result<Vec<String>> {
    let mut c = client(addr).await?;
    let r = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: service.into() }).await?;
    let mut ids: Vec<String> = r.into_inner().instances.into_iter().map(|i| i.instance_id).collect();
    ids.sort();
    Ok(ids)
}

pub async fn start_node(config: NodeConfig) -> Result<NodeHandle> {
    registry_node::start(config).await.context("start node")
}

/// Starts clustered nodes named `names`, spread over the NATS servers given,
/// and waits until every one is ready.
pub async fn start_cluster(nats: &[String], cluster: &str, names: &[&str]) -> Result<Vec<NodeHandle>> {
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let url = nats[i % nats.len()].clone();
        nodes.push(start_node(cluster_config(name, &[url], cluster)).await?);
    }
    for n in &nodes {
        until_ready(n).await?;
    }
    Ok(nodes)
}

/// A gRPC channel to a node: TLS with the harness's client certificate when
/// the node is secured (see [`secure`]), plaintext otherwise.
pub async fn channel(addr: SocketAddr) -> Result<Channel> {
    if let Some(access) = secure::access(addr.port()) {
        return access.tls.channel(addr).await;
    }
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect().await?)
}

pub async fn client(addr: SocketAddr) -> Result<RegistryClient> {
    Ok(RegistryClient::new(channel(addr).await?))
}

/// Polls `check` until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn instance(service: &str, id: &str, port: u32) -> v1::Instance {
    v1::Instance {
        service: service.into(),
        instance_id: id.into(),
        host: "127.0.0.1".into(),
        port,
        ..Default::default()
    }
}

/// A provider's Register stream.
pub struct Session {
    tx: Option<mpsc::Sender<v1::RegisterRequest>>,
    rx: Streaming<v1::RegisterResponse>,
    pub opened: v1::SessionOpened,
}

impl Session {
    /// Opens a session with the given heartbeat interval (0: node default).
    pub async fn open<T: GrpcTransport>(
        client: &mut v1::registry_client::RegistryClient<T>,
        heartbeat_interval_ms: u32,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(1024);
        tx.send(v1::RegisterRequest {
            kind: Some(In::Open(v1::OpenSession { client_name: "test".into(), heartbeat_interval_ms })),
        })
        .await?;
        let mut rx = client.register(ReceiverStream::new(rx)).await?.into_inner();
        let first = timeout(PROMPTLY, rx.message()).await??.ok_or_else(|| anyhow!("stream ended"))?;
        match first.kind {
            Some(Out::Opened(opened)) => Ok(Self { tx: Some(tx), rx, opened }),
            other => bail!("expected opened, got {other:?}"),
        }
    }

    pub async fn send(&self, kind: In) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| anyhow!("session half-closed"))?;
        tx.send(v1::RegisterRequest { kind: Some(kind) }).await.map_err(|_| anyhow!("session stream closed"))
    }

    /// The next response, or the error status that ended the stream.
    pub async fn next(&mut self) -> Result<Out> {
        self.next_within(PROMPTLY).await
    }

    /// The next response within `bound` (for loads where one reply may queue
    /// behind many others).
    pub async fn next_within(&mut self, bound: Duration) -> Result<Out> {
        let msg = timeout(bound, self.rx.message()).await.context("no response in time")??;
        msg.and_then(|m| m.kind).ok_or_else(|| anyhow!("session stream ended"))
    }

    /// Upserts and returns the node's answer (accepted or rejected).
    pub async fn upsert(&mut self, instance: v1::Instance) -> Result<Out> {
        self.send(In::Upsert(instance)).await?;
        self.next().await
    }

    pub async fn heartbeat(&mut self, nonce: u64) -> Result<Out> {
        self.send(In::Heartbeat(v1::Heartbeat { nonce })).await?;
        self.next().await
    }

    pub async fn goodbye(&self) -> Result<()> {
        self.send(In::Goodbye(v1::Goodbye { moved: false })).await
    }

    /// The goodbye of a provider that registered on another node.
    pub async fn goodbye_moved(&self) -> Result<()> {
        self.send(In::Goodbye(v1::Goodbye { moved: true })).await
    }

    /// Ends the request stream cleanly (HTTP/2 half-close).
    pub fn half_close(&mut self) {
        self.tx = None;
    }
}

/// A consumer's Subscribe stream with the view it has materialized from it.
pub struct Watch {
    stream: Streaming<v1::SubscribeResponse>,
    /// Per service: revision and instances by id.
    pub views: HashMap<String, (u64, BTreeMap<String, v1::Instance>)>,
    /// Every snapshot and delta received, in order (progress and drains omitted).
    pub log: Vec<Push>,
    /// Progress messages received.
    pub progress: usize,
    /// Drain messages received (the node asked the stream to move).
    pub drains: usize,
    /// Snapshots and deltas received (counted even when not logged).
    pub received: usize,
    keep_log: bool,
}

impl Watch {
    pub async fn start<T: GrpcTransport>(
        client: &mut v1::registry_client::RegistryClient<T>,
        namespace: &str,
        services: &[&str],
        consumer_id: &str,
    ) -> Result<Self> {
        let req = v1::SubscribeRequest {
            namespace: namespace.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            consumer: Some(v1::ConsumerInfo {
                consumer_id: consumer_id.into(),
                host: "127.0.0.1".into(),
                metadata: Default::default(),
            }),
        };
        let stream = client.subscribe(req).await?.into_inner();
        Ok(Self { stream, views: HashMap::new(), log: Vec::new(), progress: 0, drains: 0, received: 0, keep_log: true })
    }

    /// Stops keeping the message log (for long runs that measure memory).
    pub fn without_log(mut self) -> Self {
        self.keep_log = false;
        self
    }

    /// Receives one message (waiting at most `within`) and applies it. Checks
    /// that every delta follows the revision it says it follows.
    pub async fn step(&mut self, within: Duration) -> Result<Push> {
        let msg = timeout(within, self.stream.message())
            .await
            .context("no push in time")??
            .ok_or_else(|| anyhow!("subscribe stream ended"))?;
        let kind = msg.kind.ok_or_else(|| anyhow!("push without kind"))?;
        match &kind {
            Push::Snapshot(s) => {
                let map = s.instances.iter().map(|i| (i.instance_id.clone(), i.clone())).collect();
                self.views.insert(s.service.clone(), (s.revision, map));
            }
            Push::Delta(d) => {
                let view = self
                    .views
                    .get_mut(&d.service)
                    .ok_or_else(|| anyhow!("delta for {} before its snapshot", d.service))?;
                if view.0 != d.prev_revision {
                    bail!("delta for {} follows revision {} but the view is at {}", d.service, d.prev_revision, view.0);
                }
                view.0 = d.revision;
                for i in &d.upserted {
                    view.1.insert(i.instance_id.clone(), i.clone());
                }
                for k in &d.removed {
                    view.1.remove(&k.instance_id);
                }
            }
            Push::Progress(_) => self.progress += 1,
            Push::Drain(_) => self.drains += 1,
        }
        if !matches!(kind, Push::Progress(_) | Push::Drain(_)) {
            self.received += 1;
            if self.keep_log {
                self.log.push(kind.clone());
            }
        }
        Ok(kind)
    }

    /// Applies pushes until `cond` holds on the views, or fails after `within`.
    pub async fn until<F>(&mut self, what: &str, within: Duration, mut cond: F) -> Result<()>
    where
        F: FnMut(&HashMap<String, (u64, BTreeMap<String, v1::Instance>)>) -> bool,
    {
        let deadline = Instant::now() + within;
        while !cond(&self.views) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out after {within:?} waiting for: {what}; views: {:?}", self.ids());
            }
            self.step(left).await.with_context(|| format!("waiting for: {what}"))?;
        }
        Ok(())
    }

    /// Applies everything the node has sent so far: steps until the stream has
    /// been quiet for 300 ms (on loopback a push arrives within milliseconds),
    /// failing if it never goes quiet within `within`.
    pub async fn drain(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.step(Duration::from_millis(300)).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("no push in time") => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        bail!("the stream never went quiet within {within:?}")
    }

    /// Instance ids per service, sorted.
    pub fn ids(&self) -> BTreeMap<String, Vec<String>> {
        self.views.iter().map(|(s, (_, m))| (s.clone(), m.keys().cloned().collect())).collect()
    }

    pub fn has(&self, service: &str, id: &str) -> bool {
        self.views.get(service).is_some_and(|(_, m)| m.contains_key(id))
    }
}

/// Instance ids removed by the deltas a watch received, in order.
pub fn removed_ids(watch: &Watch) -> Vec<String> {
    watch
        .log
        .iter()
        .filter_map(|m| match m {
            Push::Delta(d) => Some(d.removed.iter().map(|k| k.instance_id.clone()).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A TCP forwarder in front of a node whose connections the test can cut at
/// once, the way a crashed process or a network fault ends them.
pub struct CuttableLink {
    pub addr: SocketAddr,
    cut: tokio_util::sync::CancellationToken,
}

impl CuttableLink {
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = tokio_util::sync::CancellationToken::new();
        let token = cut.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else { break };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Self { addr, cut })
    }

    /// Closes every connection through the link and refuses new ones.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}

impl Drop for CuttableLink {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}

/// A TCP load balancer in front of several nodes, as a DNS name behind a load
/// balancer looks to a client: each new connection goes to the next target in
/// turn, skipping targets that refuse it.
pub struct BalancingLink {
    pub addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
}

impl BalancingLink {
    pub async fn start(targets: Vec<SocketAddr>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else { break };
                let mut outbound = None;
                for k in 0..targets.len() {
                    let target = targets[(next + k) % targets.len()];
                    if let Ok(s) = tokio::net::TcpStream::connect(target).await {
                        next = (next + k + 1) % targets.len();
                        outbound = Some(s);
                        break;
                    }
                }
                let Some(mut outbound) = outbound else { continue };
                let token = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for BalancingLink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A plain HTTP/1.1 GET, enough for /metrics, /healthz and /readyz (HTTPS
/// with the harness's client certificate when the node is secured).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_get_with(addr, path, &[]).await
}

/// [`http_get`] with extra request headers.
pub async fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    http_request(addr, "GET", path, headers, None).await
}

/// One HTTP/1.1 request (`Connection: close`): plaintext, or HTTPS with the
/// harness's client certificate when the node is secured. A `body` comes
/// with `Content-Type: application/json` and its length.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String)> {
    if let Some(access) = secure::access(addr.port()) {
        return access.tls.https_request(addr, method, path, headers, body).await;
    }
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request_text(&addr.to_string(), method, path, headers, body).as_bytes()).await?;
    let mut buf = Vec::new();
    timeout(PROMPTLY, s.read_to_end(&mut buf)).await??;
    parse_response(&buf)
}

/// The text of an HTTP/1.1 request to `host`.
fn request_text(host: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> String {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let content =
        body.map(|b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len())).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}{content}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    )
}

/// The status and the body of a whole HTTP/1.1 response.
fn parse_response(buf: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(buf).into_owned();
    let status =
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("bad response {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Value of an unlabelled-by-us metric line `registry_<name>{node="..."} v`.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    let prefix = format!("registry_{name}{{");
    body.lines().find(|l| l.starts_with(&prefix))?.rsplit(' ').next()?.parse().ok()
}

/// An HTTP/1.1 request with a JSON body (plain, or HTTPS when the node is
/// secured): the status and the body parsed as JSON (`Null` when empty or
/// not JSON, so a test sees what came).
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, text) = http_request(addr, method, path, headers, Some(&body)).await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
}

/// A server-sent events stream (`GET path`), read event by event.
pub struct SseStream {
    reader: tokio::io::BufReader<tokio::net::TcpStream>,
    /// The response's status.
    pub status: u16,
    /// The name of every event received, skipped ones included.
    names: Vec<String>,
}

/// One server-sent event: its name and its data parsed as JSON.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: serde_json::Value,
}

impl SseStream {
    /// Opens `GET path` and reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Self> {
        use tokio::io::AsyncBufReadExt as _;
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n").as_bytes(),
        )
        .await?;
        let mut reader = tokio::io::BufReader::new(s);
        let mut line = String::new();
        timeout(PROMPTLY, reader.read_line(&mut line)).await??;
        let status =
            line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("bad {line:?}"))?;
        loop {
            line.clear();
            timeout(PROMPTLY, reader.read_line(&mut line)).await??;
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Ok(Self { reader, status, names: Vec::new() })
    }

    /// The next event, skipping comments (keep-alives) and chunk framing;
    /// an error after `within`, or when the stream ends.
    pub async fn next(&mut self, within: Duration) -> Result<SseEvent> {
        use tokio::io::AsyncBufReadExt as _;
        let deadline = Instant::now() + within;
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout_at(deadline, self.reader.read_line(&mut line))
                .await
                .map_err(|_| anyhow!("no event within {within:?}"))??;
            if n == 0 {
                bail!("the event stream ended");
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !event.is_empty() {
                let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
                self.names.push(event.clone());
                return Ok(SseEvent { event, data });
            }
            // Anything else: chunk sizes, comments (`:`), blank lines between chunks.
        }
    }

    /// Whether an event named `name` was received (skipped or not).
    pub fn seen(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The next event named `name` whose data satisfies `cond`, skipping
    /// others; an error after `within`.
    pub async fn next_where(
        &mut self,
        name: &str,
        within: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.next_named(name, left).await?;
            if cond(&e.data) {
                return Ok(e);
            }
        }
    }

    /// The next event named `name`, skipping others (progress keepalives).
    pub async fn next_named(&mut self, name: &str, within: Duration) -> Result<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.next(left).await?;
            if e.event == name {
                return Ok(e);
            }
        }
    }
}
