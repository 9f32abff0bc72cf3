//! The xDS scenarios: the registry's ADS as gRPC clients and Envoy use it,
//! measured like Subscribe (fan-out, propagation, node CPU per push), so the
//! two are compared on the same rows.
//!
//! The clients are minimal Rust ADS clients over the generated envoy-types
//! client: one EDS subscription per stream, every response ACKed, the
//! endpoints read from each ClusterLoadAssignment.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use envoy_types::pb::envoy::config::core::v3::{Node, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;
use registry_tests::{Session, instance};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use v1::register_request::Kind as In;

use crate::procs::Setup;
use crate::scenarios::{Row, histogram, latency_rows, row};
use crate::security::NodeChannel;
use registry_proto::v1;

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// One ADS stream subscribed to the endpoints of `services`: calls `seen`
/// with the ports of every response's endpoints and its encoded size, ACKs
/// it, until the stream ends.
async fn follow(
    channel: NodeChannel,
    id: String,
    services: &[String],
    mut seen: impl FnMut(Vec<u32>, usize),
) -> Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let request = |nonce: &str| DiscoveryRequest {
        node: Some(Node { id: id.clone(), ..Default::default() }),
        type_url: EDS.into(),
        resource_names: services.to_vec(),
        response_nonce: nonce.into(),
        version_info: nonce.into(),
        ..Default::default()
    };
    tx.send(request("")).await?;
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(r) = stream.message().await? {
        seen(ports(&r.resources)?, r.encoded_len());
        tx.send(request(&r.nonce)).await?;
    }
    Ok(())
}

/// [`follow`] over incremental xDS (`DeltaAggregatedResources`): each
/// response carries only the resources that changed.
async fn follow_delta(
    channel: NodeChannel,
    id: String,
    services: &[String],
    mut seen: impl FnMut(Vec<u32>, usize),
) -> Result<()> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node { id, ..Default::default() }),
        type_url: EDS.into(),
        resource_names_subscribe: services.to_vec(),
        ..Default::default()
    })
    .await?;
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(r) = stream.message().await? {
        seen(ports(delta_resources(&r))?, r.encoded_len());
        tx.send(DeltaDiscoveryRequest { type_url: EDS.into(), response_nonce: r.nonce, ..Default::default() }).await?;
    }
    Ok(())
}

fn delta_resources(r: &DeltaDiscoveryResponse) -> impl Iterator<Item = &Any> {
    r.resources.iter().filter_map(|r| r.resource.as_ref())
}

/// State of the world or incremental.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Sotw,
    Delta,
}

fn ports<'a>(resources: impl IntoIterator<Item = &'a Any>) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for any in resources {
        let cla = ClusterLoadAssignment::decode(any.value.as_slice())?;
        for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { continue };
            let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) else {
                continue;
            };
            if let Some(socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// The port of every quiet service's instance: above any flap's number.
const QUIET_PORT: u32 = 60_000;

/// Fan-out over xDS: `streams` ADS streams (state of the world or
/// incremental), each watching the endpoints of `resources` services: one
/// whose instance flaps (its port is the flap's number), the others quiet.
/// The time until the last stream has each flap, node CPU per push, and
/// the bytes a stream receives per push: state of the world sends every
/// watched resource again, delta only the one that changed.
pub(crate) async fn fanout(
    setup: &Setup,
    streams: u32,
    connections: u32,
    flaps: u32,
    resources: u32,
    protocol: Protocol,
) -> Result<Vec<Row>> {
    let resources = resources.max(1);
    let watched = if resources == 1 { String::new() } else { format!(", {resources} resources each") };
    let variant = match protocol {
        Protocol::Sotw => format!("{streams} ADS streams over {connections} connections{watched}"),
        Protocol::Delta => format!("{streams} delta ADS streams over {connections} connections{watched}"),
    };
    let node = setup.start_node("a", &[], "xds-fanout").await?;
    let mut provider = Session::open(&mut setup.client(node.grpc).await?, 0).await?;
    let mut services = vec!["flap".to_string()];
    for q in 1..resources {
        let service = format!("quiet-{q}");
        provider.upsert(instance(&service, "q", QUIET_PORT)).await?;
        services.push(service);
    }
    let services = Arc::new(services);
    let bytes = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let got: Arc<Vec<AtomicU64>> = Arc::new((0..=flaps).map(|_| AtomicU64::new(0)).collect());
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..=flaps).map(|_| AtomicU64::new(0)).collect());
    let mut chans = Vec::new();
    for _ in 0..connections {
        chans.push(setup.channel(node.grpc).await?);
    }
    let mut tasks = Vec::new();
    for s in 0..streams {
        let channel = chans[(s % connections) as usize].clone();
        let (ready, got, last, services, bytes) =
            (ready.clone(), got.clone(), last.clone(), services.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let mut first = true;
            let seen = move |ports: Vec<u32>, size: usize| {
                bytes.fetch_add(size as u64, Ordering::Relaxed);
                if std::mem::take(&mut first) {
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                let now = epoch.elapsed().as_micros() as u64;
                for f in ports {
                    if let Some(g) = got.get(f as usize) {
                        g.fetch_add(1, Ordering::Relaxed);
                        last[f as usize].fetch_max(now, Ordering::Relaxed);
                    }
                }
            };
            let id = format!("bench-{s}");
            match protocol {
                Protocol::Sotw => follow(channel, id, &services, seen).await,
                Protocol::Delta => follow_delta(channel, id, &services, seen).await,
            }
        }));
    }
    registry_tests::eventually("every ADS stream has its first response", Duration::from_secs(120), || {
        let ready = ready.clone();
        async move { (ready.load(Ordering::Relaxed) == u64::from(streams)).then_some(()) }
    })
    .await?;
    let mut h = histogram()?;
    let cpu0 = node.cpu_seconds()?;
    let bytes0 = bytes.load(Ordering::Relaxed);
    for f in 1..=flaps {
        let t0 = epoch.elapsed().as_micros() as u64;
        provider.upsert(instance("flap", "x", f)).await?;
        let (got, i) = (got.clone(), f as usize);
        registry_tests::eventually("every ADS stream has the flap", Duration::from_secs(30), || {
            let got = got.clone();
            async move { (got[i].load(Ordering::Relaxed) >= u64::from(streams)).then_some(()) }
        })
        .await?;
        h.record(last[i].load(Ordering::Relaxed).saturating_sub(t0).max(1))?;
    }
    let cpu = node.cpu_seconds()? - cpu0;
    let received = bytes.load(Ordering::Relaxed) - bytes0;
    for t in tasks {
        t.abort();
    }
    let mut rows = latency_rows("xds fan-out: last stream updated", &variant, &h);
    let pushes = f64::from(flaps) * f64::from(streams);
    rows.push(row("xds fan-out: last stream updated", &variant, "node CPU per push", cpu * 1e6 / pushes, "µs"));
    rows.push(row(
        "xds fan-out: last stream updated",
        &variant,
        "bytes received per push",
        received as f64 / pushes,
        "B",
    ));
    Ok(rows)
}

/// Propagation over xDS: upserts on node a at `rate`, the endpoint update
/// seen by an ADS stream on node c. Each upsert gives an instance a new
/// port; the stream times every port it has not seen before.
pub(crate) async fn propagation(setup: &Setup, rate: u32, seconds: u64) -> Result<Vec<Row>> {
    let variant = format!("{rate} changes/s");
    let nats = registry_tests::nats::NatsServer::start().await?;
    let mut procs = Vec::new();
    for name in ["a", "b", "c"] {
        procs.push(setup.start_node(name, &[nats.url()], "xds-prop").await?);
    }
    let total = u64::from(rate) * seconds;
    let ports = 60_000u64;
    anyhow::ensure!(total < ports, "at most {ports} changes per run (each takes a port of its own)");
    // Send time of each port (µs since epoch).
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..=ports).map(|_| AtomicU64::new(0)).collect());
    let epoch = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Vec<u32>)>();
    let channel = setup.channel(procs[2].grpc).await?;
    let follower = tokio::spawn(async move {
        follow(channel, "bench-prop".into(), &["prop".to_string()], move |p, _| {
            let _ = tx.send((epoch.elapsed().as_micros() as u64, p));
        })
        .await
    });
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.context("the ADS stream ended")?;
    let mut known: HashSet<u32> = first.1.into_iter().collect();
    let receiver = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut h = histogram()?;
            // Until the last change is seen: a change overtaken by the next
            // one of the same instance before a response went out is never
            // seen (state of the world), and counted as coalesced.
            let last = total as u32;
            while !known.contains(&last) {
                let (now, seen) =
                    tokio::time::timeout(Duration::from_secs(30), rx.recv()).await?.context("the ADS stream ended")?;
                for p in seen {
                    if known.insert(p) {
                        let sent = sent_at[p as usize].load(Ordering::Relaxed);
                        h.record(now.saturating_sub(sent).max(1))?;
                    }
                }
            }
            Ok::<_, anyhow::Error>(h)
        })
    };
    let mut provider = Session::open(&mut setup.client(procs[0].grpc).await?, 0).await?;
    let cpu0: Vec<f64> = procs.iter().map(|p| p.cpu_seconds()).collect::<Result<_>>()?;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sent, mut answered) = (0u64, 0u64);
    while sent < total {
        tick.tick().await;
        let due = ((epoch.elapsed().as_micros() as u64 * u64::from(rate)) / 1_000_000).min(total);
        while sent < due {
            let port = 1 + sent as u32;
            sent_at[port as usize].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            provider.send(In::Upsert(instance("prop", &format!("p{}", sent % 100), port))).await?;
            sent += 1;
        }
        while answered + 256 < sent {
            provider.next().await?;
            answered += 1;
        }
    }
    let h = receiver.await??;
    let cpu1: Vec<f64> = procs.iter().map(|p| p.cpu_seconds()).collect::<Result<_>>()?;
    follower.abort();
    let mut rows = latency_rows("xds propagation a→c", &variant, &h);
    rows.push(row("xds propagation a→c", &variant, "changes coalesced", (total - h.len()) as f64, ""));
    let per_change: f64 = cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).sum::<f64>() * 1e6 / total as f64;
    rows.push(row("xds propagation a→c", &variant, "CPU per change, all 3 nodes", per_change, "µs"));
    drop(nats);
    Ok(rows)
}
