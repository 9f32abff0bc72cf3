//! The xDS front-end with real clients: grpcio's `xds:///` resolver reaching
//! grpcio backends registered in the node, and hostile ADS streams.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use registry_tests::xds::{Backends, XdsClient, first_seen, last_seen, round_robin, write_bootstrap};
use registry_tests::*;
use tokio::time::Instant;

/// How soon a change must reach the client's traffic.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(1);
/// How long a grpcio client may take to fetch its first config and connect
/// (it starts a Python interpreter and a channel on a loaded machine).
const FIRST_CONTACT: Duration = Duration::from_secs(30);

async fn register(c: &mut RegistryClient, namespace: &str, instance: v1::Instance, lease: &str) -> Result<String> {
    let instance = v1::Instance { namespace: namespace.into(), ..instance };
    let r = c
        .register_instance(v1::RegisterInstanceRequest {
            lease_id: lease.into(),
            ttl_ms: 600_000,
            instance: Some(instance),
        })
        .await?;
    Ok(r.into_inner().lease_id)
}

async fn deregister(c: &mut RegistryClient, namespace: &str, service: &str, id: &str) -> Result<()> {
    let key = v1::InstanceKey { namespace: namespace.into(), service: service.into(), instance_id: id.into() };
    let found = c.deregister(v1::DeregisterRequest { key: Some(key) }).await?.into_inner().found;
    if !found {
        bail!("{id} was not registered");
    }
    Ok(())
}

/// A grpcio `xds:///echo` channel balances round robin over the backends
/// registered as `echo`, and follows a deregistration, a new registration
/// and a DOWN status within a second. A second namespace, named in the
/// bootstrap's node metadata, sees its own `echo` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_xds_channel_follows_the_registry() -> Result<()> {
    let node = start_node(test_config("n1")).await?;
    let backends = Backends::start(&["b1", "b2", "b3", "b4", "p1"])?;
    let mut c = client(node.grpc_addr).await?;
    let mut leases = std::collections::BTreeMap::new();
    for b in ["b1", "b2", "b3"] {
        let lease = register(&mut c, "", instance("echo", b, backends.port(b)), "").await?;
        leases.insert(b, lease);
    }

    let bootstrap = write_bootstrap(node.grpc_addr, "checkout-1", None, "zone-a")?;
    let client = XdsClient::start("xds:///echo", bootstrap)?;
    let start = Instant::now();
    client
        .until("round robin over b1, b2, b3", start, 9, FIRST_CONTACT, |a| round_robin(a, &["b1", "b2", "b3"], 3))
        .await?;

    // The stream is a consumer in the directory, named by the bootstrap.
    let consumers = c
        .list_consumers(v1::ListConsumersRequest { namespace: String::new(), service: "echo".into() })
        .await?
        .into_inner()
        .consumers;
    let me = consumers
        .iter()
        .filter_map(|c| c.info.as_ref())
        .find(|i| i.consumer_id == "checkout-1")
        .context("the ADS stream in the consumer directory")?;
    assert_eq!(me.metadata.get("zone").map(String::as_str), Some("zone-a"));

    // A deregistration.
    deregister(&mut c, "default", "echo", "b3").await?;
    let at = Instant::now();
    let seen = client.until("b3 gone", at, 6, PROMPTLY, |a| round_robin(a, &["b1", "b2"], 3)).await?;
    let stale = last_seen(&seen, "b3", at).unwrap_or_default();
    assert!(stale <= FOLLOWS_WITHIN, "b3 still got calls {stale:?} after its deregistration");

    // A new registration.
    register(&mut c, "", instance("echo", "b4", backends.port("b4")), "").await?;
    let at = Instant::now();
    let seen = client.until("b4 added", at, 9, PROMPTLY, |a| round_robin(a, &["b1", "b2", "b4"], 3)).await?;
    let late = first_seen(&seen, "b4", at).context("b4 answered")?;
    assert!(late <= FOLLOWS_WITHIN, "b4 got its first call {late:?} after it registered");

    // A DOWN status, sent by the provider itself.
    let down = v1::Instance { status: v1::Status::Down as i32, ..instance("echo", "b1", backends.port("b1")) };
    register(&mut c, "", down, &leases["b1"]).await?;
    let at = Instant::now();
    let seen = client.until("b1 down", at, 6, PROMPTLY, |a| round_robin(a, &["b2", "b4"], 3)).await?;
    let stale = last_seen(&seen, "b1", at).unwrap_or_default();
    assert!(stale <= FOLLOWS_WITHIN, "b1 still got calls {stale:?} after it went DOWN");

    // Another namespace's `echo`, through the bootstrap's node metadata.
    register(&mut c, "payments", instance("echo", "p1", backends.port("p1")), "").await?;
    let bootstrap = write_bootstrap(node.grpc_addr, "payer-1", Some("payments"), "zone-b")?;
    let payer = XdsClient::start("xds:///echo", bootstrap)?;
    let start = Instant::now();
    payer.until("payments' echo is p1 alone", start, 5, FIRST_CONTACT, |a| round_robin(a, &["p1"], 5)).await?;
    let since = Instant::now();
    client.until("default's echo is unchanged", since, 6, PROMPTLY, |a| round_robin(a, &["b2", "b4"], 3)).await?;

    let (_, metrics) = http_get(node.http_addr, "/metrics").await?;
    assert_eq!(metric(&metrics, "xds_streams"), Some(2), "one ADS stream per client");
    for t in ["lds", "rds", "cds", "eds"] {
        let line = format!("registry_xds_nacks_total{{node=\"n1\",type=\"{t}\"}} 0");
        assert!(metrics.contains(&line), "no NACK of {t}: grpcio took every resource\n{metrics}");
    }
    drop((client, payer, backends));
    node.shutdown().await;
    Ok(())
}
