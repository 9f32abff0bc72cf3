//! Micro-benchmarks of the sync protocol core's hot paths: receiving a peer's
//! change batch (wire decode and validation, then `SyncCore::on_batch` applying
//! it in order) and cutting queued local changes into batches to publish
//! (`SyncCore::take_publishes`).
//!
//! Every change a node makes crosses both paths: once on its own node to be
//! published, then once on every peer to be applied. The sync task runs them
//! inline, so their cost bounds the replication throughput per node and adds to
//! the delay before a change reaches the other nodes' subscribers.
//!
//! Run: `cargo bench -p bus-sync --bench sync -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::time::Duration;

use bus_sync::wire::{self, Batch};
use bus_sync::{Action, SyncConfig, SyncCore};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use registry_proto::v1;
use registry_store::{Change, Entry, Hlc, InstanceKey, Key, Origin, Record};

/// Changes in one received batch.
const BATCH: usize = 500;
/// Local changes queued before one `take_publishes`.
const QUEUED: usize = 1_000;
/// Instances per service.
const PER_SERVICE: usize = 100;
const WALL_MS: u64 = 1_750_000_000_000;

fn instance(k: usize) -> v1::Instance {
    v1::Instance {
        namespace: "default".into(),
        service: format!("svc-{}", k / PER_SERVICE),
        instance_id: format!("i-{k:06}"),
        host: format!("10.{}.{}.{}", (k >> 16) & 0xff, (k >> 8) & 0xff, k & 0xff),
        port: 8080,
        metadata: [("version".to_string(), "1.4.2".to_string()), ("region".to_string(), "eu-west-1".to_string())]
            .into_iter()
            .collect(),
        weight: Some(100),
        zone: "eu-west-1a".into(),
        status: v1::Status::Up.into(),
        principal: String::new(),
        status_override: None,
    }
}

/// `n` puts of instance records by `node`, with versions from its clock.
fn puts(node: &str, n: usize) -> Vec<Change> {
    let mut hlc = Hlc::new(node);
    (0..n)
        .map(|k| {
            let i = instance(k);
            Change::Put {
                key: Key::Instance(InstanceKey::new(&i.namespace, &i.service, &i.instance_id)),
                entry: Entry { version: hlc.tick(WALL_MS), record: Some(Record::instance(&i)) },
            }
        })
        .collect()
}

fn core(node: &str) -> SyncCore {
    SyncCore::new(Origin::new(node, 1), SyncConfig::default(), 0)
}

/// Receiving one batch of 500 changes from a peer, applied in order: the batch
/// with `first_seq` one past what the core has applied, every time.
fn on_batch(c: &mut Criterion) {
    let peer = Origin::new("node-b", 1);
    let mut msg = wire::batch_to_wire(&peer, 1, &puts("node-b", BATCH));
    let mut group = c.benchmark_group("sync/on_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    // The untimed setup (encoding, decoding) costs more than some routines.
    group.sample_size(50);

    // Check the workload once: a contiguous batch comes out as one Apply.
    let mut check = core("node-a");
    let batch = wire::decode_batch(&wire::encode(&msg)).expect("a batch we encoded decodes");
    let actions = check.on_batch(batch, 0);
    assert!(matches!(&actions[..], [Action::Apply { first_seq: 1, changes, .. }] if changes.len() == BATCH));

    let bytes = wire::encode(&msg);
    group.bench_function("decode_batch_500", |b| {
        b.iter_with_large_drop(|| wire::decode_batch(black_box(&bytes)).expect("a batch we encoded decodes"));
    });

    // The next batch in `peer`'s order, encoded as on the bus.
    let mut next_seq = 1u64;
    let mut next_bytes = move || {
        msg.first_seq = next_seq;
        next_seq += BATCH as u64;
        wire::encode(&msg)
    };

    let mut node = core("node-a");
    group.bench_function("on_batch_500_in_order", |b| {
        b.iter_batched(
            || wire::decode_batch(&next_bytes()).expect("a batch we encoded decodes"),
            |batch: Batch| node.on_batch(batch, 0),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("decode_and_on_batch_500_in_order", |b| {
        b.iter_batched(
            &mut next_bytes,
            |bytes| node.on_batch(wire::decode_batch(&bytes).expect("a batch we encoded decodes"), 0),
            BatchSize::SmallInput,
        );
    });
    let counters = node.counters();
    assert_eq!((counters.gaps, counters.duplicates_dropped), (0, 0), "every batch applied in order");
    group.finish();
}

/// `take_publishes` with 1,000 local changes queued: sizing each change on the
/// wire and cutting them into batches under `max_batch_bytes` (256 KiB).
fn take_publishes(c: &mut Criterion) {
    let changes: Vec<(u64, Change)> = (1..).zip(puts("node-a", QUEUED)).collect();
    let queued = || {
        let mut node = core("node-a");
        node.local_changes(changes.clone());
        node
    };
    let actions = queued().take_publishes();
    let published: usize = actions
        .iter()
        .map(|a| match a {
            Action::PublishChanges { changes, .. } => changes.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(published, QUEUED);

    let mut group = c.benchmark_group("sync/take_publishes");
    group.throughput(Throughput::Elements(QUEUED as u64));
    group.sample_size(50);
    group.bench_function("queued_1000", |b| {
        b.iter_batched(
            queued,
            |mut node| {
                let actions = node.take_publishes();
                (node, actions)
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn config() -> Criterion {
    // Short by default so a run stays cheap; command-line flags override these.
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = on_batch, take_publishes
}
criterion_main!(benches);
