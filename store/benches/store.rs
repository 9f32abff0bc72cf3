//! Micro-benchmarks of the store's hot paths: applying a peer's change batch,
//! a single local write, the incremental slice digest and the resync diff.
//!
//! Every registration, renewal and deregistration in the cluster goes through
//! `Store::put_local` on its own node and `Store::apply_remote` on every other
//! node, under the registry's single writer lock; a slice transfer after a gap or
//! a digest mismatch goes through `Store::replace_slice`. Their cost bounds the
//! write throughput of a node and how long readers and the sync task wait on it.
//!
//! Run: `cargo bench -p registry-store --bench store -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use registry_proto::v1;
use registry_store::{Change, Entry, Hlc, InstanceKey, Key, Origin, OriginId, Outcome, Record, Store};

/// Keys already in the store when a write is measured.
const STORE_KEYS: usize = 100_000;
/// Changes in one peer batch.
const BATCH: usize = 1_000;
/// Entries of the transferred slice in the resync benchmark.
const SLICE: usize = 10_000;
/// Entries of that slice that differ from the copy held (1%).
const SLICE_CHANGED: usize = SLICE / 100;
/// Instances per service: keys spread over `STORE_KEYS / 100` services.
const PER_SERVICE: usize = 100;
/// A realistic wall clock (ms since the epoch) for the HLCs.
const WALL_MS: u64 = 1_750_000_000_000;

fn instance(k: usize, port: u32) -> v1::Instance {
    v1::Instance {
        namespace: "default".into(),
        service: format!("svc-{}", k / PER_SERVICE),
        instance_id: format!("i-{k:06}"),
        host: format!("10.{}.{}.{}", (k >> 16) & 0xff, (k >> 8) & 0xff, k & 0xff),
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

fn key(k: usize) -> Key {
    Key::Instance(InstanceKey::new("default", &format!("svc-{}", k / PER_SERVICE), &format!("i-{k:06}")))
}

fn record(k: usize, port: u32) -> Record {
    Record::instance(&instance(k, port))
}

/// A store whose local origin is `node-a`, plus the peer origin `node-b`.
fn new_store() -> (Store, OriginId) {
    let mut store = Store::new(Origin::new("node-a", 1));
    let peer = store.origin_id(&Origin::new("node-b", 1));
    (store, peer)
}

/// Changes of `node-b` putting keys `range`, with versions from its clock.
fn peer_puts(hlc: &mut Hlc, range: impl Iterator<Item = usize>, port: u32) -> Vec<Change> {
    range
        .map(|k| Change::Put {
            key: key(k),
            entry: Entry { version: hlc.tick(WALL_MS), record: Some(record(k, port)) },
        })
        .collect()
}

/// A store holding `n` keys in the slice of peer `node-b`, and that peer's clock.
fn store_with_peer_keys(n: usize) -> (Store, OriginId, Hlc) {
    let (mut store, peer) = new_store();
    let mut hlc = Hlc::new("node-b");
    for change in peer_puts(&mut hlc, 0..n, 8080) {
        store.apply_remote(peer, change);
    }
    assert_eq!(store.key_count(), n);
    (store, peer, hlc)
}

/// A store holding `n` keys in its own slice.
fn store_with_local_keys(n: usize) -> Store {
    let (mut store, _) = new_store();
    for k in 0..n {
        store.put_local(key(k), record(k, 8080), WALL_MS);
    }
    assert_eq!(store.key_count(), n);
    store
}

/// `apply_remote` of a batch of 1,000 puts from a peer, updating keys it already
/// holds with newer versions (each one a merged-view upsert), in a 100k-key store.
fn apply_remote_batch(c: &mut Criterion) {
    let (mut store, peer, mut hlc) = store_with_peer_keys(STORE_KEYS);
    // Check the workload once: every change of a batch is a merged-view upsert.
    let mut all = Outcome::default();
    for change in peer_puts(&mut hlc, 0..BATCH, 8081) {
        all.extend(store.apply_remote(peer, change));
    }
    assert_eq!((all.view.len(), all.local.len()), (BATCH, 0));
    let mut next = BATCH;
    let mut port = 9000u32;
    let mut group = c.benchmark_group("store/apply_remote");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("batch_1000_puts_in_100k_keys", |b| {
        b.iter_batched(
            || {
                // A new window of keys each batch, with fresh versions and records.
                let batch = peer_puts(&mut hlc, (next..next + BATCH).map(|k| k % STORE_KEYS), port);
                next = (next + BATCH) % STORE_KEYS;
                port = port.wrapping_add(1);
                batch
            },
            |batch| {
                let mut all = Outcome::default();
                for change in batch {
                    all.extend(store.apply_remote(peer, change));
                }
                all
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
    assert_eq!(store.key_count(), STORE_KEYS);
}

/// `put_local` of one instance (HLC tick, digest update, merged-view change and
/// the local change to publish) in a store holding 100k keys.
fn put_local_single(c: &mut Criterion) {
    let mut store = store_with_local_keys(STORE_KEYS);
    let mut group = c.benchmark_group("store/put_local");
    group.throughput(Throughput::Elements(1));

    // Re-registration of an existing instance, a different key every time.
    let mut next = 0usize;
    group.bench_function("update_existing_in_100k_keys", |b| {
        b.iter_batched(
            || {
                let k = next;
                next = (next + 1) % STORE_KEYS;
                (key(k), record(k, 8081))
            },
            |(key, record)| store.put_local(key, record, WALL_MS),
            BatchSize::SmallInput,
        );
    });

    // Registration of a new instance. The new keys are removed again, untimed,
    // after every chunk, so the store stays at 100k keys.
    let mut fresh = STORE_KEYS;
    group.bench_function("insert_new_in_100k_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let n = (iters - done).min(1_000) as usize;
                let inputs: Vec<(Key, Record)> = (fresh..fresh + n).map(|k| (key(k), record(k, 8080))).collect();
                fresh += n;
                let keys: Vec<Key> = inputs.iter().map(|(k, _)| k.clone()).collect();
                let mut outputs = Vec::with_capacity(n);
                let start = Instant::now();
                for (key, record) in inputs {
                    outputs.push(store.put_local(key, record, WALL_MS));
                }
                total += start.elapsed();
                drop(black_box(outputs));
                for key in &keys {
                    store.remove_local(key, WALL_MS);
                }
                done += n as u64;
            }
            total
        });
    });
    group.finish();
    assert_eq!(store.key_count(), STORE_KEYS);
}

/// The incremental digest: replacing one key's entry over and over (the old
/// entry's hash is XORed out, the new one's in), and `Entry::digest` alone.
fn digest_update(c: &mut Criterion) {
    let mut store = store_with_local_keys(STORE_KEYS);
    let mut group = c.benchmark_group("store/digest");
    group.throughput(Throughput::Elements(1));

    let hot_key = key(42);
    let hot_record = record(42, 8080);
    group.bench_function("put_local_same_key", |b| {
        b.iter_batched(
            || (hot_key.clone(), hot_record.clone()),
            |(key, record)| store.put_local(key, record, WALL_MS),
            BatchSize::SmallInput,
        );
    });

    let entry = store.local_entry(&hot_key).cloned().expect("the hot key was just written");
    group.bench_function("entry_digest", |b| {
        b.iter(|| black_box(&entry).digest(black_box(&hot_key)));
    });
    group.finish();
}

/// `replace_slice` with a 10k-entry transferred copy of which 1% differs from
/// the copy held: the diff that makes a resync invisible to subscribers. Also
/// with 100k other keys in the store, which the scan for stale keys walks.
fn replace_slice_diff(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/replace_slice");
    group.throughput(Throughput::Elements(SLICE as u64));
    group.sample_size(20);

    for other_keys in [0usize, STORE_KEYS] {
        let mut store = store_with_local_keys(other_keys);
        let peer = store.origin_id(&Origin::new("node-b", 1));
        let mut hlc = Hlc::new("node-b");
        let first = other_keys; // peer keys do not collide with the local ones
        let mut current: Vec<(Key, Entry)> = peer_puts(&mut hlc, first..first + SLICE, 8080)
            .into_iter()
            .map(|c| match c {
                Change::Put { key, entry } => (key, entry),
                Change::Purge { .. } | Change::Moved { .. } => unreachable!("peer_puts makes puts only"),
            })
            .collect();
        store.replace_slice(peer, current.clone());
        assert_eq!(store.key_count(), other_keys + SLICE);
        let mut next = 0usize;
        let mut port = 9000u32;
        // Check the workload once: exactly the changed 1% reaches the merged view.
        change_window(&mut current, first, &mut next, &mut hlc, &mut port);
        let out = store.replace_slice(peer, current.clone());
        assert_eq!(out.view.len(), SLICE_CHANGED);

        let name = format!("10k_entries_1pct_changed_{}k_other_keys", other_keys / 1_000);
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // 1% of the entries, a different window each time, get newer
                    // versions and records; the rest is identical to what is held.
                    change_window(&mut current, first, &mut next, &mut hlc, &mut port);
                    current.clone()
                },
                |entries| store.replace_slice(peer, entries),
                BatchSize::LargeInput,
            );
        });
        assert_eq!(store.key_count(), other_keys + SLICE);
    }
    group.finish();
}

/// Gives 1% of `current` (slice entries of keys `first..`), a different window
/// each call, newer versions and records; the rest stays as held.
fn change_window(current: &mut [(Key, Entry)], first: usize, next: &mut usize, hlc: &mut Hlc, port: &mut u32) {
    for i in *next..*next + SLICE_CHANGED {
        let j = i % SLICE;
        current[j].1 = Entry { version: hlc.tick(WALL_MS), record: Some(record(first + j, *port)) };
    }
    *next = (*next + SLICE_CHANGED) % SLICE;
    *port = port.wrapping_add(1);
}

/// `slice_entries` of the own slice: the copy a peer's slice transfer is cut
/// from, taken under the registry's writer lock (grouping by service happens
/// outside it). 100k own keys, alone and beside 100k keys of a peer.
fn own_slice_cut(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/slice_entries");
    group.throughput(Throughput::Elements(STORE_KEYS as u64));
    group.sample_size(20);
    for peer_keys in [0usize, STORE_KEYS] {
        let mut store = store_with_local_keys(STORE_KEYS);
        let peer = store.origin_id(&Origin::new("node-b", 1));
        let mut hlc = Hlc::new("node-b");
        for change in peer_puts(&mut hlc, STORE_KEYS..STORE_KEYS + peer_keys, 8080) {
            store.apply_remote(peer, change);
        }
        let local = store.local_id();
        assert_eq!(store.slice_entries(local).len(), STORE_KEYS);
        let name = format!("own_100k_beside_{}k_peer_keys", peer_keys / 1_000);
        group.bench_function(name, |b| b.iter(|| black_box(store.slice_entries(local))));
    }
    group.finish();
}

fn config() -> Criterion {
    // Short by default so a run stays cheap; command-line flags override these.
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = apply_remote_batch, put_local_single, digest_update, replace_slice_diff, own_slice_cut
}
criterion_main!(benches);
