//! How a starting node decides it has discovered the cluster: by the
//! discovery time, or sooner when every peer is ready and knows exactly the
//! nodes it knows (the membership digest in beats).

use bus_sync::wire::{BeatInfo, Page, Reply, Request};
use bus_sync::{Action, SyncConfig, SyncCore};
use registry_proto::v1;
use registry_store::version::stable_hash;
use registry_store::{Entry, InstanceKey, Key, Origin, Record, Version};

const DISCOVERY_MS: u64 = 1_000;

fn joiner() -> SyncCore {
    SyncCore::new(Origin::new("j", 1), SyncConfig { discovery_ms: DISCOVERY_MS, ..SyncConfig::default() }, 0)
}

fn origin(node: &str) -> Origin {
    Origin::new(node, 1)
}

/// The membership digest of a node that knows `nodes` (itself included).
fn members(nodes: &[&str]) -> u64 {
    nodes.iter().fold(0, |acc, n| acc ^ stable_hash(n.as_bytes()))
}

fn beat(seq: u64, ready: bool, members: u64) -> BeatInfo {
    BeatInfo { seq, ready, members, ..Default::default() }
}

fn turned_ready(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Ready { timed_out: false }))
}

#[test]
fn a_joiner_vouched_for_by_every_ready_peer_is_ready_at_once() {
    let mut j = joiner();
    // a has not heard j's hello yet; b has. Both views match j's.
    assert!(!turned_ready(&j.on_beat(origin("a"), beat(0, true, members(&["a", "b"])), (0, 0), 5)));
    let actions = j.on_beat(origin("b"), beat(0, true, members(&["a", "b", "j"])), (0, 0), 6);
    assert!(turned_ready(&actions), "{actions:?}");
    assert!(j.is_ready());
    assert_eq!(j.members_digest(), members(&["a", "b", "j"]));
}

#[test]
fn a_peer_that_knows_a_node_the_joiner_has_not_heard_keeps_it_warming() {
    let mut j = joiner();
    j.on_beat(origin("a"), beat(0, true, members(&["a", "b"])), (0, 0), 5);
    assert!(!turned_ready(&j.on_tick(500, 0)), "b is still unknown to j");
    assert!(!j.is_ready());
    let actions = j.on_beat(origin("b"), beat(0, true, members(&["a", "b"])), (0, 0), 600);
    assert!(turned_ready(&actions), "{actions:?}");
}

/// A live node whose answer to the hello was lost beats again within a beat
/// interval, which may be just past the discovery time: while a peer knows a
/// node the joiner has not heard from, discovery goes on, for at most the
/// time after which that node's peers would suspect it.
#[test]
fn a_peer_knowing_an_unheard_node_holds_discovery_until_that_node_beats() {
    let mut j = joiner();
    j.on_beat(origin("a"), beat(0, true, members(&["a", "b", "j"])), (0, 0), 5);
    assert!(!turned_ready(&j.on_tick(DISCOVERY_MS, 0)), "a knows b, which j has not heard from");
    assert!(!j.is_ready());
    let actions = j.on_beat(origin("b"), beat(0, true, members(&["a", "b", "j"])), (0, 0), DISCOVERY_MS + 300);
    assert!(turned_ready(&actions), "b beat: nothing left to discover: {actions:?}");
}

#[test]
fn a_node_only_peers_know_holds_discovery_no_longer_than_the_suspect_time() {
    let suspect = SyncConfig::default().suspect_after_ms;
    let mut j = joiner();
    // b is dead; a still holds its slice (orphaned) and counts it.
    j.on_beat(origin("a"), beat(0, true, members(&["a", "b"])), (0, 0), 5);
    assert!(!turned_ready(&j.on_tick(DISCOVERY_MS, 0)));
    assert!(!turned_ready(&j.on_tick(DISCOVERY_MS + suspect - 1, 0)));
    assert!(turned_ready(&j.on_tick(DISCOVERY_MS + suspect, 0)), "b never beat: ready at the suspect time");
}

#[test]
fn a_starting_peer_or_an_older_one_does_not_vouch() {
    for (what, b) in [("starting", beat(0, false, members(&["a", "j"]))), ("older", beat(0, true, 0))] {
        let mut j = joiner();
        j.on_beat(origin("a"), b, (0, 0), 5);
        assert!(!turned_ready(&j.on_tick(DISCOVERY_MS - 1, 0)), "{what}: ready before the discovery time");
        assert!(turned_ready(&j.on_tick(DISCOVERY_MS, 0)), "{what}: not ready at the discovery time");
    }
}

#[test]
fn a_node_alone_waits_out_the_discovery_time() {
    let mut j = joiner();
    assert!(!turned_ready(&j.on_tick(DISCOVERY_MS - 1, 0)));
    assert!(turned_ready(&j.on_tick(DISCOVERY_MS, 0)));
}

#[test]
fn vouched_for_is_not_enough_until_the_peers_slice_is_loaded() {
    let mut j = joiner();
    let actions = j.on_beat(origin("a"), beat(2, true, members(&["a", "j"])), (0, 0), 5);
    assert!(!turned_ready(&actions), "a holds data j has not loaded");
    let id = match actions.as_slice() {
        [Action::Request { id, request: Request::Page { cut_id: 0, offset: 0 }, .. }] => *id,
        other => panic!("expected a slice pull, got {other:?}"),
    };
    let entries: Vec<(Key, Entry)> = ["i1", "i2"]
        .into_iter()
        .map(|id| {
            let instance = v1::Instance {
                namespace: "default".into(),
                service: "svc".into(),
                instance_id: id.into(),
                host: "10.0.0.1".into(),
                port: 80,
                ..Default::default()
            };
            let entry = Entry { version: Version { hlc: 1 << 20, node: 1 }, record: Some(Record::instance(&instance)) };
            (Key::Instance(InstanceKey::new("default", "svc", id)), entry)
        })
        .collect();
    let digest = entries.iter().fold(0, |acc, (k, e)| acc ^ e.digest(k));
    let page = Page { cut_id: 1, cut_seq: 2, offset: 0, total: 2, digest, entries };
    let actions = j.on_reply(id, Some(Reply::Page(page)), 20);
    assert!(actions.iter().any(|a| matches!(a, Action::SliceLoaded { .. })), "{actions:?}");
    assert!(turned_ready(&actions), "{actions:?}");
}
