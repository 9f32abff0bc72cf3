//! The six scenarios against ZooKeeper (Debian package zookeeper, 3.8).
//!
//! Model: an instance is the ephemeral znode `/registry/default/<service>/<id>`
//! holding the prost-encoded `registry.v1.Instance`, owned by its provider's
//! session (the client library pings every timeout/3); the service znodes are
//! persistent and made before anything is timed. A subscriber is a persistent
//! recursive watch on another server. ZooKeeper's watch events carry the path
//! only, so a subscriber that wants the instance reads it (getData) after the
//! event: rows say whether they time the event alone or event + getData.
//! A dead provider is seen when its session expires (timeout 3 s in the
//! failure scenario; tickTime is 500 ms so that the expiry check runs every
//! 0.5 s and a 3 s timeout is allowed).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use registry_tests::nats::free_port;
use registry_tests::{CuttableLink, instance};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use zookeeper_client as zk;

use super::{
    BENCH_TTL, FAILURE_TTL, NAMESPACE, PeerProc, TempDir, cpu, decode, dir_bytes, encode, key, not_comparable, payload,
    poll, process_rows, run_script, script_value, sent_at, service_dir, variant,
};
use crate::scenarios::{Row, histogram, latency_rows, row};

const SCRIPT: &str = include_str!("../../peers/zookeeper.sh");
const SYSTEM: &str = "zookeeper";
/// ZooKeeper's time unit. Sessions may last 2 to 360 ticks here (see `config`).
const TICK_MS: u64 = 500;

/// Where ZooKeeper and java are on this machine (installed by
/// bench/peers/zookeeper.sh when missing).
pub(crate) struct ZooKeeper {
    java: PathBuf,
    classpath: String,
    pub(crate) version: String,
    heap_mb: u32,
}

impl ZooKeeper {
    pub(crate) fn locate(heap_mb: u32) -> Result<Self> {
        let v = run_script("zookeeper.sh", SCRIPT)?;
        Ok(Self {
            java: script_value(&v, "zookeeper.sh", "java")?.into(),
            classpath: script_value(&v, "zookeeper.sh", "classpath")?,
            version: script_value(&v, "zookeeper.sh", "version")?,
            heap_mb,
        })
    }
}

struct Server {
    name: String,
    client: SocketAddr,
    proc: Option<PeerProc>,
}

/// A ZooKeeper ensemble on loopback (standalone for one server). All `names`
/// are in the configuration; only some may be running (a server started later
/// joins and syncs from the leader).
struct Ensemble {
    servers: Vec<Server>,
    java: PathBuf,
    classpath: String,
    heap_mb: u32,
    dir: TempDir,
}

impl Ensemble {
    async fn start(zk: &ZooKeeper, names: &[&str], running: usize, tag: &str) -> Result<Self> {
        let dir = TempDir::new(&format!("zk-{tag}"))?;
        let mut servers = Vec::new();
        let mut quorum = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let client: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            quorum.push(format!("server.{}=127.0.0.1:{}:{}", i + 1, free_port()?, free_port()?));
            servers.push(Server { name: (*name).into(), client, proc: None });
        }
        for (i, s) in servers.iter().enumerate() {
            let data = dir.path().join(&s.name);
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("myid"), format!("{}\n", i + 1))?;
            let mut cfg = format!(
                "tickTime={TICK_MS}\n\
                 initLimit=600\n\
                 syncLimit=20\n\
                 dataDir={}\n\
                 clientPort={}\n\
                 clientPortAddress=127.0.0.1\n\
                 maxClientCnxns=0\n\
                 minSessionTimeout={}\n\
                 maxSessionTimeout={}\n\
                 admin.enableServer=false\n",
                data.display(),
                s.client.port(),
                2 * TICK_MS,
                BENCH_TTL.as_millis(),
            );
            if names.len() > 1 {
                cfg.push_str(&quorum.join("\n"));
                cfg.push('\n');
            }
            std::fs::write(dir.path().join(format!("{}.cfg", s.name)), cfg)?;
        }
        let mut ensemble =
            Self { servers, java: zk.java.clone(), classpath: zk.classpath.clone(), heap_mb: zk.heap_mb, dir };
        for i in 0..running {
            ensemble.spawn(i)?;
        }
        for i in 0..running {
            ensemble.wait_serving(i, Duration::from_secs(120)).await?;
        }
        Ok(ensemble)
    }

    /// Starts server `i` the way zkServer.sh does: java -cp ... QuorumPeerMain <cfg>.
    fn spawn(&mut self, i: usize) -> Result<()> {
        let name = self.servers[i].name.clone();
        let mut cmd = Command::new(&self.java);
        cmd.arg(format!("-Xmx{}m", self.heap_mb))
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg("-cp")
            .arg(&self.classpath)
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.path().join(format!("{name}.cfg")))
            .current_dir(self.dir.path());
        let log = self.dir.path().join(format!("{name}.log"));
        self.servers[i].proc = Some(PeerProc::spawn(SYSTEM, &name, cmd, log)?);
        Ok(())
    }

    /// Waits until server `i` accepts a session (it does only once it serves).
    async fn wait_serving(&mut self, i: usize, within: Duration) -> Result<()> {
        let addr = self.servers[i].client;
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.servers[i].proc.as_mut() {
                p.check_alive()?;
            }
            if let Ok(client) = probe(addr).await
                && client.check_stat("/").await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = self.servers[i].proc.as_ref().map(PeerProc::log_tail).unwrap_or_default();
                bail!("zookeeper {} not serving after {within:?}; log:\n{tail}", self.servers[i].name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.servers[i].client
    }

    fn proc(&self, i: usize) -> Result<&PeerProc> {
        self.servers[i].proc.as_ref().ok_or_else(|| anyhow!("zookeeper {} is not running", self.servers[i].name))
    }

    fn procs(&self) -> Vec<&PeerProc> {
        self.servers.iter().filter_map(|s| s.proc.as_ref()).collect()
    }
}

/// One attempt at a session with server `addr` only.
async fn probe(addr: SocketAddr) -> Result<zk::Client> {
    let connector = zk::Client::connector().with_session_timeout(Duration::from_secs(10)).with_fail_eagerly();
    Ok(timeout(Duration::from_secs(2), connector.connect(&addr.to_string())).await??)
}

/// A session (its own TCP connection) with server `addr`.
async fn session(addr: SocketAddr, timeout_: Duration) -> Result<zk::Client> {
    let connector = zk::Client::connector().with_session_timeout(timeout_);
    connector.connect(&addr.to_string()).await.with_context(|| format!("zookeeper session with {addr}"))
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

/// Makes the persistent service znodes (not timed: a service is made once).
async fn make_services(client: &zk::Client, services: impl Iterator<Item = String>) -> Result<()> {
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for s in services {
        client.mkdir(&service_dir(&s), &options).await?;
    }
    Ok(())
}

fn bench_services(sessions: u32) -> impl Iterator<Item = String> {
    (0..sessions).map(|s| format!("svc-{s}"))
}

/// Znodes under /registry/default (service znodes and instances) on the
/// server `client` is connected to (a local read).
async fn count(client: &zk::Client) -> Result<usize> {
    Ok(client.count_descendants_number(&format!("/registry/{NAMESPACE}")).await?)
}

/// Writes a marker znode after everything written so far (through `client`).
async fn mark(client: &zk::Client) -> Result<&'static str> {
    let marker = "/registry-bench-marker";
    client.create(marker, &[], &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    Ok(marker)
}

/// Waits until the server `client` is connected to has the marker (a cheap
/// read, polled every 10 ms; writes apply in one order everywhere, so it then
/// has all that came before), then checks that it holds `n` znodes.
async fn wait_converged(client: &zk::Client, marker: &str, n: usize, what: &str, within: Duration) -> Result<()> {
    poll(&format!("{what} to have the marker"), within, Duration::from_millis(10), || async move {
        matches!(client.check_stat(marker).await, Ok(Some(_))).then_some(())
    })
    .await?;
    let shown = count(client).await?;
    if shown != n {
        bail!("{what} has the marker but {shown} of {n} znodes");
    }
    Ok(())
}

/// Registers `total` instances on server `i` over `sessions` sessions (one
/// TCP connection each: ZooKeeper has no sessions multiplexed on a
/// connection): pipelined (up to 512 creates in flight per session) or one at
/// a time. Returns the sessions (their instances live as long as they do).
async fn register_many(
    ens: &Ensemble,
    i: usize,
    total: u32,
    sessions: u32,
    pipelined: bool,
    metadata: usize,
) -> Result<Vec<zk::Client>> {
    let per = total / sessions;
    let addr = ens.addr(i);
    let mut tasks = Vec::new();
    for s in 0..sessions {
        tasks.push(tokio::spawn(async move {
            let client = session(addr, BENCH_TTL).await?;
            let service = format!("svc-{s}");
            let items: Vec<(String, Vec<u8>)> = (0..per)
                .map(|i| {
                    let id = format!("s{s}-i{i}");
                    (key(&service, &id), encode(&payload(&service, &id, 1 + i % 60_000, metadata)))
                })
                .collect();
            let options = ephemeral();
            if pipelined {
                // Each call sends its request at once; answers come in order.
                let mut inflight = VecDeque::new();
                for (path, data) in &items {
                    if inflight.len() >= 512
                        && let Some(oldest) = inflight.pop_front()
                    {
                        oldest.await?;
                    }
                    inflight.push_back(client.create(path, data, &options));
                }
                while let Some(oldest) = inflight.pop_front() {
                    oldest.await?;
                }
            } else {
                for (path, data) in &items {
                    client.create(path, data, &options).await?;
                }
            }
            Ok::<_, anyhow::Error>(client)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// Scenario 1, ingest: instances registered per second, into an ensemble of `nodes` servers.
pub(crate) async fn ingest(zk: &ZooKeeper, nodes: usize, total: u32, pipelined: bool) -> Result<Vec<Row>> {
    let v = variant(SYSTEM, &format!("{nodes} node(s), {}", if pipelined { "pipelined" } else { "one at a time" }));
    let names = NAMES.get(..nodes).ok_or_else(|| anyhow!("1 to 5 nodes"))?;
    let ens = Ensemble::start(zk, names, nodes, "ingest").await?;
    let sessions = 200;
    let setup = session(ens.addr(0), BENCH_TTL).await?;
    make_services(&setup, bench_services(sessions)).await?;
    let expected = (total / sessions * sessions) as usize + bench_services(sessions).count();
    let procs = ens.procs();
    let cpu0 = cpu(&procs)?;
    let t0 = Instant::now();
    let clients = register_many(&ens, 0, total, sessions, pipelined, 0).await?;
    let accepted = t0.elapsed();
    let marker = mark(&setup).await?;
    for (i, name) in names.iter().enumerate() {
        let reader = session(ens.addr(i), BENCH_TTL).await?;
        wait_converged(&reader, marker, expected, &format!("server {name}"), Duration::from_secs(300)).await?;
    }
    let converged = t0.elapsed();
    let cpu1 = cpu(&procs)?;
    let mut rows = vec![
        row("ingest", &v, "accepted by node a", f64::from(total) / accepted.as_secs_f64(), "inst/s"),
        row("ingest", &v, "converged on all nodes", f64::from(total) / converged.as_secs_f64(), "inst/s"),
    ];
    rows.extend(process_rows("ingest", &v, &procs, &cpu0, &cpu1, f64::from(total))?);
    drop(clients);
    Ok(rows)
}

/// "p17" -> 17.
fn prop_index(path: &str) -> Option<u64> {
    path.rsplit('/').next()?.strip_prefix('p')?.parse().ok()
}

/// A getData already sent, its answer to come.
type Pending = Pin<Box<dyn Future<Output = Result<(Vec<u8>, zk::Stat), zk::Error>> + Send>>;
/// A create or setData already sent, its answer to come.
type Sent<'a> = Pin<Box<dyn Future<Output = Result<(), zk::Error>> + Send + 'a>>;

/// Scenario 2, propagation: create/setData on server a, seen by a persistent recursive
/// watch on server c. Two latencies: the watch event alone (it has no data;
/// matched to its change by path and order), and event + getData (the
/// subscriber then has the instance, as a registry subscriber has from its
/// push; when several changes of a path are pending, one read sees the newest
/// and only that one is timed, so there are fewer samples).
pub(crate) async fn propagation(zk: &ZooKeeper, rate: u32, seconds: u64) -> Result<Vec<Row>> {
    let base = format!("{rate} changes/s");
    let ens = Ensemble::start(zk, &NAMES[..3], 3, "prop").await?;
    let provider = session(ens.addr(0), BENCH_TTL).await?;
    make_services(&provider, std::iter::once("prop".to_string())).await?;
    let watcher = session(ens.addr(2), BENCH_TTL).await?;
    let dir = service_dir("prop");
    let mut watch = watcher.watch(&dir, zk::AddWatchMode::PersistentRecursive).await?;
    let total = u64::from(rate) * seconds;
    let sent_times: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let epoch = Instant::now();
    let procs = ens.procs();
    let cpu0 = cpu(&procs)?;
    // Events: timed at once, and a getData sent for each (answers come in order).
    let (reads_tx, mut reads_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Pending)>();
    let times = sent_times.clone();
    let events = tokio::spawn(async move {
        let mut h = histogram()?;
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut n = 0u64;
        while n < total {
            let e = timeout(Duration::from_secs(30), watch.changed()).await.context("no watch event in time")?;
            let now = epoch.elapsed().as_micros() as u64;
            match e.event_type {
                zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {}
                zk::EventType::Session if e.session_state.is_terminated() => bail!("watcher session ended"),
                _ => continue,
            }
            let Some(p) = prop_index(&e.path) else { continue };
            let k = seen.entry(e.path.clone()).or_insert(0);
            let index = p + 100 * *k;
            *k += 1;
            n += 1;
            if let Some(sent) = times.get(index as usize) {
                h.record(now.saturating_sub(sent.load(Ordering::Relaxed)).max(1))?;
            }
            let read: Pending = Box::pin(watcher.get_data(&e.path));
            if reads_tx.send((e.path, read)).is_err() {
                bail!("reader gone");
            }
        }
        Ok::<_, anyhow::Error>(h)
    });
    let reads = tokio::spawn(async move {
        let mut h = histogram()?;
        let mut newest: HashMap<String, u64> = HashMap::new();
        while let Some((path, read)) = reads_rx.recv().await {
            let (data, _) = read.await?;
            let now = epoch.elapsed().as_micros() as u64;
            if let Some(sent) = sent_at(&decode(&data)?) {
                let last = newest.entry(path).or_insert(0);
                if sent > *last {
                    *last = sent;
                    h.record(now.saturating_sub(sent).max(1))?;
                }
            }
        }
        Ok::<_, anyhow::Error>(h)
    });
    // Offered load: `rate` changes per second on a 1 ms clock, at most 256
    // unanswered (as the registry's provider session). A path's first change
    // creates it, the next ones set its data (the registry's upsert).
    let paths: Vec<String> = (0..100).map(|p| key("prop", &format!("p{p}"))).collect();
    let options = ephemeral();
    let mut inflight: VecDeque<Sent<'_>> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let due = ((epoch.elapsed().as_micros() as u64 * u64::from(rate)) / 1_000_000).min(total);
        while sent < due {
            let mut i = instance("prop", &format!("p{}", sent % 100), 1 + (sent % 60_000) as u32);
            let t = epoch.elapsed().as_micros() as u64;
            i.metadata.insert("t".into(), t.to_string());
            sent_times[sent as usize].store(t, Ordering::Relaxed);
            let path = &paths[(sent % 100) as usize];
            let data = encode(&i);
            if sent < 100 {
                let create = provider.create(path, &data, &options);
                inflight.push_back(Box::pin(async move { create.await.map(|_| ()) }));
            } else {
                let set = provider.set_data(path, &data, None);
                inflight.push_back(Box::pin(async move { set.await.map(|_| ()) }));
            }
            sent += 1;
        }
        while inflight.len() > 256
            && let Some(oldest) = inflight.pop_front()
        {
            oldest.await?;
        }
    }
    while let Some(oldest) = inflight.pop_front() {
        oldest.await?;
    }
    let notified = events.await??;
    let with_data = reads.await??;
    let cpu1 = cpu(&procs)?;
    let mut rows = latency_rows("propagation a→c", &variant(SYSTEM, &format!("{base}, event + getData")), &with_data);
    rows.extend(latency_rows("propagation a→c", &variant(SYSTEM, &format!("{base}, event only (no data)")), &notified));
    let per_change: f64 = cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).sum::<f64>() * 1e6 / total as f64;
    rows.push(row(
        "propagation a→c",
        &variant(SYSTEM, &format!("{base}, event + getData")),
        "CPU per change, all 3 nodes",
        per_change,
        "µs",
    ));
    Ok(rows)
}

/// Scenario 3, fan-out: one service, `subscribers` persistent recursive watches over
/// `connections` sessions (ZooKeeper keeps one watch per path and connection,
/// so the server sends one event per connection and the client library hands
/// it to every watcher), one instance flapping. Each watcher then reads the
/// instance itself (getData), as an independent subscriber must.
pub(crate) async fn fanout(zk: &ZooKeeper, subscribers: u32, connections: u32, flaps: u32) -> Result<Vec<Row>> {
    let v = variant(SYSTEM, &format!("{subscribers} subscribers over {connections} connections"));
    let ens = Ensemble::start(zk, &NAMES[..1], 1, "fanout").await?;
    let node = ens.proc(0)?;
    let provider = session(ens.addr(0), BENCH_TTL).await?;
    make_services(&provider, std::iter::once("flap".to_string())).await?;
    let target = key("flap", "x");
    let ready = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    // Per flap: watchers that have the event / the data, and the latest times.
    let counters = || -> Arc<Vec<AtomicU64>> { Arc::new((0..=flaps).map(|_| AtomicU64::new(0)).collect()) };
    let (got_event, last_event, got_data, last_data) = (counters(), counters(), counters(), counters());
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(session(ens.addr(0), BENCH_TTL).await?);
    }
    let mut watchers = JoinSet::new();
    for s in 0..subscribers {
        let client = clients[(s % connections) as usize].clone();
        let (ready, target) = (ready.clone(), target.clone());
        let (got_event, last_event, got_data, last_data) =
            (got_event.clone(), last_event.clone(), got_data.clone(), last_data.clone());
        watchers.spawn(async move {
            let Ok(mut watch) = client.watch(&service_dir("flap"), zk::AddWatchMode::PersistentRecursive).await else {
                return;
            };
            ready.fetch_add(1, Ordering::Relaxed);
            let mut changes = 0usize;
            loop {
                let e = watch.changed().await;
                match e.event_type {
                    zk::EventType::NodeCreated | zk::EventType::NodeDataChanged if e.path == target => {}
                    zk::EventType::Session if e.session_state.is_terminated() => return,
                    _ => continue,
                }
                // The k-th change of the znode is flap k.
                changes += 1;
                if changes < got_event.len() {
                    got_event[changes].fetch_add(1, Ordering::Relaxed);
                    last_event[changes].fetch_max(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                let Ok((data, _)) = client.get_data(&target).await else { continue };
                let now = epoch.elapsed().as_micros() as u64;
                if let Ok(i) = decode(&data) {
                    let f = i.port as usize;
                    if f < got_data.len() {
                        got_data[f].fetch_add(1, Ordering::Relaxed);
                        last_data[f].fetch_max(now, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    poll("all watches added", Duration::from_secs(120), Duration::from_millis(10), || {
        let ready = ready.clone();
        async move { (ready.load(Ordering::Relaxed) == u64::from(subscribers)).then_some(()) }
    })
    .await?;
    let (mut h_data, mut h_event) = (histogram()?, histogram()?);
    let options = ephemeral();
    let cpu0 = node.cpu_seconds()?;
    for f in 1..=flaps {
        let t0 = epoch.elapsed().as_micros() as u64;
        let data = encode(&instance("flap", "x", f));
        if f == 1 {
            provider.create(&target, &data, &options).await?;
        } else {
            provider.set_data(&target, &data, None).await?;
        }
        let f_idx = f as usize;
        let (got_event, got_data) = (got_event.clone(), got_data.clone());
        poll("every watcher has the flap", Duration::from_secs(30), Duration::from_millis(10), || {
            let (got_event, got_data) = (got_event.clone(), got_data.clone());
            async move {
                let all = u64::from(subscribers);
                (got_event[f_idx].load(Ordering::Relaxed) == all && got_data[f_idx].load(Ordering::Relaxed) == all)
                    .then_some(())
            }
        })
        .await?;
        h_data.record(last_data[f_idx].load(Ordering::Relaxed).saturating_sub(t0).max(1))?;
        h_event.record(last_event[f_idx].load(Ordering::Relaxed).saturating_sub(t0).max(1))?;
    }
    let cpu = node.cpu_seconds()? - cpu0;
    watchers.abort_all();
    let scenario = "fan-out: last subscriber notified";
    let with_data =
        variant(SYSTEM, &format!("{subscribers} subscribers over {connections} connections, event + getData"));
    let mut rows = latency_rows(scenario, &with_data, &h_data);
    rows.extend(latency_rows(
        scenario,
        &variant(SYSTEM, &format!("{subscribers} subscribers over {connections} connections, event only (no data)")),
        &h_event,
    ));
    let updates = f64::from(flaps) * f64::from(subscribers);
    rows.push(row(
        scenario,
        &with_data,
        "server CPU per watcher update (its getData included)",
        cpu * 1e6 / updates,
        "µs",
    ));
    rows.push(not_comparable(
        scenario,
        &v,
        "node CPU per push: the server sends one event per connection, not per watcher (the client library fans \
         it out), and every watcher then reads the data with its own getData",
    ));
    drop(provider);
    Ok(rows)
}

/// Scenario 4, scale and memory: resident memory per instance (of the JVM: its heap is
/// collected lazily, so this is an upper bound of what the data needs), and
/// the latency of reading one 1,000-instance service (getChildren, then one
/// multi-read of every child's data, decoded) while a writer changes 1k/s.
pub(crate) async fn scale(zk: &ZooKeeper, instances: u32, metadata: usize) -> Result<Vec<Row>> {
    let v = variant(SYSTEM, &format!("{instances} instances, {metadata} B metadata"));
    let ens = Ensemble::start(zk, &NAMES[..1], 1, "scale").await?;
    let node = ens.proc(0)?;
    let sessions = (instances / 1_000).max(1);
    let reader = session(ens.addr(0), BENCH_TTL).await?;
    make_services(&reader, bench_services(sessions).chain(std::iter::once("svc-0".to_string()))).await?;
    let (base, _) = node.rss_kib()?;
    let clients = register_many(&ens, 0, instances, sessions, true, metadata).await?;
    let (rss, peak) = node.rss_kib()?;
    let per = (rss.saturating_sub(base) as f64 * 1024.0) / f64::from(instances);
    let disk = dir_bytes(ens.dir.path());
    let mut rows = vec![
        row("scale", &v, "RSS", rss as f64 / 1024.0, "MiB"),
        row("scale", &v, "peak RSS", peak as f64 / 1024.0, "MiB"),
        row("scale", &v, "RSS per instance", per, "B"),
        row("scale", &v, "RSS per instance beyond its metadata", per - metadata as f64, "B"),
        row("scale", &v, "data dir on disk (txn logs, snapshots; allocated)", disk as f64 / 1_048_576.0, "MiB"),
    ];
    let writer = session(ens.addr(0), BENCH_TTL).await?;
    let stop = Instant::now() + Duration::from_secs(5);
    let writes = tokio::spawn(async move {
        let options = ephemeral();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut n = 0u32;
        while Instant::now() < stop {
            tick.tick().await;
            let i = instance("svc-0", &format!("w{}", n % 100), 1 + n % 60_000);
            let path = key("svc-0", &i.instance_id);
            if n < 100 {
                writer.create(&path, &encode(&i), &options).await?;
            } else {
                writer.set_data(&path, &encode(&i), None).await?;
            }
            n += 1;
        }
        Ok::<_, anyhow::Error>(n)
    });
    let dir = service_dir("svc-0");
    let mut h = histogram()?;
    while Instant::now() < stop {
        let t = Instant::now();
        let children = reader.list_children(&dir).await?;
        let mut multi = reader.new_multi_reader();
        for c in &children {
            multi.add_get_data(&format!("{dir}/{c}"))?;
        }
        let mut decoded = Vec::with_capacity(children.len());
        for r in multi.commit().await? {
            if let zk::MultiReadResult::Data { data, .. } = r {
                decoded.push(decode(&data)?);
            }
        }
        h.record((t.elapsed().as_micros() as u64).max(1))?;
        std::hint::black_box(decoded);
    }
    let writes = writes.await??;
    rows.extend(latency_rows("scale: GetService (1,000 instances)", &format!("{v}, {writes} writes in 5 s"), &h));
    drop(clients);
    Ok(rows)
}

/// Scenario 5, catch-up: a 3-server ensemble of which two run and hold `instances`;
/// the third starts with an empty data dir. Ready: it accepts a session (a
/// server does only once it has synced with the leader) and holds a marker
/// written after every instance.
pub(crate) async fn catchup(zk: &ZooKeeper, instances: u32, metadata: usize) -> Result<Vec<Row>> {
    let v = variant(SYSTEM, &format!("{instances} instances, {metadata} B metadata"));
    let mut ens = Ensemble::start(zk, &["a", "b", "cold"], 2, "catchup").await?;
    let sessions = (instances / 1_000).max(1);
    let setup = session(ens.addr(0), BENCH_TTL).await?;
    make_services(&setup, bench_services(sessions)).await?;
    let clients = register_many(&ens, 0, instances, sessions, true, metadata).await?;
    let expected = (instances / sessions * sessions) as usize + bench_services(sessions).count();
    let marker = mark(&setup).await?;
    wait_converged(&session(ens.addr(1), BENCH_TTL).await?, marker, expected, "server b", Duration::from_secs(600))
        .await?;
    let t0 = Instant::now();
    ens.spawn(2)?;
    let addr = ens.addr(2);
    let deadline = Instant::now() + Duration::from_secs(1_200);
    let mut joiner: Option<zk::Client> = None;
    let joiner = loop {
        if joiner.is_none() {
            joiner = probe(addr).await.ok();
        }
        if let Some(c) = joiner.as_ref()
            && matches!(c.check_stat(marker).await, Ok(Some(_)))
        {
            break joiner.take().ok_or_else(|| anyhow!("no joiner session"))?;
        }
        if Instant::now() >= deadline {
            bail!("the joiner did not catch up");
        }
        if let Some(p) = ens.servers[2].proc.as_mut() {
            p.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ready = t0.elapsed();
    let shown = count(&joiner).await?;
    if shown != expected {
        bail!("the joiner turned ready with {shown} of {expected} znodes");
    }
    let rows = vec![
        row("catch-up", &v, "process start to ready", ready.as_secs_f64(), "s"),
        row("catch-up", &v, "joiner peak RSS", ens.proc(2)?.rss_kib()?.1 as f64 / 1024.0, "MiB"),
    ];
    drop(clients);
    Ok(rows)
}

/// Reads the watch until an event of `kind` for `path`.
async fn until_event(
    watch: &mut zk::PersistentWatcher,
    path: &str,
    kind: zk::EventType,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = timeout(left, watch.changed()).await.with_context(|| format!("no {kind:?} of {path} in {within:?}"))?;
        if e.event_type == kind && e.path == path {
            return Ok(());
        }
        if e.event_type == zk::EventType::Session && e.session_state.is_terminated() {
            bail!("watcher session ended");
        }
    }
}

/// Scenario 6, failure detection: a provider's connection to server a dies (cut at the
/// TCP level, as for the registry); its session (timeout 3 s) expires and the
/// deletion of its ephemeral znode reaches a watch on server c.
pub(crate) async fn failure(zk: &ZooKeeper, rounds: u32) -> Result<Vec<Row>> {
    let ens = Ensemble::start(zk, &NAMES[..3], 3, "failure").await?;
    let setup = session(ens.addr(0), BENCH_TTL).await?;
    make_services(&setup, std::iter::once("fragile".to_string())).await?;
    let watcher = session(ens.addr(2), BENCH_TTL).await?;
    let mut watch = watcher.watch(&service_dir("fragile"), zk::AddWatchMode::PersistentRecursive).await?;
    let mut h = histogram()?;
    let mut negotiated = FAILURE_TTL;
    for r in 0..rounds {
        let link = CuttableLink::start(ens.addr(0)).await?;
        let provider = session(link.addr, FAILURE_TTL).await?;
        negotiated = provider.session_timeout();
        let id = format!("victim-{r}");
        let path = key("fragile", &id);
        provider.create(&path, &encode(&instance("fragile", &id, 1)), &ephemeral()).await?;
        until_event(&mut watch, &path, zk::EventType::NodeCreated, Duration::from_secs(10)).await?;
        let t0 = Instant::now();
        link.cut();
        until_event(&mut watch, &path, zk::EventType::NodeDeleted, Duration::from_secs(60)).await?;
        h.record((t0.elapsed().as_micros() as u64).max(1))?;
        drop(provider);
    }
    let scenario = format!("failure detection (session timeout {} s, tickTime {TICK_MS} ms)", negotiated.as_secs_f64());
    Ok(latency_rows(&scenario, &variant(SYSTEM, "provider link cut on a, seen on c"), &h))
}
