//! The Eureka scenario: instances registered through the Eureka API and
//! renewing, beside the same number of gRPC unary leases renewing, on one
//! node; and the full fetch (`GET /eureka/apps`) at that size.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use registry_proto::v1;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::procs::Setup;
use crate::scenarios::{Row, histogram, latency_rows, row};

/// One kept-alive HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self> {
        Ok(Self { stream: BufReader::new(TcpStream::connect(addr).await?), host: addr.to_string() })
    }

    /// Sends a request and reads the whole answer: (status, body).
    async fn call(&mut self, method: &str, path: &str, accept: &str, body: &str) -> Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 =
            line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("bad {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut out = vec![0; length];
        self.stream.read_exact(&mut out).await?;
        Ok((status, out))
    }
}

fn instance_body(n: u32) -> String {
    format!(
        "{{\"instance\":{{\"instanceId\":\"e-{n}\",\"app\":\"APP-{app}\",\"hostName\":\"host-{n}.example\",\
         \"ipAddr\":\"10.{a}.{b}.{c}\",\"status\":\"UP\",\"port\":{{\"$\":8080,\"@enabled\":\"true\"}},\
         \"securePort\":{{\"$\":8443,\"@enabled\":\"false\"}},\"vipAddress\":\"app-{app}\",\
         \"dataCenterInfo\":{{\"@class\":\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\",\"name\":\"MyOwn\"}},\
         \"leaseInfo\":{{\"renewalIntervalInSecs\":30,\"durationInSecs\":90}},\"metadata\":{{\"zone\":\"eu-1\"}},\
         \"lastDirtyTimestamp\":\"1700000000000\"}}}}",
        app = n % 100,
        a = (n >> 16) & 255,
        b = (n >> 8) & 255,
        c = n & 255,
    )
}

/// Runs `work(conn, i)` for i in 0..n over `conns` kept-alive connections.
async fn over_connections<F, Fut>(addr: SocketAddr, n: u32, conns: u32, work: F) -> Result<()>
where
    F: Fn(Conn, u32, u32) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        tasks.spawn(work(Conn::open(addr).await?, c, n));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// `instances` Eureka instances (100 apps) registered and renewed once each,
/// beside as many gRPC leases renewed once each: node CPU per renewal; then
/// full fetches of `/eureka/apps` in JSON and XML.
pub(crate) async fn eureka(setup: &Setup, instances: u32, fetches: u32) -> Result<Vec<Row>> {
    if setup.label().is_some() {
        bail!("the eureka scenario measures plaintext HTTP only (drop --tls and --token)");
    }
    let variant = format!("{instances} instances in 100 apps");
    let node = setup.start_node("a", &[], "eureka").await?;
    const CONNS: u32 = 8;
    over_connections(node.http, instances, CONNS, |mut conn, c, n| async move {
        for i in (c..n).step_by(CONNS as usize) {
            let (status, body) = conn
                .call("POST", &format!("/eureka/apps/APP-{}", i % 100), "application/json", &instance_body(i))
                .await?;
            if status != 204 {
                bail!("register {i}: {status} {}", String::from_utf8_lossy(&body));
            }
        }
        Ok(())
    })
    .await?;
    node.wait_instances(u64::from(instances), Duration::from_secs(120)).await?;

    let cpu0 = node.cpu_seconds()?;
    let started = Instant::now();
    over_connections(node.http, instances, CONNS, |mut conn, c, n| async move {
        for i in (c..n).step_by(CONNS as usize) {
            let path = format!("/eureka/apps/APP-{}/e-{i}?status=UP&lastDirtyTimestamp=1700000000000", i % 100);
            let (status, _) = conn.call("PUT", &path, "application/json", "").await?;
            if status != 200 {
                bail!("renew {i}: {status}");
            }
        }
        Ok(())
    })
    .await?;
    let eureka_cpu = node.cpu_seconds()? - cpu0;
    let eureka_wall = started.elapsed();

    // The same number of gRPC unary leases, renewed once each.
    let mut leases = Vec::with_capacity(instances as usize);
    let mut grpc = setup.client(node.grpc).await?;
    for i in 0..instances {
        let instance = v1::Instance {
            namespace: "grpc".into(),
            service: format!("svc-{}", i % 100),
            instance_id: format!("g-{i}"),
            host: "10.9.0.1".into(),
            port: 8080,
            ..Default::default()
        };
        let r = grpc
            .register_instance(v1::RegisterInstanceRequest {
                instance: Some(instance),
                ttl_ms: 90_000,
                lease_id: String::new(),
            })
            .await?
            .into_inner();
        leases.push(r.lease_id);
    }
    let per_conn = leases.len().div_ceil(CONNS as usize).max(1);
    let cpu0 = node.cpu_seconds()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in leases.chunks(per_conn) {
        let mut c = setup.client(node.grpc).await?;
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for lease_id in chunk {
                c.renew(v1::RenewRequest { lease_id }).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let grpc_cpu = node.cpu_seconds()? - cpu0;
    let grpc_wall = started.elapsed();

    let mut rows = vec![
        row(
            "eureka: renewals",
            &variant,
            "node CPU per Eureka renewal (HTTP PUT)",
            eureka_cpu * 1e6 / f64::from(instances),
            "µs",
        ),
        row("eureka: renewals", &variant, "node CPU per gRPC lease Renew", grpc_cpu * 1e6 / f64::from(instances), "µs"),
        row(
            "eureka: renewals",
            &variant,
            "Eureka renewals per second (8 connections)",
            f64::from(instances) / eureka_wall.as_secs_f64(),
            "/s",
        ),
        row(
            "eureka: renewals",
            &variant,
            "gRPC renewals per second (8 connections)",
            f64::from(instances) / grpc_wall.as_secs_f64(),
            "/s",
        ),
    ];

    for (format, accept) in [("JSON", "application/json"), ("XML", "application/xml")] {
        let mut conn = Conn::open(node.http).await?;
        let mut h = histogram()?;
        let mut size = 0;
        for _ in 0..fetches {
            let t = Instant::now();
            let (status, body) = conn.call("GET", "/eureka/apps", accept, "").await.context("full fetch")?;
            h.record((t.elapsed().as_micros() as u64).max(1))?;
            if status != 200 {
                bail!("GET /eureka/apps: {status}");
            }
            size = body.len();
        }
        let v = format!("{variant}, {format}, {} KiB", size / 1024);
        rows.extend(latency_rows("eureka: full fetch GET /eureka/apps", &v, &h));
    }
    Ok(rows)
}
