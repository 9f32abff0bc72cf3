//! Hostile bus input: garbage bytes, truncated messages and well-formed but forged
//! messages. Whatever comes from the bus is either refused by the wire layer with
//! a typed error, or reaches the core and is counted and ignored there. Nothing
//! panics, and nothing refused changes any state.

use std::sync::Arc;

use bus_sync::wire::{self, Batch, BeatInfo, Page, Reply, Request, WireError};
use bus_sync::{Action, Counters, Cuts, SliceCut, SyncConfig, SyncCore};
use proptest::prelude::*;
use proptest::sample::Index;
use registry_proto::{sync as pb, v1};
use registry_store::{Change, Entry, InstanceKey, Key, Origin, Record, Version};

// ---------------------------------------------------------------- helpers

fn me() -> Origin {
    Origin::new("n0", 7)
}

fn peer() -> Origin {
    Origin::new("n1", 5)
}

fn key(k: u8) -> Key {
    Key::Instance(InstanceKey::new("default", "svc", &format!("i{k}")))
}

fn instance(k: u8, port: u32) -> v1::Instance {
    v1::Instance {
        namespace: "default".into(),
        service: "svc".into(),
        instance_id: format!("i{k}"),
        host: "127.0.0.1".into(),
        port,
        ..Default::default()
    }
}

fn entry(k: u8, port: u32) -> Entry {
    Entry { version: Version { hlc: 1 << 20, node: 7 }, record: Some(Record::instance(&instance(k, port))) }
}

fn put(k: u8, port: u32) -> Change {
    Change::Put { key: key(k), entry: entry(k, port) }
}

fn consumer_key() -> Key {
    Key::consumer("default", "n1-1")
}

fn slice(n: u8) -> Vec<(Key, Entry)> {
    (0..n).map(|k| (key(k), entry(k, 80))).collect()
}

/// A batch as a peer publishes it: through the wire encoding and its checks, so
/// every forged batch below is one the bus layer lets through.
fn batch(origin: &Origin, first_seq: u64, changes: Vec<Change>) -> Batch {
    wire::decode_batch(&wire::encode(&wire::batch_to_wire(origin, first_seq, &changes))).expect("a well-formed batch")
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, WireError>, expected: &str) {
    match result {
        Err(WireError::Invalid { field, .. }) if field == expected => {}
        other => panic!("expected an invalid `{expected}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_missing<T: std::fmt::Debug>(result: Result<T, WireError>, expected: &str) {
    match result {
        Err(WireError::Missing(field)) if field == expected => {}
        other => panic!("expected a missing `{expected}`, got {other:?}"),
    }
}

// ---------------------------------------------------------------- wire: garbage and truncation

type Decode = fn(&[u8]) -> Result<(), WireError>;

const BATCH: Decode = |b| wire::decode_batch(b).map(drop);
const BEAT: Decode = |b| wire::decode_beat(b).map(drop);
const HELLO: Decode = |b| wire::decode_hello(b).map(drop);
const REQUEST: Decode = |b| wire::decode_request(b).map(drop);
const REPLY: Decode = |b| wire::decode_reply(b).map(drop);

const DECODERS: [(&str, Decode); 5] = [
    ("decode_batch", BATCH),
    ("decode_beat", BEAT),
    ("decode_hello", HELLO),
    ("decode_request", REQUEST),
    ("decode_reply", REPLY),
];

/// A valid encoding of one bus message.
struct Sample {
    name: &'static str,
    bytes: Vec<u8>,
    decode: Decode,
    /// Every proper prefix is invalid too: the message has a single top-level
    /// field, or ends in a required one.
    prefixes_invalid: bool,
}

/// One valid message of every kind, with every kind of key, record and reply.
fn samples() -> Vec<Sample> {
    let consumer = v1::Consumer { node_id: "n1".into(), services: vec!["svc".into()], ..Default::default() };
    let mixed = [
        put(1, 80),
        Change::Put { key: key(2), entry: Entry { version: Version { hlc: 9, node: 1 }, record: None } },
        Change::Put {
            key: consumer_key(),
            entry: Entry { version: Version { hlc: 9, node: 1 }, record: Some(Record::Consumer(Arc::new(consumer))) },
        },
        Change::Purge { key: consumer_key() },
    ];
    let beat = BeatInfo {
        seq: 42,
        digest: 0xdead_beef,
        entries: 3,
        live: 2,
        ready: true,
        advertise_addr: "10.0.0.1:7000".into(),
        start_unix_ms: 1_700_000_000_000,
        leaving: true,
        members: 0x5eed,
        sessions: 12,
        subscriptions: 7,
        farewell: true,
        hlc: Some(117_743_689_382_363_136),
    };
    let page = Page { cut_id: 3, cut_seq: 9, offset: 2, total: 5, digest: 77, entries: slice(2) };
    let sample = |name, bytes, decode, prefixes_invalid| Sample { name, bytes, decode, prefixes_invalid };
    vec![
        sample("batch", wire::encode(&wire::batch_to_wire(&peer(), 7, &mixed)), BATCH, false),
        sample("batch of one", wire::encode(&wire::batch_to_wire(&peer(), 7, &[put(1, 80)])), BATCH, true),
        sample("beat", wire::encode(&wire::beat_to_wire(&peer(), &beat)), BEAT, false),
        sample("hello", wire::encode(&wire::hello_to_wire(&peer())), HELLO, true),
        sample(
            "range request",
            wire::encode(&wire::request_to_wire(&peer(), 7, &Request::Range { from_seq: 3, to_seq: 9 })),
            REQUEST,
            true,
        ),
        sample(
            "page request",
            wire::encode(&wire::request_to_wire(&peer(), 7, &Request::Page { cut_id: 3, offset: 2 })),
            REQUEST,
            true,
        ),
        sample(
            "range reply",
            wire::encode(&wire::reply_to_wire(&Reply::Range(batch(&peer(), 7, mixed.to_vec())))),
            REPLY,
            true,
        ),
        sample("empty reply", wire::encode(&wire::reply_to_wire(&Reply::Empty)), REPLY, true),
        sample("page reply", wire::encode(&wire::reply_to_wire(&Reply::Page(page))), REPLY, true),
        sample("refused reply", wire::encode(&wire::refused_to_wire("range no longer kept", true)), REPLY, true),
    ]
}

/// A batch carrying `record` as the encoded instance of key `i1`.
fn batch_with_record(record: Vec<u8>) -> Vec<u8> {
    let mut b = wire::batch_to_wire(&peer(), 7, &[put(1, 80)]);
    let Some(pb::Entry { record: Some(pb::entry::Record::Instance(bytes)), .. }) = &mut b.changes[0].put else {
        panic!("an instance put")
    };
    *bytes = record;
    wire::encode(&b)
}

#[test]
fn an_instance_record_that_is_not_its_keys_is_refused() {
    use prost::Message as _;
    let good = instance(1, 80);
    assert!(wire::decode_batch(&batch_with_record(good.encode_to_vec())).is_ok(), "the unforged batch is accepted");
    let other_id = v1::Instance { instance_id: "i2".into(), ..good.clone() };
    let no_service = v1::Instance { service: String::new(), ..good.clone() };
    let mut truncated = good.encode_to_vec();
    truncated.pop();
    // Field 3 (instance_id) as a varint instead of a string.
    let mut wrong_type = v1::Instance { instance_id: String::new(), ..good.clone() }.encode_to_vec();
    wrong_type.extend([3 << 3, 1]);
    // A second instance_id after the right one: protobuf's last value wins.
    let mut repeated = good.encode_to_vec();
    repeated.extend([3 << 3 | 2, 2, b'i', b'9']);
    let forged = [
        ("another key's record", other_id.encode_to_vec()),
        ("a record without a service", no_service.encode_to_vec()),
        ("a truncated record", truncated),
        ("an id of the wrong wire type", wrong_type),
        ("a second, different id", repeated),
        ("not protobuf", vec![0xff; 12]),
    ];
    for (what, record) in forged {
        assert!(wire::decode_batch(&batch_with_record(record)).is_err(), "{what} was accepted");
    }
}

#[test]
fn garbage_is_refused_by_every_decoder() {
    let garbage: [&[u8]; 10] = [
        b"",                                   // required fields missing
        &[0x00],                               // field number 0
        &[0x07],                               // wire type 7 does not exist
        &[0xff; 16],                           // a varint longer than 10 bytes
        &[0x0a, 0x7f],                         // a length past the end
        &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // a length of 4 GiB
        &[0x0a, 0x02, 0xff, 0xff],             // a nested message cut inside a varint
        &[0x0a, 0x04, 0x0a, 0x02, 0xc3, 0x28], // a string that is not UTF-8
        b"GET / HTTP/1.1\r\n\r\n",
        br#"{"origin":{"node_id":"n1","incarnation":5}}"#,
    ];
    for bytes in garbage {
        for (name, decode) in DECODERS {
            assert!(decode(bytes).is_err(), "{name} accepted {bytes:02x?}");
        }
    }
}

#[test]
fn a_message_missing_its_last_byte_is_refused() {
    for s in samples() {
        assert!((s.decode)(&s.bytes).is_ok(), "the {} sample is valid", s.name);
        let cut = &s.bytes[..s.bytes.len() - 1];
        assert!(matches!((s.decode)(cut), Err(WireError::Decode(_))), "{} without its last byte", s.name);
    }
}

#[test]
fn every_proper_prefix_of_a_message_with_a_required_tail_is_refused() {
    for s in samples().into_iter().filter(|s| s.prefixes_invalid) {
        for len in 0..s.bytes.len() {
            assert!((s.decode)(&s.bytes[..len]).is_err(), "{} cut to {len} of {} bytes", s.name, s.bytes.len());
        }
    }
}

/// Runs `bytes` through every decoder. None may panic, and whatever one accepts
/// must be a message it would send itself: re-encoded, it decodes to the same value.
fn check_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(b) = wire::decode_batch(bytes) {
        let again = wire::decode_batch(&wire::encode(&wire::batch_to_wire(&b.origin, b.first_seq, &b.changes)));
        prop_assert_eq!(again.ok(), Some(b));
    }
    if let Ok((origin, beat)) = wire::decode_beat(bytes) {
        let again = wire::decode_beat(&wire::encode(&wire::beat_to_wire(&origin, &beat)));
        prop_assert_eq!(again.ok(), Some((origin, beat)));
    }
    if let Ok(origin) = wire::decode_hello(bytes) {
        let again = wire::decode_hello(&wire::encode(&wire::hello_to_wire(&origin)));
        prop_assert_eq!(again.ok(), Some(origin));
    }
    if let Ok((requester, incarnation, request)) = wire::decode_request(bytes) {
        let again = wire::decode_request(&wire::encode(&wire::request_to_wire(&requester, incarnation, &request)));
        prop_assert_eq!(again.ok(), Some((requester, incarnation, request)));
    }
    if let Ok(reply) = wire::decode_reply(bytes) {
        let again = wire::decode_reply(&wire::encode(&wire::reply_to_wire(&reply)));
        prop_assert_eq!(again.ok(), Some(reply));
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_decoders(&bytes)?;
    }

    #[test]
    fn corrupted_and_truncated_messages_never_panic_a_decoder(
        sample in any::<Index>(),
        overwrites in prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        cut in any::<Index>(),
    ) {
        let mut bytes = sample.get(&samples()).bytes.clone();
        for (at, byte) in overwrites {
            *at.get_mut(&mut bytes) = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        check_decoders(&bytes)?;
    }
}

// ---------------------------------------------------------------- wire: forged batches

/// A valid wire batch of `peer()` holding `change`.
fn wire_batch(change: pb::Change) -> pb::ChangeBatch {
    pb::ChangeBatch { origin: Some(wire::origin_to_wire(&peer())), first_seq: 1, changes: vec![change] }
}

fn wire_put(key: &Key, record: Option<pb::entry::Record>) -> pb::Change {
    pb::Change {
        key: Some(wire::key_to_wire(key)),
        put: Some(pb::Entry { version: Some(pb::Version { hlc: 9, node: 1 }), record }),
        moved_to: None,
    }
}

fn wire_instance(i: v1::Instance) -> Option<pb::entry::Record> {
    Some(pb::entry::Record::Instance(prost::Message::encode_to_vec(&i)))
}

fn decode(b: &pb::ChangeBatch) -> Result<Batch, WireError> {
    wire::decode_batch(&wire::encode(b))
}

#[test]
fn an_empty_batch_is_refused() {
    let b = pb::ChangeBatch { changes: Vec::new(), ..wire_batch(wire_put(&key(1), None)) };
    assert_invalid(decode(&b), "changes");
}

#[test]
fn a_batch_starting_at_seq_zero_is_refused() {
    let b = pb::ChangeBatch { first_seq: 0, ..wire_batch(wire_put(&key(1), None)) };
    assert_invalid(decode(&b), "first_seq");
}

#[test]
fn a_batch_whose_seqs_overflow_is_refused() {
    let change = wire_put(&key(1), None);
    let b = pb::ChangeBatch {
        first_seq: u64::MAX,
        changes: vec![change.clone(), change],
        ..wire_batch(wire_put(&key(1), None))
    };
    assert_invalid(decode(&b), "first_seq");
}

#[test]
fn a_batch_from_a_malformed_node_id_is_refused() {
    let long = "a".repeat(65);
    for node_id in ["n.1", "", long.as_str(), "n*", ">", "n 1", "nöde"] {
        let mut b = wire_batch(wire_put(&key(1), None));
        b.origin = Some(pb::Origin { node_id: node_id.into(), incarnation: 5 });
        assert_invalid(decode(&b), "origin.node_id");
    }
    // The longest valid node id passes: the bound is not off by one.
    let mut b = wire_batch(wire_put(&key(1), None));
    b.origin = Some(pb::Origin { node_id: "a".repeat(64), incarnation: 5 });
    assert!(decode(&b).is_ok());
}

#[test]
fn a_batch_from_incarnation_zero_is_refused() {
    let mut b = wire_batch(wire_put(&key(1), None));
    b.origin = Some(pb::Origin { node_id: "n1".into(), incarnation: 0 });
    assert_invalid(decode(&b), "origin.incarnation");
}

#[test]
fn a_batch_without_an_origin_is_refused() {
    let b = pb::ChangeBatch { origin: None, ..wire_batch(wire_put(&key(1), None)) };
    assert_missing(decode(&b), "origin");
}

#[test]
fn an_instance_record_that_does_not_match_its_key_is_refused() {
    for other in [
        v1::Instance { namespace: "other".into(), ..instance(1, 80) },
        v1::Instance { service: "other".into(), ..instance(1, 80) },
        v1::Instance { instance_id: "i2".into(), ..instance(1, 80) },
    ] {
        assert_invalid(decode(&wire_batch(wire_put(&key(1), wire_instance(other)))), "entry.instance");
    }
    assert!(decode(&wire_batch(wire_put(&key(1), wire_instance(instance(1, 80))))).is_ok());
}

#[test]
fn a_record_of_another_kind_than_its_key_is_refused() {
    let consumer = Some(pb::entry::Record::Consumer(v1::Consumer::default()));
    assert_invalid(decode(&wire_batch(wire_put(&key(1), consumer))), "entry.record");
    assert_invalid(decode(&wire_batch(wire_put(&consumer_key(), wire_instance(instance(1, 80))))), "entry.record");
}

#[test]
fn a_key_with_an_empty_or_oversized_part_is_refused() {
    let purge = |kind| pb::Change { key: Some(pb::Key { kind: Some(kind) }), put: None, moved_to: None };
    let instance_key = |namespace: &str, service: &str, id: &str| {
        pb::key::Kind::Instance(v1::InstanceKey {
            namespace: namespace.into(),
            service: service.into(),
            instance_id: id.into(),
        })
    };
    let long = "x".repeat(4_097);
    for (kind, field) in [
        (instance_key("", "svc", "i1"), "key.namespace"),
        (instance_key("default", "", "i1"), "key.service"),
        (instance_key("default", "svc", &long), "key.instance_id"),
        (pb::key::Kind::Consumer(pb::ConsumerKey { namespace: "default".into(), stream: String::new() }), "key.stream"),
    ] {
        assert_invalid(decode(&wire_batch(purge(kind))), field);
    }
}

#[test]
fn a_change_without_a_key_or_a_version_is_refused() {
    assert_missing(decode(&wire_batch(pb::Change { key: None, put: None, moved_to: None })), "key");
    let mut change = wire_put(&key(1), None);
    change.put = Some(pb::Entry { version: None, record: None });
    assert_missing(decode(&wire_batch(change)), "entry.version");
}

// ---------------------------------------------------------------- wire: requests, replies, beats, hellos

fn request(kind: pb::sync_request::Kind) -> Vec<u8> {
    wire::encode(&pb::SyncRequest { requester: Some(wire::origin_to_wire(&peer())), incarnation: 7, kind: Some(kind) })
}

fn range(from_seq: u64, to_seq: u64) -> Vec<u8> {
    request(pb::sync_request::Kind::Range(pb::SeqRange { from_seq, to_seq }))
}

#[test]
fn an_inverted_range_request_is_refused() {
    assert_invalid(wire::decode_request(&range(5, 4)), "range");
    assert_invalid(wire::decode_request(&range(u64::MAX, 1)), "range");
    assert!(wire::decode_request(&range(4, 4)).is_ok());
}

#[test]
fn a_range_request_from_seq_zero_is_refused() {
    assert_invalid(wire::decode_request(&range(0, 3)), "range");
    assert_invalid(wire::decode_request(&range(0, 0)), "range");
}

#[test]
fn a_request_without_a_kind_or_a_requester_is_refused() {
    let bare = pb::SyncRequest { requester: Some(wire::origin_to_wire(&peer())), incarnation: 7, kind: None };
    assert_missing(wire::decode_request(&wire::encode(&bare)), "kind");
    let anonymous = pb::SyncRequest { requester: None, ..bare };
    assert_missing(wire::decode_request(&wire::encode(&anonymous)), "origin");
}

fn page_reply(offset: u64, total: u64, entries: u8) -> Vec<u8> {
    let page = Page { cut_id: 3, cut_seq: 9, offset, total, digest: 0, entries: slice(entries) };
    wire::encode(&wire::page_to_wire(&page))
}

#[test]
fn a_page_whose_entries_run_past_its_total_is_refused() {
    for (offset, total, entries) in [(0, 1, 2), (2, 3, 2), (4, 3, 0), (u64::MAX, u64::MAX, 1)] {
        assert_invalid(wire::decode_reply(&page_reply(offset, total, entries)), "page");
    }
    assert!(wire::decode_reply(&page_reply(1, 3, 2)).is_ok());
}

#[test]
fn a_page_entry_that_does_not_match_its_key_is_refused() {
    let mut reply = pb::SyncReply::default();
    let entry = wire_put(&key(1), wire_instance(instance(2, 80))).put;
    reply.kind = Some(pb::sync_reply::Kind::Page(pb::Page {
        total: 1,
        entries: vec![pb::KeyEntry { key: Some(wire::key_to_wire(&key(1))), entry }],
        ..Default::default()
    }));
    assert_invalid(wire::decode_reply(&wire::encode(&reply)), "entry.instance");
}

#[test]
fn a_range_reply_with_a_malformed_batch_is_refused() {
    let b = pb::ChangeBatch { first_seq: 0, ..wire_batch(wire_put(&key(1), None)) };
    let reply = pb::SyncReply { kind: Some(pb::sync_reply::Kind::Range(b)) };
    assert_invalid(wire::decode_reply(&wire::encode(&reply)), "first_seq");
}

#[test]
fn a_reply_without_a_kind_is_refused() {
    assert_missing(wire::decode_reply(&wire::encode(&pb::SyncReply { kind: None })), "kind");
}

#[test]
fn a_beat_with_impossible_stats_or_an_oversized_address_is_refused() {
    let beat = |b: BeatInfo| wire::encode(&wire::beat_to_wire(&peer(), &b));
    assert_invalid(wire::decode_beat(&beat(BeatInfo { entries: 2, live: 3, ..Default::default() })), "live");
    let advertise_addr = "a".repeat(257);
    assert_invalid(wire::decode_beat(&beat(BeatInfo { advertise_addr, ..Default::default() })), "advertise_addr");
}

#[test]
fn a_hello_from_a_malformed_origin_is_refused() {
    let hello = |node_id: &str, incarnation| {
        wire::encode(&pb::Hello { origin: Some(pb::Origin { node_id: node_id.into(), incarnation }) })
    };
    assert_invalid(wire::decode_hello(&hello("n.1", 5)), "origin.node_id");
    assert_invalid(wire::decode_hello(&hello("n1", 0)), "origin.incarnation");
    assert_missing(wire::decode_hello(&wire::encode(&pb::Hello { origin: None })), "origin");
}

// ---------------------------------------------------------------- core

fn core() -> SyncCore {
    SyncCore::new(me(), SyncConfig::default(), 0)
}

/// A core that has applied `peer()`'s changes 1..=2.
fn core_with_peer() -> SyncCore {
    let mut core = core();
    let actions = core.on_batch(batch(&peer(), 1, vec![put(1, 80), put(2, 80)]), 10);
    assert!(matches!(actions.as_slice(), [Action::Apply { first_seq: 1, .. }]), "{actions:?}");
    core
}

/// Whether `actions` change any slice.
fn applies(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Apply { .. } | Action::ReplaceSlice { .. } | Action::LoadEntries { .. }))
}

/// Last seq of `origin` the core has applied, if it knows the origin.
fn applied(core: &SyncCore, origin: &Origin) -> Option<u64> {
    core.peers(0).into_iter().find(|p| p.origin == *origin).map(|p| p.applied)
}

/// The id of the one range or page pull in `actions`.
#[track_caller]
fn pull_id(actions: &[Action], expected: &Request) -> u64 {
    match actions {
        [Action::Request { id, request, .. }] if request == expected => *id,
        other => panic!("expected one pull of {expected:?}, got {other:?}"),
    }
}

#[test]
fn a_forged_batch_far_ahead_is_buffered_then_discarded_by_the_next_beat() {
    let mut core = core_with_peer();
    // The largest first seq the wire accepts for one change.
    let actions = core.on_batch(batch(&peer(), u64::MAX - 1, vec![put(1, 666)]), 20);
    assert!(!applies(&actions), "{actions:?}");
    // Taken for a gap: the core asks the origin for the range in between.
    let id = pull_id(&actions, &Request::Range { from_seq: 3, to_seq: u64::MAX - 2 });
    assert_eq!(applied(&core, &peer()), Some(2));

    // The origin's beat says it issued up to seq 2 only: the buffered batch is bogus.
    let before = core.counters().clone();
    let actions = core.on_beat(peer(), BeatInfo { seq: 2, ..Default::default() }, (0, 0), 30);
    assert_eq!(actions, []);
    assert_eq!(core.counters(), &Counters { invalid: before.invalid + 1, ..before });

    // The origin has nothing past seq 2. Once the pull ends there is nothing left
    // to pull: the forged batch no longer stands for a gap.
    assert_eq!(core.on_reply(id, Some(Reply::Empty), 40), []);
    let actions = core.on_tick(40 + core.config().retry_ms, 0);
    assert!(!applies(&actions) && !actions.iter().any(|a| matches!(a, Action::Request { .. })), "{actions:?}");
    assert_eq!(applied(&core, &peer()), Some(2));
}

#[test]
fn a_batch_or_beat_from_an_older_incarnation_is_dropped_as_stale() {
    let mut core = core_with_peer();
    let old = Origin::new("n1", 4);
    let peers = core.peers(20);

    let before = core.counters().clone();
    assert_eq!(core.on_batch(batch(&old, 3, vec![put(1, 666)]), 20), []);
    assert_eq!(core.counters(), &Counters { stale_dropped: before.stale_dropped + 1, ..before });

    // Nor does the old incarnation's beat keep the current one alive.
    let before = core.counters().clone();
    assert_eq!(core.on_beat(old, BeatInfo { seq: 9, ..Default::default() }, (0, 0), 20), []);
    assert_eq!(core.counters(), &Counters { stale_dropped: before.stale_dropped + 1, ..before });

    assert_eq!(core.peers(20), peers);
}

#[test]
fn a_batch_claiming_our_node_id_is_ignored() {
    let mut core = core();
    for impostor in [Origin::new("n0", 6), Origin::new("n0", 8), Origin::new("n0", u64::MAX)] {
        let before = core.counters().clone();
        assert_eq!(core.on_batch(batch(&impostor, 1, vec![put(1, 666)]), 10), []);
        assert_eq!(core.counters(), &Counters { stale_dropped: before.stale_dropped + 1, ..before });
    }
    // Our own echo is silently skipped.
    let before = core.counters().clone();
    assert_eq!(core.on_batch(batch(&me(), 1, vec![put(1, 80)]), 10), []);
    assert_eq!(core.counters(), &before);
    assert_eq!(core.peers(10), []);
}

#[test]
fn a_duplicate_batch_is_counted_and_not_applied_again() {
    let mut core = core_with_peer();
    for dup in [batch(&peer(), 1, vec![put(1, 80), put(2, 80)]), batch(&peer(), 2, vec![put(2, 80)])] {
        let before = core.counters().clone();
        assert_eq!(core.on_batch(dup, 20), []);
        assert_eq!(core.counters(), &Counters { duplicates_dropped: before.duplicates_dropped + 1, ..before });
    }
    assert_eq!(applied(&core, &peer()), Some(2));
}

#[test]
fn serving_a_range_of_another_incarnation_is_refused() {
    let mut core = core();
    core.local_changes(vec![(1, put(1, 80)), (2, put(2, 80))]);
    for incarnation in [0, 6, 8, u64::MAX] {
        let reply = core.serve_range(incarnation, 1, 2);
        assert!(matches!(reply, Reply::Refused { pull_slice: false, .. }), "{reply:?}");
    }
}

#[test]
fn serving_a_range_older_than_the_ring_asks_for_the_slice() {
    let mut core = SyncCore::new(me(), SyncConfig { ring_capacity: 2, ..SyncConfig::default() }, 0);
    core.local_changes((1..=5).map(|seq| (seq, put(1, seq as u32))).collect());
    for (from, to) in [(1, 5), (3, 5), (1, 1), (0, 5)] {
        let reply = core.serve_range(7, from, to);
        assert!(matches!(reply, Reply::Refused { pull_slice: true, .. }), "{from}..={to}: {reply:?}");
    }
    // What the ring still holds is served.
    let reply = core.serve_range(7, 4, 5);
    assert!(matches!(&reply, Reply::Range(b) if b.first_seq == 4 && b.changes.len() == 2), "{reply:?}");
}

#[test]
fn serving_a_range_past_the_own_seq_is_empty_or_clamped() {
    let mut core = core();
    assert_eq!(core.serve_range(7, 1, u64::MAX), Reply::Empty, "nothing issued yet");
    core.local_changes(vec![(1, put(1, 80)), (2, put(2, 80))]);
    assert_eq!(core.serve_range(7, 3, u64::MAX), Reply::Empty);
    assert_eq!(core.serve_range(7, u64::MAX, u64::MAX), Reply::Empty);
    let reply = core.serve_range(7, 2, u64::MAX);
    assert!(matches!(&reply, Reply::Range(b) if b.first_seq == 2 && b.changes.len() == 1), "{reply:?}");
}

#[test]
fn a_reply_to_an_unknown_request_changes_nothing() {
    let mut core = core_with_peer();
    let before = (core.counters().clone(), core.peers(20));
    let page = Page { cut_id: 1, cut_seq: 9, offset: 0, total: 1, digest: 0, entries: slice(1) };
    let replies = [
        None,
        Some(Reply::Empty),
        Some(Reply::Range(batch(&peer(), 3, vec![put(1, 666)]))),
        Some(Reply::Page(page)),
        Some(Reply::Refused { reason: "forged".into(), pull_slice: true }),
    ];
    for reply in replies {
        // The core has sent no request yet, so even the next id to issue is unknown.
        for id in [0, 1, 999, u64::MAX] {
            assert_eq!(core.on_reply(id, reply.clone(), 20), [], "{id}: {reply:?}");
        }
    }
    assert_eq!((core.counters().clone(), core.peers(20)), before);
}

#[test]
fn a_range_reply_from_another_origin_is_counted_invalid() {
    let mut core = core_with_peer();
    let wanted = Request::Range { from_seq: 3, to_seq: 4 };
    let mut id = pull_id(&core.on_beat(peer(), BeatInfo { seq: 4, ..Default::default() }, (0, 0), 20), &wanted);
    for forger in [Origin::new("n1", 4), Origin::new("n1", 6), Origin::new("n2", 5)] {
        let before = core.counters().clone();
        let actions = core.on_reply(id, Some(Reply::Range(batch(&forger, 3, vec![put(1, 666), put(2, 666)]))), 30);
        assert!(!applies(&actions), "{actions:?}");
        // The pull is retried with the real origin.
        id = pull_id(&actions, &wanted);
        assert_eq!(
            core.counters(),
            &Counters { invalid: before.invalid + 1, range_pulls: before.range_pulls + 1, ..before }
        );
    }
    assert_eq!(applied(&core, &peer()), Some(2));
}

#[test]
fn a_page_answering_a_range_pull_is_counted_invalid() {
    let mut core = core_with_peer();
    let wanted = Request::Range { from_seq: 3, to_seq: 4 };
    let id = pull_id(&core.on_beat(peer(), BeatInfo { seq: 4, ..Default::default() }, (0, 0), 20), &wanted);
    let before = core.counters().clone();
    let page = Page { cut_id: 1, cut_seq: 4, offset: 0, total: 1, digest: 0, entries: slice(1) };
    let actions = core.on_reply(id, Some(Reply::Page(page)), 30);
    assert!(!applies(&actions), "{actions:?}");
    // Nothing of the page is used; the range pull is simply retried.
    pull_id(&actions, &wanted);
    assert_eq!(
        core.counters(),
        &Counters { invalid: before.invalid + 1, range_pulls: before.range_pulls + 1, ..before }
    );
    assert_eq!(applied(&core, &peer()), Some(2));
}

#[test]
fn a_slice_claiming_more_entries_than_any_slice_may_hold_is_refused() {
    // A forged or broken peer claims an endless slice: nothing of it is
    // loaded, and this node does not go on pulling pages of it.
    let mut core = SyncCore::new(me(), SyncConfig { max_slice_entries: 1_000, ..SyncConfig::default() }, 0);
    let wanted = Request::Page { cut_id: 0, offset: 0 };
    let id = pull_id(&core.on_beat(peer(), BeatInfo { seq: 5, ..Default::default() }, (0, 0), 10), &wanted);
    let page = Page { cut_id: 3, cut_seq: 5, offset: 0, total: 1_001, digest: 0, entries: slice(1) };
    let before = core.counters().clone();
    let actions = core.on_reply(id, Some(Reply::Page(page.clone())), 20);
    assert!(!applies(&actions), "{actions:?}");
    assert!(actions.iter().all(|a| !matches!(a, Action::Request { .. })), "no further page asked for: {actions:?}");
    assert_eq!(core.counters().invalid, before.invalid + 1);
    // At the limit, the same page is loaded.
    let mut core = SyncCore::new(me(), SyncConfig { max_slice_entries: 1_001, ..SyncConfig::default() }, 0);
    let id = pull_id(&core.on_beat(peer(), BeatInfo { seq: 5, ..Default::default() }, (0, 0), 10), &wanted);
    assert!(applies(&core.on_reply(id, Some(Reply::Page(page)), 20)));
}

#[test]
fn a_page_whose_digest_does_not_match_is_not_trusted() {
    let mut core = core();
    let wanted = Request::Page { cut_id: 0, offset: 0 };
    let id = pull_id(&core.on_beat(peer(), BeatInfo { seq: 5, ..Default::default() }, (0, 0), 10), &wanted);
    let entries = slice(2);
    let digest = entries.iter().fold(0, |acc, (k, e)| acc ^ e.digest(k));
    let page = Page { cut_id: 3, cut_seq: 5, offset: 0, total: 2, digest: digest ^ 1, entries: entries.clone() };
    let before = core.counters().clone();
    // A copy that held nothing loads pages as they arrive, so this one is loaded…
    let actions = core.on_reply(id, Some(Reply::Page(page)), 20);
    assert!(matches!(actions.as_slice(), [Action::LoadEntries { .. }]), "{actions:?}");
    assert_eq!(core.counters(), &Counters { digest_mismatches: before.digest_mismatches + 1, ..before });
    // …but not trusted: the copy is not counted as current…
    assert_eq!(applied(&core, &peer()), Some(0));
    // …and the next transfer replaces it as a whole.
    let retry = core.on_tick(20 + SyncConfig::default().retry_ms, 0);
    let id = retry
        .iter()
        .find_map(|a| match a {
            Action::Request { id, request, .. } if *request == wanted => Some(*id),
            _ => None,
        })
        .expect("the slice is pulled again");
    let page = Page { cut_id: 4, cut_seq: 5, offset: 0, total: 2, digest, entries };
    let actions = core.on_reply(id, Some(Reply::Page(page)), 30);
    assert!(matches!(actions.as_slice(), [Action::ReplaceSlice { cut_seq: 5, .. }]), "{actions:?}");
    assert_eq!(applied(&core, &peer()), Some(5));
}

#[test]
fn a_page_with_a_forged_cut_seq_is_repaired_by_the_next_beat() {
    let mut core = core();
    let wanted = Request::Page { cut_id: 0, offset: 0 };
    let id = pull_id(&core.on_beat(peer(), BeatInfo { seq: 5, ..Default::default() }, (0, 0), 10), &wanted);
    // A batch published during the transfer waits for it.
    assert!(!applies(&core.on_batch(batch(&peer(), 6, vec![put(1, 81)]), 20)));

    // The answer claims a cut at the last possible seq; its digest is consistent.
    let entries = slice(1);
    let digest = entries.iter().fold(0, |acc, (k, e)| acc ^ e.digest(k));
    let page = Page { cut_id: 3, cut_seq: u64::MAX, offset: 0, total: 1, digest, entries };
    core.on_reply(id, Some(Reply::Page(page)), 30);

    // The origin's next beat shows our copy is ahead of it: suspect, pulled again.
    let before = core.counters().clone();
    let actions = core.on_beat(peer(), BeatInfo { seq: 6, ..Default::default() }, (0, 0), 40);
    pull_id(&actions, &wanted);
    assert_eq!(
        core.counters(),
        &Counters { invalid: before.invalid + 1, slice_pulls: before.slice_pulls + 1, ..before }
    );
}

// ---------------------------------------------------------------- cuts

fn no_snapshot() -> SliceCut {
    unreachable!("only a request for a new cut takes a snapshot")
}

fn cut_of(seq: u64, entries: Vec<(Key, Entry)>) -> SliceCut {
    let digest = entries.iter().fold(0, |acc, (k, e)| acc ^ e.digest(k));
    SliceCut { seq, digest, entries }
}

#[test]
fn serving_an_unknown_cut_asks_for_the_slice_again() {
    let mut cuts = Cuts::new(2, 4, 1_000);
    for cut_id in [1, 42, u64::MAX] {
        let reply = cuts.serve(cut_id, 0, 10, no_snapshot);
        assert!(matches!(reply, Reply::Refused { pull_slice: true, .. }), "{cut_id}: {reply:?}");
    }
    assert_eq!(cuts.live(), 0);
}

#[test]
fn a_fully_served_or_expired_cut_is_unknown() {
    let mut cuts = Cuts::new(2, 4, 1_000);
    let Reply::Page(whole) = cuts.serve(0, 0, 10, || cut_of(9, slice(2))) else { panic!("a page") };
    assert_eq!(cuts.live(), 0, "a cut served to its end is dropped");
    let reply = cuts.serve(whole.cut_id, 0, 20, no_snapshot);
    assert!(matches!(reply, Reply::Refused { pull_slice: true, .. }), "{reply:?}");

    let Reply::Page(first) = cuts.serve(0, 0, 30, || cut_of(9, slice(3))) else { panic!("a page") };
    let reply = cuts.serve(first.cut_id, 2, 30 + 1_000, no_snapshot);
    assert!(matches!(reply, Reply::Refused { pull_slice: true, .. }), "{reply:?}");
    assert_eq!(cuts.live(), 0);
}

#[test]
fn an_offset_past_the_end_of_a_cut_is_refused() {
    let mut cuts = Cuts::new(2, 4, 1_000);
    let Reply::Page(first) = cuts.serve(0, 0, 10, || cut_of(9, slice(3))) else { panic!("a page") };
    assert_eq!((first.total, first.entries.len()), (3, 2));
    for offset in [4, 1_000, u64::MAX] {
        let reply = cuts.serve(first.cut_id, offset, 20, no_snapshot);
        assert!(matches!(reply, Reply::Refused { pull_slice: true, .. }), "{offset}: {reply:?}");
    }
    // The cut is still there for a requester that asks properly.
    assert_eq!(cuts.live(), 1);
    let Reply::Page(last) = cuts.serve(first.cut_id, 2, 30, no_snapshot) else { panic!("a page") };
    assert_eq!((last.offset, last.entries.len()), (2, 1));
}

#[test]
fn pages_of_large_records_stay_under_the_byte_budget() {
    // 40 entries of about 3 KiB each, a budget of 10,000 bytes a page.
    let big = |k: u8| {
        let mut i = instance(k, 80);
        i.metadata.insert("pad".into(), "x".repeat(3_000));
        (key(k), Entry { version: Version { hlc: 1 << 20, node: 7 }, record: Some(Record::instance(&i)) })
    };
    let mut cuts = Cuts::new(2_000, 4, 1_000);
    cuts.set_page_bytes(10_000);
    let Reply::Page(first) = cuts.serve(0, 0, 10, || cut_of(9, (0..40).map(big).collect())) else { panic!("a page") };
    let per_page = first.entries.len();
    assert!((1..=3).contains(&per_page), "{per_page} entries of 3 KiB in a 10,000-byte page");
    let mut seen = per_page;
    while seen < 40 {
        let Reply::Page(p) = cuts.serve(first.cut_id, seen as u64, 20, no_snapshot) else { panic!("a page") };
        assert_eq!(p.entries.len(), per_page.min(40 - seen), "every page of a cut has the same length");
        assert!(wire::encode(&wire::page_to_wire(&p)).len() <= 10_000);
        seen += p.entries.len();
    }
    assert_eq!(cuts.live(), 0, "served to the end");
}
