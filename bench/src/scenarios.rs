//! The benchmark scenarios. Each starts its own nats-server and registry-node
//! processes, drives them over real gRPC at a fixed offered load, and returns
//! result rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use registry_proto::v1;
use registry_tests::nats::NatsServer;
use registry_tests::{CuttableLink, Session, Watch, eventually, instance};
use tokio::time::Instant;
use v1::register_request::Kind as In;
use v1::register_response::Kind as Out;
use v1::subscribe_response::Kind as Push;

use crate::procs::{NodeProc, Setup};

/// One measured value.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) variant: String,
    pub(crate) metric: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
}

pub(crate) fn row(scenario: &str, variant: &str, metric: &str, value: f64, unit: &'static str) -> Row {
    Row { scenario: scenario.into(), variant: variant.into(), metric: metric.into(), value, unit }
}

pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

pub(crate) fn latency_rows(scenario: &str, variant: &str, h: &Histogram<u64>) -> Vec<Row> {
    vec![
        row(scenario, variant, "p50", h.value_at_quantile(0.50) as f64 / 1_000.0, "ms"),
        row(scenario, variant, "p99", h.value_at_quantile(0.99) as f64 / 1_000.0, "ms"),
        row(scenario, variant, "p99.9", h.value_at_quantile(0.999) as f64 / 1_000.0, "ms"),
        row(scenario, variant, "samples", h.len() as f64, ""),
    ]
}

async fn cluster(setup: &Setup, n: usize, tag: &str) -> Result<(Option<NatsServer>, Vec<NodeProc>)> {
    if n == 1 {
        return Ok((None, vec![setup.start_node("a", &[], tag).await?]));
    }
    let nats = NatsServer::start().await?;
    let mut nodes = Vec::new();
    for name in ["a", "b", "c", "d", "e"].iter().take(n) {
        nodes.push(setup.start_node(name, &[nats.url()], tag).await?);
    }
    Ok((Some(nats), nodes))
}

pub(crate) fn with_metadata(mut i: v1::Instance, bytes: usize) -> v1::Instance {
    if bytes > 0 {
        i.metadata.insert("blob".into(), "m".repeat(bytes.saturating_sub(4)));
    }
    i
}

/// Registers `total` instances on `node` over `sessions` sessions (spread over 8
/// connections): pipelined (all sent, then all answers read) or one at a time.
/// Returns the sessions (their instances live as long as they do).
async fn register_many(
    setup: &Setup,
    node: &NodeProc,
    total: u32,
    sessions: u32,
    pipelined: bool,
    metadata: usize,
) -> Result<Vec<Session>> {
    let per = total / sessions;
    let mut channels = Vec::new();
    for _ in 0..sessions.min(8) {
        channels.push(setup.client(node.grpc).await?);
    }
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let mut c = channels[(s as usize) % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut session = Session::open(&mut c, 0).await?;
            let service = format!("svc-{s}");
            let make = |i: u32| with_metadata(instance(&service, &format!("s{s}-i{i}"), 1 + i % 60_000), metadata);
            if pipelined {
                let mut sent = 0;
                let mut answered = 0;
                while answered < per {
                    // Keep at most 512 in flight: the session's reply channel is bounded.
                    while sent < per && sent - answered < 512 {
                        session.send(In::Upsert(make(sent))).await?;
                        sent += 1;
                    }
                    // A million writes queue up: one reply may wait behind many.
                    match session.next_within(Duration::from_secs(60)).await? {
                        Out::Accepted(_) => answered += 1,
                        other => bail!("refused: {other:?}"),
                    }
                }
            } else {
                for i in 0..per {
                    match session.upsert(make(i)).await? {
                        Out::Accepted(_) => {}
                        other => bail!("refused: {other:?}"),
                    }
                }
            }
            Ok(session)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

fn cpu(nodes: &[NodeProc]) -> Result<Vec<f64>> {
    nodes.iter().map(NodeProc::cpu_seconds).collect()
}

/// 1. Ingest: instances registered per second.
pub(crate) async fn ingest(setup: &Setup, nodes: usize, total: u32, pipelined: bool) -> Result<Vec<Row>> {
    let variant = format!("{nodes} node(s), {}", if pipelined { "pipelined" } else { "one at a time" });
    let (_nats, procs) = cluster(setup, nodes, "ingest").await?;
    let cpu0 = cpu(&procs)?;
    let t0 = Instant::now();
    let sessions = register_many(setup, &procs[0], total, 200, pipelined, 0).await?;
    let accepted = t0.elapsed();
    for p in &procs {
        p.wait_instances(u64::from(total), Duration::from_secs(300)).await?;
    }
    let converged = t0.elapsed();
    let cpu1 = cpu(&procs)?;
    let mut rows = vec![
        row("ingest", &variant, "accepted by node a", f64::from(total) / accepted.as_secs_f64(), "inst/s"),
        row("ingest", &variant, "converged on all nodes", f64::from(total) / converged.as_secs_f64(), "inst/s"),
    ];
    for (i, p) in procs.iter().enumerate() {
        let us = (cpu1[i] - cpu0[i]) * 1e6 / f64::from(total);
        rows.push(row("ingest", &variant, &format!("CPU per instance, node {}", p.name), us, "µs"));
        rows.push(row(
            "ingest",
            &variant,
            &format!("peak RSS, node {}", p.name),
            p.rss_kib()?.1 as f64 / 1024.0,
            "MiB",
        ));
    }
    drop(sessions);
    Ok(rows)
}

/// 2. Propagation: upsert on node a, push received by a subscriber on node c.
pub(crate) async fn propagation(setup: &Setup, rate: u32, seconds: u64) -> Result<Vec<Row>> {
    let variant = format!("{rate} changes/s");
    let (_nats, procs) = cluster(setup, 3, "prop").await?;
    let mut watch = Watch::start(&mut setup.client(procs[2].grpc).await?, "", &["prop"], "bench").await?;
    watch.step(Duration::from_secs(10)).await?;
    let mut provider = Session::open(&mut setup.client(procs[0].grpc).await?, 0).await?;
    let epoch = Instant::now();
    let total = rate as u64 * seconds;
    let cpu0 = cpu(&procs)?;
    let receiver = tokio::spawn(async move {
        let mut h = histogram()?;
        let mut stream = watch;
        while (h.len()) < total {
            match stream.step(Duration::from_secs(30)).await? {
                Push::Delta(d) => {
                    let now = epoch.elapsed().as_micros() as u64;
                    for i in d.upserted {
                        if let Some(sent) = i.metadata.get("t").and_then(|t| t.parse::<u64>().ok()) {
                            h.record(now.saturating_sub(sent).max(1))?;
                        }
                    }
                }
                Push::Snapshot(_) | Push::Progress(_) | Push::Drain(_) => {}
            }
        }
        Ok::<_, anyhow::Error>(h)
    });
    // Offered load: `rate` upserts per second, sent on a 1 ms clock.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut answered = 0u64;
    while sent < total {
        tick.tick().await;
        let due = ((epoch.elapsed().as_micros() as u64 * rate as u64) / 1_000_000).min(total);
        while sent < due {
            let mut i = instance("prop", &format!("p{}", sent % 100), 1 + (sent % 60_000) as u32);
            i.metadata.insert("t".into(), (epoch.elapsed().as_micros() as u64).to_string());
            provider.send(In::Upsert(i)).await?;
            sent += 1;
        }
        // Drain answers so the session never blocks on its reply channel.
        while answered + 256 < sent {
            provider.next().await?;
            answered += 1;
        }
    }
    let h = receiver.await??;
    let cpu1 = cpu(&procs)?;
    let mut rows = latency_rows("propagation a→c", &variant, &h);
    let per_change: f64 = cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).sum::<f64>() * 1e6 / total as f64;
    rows.push(row("propagation a→c", &variant, "CPU per change, all 3 nodes", per_change, "µs"));
    Ok(rows)
}

/// 3. Fan-out: one service, many subscribers, one instance flapping.
pub(crate) async fn fanout(setup: &Setup, subscribers: u32, connections: u32, flaps: u32) -> Result<Vec<Row>> {
    let variant = format!("{subscribers} subscribers over {connections} connections");
    let (_nats, procs) = cluster(setup, 1, "fanout").await?;
    let node = &procs[0];
    let ready = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Flaps::new(flaps));
    let mut chans = Vec::new();
    for _ in 0..connections {
        chans.push(setup.client(node.grpc).await?);
    }
    for s in 0..subscribers {
        let mut c = chans[(s % connections) as usize].clone();
        let (ready, seen) = (ready.clone(), seen.clone());
        tokio::spawn(async move {
            let req = v1::SubscribeRequest { namespace: String::new(), services: vec!["flap".into()], consumer: None };
            let Ok(resp) = c.subscribe(req).await else { return };
            let mut stream = resp.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                match msg.kind {
                    Some(Push::Snapshot(_)) => {
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Push::Delta(d)) => d.upserted.iter().for_each(|i| seen.seen(u64::from(i.port))),
                    _ => {}
                }
            }
        });
    }
    registry_tests::eventually("all subscribers have their snapshot", Duration::from_secs(120), || {
        let ready = ready.clone();
        async move { (ready.load(Ordering::Relaxed) == u64::from(subscribers)).then_some(()) }
    })
    .await?;
    flap_rounds("fan-out: last subscriber notified", &variant, setup, node, subscribers, &seen).await
}

/// What the watchers of the flapping instance saw: per flap (its port), how
/// many have it and when the latest got it (µs since `epoch`).
struct Flaps {
    epoch: Instant,
    got: Arc<Vec<AtomicU64>>,
    last: Arc<Vec<AtomicU64>>,
}

impl Flaps {
    fn new(flaps: u32) -> Self {
        Self {
            epoch: Instant::now(),
            got: Arc::new((0..=flaps).map(|_| AtomicU64::new(0)).collect()),
            last: Arc::new((0..=flaps).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    /// A watcher received the instance with `port`.
    fn seen(&self, port: u64) {
        let now = self.epoch.elapsed().as_micros() as u64;
        if let Some(got) = self.got.get(port as usize) {
            got.fetch_add(1, Ordering::Relaxed);
            self.last[port as usize].fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// Flaps the instance `flap/x` (its port is the round) once per round and
/// waits until all `watchers` have each round: the time to the last of them,
/// and the node's CPU per push.
async fn flap_rounds(
    scenario: &str,
    variant: &str,
    setup: &Setup,
    node: &NodeProc,
    watchers: u32,
    seen: &Flaps,
) -> Result<Vec<Row>> {
    let flaps = seen.got.len() as u32 - 1;
    let mut provider = Session::open(&mut setup.client(node.grpc).await?, 0).await?;
    let mut h = histogram()?;
    let cpu0 = node.cpu_seconds()?;
    for f in 1..=flaps {
        let t0 = seen.epoch.elapsed().as_micros() as u64;
        provider.upsert(instance("flap", "x", f)).await?;
        let (got, f_idx) = (seen.got.clone(), f as usize);
        registry_tests::eventually("every watcher has the flap", Duration::from_secs(30), || {
            let got = got.clone();
            async move { (got[f_idx].load(Ordering::Relaxed) == u64::from(watchers)).then_some(()) }
        })
        .await?;
        h.record(seen.last[f_idx].load(Ordering::Relaxed).saturating_sub(t0).max(1))?;
    }
    let cpu = node.cpu_seconds()? - cpu0;
    let mut rows = latency_rows(scenario, variant, &h);
    let pushes = f64::from(flaps) * f64::from(watchers);
    rows.push(row(scenario, variant, "node CPU per push", cpu * 1e6 / pushes, "µs"));
    Ok(rows)
}

/// 3b. Fan-out over server-sent events: many `GET /v1/watch` streams of one
/// service (each its own HTTP connection), one instance flapping.
pub(crate) async fn sse_fanout(setup: &Setup, watchers: u32, flaps: u32) -> Result<Vec<Row>> {
    if setup.label().is_some() {
        bail!("sse-fanout measures plaintext HTTP only (drop --tls and --token)");
    }
    let variant = format!("{watchers} SSE watchers, one connection each");
    let (_nats, procs) = cluster(setup, 1, "sse-fanout").await?;
    let node = &procs[0];
    let ready = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Flaps::new(flaps));
    let mut tasks: tokio::task::JoinSet<Result<()>> = tokio::task::JoinSet::new();
    for w in 0..watchers {
        let (ready, seen, http) = (ready.clone(), seen.clone(), node.http);
        tasks.spawn(async move {
            let path = format!("/v1/watch?service=flap&consumerId=sse-{w}");
            let mut stream = registry_tests::SseStream::open(http, &path, &[]).await?;
            if stream.status != 200 {
                bail!("watch answered {}", stream.status);
            }
            loop {
                let e = stream.next(Duration::from_secs(3_600)).await?;
                match e.event.as_str() {
                    "snapshot" => {
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                    "delta" => {
                        for i in e.data["upserted"].as_array().into_iter().flatten() {
                            seen.seen(i["port"].as_u64().unwrap_or(0));
                        }
                    }
                    "end" => bail!("the node ended the watch: {}", e.data),
                    _ => {}
                }
            }
        });
    }
    registry_tests::eventually("all SSE watchers have their snapshot", Duration::from_secs(120), || {
        let ready = ready.clone();
        async move { (ready.load(Ordering::Relaxed) == u64::from(watchers)).then_some(()) }
    })
    .await?;
    let rows = flap_rounds("SSE fan-out: last watcher notified", &variant, setup, node, watchers, &seen).await;
    // A watcher that failed says why (a dropped stream would otherwise only
    // show as a timeout).
    tasks.abort_all();
    while let Some(t) = tasks.join_next().await {
        if let Ok(Err(e)) = t {
            bail!("an SSE watcher failed: {e:#}");
        }
    }
    rows
}

/// Scenario 4, scale and memory: resident memory per instance, and GetService
/// latency under 1k writes/s.
pub(crate) async fn scale(setup: &Setup, instances: u32, metadata: usize) -> Result<Vec<Row>> {
    let variant = format!("{instances} instances, {metadata} B metadata");
    let (_nats, procs) = cluster(setup, 1, "scale").await?;
    let node = &procs[0];
    let (base, _) = node.rss_kib()?;
    let sessions = register_many(setup, node, instances, (instances / 1_000).max(1), true, metadata).await?;
    node.wait_instances(u64::from(instances), Duration::from_secs(300)).await?;
    let (rss, peak) = node.rss_kib()?;
    let per = (rss.saturating_sub(base) as f64 * 1024.0) / f64::from(instances);
    let mut rows = vec![
        row("scale", &variant, "RSS", rss as f64 / 1024.0, "MiB"),
        row("scale", &variant, "peak RSS", peak as f64 / 1024.0, "MiB"),
        row("scale", &variant, "RSS per instance", per, "B"),
        row("scale", &variant, "RSS per instance beyond its metadata", per - metadata as f64, "B"),
    ];
    // Reads of one 1,000-instance service while a writer updates at 1k/s.
    let mut writer = Session::open(&mut setup.client(node.grpc).await?, 0).await?;
    let stop = Instant::now() + Duration::from_secs(5);
    let writes = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut n = 0u32;
        while Instant::now() < stop {
            tick.tick().await;
            writer.send(In::Upsert(instance("svc-0", &format!("w{}", n % 100), 1 + n % 60_000))).await?;
            writer.next().await?;
            n += 1;
        }
        Ok::<_, anyhow::Error>(n)
    });
    let mut reader = setup.client(node.grpc).await?;
    let mut h = histogram()?;
    while Instant::now() < stop {
        let t = Instant::now();
        reader.get_service(v1::GetServiceRequest { namespace: String::new(), service: "svc-0".into() }).await?;
        h.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    let writes = writes.await??;
    rows.extend(latency_rows("scale: GetService (1,000 instances)", &format!("{variant}, {writes} writes in 5 s"), &h));
    drop(sessions);
    Ok(rows)
}

/// 5. Catch-up: a cold node joins a cluster holding `instances`; time to ready.
pub(crate) async fn catchup(setup: &Setup, instances: u32, metadata: usize) -> Result<Vec<Row>> {
    let variant = format!("{instances} instances, {metadata} B metadata");
    let (nats, procs) = cluster(setup, 2, "catchup").await?;
    let nats = nats.ok_or_else(|| anyhow::anyhow!("a cluster has NATS"))?;
    let sessions = register_many(setup, &procs[0], instances, (instances / 1_000).max(1), true, metadata).await?;
    procs[1].wait_instances(u64::from(instances), Duration::from_secs(600)).await?;
    let origin_cpu = procs[0].cpu_seconds()?;
    let t0 = Instant::now();
    let joiner = setup.start_node("cold", &[nats.url()], "catchup").await?;
    let ready = t0.elapsed();
    // CPU is the steadier number on a shared machine: wall time also counts
    // whatever else runs on its two cores.
    let (joiner_cpu, origin_cpu) = (joiner.cpu_seconds()?, procs[0].cpu_seconds()? - origin_cpu);
    // A scrape can time out on a loaded machine: that is no reading of 0.
    let shown =
        eventually("the joiner's instance count", Duration::from_secs(10), || joiner.metric("instances")).await?;
    if shown != u64::from(instances) {
        bail!("the joiner turned ready with {shown} of {instances} instances");
    }
    drop(sessions);
    Ok(vec![
        row("catch-up", &variant, "process start to ready", ready.as_secs_f64(), "s"),
        row("catch-up", &variant, "joiner CPU until ready", joiner_cpu, "s"),
        row("catch-up", &variant, "origin CPU meanwhile", origin_cpu, "s"),
        row("catch-up", &variant, "joiner peak RSS", joiner.rss_kib()?.1 as f64 / 1024.0, "MiB"),
    ])
}

/// Scenario 6, failure detection: a provider's connection dies; the removal
/// reaches a subscriber on another node.
pub(crate) async fn failure(setup: &Setup, rounds: u32) -> Result<Vec<Row>> {
    let (_nats, procs) = cluster(setup, 3, "failure").await?;
    let mut watch = Watch::start(&mut setup.client(procs[2].grpc).await?, "", &["fragile"], "bench").await?;
    watch.step(Duration::from_secs(10)).await?;
    let mut h = histogram()?;
    for r in 0..rounds {
        let link = CuttableLink::start(procs[0].grpc).await?;
        let mut p = Session::open(&mut setup.client(link.addr).await?, 0).await?;
        let id = format!("victim-{r}");
        p.upsert(instance("fragile", &id, 1)).await?;
        watch.until("registered", Duration::from_secs(10), |v| v["fragile"].1.contains_key(&id)).await?;
        let t0 = Instant::now();
        link.cut();
        watch.until("removed", Duration::from_secs(60), |v| !v["fragile"].1.contains_key(&id)).await?;
        h.record((t0.elapsed().as_micros() as u64).max(1))?;
    }
    Ok(latency_rows("failure detection (reconnect grace 3 s)", "provider link cut on a, seen on c", &h))
}
