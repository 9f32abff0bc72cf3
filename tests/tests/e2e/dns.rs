//! The DNS interface with the real `dig` (Debian `bind9-dnsutils`): the
//! name forms, negative answers, truncation over UDP and complete answers
//! over TCP, changes seen by the next query, a registration on one node of
//! a 3-node cluster (real nats-server) resolving on another, and garbage
//! on both transports leaving the node answering.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use registry_node::NodeHandle;
use registry_proto::v1;
use registry_tests::{
    PROMPTLY, client, cluster_config, eventually, http_get, metric, start_node, test_config, until_ready,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DOMAIN: &str = "registry.internal.";

fn dns_config(node_id: &str) -> registry_node::config::NodeConfig {
    let mut c = test_config(node_id);
    c.dns.addr = Some("127.0.0.1:0".parse().expect("addr"));
    c
}

fn dns_addr(node: &NodeHandle) -> Result<SocketAddr> {
    node.dns_addr.context("DNS is on")
}

/// What dig printed: the status, the flags and the answer lines.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answers: Vec<Vec<String>>,
    authority: Vec<Vec<String>>,
}

impl Dig {
    /// The data of the answers of a type (`A`, `SRV`...), sorted.
    fn data(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> =
            self.answers.iter().filter(|a| a.get(3).is_some_and(|t| t == rtype)).map(|a| a[4..].join(" ")).collect();
        v.sort();
        v
    }
}

/// Runs dig against `server` and reads its output. `extra` adds options
/// (`+tcp`, `+bufsize=...`); dig never retries over TCP by itself here
/// (`+ignore`), so a test sees what UDP carried.
async fn dig(server: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> Result<Dig> {
    let out = tokio::time::timeout(
        PROMPTLY,
        tokio::process::Command::new("dig")
            .arg(format!("@{}", server.ip()))
            .args(["-p", &server.port().to_string(), name, rtype, "+ignore", "+tries=1", "+time=3", "+nocookie"])
            .args(extra)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("dig did not finish")?
    .context("running dig (Debian package bind9-dnsutils)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = Dig { status: String::new(), flags: Vec::new(), answers: Vec::new(), authority: Vec::new() };
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or_default().to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or_default().split_whitespace().map(str::to_string).collect();
        }
        if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";;") || line.trim().is_empty() {
            if line.trim().is_empty() {
                section = "";
            }
        } else if !line.starts_with(';') {
            let fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
            match section {
                "answer" => d.answers.push(fields),
                "authority" => d.authority.push(fields),
                _ => {}
            }
        }
    }
    ensure!(!d.status.is_empty(), "dig printed no status: {text}");
    Ok(d)
}

async fn register(grpc: SocketAddr, service: &str, id: &str, host: &str, port: u32, zone: &str) -> Result<()> {
    register_with(&mut client(grpc).await?, service, id, host, port, zone).await
}

/// [`register`] on a client already connected.
async fn register_with(
    c: &mut registry_tests::RegistryClient,
    service: &str,
    id: &str,
    host: &str,
    port: u32,
    zone: &str,
) -> Result<()> {
    let instance = v1::Instance {
        service: service.into(),
        instance_id: id.into(),
        host: host.into(),
        port,
        zone: zone.into(),
        weight: Some(7),
        ..Default::default()
    };
    c.register_instance(v1::RegisterInstanceRequest {
        instance: Some(instance),
        ttl_ms: 60_000,
        lease_id: String::new(),
    })
    .await?;
    Ok(())
}

async fn deregister(grpc: SocketAddr, service: &str, id: &str) -> Result<()> {
    let mut c = client(grpc).await?;
    let key = v1::InstanceKey { namespace: String::new(), service: service.into(), instance_id: id.into() };
    c.deregister(v1::DeregisterRequest { key: Some(key) }).await?;
    Ok(())
}

#[tokio::test]
async fn dig_reads_every_name_form_and_negative_answers() -> Result<()> {
    let node = start_node(dns_config("dns-forms")).await?;
    let (grpc, dns) = (node.grpc_addr, dns_addr(&node)?);
    register(grpc, "web", "w1", "10.0.0.1", 8001, "eu-1").await?;
    register(grpc, "web", "w2", "10.0.0.2", 8002, "eu-2").await?;
    register(grpc, "web", "w3", "fd00::3", 8003, "eu-1").await?;
    register(grpc, "web", "w4", "web-4.example.com", 8004, "eu-1").await?;
    register(grpc, "api.v2", "a1", "10.1.0.1", 9001, "").await?;

    let a = dig(dns, "web.default.registry.internal.", "A", &[]).await?;
    ensure!(a.status == "NOERROR" && a.flags.contains(&"aa".to_string()), "{a:?}");
    ensure!(a.data("A") == ["10.0.0.1", "10.0.0.2"], "{a:?}");
    ensure!(a.answers.iter().all(|r| r[1] == "5"), "TTL 5: {a:?}");
    let aaaa = dig(dns, "web.default.registry.internal.", "AAAA", &[]).await?;
    ensure!(aaaa.data("AAAA") == ["fd00::3"], "{aaaa:?}");
    let srv = dig(dns, "web.default.registry.internal.", "SRV", &[]).await?;
    ensure!(srv.data("SRV").len() == 4, "{srv:?}");
    ensure!(srv.data("SRV").contains(&"0 7 8004 web-4.example.com.".to_string()), "{srv:?}");
    ensure!(srv.data("SRV").contains(&"0 7 8001 0a000001.addr.registry.internal.".to_string()), "{srv:?}");
    // RFC 2782, and an SRV target of ours resolving to its address.
    let rfc = dig(dns, "_web._tcp.default.registry.internal.", "SRV", &[]).await?;
    ensure!(rfc.data("SRV") == srv.data("SRV"), "{rfc:?}");
    let target = dig(dns, "0a000001.addr.registry.internal.", "A", &[]).await?;
    ensure!(target.data("A") == ["10.0.0.1"], "{target:?}");
    // One zone; a dotted service name.
    let zone = dig(dns, "eu-1.web.default.registry.internal.", "SRV", &[]).await?;
    let ports: Vec<String> = zone.data("SRV").iter().map(|s| s.split(' ').nth(2).unwrap_or("").to_string()).collect();
    ensure!(ports == ["8001", "8003", "8004"], "{zone:?}");
    let dotted = dig(dns, "api.v2.default.registry.internal.", "A", &[]).await?;
    ensure!(dotted.data("A") == ["10.1.0.1"], "{dotted:?}");
    // Names match without regard to case (RFC 4343), and the answer keeps
    // the case asked.
    let mixed = dig(dns, "WEB.Default.Registry.Internal.", "A", &[]).await?;
    ensure!(mixed.data("A") == ["10.0.0.1", "10.0.0.2"], "{mixed:?}");
    ensure!(mixed.answers.iter().all(|r| r[0] == "WEB.Default.Registry.Internal."), "{mixed:?}");

    // NXDOMAIN with the SOA, NODATA, REFUSED.
    let nx = dig(dns, "nope.default.registry.internal.", "A", &[]).await?;
    ensure!(nx.status == "NXDOMAIN", "{nx:?}");
    ensure!(nx.authority.iter().any(|r| r.get(3).is_some_and(|t| t == "SOA")), "SOA for negative caching: {nx:?}");
    let nodata = dig(dns, "api.v2.default.registry.internal.", "AAAA", &[]).await?;
    ensure!(nodata.status == "NOERROR" && nodata.answers.is_empty() && nodata.authority.len() == 1, "{nodata:?}");
    let refused = dig(dns, "example.com.", "A", &[]).await?;
    ensure!(refused.status == "REFUSED", "{refused:?}");

    let (_, metrics) = http_get(node.http_addr, "/metrics").await?;
    ensure!(metrics.contains("registry_dns_queries_total{node=\"dns-forms\",rcode=\"NXDOMAIN\"} 1"), "{metrics}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn changes_are_seen_by_the_next_query_and_answers_rotate() -> Result<()> {
    let node = start_node(dns_config("dns-changes")).await?;
    let (grpc, dns) = (node.grpc_addr, dns_addr(&node)?);
    let name = "pay.default.registry.internal.";
    ensure!(dig(dns, name, "A", &[]).await?.status == "NXDOMAIN");
    register(grpc, "pay", "p1", "10.2.0.1", 80, "").await?;
    // The registration call returned: the very next query sees it.
    ensure!(dig(dns, name, "A", &[]).await?.data("A") == ["10.2.0.1"]);
    register(grpc, "pay", "p2", "10.2.0.2", 80, "").await?;
    register(grpc, "pay", "p3", "10.2.0.3", 80, "").await?;
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..3 {
        let d = dig(dns, name, "A", &[]).await?;
        ensure!(d.data("A").len() == 3, "{d:?}");
        firsts.insert(d.answers[0][4].clone());
    }
    ensure!(firsts.len() == 3, "three queries start with three different records: {firsts:?}");
    deregister(grpc, "pay", "p1").await?;
    ensure!(dig(dns, name, "A", &[]).await?.data("A") == ["10.2.0.2", "10.2.0.3"]);
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn big_answers_truncate_over_udp_and_come_whole_over_tcp() -> Result<()> {
    let node = start_node(dns_config("dns-big")).await?;
    let (grpc, dns) = (node.grpc_addr, dns_addr(&node)?);
    let mut c = client(grpc).await?;
    for i in 0..1000u32 {
        let host = format!("10.{}.{}.{}", 100 + i / 62_500, (i / 250) % 250, i % 250 + 1);
        register_with(&mut c, "big", &format!("b{i}"), &host, 7000, "").await?;
        if i == 299 {
            // 300 instances: more than 512 bytes, and more than 1232.
            for extra in [&[][..], &["+bufsize=1232"][..]] {
                let d = dig(dns, "big.default.registry.internal.", "A", extra).await?;
                ensure!(d.flags.contains(&"tc".to_string()), "TC set with {extra:?}: {d:?}");
                ensure!(!d.answers.is_empty() && d.answers.len() < 300, "whole records that fit: {}", d.answers.len());
            }
            let d = dig(dns, "big.default.registry.internal.", "A", &["+tcp"]).await?;
            ensure!(!d.flags.contains(&"tc".to_string()) && d.answers.len() == 300, "{} over TCP", d.answers.len());
        }
    }
    let d = dig(dns, "big.default.registry.internal.", "A", &["+tcp"]).await?;
    ensure!(d.status == "NOERROR" && !d.flags.contains(&"tc".to_string()), "{:?}", d.flags);
    ensure!(d.data("A").len() == 1000, "{} of 1000 A over TCP", d.answers.len());
    // SRV targets are not compressed (RFC 2782); the owners are: 1000 SRV
    // records fit in a TCP message, every instance once, in both forms.
    for name in ["big.default.registry.internal.", "_big._tcp.default.registry.internal."] {
        let d = dig(dns, name, "SRV", &["+tcp"]).await?;
        ensure!(d.status == "NOERROR" && !d.flags.contains(&"tc".to_string()), "{name}: {:?}", d.flags);
        let targets: std::collections::HashSet<String> = d.data("SRV").into_iter().collect();
        ensure!(targets.len() == 1000, "{name}: {} distinct SRV of 1000 over TCP", targets.len());
    }
    let (_, metrics) = http_get(node.http_addr, "/metrics").await?;
    ensure!(metric(&metrics, "dns_truncated_total").unwrap_or(0) >= 2, "{metrics}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_registration_on_a_resolves_on_c() -> Result<()> {
    let nats = registry_tests::nats::NatsServer::start().await?;
    let mut nodes = Vec::new();
    for name in ["da", "db", "dc"] {
        let mut config = cluster_config(name, &[nats.url()], "dns-ha");
        config.dns.addr = Some("127.0.0.1:0".parse()?);
        nodes.push(start_node(config).await?);
    }
    for n in &nodes {
        until_ready(n).await?;
    }
    let c_dns = dns_addr(&nodes[2])?;
    register(nodes[0].grpc_addr, "orders", "o1", "10.3.0.1", 8080, "").await?;
    let seen = eventually("orders on node c by DNS", PROMPTLY, || async {
        let d = dig(c_dns, "orders.default.registry.internal.", "A", &[]).await.ok()?;
        (d.data("A") == ["10.3.0.1"]).then_some(d)
    })
    .await?;
    ensure!(seen.status == "NOERROR");
    for n in nodes.drain(..) {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_warming_up_node_answers_servfail() -> Result<()> {
    // A clustered node whose NATS is not there starts (it keeps trying to
    // connect) and never finishes warming up.
    let nats = format!("nats://127.0.0.1:{}", registry_tests::nats::free_port()?);
    let mut config = cluster_config("dns-cold", &[nats], "dns-cold");
    config.dns.addr = Some("127.0.0.1:0".parse()?);
    let node = start_node(config).await?;
    ensure!(!node.readiness.is_ready());
    let d = dig(dns_addr(&node)?, "web.default.registry.internal.", "A", &[]).await?;
    ensure!(d.status == "SERVFAIL" && d.answers.is_empty(), "{d:?}");
    node.crash().await;
    Ok(())
}

#[tokio::test]
async fn garbage_silence_and_floods_leave_the_node_answering() -> Result<()> {
    let node = start_node(dns_config("dns-garbage")).await?;
    let (grpc, dns) = (node.grpc_addr, dns_addr(&node)?);
    register(grpc, "web", "w1", "10.0.0.1", 80, "").await?;

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    udp.connect(dns).await?;
    // Too short for a header: no answer. A header promising a question it
    // does not carry: FORMERR with its id. An UPDATE: NOTIMP.
    udp.send(&[0x01, 0x02, 0x03]).await?;
    udp.send(&[0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x03, b'w']).await?;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(PROMPTLY, udp.recv(&mut buf)).await.context("FORMERR expected")??;
    ensure!(n >= 12 && buf[..2] == [0xab, 0xcd] && buf[3] & 0x0f == 1, "FORMERR: {:?}", &buf[..n]);
    let update = [0x12, 0x34, 0x28, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    udp.send(&update).await?;
    let n = tokio::time::timeout(PROMPTLY, udp.recv(&mut buf)).await.context("NOTIMP expected")??;
    ensure!(n >= 12 && buf[..2] == [0x12, 0x34] && buf[3] & 0x0f == 4, "NOTIMP: {:?}", &buf[..n]);
    // A flood of random datagrams and a name of 600 bytes of labels.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..2000 {
        let bytes: Vec<u8> = (0..(i % 200))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        udp.send(&bytes).await?;
    }
    let mut huge = vec![0x55, 0x55, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    for _ in 0..20 {
        huge.push(30);
        huge.extend([b'x'; 30]);
    }
    huge.extend([0, 0, 1, 0, 1]);
    udp.send(&huge).await?;

    // TCP: garbage framed and unframed, then a client that says nothing.
    let mut garbage = tokio::net::TcpStream::connect(dns).await?;
    garbage.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0xff, 0x00]).await?;
    drop(garbage);
    let mut silent = tokio::net::TcpStream::connect(dns).await?;

    // Still answering, both ways.
    let d = dig(dns, "web.default.registry.internal.", "A", &[]).await?;
    ensure!(d.data("A") == ["10.0.0.1"], "{d:?}");
    let d = dig(dns, "web.default.registry.internal.", "A", &["+tcp"]).await?;
    ensure!(d.data("A") == ["10.0.0.1"], "{d:?}");

    // The silent client is closed (idle timeout 5 s by default).
    let mut one = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut one)).await;
    match closed {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(_)) => bail!("the node sent something to a silent client"),
        Err(_) => bail!("a silent TCP client was not timed out"),
    }
    let (_, metrics) = http_get(node.http_addr, "/metrics").await?;
    ensure!(metric(&metrics, "dns_bad_requests_total").unwrap_or(0) >= 3, "counted: {metrics}");
    ensure!(metric(&metrics, "dns_tcp_timeouts_total") == Some(1), "{metrics}");
    let (status, _) = http_get(node.http_addr, "/readyz").await?;
    ensure!(status == 200, "node healthy");
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn dns_is_off_unless_configured() -> Result<()> {
    let node = start_node(test_config("dns-off")).await?;
    ensure!(node.dns_addr.is_none());
    let _ = DOMAIN;
    node.shutdown().await;
    Ok(())
}
