//! The greeter example as a test: servers register through the client library,
//! the client finds them through the balancing channel, and calls keep working
//! while one server stops and another starts, with a 2-node cluster running.

use std::time::Duration;

use anyhow::Result;
use greeter_example::pb::HelloRequest;
use greeter_example::{GreeterServer, greeter_client};
use registry_client::{Client, ClientConfig};
use registry_tests::nats::NatsServer;
use registry_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeter_client_follows_servers_through_the_registry() -> Result<()> {
    let nats = NatsServer::start().await?;
    let nodes = start_cluster(&[nats.url()], "greeter", &["a", "b"]).await?;
    // Servers register through a, the client watches through b.
    let on_a = Client::new(ClientConfig::new([format!("http://{}", nodes[0].grpc_addr)]))?;
    let on_b = Client::new(ClientConfig::new([format!("http://{}", nodes[1].grpc_addr)]))?;
    let first = GreeterServer::start(&on_a, "127.0.0.1:0".parse()?, "g1").await?;
    eventually("g1 replicated to b", PROMPTLY, || async {
        service_ids(nodes[1].grpc_addr, greeter_example::SERVICE).await.ok().filter(|ids| ids == &["g1"])
    })
    .await?;

    let mut greeter = greeter_client(&on_b).await?;
    let hello = |n: usize| HelloRequest { name: format!("call {n}") };
    let reply = greeter.say_hello(hello(0)).await?.into_inner();
    assert_eq!((reply.message.as_str(), reply.server.as_str()), ("Hello call 0", "g1"));

    // A second server comes; the first goes OUT_OF_SERVICE and the channel
    // stops sending to it.
    let second = GreeterServer::start(&on_a, "127.0.0.1:0".parse()?, "g2").await?;
    first.provider().set_status(greeter_example::SERVICE, "g1", v1::Status::OutOfService).await?;
    let mut calls = 0;
    eventually("only g2 answers", PROMPTLY, || {
        let mut greeter = greeter.clone();
        calls += 10;
        let base = calls;
        async move {
            for n in 0..10 {
                if greeter.say_hello(hello(base + n)).await.ok()?.into_inner().server != "g2" {
                    return None;
                }
            }
            Some(())
        }
    })
    .await?;
    // Back in service, then it leaves: every call still succeeds.
    first.provider().set_status(greeter_example::SERVICE, "g1", v1::Status::Up).await?;
    let stopping = tokio::spawn(first.stop_after(Duration::from_millis(300)));
    // Call without pause until g1 has deregistered, drained and stopped.
    while !stopping.is_finished() {
        calls += 1;
        let reply = tokio::time::timeout(PROMPTLY, greeter.say_hello(hello(calls))).await??.into_inner();
        assert!(["g1", "g2"].contains(&reply.server.as_str()), "{reply:?}");
    }
    assert!(calls > 1, "calls ran through the stop");
    stopping.await?;
    for n in 0..20 {
        let reply = greeter.say_hello(hello(1_000 + n)).await?.into_inner();
        assert_eq!(reply.server, "g2", "g1 is stopped and gone from the channel");
    }
    second.stop().await;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}
