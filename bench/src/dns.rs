//! The DNS scenario: a node holding `instances` in `services` services,
//! queried by `dnsperf` (Debian package) for A records of every service;
//! the same records served by NSD (Debian package `nsd`, one server
//! process) and queried the same way, in the same run, when NSD is
//! installed; the latency of single queries at rest; and a registration on
//! node a seen by DNS on node c of a 3-node cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use registry_proto::v1;
use registry_tests::nats::{NatsServer, free_port};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::procs::{NodeProc, Setup, cpu_seconds};
use crate::scenarios::{Row, histogram, latency_rows, row};
use crate::security::Client;

const DOMAIN: &str = "registry.internal";
const NAMESPACE: &str = "bench";

fn host(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// `[dns]` on a free port.
fn dns_config(port: u16) -> String {
    format!("[dns]\naddr = \"127.0.0.1:{port}\"\n")
}

pub(crate) async fn dns(
    setup: &Setup,
    instances: u32,
    services: u32,
    seconds: u64,
    qps: u32,
    churn_rate: u32,
) -> Result<Vec<Row>> {
    if setup.label().is_some() {
        bail!("the dns scenario has no TLS or tokens to measure (drop --tls and --token)");
    }
    let variant = format!("{instances} instances in {services} services");
    let port = free_port()?;
    let node = setup.start_node_with("a", &[], "dns", &dns_config(port)).await?;
    let dns: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    register_all(setup, &node, instances, services).await?;
    node.wait_instances(u64::from(instances), Duration::from_secs(300)).await?;

    let dir = std::env::temp_dir().join(format!("registry-bench-dns-{port}"));
    std::fs::create_dir_all(&dir)?;
    let queries = dir.join("queries.txt");
    write_queries(&queries, services, false)?;

    let mut rows = Vec::new();
    let ours_variant = format!("registry-node, {variant}");
    rows.extend(measure(dns, &queries, services, seconds, qps, || node.cpu_seconds(), &ours_variant).await?);
    match which("nsd") {
        Some(nsd_bin) => {
            let nsd = Nsd::start(&nsd_bin, &dir, instances, services).await?;
            let theirs_variant = format!("nsd (1 server process), {variant}");
            rows.extend(
                measure(nsd.addr, &queries, services, seconds, qps, || nsd.cpu_seconds(), &theirs_variant).await?,
            );
            let qps =
                |v: &str| rows.iter().find(|r| r.variant == v && r.metric == "queries per second").map(|r| r.value);
            if let (Some(ours), Some(theirs)) = (qps(&ours_variant), qps(&theirs_variant)) {
                rows.push(row("dns: dnsperf, flat out", &variant, "registry-node qps / nsd qps", ours / theirs, "×"));
            }
        }
        None => eprintln!("nsd not installed (Debian package nsd): no side-by-side comparison"),
    }
    if churn_rate > 0 {
        let load = Churn { seconds, qps, rate: churn_rate };
        rows.extend(churn(setup, &node, dns, &dir, services, load).await?);
    }
    drop(node);
    rows.extend(propagation(setup).await?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// dnsperf's queries: the A records of every service, spread in a fixed
/// shuffled order; with `big`, the big service's after every hundredth.
fn write_queries(path: &Path, services: u32, big: bool) -> Result<()> {
    let mut text = String::new();
    for s in 0..services {
        let s = (u64::from(s) * 7_919 % u64::from(services)) as u32;
        text.push_str(&format!("svc-{s}.{NAMESPACE}.{DOMAIN}. A\n"));
        if big && s.is_multiple_of(100) {
            text.push_str(&format!("big.{NAMESPACE}.{DOMAIN}. A\n"));
        }
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn register_all(setup: &Setup, node: &NodeProc, instances: u32, services: u32) -> Result<()> {
    const CONNS: u32 = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONNS {
        let mut client = setup.client(node.grpc).await?;
        tasks.spawn(async move {
            for i in (c..instances).step_by(CONNS as usize) {
                register(&mut client, &format!("svc-{}", i % services), &format!("i-{i}"), i, 8080).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Registers instance `id` of `service` in the bench namespace, its host
/// [`host`]`(i)`, for 10 minutes (no renewal: the runs are shorter).
async fn register(client: &mut Client, service: &str, id: &str, i: u32, port: u32) -> Result<()> {
    let instance = v1::Instance {
        namespace: NAMESPACE.into(),
        service: service.into(),
        instance_id: id.into(),
        host: host(i),
        port,
        ..Default::default()
    };
    client
        .register_instance(v1::RegisterInstanceRequest {
            instance: Some(instance),
            ttl_ms: 600_000,
            lease_id: String::new(),
        })
        .await?;
    Ok(())
}

fn query(name: &str, id: u16) -> Result<Vec<u8>> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

/// Asks `name` on `server` until the answer has `want` A records, or `within`.
async fn ask(socket: &UdpSocket, server: SocketAddr, name: &str, id: u16) -> Result<(ResponseCode, usize)> {
    socket.send_to(&query(name, id)?, server).await?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .context("no DNS answer in 2 s")??;
        let m = Message::from_vec(&buf[..n]).map_err(|e| anyhow!("undecodable answer: {e}"))?;
        if m.metadata.id == id {
            return Ok((m.metadata.response_code, m.answers.len()));
        }
    }
}

/// Latency of `n` queries sent one after the other (µs histogram).
async fn single_query_latency(server: SocketAddr, services: u32, n: u32) -> Result<hdrhistogram::Histogram<u64>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut h = histogram()?;
    for i in 0..n {
        let name = format!("svc-{}.{NAMESPACE}.{DOMAIN}.", i % services);
        let t = Instant::now();
        let (code, answers) = ask(&socket, server, &name, i as u16).await?;
        h.record((t.elapsed().as_micros() as u64).max(1))?;
        if code != ResponseCode::NoError || answers == 0 {
            bail!("{name}: {code} with {answers} answers");
        }
    }
    Ok(h)
}

/// One server measured: single queries at rest, dnsperf flat out, then
/// dnsperf offering `qps` queries a second with every answer's latency;
/// the server's CPU per query in both dnsperf runs.
async fn measure(
    server: SocketAddr,
    queries: &Path,
    services: u32,
    seconds: u64,
    qps: u32,
    cpu: impl Fn() -> Result<f64>,
    variant: &str,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let single = single_query_latency(server, services, 5_000).await?;
    rows.extend(latency_rows("dns: one query at a time (UDP, A, 10 records)", variant, &single));
    for load in [Load::FlatOut, Load::Offered(qps)] {
        let cpu0 = cpu()?;
        let perf = dnsperf(server, queries, seconds, load).await?;
        let used = cpu()? - cpu0;
        rows.extend(perf.rows(load, variant));
        rows.push(row(&load.scenario(), variant, "server CPU per query", used * 1e6 / perf.completed, "µs"));
    }
    Ok(rows)
}

#[derive(Clone, Copy)]
enum Load {
    /// `-c 8 -T 2 -q 64`: as fast as answers come, 64 queries outstanding.
    FlatOut,
    /// `-Q <qps> -c 8 -T 2 -q 256 -v`: at most that many queries a second,
    /// every answer's latency printed.
    Offered(u32),
}

impl Load {
    fn scenario(self) -> String {
        match self {
            Load::FlatOut => "dns: dnsperf, flat out".into(),
            Load::Offered(qps) => format!("dns: dnsperf, {qps} queries/s offered"),
        }
    }
}

struct Perf {
    qps: f64,
    completed: f64,
    lost: f64,
    avg_ms: f64,
    max_ms: f64,
    /// Every answer's latency (µs), when dnsperf printed them.
    latency: Option<hdrhistogram::Histogram<u64>>,
}

impl Perf {
    fn rows(&self, load: Load, variant: &str) -> Vec<Row> {
        let scenario = &load.scenario();
        let mut rows = vec![
            row(scenario, variant, "queries per second", self.qps, "/s"),
            row(scenario, variant, "queries lost", self.lost, ""),
            row(scenario, variant, "average latency", self.avg_ms, "ms"),
            row(scenario, variant, "max latency", self.max_ms, "ms"),
        ];
        if let Some(h) = &self.latency {
            rows.extend(latency_rows(scenario, variant, h));
        }
        rows
    }
}

/// `dnsperf -s server -p port -d queries -l seconds` with `load`'s options.
async fn dnsperf(server: SocketAddr, queries: &Path, seconds: u64, load: Load) -> Result<Perf> {
    let mut command = tokio::process::Command::new("dnsperf");
    command.args(["-s", &server.ip().to_string(), "-p", &server.port().to_string()]).arg("-d").arg(queries).args([
        "-l",
        &seconds.to_string(),
        "-c",
        "8",
        "-T",
        "2",
        "-t",
        "2",
    ]);
    match load {
        Load::FlatOut => command.args(["-q", "64"]),
        Load::Offered(qps) => command.args(["-q", "256", "-Q", &qps.to_string(), "-v"]),
    };
    // Into a file, read when dnsperf is done: with `-v` that is a line per
    // answer, and a reader draining a pipe during the run took CPU from the
    // server and dnsperf on the same cores.
    let report = queries.with_file_name("dnsperf.out");
    let status = command
        .stdout(std::fs::File::create(&report).with_context(|| format!("creating {}", report.display()))?)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .status()
        .await
        .context("running dnsperf (Debian package dnsperf)")?;
    let text = std::fs::read_to_string(&report).with_context(|| format!("reading {}", report.display()))?;
    let _ = std::fs::remove_file(&report);
    if !status.success() {
        // Its complaint is on stderr, above.
        bail!("dnsperf failed ({status})");
    }
    // "> NOERROR svc-1.bench.registry.internal. A 0.000123" per answer,
    // "> T svc-1.bench.registry.internal. A" per query timed out (counted
    // as lost in the summary).
    let mut latency = None;
    if let Load::Offered(_) = load {
        let mut h = histogram()?;
        for line in text.lines().filter(|l| l.starts_with("> ") && !l.starts_with("> T ")) {
            let seconds: f64 = line.rsplit(' ').next().unwrap_or("").parse().map_err(|e| anyhow!("{line:?}: {e}"))?;
            h.record(((seconds * 1e6) as u64).max(1))?;
        }
        latency = Some(h);
    }
    let summary = text.lines().filter(|l| !l.starts_with("> ")).collect::<Vec<_>>().join("\n");
    eprintln!("{summary}");
    let field = |label: &str| -> Result<&str> {
        let line = summary
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .ok_or_else(|| anyhow!("no {label:?} in {summary}"))?;
        Ok(line.split_once(':').map(|(_, v)| v.trim()).unwrap_or(""))
    };
    let number = |s: &str| -> Result<f64> {
        s.split(|c: char| c.is_whitespace() || c == '(' || c == ',')
            .find(|w| !w.is_empty())
            .unwrap_or("")
            .parse()
            .map_err(|e| anyhow!("{s:?}: {e}"))
    };
    let average = field("Average Latency (s)")?;
    // "0.000336 (min 0.000021, max 0.004211)"
    let max = average.split("max").nth(1).map(|m| m.trim_end_matches(')')).unwrap_or("0");
    Ok(Perf {
        qps: number(field("Queries per second")?)?,
        completed: number(field("Queries completed")?)?,
        lost: number(field("Queries lost")?)?,
        avg_ms: number(average)? * 1e3,
        max_ms: number(max)? * 1e3,
        latency,
    })
}

/// The load of the churn run: `qps` queries a second offered for `seconds`,
/// `rate` changes a second to the big service.
struct Churn {
    seconds: u64,
    qps: u32,
    rate: u32,
}

/// Instances of the churning service: a big service of a big deployment.
const BIG: u32 = 10_000;

/// A service of [`BIG`] instances changing `rate` times a second (one
/// instance re-registered on another port each time, as a rolling deploy
/// does), asked for one query in a hundred, while dnsperf offers `qps`
/// queries a second over it and the `services` others. Every change makes
/// the next query of the big service compile its records again, on one of
/// the node's UDP threads, while the datagrams of its batch wait: the
/// latency of all queries shows what a change to a big service costs.
async fn churn(
    setup: &Setup,
    node: &NodeProc,
    server: SocketAddr,
    dir: &Path,
    services: u32,
    Churn { seconds, qps, rate }: Churn,
) -> Result<Vec<Row>> {
    let mut client = setup.client(node.grpc).await?;
    // Hosts after every other instance's.
    let first = 1 << 22;
    for k in 0..BIG {
        register(&mut client, "big", &format!("b-{k}"), first + k, 8080).await?;
    }
    let queries = dir.join("churn-queries.txt");
    write_queries(&queries, services, true)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churner = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changes = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let k = changes % BIG;
                register(&mut client, "big", &format!("b-{k}"), first + k, 9000 + changes / BIG % 2).await?;
                changes += 1;
            }
            anyhow::Ok(changes)
        })
    };
    let started = Instant::now();
    let load = Load::Offered(qps);
    let cpu0 = node.cpu_seconds()?;
    let perf = dnsperf(server, &queries, seconds, load).await;
    let used = node.cpu_seconds()? - cpu0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changes = churner.await.context("the churner panicked")??;
    let perf = perf?;
    let scenario = format!("dns: dnsperf, {qps} queries/s offered, a service of {BIG} instances changing");
    let variant = format!("{rate} changes/s asked, 1 query in 100 for it");
    let mut rows = perf.rows(load, &variant);
    for r in &mut rows {
        r.scenario = scenario.clone();
    }
    rows.push(row(
        &scenario,
        &variant,
        "changes made per second",
        f64::from(changes) / started.elapsed().as_secs_f64(),
        "/s",
    ));
    rows.push(row(&scenario, &variant, "server CPU per query", used * 1e6 / perf.completed, "µs"));
    Ok(rows)
}

/// A registration on node a, then queries to node c's DNS until it shows:
/// the time from the registration's answer to the first DNS answer with it.
async fn propagation(setup: &Setup) -> Result<Vec<Row>> {
    let nats = NatsServer::start().await?;
    let c_port = free_port()?;
    let a = setup.start_node("a", &[nats.url()], "dns-prop").await?;
    let _b = setup.start_node("b", &[nats.url()], "dns-prop").await?;
    let c = setup.start_node_with("c", &[nats.url()], "dns-prop", &dns_config(c_port)).await?;
    let c_dns: SocketAddr = format!("127.0.0.1:{c_port}").parse()?;
    let mut client = setup.client(a.grpc).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut h = histogram()?;
    for i in 0..200u32 {
        let service = format!("prop-{i}");
        let name = format!("{service}.{NAMESPACE}.{DOMAIN}.");
        register(&mut client, &service, "p", i, 80).await?;
        let registered = Instant::now();
        let mut id = (i as u16).wrapping_mul(97);
        loop {
            id = id.wrapping_add(1);
            let (_, answers) = ask(&socket, c_dns, &name, id).await?;
            if answers > 0 {
                break;
            }
            if registered.elapsed() > Duration::from_secs(10) {
                bail!("{name} not on node c after 10 s");
            }
        }
        h.record((registered.elapsed().as_micros() as u64).max(1))?;
    }
    drop((a, c, nats));
    Ok(latency_rows("dns: registered on a, answered by DNS on c (3 nodes)", "200 registrations, one at a time", &h))
}

fn which(bin: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(bin)).find(|p| p.exists())
}

/// NSD serving the same A records from a zone file, one server process.
struct Nsd {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Nsd {
    async fn start(bin: &Path, dir: &Path, instances: u32, services: u32) -> Result<Self> {
        let port = free_port()?;
        let mut zone = format!(
            "$ORIGIN {DOMAIN}.\n$TTL 5\n@ IN SOA ns hostmaster 1 3600 600 86400 5\n@ IN NS ns\nns IN A 127.0.0.1\n"
        );
        for i in 0..instances {
            zone.push_str(&format!("svc-{}.{NAMESPACE} IN A {}\n", i % services, host(i)));
        }
        std::fs::write(dir.join("zone"), zone)?;
        let d = dir.display();
        let conf = format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  \
             zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 0\n\
             remote-control:\n  control-enable: no\nzone:\n  name: {DOMAIN}\n  zonefile: \"{d}/zone\"\n"
        );
        let conf_path = dir.join("nsd.conf");
        std::fs::write(&conf_path, conf)?;
        let child = tokio::process::Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting nsd")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut nsd = Self { child, addr };
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let name = format!("svc-0.{NAMESPACE}.{DOMAIN}.");
        loop {
            if let Ok((ResponseCode::NoError, n)) = ask(&socket, addr, &name, 1).await
                && n > 0
            {
                return Ok(nsd);
            }
            if let Some(status) = nsd.child.try_wait()? {
                bail!("nsd exited ({status}) before answering (its errors are above, or in {}/nsd.log)", dir.display());
            }
            if Instant::now() > deadline {
                bail!("nsd did not answer within 60 s (see {}/nsd.log)", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Nsd {
    /// CPU of NSD's processes: the parent and every process under it (its
    /// server and xfrd processes, and the servers they fork).
    fn cpu_seconds(&self) -> Result<f64> {
        let root = self.child.id().ok_or_else(|| anyhow!("nsd has exited"))?;
        let mut parents = std::collections::HashMap::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            // "pid (comm) state ppid ...": the parent comes after the state.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            {
                parents.insert(pid, ppid);
            }
        }
        let under_root = |mut pid: u32| loop {
            if pid == root {
                return true;
            }
            match parents.get(&pid) {
                Some(&ppid) if ppid != 0 && ppid != pid => pid = ppid,
                _ => return false,
            }
        };
        Ok(parents.keys().filter(|&&pid| under_root(pid)).map(|&pid| cpu_seconds(pid).unwrap_or(0.0)).sum())
    }
}

impl Drop for Nsd {
    /// SIGTERM, not SIGKILL: NSD's server and xfrd processes are its
    /// children, and only a terminated parent stops them.
    fn drop(&mut self) {
        match self.child.id() {
            Some(pid) => {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
                // Let it stop its children before kill_on_drop's SIGKILL.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            None => {
                let _ = self.child.start_kill();
            }
        }
    }
}
