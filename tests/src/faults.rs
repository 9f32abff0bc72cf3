//! The fault-injection harness: a cluster of real `registry-node` processes
//! and real `nats-server`s, providers and consumers through the client
//! library, and a checker that compares what every node and every consumer
//! shows with what should be there.
//!
//! A scenario starts a [`ProcCluster`], registers [`Fleet`] providers and
//! watches, injects its fault, and records numbers in a [`Report`]: each row a
//! measure, its bound, what was measured and whether it passed. Reports print
//! as a table and are appended to `fault-report.md` in the test target's
//! temporary directory (or `FAULT_REPORT`), so a run leaves the numbers behind.
//!
//! The checker's notion of truth is the set of instances whose providers are
//! alive ([`Fleet::expected`]). Flaps are removals a consumer saw of an
//! instance whose provider never stopped: the thing an AP registry must not do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use parking_lot::Mutex;
use registry_client::{Backoff, Client, ClientConfig, InstanceChange, Provider, ServiceWatch, WatchEvent};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::nats::{NatsCluster, NatsServer};
use crate::procs::{NodeProc, node_bin};
use crate::{client, instance, v1};

/// Node configuration for fault scenarios: the fast timers of the in-process
/// cluster tests (beats 200 ms, orphaned after 1.5 s, removed 3 s later,
/// reconnect grace 1 s), so faults play out in seconds.
pub const FAULT_CONFIG: &str = "\
shutdown_grace_ms = 2000
[sessions]
min_heartbeat_ms = 100
default_heartbeat_ms = 200
reconnect_grace_ms = 1000
min_lease_ttl_ms = 500
drain_jitter_ms = 100
rebalance_interval_ms = 1000
rebalance_tolerance = 0.1
[subscriptions]
progress_interval_ms = 1000
[sync]
beat_interval_ms = 200
suspect_after_ms = 600
dead_after_ms = 1500
orphan_grace_ms = 3000
ready_timeout_ms = 20000
request_timeout_ms = 2000
";

/// Reconnect grace of [`FAULT_CONFIG`].
pub const RECONNECT_GRACE: Duration = Duration::from_millis(1_000);
/// Silence after which [`FAULT_CONFIG`] orphans a peer.
pub const DEAD_AFTER: Duration = Duration::from_millis(1_500);
/// Orphan grace of [`FAULT_CONFIG`].
pub const ORPHAN_GRACE: Duration = Duration::from_millis(3_000);
/// Beat interval of [`FAULT_CONFIG`].
pub const BEAT: Duration = Duration::from_millis(200);

/// The NATS side of a cluster: one server, or several joined by routes that
/// a test can cut.
pub enum Nats {
    Single(NatsServer),
    Cluster(PartitionableNats),
}

impl Nats {
    pub fn urls(&self) -> Vec<String> {
        match self {
            Nats::Single(s) => vec![s.url()],
            Nats::Cluster(c) => c.urls(),
        }
    }

    /// The server at `i` (the only one of a single-server setup).
    pub fn server(&mut self, i: usize) -> &mut NatsServer {
        match self {
            Nats::Single(s) => s,
            Nats::Cluster(c) => {
                let n = c.cluster.servers.len();
                &mut c.cluster.servers[i % n]
            }
        }
    }

    /// The cluster's routes, to partition it (None for a single server).
    pub fn routes(&self) -> Option<&PartitionableNats> {
        match self {
            Nats::Single(_) => None,
            Nats::Cluster(c) => Some(c),
        }
    }
}

/// Registry nodes as processes, each on its own NATS server when there are
/// several (node i on server i), all in one registry cluster.
pub struct ProcCluster {
    pub nats: Nats,
    pub nodes: Vec<NodeProc>,
    /// TLS and auth on every node (see [`crate::secure`]).
    pub secure: bool,
}

/// Whether a cluster's nodes run with TLS and auth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plaintext, auth off (loopback).
    Plain,
    /// TLS on both ports (mTLS optional), auth enforced: the fault clients
    /// send a token, the checker shows a client certificate.
    TlsAndAuth,
}

impl ProcCluster {
    /// `names.len()` nodes on `nats_servers` NATS servers (1: a single server).
    pub async fn start(cluster: &str, names: &[&str], nats_servers: usize) -> Result<Self> {
        Self::start_with(cluster, names, nats_servers, FAULT_CONFIG).await
    }

    /// [`Self::start`] with another node configuration (TOML).
    pub async fn start_with(cluster: &str, names: &[&str], nats_servers: usize, config: &str) -> Result<Self> {
        Self::start_secured(cluster, names, nats_servers, config, Security::Plain).await
    }

    /// [`Self::start_with`], with TLS and auth on when `security` says so.
    pub async fn start_secured(
        cluster: &str,
        names: &[&str],
        nats_servers: usize,
        config: &str,
        security: Security,
    ) -> Result<Self> {
        let secure = match security {
            Security::Plain => None,
            Security::TlsAndAuth => Some(crate::secure::Secure::new(cluster)?),
        };
        let config = match &secure {
            Some(s) => format!("{config}{}", s.config()),
            None => config.to_string(),
        };
        let config = config.as_str();
        let nats = if nats_servers <= 1 {
            Nats::Single(NatsServer::start().await?)
        } else {
            Nats::Cluster(PartitionableNats::start(nats_servers).await?)
        };
        let urls = nats.urls();
        let bin = node_bin()?;
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            // Node i on server i only, so a partition between servers is one
            // between known groups of nodes.
            let mine = [urls[i % urls.len()].clone()];
            let node = NodeProc::spawn(&bin, name, &mine, cluster, config)?;
            if let Some(s) = &secure {
                s.register(&[node.grpc, node.http]);
            }
            nodes.push(node);
        }
        for n in &nodes {
            n.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(Self { nats, nodes, secure: secure.is_some() })
    }

    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.secure { "https" } else { "http" };
        self.nodes.iter().map(|n| format!("{scheme}://{}", n.grpc)).collect()
    }

    pub fn grpc_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.grpc).collect()
    }

    /// Peak resident memory of every running node, in MiB.
    pub fn peak_rss_mib(&self) -> Vec<(String, f64)> {
        self.nodes
            .iter()
            .filter_map(|n| n.rss_kib().ok().map(|(_, peak)| (n.name.clone(), peak as f64 / 1024.0)))
            .collect()
    }
}

/// What a [`FaultLink`] lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Everything, both ways.
    Up,
    /// Nothing: connections are closed and new ones refused (closed at once).
    Down,
    /// Bytes from the side that dialed are held until the link changes
    /// state; the other way passes.
    HoldFromDialer,
    /// Bytes towards the side that dialed are held until the link changes
    /// state; the other way passes.
    HoldToDialer,
    /// Everything passes, each read delayed by `base_ms` plus up to
    /// `jitter_ms` (order kept, as TCP keeps it).
    Slow { base_ms: u64, jitter_ms: u64 },
}

/// A TCP proxy whose state a test changes at any time: a network between two
/// processes that can fail (both ways or one way) and heal.
pub struct FaultLink {
    pub addr: SocketAddr,
    state: tokio::sync::watch::Sender<LinkState>,
    stop: tokio_util::sync::CancellationToken,
}

impl FaultLink {
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = tokio::sync::watch::channel(LinkState::Up);
        let stop = tokio_util::sync::CancellationToken::new();
        let (states, token) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { break };
                if *states.borrow() == LinkState::Down {
                    continue;
                }
                let (rx, token) = (states.subscribe(), token.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let (in_r, in_w) = inbound.into_split();
                    let (out_r, out_w) = outbound.into_split();
                    let forward = pump(in_r, out_w, rx.clone(), LinkState::HoldFromDialer);
                    let backward = pump(out_r, in_w, rx.clone(), LinkState::HoldToDialer);
                    let mut down = rx;
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = forward => {}
                        _ = backward => {}
                        _ = down.wait_for(|s| *s == LinkState::Down) => {}
                    }
                });
            }
        });
        Ok(Self { addr, state, stop })
    }

    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }
}

impl Drop for FaultLink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies bytes from `r` to `w`, holding them while the link is in
/// `hold_in` and delaying them while it is slow.
///
/// A one-way cut holds bytes rather than dropping them, because that is
/// what TCP over a link that loses every packet one way looks like: the
/// sender's unacknowledged bytes pile up (here: nothing more is read, so
/// its socket fills), and once the link heals its retransmissions deliver
/// them, all and in order. Dropping bytes from the middle of a live
/// connection is something no network does to TCP; done to NATS routes it
/// tore route handshakes in half, and servers then kept a route that one
/// side had never finished while the other redialed it as a duplicate,
/// a partition inside NATS that outlived the heal by minutes.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut state: tokio::sync::watch::Receiver<LinkState>,
    hold_in: LinkState,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1_024);
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_release = Instant::now();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if state.wait_for(|s| *s != hold_in).await.is_err() {
                return;
            }
            let now = Instant::now();
            let release = match *state.borrow() {
                LinkState::Slow { base_ms, jitter_ms } => {
                    let jitter = if jitter_ms == 0 { 0 } else { rand::random_range(0..=jitter_ms) };
                    (now + Duration::from_millis(base_ms + jitter)).max(last_release)
                }
                _ => now,
            };
            last_release = release;
            if tx.send((release, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((release, bytes)) = rx.recv().await {
            tokio::time::sleep_until(release).await;
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
    }
}

/// A NATS cluster whose routes all go through [`FaultLink`]s: `links[i][j]`
/// carries what server i dials to reach server j.
pub struct PartitionableNats {
    pub cluster: NatsCluster,
    links: Vec<Vec<Option<FaultLink>>>,
}

impl PartitionableNats {
    pub async fn start(n: usize) -> Result<Self> {
        // Hold the route ports while the links bind theirs, so no link takes one.
        let held: Vec<std::net::TcpListener> =
            (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
        let ports: Vec<u16> = held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<std::io::Result<_>>()?;
        let mut links = Vec::new();
        let mut routes = Vec::new();
        for i in 0..n {
            let mut row = Vec::new();
            let mut mine = Vec::new();
            for (j, port) in ports.iter().enumerate() {
                if i == j {
                    row.push(None);
                    continue;
                }
                let link = FaultLink::start(format!("127.0.0.1:{port}").parse()?).await?;
                mine.push(format!("nats://{}", link.addr));
                row.push(Some(link));
            }
            links.push(row);
            routes.push(mine);
        }
        drop(held);
        let cluster = NatsCluster::start_routed(&ports, routes, false).await?;
        Ok(Self { cluster, links })
    }

    /// Cuts the links between servers `i` and `j`: connections close and
    /// nothing passes, or with `one_way` nothing from `j` reaches `i`
    /// (whichever side dialed) until the heal, which delivers it, as TCP
    /// would after a link that lost every packet one way.
    pub fn cut(&self, i: usize, j: usize, one_way: bool) {
        let (ij, ji) = (self.links[i][j].as_ref(), self.links[j][i].as_ref());
        let (a, b) = if one_way {
            (LinkState::HoldToDialer, LinkState::HoldFromDialer)
        } else {
            (LinkState::Down, LinkState::Down)
        };
        ij.into_iter().for_each(|l| l.set(a));
        ji.into_iter().for_each(|l| l.set(b));
    }

    /// Every route slowed by `base_ms` plus up to `jitter_ms`, each way.
    pub fn slow_all(&self, base_ms: u64, jitter_ms: u64) {
        self.links.iter().flatten().flatten().for_each(|l| l.set(LinkState::Slow { base_ms, jitter_ms }));
    }

    /// Every link up again.
    pub fn heal(&self) {
        self.links.iter().flatten().flatten().for_each(|l| l.set(LinkState::Up));
    }

    pub fn urls(&self) -> Vec<String> {
        self.cluster.urls()
    }
}

/// Retries of fault scenarios' clients: quick, so faults play out in seconds.
pub fn quick_backoff() -> Backoff {
    Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1) }
}

/// Heartbeat interval of fault scenarios' providers (lease: three of them).
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// A client for fault scenarios: every node's endpoint, tried in order from
/// the `first`, with quick retries.
pub fn fault_client(endpoints: &[String], first: usize, name: &str) -> Result<Client> {
    fault_client_full(endpoints, first, name, quick_backoff(), HEARTBEAT)
}

/// [`fault_client`] with its own backoff and heartbeat interval.
pub fn fault_client_full(
    endpoints: &[String],
    first: usize,
    name: &str,
    backoff: Backoff,
    heartbeat: Duration,
) -> Result<Client> {
    Ok(Client::new(fault_config(endpoints, first, name, backoff).heartbeat_interval(heartbeat))?)
}

/// The settings of fault scenarios' clients: every endpoint, tried in order
/// from the `first`, requests bounded at 2 s, and `backoff`.
fn fault_config(endpoints: &[String], first: usize, name: &str, backoff: Backoff) -> ClientConfig {
    let mut mine = endpoints.to_vec();
    mine.rotate_left(first % endpoints.len().max(1));
    let access = mine.first().and_then(|e| crate::secure::access_of_endpoint(e));
    let config = ClientConfig::new(mine)
        .client_name(name)
        .in_order(true)
        .request_timeout(Duration::from_secs(2))
        .backoff(backoff);
    match access {
        // A secured cluster: the CA, and the providers' and consumers' token.
        Some(a) => config.ca_pem(a.tls.ca.clone().into_bytes()).token(a.token.clone()),
        None => config,
    }
}

/// Events each fault-scenario consumer buffers for its flap recorder: far
/// more than one burst of any scenario (a resync of the largest service,
/// every instance removed and added), so a recorder falls that far behind
/// only if it was starved, and then the scenario fails (see [`Recording`]).
pub const RECORDER_BUFFER: usize = 8_192;

/// Providers and consumers through the client library, with the bookkeeping
/// the checker needs: who is alive, and every removal each consumer saw.
#[derive(Default)]
pub struct Fleet {
    /// Live providers by (service, instance id).
    providers: BTreeMap<(String, String), Provider>,
    /// Instances whose providers stopped on purpose (removals of these are no flap).
    gone: BTreeSet<(String, String)>,
    watches: Vec<ServiceWatch>,
    recording: Arc<Mutex<Recording>>,
    /// Times a consumer's view turned stale (it lost its node).
    disconnects: Arc<std::sync::atomic::AtomicUsize>,
    recorders: Vec<JoinHandle<()>>,
    /// What each recorder has yet to read (see [`Self::settle`]).
    progress: Mutex<Vec<Progress>>,
    /// Providers' heartbeat interval (lease TTL: three of them); [`HEARTBEAT`] unless set.
    pub heartbeat: Option<Duration>,
}

/// How far one recorder has read its consumer's events, against a probe
/// that counts what was sent: a second receiver on the same channel, from
/// the recorder's start on.
struct Progress {
    consumer: usize,
    /// Events already queued for the recorder when the probe was made.
    base: u64,
    probe: tokio::sync::broadcast::Receiver<WatchEvent>,
    /// Events the probe has counted so far.
    sent: u64,
    /// Events the recorder has read (or counted as lost), from its start.
    read: Arc<std::sync::atomic::AtomicU64>,
}

/// How long [`Fleet::settle`] waits for a recorder to read what was sent.
const SETTLE: Duration = Duration::from_secs(10);

/// A removal one consumer saw.
#[derive(Clone)]
pub struct Removal {
    pub consumer: usize,
    pub service: String,
    pub id: String,
    pub at: Instant,
    /// The same moment on the wall clock, to find it in the nodes' logs.
    pub wall: std::time::SystemTime,
}

impl std::fmt::Debug for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} at consumer {} ({} UTC)", self.service, self.id, self.consumer, time_of_day(self.wall))
    }
}

/// `HH:MM:SS.mmm` of `at` (UTC), the form the nodes' logs use, to find a
/// moment of a scenario in them.
pub fn time_of_day(at: std::time::SystemTime) -> String {
    let ms = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()) % 86_400_000;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1_000 % 60, ms % 1_000);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

/// Prints a scenario's step with the time of day, to line it up with the
/// nodes' logs (`NODE_LOG_DIR`).
pub fn step(what: &str) {
    println!("{} {what}", time_of_day(std::time::SystemTime::now()));
}

/// What the consumers' recorders saw, and whether they saw everything.
///
/// A recorder reads its consumer's event channel, which is bounded: one
/// that falls behind loses events (`Lagged`), and a flap among them would go
/// unseen. So lost events are counted, not skipped, and so is a recorder
/// whose channel closed while its consumer was still watched; either fails
/// the scenario's flap check ([`Fleet::check_flaps`]): a check that stopped
/// checking must not read as "0 flaps".
#[derive(Default)]
pub struct Recording {
    removals: Vec<Removal>,
    /// Events lost to lag, by consumer.
    lost: BTreeMap<usize, u64>,
    /// Consumers whose recorder stopped listening before the fleet did.
    stopped: BTreeSet<usize>,
    /// Events a recorder had still not read when a check looked, by
    /// consumer: a removal among them would have gone unseen.
    behind: BTreeMap<usize, u64>,
}

impl Recording {
    /// Why the recording cannot be trusted, if it cannot.
    pub fn gaps(&self) -> Option<String> {
        let mut why = Vec::new();
        if !self.lost.is_empty() {
            let total: u64 = self.lost.values().sum();
            let at: Vec<String> = self.lost.iter().map(|(c, n)| format!("consumer {c}: {n}")).collect();
            why.push(format!("recorder lagged: {total} events lost ({})", at.join(", ")));
        }
        if !self.stopped.is_empty() {
            why.push(format!("recorder stopped listening at consumers {:?}", self.stopped));
        }
        if !self.behind.is_empty() {
            let at: Vec<String> = self.behind.iter().map(|(c, n)| format!("consumer {c}: {n}")).collect();
            why.push(format!("recorder still behind after {SETTLE:?} ({})", at.join(", ")));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Records consumer `consumer`'s removals and disconnects from `events`
/// until the channel closes: every event, or a count of those it lost.
async fn record(
    consumer: usize,
    mut events: tokio::sync::broadcast::Receiver<WatchEvent>,
    recording: Arc<Mutex<Recording>>,
    disconnects: Arc<std::sync::atomic::AtomicUsize>,
    read: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering::Release;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = events.recv().await;
        // Counted once recorded (below), so that a check that sees the
        // count sees the removal too.
        let count = match &event {
            Ok(_) => 1,
            Err(RecvError::Lagged(n)) => *n,
            Err(RecvError::Closed) => 0,
        };
        match event {
            Ok(WatchEvent::Changed(InstanceChange::Removed(i))) => recording.lock().removals.push(Removal {
                consumer,
                service: i.service.clone(),
                id: i.instance_id.clone(),
                at: Instant::now(),
                wall: std::time::SystemTime::now(),
            }),
            Ok(WatchEvent::Disconnected { .. }) => {
                disconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => *recording.lock().lost.entry(consumer).or_default() += n,
            Err(RecvError::Closed) => {
                // The fleet aborts its recorders before it drops the watches,
                // so a close seen here is a watch that ended under the test.
                recording.lock().stopped.insert(consumer);
                return;
            }
        }
        read.fetch_add(count, Release);
    }
}

impl Fleet {
    /// A fleet whose providers heartbeat every `every` (lease: three of them).
    pub fn with_heartbeat(every: Duration) -> Self {
        Self { heartbeat: Some(every), ..Self::default() }
    }

    /// Registers one provider per (service, id), each with its own client
    /// whose endpoints start at a different node, so sessions spread.
    pub async fn register(&mut self, endpoints: &[String], service: &str, ids: &[String]) -> Result<()> {
        for (i, id) in ids.iter().enumerate() {
            let heartbeat = self.heartbeat.unwrap_or(HEARTBEAT);
            let first = self.providers.len() + i;
            let client = fault_client_full(endpoints, first, &format!("provider-{id}"), quick_backoff(), heartbeat)?;
            let provider = client.register([instance(service, id, 1 + i as u32)]).await?;
            self.providers.insert((service.into(), id.clone()), provider);
        }
        Ok(())
    }

    /// Registers one provider per id, all starting at `endpoints[first]`,
    /// fifty at a time, with the client library's default backoff (what a
    /// stampede of real providers would use) and the fleet's heartbeat.
    pub async fn register_at(
        &mut self,
        endpoints: &[String],
        first: usize,
        service: &str,
        ids: &[String],
    ) -> Result<()> {
        let heartbeat = self.heartbeat.unwrap_or(HEARTBEAT);
        for chunk in ids.chunks(50) {
            let mut starting = tokio::task::JoinSet::new();
            for id in chunk {
                let name = format!("provider-{id}");
                let client = fault_client_full(endpoints, first, &name, Backoff::default(), heartbeat)?;
                let (service, id) = (service.to_string(), id.clone());
                starting.spawn(async move {
                    let p = client.register([instance(&service, &id, 1)]).await;
                    (service, id, p)
                });
            }
            while let Some(done) = starting.join_next().await {
                let (service, id, p) = done?;
                self.providers.insert((service, id), p?);
            }
        }
        Ok(())
    }

    /// When the backoff let each provider's current session begin its
    /// attempt (`ProviderState::due_at`), relative to `since` (providers
    /// connected before `since` are left out): the spread the clients chose.
    /// When the attempts really began also depends on the machine: a stall
    /// of the test process starts every attempt due during it at once.
    pub fn reconnected_after(&self, since: Instant) -> Vec<Duration> {
        let mut at: Vec<Duration> = self
            .providers
            .values()
            .filter_map(|p| p.state().borrow().due_at)
            .filter(|t| *t >= since)
            .map(|t| t - since)
            .collect();
        at.sort();
        at
    }

    /// How many providers are alive.
    pub fn live(&self) -> usize {
        self.providers.len()
    }

    /// A provider picked by `pick` (modulo the number alive), if any.
    pub fn some_provider(&self, pick: usize) -> Option<(String, String)> {
        let n = self.providers.len();
        (n > 0).then(|| self.providers.keys().nth(pick % n).cloned()).flatten()
    }

    /// One consumer per endpoint (each starting at a different node) watching
    /// `service`; their removals are recorded from now on.
    pub async fn watch(&mut self, endpoints: &[String], service: &str) -> Result<()> {
        self.watch_n(endpoints, service, endpoints.len()).await
    }

    /// `n` consumers watching `service`, each knowing every endpoint and
    /// starting at the next one in turn.
    pub async fn watch_n(&mut self, endpoints: &[String], service: &str, n: usize) -> Result<()> {
        for i in 0..n {
            let consumer = self.watches.len();
            let config = fault_config(endpoints, i, &format!("consumer-{consumer}"), quick_backoff())
                .event_buffer(RECORDER_BUFFER);
            let watch = Client::new(config)?.watch(service).await?;
            self.record_from(consumer, watch.events());
            self.watches.push(watch);
        }
        Ok(())
    }

    /// Starts the recorder of consumer `consumer` on `events`, and the
    /// probe that tells how far it has read.
    fn record_from(&mut self, consumer: usize, events: tokio::sync::broadcast::Receiver<WatchEvent>) {
        // In this order: an event sent between the two is the probe's alone.
        let base = events.len() as u64;
        let probe = events.resubscribe();
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.progress.lock().push(Progress { consumer, base, probe, sent: 0, read: read.clone() });
        let (recording, disconnects) = (self.recording.clone(), self.disconnects.clone());
        self.recorders.push(tokio::spawn(record(consumer, events, recording, disconnects, read)));
    }

    /// Waits until every recorder has read every event its consumer was
    /// sent so far. Views are updated before the recorders read the events
    /// that told them, so a check made as soon as the views show a change
    /// would count removals still queued, as if they never happened (once
    /// 800 of 3,202). A recorder still behind after [`SETTLE`] is a gap in
    /// the recording (see [`Recording`]): the check then fails, saying so.
    pub async fn settle(&self) {
        use std::sync::atomic::Ordering::Acquire;
        use tokio::sync::broadcast::error::TryRecvError;
        let mut want = Vec::new();
        for p in self.progress.lock().iter_mut() {
            loop {
                match p.probe.try_recv() {
                    Ok(_) => p.sent += 1,
                    Err(TryRecvError::Lagged(n)) => p.sent += n,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            want.push((p.consumer, p.base + p.sent, p.read.clone()));
        }
        let deadline = Instant::now() + SETTLE;
        for (consumer, sent, read) in want {
            while read.load(Acquire) < sent && !self.recording.lock().stopped.contains(&consumer) {
                if Instant::now() >= deadline {
                    let behind = sent - read.load(Acquire);
                    self.recording.lock().behind.insert(consumer, behind);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    /// Times a consumer lost its node (its view turned stale until it
    /// subscribed elsewhere). A node that asks streams to move costs none.
    pub fn disconnects(&self) -> usize {
        self.disconnects.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn watches(&self) -> &[ServiceWatch] {
        &self.watches
    }

    /// Stops a provider on purpose (goodbye): its removal is expected.
    pub async fn stop(&mut self, service: &str, id: &str) {
        let key = (service.to_string(), id.to_string());
        if let Some(p) = self.providers.remove(&key) {
            p.shutdown().await;
        }
        self.gone.insert(key);
    }

    /// How many live providers hold their session on node `node`.
    pub fn on_node(&self, node: &str) -> usize {
        self.providers.values().filter(|p| p.state().borrow().node_id.as_deref() == Some(node)).count()
    }

    /// How many live providers are not connected to a node other than `node`
    /// (still on it, or between sessions).
    fn not_moved_off(&self, node: &str) -> usize {
        self.providers.values().filter(|p| p.state().borrow().node_id.as_deref().is_none_or(|n| n == node)).count()
    }

    /// Waits until every live provider holds its session on a node other
    /// than `node`; returns how long that took.
    pub async fn moved_off(&self, node: &str, within: Duration) -> Result<Duration> {
        let start = Instant::now();
        while self.not_moved_off(node) > 0 {
            if start.elapsed() >= within {
                bail!("{} providers not yet moved off {node} after {within:?}", self.not_moved_off(node));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(start.elapsed())
    }

    /// What every view should show: service → ids of live providers.
    pub fn expected(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (service, id) in self.providers.keys() {
            out.entry(service.clone()).or_default().insert(id.clone());
        }
        for (service, _) in &self.gone {
            out.entry(service.clone()).or_default();
        }
        out
    }

    /// Removals consumers saw of instances whose providers never stopped.
    pub async fn flaps(&self) -> Vec<Removal> {
        self.settle().await;
        self.recording
            .lock()
            .removals
            .iter()
            .filter(|r| self.providers.contains_key(&(r.service.clone(), r.id.clone())))
            .cloned()
            .collect()
    }

    /// Every removal sent to the consumers so far.
    pub async fn removals(&self) -> Vec<Removal> {
        self.settle().await;
        self.recording.lock().removals.clone()
    }

    /// Why the recording of removals cannot be trusted, if it cannot
    /// (see [`Recording`]).
    pub fn recording_gaps(&self) -> Option<String> {
        self.recording.lock().gaps()
    }

    /// The scenario's flap check, as two rows of `report`: no live provider
    /// was ever removed from a consumer's view (the first few named, with
    /// when and where), and the recorders saw every event, so that "0"
    /// means none happened rather than none was heard.
    pub async fn check_flaps(&self, report: &mut Report) {
        let flaps = self.flaps().await;
        let some: Vec<String> = flaps.iter().take(3).map(|f| format!("{f:?}")).collect();
        let measured =
            if some.is_empty() { "0".to_string() } else { format!("{} ({}…)", flaps.len(), some.join(", ")) };
        report.row("live providers missing from a consumer (flaps)", "0", measured, flaps.is_empty());
        if !flaps.is_empty() {
            println!("flaps: {flaps:?}");
        }
        // `flaps` has settled the recorders.
        self.recording_row(report);
    }

    /// A row of `report` that fails if a recorder missed events (see
    /// [`Recording`]), for scenarios that report removals without bounding them.
    pub async fn check_recording(&self, report: &mut Report) {
        self.settle().await;
        self.recording_row(report);
    }

    /// [`Self::check_recording`]'s row, once the recorders have settled.
    fn recording_row(&self, report: &mut Report) {
        let gaps = self.recording_gaps();
        report.row(
            "events the flap recorders missed",
            "none",
            gaps.clone().unwrap_or_else(|| "none".into()),
            gaps.is_none(),
        );
    }

    /// Ends every provider with a goodbye and stops recording.
    pub async fn shutdown(mut self) {
        for r in &self.recorders {
            r.abort();
        }
        for (_, p) in std::mem::take(&mut self.providers) {
            p.shutdown().await;
        }
    }
}

/// The fewest instances any of `watches` showed, checked every 20 ms until
/// `until`: what an outage leaves consumers with.
pub async fn min_view_until(watches: &[ServiceWatch], until: Instant) -> usize {
    let mut min = usize::MAX;
    while Instant::now() < until {
        min = watches.iter().map(|w| w.current().instances.len()).fold(min, usize::min);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    min
}

/// What one node's merged view shows: service → instance ids (services with
/// no instance left out).
pub async fn node_view(addr: SocketAddr) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut c = client(addr).await?;
    let services = c.list_services(v1::ListServicesRequest { namespace: String::new() }).await?.into_inner().services;
    let mut out = BTreeMap::new();
    for s in services {
        let r = c.get_service(v1::GetServiceRequest { namespace: String::new(), service: s.service.clone() }).await?;
        let listed: Vec<String> = r.into_inner().instances.into_iter().map(|i| i.instance_id).collect();
        let mut ids = BTreeSet::new();
        for id in listed {
            // Exactly one live copy per instance: a second shows as a difference.
            if let Some(dup) = ids.replace(id) {
                ids.insert(format!("{dup} (listed twice)"));
            }
        }
        if !ids.is_empty() {
            out.insert(s.service, ids);
        }
    }
    Ok(out)
}

/// The expected view without empty services (the shape of [`node_view`]).
fn non_empty(expected: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    expected.iter().filter(|(_, ids)| !ids.is_empty()).map(|(s, ids)| (s.clone(), ids.clone())).collect()
}

/// What differs from `expected`, node by node and consumer by consumer
/// (empty when everything agrees).
pub async fn differences(
    nodes: &[(String, SocketAddr)],
    watches: &[ServiceWatch],
    expected: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let want = non_empty(expected);
    let mut out = Vec::new();
    for (name, addr) in nodes {
        match node_view(*addr).await {
            Ok(view) if view == want => {}
            Ok(view) => {
                for service in want.keys().chain(view.keys()).collect::<BTreeSet<_>>() {
                    let (have, should) = (
                        view.get(service).cloned().unwrap_or_default(),
                        want.get(service).cloned().unwrap_or_default(),
                    );
                    if have != should {
                        out.push(format!("node {name}, {service}: {}", delta(&have, &should)));
                    }
                }
            }
            Err(e) => out.push(format!("node {name} does not answer: {e:#}")),
        }
    }
    for (i, w) in watches.iter().enumerate() {
        let view = w.current();
        let ids: BTreeSet<String> = view.instances.keys().cloned().collect();
        let want = expected.get(&view.service).cloned().unwrap_or_default();
        if ids != want || view.stale {
            out.push(format!("consumer {i} of {}: {} (stale: {})", view.service, delta(&ids, &want), view.stale));
        }
    }
    out
}

/// What `have` lacks and holds beyond `want`.
fn delta(have: &BTreeSet<String>, want: &BTreeSet<String>) -> String {
    let missing: Vec<&String> = want.difference(have).collect();
    let extra: Vec<&String> = have.difference(want).collect();
    format!("missing {missing:?}, extra {extra:?}")
}

/// Waits until every node and every consumer shows `expected`; returns how
/// long that took, or the differences left at the deadline.
pub async fn converge(
    nodes: &[(String, SocketAddr)],
    watches: &[ServiceWatch],
    expected: &BTreeMap<String, BTreeSet<String>>,
    within: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let diff = differences(nodes, watches, expected).await;
        if diff.is_empty() {
            return Ok(start.elapsed());
        }
        if !told && start.elapsed() >= Duration::from_secs(1) {
            // Slow to converge: say on what, to find it in the logs.
            told = true;
            let shown: Vec<String> = diff.iter().take(4).map(|d| d.chars().take(300).collect()).collect();
            step(&format!("not converged after 1 s: {}", shown.join("; ")));
        }
        if start.elapsed() >= within {
            let shown: Vec<String> = diff.iter().take(6).map(|d| d.chars().take(400).collect()).collect();
            bail!("not converged within {within:?} ({} differences):\n  {}", diff.len(), shown.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The machine the scenarios of one test binary share: most run side by
/// side (a read guard each), the heaviest alone (the write guard).
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A scenario's hold on the machine, for as long as its report lives.
#[allow(dead_code)] // held for its drop
enum Share {
    Beside(std::sync::RwLockReadGuard<'static, ()>),
    Alone(std::sync::RwLockWriteGuard<'static, ()>),
}

/// A hold on the machine alone, for a scenario that measures without a
/// [`Report`] (the slow subscriber reads its test process's resident
/// memory): like [`Report::alone`], it waits for the scenarios running to
/// finish, and none starts until it is dropped.
#[must_use = "the machine is held alone only while this lives"]
pub struct Alone(#[allow(dead_code)] Share);

/// Holds the machine alone (see [`Alone`]).
pub fn alone() -> Alone {
    Alone(Share::Alone(MACHINE.write().unwrap_or_else(|e| e.into_inner())))
}

/// One scenario's numbers.
///
/// A report checks nothing until it is finished, so one that is dropped
/// unfinished fails the test (a panic in `Drop`) instead of passing
/// silently. [`Report::run`] finishes it whatever the scenario does, and
/// keeps the error of a scenario that ended early.
#[must_use = "a report checks nothing until it is finished: use Report::run"]
pub struct Report {
    scenario: String,
    rows: Vec<Row>,
    finished: bool,
    _share: Share,
}

struct Row {
    measure: String,
    bound: String,
    measured: String,
    pass: bool,
}

impl Report {
    /// The report of a scenario that runs beside others.
    pub fn new(scenario: &str) -> Self {
        Self::holding(scenario, Share::Beside(MACHINE.read().unwrap_or_else(|e| e.into_inner())))
    }

    /// The report of a scenario that runs alone: it waits for the others
    /// running to finish, and none starts until it has. For the scenarios
    /// that load the machine most: on two cores, 2,000 reconnecting sessions
    /// beside other scenarios measured the test processes' contention (moves
    /// took 5.5 s instead of about 2 s), not the registry.
    pub fn alone(scenario: &str) -> Self {
        Self::holding(scenario, Share::Alone(MACHINE.write().unwrap_or_else(|e| e.into_inner())))
    }

    fn holding(scenario: &str, share: Share) -> Self {
        Self { scenario: scenario.into(), rows: Vec::new(), finished: false, _share: share }
    }

    /// Runs a scenario's body and finishes its report: the rows are checked
    /// when the body succeeds; when it fails, the error is returned with the
    /// rows recorded until then.
    pub async fn run(mut self, body: impl AsyncFnOnce(&mut Report) -> Result<()>) -> Result<()> {
        match body(&mut self).await {
            Ok(()) => self.finish(),
            Err(e) => {
                self.finished = true;
                let table = self.table();
                Err(e.context(format!("scenario {} ended early; its rows until then:\n{table}", self.scenario)))
            }
        }
    }

    /// Records a measure against its bound.
    pub fn row(&mut self, measure: &str, bound: impl Into<String>, measured: impl Into<String>, pass: bool) {
        self.rows.push(Row { measure: measure.into(), bound: bound.into(), measured: measured.into(), pass });
    }

    /// A duration that must not exceed `bound`.
    pub fn within(&mut self, measure: &str, bound: Duration, measured: Duration) {
        self.row(
            measure,
            format!("≤ {:.2} s", bound.as_secs_f64()),
            format!("{:.2} s", measured.as_secs_f64()),
            measured <= bound,
        );
    }

    /// A count that must be `bound` or less.
    pub fn at_most(&mut self, measure: &str, bound: usize, measured: usize) {
        self.row(measure, format!("≤ {bound}"), measured.to_string(), measured <= bound);
    }

    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.pass)
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| scenario | measure | bound | measured | pass |\n|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                self.scenario,
                r.measure,
                r.bound,
                r.measured,
                if r.pass { "yes" } else { "NO" }
            );
        }
        s
    }

    /// Prints the table, appends it to the report file, and fails if a row failed.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        if self.rows.is_empty() {
            bail!("scenario {} recorded no measure: it checked nothing", self.scenario);
        }
        let table = self.table();
        println!("{table}");
        let path = report_path();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        std::io::Write::write_all(&mut file, format!("{table}\n").as_bytes())?;
        if !self.passed() {
            bail!("scenario {} missed a bound:\n{table}", self.scenario);
        }
        Ok(())
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.finished && !std::thread::panicking() {
            panic!(
                "the report of scenario {:?} was dropped without finish(): its {} rows were never checked",
                self.scenario,
                self.rows.len()
            );
        }
    }
}

/// `FAULT_REPORT`, or `fault-report.md` in the system's temporary directory.
pub fn report_path() -> PathBuf {
    std::env::var_os("FAULT_REPORT").map_or_else(|| std::env::temp_dir().join("fault-report.md"), PathBuf::from)
}

/// True when the full matrix (and the soak) should run: `FAULTS=full`.
pub fn full_matrix() -> bool {
    std::env::var("FAULTS").is_ok_and(|v| v == "full")
}

/// Ids `prefix-0..n`.
pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(id: &str) -> WatchEvent {
        WatchEvent::Changed(InstanceChange::Removed(crate::instance("api", id, 1)))
    }

    /// Waits until `cond` holds of the fleet's recording.
    async fn until(fleet: &Fleet, cond: impl Fn(&Recording) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond(&fleet.recording.lock()) {
            assert!(Instant::now() < deadline, "the recorder did not get there within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A check waits for the recorders to read what their consumers were
    /// sent: views change before the recorders run, and removals still
    /// queued must not read as none.
    #[tokio::test]
    async fn a_check_waits_for_the_recorders_to_read_what_was_sent() {
        let mut fleet = Fleet::default();
        let (tx, rx) = tokio::sync::broadcast::channel(64);
        tx.send(removed("before")).expect("a receiver");
        fleet.record_from(0, rx);
        for i in 0..10 {
            tx.send(removed(&format!("x-{i}"))).expect("a receiver");
        }
        // One thread, and no await since: the recorder has read nothing yet.
        assert!(fleet.recording.lock().removals.is_empty());
        assert_eq!(fleet.removals().await.len(), 11, "the one queued before the probe too");
        let mut report = Report::new("recorder self-test: settle");
        fleet.check_flaps(&mut report).await;
        report.finish().expect("nothing missed, no flap");
    }

    /// A recorder that does not read what was sent (here: gone, its channel
    /// still open) fails the check, naming how far behind it is, rather than
    /// reading as "0 flaps". The clock is paused: the 10 s wait is instant.
    #[tokio::test(start_paused = true)]
    async fn a_recorder_that_does_not_catch_up_fails_the_flap_check() {
        let mut fleet = Fleet::default();
        let (tx, rx) = tokio::sync::broadcast::channel(64);
        fleet.record_from(2, rx);
        fleet.recorders[0].abort();
        for i in 0..3 {
            tx.send(removed(&format!("x-{i}"))).expect("a receiver");
        }
        let mut report = Report::new("recorder self-test: behind");
        fleet.check_flaps(&mut report).await;
        let err = report.finish().expect_err("a recorder behind must fail the check").to_string();
        assert!(err.contains("recorder still behind after 10s (consumer 2: 3)"), "{err}");
    }

    /// A recorder that falls behind its channel fails the flap check with
    /// the number of events it lost, instead of reading as "0 flaps".
    #[tokio::test]
    async fn a_lagging_recorder_fails_the_flap_check() {
        let mut fleet = Fleet::default();
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        // Ten events before the recorder runs (this runtime has one thread):
        // the channel keeps the last four.
        fleet.record_from(0, rx);
        for i in 0..10 {
            tx.send(removed(&format!("x-{i}"))).expect("a receiver");
        }
        until(&fleet, |r| r.removals.len() == 4).await;
        let mut report = Report::new("recorder self-test: lag");
        fleet.check_flaps(&mut report).await;
        let err = report.finish().expect_err("a lagging recorder must fail the check").to_string();
        assert!(err.contains("recorder lagged: 6 events lost (consumer 0: 6)"), "{err}");
    }

    /// A recorder whose channel closes while the fleet still watches has
    /// stopped listening: that fails the check too.
    #[tokio::test]
    async fn a_recorder_that_stops_listening_fails_the_flap_check() {
        let mut fleet = Fleet::default();
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        fleet.record_from(3, rx);
        drop(tx);
        until(&fleet, |r| !r.stopped.is_empty()).await;
        let mut report = Report::new("recorder self-test: stopped");
        fleet.check_flaps(&mut report).await;
        let err = report.finish().expect_err("a stopped recorder must fail the check").to_string();
        assert!(err.contains("recorder stopped listening at consumers {3}"), "{err}");
    }

    /// Only removals of live providers are flaps.
    #[tokio::test]
    async fn a_removal_of_an_instance_the_fleet_does_not_hold_is_no_flap() {
        let mut fleet = Fleet::default();
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        fleet.record_from(1, rx);
        // Not a live provider of the fleet: no flap.
        tx.send(removed("stranger")).expect("a receiver");
        until(&fleet, |r| r.removals.len() == 1).await;
        let mut report = Report::new("recorder self-test: no flap");
        fleet.check_flaps(&mut report).await;
        report.finish().expect("a removal of an unknown instance is no flap");
        assert!(fleet.flaps().await.is_empty());
        drop(tx);
    }

    /// A one-way cut holds a live connection's bytes and the heal delivers
    /// them, all and in order: TCP never loses bytes from the middle of a
    /// stream, and NATS routes rely on that.
    #[tokio::test]
    async fn a_one_way_cut_holds_bytes_until_the_heal_and_loses_none() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let link = FaultLink::start(target.local_addr().expect("addr")).await.expect("link");
        let mut dialer = tokio::net::TcpStream::connect(link.addr).await.expect("connect");
        let (mut accepted, _) = target.accept().await.expect("accept");
        for (held, from_dialer) in [(LinkState::HoldFromDialer, true), (LinkState::HoldToDialer, false)] {
            link.set(held);
            let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let (from, to) = if from_dialer { (&mut dialer, &mut accepted) } else { (&mut accepted, &mut dialer) };
            let (mut to_r, _to_w) = to.split();
            let (_from_r, mut from_w) = from.split();
            let writing = async {
                from_w.write_all(&sent).await.expect("write");
            };
            let mut got = vec![0u8; sent.len()];
            let mut n = 0;
            let reading = async {
                // Nothing arrives while the link holds this direction.
                let early = tokio::time::timeout(Duration::from_millis(300), to_r.read(&mut got)).await;
                assert!(early.is_err(), "{held:?}: bytes passed a held link");
                link.set(LinkState::Up);
                while n < sent.len() {
                    let read = tokio::time::timeout(Duration::from_secs(5), to_r.read(&mut got[n..])).await;
                    let k = read.expect("bytes after the heal").expect("read");
                    assert!(k > 0, "{held:?}: connection closed after {n} bytes");
                    n += k;
                }
            };
            tokio::join!(writing, reading);
            assert_eq!(n, sent.len());
            assert!(got == sent, "{held:?}: bytes lost or reordered");
        }
    }

    /// A report dropped without `finish()` fails the test that dropped it.
    #[test]
    fn a_report_dropped_unfinished_panics() {
        let dropped = std::panic::catch_unwind(|| {
            let mut report = Report::new("unfinished");
            report.row("something", "0", "1", false);
            drop(report);
        });
        let message = dropped.expect_err("an unfinished report must fail the test");
        let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("dropped without finish()"), "{text}");
    }

    /// A report with no rows checked nothing: finishing it fails.
    #[test]
    fn a_report_without_rows_fails() {
        let err = Report::new("empty").finish().expect_err("nothing was checked");
        assert!(err.to_string().contains("recorded no measure"), "{err}");
    }

    /// `run` finishes the report, and keeps the error of a body that failed.
    #[tokio::test]
    async fn run_finishes_the_report_and_keeps_an_early_error() {
        let passed = Report::new("passes").run(async |r| {
            r.at_most("zero", 0, 0);
            Ok(())
        });
        passed.await.expect("all rows passed");
        let failed = Report::new("fails a row").run(async |r| {
            r.at_most("zero", 0, 1);
            Ok(())
        });
        assert!(failed.await.is_err());
        let early = Report::new("ends early").run(async |r| {
            r.at_most("zero", 0, 0);
            bail!("converge failed: node a missing x")
        });
        let err = format!("{:#}", early.await.expect_err("the body failed"));
        assert!(err.contains("converge failed: node a missing x") && err.contains("ended early"), "{err}");
    }
}
