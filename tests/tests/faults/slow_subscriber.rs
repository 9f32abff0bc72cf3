//! A consumer that stops reading must not make the node buffer without bound,
//! and must not silently lose changes: it gets a fresh snapshot when it catches up.
//! (It holds the fault binary's machine lock alone, so the resident-memory
//! reading of this process is this scenario's alone.)

use std::time::Duration;

use anyhow::Result;
use registry_tests::*;
use v1::register_response::Kind as Out;
use v1::subscribe_response::Kind as Push;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_resynced_and_memory_stays_bounded() -> Result<()> {
    let _alone = registry_tests::faults::alone();
    let mut config = test_config("n1");
    config.subscriptions.queue_capacity = 16;
    let node = start_node(config).await?;
    let mut c = client(node.grpc_addr).await?;
    let mut slow = Watch::start(&mut client(node.grpc_addr).await?, "", &["hot"], "slow").await?;
    let mut fast = Watch::start(&mut c, "", &["hot"], "fast").await?.without_log();
    let mut p = Session::open(&mut c, 0).await?;

    // Each update carries ~8 KiB of metadata: 6,000 of them is ~48 MiB of
    // deltas that an unbounded queue would hold for the slow subscriber.
    const UPDATES: u32 = 6_000;
    let before = rss_kib();
    let fast_task = tokio::spawn(async move {
        fast.until("fast subscriber sees the last update", Duration::from_secs(120), |v| {
            v.get("hot").and_then(|s| s.1.get("i")).is_some_and(|i| i.port == UPDATES)
        })
        .await
        .map(|_| fast)
    });
    for n in 1..=UPDATES {
        let mut i = instance("hot", "i", n);
        for k in 0..8 {
            i.metadata.insert(format!("k{k}"), format!("{n:0>1000}"));
        }
        assert!(matches!(p.upsert(i).await?, Out::Accepted(_)));
    }
    let fast = fast_task.await??;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 24, "resident memory grew {grown_mib} MiB while a subscriber did not read");
    assert!(node.registry.metrics.subscriber_resyncs.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // The slow subscriber catches up: it ends on exactly the final state, and
    // got there through a fresh snapshot rather than every delta.
    slow.until("slow subscriber catches up", Duration::from_secs(60), |v| {
        v.get("hot").and_then(|s| s.1.get("i")).is_some_and(|i| i.port == UPDATES)
    })
    .await?;
    let snapshots = slow.log.iter().filter(|m| matches!(m, Push::Snapshot(_))).count();
    assert!(snapshots >= 2, "resync snapshot after the initial one, got {snapshots}");
    assert!(slow.log.len() < UPDATES as usize, "it skipped deltas: {} messages", slow.log.len());
    assert_eq!(fast.received, UPDATES as usize + 1, "the fast subscriber got every delta");
    node.shutdown().await;
    Ok(())
}
