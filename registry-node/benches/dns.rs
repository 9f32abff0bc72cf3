//! Micro-benchmark of the DNS front-end's compile: what the first query after
//! a change of a service's view costs, for services of 100, 1,000 and 10,000
//! instances: the read of the view's stored instances, then the compile of
//! their records from nothing (every instance encoded, as at the service's
//! first query) or from the last records after one instance changed (as on
//! every later change).
//!
//! Run: `cargo bench -p registry-node --bench dns -- --warm-up-time 1 --measurement-time 2`

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use registry_node::frontend::dns::answer::Responder;
use registry_node::metrics::Metrics;
use registry_node::views::Views;
use registry_proto::v1;
use registry_store::{EncodedInstance, InstanceKey, Key, Origin, Record, Store, ViewChange};

fn instance(k: usize) -> v1::Instance {
    v1::Instance {
        namespace: "default".into(),
        service: "svc".into(),
        instance_id: format!("i-{k:06}"),
        host: format!("10.{}.{}.{}", (k >> 16) & 0xff, (k >> 8) & 0xff, k & 0xff),
        port: 8080,
        metadata: [("version".to_string(), "1.4.2".to_string())].into_iter().collect(),
        weight: Some(100),
        zone: format!("zone-{}", k % 3),
        status: v1::Status::Up.into(),
        principal: String::new(),
        status_override: None,
    }
}

fn compile(c: &mut Criterion) {
    let origin = Store::new(Origin::new("node-a", 1)).local_id();
    let responder = Responder::new("registry.internal.", 5, Vec::new()).expect("a valid domain");
    let mut group = c.benchmark_group("dns/compile");
    for n in [100usize, 1_000, 10_000] {
        let views = Views::new(1_024, Arc::new(Metrics::default()));
        let changes = (0..n)
            .map(|k| {
                let i = instance(k);
                ViewChange::Upsert {
                    key: Key::Instance(InstanceKey::new(&i.namespace, &i.service, &i.instance_id)),
                    record: Record::instance(&i),
                    origin,
                }
            })
            .collect();
        views.apply(changes, v1::Freshness::default);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("read_view", n), &n, |b, _| {
            b.iter(|| views.get_stored("default", "svc").len())
        });
        let stored = views.get_stored("default", "svc");
        // The first compile of the service: every instance encoded.
        group.bench_with_input(BenchmarkId::new("from_nothing", n), &n, |b, _| {
            b.iter_batched(|| stored.clone(), |s| responder.compile(s, None), BatchSize::LargeInput)
        });
        // After one instance changed: the others come from the last records.
        let mut changed = instance(0);
        changed.port = 9090;
        let old = EncodedInstance::encode(&instance(0));
        let mut after: Vec<EncodedInstance> = stored.iter().filter(|i| **i != old).cloned().collect();
        assert_eq!(after.len(), n - 1, "instance 0 is stored as encoded here");
        after.push(EncodedInstance::encode(&changed));
        let last = responder.compile(stored.clone(), None);
        group.bench_with_input(BenchmarkId::new("after_one_change", n), &n, |b, _| {
            b.iter_batched(|| after.clone(), |a| responder.compile(a, Some(&last)), BatchSize::LargeInput)
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = compile
}
criterion_main!(benches);
