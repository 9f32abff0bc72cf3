//! Micro-benchmark of the encode-once fan-out: `Views::apply` of one instance
//! upsert to a service watched by 1, 100 and 10,000 subscribers.
//!
//! Each change to a service is encoded once into a delta frame that every
//! subscriber's queue shares, so the cost per subscriber should be a lock, a set
//! look-up and a queue push, never an encode. The registry's writer runs this
//! inline for every merged-view change, so it bounds how fast a popular service
//! can change and how long writers wait behind a large audience.
//!
//! Queues (capacity 1024) are drained between timed chunks, untimed, so they
//! never fill: every delivery is a real push, none degrades to a snapshot mark.
//!
//! Also `views/get_service`: answering `GetService` for a service of 1,000
//! instances, by decoding the stored instances into the generated response
//! and encoding it (as the node did), and by writing the stored bytes as
//! they are (as it does now).
//!
//! Run: `cargo bench -p registry-node --bench fanout -- --warm-up-time 1 --measurement-time 2`

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use registry_node::metrics::Metrics;
use registry_node::views::{StreamItem, Views};
use registry_proto::v1;
use registry_store::{InstanceKey, Key, Origin, OriginId, Record, Store, ViewChange};
use tokio::sync::mpsc;

const QUEUE_CAPACITY: usize = 1_024;
/// Instances of the watched service before the measured upserts.
const INSTANCES: usize = 100;
/// Most frames queued across all subscribers between two drains (memory bound).
const MAX_QUEUED: usize = 200_000;

fn instance(k: usize, port: u32) -> v1::Instance {
    v1::Instance {
        namespace: "default".into(),
        service: "svc".into(),
        instance_id: format!("i-{k:06}"),
        host: format!("10.0.{}.{}", (k >> 8) & 0xff, k & 0xff),
        port,
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

fn upsert(k: usize, port: u32, origin: OriginId) -> ViewChange {
    let i = instance(k, port);
    ViewChange::Upsert {
        key: Key::Instance(InstanceKey::new(&i.namespace, &i.service, &i.instance_id)),
        record: Record::instance(&i),
        origin,
    }
}

fn drain(receivers: &mut [mpsc::Receiver<StreamItem>]) -> u64 {
    let mut n = 0;
    for rx in receivers {
        while rx.try_recv().is_ok() {
            n += 1;
        }
    }
    n
}

fn fanout(c: &mut Criterion) {
    // `OriginId` has no public constructor: take the local one of a store.
    let origin = Store::new(Origin::new("node-a", 1)).local_id();
    let freshness = v1::Freshness::default();
    let mut group = c.benchmark_group("views/apply_upsert");

    for n in [1usize, 100, 10_000] {
        let metrics = Arc::new(Metrics::default());
        let views = Views::new(QUEUE_CAPACITY, metrics.clone());
        views.apply((0..INSTANCES).map(|k| upsert(k, 8080, origin)).collect(), || freshness);

        let mut subscribers = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for id in 0..n {
            let (sub, mut rx) = views.new_subscriber(id as u64);
            views.watch_services(&sub, "default", &["svc".to_string()]);
            // As the subscriber's task does: send the first snapshot.
            let needs = sub.needs();
            assert_eq!(needs.len(), 1);
            let tx = sub.sender();
            let permit = tx.try_reserve().expect("an empty queue has room");
            assert!(views.send_snapshot(&sub, &needs[0], permit, freshness));
            assert!(rx.try_recv().is_ok(), "the snapshot is queued");
            subscribers.push(sub);
            receivers.push(rx);
        }

        let chunk = (MAX_QUEUED / n).clamp(1, QUEUE_CAPACITY - 1) as u64;
        let mut port = 9000u32;
        let mut applied = 0u64;
        let mut delivered = 0u64;
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(if n >= 10_000 { 20 } else { 100 });
        group.bench_with_input(BenchmarkId::new("subscribers", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let k = (iters - done).min(chunk);
                    // One upsert of one instance per apply, as a renewal that
                    // changes the record would cause.
                    let inputs: Vec<Vec<ViewChange>> = (0..k)
                        .map(|_| {
                            port = port.wrapping_add(1);
                            vec![upsert(7, port, origin)]
                        })
                        .collect();
                    let start = Instant::now();
                    for changes in inputs {
                        views.apply(changes, || freshness);
                    }
                    total += start.elapsed();
                    delivered += drain(&mut receivers);
                    done += k;
                }
                applied += iters;
                total
            });
        });

        assert_eq!(delivered, applied * n as u64, "every upsert reached every subscriber's queue");
        assert_eq!(metrics.subscriber_resyncs.load(Ordering::Relaxed), 0, "no queue ever filled");
        assert!(subscribers.iter().all(|s| s.needs().is_empty()), "no subscriber fell behind");
    }
    group.finish();
}

fn get_service(c: &mut Criterion) {
    const N: usize = 1_000;
    let origin = Store::new(Origin::new("node-a", 1)).local_id();
    let views = Views::new(QUEUE_CAPACITY, Arc::new(Metrics::default()));
    views.apply((0..N).map(|k| upsert(k, 8080, origin)).collect(), v1::Freshness::default);
    let mut group = c.benchmark_group("views/get_service");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("decode_and_encode", |b| {
        b.iter(|| {
            let (revision, instances) = views.get("default", "svc");
            assert_eq!(instances.len(), N);
            let response =
                v1::GetServiceResponse { namespace: "default".into(), service: "svc".into(), instances, revision };
            prost::Message::encode_to_vec(&response)
        })
    });
    group.bench_function("stored_bytes", |b| b.iter(|| views.get_encoded("default", "svc")));
    group.finish();
    // Both answers are the same message.
    let (revision, instances) = views.get("default", "svc");
    let decoded = views.get_encoded("default", "svc").decode().expect("decodes");
    assert_eq!(decoded.revision, revision);
    assert_eq!(decoded.instances.len(), instances.len());
}

fn config() -> Criterion {
    // Short by default so a run stays cheap; command-line flags override these.
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = fanout, get_service
}
criterion_main!(benches);
